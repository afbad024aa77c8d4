//! Rendering only: model values in, text, JSON or OpenMetrics out.
//!
//! watch's lines, the leak report, the top table, the metrics exposition,
//! and `terminal`, which makes every name from the host safe to print.

pub mod metrics;
pub mod report;
pub mod terminal;
pub mod top;
pub mod watch;
