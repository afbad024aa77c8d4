//! FIN_WAIT2 held open by a file.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use super::{Finding, FindingKind, PortSettings, Severity, age_text, plural};
use crate::model::endpoint::endpoint;

/// A FIN_WAIT2 socket that still has a file.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckSocket {
    /// "pid 12 (app)".
    pub owner: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Since the first table that listed it in FIN_WAIT2: no move there is
    /// recorded, so every age is a lower bound, and says so.
    pub age: Duration,
}

/// This many stuck sockets per process is a leak that will run it out of
/// fds, not a few slow peers.
const FIN_WAIT2_CRITICAL_COUNT: usize = 100;

/// Remote addresses an evidence line lists before "+N more".
const SHOWN_REMOTES: usize = 3;

const FIN_WAIT2_ADVICE: &str = "The process shut down its side but the peer never closed; these never time out while the file is open: set a read timeout and close after shutdown().";

/// An orphaned FIN_WAIT2 is gone after tcp_fin_timeout; one older than that
/// still has a file, and the kernel's timeout does not apply to it: it waits
/// for a peer that never closes.
pub fn fin_wait2_findings(sockets: &[StuckSocket], settings: &PortSettings) -> Vec<Finding> {
    let mut by_owner: BTreeMap<&str, Vec<&StuckSocket>> = BTreeMap::new();
    for socket in sockets.iter().filter(|s| s.age > settings.fin_timeout) {
        by_owner.entry(&socket.owner).or_default().push(socket);
    }
    by_owner
        .into_iter()
        .filter_map(|(owner, mut stuck)| {
            // Oldest first: its peers are the likeliest culprits.
            stuck.sort_by(|a, b| b.age.cmp(&a.age).then_with(|| a.remote.cmp(&b.remote)));
            let oldest = *stuck.first()?;
            let severity = if stuck.len() >= FIN_WAIT2_CRITICAL_COUNT {
                Severity::Critical
            } else {
                Severity::Warning
            };
            Some(Finding {
                kind: FindingKind::FinWait2Stuck,
                severity,
                subject: owner.to_owned(),
                evidence: format!(
                    "{} in FIN_WAIT2 past tcp_fin_timeout ({}), oldest >={}, peers {}",
                    plural(stuck.len() as u64, "socket"),
                    humantime::format_duration(settings.fin_timeout),
                    age_text(oldest.age),
                    remotes_text(stuck.iter().map(|s| s.remote)),
                ),
                advice: FIN_WAIT2_ADVICE,
            })
        })
        .collect()
}

/// Up to SHOWN_REMOTES distinct addresses in order, then "+N more".
fn remotes_text(remotes: impl Iterator<Item = SocketAddr>) -> String {
    let mut distinct: Vec<String> = Vec::new();
    for remote in remotes.map(endpoint) {
        if !distinct.contains(&remote) {
            distinct.push(remote);
        }
    }
    let hidden = distinct.len().saturating_sub(SHOWN_REMOTES);
    distinct.truncate(SHOWN_REMOTES);
    let shown = distinct.join(", ");
    if hidden > 0 {
        format!("{shown} +{hidden} more")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diagnose::{
        TimeWaitReuse,
        test_support::{addr, settings},
    };

    fn stuck(owner: &str, remote: &str, age_s: u64) -> StuckSocket {
        StuckSocket {
            owner: owner.into(),
            local: addr("10.0.0.1:40000"),
            remote: addr(remote),
            age: Duration::from_secs(age_s),
        }
    }

    #[test]
    fn fin_wait2_counts_only_past_fin_timeout() {
        let off = settings(TimeWaitReuse::Off);
        let mut at_timeout = stuck("pid 1 (a)", "10.0.0.2:80", 60);
        assert!(fin_wait2_findings(std::slice::from_ref(&at_timeout), &off).is_empty());
        at_timeout.age += Duration::from_millis(1);
        let findings = fin_wait2_findings(&[at_timeout], &off);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].severity, Severity::Warning);
        assert_eq!(findings[0].kind, FindingKind::FinWait2Stuck);
        assert_eq!(findings[0].advice, FIN_WAIT2_ADVICE);
    }

    #[test]
    fn fin_wait2_groups_by_owner() {
        let sockets = vec![
            stuck("pid 1 (a)", "10.0.0.2:80", 61),
            stuck("pid 1 (a)", "10.0.0.3:80", 303),
            stuck("pid 1 (a)", "10.0.0.2:80", 70),
            stuck("pid 1 (a)", "10.0.0.4:80", 65),
            stuck("pid 1 (a)", "10.0.0.5:80", 62),
            stuck("pid 2 (b)", "10.0.0.9:443", 10),
        ];
        let findings = fin_wait2_findings(&sockets, &settings(TimeWaitReuse::Off));
        assert_eq!(findings.len(), 1, "pid 2 is within tcp_fin_timeout");
        assert_eq!(findings[0].subject, "pid 1 (a)");
        assert_eq!(
            findings[0].evidence,
            "5 sockets in FIN_WAIT2 past tcp_fin_timeout (1m), oldest >=5m 3s, peers 10.0.0.3:80, 10.0.0.2:80, 10.0.0.4:80 +1 more"
        );
    }

    #[test]
    fn fin_wait2_critical_at_one_hundred() {
        let off = settings(TimeWaitReuse::Off);
        let many = |n| vec![stuck("pid 1 (a)", "10.0.0.2:80", 120); n];
        assert_eq!(
            fin_wait2_findings(&many(99), &off)[0].severity,
            Severity::Warning
        );
        assert_eq!(
            fin_wait2_findings(&many(100), &off)[0].severity,
            Severity::Critical
        );
    }
}
