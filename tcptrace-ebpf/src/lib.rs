#![no_std]
// Lets the agent name this crate as a build-dependency, so cargo rebuilds the
// agent when the probe changes; the probe itself is the binary in main.rs.
