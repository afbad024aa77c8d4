//! Listen backlog: full accept queues and handshakes that never finish.

use std::net::SocketAddr;

use super::{Finding, FindingKind, Severity};
use crate::model::endpoint::endpoint;

/// One listening socket's queues, as `ss -lt` shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerLoad {
    pub owner: String,
    pub local: SocketAddr,
    /// Half-open connections to it (SYN_RECV).
    pub syn_recv: u64,
    /// Connections waiting for accept() (Recv-Q of a listener).
    pub accept_queue: u64,
    /// The listen() backlog, capped by net.core.somaxconn (Send-Q).
    pub accept_backlog: u64,
}

/// Half full: accept() falls behind and a burst will fill the rest.
const ACCEPT_QUEUE_WARNING_PERCENT: u64 = 50;

/// Half-open connections past both the listen backlog and 128 (the
/// smallest usual tcp_max_syn_backlog) are not a busy server's handshakes
/// in flight but handshakes that never finish.
const SYN_RECV_WARNING_FLOOR: u64 = 128;

const ACCEPT_QUEUE_ADVICE: &str = "The process does not accept() fast enough: its accept queue is full and the kernel drops new connections; add acceptor threads or raise the backlog (listen(), net.core.somaxconn).";

const SYN_RECV_ADVICE: &str = "Handshakes are not completing: clients vanish after SYN (a SYN flood or a broken path); check net.ipv4.tcp_syncookies and tcp_max_syn_backlog.";

pub fn syn_backlog_findings(listeners: &[ListenerLoad]) -> Vec<Finding> {
    listeners.iter().filter_map(listener_finding).collect()
}

fn listener_finding(listener: &ListenerLoad) -> Option<Finding> {
    let backlog = listener.accept_backlog;
    // The kernel drops once the queue holds one more than the backlog; at
    // the backlog the next connection is the last one it takes.
    let queue_full = backlog > 0 && listener.accept_queue >= backlog;
    let queue_filling = backlog > 0
        && u128::from(listener.accept_queue) * 100
            >= u128::from(backlog) * u128::from(ACCEPT_QUEUE_WARNING_PERCENT);
    let half_open_build_up = listener.syn_recv >= SYN_RECV_WARNING_FLOOR.max(backlog);
    // A slow acceptor explains SYN_RECV too (the kernel stops completing
    // handshakes into a full queue), so the accept queue's advice wins.
    let (severity, advice) = if queue_full {
        (Severity::Critical, ACCEPT_QUEUE_ADVICE)
    } else if queue_filling {
        (Severity::Warning, ACCEPT_QUEUE_ADVICE)
    } else if half_open_build_up {
        (Severity::Warning, SYN_RECV_ADVICE)
    } else {
        return None;
    };
    Some(Finding {
        kind: FindingKind::SynBacklog,
        severity,
        subject: format!("listener {}, {}", endpoint(listener.local), listener.owner),
        evidence: format!(
            "accept queue {} of {}, {} in SYN_RECV",
            listener.accept_queue, backlog, listener.syn_recv
        ),
        advice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diagnose::test_support::addr;

    fn listener(syn_recv: u64, accept_queue: u64, accept_backlog: u64) -> ListenerLoad {
        ListenerLoad {
            owner: "pid 1 (nginx)".into(),
            local: addr("0.0.0.0:80"),
            syn_recv,
            accept_queue,
            accept_backlog,
        }
    }

    fn backlog_verdict(load: ListenerLoad) -> Option<(Severity, &'static str)> {
        syn_backlog_findings(&[load])
            .first()
            .map(|f| (f.severity, f.advice))
    }

    #[test]
    fn accept_queue_edges() {
        assert_eq!(
            backlog_verdict(listener(0, 511, 511)),
            Some((Severity::Critical, ACCEPT_QUEUE_ADVICE))
        );
        assert_eq!(
            backlog_verdict(listener(0, 510, 511)),
            Some((Severity::Warning, ACCEPT_QUEUE_ADVICE))
        );
        // Half of 511 is 255.5: 256 is at it, 255 below.
        assert_eq!(
            backlog_verdict(listener(0, 256, 511)),
            Some((Severity::Warning, ACCEPT_QUEUE_ADVICE))
        );
        assert_eq!(backlog_verdict(listener(0, 255, 511)), None);
        // A zero backlog (unknown) is never full.
        assert_eq!(backlog_verdict(listener(0, 0, 0)), None);
    }

    #[test]
    fn syn_recv_edges() {
        // At least max(128, backlog).
        assert_eq!(
            backlog_verdict(listener(128, 0, 64)),
            Some((Severity::Warning, SYN_RECV_ADVICE))
        );
        assert_eq!(backlog_verdict(listener(127, 0, 64)), None);
        assert_eq!(
            backlog_verdict(listener(4096, 0, 4096)),
            Some((Severity::Warning, SYN_RECV_ADVICE))
        );
        assert_eq!(backlog_verdict(listener(4095, 0, 4096)), None);
        // A full queue explains the half-open ones: its advice wins.
        assert_eq!(
            backlog_verdict(listener(4096, 4096, 4096)),
            Some((Severity::Critical, ACCEPT_QUEUE_ADVICE))
        );
    }

    #[test]
    fn listener_subject_and_evidence() {
        let finding = &syn_backlog_findings(&[listener(3, 128, 128)])[0];
        assert_eq!(finding.kind, FindingKind::SynBacklog);
        assert_eq!(finding.subject, "listener 0.0.0.0:80, pid 1 (nginx)");
        assert_eq!(finding.evidence, "accept queue 128 of 128, 3 in SYN_RECV");
    }
}
