//! Per-socket bookkeeping: how long each socket spent in its previous state,
//! who owns an accepted socket before its owner shows itself, and so who
//! owns a live socket the kernel's table lists; and the listeners, by
//! which accepted sockets and ports are attributed.
//!
//! Pure: takes decoded transitions, knows nothing of aya or the kernel, so it
//! is tested without root.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tcptrace_common::TcpState;

use crate::model::{
    health::Occupancy,
    transition::{Process, Transition},
};

/// How the owner of a transition's socket is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerSource {
    /// Seen on the CPU at one of this socket's process-context transitions.
    ProcessContext,
    /// An accepted socket, attributed to the one process owning the
    /// listening socket it arrived on; replaced as soon as the socket shows
    /// its own owner (at close).
    Listener,
}

impl OwnerSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::ProcessContext => "process_context",
            Self::Listener => "listener",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub process: Process,
    pub source: OwnerSource,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrackedTransition {
    pub transition: Transition,
    pub owner: Option<Owner>,
    /// `None` for a new socket or one first seen at this transition.
    pub time_in_old_state: Option<Duration>,
    /// FIN_WAIT2/CLOSING -> CLOSE: the kernel most likely replaced the socket
    /// with a TIME_WAIT minisock, which this tracepoint never shows. (A RST
    /// or the orphan FIN_WAIT2 timeout ends the same way.)
    pub likely_time_wait: bool,
}

struct SocketState {
    /// When it entered the state it is in.
    entered_at_ns: u64,
    /// Seen on the CPU at this socket's last process-context transition:
    /// the probe reports the owner only there (and at accept where fexit
    /// works), and its later transitions, in softirq, are the same owner's.
    process_owner: Option<Process>,
    listener_owner: Option<Process>,
    /// Last local port the kernel showed for this socket.
    local_port: u16,
}

struct Listener {
    /// When it was seen entering LISTEN (0 for one seeded from the table).
    since_ns: u64,
    netns_inode: Option<u32>,
    local: SocketAddr,
    owner: Process,
}

#[derive(Default)]
pub struct SocketTracker {
    // Keyed by cookies the kernel hands out, which no one can choose: a
    // fast hash with no defence against chosen keys is safe, and is paid for
    // every event.
    sockets: foldhash::HashMap<u64, SocketState>,
    listeners: foldhash::HashMap<u64, Listener>,
    /// Listeners closed since the kernel's per-owner counts were last
    /// read: the sockets they accepted were counted under their port
    /// meanwhile, and are still theirs.
    closed_listeners: Vec<Listener>,
    /// Closed listeners not kept because `MAX_CLOSED_LISTENERS` were.
    pub dropped_closed_listeners: u64,
    /// Fed only the records a leak verdict reads (`for_verdicts`): a socket
    /// leaving CLOSE_WAIT is forgotten then, as no later move of it will be
    /// recorded to end it.
    verdicts_only: bool,
}

