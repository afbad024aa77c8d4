//! Which sockets are leaking. Pure: fed decoded events, snapshots of the
//! kernel's socket table and the current time, so it is tested without root.
//!
//! Two kinds of leak:
//! - CLOSE_WAIT: the peer closed, the application never did. Leaving
//!   CLOSE_WAIT by any path (LAST_ACK, or straight to CLOSE by RST, linger 0
//!   or unread data) ends it; "never reached LAST_ACK" is not the test.
//! - closed but held: the socket reached CLOSE (usually a peer RST) while an
//!   fd still refers to it, and the kernel never destroyed it.
//!
//! Live events can be lost (a full ring buffer), so the kernel's table is the
//! authority: [`LeakTracker::reconcile_close_wait`] adds what events missed
//! and drops what they failed to end. A lost event can delay a leak's
//! detection but never make a false one.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use tcptrace_common::TcpState;

use crate::{model::kernel_socket::KernelSocket, model::transition::Transition};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeakKind {
    CloseWait,
    ClosedHeld,
}

impl LeakKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::CloseWait => "close_wait",
            Self::ClosedHeld => "closed_held",
        }
    }
}

/// How tcptrace learned of the suspect, which decides what its age means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// Its transition was seen: the age is exact.
    Observed,
    /// Already in CLOSE_WAIT when tcptrace started: the age is at least
    /// the time since then.
    PreExisting,
    /// Found in the kernel table after its transition was lost: the age is
    /// at least the time since that snapshot.
    Recovered,
}

impl Provenance {
    pub fn name(self) -> &'static str {
        match self {
            Self::Observed => "observed",
            Self::PreExisting => "pre_existing",
            Self::Recovered => "recovered",
        }
    }

    pub fn age_is_lower_bound(self) -> bool {
        self != Self::Observed
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspect {
    pub cookie: u64,
    pub kind: LeakKind,
    /// CLOCK_MONOTONIC ns at which it entered the leaking state (or was first seen there).
    pub since_ns: u64,
    pub provenance: Provenance,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket file's inode, through which its holders are found.
    pub inode: Option<u64>,
    pub netns_inode: Option<u64>,
}

impl Suspect {
    /// What the kernel's table says of it: its file's inode and namespace.
    fn learn(&mut self, socket: &KernelSocket) {
        self.inode = (socket.inode != 0).then_some(socket.inode);
        self.netns_inode = Some(socket.netns_inode);
    }

    pub fn age(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.since_ns))
    }
}

#[derive(Default)]
pub struct LeakTracker {
    // Both keyed by cookies the kernel hands out, which no one can choose: a
    // fast hash with no defence against chosen keys is safe, and is paid for
    // every event.
    suspects: foldhash::HashMap<u64, Suspect>,
    /// Suspects the last reconciliation removed or added on the kernel's
    /// word: if their late event shows up, it was a race, not a loss.
    removed_by_reconcile: foldhash::HashSet<u64>,
    /// Sockets that left CLOSE_WAIT since a host read was asked for: a
    /// table dumped before they left lists them there, and their leave,
    /// already seen, explains it (`None`: no read is under way).
    left_during_read: Option<foldhash::HashSet<u64>>,
    corrections: u64,
}

/// Leaves remembered during one host read: beyond them a socket that left
/// while the table was read may be adopted until the next read.
const MAX_LEFT_DURING_READ: usize = 1 << 18;

