//! Why a leaked socket has no origin stack or no EOF stack, said from what
//! tcptrace saw: the program's own behaviour (it never read EOF), what
//! this kernel shows (no fexit on accept()), the copy budget, or a socket
//! older than tcptrace. Never worded as a tracer fault when it is not one;
//! where two causes cannot be told apart, both are named.

use serde::Serialize;
use tcptrace_common::StackKind;

use crate::model::leaks::Provenance;

/// Which moment an origin stack was copied at (JSON: `first_read`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginMoment {
    Connect,
    Accept,
    FirstRead,
    FirstWrite,
}

impl OriginMoment {
    /// The moment a stack of `kind` shows, if it is an origin.
    pub fn of(kind: StackKind) -> Option<Self> {
        match kind {
            StackKind::Connect => Some(Self::Connect),
            StackKind::Accept => Some(Self::Accept),
            StackKind::FirstRead => Some(Self::FirstRead),
            StackKind::FirstWrite => Some(Self::FirstWrite),
            StackKind::Eof => None,
        }
    }

    /// The text report's label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::FirstRead => "first read",
            Self::FirstWrite => "first write",
        }
    }
}

/// `--stacks`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StackMode {
    #[default]
    Off,
    /// Every copy paid from a budget.
    Sampled,
    /// Every copy taken.
    Full,
}

/// What the probe could copy, and what the budget refused: the facts a
/// missing stack is explained by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StackSampling {
    pub mode: StackMode,
    /// Copies a second, host-wide; `None` with no budget.
    pub budget_per_second: Option<u32>,
    /// This kernel lets the probe see accept() (fexit).
    pub accept_seen: bool,
    /// This kernel lets it see reads (`sock:sock_recv_length`, 6.3+).
    pub reads_seen: bool,
    /// ... and writes (`sock:sock_send_length`).
    pub writes_seen: bool,
    /// Since tcptrace started.
    pub copies_taken: u64,
    pub copies_refused: u64,
    /// Of `copies_taken`, those paid by targeted processes' budget.
    pub copies_targeted: u64,
    /// Of `copies_taken`, those with their thread's Python frames, and the
    /// nanoseconds the probe spent walking them.
    pub python_frames_copied: u64,
    pub python_frames_ns: u64,
    /// Processes whose new sockets are copied from a budget of their own.
    pub targeted_processes: usize,
}

impl StackSampling {
    /// Some copy was refused: any missing stack may be a sample's gap.
    pub fn is_sampled(&self) -> bool {
        self.copies_refused > 0
    }
}

/// What is known of one leaked socket's stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketStackFacts {
    pub provenance: Provenance,
    /// Its process's leaks all look accepted (one local port, many remote
    /// ones): a socket's own side is not kept, to keep no state per socket.
    pub accepted: bool,
    pub has_origin: bool,
    pub has_eof: bool,
}

// The causes of a missing origin stack, as literals so that every
// combination is one static sentence.
macro_rules! not_sampled {
    () => {
        "not sampled: the copy budget was spent when it was made (a process that leaks without a code path gets a budget of its own for its new sockets)"
    };
}
macro_rules! accept_unseen {
    () => {
        "accepted and never read or written: this kernel refuses fexit on accept(), which would show where it was accepted"
    };
}
macro_rules! accept_and_reads_unseen {
    () => {
        "accepted and this kernel shows neither accept() (fexit refused) nor reads (sock:sock_recv_length is Linux 6.3+)"
    };
}
macro_rules! made_before {
    () => {
        "made before tcptrace started, so its connect, accept or first read was not seen"
    };
}

/// Why the socket has no origin stack; `None` when it has one. Every
/// cause that fits is named, most likely first.
pub fn origin_gap(facts: &SocketStackFacts, sampling: &StackSampling) -> Option<&'static str> {
    if facts.has_origin {
        return None;
    }
    if facts.provenance == Provenance::PreExisting {
        return Some(concat!(
            made_before!(),
            "; this process's next leak will carry one"
        ));
    }
    if sampling.mode == StackMode::Off {
        return Some("stacks off");
    }
    let unseen_accept = facts.accepted && !sampling.accept_seen;
    Some(
        match (sampling.is_sampled(), unseen_accept, sampling.reads_seen) {
            (false, false, _) => made_before!(),
            (false, true, true) => concat!(accept_unseen!(), "; or ", made_before!()),
            (false, true, false) => concat!(accept_and_reads_unseen!(), "; or ", made_before!()),
            (true, false, _) => concat!(not_sampled!(), "; or ", made_before!()),
            (true, true, true) => concat!(
                not_sampled!(),
                "; or ",
                accept_unseen!(),
                "; or ",
                made_before!()
            ),
            (true, true, false) => concat!(
                not_sampled!(),
                "; or ",
                accept_and_reads_unseen!(),
                "; or ",
                made_before!()
            ),
        },
    )
}