impl SocketTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// For the records of `top` and `serve`, which a probe sends only for
    /// what a leak verdict reads, and the listeners'.
    pub fn for_verdicts() -> Self {
        Self {
            verdicts_only: true,
            ..Self::default()
        }
    }

    /// Sockets currently remembered (forgotten at CLOSE).
    pub fn tracked_sockets(&self) -> usize {
        self.sockets.len()
    }

    /// The owner of a live socket the table lists, if its history says:
    /// seen in process context, else its listener's. (A timewait
    /// minisock's is inferred, `model::inferred_owners`: the move that made
    /// it is not recorded for `top` and `serve`.)
    pub fn owner_of(&self, cookie: u64) -> Option<&Process> {
        let socket = self.sockets.get(&cookie)?;
        socket
            .process_owner
            .as_ref()
            .or(socket.listener_owner.as_ref())
    }

    /// How many entries its table holds.
    pub fn occupancy(&self) -> Occupancy {
        Occupancy::new("tracked_sockets", self.sockets.len(), None)
    }

    /// Forgets sockets and listeners the kernel's table no longer lists
    /// (their CLOSE was lost). Only those seen before the dump began:
    /// younger ones may simply postdate it.
    pub fn reconcile(&mut self, listed: &dyn Fn(u64) -> bool, dump_started_ns: u64) {
        self.sockets
            .retain(|cookie, s| s.entered_at_ns >= dump_started_ns || listed(*cookie));
        self.listeners
            .retain(|cookie, l| l.since_ns >= dump_started_ns || listed(*cookie));
    }

    pub fn observe(&mut self, mut transition: Transition) -> TrackedTransition {
        // Up to 6.12 the kernel reports a new child while it still carries
        // the cookie copied from its listener (it gets its own later): that
        // event is the child's, its cookie not known yet (0), and the owner
        // the probe looked up under the listener's cookie is not the child's.
        if transition.old_state == TcpState::Listen
            && transition.new_state == TcpState::SynRecv
            && self.listeners.contains_key(&transition.cookie)
        {
            transition.cookie = 0;
            transition.owner = None;
        }
        let Transition {
            cookie,
            old_state,
            new_state,
            timestamp_ns,
            ..
        } = transition;
        // Kernels before 6.x (6.1 among them) create the child already in
        // SYN_RECV without a transition: there it first shows itself at
        // SYN_RECV -> ESTABLISHED.
        // One lookup per event: the entry is read and then updated in place.
        // Cookie 0: a new child whose own cookie the kernel had not given yet.
        let slot = match cookie {
            0 => None,
            _ => self.sockets.get_mut(&cookie),
        };
        let is_new_child = (old_state == TcpState::Listen && new_state == TcpState::SynRecv)
            || (old_state == TcpState::SynRecv
                && new_state == TcpState::Established
                && slot.is_none());
        let is_new_socket = old_state == TcpState::Close || is_new_child;

        // A stale entry under a new socket's cookie cannot happen (cookies are
        // never reused) unless a CLOSE was lost; either way it says nothing.
        let previous = slot.as_deref().filter(|_| !is_new_socket);
        let time_in_old_state =
            previous.map(|s| Duration::from_nanos(timestamp_ns.saturating_sub(s.entered_at_ns)));
        // The kernel releases the local port just before the move to CLOSE;
        // the same socket (same cookie) had it a moment ago.
        if transition.local.port() == 0
            && let Some(known) = previous.map(|s| s.local_port).filter(|&p| p != 0)
        {
            transition.local.set_port(known);
        }

        let listener_owner = match previous.and_then(|s| s.listener_owner.clone()) {
            Some(owner) => Some(owner),
            None if is_new_child => listener_owner_of(&self.listeners, &transition),
            None => None,
        };
        if transition.owner.is_none() {
            transition.owner = previous.and_then(|s| s.process_owner.clone());
        }
        let owner = match (&transition.owner, &listener_owner) {
            (Some(process), _) => Some(Owner {
                process: process.clone(),
                source: OwnerSource::ProcessContext,
            }),
            (None, Some(process)) => Some(Owner {
                process: process.clone(),
                source: OwnerSource::Listener,
            }),
            (None, None) => None,
        };

        let state = SocketState {
            entered_at_ns: timestamp_ns,
            process_owner: transition.owner.clone(),
            listener_owner,
            local_port: transition.local.port(),
        };
        let keep = new_state != TcpState::Close
            && cookie != 0
            && !(self.verdicts_only && old_state == TcpState::CloseWait);
        match slot {
            Some(entry) if keep => *entry = state,
            Some(_) => {
                self.sockets.remove(&cookie);
            }
            None if keep => {
                self.sockets.insert(cookie, state);
            }
            None => {}
        }
        self.update_listeners(&transition);

        let likely_time_wait = new_state == TcpState::Close
            && matches!(old_state, TcpState::FinWait2 | TcpState::Closing);
        TrackedTransition {
            likely_time_wait,
            transition,
            owner,
            time_in_old_state,
        }
    }

    /// The one process owning every listener on `port` in namespace
    /// `netns_inode` that could have taken a socket with local address
    /// `ip` (any, when the probe counted it by port alone), if one does:
    /// the inferred owner of a socket having none of its own.
    pub fn listening_owner(
        &self,
        netns_inode: Option<u32>,
        ip: Option<IpAddr>,
        port: u16,
    ) -> Option<&Process> {
        let ip = ip.map(|ip| ip.to_canonical());
        let mut owners = self
            .listeners
            .values()
            .chain(&self.closed_listeners)
            .filter(|l| {
                l.local.port() == port
                    && l.netns_inode == netns_inode
                    && ip.is_none_or(|ip| {
                        l.local.ip().is_unspecified() || l.local.ip().to_canonical() == ip
                    })
            })
            .map(|l| &l.owner);
        let first = owners.next()?;
        owners
            .all(|other| other.tgid == first.tgid)
            .then_some(first)
    }

    /// After the kernel's per-owner counts were read: the listeners closed
    /// before have no more sockets counted under their port to claim.
    pub fn forget_closed_listeners(&mut self) {
        self.closed_listeners.clear();
    }

    /// A listener that existed before tracing began, owned by `owner`
    /// according to the holder scan.
    pub fn seed_listener(
        &mut self,
        cookie: u64,
        netns_inode: Option<u32>,
        local: SocketAddr,
        owner: Process,
    ) {
        self.listeners.entry(cookie).or_insert(Listener {
            since_ns: 0,
            netns_inode,
            local,
            owner,
        });
    }

    fn update_listeners(&mut self, t: &Transition) {
        if t.new_state == TcpState::Listen {
            if let Some(owner) = &t.owner {
                self.listeners.insert(
                    t.cookie,
                    Listener {
                        since_ns: t.timestamp_ns,
                        netns_inode: t.netns_inode,
                        local: t.local,
                        owner: owner.clone(),
                    },
                );
            }
        } else if t.old_state == TcpState::Listen && t.new_state == TcpState::Close {
            // LISTEN -> SYN_RECV is always a new child, even when (before
            // the kernel gives it its own) it shows its listener's cookie.
            if let Some(closed) = self.listeners.remove(&t.cookie) {
                if self.closed_listeners.len() < MAX_CLOSED_LISTENERS {
                    self.closed_listeners.push(closed);
                } else {
                    self.dropped_closed_listeners += 1;
                }
            }
        }
    }
}