impl LeakTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Times the kernel table contradicted the events (lost events).
    pub fn corrections(&self) -> u64 {
        self.corrections
    }

    pub fn suspects(&self) -> impl Iterator<Item = &Suspect> {
        self.suspects.values()
    }

    /// Suspects in their leaking state for at least `min_age`.
    pub fn leaks(&self, now_ns: u64, min_age: Duration) -> Vec<&Suspect> {
        let mut leaks: Vec<&Suspect> = self
            .suspects
            .values()
            .filter(|s| s.age(now_ns) >= min_age)
            .collect();
        leaks.sort_by_key(|s| (s.since_ns, s.cookie));
        leaks
    }

    /// A host read is about to begin: from now until its reconciliation,
    /// sockets leaving CLOSE_WAIT are remembered.
    pub fn reading(&mut self) {
        self.left_during_read.get_or_insert_with(Default::default);
    }

    /// The host read was joined (or failed): leaves are no longer
    /// remembered.
    pub fn read_done(&mut self) {
        self.left_during_read = None;
    }

    pub fn observe(&mut self, t: &Transition) {
        if t.old_state == TcpState::CloseWait
            && let Some(left) = &mut self.left_during_read
            && left.len() < MAX_LEFT_DURING_READ
        {
            left.insert(t.cookie);
        }
        if !self.removed_by_reconcile.is_empty()
            && self.removed_by_reconcile.remove(&t.cookie)
            && t.old_state == TcpState::CloseWait
        {
            // Its leave was only late, not lost.
            self.corrections = self.corrections.saturating_sub(1);
        }
        match t.new_state {
            TcpState::CloseWait => {
                if let Some(previous) = self.suspects.get(&t.cookie)
                    && previous.provenance == Provenance::Recovered
                {
                    // Its entry was only late, not lost.
                    self.corrections = self.corrections.saturating_sub(1);
                }
                let previous = self.suspects.remove(&t.cookie);
                self.suspects.insert(
                    t.cookie,
                    Suspect {
                        cookie: t.cookie,
                        kind: LeakKind::CloseWait,
                        since_ns: t.timestamp_ns,
                        provenance: Provenance::Observed,
                        local: t.local,
                        remote: t.remote,
                        inode: previous.as_ref().and_then(|p| p.inode),
                        netns_inode: t
                            .netns_inode
                            .map(u64::from)
                            .or(previous.and_then(|p| p.netns_inode)),
                    },
                );
            }
            TcpState::Close => {
                let previous = self.suspects.remove(&t.cookie);
                // An inode at CLOSE: a file still refers to the socket.
                if let Some(inode) = t.socket_inode {
                    self.suspects.insert(
                        t.cookie,
                        Suspect {
                            cookie: t.cookie,
                            kind: LeakKind::ClosedHeld,
                            since_ns: t.timestamp_ns,
                            provenance: Provenance::Observed,
                            local: t.local,
                            remote: t.remote,
                            inode: Some(inode),
                            netns_inode: previous.and_then(|p| p.netns_inode),
                        },
                    );
                }
            }
            _ if t.old_state == TcpState::CloseWait => {
                self.suspects.remove(&t.cookie);
            }
            _ => {}
        }
    }

    /// The kernel freed the socket: nothing can hold it any more.
    pub fn destroyed(&mut self, cookie: u64) {
        self.suspects.remove(&cookie);
    }

    /// Aligns CLOSE_WAIT suspects with `table`, the kernel's CLOSE_WAIT
    /// sockets in every namespace, dumped at `snapshot_ns` after every event
    /// up to then was observed. At `startup`, what the table holds is
    /// pre-existing rather than missed. A namespace in `unreadable` was not
    /// dumped: its suspects stay, and so does any whose namespace is not
    /// known while some namespace was unreadable (a failed read is not an
    /// empty table).
    pub fn reconcile_close_wait(
        &mut self,
        table: &[KernelSocket],
        unreadable: &HashSet<u64>,
        snapshot_ns: u64,
        startup: bool,
    ) {
        self.removed_by_reconcile.clear();
        let left = self.left_during_read.take().unwrap_or_default();
        let in_kernel: HashMap<u64, &KernelSocket> = table
            .iter()
            .filter(|s| s.state == TcpState::CloseWait)
            // Listed before it left: its leave came in meanwhile.
            .filter(|s| !left.contains(&s.cookie))
            .map(|s| (s.cookie, s))
            .collect();

        let gone: Vec<u64> = self
            .suspects
            .values()
            .filter(|s| {
                s.kind == LeakKind::CloseWait
                    && s.since_ns <= snapshot_ns
                    && !in_kernel.contains_key(&s.cookie)
                    && match s.netns_inode {
                        Some(netns) => !unreadable.contains(&netns),
                        None => unreadable.is_empty(),
                    }
            })
            .map(|s| s.cookie)
            .collect();
        for cookie in gone {
            self.suspects.remove(&cookie);
            self.removed_by_reconcile.insert(cookie);
            self.corrections += 1;
        }

        for (cookie, socket) in in_kernel {
            match self.suspects.get_mut(&cookie) {
                Some(suspect) => suspect.learn(socket),
                None => {
                    let provenance = if startup {
                        Provenance::PreExisting
                    } else {
                        self.corrections += 1;
                        Provenance::Recovered
                    };
                    self.suspects.insert(
                        cookie,
                        Suspect {
                            cookie,
                            kind: LeakKind::CloseWait,
                            since_ns: snapshot_ns,
                            provenance,
                            local: socket.local,
                            remote: socket.remote,
                            inode: (socket.inode != 0).then_some(socket.inode),
                            netns_inode: Some(socket.netns_inode),
                        },
                    );
                }
            }
        }
    }

    /// Joins the answers of a lookup of CLOSE_WAIT suspects, socket by
    /// socket: their inodes and namespaces. Unlike a whole-table read it
    /// removes nothing, since a socket a lookup did not find may be one it
    /// could not match (bound to a device, say). Returns whether every
    /// socket found in another state, and every one of `missed`, has
    /// since left CLOSE_WAIT by its events: call only once every event
    /// from before the lookup is in. Otherwise the events did not say
    /// something, and the caller reads the whole table next.
    pub fn confirm_close_wait(&mut self, found: &[KernelSocket], missed: &[u64]) -> bool {
        let mut explained = !missed
            .iter()
            .any(|&cookie| self.is_close_wait_suspect(cookie));
        for socket in found {
            if socket.state != TcpState::CloseWait {
                explained &= !self.is_close_wait_suspect(socket.cookie);
                continue;
            }
            if let Some(suspect) = self.suspects.get_mut(&socket.cookie)
                && suspect.kind == LeakKind::CloseWait
            {
                suspect.learn(socket);
            }
        }
        explained
    }

    fn is_close_wait_suspect(&self, cookie: u64) -> bool {
        self.suspects
            .get(&cookie)
            .is_some_and(|suspect| suspect.kind == LeakKind::CloseWait)
    }

    /// Drops closed-but-held suspects whose inode a fresh holder scan of
    /// `scanned` found nobody holding (their destroy record was lost).
    pub fn reconcile_closed_held(&mut self, scanned: &HashSet<u64>, held: &HashSet<u64>) {
        let released: Vec<u64> = self
            .suspects
            .values()
            .filter(|s| {
                s.kind == LeakKind::ClosedHeld
                    && s.inode
                        .is_some_and(|i| scanned.contains(&i) && !held.contains(&i))
            })
            .map(|s| s.cookie)
            .collect();
        for cookie in released {
            self.suspects.remove(&cookie);
            self.corrections += 1;
        }
    }

    /// Inodes of the suspects, for a holder scan.
    pub fn inodes(&self) -> HashSet<u64> {
        self.suspects.values().filter_map(|s| s.inode).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::fixtures::{S, close_wait_in_kernel, transition as event};

    use TcpState::*;

    #[test]
    fn close_wait_is_a_leak_only_past_min_age() {
        let mut tracker = LeakTracker::new();
        tracker.observe(&event(1, 10, Established, CloseWait));
        assert!(
            tracker
                .leaks(10 * S + S / 2, Duration::from_secs(1))
                .is_empty()
        );
        let leaks = tracker.leaks(12 * S, Duration::from_secs(1));
        assert_eq!(leaks.len(), 1);
        assert_eq!(leaks[0].age(12 * S), Duration::from_secs(2));
        assert_eq!(leaks[0].provenance, Provenance::Observed);
    }

    #[test]
    fn any_way_out_of_close_wait_ends_the_leak() {
        for exit in [LastAck, Close] {
            let mut tracker = LeakTracker::new();
            tracker.observe(&event(1, 0, Established, CloseWait));
            tracker.observe(&event(1, 100, CloseWait, exit));
            assert!(
                tracker.leaks(200 * S, Duration::ZERO).is_empty(),
                "{exit:?}"
            );
        }
    }

    #[test]
    fn closed_while_held_until_destroyed() {
        let mut tracker = LeakTracker::new();
        let mut rst = event(7, 5, Established, Close);
        rst.socket_inode = Some(999);
        tracker.observe(&rst);
        let leaks = tracker.leaks(10 * S, Duration::from_secs(1));
        assert_eq!(leaks[0].kind, LeakKind::ClosedHeld);
        assert_eq!(leaks[0].inode, Some(999));
        tracker.destroyed(7);
        assert!(tracker.leaks(10 * S, Duration::ZERO).is_empty());

        // An orphan reaching CLOSE (no inode) is no suspect at all.
        tracker.observe(&event(8, 5, FinWait2, Close));
        assert_eq!(tracker.suspects().count(), 0);
    }

    #[test]
    fn a_lost_entry_is_recovered_from_the_kernel_table() {
        let mut tracker = LeakTracker::new();
        tracker.reconcile_close_wait(
            &[close_wait_in_kernel(1, 50)],
            &HashSet::new(),
            20 * S,
            false,
        );
        let leaks = tracker.leaks(25 * S, Duration::from_secs(1));
        assert_eq!(leaks.len(), 1);
        assert_eq!(leaks[0].provenance, Provenance::Recovered);
        assert_eq!(
            leaks[0].age(25 * S),
            Duration::from_secs(5),
            "at least since the snapshot"
        );
        assert_eq!(leaks[0].inode, Some(50));
        assert_eq!(tracker.corrections(), 1);
    }

    /// A slow read lists a socket in CLOSE_WAIT, and the socket leaves it
    /// before the read is joined: its leave explains the listing, which
    /// must not bring it back as a recovered leak.
    #[test]
    fn a_socket_that_left_while_the_table_was_read_is_not_recovered() {
        let mut tracker = LeakTracker::new();
        tracker.observe(&event(1, 10, Established, CloseWait));
        tracker.reading();
        tracker.observe(&event(1, 21, CloseWait, LastAck));
        let table = [close_wait_in_kernel(1, 50)];
        tracker.reconcile_close_wait(&table, &HashSet::new(), 20 * S, false);
        assert_eq!(tracker.suspects().count(), 0);
        assert_eq!(tracker.corrections(), 0);
        // Without a read under way, a listing no event explains is a lost
        // entry: recovered, as before.
        tracker.reconcile_close_wait(&table, &HashSet::new(), 30 * S, false);
        assert_eq!(tracker.suspects().count(), 1);
        assert_eq!(tracker.corrections(), 1);
    }

    #[test]
    fn a_lost_exit_never_becomes_a_false_leak() {
        let mut tracker = LeakTracker::new();
        tracker.observe(&event(1, 0, Established, CloseWait));
        // The CLOSE_WAIT -> LAST_ACK event was dropped; the kernel no longer has it.
        tracker.reconcile_close_wait(&[], &HashSet::new(), 60 * S, false);
        assert!(tracker.leaks(120 * S, Duration::ZERO).is_empty());
        assert_eq!(tracker.corrections(), 1);
    }

    #[test]
    fn late_events_after_a_reconcile_are_races_not_losses() {
        let mut tracker = LeakTracker::new();
        // Entered CLOSE_WAIT just before the snapshot; its event arrives after.
        tracker.reconcile_close_wait(
            &[close_wait_in_kernel(1, 50)],
            &HashSet::new(),
            20 * S,
            false,
        );
        tracker.observe(&event(1, 19, Established, CloseWait));
        let suspect = tracker.suspects().next().unwrap();
        assert_eq!(suspect.provenance, Provenance::Observed);
        assert_eq!(
            suspect.since_ns,
            19 * S,
            "the exact time replaces the bound"
        );
        assert_eq!(suspect.inode, Some(50), "what the table told is kept");
        assert_eq!(tracker.corrections(), 0);

        // Left CLOSE_WAIT just before the snapshot; its event arrives after.
        tracker.reconcile_close_wait(&[], &HashSet::new(), 30 * S, false);
        tracker.observe(&event(1, 29, CloseWait, LastAck));
        assert_eq!(tracker.corrections(), 0);
        assert_eq!(tracker.suspects().count(), 0);
    }

    #[test]
    fn an_unreadable_namespace_is_not_an_empty_table() {
        let mut tracker = LeakTracker::new();
        tracker.observe(&event(1, 10, Established, CloseWait));
        // The namespace of the suspect is unknown, and one read failed.
        tracker.reconcile_close_wait(&[], &HashSet::from([7]), 20 * S, false);
        assert_eq!(tracker.suspects().count(), 1, "kept");
        assert_eq!(tracker.corrections(), 0);
        // Everything read: now the table's word counts.
        tracker.reconcile_close_wait(&[], &HashSet::new(), 20 * S, false);
        assert_eq!(tracker.suspects().count(), 0);
    }

    #[test]
    fn startup_table_is_pre_existing_and_ages_are_bounds() {
        let mut tracker = LeakTracker::new();
        tracker.reconcile_close_wait(
            &[close_wait_in_kernel(3, 70), close_wait_in_kernel(4, 71)],
            &HashSet::new(),
            100 * S,
            true,
        );
        let leaks = tracker.leaks(131 * S, Duration::from_secs(30));
        assert_eq!(leaks.len(), 2);
        assert!(
            leaks
                .iter()
                .all(|l| l.provenance == Provenance::PreExisting)
        );
        assert!(leaks[0].provenance.age_is_lower_bound());
        assert_eq!(
            tracker.corrections(),
            0,
            "what was there before is no correction"
        );
        assert_eq!(tracker.inodes(), HashSet::from([70, 71]));
    }

    #[test]
    fn a_suspect_newer_than_the_snapshot_is_not_dropped_by_it() {
        let mut tracker = LeakTracker::new();
        tracker.observe(&event(1, 21, Established, CloseWait));
        tracker.reconcile_close_wait(&[], &HashSet::new(), 20 * S, false);
        assert_eq!(tracker.suspects().count(), 1);
    }

    #[test]
    fn closed_held_suspects_nobody_holds_are_dropped() {
        let mut tracker = LeakTracker::new();
        for (cookie, inode) in [(1, 100), (2, 200)] {
            let mut rst = event(cookie, 1, Established, Close);
            rst.socket_inode = Some(inode);
            tracker.observe(&rst);
        }
        // Only what was scanned is judged: inode 300 was not.
        let mut unscanned = event(3, 1, Established, Close);
        unscanned.socket_inode = Some(300);
        tracker.observe(&unscanned);
        tracker.reconcile_closed_held(&HashSet::from([100, 200]), &HashSet::from([200]));
        let mut left: Vec<u64> = tracker.suspects().map(|s| s.cookie).collect();
        left.sort();
        assert_eq!(left, vec![2, 3]);
        assert_eq!(tracker.corrections(), 1);
    }

    #[test]
    fn cookies_not_addresses_identify_sockets() {
        // Same skaddr and ports, different cookies: two sockets.
        let mut tracker = LeakTracker::new();
        tracker.observe(&event(1, 0, Established, CloseWait));
        tracker.observe(&event(2, 1, Established, CloseWait));
        tracker.observe(&event(1, 2, CloseWait, LastAck));
        let left: Vec<u64> = tracker.suspects().map(|s| s.cookie).collect();
        assert_eq!(left, vec![2]);
    }
}
