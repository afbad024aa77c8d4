//! tcptrace: finds TCP socket leaks with eBPF.
//!
//! The folders are the stages of the pipeline, and ARCHITECTURE.md at the
//! root of the repository maps them: `probe` (the kernel side) and `host`
//! (facts read from /proc, sock_diag, cgroups) feed the pure `model`; `engine`
//! runs the loops the commands share; `view` renders; `commands` holds one
//! file per subcommand; `cli` parses arguments.

pub mod build_info;
pub mod cli;
pub mod commands;
pub(crate) mod engine;
pub mod host;
pub mod model;
pub mod probe;
pub(crate) mod view;

#[cfg(test)]
mod bench_hotpath;
