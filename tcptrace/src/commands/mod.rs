//! One file per subcommand, named as the subcommand: it wires the probe, the
//! host readers, the engine and a view into what the user runs. Nothing here
//! is used by another command; what two commands share lives in engine/.

pub mod leaks;
pub mod serve;
pub mod top;
pub mod watch;
