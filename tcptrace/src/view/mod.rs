pub mod metrics;
pub mod report;
pub mod terminal;
pub mod top;
pub mod watch;
