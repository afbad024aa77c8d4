//! Per-process aggregation: what each owning process did with TCP since
//! tcptrace started. Which process owns each socket is the tracker's.
//!
//! Pure: fed with tracked transitions (owners as the tracker established
//! them: process context, or the listener for accepted sockets — never the
//! task that happened to be on the CPU), tested without root.

use std::{collections::HashMap, net::SocketAddr};

use tcptrace_common::{
    TcpState,
    owner_counts::{PAIR_SLOTS, PAIRS},
};

use crate::{
    model::health::Occupancy,
    model::transition::{Comm, Process},
};

/// Bounds on what is remembered, so a host with unbounded churn cannot grow
/// the agent without limit. Past them, entries are not added (and counted).
const MAX_DESTINATIONS: usize = 16384;

/// What one process did since start. Counts only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounts {
    /// CLOSE -> SYN_SENT: connect() calls that sent a SYN.
    pub connects: u64,
    /// SYN_RECV -> ESTABLISHED on a socket the process's listener accepted.
    pub accepts: u64,
    /// SYN_SENT -> CLOSE: refused, reset or timed out before established.
    pub failed_connects: u64,
    /// -> CLOSE straight from ESTABLISHED, CLOSE_WAIT, FIN_WAIT1 or SYN_RECV:
    /// a reset sent or received, or an abortive close (SO_LINGER 0, close
    /// with unread data). The tracepoint does not tell these apart.
    pub resets: u64,
    pub transitions: TransitionCounts,
    /// Transitions of a pair the probe's per-owner counts have no slot for
    /// (none Linux makes today).
    pub other_transitions: u64,
}

/// How often each (old, new) pair of states was seen: a fixed table, since
/// it is counted for every event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransitionCounts([[u64; TcpState::ALL.len()]; TcpState::ALL.len()]);

impl TransitionCounts {
    fn count(&mut self, old: TcpState, new: TcpState) -> &mut u64 {
        // The kernel numbers states from 1.
        &mut self.0[old as usize - 1][new as usize - 1]
    }

    pub fn get(&self, old: TcpState, new: TcpState) -> u64 {
        self.0[old as usize - 1][new as usize - 1]
    }

