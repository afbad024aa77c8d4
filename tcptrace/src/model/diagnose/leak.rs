//! Leaks running a process out of fds.

use std::{fmt::Write as _, time::Duration};

use super::{Finding, FindingKind, Severity, age_text, plural, seconds_text};

/// Seconds until the process has no free fd at this leak rate; `None` when
/// the leaks do not grow, 0 when it is already at its limit.
pub fn fd_exhaustion_seconds(open_fds: u64, fd_limit: u64, leaks_per_minute: f64) -> Option<f64> {
    if open_fds >= fd_limit {
        return Some(0.0);
    }
    if leaks_per_minute.is_nan() || leaks_per_minute <= 0.0 {
        return None;
    }
    Some((fd_limit - open_fds) as f64 / (leaks_per_minute / 60.0))
}

/// One process's leaks, from the leak report.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessLeakSummary {
    pub owner: String,
    pub leaking_sockets: u64,
    pub oldest_age: Duration,
    pub leaks_per_minute: Option<f64>,
    pub open_fds: Option<u64>,
    pub fd_limit: Option<u64>,
    /// Whether a read of EOF by the process was seen on a leaked socket;
    /// `None` where no read could be seen (stacks off, kernels before 6.3).
    pub read_eof: Option<bool>,
}

/// Out of fds within the hour: accept() and open() start failing before a
/// fix can ship, so someone must restart it.
const FD_EXHAUSTION_CRITICAL_SECONDS: f64 = 3600.0;

const LEAK_ADVICE: &str = "The process read the peer's close (EOF) and never called close(), or keeps a closed socket's file open; fix the code path shown in the leak report.";
const LEAK_ADVICE_NO_EOF_READ: &str = "The peer closed its side and the process never called close(): it did not read the socket again after the peer closed (no read of EOF was seen), or keeps a closed socket's file open; fix the code path shown in the leak report.";
const LEAK_ADVICE_UNSEEN: &str = "The peer closed its side and the process never called close(), or keeps a closed socket's file open; fix the code path shown in the leak report.";

pub fn leak_findings(processes: &[ProcessLeakSummary]) -> Vec<Finding> {
    processes
        .iter()
        .filter(|p| p.leaking_sockets > 0)
        .map(leak_finding)
        .collect()
}

