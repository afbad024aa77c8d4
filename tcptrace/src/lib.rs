//! tcptrace: finds TCP socket leaks with eBPF.
//!
//! The pipeline, one module per step: `probe` loads the kernel side and reads
//! its ring buffer -> `decode` turns records into transitions -> `tracker`
//! keeps per-socket state -> `filter` picks what to show -> `output` formats
//! it. `watch` wires them into the command; `btf` and `layout` tell the probe
//! where socket fields lie on the running kernel.

pub mod cli;
pub mod commands;
pub mod engine;
pub mod host;
pub mod model;
pub mod probe;
pub mod view;
