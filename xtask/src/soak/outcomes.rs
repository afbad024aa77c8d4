//! What a soak recorded as it ran, for the verdicts, the document and the
//! plot.

use std::{collections::BTreeSet, time::Duration};

use super::sample;

/// When each phase really ran, in seconds since the start.
#[derive(Clone, Debug)]
pub struct PhaseSpan {
    pub start: f64,
    pub end: f64,
}

#[derive(Clone, Debug)]
pub struct LeakCheck {
    pub after: String,
    pub t: f64,
    /// The leaker's own count of what it holds.
    pub held: u64,
    pub ss: Option<u64>,
    pub leaks: Result<u64, String>,
    pub waited: Duration,
}

impl LeakCheck {
    pub fn matched(&self) -> bool {
        matches!((&self.leaks, self.ss), (Ok(leaks), Some(ss)) if *leaks == ss)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outcomes {
    pub spans: Vec<PhaseSpan>,
    pub checks: Vec<LeakCheck>,
    /// (seconds since start, Ok(ms) or the error) of each timed /metrics GET.
    pub metrics_under_idle: Vec<(f64, Result<f64, String>)>,
    pub idle_report: Option<String>,
    pub process_churn_report: Option<String>,
    /// What the sustained connection churn's client said at its end.
    pub churn_report: Option<String>,
    pub burst_reports: Vec<String>,
    /// Drop counter at the start and end of the burst phase.
    pub burst_drops: (Option<f64>, Option<f64>),
    pub restart_at: Option<f64>,
    pub leaks_logged: usize,
    pub serve_exit: Option<String>,
    pub bpf_before: (usize, usize),
    pub bpf_after: (usize, usize),
    pub bpf_held: (BTreeSet<u32>, BTreeSet<u32>),
    pub bpf_left: (Vec<u32>, Vec<u32>),
    /// How long after the end those were still listed.
    pub bpf_wait: Duration,
    pub processes_left: Vec<(u32, String)>,
    pub samples: Vec<sample::Sample>,
}