    /// The pairs seen at least once, with their counts.
    pub fn iter(&self) -> impl Iterator<Item = ((TcpState, TcpState), u64)> + '_ {
        TcpState::ALL.into_iter().flat_map(move |old| {
            TcpState::ALL
                .into_iter()
                .map(move |new| ((old, new), self.get(old, new)))
                .filter(|&(_, n)| n > 0)
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessActivity {
    pub comm: Comm,
    pub counts: ProcessCounts,
    /// Its newest transition (CLOCK_MONOTONIC ns).
    pub last_ns: u64,
}

/// Connects from one process to one destination since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectCounts {
    pub attempted: u64,
    pub failed: u64,
}

#[derive(Default)]
pub struct Activity {
    // The foldhash map is keyed by what the kernel hands out (tgids),
    // which no one can choose: a fast hash with no defence against
    // chosen keys is safe there, and it is paid for every event.
    processes: foldhash::HashMap<u32, ProcessActivity>,
    /// Transitions of sockets whose owner is unknown (accepted on a listener
    /// opened before start by several processes, say).
    pub unattributed: ProcessCounts,
    destinations: HashMap<(u32, SocketAddr), ConnectCounts>,
    /// Destinations not remembered because the bound was reached.
    pub dropped_entries: u64,
}

fn is_reset(old: TcpState, new: TcpState) -> bool {
    use TcpState::*;
    new == Close && matches!(old, Established | CloseWait | FinWait1 | SynRecv)
}

impl Activity {
    pub fn new() -> Self {
        Self::default()
    }

    /// One transition as a record shows it. The agent counts from the
    /// kernel's per-owner maps (`add_counted`); tests and the pipeline
    /// benchmark feed records one by one.
    #[cfg(test)]
    pub fn observe(&mut self, tracked: &crate::model::tracker::TrackedTransition) {
        let t = &tracked.transition;
        let (old, new) = (t.old_state, t.new_state);
        let owner = tracked.owner.as_ref().map(|o| &o.process);
        self.add(owner, t.timestamp_ns, (old, new), 1);

        if let Some(process) = owner {
            match (old, new) {
                (TcpState::Close, TcpState::SynSent) => {
                    self.count_connects(process.tgid, t.remote, 1, 0)
                }
                (TcpState::SynSent, TcpState::Close) => {
                    self.count_connects(process.tgid, t.remote, 0, 1)
                }
                _ => {}
            }
        }
    }

    /// `n` transitions `pair` of `owner` (unattributed: `None`) at `at_ns`,
    /// counted in the kernel rather than seen one by one.
    pub fn add(&mut self, owner: Option<&Process>, at_ns: u64, pair: (TcpState, TcpState), n: u64) {
        *self
            .counts_of(owner, at_ns)
            .transitions
            .count(pair.0, pair.1) += n;
        self.count_pair(owner, at_ns, pair, n);
    }

    /// What the kernel counted for one owner since the last read: one
    /// count per slot of `PAIRS`, the last for any other pair.
    pub fn add_counted(&mut self, owner: Option<&Process>, at_ns: u64, counts: &[u64; PAIR_SLOTS]) {
        for (slot, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            match PAIRS.get(slot) {
                Some(&pair) => self.add(owner, at_ns, pair, n),
                None => self.counts_of(owner, at_ns).other_transitions += n,
            }
        }
    }

    /// Connects of `tgid` to `destination`, attempted and failed.
    pub fn count_connects(
        &mut self,
        tgid: u32,
        destination: SocketAddr,
        attempted: u64,
        failed: u64,
    ) {
        let key = (tgid, destination);
        if self.destinations.len() < MAX_DESTINATIONS || self.destinations.contains_key(&key) {
            let entry = self.destinations.entry(key).or_default();
            entry.attempted += attempted;
            entry.failed += failed;
        } else {
            self.dropped_entries += 1;
        }
    }

    fn count_pair(
        &mut self,
        owner: Option<&Process>,
        at_ns: u64,
        (old, new): (TcpState, TcpState),
        n: u64,
    ) {
        let counts = self.counts_of(owner, at_ns);
        match (old, new) {
            (TcpState::Close, TcpState::SynSent) => counts.connects += n,
            (TcpState::SynRecv, TcpState::Established) => counts.accepts += n,
            (TcpState::SynSent, TcpState::Close) => counts.failed_connects += n,
            _ if is_reset(old, new) => counts.resets += n,
            _ => {}
        }
    }

    fn counts_of(&mut self, owner: Option<&Process>, at_ns: u64) -> &mut ProcessCounts {
        match owner {
            Some(process) => {
                let entry = self
                    .processes
                    .entry(process.tgid)
                    .or_insert_with(|| ProcessActivity {
                        comm: process.comm,
                        counts: ProcessCounts::default(),
                        last_ns: 0,
                    });
                entry.last_ns = entry.last_ns.max(at_ns);
                // A process's comm can change (exec, prctl); show the latest.
                entry.comm = process.comm;
                &mut entry.counts
            }
            None => &mut self.unattributed,
        }
    }

    /// Forgets processes that exited; their sockets are gone or held by others.
    pub fn retain_processes(&mut self, alive: impl Fn(u32) -> bool) {
        self.processes.retain(|tgid, _| alive(*tgid));
        self.destinations.retain(|(tgid, _), _| alive(*tgid));
    }

    /// How many entries each table holds, against its bound.
    pub fn occupancy(&self) -> Vec<Occupancy> {
        vec![
            Occupancy::new("processes", self.processes.len(), None),
            Occupancy::new(
                "destinations",
                self.destinations.len(),
                Some(MAX_DESTINATIONS),
            ),
        ]
    }

    pub fn processes(&self) -> impl Iterator<Item = (u32, &ProcessActivity)> {
        self.processes
            .iter()
            .map(|(tgid, activity)| (*tgid, activity))
    }

    pub fn process(&self, tgid: u32) -> Option<&ProcessActivity> {
        self.processes.get(&tgid)
    }

    pub fn destinations(&self) -> impl Iterator<Item = (u32, SocketAddr, ConnectCounts)> + '_ {
        self.destinations
            .iter()
            .map(|((tgid, destination), counts)| (*tgid, *destination, *counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::tracker::{Owner, OwnerSource, TrackedTransition},
        model::transition::{Process, Transition},
    };
    use TcpState::*;

    fn step(
        cookie: u64,
        at_s: u64,
        old: TcpState,
        new: TcpState,
        owner: Option<(u32, &str)>,
        remote: &str,
    ) -> TrackedTransition {
        TrackedTransition {
            transition: Transition {
                timestamp_ns: at_s * 1_000_000_000,
                cookie,
                skaddr: cookie,
                owner: None,
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: remote.parse().unwrap(),
                old_state: old,
                new_state: new,
                netns_inode: None,
                socket_inode: None,
            },
            owner: owner.map(|(tgid, comm)| Owner {
                process: Process {
                    tgid,
                    comm: comm.into(),
                },
                source: OwnerSource::ProcessContext,
            }),
            time_in_old_state: None,
            likely_time_wait: new == Close && matches!(old, FinWait2 | Closing),
        }
    }

    #[test]
    fn counts_a_client_lifecycle() {
        let mut activity = Activity::new();
        let client = Some((10, "client"));
        let db = "10.0.0.5:5432";
        for (old, new) in [
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close),
        ] {
            activity.observe(&step(1, 1, old, new, client, db));
        }
        let counts = &activity.process(10).unwrap().counts;
        assert_eq!(counts.connects, 1);
        assert_eq!(counts.failed_connects, 0);
        assert_eq!(counts.resets, 0);
        assert_eq!(counts.transitions.iter().map(|(_, n)| n).sum::<u64>(), 5);
        assert_eq!(counts.transitions.get(FinWait2, Close), 1);
        assert_eq!(counts.transitions.get(Close, FinWait2), 0);
        assert_eq!(
            counts.transitions.iter().collect::<Vec<_>>(),
            [
                ((Established, FinWait1), 1),
                ((SynSent, Established), 1),
                ((FinWait1, FinWait2), 1),
                ((FinWait2, Close), 1),
                ((Close, SynSent), 1),
            ]
        );
        let destinations: Vec<_> = activity.destinations().collect();
        assert_eq!(
            destinations,
            vec![(
                10,
                db.parse().unwrap(),
                ConnectCounts {
                    attempted: 1,
                    failed: 0
                }
            )]
        );
    }

    #[test]
    fn kernel_counts_add_up_as_records_would_and_an_unlisted_pair_is_other() {
        use tcptrace_common::owner_counts::OTHER_PAIR_SLOT;
        let mut counted = Activity::new();
        let mut observed = Activity::new();
        let mut counts = [0u64; PAIR_SLOTS];
        for (old, new, n) in [
            (Close, SynSent, 3),
            (SynSent, Close, 1),
            (Established, Close, 2),
        ] {
            counts[PAIRS.iter().position(|p| *p == (old, new)).unwrap()] = n;
            for _ in 0..n {
                observed.observe(&step(1, 1, old, new, Some((7, "app")), "127.0.0.1:1"));
            }
        }
        counts[OTHER_PAIR_SLOT] = 4;
        let app = Process {
            tgid: 7,
            comm: "app".into(),
        };
        counted.add_counted(Some(&app), 1_000_000_000, &counts);
        let (c, o) = (
            &counted.process(7).unwrap().counts,
            &observed.process(7).unwrap().counts,
        );
        assert_eq!(
            (c.connects, c.failed_connects, c.resets),
            (o.connects, o.failed_connects, o.resets)
        );
        assert_eq!((c.connects, c.failed_connects, c.resets), (3, 1, 2));
        assert_eq!(c.transitions, o.transitions);
        assert_eq!(c.other_transitions, 4);
        assert_eq!(counted.process(7).unwrap().last_ns, 1_000_000_000);
    }

    #[test]
    fn failed_connects_resets_and_unknown_owners() {
        let mut activity = Activity::new();
        let app = Some((7, "app"));
        activity.observe(&step(1, 1, Close, SynSent, app, "127.0.0.1:1"));
        activity.observe(&step(1, 1, SynSent, Close, app, "127.0.0.1:1"));
        activity.observe(&step(2, 1, Established, Close, app, "127.0.0.1:2"));
        activity.observe(&step(3, 1, CloseWait, Close, None, "127.0.0.1:3"));
        activity.observe(&step(4, 1, LastAck, Close, app, "127.0.0.1:4"));

        let counts = &activity.process(7).unwrap().counts;
        assert_eq!(counts.connects, 1);
        assert_eq!(counts.failed_connects, 1);
        assert_eq!(counts.resets, 1, "LAST_ACK -> CLOSE is a normal close");
        assert_eq!(activity.unattributed.resets, 1);
        let failed: Vec<_> = activity.destinations().map(|(_, _, c)| c).collect();
        assert_eq!(
            failed,
            vec![ConnectCounts {
                attempted: 1,
                failed: 1
            }]
        );
    }

    #[test]
    fn exited_processes_are_forgotten() {
        let mut activity = Activity::new();
        let app = Some((7, "app"));
        activity.observe(&step(1, 1, Close, SynSent, app, "127.0.0.1:1"));
        activity.observe(&step(2, 5, Close, SynSent, app, "127.0.0.1:1"));
        activity.retain_processes(|tgid| tgid != 7);
        assert!(activity.process(7).is_none());
        assert_eq!(activity.destinations().count(), 0);
    }

    #[test]
    fn a_renamed_process_shows_its_latest_comm() {
        let mut activity = Activity::new();
        activity.observe(&step(1, 1, Close, SynSent, Some((7, "sh")), "127.0.0.1:1"));
        activity.observe(&step(2, 1, Close, SynSent, Some((7, "app")), "127.0.0.1:1"));
        let process = activity.process(7).unwrap();
        assert_eq!(process.comm, "app");
        assert_eq!(process.counts.connects, 2);
    }
}