/// Listeners closed between two reads of the per-owner counts that are kept
/// to attribute them (a process that opens and closes listeners in a loop).
const MAX_CLOSED_LISTENERS: usize = 4096;

/// The owner of the listener an accepted socket arrived on, if exactly one
/// process owns every listener that could have taken it. Listeners opened
/// before tcptrace started are unknown, so this stays a labelled inference,
/// never shown as the process-context owner.
fn listener_owner_of(
    listeners: &foldhash::HashMap<u64, Listener>,
    child: &Transition,
) -> Option<Process> {
    let child_ip = child.local.ip().to_canonical();
    let mut candidates = listeners.values().filter(|listener| {
        listener.local.port() == child.local.port()
            && listener.netns_inode == child.netns_inode
            && (listener.local.ip().is_unspecified()
                || listener.local.ip().to_canonical() == child_ip)
    });
    let first = candidates.next()?;
    candidates
        .all(|other| other.owner.tgid == first.owner.tgid)
        .then(|| first.owner.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn process(tgid: u32, comm: &str) -> Process {
        Process {
            tgid,
            comm: comm.into(),
        }
    }

    fn transition(
        cookie: u64,
        at_ms: u64,
        old_state: TcpState,
        new_state: TcpState,
        owner: Option<Process>,
        local: &str,
    ) -> Transition {
        let listen_related = old_state == TcpState::Listen
            || new_state == TcpState::Listen
            || (old_state == TcpState::SynRecv && new_state == TcpState::Established);
        Transition {
            timestamp_ns: at_ms * MS,
            cookie,
            skaddr: 0xffff_0000 + cookie,
            owner,
            local: local.parse().unwrap(),
            remote: "127.0.0.1:50000".parse().unwrap(),
            old_state,
            new_state,
            netns_inode: listen_related.then_some(4026531840),
            socket_inode: None,
        }
    }

    #[test]
    fn measures_time_in_the_old_state_and_forgets_on_close() {
        use TcpState::*;
        let client = Some(process(10, "client"));
        let mut tracker = SocketTracker::new();
        let steps = [
            (0, Close, SynSent, None),
            (3, SynSent, Established, Some(3 * MS)),
            (103, Established, FinWait1, Some(100 * MS)),
            (104, FinWait1, FinWait2, Some(MS)),
            (110, FinWait2, Close, Some(6 * MS)),
        ];
        for (at, old, new, expected) in steps {
            let tracked = tracker.observe(transition(
                1,
                at,
                old,
                new,
                client.clone(),
                "127.0.0.1:5000",
            ));
            assert_eq!(
                tracked.time_in_old_state.map(|d| d.as_nanos() as u64),
                expected
            );
            assert_eq!(tracked.likely_time_wait, old == FinWait2);
        }
        assert_eq!(tracker.tracked_sockets(), 0);
    }

    /// The probe names the owner only at process-context transitions; the
    /// softirq ones after them carry it from here, and a socket first seen
    /// in softirq stays unknown.
    #[test]
    fn softirq_transitions_carry_the_owner_of_the_last_process_context_one() {
        use TcpState::*;
        let client = process(10, "client");
        let mut tracker = SocketTracker::new();
        let at = |at, old, new, owner| transition(1, at, old, new, owner, "127.0.0.1:5000");
        tracker.observe(at(0, Close, SynSent, Some(client.clone())));
        for (time, old, new) in [
            (3, SynSent, Established),
            (9, FinWait1, FinWait2),
            (12, FinWait2, Close),
        ] {
            let tracked = tracker.observe(at(time, old, new, None));
            assert_eq!(
                tracked.owner,
                Some(Owner {
                    process: client.clone(),
                    source: OwnerSource::ProcessContext
                }),
                "{old:?} -> {new:?}"
            );
            assert_eq!(tracked.transition.owner, Some(client.clone()));
        }
        let unseen = tracker.observe(transition(
            2,
            20,
            Established,
            FinWait1,
            None,
            "127.0.0.1:5001",
        ));
        assert_eq!(unseen.owner, None);
    }

    #[test]
    fn restores_the_local_port_the_kernel_released_before_close() {
        use TcpState::*;
        let mut tracker = SocketTracker::new();
        let connecting = tracker.observe(transition(1, 0, Close, SynSent, None, "127.0.0.1:0"));
        assert_eq!(
            connecting.transition.local.port(),
            0,
            "not assigned yet: shown as is"
        );
        tracker.observe(transition(
            1,
            1,
            SynSent,
            Established,
            None,
            "127.0.0.1:5000",
        ));
        let closed = tracker.observe(transition(1, 2, Established, Close, None, "127.0.0.1:0"));
        assert_eq!(closed.transition.local, "127.0.0.1:5000".parse().unwrap());
        let unknown = tracker.observe(transition(2, 3, LastAck, Close, None, "127.0.0.1:0"));
        assert_eq!(
            unknown.transition.local.port(),
            0,
            "never seen: nothing to restore"
        );
    }

    #[test]
    fn a_socket_first_seen_mid_life_has_no_duration() {
        let mut tracker = SocketTracker::new();
        let tracked = tracker.observe(transition(
            5,
            50,
            TcpState::Established,
            TcpState::CloseWait,
            None,
            "127.0.0.1:80",
        ));
        assert_eq!(tracked.time_in_old_state, None);
        assert_eq!(tracked.owner, None);
        assert_eq!(tracker.tracked_sockets(), 1);
    }

    #[test]
    fn accepted_sockets_take_the_listener_owner_until_their_own_shows() {
        use TcpState::*;
        let server = process(20, "server");
        let mut tracker = SocketTracker::new();
        tracker.observe(transition(
            1,
            0,
            Close,
            Listen,
            Some(server.clone()),
            "0.0.0.0:8080",
        ));

        let child = |at, old, new, owner| transition(2, at, old, new, owner, "127.0.0.1:8080");
        let accepted = tracker.observe(child(5, Listen, SynRecv, None));
        assert_eq!(
            accepted.owner,
            Some(Owner {
                process: server.clone(),
                source: OwnerSource::Listener
            })
        );
        assert_eq!(
            accepted.time_in_old_state, None,
            "a new child was never in LISTEN"
        );
        // The FIN arrives in softirq: the kernel knows no owner, the listener's still holds.
        let fin = tracker.observe(child(9, Established, CloseWait, None));
        assert_eq!(fin.owner.unwrap().source, OwnerSource::Listener);
        let closed = tracker.observe(child(12, CloseWait, LastAck, Some(server.clone())));
        assert_eq!(closed.owner.unwrap().source, OwnerSource::ProcessContext);

        tracker.observe(transition(
            1,
            20,
            Listen,
            Close,
            Some(server),
            "0.0.0.0:8080",
        ));
        let late = tracker.observe(transition(3, 21, Listen, SynRecv, None, "127.0.0.1:8080"));
        assert_eq!(late.owner, None, "no listener left to attribute to");
    }

    /// 6.1 and 6.12 report a new child while it still carries its
    /// listener's cookie: shown as cookie 0, the listener stays a listener,
    /// and the child's own cookie shows up at SYN_RECV -> ESTABLISHED.
    #[test]
    fn a_child_reported_under_its_listeners_cookie_keeps_the_listener() {
        use TcpState::*;
        let server = process(20, "server");
        // The listener's cookie, 1, is what the kernel showed.
        let clone_cookie = 1;
        let mut tracker = SocketTracker::new();
        tracker.observe(transition(
            1,
            0,
            Close,
            Listen,
            Some(server.clone()),
            "0.0.0.0:8080",
        ));
        // The probe found the listener's owner under the listener's cookie.
        let clone = tracker.observe(transition(
            clone_cookie,
            4,
            Listen,
            SynRecv,
            Some(server.clone()),
            "127.0.0.1:8080",
        ));
        assert_eq!(clone.transition.cookie, 0, "not the listener's cookie");
        assert_eq!(clone.owner.unwrap().source, OwnerSource::Listener);
        let child = |at, old, new| transition(2, at, old, new, None, "127.0.0.1:8080");
        let established = tracker.observe(child(5, SynRecv, Established));
        assert_eq!(
            established.owner,
            Some(Owner {
                process: server.clone(),
                source: OwnerSource::Listener
            }),
            "listener owner"
        );
        assert_eq!(established.time_in_old_state, None);
        let fin = tracker.observe(child(9, Established, CloseWait));
        assert_eq!(fin.owner.unwrap().process, server);
        assert_eq!(fin.time_in_old_state, Some(Duration::from_millis(4)));
        // The listener's entry and the child's; no entry under cookie 0.
        assert_eq!(tracker.tracked_sockets(), 2);
    }

    /// With records for verdicts only, a socket's move out of CLOSE_WAIT
    /// is the last recorded: it is forgotten then, not at a CLOSE that
    /// will never come.
    #[test]
    fn fed_verdicts_only_a_socket_is_forgotten_as_it_leaves_close_wait() {
        use TcpState::*;
        let server = Some(process(20, "server"));
        for (verdicts, kept) in [(false, 1), (true, 0)] {
            let mut tracker = if verdicts {
                SocketTracker::for_verdicts()
            } else {
                SocketTracker::new()
            };
            tracker.observe(transition(
                1,
                0,
                Established,
                CloseWait,
                None,
                "127.0.0.1:80",
            ));
            assert_eq!(tracker.tracked_sockets(), 1);
            tracker.observe(transition(
                1,
                5,
                CloseWait,
                LastAck,
                server.clone(),
                "127.0.0.1:80",
            ));
            assert_eq!(tracker.tracked_sockets(), kept);
        }
    }

    /// The kernel counts an accepted socket of no known owner under its
    /// port; a listener closed before those counts were read still claims
    /// them, until they were.
    #[test]
    fn a_port_is_its_listeners_even_just_after_it_closed() {
        use TcpState::*;
        let server = process(20, "server");
        let mut tracker = SocketTracker::new();
        let listen = transition(9, 0, Close, Listen, Some(server.clone()), "0.0.0.0:8080");
        tracker.observe(listen);
        let netns = Some(4026531840);
        assert_eq!(tracker.listening_owner(netns, None, 8080), Some(&server));
        assert_eq!(tracker.listening_owner(netns, None, 8081), None);
        assert_eq!(tracker.listening_owner(None, None, 8080), None);
        tracker.observe(transition(
            9,
            5,
            Listen,
            Close,
            Some(server.clone()),
            "0.0.0.0:8080",
        ));
        assert_eq!(tracker.listening_owner(netns, None, 8080), Some(&server));
        tracker.forget_closed_listeners();
        assert_eq!(tracker.listening_owner(netns, None, 8080), None);
        // Two owners on one port: no one is named.
        tracker.observe(transition(
            10,
            6,
            Close,
            Listen,
            Some(server.clone()),
            "127.0.0.1:8080",
        ));
        tracker.observe(transition(
            11,
            7,
            Close,
            Listen,
            Some(process(21, "other")),
            "127.0.0.2:8080",
        ));
        assert_eq!(tracker.listening_owner(netns, None, 8080), None);
        let first: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            tracker.listening_owner(netns, Some(first), 8080),
            Some(&server)
        );
    }

    #[test]
    fn no_attribution_across_namespaces_addresses_or_disagreeing_listeners() {
        use TcpState::*;
        let mut tracker = SocketTracker::new();
        tracker.observe(transition(
            1,
            0,
            Close,
            Listen,
            Some(process(20, "a")),
            "127.0.0.2:80",
        ));
        let mut other_ns = transition(2, 1, Listen, SynRecv, None, "127.0.0.3:80");
        assert_eq!(
            tracker.observe(other_ns.clone()).owner,
            None,
            "other address"
        );
        other_ns.local = "127.0.0.2:80".parse().unwrap();
        other_ns.netns_inode = Some(1);
        other_ns.cookie = 3;
        assert_eq!(tracker.observe(other_ns).owner, None, "other namespace");

        // Two processes listening on the same port (SO_REUSEPORT): ambiguous.
        tracker.observe(transition(
            4,
            2,
            Close,
            Listen,
            Some(process(21, "b")),
            "0.0.0.0:80",
        ));
        let child = tracker.observe(transition(5, 3, Listen, SynRecv, None, "127.0.0.2:80"));
        assert_eq!(child.owner, None);
    }

    #[test]
    fn sockets_whose_close_was_lost_are_forgotten_by_the_table() {
        let mut tracker = SocketTracker::new();
        let server = process(7, "server");
        let local = "127.0.0.1:8080";
        let owner = Some(server);
        tracker.observe(transition(
            1,
            0,
            TcpState::Close,
            TcpState::Listen,
            owner.clone(),
            local,
        ));
        tracker.observe(transition(
            2,
            0,
            TcpState::Close,
            TcpState::SynSent,
            owner.clone(),
            local,
        ));
        tracker.observe(transition(
            3,
            5,
            TcpState::Close,
            TcpState::SynSent,
            owner,
            local,
        ));
        assert_eq!(tracker.tracked_sockets(), 3);
        // The table, dumped at 4 ms, lists the listener only: socket 2's CLOSE
        // was lost; socket 3 is younger than the dump.
        tracker.reconcile(&|cookie| cookie == 1, 4 * MS);
        assert_eq!(tracker.tracked_sockets(), 2);
        assert_eq!(tracker.listeners.len(), 1);
        tracker.reconcile(&|_| false, 10 * MS);
        assert_eq!(tracker.tracked_sockets(), 0);
        assert!(tracker.listeners.is_empty());
    }

    /// The table lists sockets by cookie with no owner: a live socket's
    /// comes from its history, and goes with its CLOSE.
    #[test]
    fn owners_of_live_sockets() {
        use TcpState::*;
        let client = Some(process(10, "client"));
        let mut tracker = SocketTracker::new();
        let at = |cookie, at, old, new, owner: &Option<Process>| {
            transition(cookie, at, old, new, owner.clone(), "127.0.0.1:5000")
        };
        tracker.observe(at(1, 0, Close, SynSent, &client));
        tracker.observe(at(1, 3, SynSent, Established, &None));
        assert_eq!(tracker.owner_of(1).map(|p| p.tgid), Some(10));
        for (at_ms, old, new) in [
            (10, Established, FinWait1),
            (11, FinWait1, FinWait2),
            (12, FinWait2, Close),
        ] {
            tracker.observe(at(1, at_ms, old, new, &None));
        }
        assert!(tracker.owner_of(1).is_none());
        // Closed from LAST_ACK: no owner left.
        for (at_ms, old, new) in [
            (0, Close, SynSent),
            (20, CloseWait, LastAck),
            (21, LastAck, Close),
        ] {
            tracker.observe(at(2, at_ms, old, new, &client));
        }
        assert!(tracker.owner_of(2).is_none());
        assert_eq!(tracker.occupancy().entries, 0);
    }
}
