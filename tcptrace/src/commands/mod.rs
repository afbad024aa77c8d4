pub mod leaks;
pub mod serve;
pub mod top;
pub mod watch;
