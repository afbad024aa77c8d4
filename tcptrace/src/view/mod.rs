//! Rendering only: model values in, text, JSON or OpenMetrics out.
//!
//! watch's lines, the leak report, the top table, the metrics exposition,
//! and `terminal`, which makes every name from the host safe to print.
//! The data they render comes from model/ (the top table's from
//! `model::top_snapshot`).

pub(crate) mod flamegraph;
pub(crate) mod metrics;
pub(crate) mod page;
pub(crate) mod report;
pub(crate) mod terminal;
pub(crate) mod top;
pub(crate) mod watch;
