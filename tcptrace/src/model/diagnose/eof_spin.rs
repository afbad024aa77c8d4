//! Reads spinning on EOF.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use super::{Finding, FindingKind, Severity, plural, rate_text, round_to_millis};
use crate::model::endpoint::endpoint;

/// EOF reads on one CLOSE_WAIT socket over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct EofReads {
    pub owner: String,
    pub cookie: u64,
    pub remote: SocketAddr,
    pub eof_reads: u64,
    pub window: Duration,
}

/// Code that meant to read again after EOF would do it a few times, not a
/// hundred times a second: that is a loop without a close.
const EOF_SPIN_RATE: f64 = 100.0;

/// Fewer reads are too few to call a rate (a short window).
const EOF_SPIN_MIN_READS: u64 = 100;

/// A busy loop on read(): a core burnt per socket.
const EOF_SPIN_CRITICAL_RATE: f64 = 10_000.0;

const EOF_SPIN_ADVICE: &str = "A read returned 0 (end of file) and the code keeps reading instead of closing: treat a 0-byte read as the peer's close.";

fn eof_read_rate(reads: &EofReads) -> Option<f64> {
    let seconds = reads.window.as_secs_f64();
    (seconds > 0.0).then(|| reads.eof_reads as f64 / seconds)
}

fn is_spinning(reads: &EofReads) -> bool {
    reads.eof_reads >= EOF_SPIN_MIN_READS
        && eof_read_rate(reads).is_some_and(|r| r >= EOF_SPIN_RATE)
}

pub fn eof_spin_findings(reads: &[EofReads]) -> Vec<Finding> {
    let mut by_owner: BTreeMap<&str, Vec<&EofReads>> = BTreeMap::new();
    for spinning in reads.iter().filter(|r| is_spinning(r)) {
        by_owner.entry(&spinning.owner).or_default().push(spinning);
    }
    by_owner
        .into_iter()
        .filter_map(|(owner, spinning)| {
            let (worst, rate) = spinning
                .iter()
                .filter_map(|r| Some((*r, eof_read_rate(r)?)))
                .max_by(|a, b| {
                    a.1.total_cmp(&b.1)
                        .then_with(|| b.0.cookie.cmp(&a.0.cookie))
                })?;
            let severity = if rate >= EOF_SPIN_CRITICAL_RATE {
                Severity::Critical
            } else {
                Severity::Warning
            };
            Some(Finding {
                kind: FindingKind::EofSpin,
                severity,
                subject: owner.to_owned(),
                evidence: format!(
                    "{} reading EOF in a loop; worst {} reads/s ({} in {}, socket {} from {})",
                    plural(spinning.len() as u64, "socket"),
                    rate_text(rate),
                    worst.eof_reads,
                    humantime::format_duration(round_to_millis(worst.window)),
                    worst.cookie,
                    endpoint(worst.remote),
                ),
                advice: EOF_SPIN_ADVICE,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diagnose::test_support::addr;

    fn eof(owner: &str, cookie: u64, reads: u64, window_ms: u64) -> EofReads {
        EofReads {
            owner: owner.into(),
            cookie,
            remote: addr("10.0.0.2:80"),
            eof_reads: reads,
            window: Duration::from_millis(window_ms),
        }
    }

    #[test]
    fn eof_spin_rate_and_total_edges() {
        let severity = |r: EofReads| eof_spin_findings(&[r]).first().map(|f| f.severity);
        // 1000 in 10 s = 100/s: spinning; 999 in 10 s: not.
        assert_eq!(severity(eof("p", 1, 1000, 10_000)), Some(Severity::Warning));
        assert_eq!(severity(eof("p", 1, 999, 10_000)), None);
        // 99 in 0.5 s is 198/s but too few reads to call it a rate.
        assert_eq!(severity(eof("p", 1, 99, 500)), None);
        assert_eq!(severity(eof("p", 1, 100, 500)), Some(Severity::Warning));
        // No window, no rate.
        assert_eq!(severity(eof("p", 1, 5000, 0)), None);
        // 10000/s is critical, 9999/s a warning.
        assert_eq!(
            severity(eof("p", 1, 20_000, 2000)),
            Some(Severity::Critical)
        );
        assert_eq!(severity(eof("p", 1, 19_998, 2000)), Some(Severity::Warning));
    }

    #[test]
    fn eof_spin_one_finding_per_owner_with_the_worst_socket() {
        let findings = eof_spin_findings(&[
            eof("pid 1 (a)", 7, 500, 2000),
            eof("pid 1 (a)", 8, 24_000, 2000),
            eof("pid 1 (a)", 9, 10, 2000),
            eof("pid 2 (b)", 3, 300, 1000),
        ]);
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0].subject, "pid 1 (a)");
        assert_eq!(findings[0].severity, Severity::Critical);
        assert_eq!(
            findings[0].evidence,
            "2 sockets reading EOF in a loop; worst 12000 reads/s (24000 in 2s, socket 8 from 10.0.0.2:80)"
        );
        assert_eq!(findings[1].subject, "pid 2 (b)");
        assert_eq!(findings[1].severity, Severity::Warning);
        assert_eq!(findings[1].advice, EOF_SPIN_ADVICE);
    }
}
