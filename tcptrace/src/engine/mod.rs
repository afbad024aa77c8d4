//! What the commands share: their event loop and the long-running parts
//! behind it.
//!
//! Takes in: a probe and the host readers. Gives out: the event loop every
//! tracing command runs, with only what differs left to the command
//! (`drain_loop`), the leak monitor's reports (`monitor`) with the code
//! paths of leaking sockets (`stacks`), the host agent's snapshots for `top`
//! and `serve` (`agent`, which hands the diagnoses what `diagnosis_inputs`
//! assembles from each refresh), and the metrics HTTP server's thread
//! (`http`).

pub(crate) mod agent;
mod diagnosis_inputs;
pub(crate) mod drain_loop;
pub(crate) mod http;
pub(crate) mod monitor;
pub(crate) mod stacks;
