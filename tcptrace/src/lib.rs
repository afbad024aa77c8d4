//! tcptrace: finds TCP socket leaks with eBPF.
//!
//! The pipeline, one module per step: `probe` loads the kernel side and reads
//! its ring buffer -> `decode` turns records into transitions -> `tracker`
//! keeps per-socket state -> `filter` picks what to show -> `output` formats
//! it. `watch` wires them into the command; `btf` and `layout` tell the probe
//! where socket fields lie on the running kernel.

pub mod activity;
pub mod agent;
pub mod btf;
pub mod cli;
pub mod clock;
pub mod container;
pub mod decode;
pub mod diagnose;
pub mod filter;
pub mod holders;
pub mod hostread;
pub mod http;
pub mod layout;
pub mod leaks;
pub mod leakwatch;
pub mod metrics;
pub mod output;
pub mod preflight;
pub mod probe;
pub mod report;
pub mod serve;
pub mod sockdiag;
pub mod symbolize;
pub mod terminal;
pub mod top;
pub mod topwatch;
pub mod tracker;
pub mod watch;