fn leak_finding(process: &ProcessLeakSummary) -> Finding {
    let exhaustion = match (process.open_fds, process.fd_limit) {
        (Some(open), Some(limit)) => {
            fd_exhaustion_seconds(open, limit, process.leaks_per_minute.unwrap_or(0.0))
        }
        _ => None,
    };
    let severity = match exhaustion {
        Some(seconds) if seconds <= FD_EXHAUSTION_CRITICAL_SECONDS => Severity::Critical,
        _ => Severity::Warning,
    };
    let mut evidence = format!(
        "{} leaked, oldest {}",
        plural(process.leaking_sockets, "socket"),
        age_text(process.oldest_age)
    );
    if let Some(rate) = process.leaks_per_minute.filter(|r| r.is_finite()) {
        let _ = write!(evidence, ", {rate:+.1}/min");
    }
    match (process.open_fds, process.fd_limit) {
        (Some(open), Some(limit)) => {
            let _ = write!(evidence, ", {open} of {limit} fds");
        }
        (Some(open), None) => {
            let _ = write!(evidence, ", {open} fds");
        }
        _ => {}
    }
    match exhaustion {
        Some(seconds) if seconds <= 0.0 => evidence.push_str(": out of fds now"),
        Some(seconds) => {
            let _ = write!(evidence, ": out of fds in ~{}", seconds_text(seconds));
        }
        None => {}
    }
    Finding {
        kind: FindingKind::SocketLeak,
        severity,
        subject: process.owner.clone(),
        evidence,
        // Says what was seen: the textbook leaks stop reading before EOF.
        advice: match process.read_eof {
            Some(true) => LEAK_ADVICE,
            Some(false) => LEAK_ADVICE_NO_EOF_READ,
            None => LEAK_ADVICE_UNSEEN,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_exhaustion_arithmetic() {
        assert_eq!(fd_exhaustion_seconds(1012, 1024, 3.0), Some(240.0));
        assert_eq!(fd_exhaustion_seconds(100, 1024, 60.0), Some(924.0));
        assert_eq!(fd_exhaustion_seconds(1024, 1024, 3.0), Some(0.0));
        assert_eq!(fd_exhaustion_seconds(2000, 1024, 0.0), Some(0.0));
        assert_eq!(fd_exhaustion_seconds(100, 1024, 0.0), None);
        assert_eq!(fd_exhaustion_seconds(100, 1024, -2.0), None);
        assert_eq!(fd_exhaustion_seconds(100, 1024, f64::NAN), None);
    }

    fn leaking(
        count: u64,
        rate: Option<f64>,
        open: Option<u64>,
        limit: Option<u64>,
    ) -> ProcessLeakSummary {
        ProcessLeakSummary {
            owner: "pid 12 (app)".into(),
            leaking_sockets: count,
            oldest_age: Duration::from_millis(303_400),
            leaks_per_minute: rate,
            open_fds: open,
            fd_limit: limit,
            read_eof: Some(true),
        }
    }

    #[test]
    fn leak_evidence_and_severity() {
        let findings = leak_findings(&[leaking(12, Some(3.0), Some(1012), Some(1024))]);
        assert_eq!(findings.len(), 1);
        let finding = &findings[0];
        assert_eq!(finding.kind, FindingKind::SocketLeak);
        assert_eq!(finding.severity, Severity::Critical);
        assert_eq!(finding.subject, "pid 12 (app)");
        assert_eq!(
            finding.evidence,
            "12 sockets leaked, oldest 5m 3s, +3.0/min, 1012 of 1024 fds: out of fds in ~4m"
        );
        assert_eq!(finding.advice, LEAK_ADVICE);
        let never_read = ProcessLeakSummary {
            read_eof: Some(false),
            ..leaking(1, None, None, None)
        };
        let advice = leak_findings(&[never_read])[0].advice;
        assert!(advice.contains("did not read the socket again"), "{advice}");
        assert!(!advice.contains("read the peer's close (EOF)"), "{advice}");
    }

    #[test]
    fn leak_severity_edges() {
        let severity = |p| leak_findings(&[p])[0].severity;
        // 60 free fds at 1/min: exactly one hour -> critical.
        assert_eq!(
            severity(leaking(1, Some(1.0), Some(964), Some(1024))),
            Severity::Critical
        );
        // 61 free fds: 61 minutes -> warning.
        assert_eq!(
            severity(leaking(1, Some(1.0), Some(963), Some(1024))),
            Severity::Warning
        );
        // Not growing, or nothing known about fds.
        assert_eq!(
            severity(leaking(1, Some(0.0), Some(1000), Some(1024))),
            Severity::Warning
        );
        assert_eq!(severity(leaking(1, None, None, None)), Severity::Warning);
        // At the limit is critical whatever the rate.
        assert_eq!(
            severity(leaking(1, None, Some(1024), Some(1024))),
            Severity::Critical
        );
    }

    #[test]
    fn leak_evidence_without_fd_numbers() {
        let bare = &leak_findings(&[leaking(1, None, None, None)])[0];
        assert_eq!(bare.evidence, "1 socket leaked, oldest 5m 3s");
        let no_limit = &leak_findings(&[leaking(2, Some(-1.0), Some(40), None)])[0];
        assert_eq!(
            no_limit.evidence,
            "2 sockets leaked, oldest 5m 3s, -1.0/min, 40 fds"
        );
        let full = &leak_findings(&[leaking(2, None, Some(1024), Some(1024))])[0];
        assert!(full.evidence.ends_with("1024 of 1024 fds: out of fds now"));
    }

    #[test]
    fn processes_without_leaks_have_no_finding() {
        assert!(leak_findings(&[leaking(0, Some(5.0), Some(1024), Some(1024))]).is_empty());
    }
}
