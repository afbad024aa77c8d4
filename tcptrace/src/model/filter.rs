//! Which transitions the user asked to see. The probe applies the exact
//! parts of the owner and port filters in the kernel to save ring-buffer
//! traffic; this is the complete test, applied to every delivered event.

use tcptrace_common::TcpState;

use crate::model::tracker::TrackedTransition;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Owner process (tgid). Transitions of a socket whose owner is unknown
    /// never match: tcptrace does not claim what it cannot tell.
    pub owner_pid: Option<u32>,
    /// Local or remote port. A connecting socket has local port 0 until the
    /// kernel picks one (at SYN_SENT), so that event matches by remote port only.
    pub port: Option<u16>,
    /// Matches when the old or the new state is one of these.
    pub states: Vec<TcpState>,
    /// By the address the connection really uses: an IPv4 peer on a
    /// dual-stack socket (::ffff:a.b.c.d) counts as IPv4.
    pub family: Option<IpFamily>,
}

impl Filter {
    pub fn matches(&self, tracked: &TrackedTransition) -> bool {
        let t = &tracked.transition;
        if let Some(pid) = self.owner_pid
            && tracked.owner.as_ref().map(|o| o.process.tgid) != Some(pid)
        {
            return false;
        }
        if let Some(port) = self.port
            && t.local.port() != port
            && t.remote.port() != port
        {
            return false;
        }
        if !self.states.is_empty()
            && !self.states.contains(&t.old_state)
            && !self.states.contains(&t.new_state)
        {
            return false;
        }
        if let Some(family) = self.family {
            let is_v4 = t.local.ip().to_canonical().is_ipv4();
            if is_v4 != (family == IpFamily::V4) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::tracker::{Owner, OwnerSource},
        model::transition::{Process, Transition},
    };

    fn tracked(owner: Option<u32>, local: &str, remote: &str) -> TrackedTransition {
        TrackedTransition {
            transition: Transition {
                timestamp_ns: 1,
                cookie: 1,
                skaddr: 1,
                owner: None,
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                old_state: TcpState::Established,
                new_state: TcpState::CloseWait,
                netns_inode: None,
                socket_inode: None,
            },
            owner: owner.map(|tgid| Owner {
                process: Process {
                    tgid,
                    comm: "x".into(),
                },
                source: OwnerSource::ProcessContext,
            }),
            time_in_old_state: None,
            likely_time_wait: false,
        }
    }

    #[test]
    fn owner_filter_never_matches_an_unknown_owner() {
        let filter = Filter {
            owner_pid: Some(7),
            ..Filter::default()
        };
        assert!(filter.matches(&tracked(Some(7), "127.0.0.1:1", "127.0.0.1:2")));
        assert!(!filter.matches(&tracked(Some(8), "127.0.0.1:1", "127.0.0.1:2")));
        assert!(!filter.matches(&tracked(None, "127.0.0.1:1", "127.0.0.1:2")));
    }

    #[test]
    fn port_matches_either_side() {
        let filter = Filter {
            port: Some(80),
            ..Filter::default()
        };
        assert!(filter.matches(&tracked(None, "127.0.0.1:80", "127.0.0.1:2")));
        assert!(filter.matches(&tracked(None, "127.0.0.1:0", "127.0.0.1:80")));
        assert!(!filter.matches(&tracked(None, "127.0.0.1:81", "127.0.0.1:2")));
    }

    #[test]
    fn state_and_family() {
        let close_wait = Filter {
            states: vec![TcpState::CloseWait],
            ..Filter::default()
        };
        assert!(close_wait.matches(&tracked(None, "127.0.0.1:1", "127.0.0.1:2")));
        let listen = Filter {
            states: vec![TcpState::Listen],
            ..Filter::default()
        };
        assert!(!listen.matches(&tracked(None, "127.0.0.1:1", "127.0.0.1:2")));

        let v4 = Filter {
            family: Some(IpFamily::V4),
            ..Filter::default()
        };
        let v6 = Filter {
            family: Some(IpFamily::V6),
            ..Filter::default()
        };
        let mapped = tracked(None, "[::ffff:127.0.0.1]:1", "[::ffff:127.0.0.1]:2");
        assert!(v4.matches(&mapped));
        assert!(!v6.matches(&mapped));
        assert!(v6.matches(&tracked(None, "[::1]:1", "[::1]:2")));
    }
}
