//! Failing connects.

use std::{net::SocketAddr, time::Duration};

use super::{Finding, FindingKind, Severity, round_to_seconds};
use crate::model::endpoint::endpoint;

/// connect() outcomes of one process toward one destination over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectOutcomes {
    pub owner: String,
    pub destination: SocketAddr,
    pub attempted: u64,
    pub failed: u64,
    pub window: Duration,
}

/// A few failures are a restart or a blip, not a pattern.
const CONNECT_WARNING_FAILURES: u64 = 5;
/// One connect in ten failing is more than a flaky network does.
const CONNECT_WARNING_PERCENT: u64 = 10;
/// Half failing, and often: the destination is down for this client.
const CONNECT_CRITICAL_FAILURES: u64 = 20;
const CONNECT_CRITICAL_PERCENT: u64 = 50;

const CONNECT_ADVICE: &str = "Connections to this destination fail (refused, reset or timed out in SYN_SENT): check that the service is up and reachable.";

/// `failed` is at least `percent`% of the attempts. A connect attempted in
/// the previous window can fail in this one, so attempts count at least the
/// failures.
fn failed_share_at_least(outcomes: &ConnectOutcomes, percent: u64) -> bool {
    let attempted = outcomes.attempted.max(outcomes.failed);
    u128::from(outcomes.failed) * 100 >= u128::from(attempted) * u128::from(percent)
}

pub fn connect_failure_findings(outcomes: &[ConnectOutcomes]) -> Vec<Finding> {
    outcomes
        .iter()
        .filter_map(|o| {
            let severity = if o.failed >= CONNECT_CRITICAL_FAILURES
                && failed_share_at_least(o, CONNECT_CRITICAL_PERCENT)
            {
                Severity::Critical
            } else if o.failed >= CONNECT_WARNING_FAILURES
                && failed_share_at_least(o, CONNECT_WARNING_PERCENT)
            {
                Severity::Warning
            } else {
                return None;
            };
            let attempted = o.attempted.max(o.failed);
            Some(Finding {
                kind: FindingKind::ConnectFailures,
                severity,
                subject: format!("{} to {}", o.owner, endpoint(o.destination)),
                evidence: format!(
                    "{} of {} connects failed ({:.0}%) in {}",
                    o.failed,
                    attempted,
                    o.failed as f64 * 100.0 / attempted as f64,
                    humantime::format_duration(round_to_seconds(o.window)),
                ),
                advice: CONNECT_ADVICE,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diagnose::test_support::addr;

    fn connects(attempted: u64, failed: u64) -> ConnectOutcomes {
        ConnectOutcomes {
            owner: "pid 1 (a)".into(),
            destination: addr("10.0.0.2:5432"),
            attempted,
            failed,
            window: Duration::from_secs(10),
        }
    }

    fn connect_severity(attempted: u64, failed: u64) -> Option<Severity> {
        connect_failure_findings(&[connects(attempted, failed)])
            .first()
            .map(|f| f.severity)
    }

    #[test]
    fn connect_failure_edges() {
        // Warning: at least 5 failures and at least 10%.
        assert_eq!(connect_severity(50, 5), Some(Severity::Warning));
        assert_eq!(connect_severity(51, 5), None);
        assert_eq!(connect_severity(40, 4), None);
        // Critical: at least 20 failures and at least 50%.
        assert_eq!(connect_severity(40, 20), Some(Severity::Critical));
        assert_eq!(connect_severity(41, 20), Some(Severity::Warning));
        assert_eq!(connect_severity(38, 19), Some(Severity::Warning));
        assert_eq!(connect_severity(0, 0), None);
    }

    #[test]
    fn failures_of_earlier_attempts_count_as_attempts() {
        assert_eq!(connect_severity(0, 25), Some(Severity::Critical));
        let finding = &connect_failure_findings(&[connects(3, 6)])[0];
        assert_eq!(finding.subject, "pid 1 (a) to 10.0.0.2:5432");
        assert_eq!(finding.evidence, "6 of 6 connects failed (100%) in 10s");
    }

    #[test]
    fn connect_failure_evidence() {
        let finding = &connect_failure_findings(&[connects(40, 12)])[0];
        assert_eq!(finding.evidence, "12 of 40 connects failed (30%) in 10s");
        assert_eq!(finding.advice, CONNECT_ADVICE);
    }
}