/// Why the socket has no EOF stack; `None` when it has one. Closed sockets
/// held by a file never read EOF in CLOSE_WAIT.
pub fn eof_gap(facts: &SocketStackFacts, sampling: &StackSampling) -> Option<&'static str> {
    if facts.has_eof {
        return None;
    }
    Some(match sampling.mode {
        _ if facts.provenance == Provenance::PreExisting => {
            "in CLOSE_WAIT before tcptrace started: a read of EOF then was not seen"
        }
        StackMode::Off => "stacks off",
        _ if !sampling.reads_seen => {
            "this kernel does not show reads (sock:sock_recv_length is Linux 6.3+)"
        }
        _ if sampling.is_sampled() => {
            "the process did not read EOF after the peer closed, or its read was not sampled (the copy budget was spent)"
        }
        _ => "the process did not read EOF after the peer closed: it stopped reading before",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(refused: u64, accept: bool) -> StackSampling {
        StackSampling {
            mode: StackMode::Sampled,
            budget_per_second: Some(500),
            accept_seen: accept,
            reads_seen: true,
            writes_seen: true,
            copies_refused: refused,
            ..StackSampling::default()
        }
    }

    fn facts(provenance: Provenance, accepted: bool) -> SocketStackFacts {
        SocketStackFacts {
            provenance,
            accepted,
            has_origin: false,
            has_eof: false,
        }
    }

    #[test]
    fn a_socket_with_its_stacks_has_no_gap() {
        let all = SocketStackFacts {
            has_origin: true,
            has_eof: true,
            ..facts(Provenance::Observed, true)
        };
        assert_eq!(origin_gap(&all, &sampling(9, false)), None);
        assert_eq!(eof_gap(&all, &sampling(9, false)), None);
    }

    #[test]
    fn an_unsampled_host_says_what_the_program_did_not_do() {
        let quiet = sampling(0, false);
        let accepted = facts(Provenance::Observed, true);
        let origin = origin_gap(&accepted, &quiet).unwrap();
        assert!(
            origin.starts_with("accepted and never read or written"),
            "{origin}"
        );
        assert!(origin.contains("fexit"), "{origin}");
        assert!(!origin.contains("sampled"), "nothing was refused: {origin}");
        let eof = eof_gap(&accepted, &quiet).unwrap();
        assert!(eof.starts_with("the process did not read EOF"), "{eof}");
        assert!(!eof.contains("tcptrace"), "not a tracer fault: {eof}");
        // Where accept() is seen, an accepted socket without a stack is old.
        let origin = origin_gap(&accepted, &sampling(0, true)).unwrap();
        assert!(
            origin.starts_with("made before tcptrace started"),
            "{origin}"
        );
    }

    #[test]
    fn a_sampled_host_names_every_cause() {
        let busy = sampling(12, false);
        let origin = origin_gap(&facts(Provenance::Observed, true), &busy).unwrap();
        assert!(origin.starts_with("not sampled"), "{origin}");
        assert!(origin.contains("never read"), "{origin}");
        assert!(origin.contains("before tcptrace started"), "{origin}");
        let eof = eof_gap(&facts(Provenance::Observed, true), &busy).unwrap();
        assert!(eof.contains("not sampled"), "{eof}");
        let client = origin_gap(&facts(Provenance::Observed, false), &busy).unwrap();
        assert!(!client.contains("accepted"), "{client}");
    }

    #[test]
    fn old_sockets_and_off_say_so() {
        let pre = facts(Provenance::PreExisting, true);
        let origin = origin_gap(&pre, &sampling(0, true)).unwrap();
        assert!(origin.starts_with("made before tcptrace started"));
        assert!(origin.contains("next leak will carry one"));
        let off = StackSampling::default();
        let new = facts(Provenance::Observed, true);
        assert_eq!(origin_gap(&new, &off), Some("stacks off"));
        assert_eq!(eof_gap(&new, &off), Some("stacks off"));
        assert!(
            eof_gap(&pre, &off)
                .unwrap()
                .contains("before tcptrace started")
        );
        assert_eq!(
            OriginMoment::of(StackKind::FirstWrite),
            Some(OriginMoment::FirstWrite)
        );
        assert_eq!(OriginMoment::of(StackKind::Eof), None);
        assert_eq!(
            serde_json::to_value(OriginMoment::FirstRead).unwrap(),
            "first_read"
        );
    }
}
