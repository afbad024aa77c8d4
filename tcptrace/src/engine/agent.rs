//! The host view shared by `tcptrace top` and `tcptrace serve`: every
//! transition feeds the leak monitor, the socket tracker and the per-process
//! activity; each refresh reads the kernel's whole TCP table, attributes its
//! sockets, and runs the diagnoses.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use tcptrace_common::{
    TcpState,
    owner_counts::{DestinationKey, OwnerKey, PAIR_SLOTS},
};
use tokio::io::unix::AsyncFd;

use crate::{
    engine::diagnosis_inputs::{Diagnoses, Owners},
    engine::monitor::{LeaksOptions, Monitor, SETTLE_WAIT},
    host::clock::monotonic_now_ns,
    host::procfs::socket_holders,
    host::reader::{HostRead, HostRequest, read_host},
    host::sockdiag::dump_all_namespaces,
    model::activity::Activity,
    model::health::{AgentTotals, Occupancy},
    model::holder::Holder,
    model::inferred_owners::InferredOwners,
    model::kernel_counts::CountDeltas,
    model::leak_report::LeakReport,
    model::process::Placement,
    model::top_snapshot::{RateBaseline, SnapshotInputs, TopSnapshot, build_snapshot},
    model::tracker::SocketTracker,
    model::transition::{Comm, Process, Record},
    probe::loader::{KernelCounters, Probe, ProbeOptions},
    probe::records::{decode, destination_address},
};

/// The holder scan walks every process's fds; sockets with no history are
/// attributed through it at most this often.
const HOLDER_RESCAN_INTERVAL: Duration = Duration::from_secs(5);
/// A new unattributed socket triggers an earlier scan, but not more often.
const HOLDER_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a process's container and namespace are taken as known.
const PLACEMENT_REREAD_INTERVAL: Duration = Duration::from_secs(30);

/// The probe of leak mode, registered with the runtime, and an agent that
/// knows the listeners opened before it started: what `top` and `serve`
/// both begin with.
pub fn start(options: &LeaksOptions) -> anyhow::Result<(AsyncFd<Probe>, HostAgent)> {
    let probe = Probe::load(&ProbeOptions {
        track_closed_held: true,
        verdicts_only: true,
        count_owners: true,
        ..options.probe.clone()
    })?;
    // SAFETY: the probe owns the ring buffer's fd and keeps it open and
    // unchanged for as long as the AsyncFd holds the probe.
    let probe = unsafe { AsyncFd::register(probe)? };
    let mut agent = HostAgent::new(options.clone())?;
    agent.seed_listeners();
    Ok((probe, agent))
}

pub struct HostAgent {
    monitor: Monitor,
    tracker: SocketTracker,
    activity: Activity,
    rates: RateBaseline,
    /// When holders of sockets with no history were last looked for, and
    /// which inodes that walk left unattributed.
    holders_scanned_at: Option<Instant>,
    unattributed: HashSet<u64>,
    /// Processes alive at the newest walk of /proc.
    alive: HashSet<u32>,
    /// Each process's container and namespace, and when they were read.
    placements: HashMap<u32, (Placement, Instant)>,
    diagnoses: Diagnoses,
    min_age: Duration,
    /// Kernel counters at the last refresh.
    kernel: KernelCounters,
    told_owner_storage_full: bool,
    told_counts_failed: bool,
    /// The kernel's per-owner and per-destination counts at the last read.
    owner_deltas: CountDeltas<OwnerKey, PAIR_SLOTS>,
    destination_deltas: CountDeltas<DestinationKey, 2>,
    /// Capped tables already said to be forgetting entries.
    told_forgetting: Vec<&'static str>,
}

impl HostAgent {
    pub fn new(options: LeaksOptions) -> anyhow::Result<Self> {
        Ok(Self {
            min_age: options.min_age,
            monitor: Monitor::new(options)?,
            tracker: SocketTracker::for_verdicts(),
            activity: Activity::new(),
            rates: RateBaseline::default(),
            holders_scanned_at: None,
            unattributed: HashSet::new(),
            alive: HashSet::new(),
            placements: HashMap::new(),
            diagnoses: Diagnoses::default(),
            kernel: KernelCounters::default(),
            told_owner_storage_full: false,
            told_counts_failed: false,
            owner_deltas: CountDeltas::default(),
            destination_deltas: CountDeltas::default(),
            told_forgetting: Vec::new(),
        })
    }

    fn handle(&mut self, bytes: &[u8]) {
        self.monitor.health.events += 1;
        match decode(bytes) {
            // The leak monitor reads the transition, then the tracker takes
            // it: no copy per event.
            // Its counts come from the kernel's per-owner maps
            // (`read_owner_counts`): a record adds none.
            Ok(Record::Transition(transition)) => {
                self.monitor.observe_transition(&transition);
                self.tracker.observe(transition);
            }
            Ok(record) => self.monitor.handle_record(record),
            Err(_) => self.monitor.health.decode_errors += 1,
        }
    }

    pub fn drain(&mut self, probe: &mut Probe) {
        probe.drain(|bytes| self.handle(bytes));
        self.monitor.read_new_stacks(probe);
    }

    /// As `drain`, with every event from before the call in: before a host
    /// read is applied.
    fn drain_settled(&mut self, probe: &mut Probe) {
        probe.drain_settled(SETTLE_WAIT, |bytes| self.handle(bytes));
        self.monitor.read_new_stacks(probe);
    }

    /// Listeners opened before start: their owners come from the holder
    /// scan, so connections they accept are attributed from the first one.
    pub fn seed_listeners(&mut self) {
        let table = dump_all_namespaces(&[TcpState::Listen]);
        let inodes: HashSet<u64> = table
            .sockets
            .iter()
            .map(|s| s.inode)
            .filter(|&i| i != 0)
            .collect();
        let holders = match socket_holders(&inodes) {
            Ok(holders) => holders,
            Err(error) => {
                eprintln!(
                    "tcptrace: cannot walk /proc ({error}); connections to listeners opened before start are attributed once their owner shows itself"
                );
                return;
            }
        };
        for listener in &table.sockets {
            let Some(held) = holders.get(&listener.inode) else {
                continue;
            };
            let mut pids: Vec<&Holder> = held.iter().collect();
            pids.dedup_by_key(|h| h.pid);
            // Several processes share it (pre-fork servers): whichever
            // accepts is unknown until it shows itself.
            if let [only] = pids.as_slice() {
                self.tracker.seed_listener(
                    listener.cookie,
                    u32::try_from(listener.netns_inode).ok(),
                    listener.local,
                    Process {
                        tgid: only.pid,
                        comm: only.comm.as_str().into(),
                    },
                );
            }
        }
    }

    /// What the next refresh must read from the host: the whole table with
    /// each namespace's sysctls; holders when due; where new processes run.
    pub fn host_request(&mut self) -> HostRequest {
        self.monitor.begin_read();
        let since = self.holders_scanned_at.map(|at| at.elapsed());
        let stale = since.is_none_or(|s| s >= HOLDER_RESCAN_INTERVAL);
        let unattributed =
            !self.unattributed.is_empty() && since.is_none_or(|s| s >= HOLDER_MIN_INTERVAL);
        let monitor = self.monitor.host_request(&TcpState::ALL);
        let placements = self
            .activity
            .processes()
            .map(|(pid, _)| pid)
            .filter(|pid| {
                // A process can be moved to another cgroup or namespace:
                // re-read now and then, not on every refresh.
                self.placements.get(pid).is_none_or(|(placement, at)| {
                    *placement == Placement::default() || at.elapsed() >= PLACEMENT_REREAD_INTERVAL
                })
            })
            .collect();
        let fresh_placements = self
            .placements
            .iter()
            .filter(|(_, (placement, at))| {
                *placement != Placement::default() && at.elapsed() < PLACEMENT_REREAD_INTERVAL
            })
            .map(|(pid, _)| *pid)
            .collect();
        HostRequest {
            sysctls: true,
            holders: monitor.holders || stale || unattributed,
            holders_of_all: true,
            placements,
            fresh_placements,
            ..monitor
        }
    }

    /// Drains, reads the host and builds the view (at start and at the end,
    /// when nothing else runs meanwhile).
    pub fn refresh(&mut self, probe: &mut Probe, startup: bool) -> (TopSnapshot, LeakReport) {
        let read = read_host(HostRequest {
            holders: true,
            ..self.host_request()
        });
        self.refresh_with(probe, read, startup)
    }

    /// Builds the view from a host read begun earlier (on another thread,
    /// while the caller kept draining the ring buffer): drains what is
    /// left, then joins events and host.
    pub fn refresh_with(
        &mut self,
        probe: &mut Probe,
        read: HostRead,
        startup: bool,
    ) -> (TopSnapshot, LeakReport) {
        self.drain_settled(probe);
        self.monitor.note_programs(probe);
        if let Ok(counters) = probe.counters() {
            self.monitor.note_counters(&probe.stack_moments, &counters);
            if counters.owner_insert_failed > 0 && !self.told_owner_storage_full {
                self.told_owner_storage_full = true;
                eprintln!(
                    "tcptrace: the probe could not record the owner of {} sockets (kernel out of memory for socket storage); their transitions count as unknown owner",
                    counters.owner_insert_failed
                );
            }
            self.kernel = counters;
        }
        self.read_owner_counts(probe);
        self.tell_forgetting();
        let dump_started_ns = read.started_ns;
        self.monitor.apply_host(&read, startup);
        let listed = read.table.listed_cookies();
        if let Some(listed) = &listed {
            self.monitor.prune_stacks(listed, dump_started_ns);
        }
        if let Some(alive) = read.processes_alive() {
            self.alive.clone_from(alive);
        }
        if read.holders_scanned {
            self.holders_scanned_at = Some(Instant::now());
        }
        for (pid, placement) in &read.placements {
            self.placements
                .insert(*pid, (placement.clone(), Instant::now()));
        }
        let table = self.diagnoses.take_settings(read);
        let now_ns = monotonic_now_ns();

        // An incomplete table would wrongly end sockets it could not list.
        if let Some(listed) = &listed {
            self.tracker
                .reconcile(&|cookie| listed.contains(&cookie), dump_started_ns);
        }
        // A table's worth of cookies: freed before the snapshot is built.
        drop(listed);
        let leaks = self.monitor.report(self.min_age);

        self.unattributed = table
            .sockets
            .iter()
            .filter(|s| s.inode != 0 && self.tracker.owner_of(s.cookie).is_none())
            .filter(|s| !self.monitor.holders.contains_key(&s.inode))
            .map(|s| s.inode)
            .collect();

        // Processes that exited since the last walk are shown once more,
        // marked, so their last counts reach the per-comm totals, then
        // forgotten. Without a walk, none is taken for dead.
        let alive_set = &self.alive;
        let walked = !alive_set.is_empty();
        let activity = &self.activity;
        // A process born after the walk began is not in it: its events say
        // it lives.
        let alive = |pid: u32| {
            !walked
                || alive_set.contains(&pid)
                || activity
                    .process(pid)
                    .is_some_and(|p| p.last_ns >= dump_started_ns)
        };
        self.placements.retain(|pid, _| alive(*pid));
        let (rates, span) = self.rates.advance(&self.activity, now_ns);
        let placements = &self.placements;
        let mut placement = |pid: u32| {
            placements
                .get(&pid)
                .map(|(placement, _)| placement.clone())
                .unwrap_or_default()
        };
        let inferred = InferredOwners::new(&self.activity);
        let mut snapshot = build_snapshot(SnapshotInputs {
            activity: &self.activity,
            tracker: &self.tracker,
            table: &table.sockets,
            holders: &self.monitor.holders,
            inferred: &inferred,
            leaks: &leaks,
            rates: &rates,
            span,
            alive: &alive,
            placement: &mut placement,
        });
        let exited: HashSet<u32> = snapshot
            .processes
            .iter()
            .filter(|row| row.exited)
            .map(|row| row.pid)
            .collect();
        self.activity.retain_processes(|pid| !exited.contains(&pid));
        // Their last counts are in: the kernel's entries go with them.
        let gone = self.owner_deltas.forget(|key| exited.contains(&key.tgid));
        probe.forget_owner_keys(&gone);
        let gone = self
            .destination_deltas
            .forget(|key| exited.contains(&key.tgid));
        probe.forget_destinations(&gone);
        let owners = Owners {
            activity: &self.activity,
            tracker: &self.tracker,
            holders: &self.monitor.holders,
            inferred: &inferred,
        };
        snapshot.findings = self
            .diagnoses
            .diagnose(&owners, &table.sockets, &leaks, probe, now_ns);
        (snapshot, leaks)
    }

    /// What the kernel counted per owner and per destination since the
    /// last refresh, into the activity: a known owner's, or, for a port of
    /// no known owner, its listener's (as for a record), else unattributed.
    /// A failed read keeps the counts for the next one.
    fn read_owner_counts(&mut self, probe: &mut Probe) {
        let now_ns = monotonic_now_ns();
        let read = probe
            .owner_counts()
            .and_then(|owners| Ok((owners, probe.destination_counts()?)));
        let (owners, destinations) = match read {
            Ok(read) => {
                self.told_counts_failed = false;
                read
            }
            Err(error) => {
                self.monitor.health.host_read_failures += 1;
                // Said once per run of failures: it is tried at every refresh.
                if !self.told_counts_failed {
                    self.told_counts_failed = true;
                    eprintln!(
                        "tcptrace: cannot read the per-owner counts ({error}); they are read again at the next refresh"
                    );
                }
                return;
            }
        };
        let mut comms: HashMap<OwnerKey, Comm> = HashMap::new();
        let values = owners
            .into_iter()
            .map(|(key, cpus)| {
                if let Some(named) = cpus.iter().find(|c| c.comm[0] != 0) {
                    comms.insert(key, Comm::from_kernel(&named.comm));
                }
                (
                    key,
                    cpus.into_iter().map(|c| (c.created_ns, c.pairs)).collect(),
                )
            })
            .collect();
        let changed = self.owner_deltas.advance(values);
        // A port no one listens on any more, idle since the last read: its
        // counts are all in, and its entry would only wait for eviction.
        let counted: HashSet<OwnerKey> = changed.iter().map(|(key, _)| *key).collect();
        let idle = self.owner_deltas.forget(|key| {
            key.tgid == 0
                && !counted.contains(key)
                && self
                    .tracker
                    .listening_owner(
                        (key.netns_inode != 0).then_some(key.netns_inode),
                        None,
                        key.local_port,
                    )
                    .is_none()
        });
        probe.forget_owner_keys(&idle);
        for (key, counts) in changed {
            let owner = if key.tgid != 0 {
                Some(Process {
                    tgid: key.tgid,
                    comm: comms.get(&key).copied().unwrap_or_else(|| Comm::from("")),
                })
            } else {
                let netns = (key.netns_inode != 0).then_some(key.netns_inode);
                self.tracker
                    .listening_owner(netns, None, key.local_port)
                    .cloned()
            };
            self.activity.add_counted(owner.as_ref(), now_ns, &counts);
        }
        self.tracker.forget_closed_listeners();
        let values = destinations
            .into_iter()
            .map(|(key, cpus)| {
                (
                    key,
                    cpus.into_iter()
                        .map(|c| (c.created_ns, [c.attempted, c.failed]))
                        .collect(),
                )
            })
            .collect();
        for (key, [attempted, failed]) in self.destination_deltas.advance(values) {
            if let Some(destination) = destination_address(&key) {
                self.activity
                    .count_connects(key.tgid, destination, attempted, failed);
            }
        }
    }

    /// Once per table: a full table costs precision, not leaks, and says
    /// which.
    fn tell_forgetting(&mut self) {
        let full = [
            (
                "destinations",
                self.activity.dropped_entries,
                "connects to destinations past it are left out of the per-destination counts",
            ),
            (
                "owner_counts",
                self.owner_counts_forgotten(),
                "what an evicted owner counted since the last refresh is lost, and `top`'s counts are low by as much",
            ),
            (
                "destination_counts",
                self.destination_deltas.evicted,
                "what an evicted destination counted since the last refresh is lost",
            ),
        ];
        for (table, forgotten, cost) in full {
            if forgotten > 0 && !self.told_forgetting.contains(&table) {
                self.told_forgetting.push(table);
                eprintln!(
                    "tcptrace: the {table} table is full: {cost} (precision only, no leak is missed; tcptrace_agent_table_forgotten_total counts them)"
                );
            }
        }
    }

    /// Per-owner entries the kernel's map evicted, and counts it refused.
    fn owner_counts_forgotten(&self) -> u64 {
        self.owner_deltas.evicted + self.kernel.owner_count_lost
    }

    pub fn totals(&self) -> AgentTotals {
        let health = &self.monitor.health;
        AgentTotals {
            transitions: health.transitions,
            events: health.events,
            dropped: health.drops,
            decode_errors: health.decode_errors,
            kernel_storage_failures: self.kernel.owner_insert_failed,
            forgotten_entries: vec![
                ("destinations", self.activity.dropped_entries),
                ("owner_counts", self.owner_counts_forgotten()),
                ("closed_listeners", self.tracker.dropped_closed_listeners),
                ("destination_counts", self.destination_deltas.evicted),
            ],
            reconcile_corrections: health.corrections,
            host_read_failures: health.host_read_failures,
            // The HTTP side's, which serve fills in.
            http_accept_errors: 0,
            kernel_maps: Vec::new(),
            agent_tables: self.occupancy(),
        }
    }

    /// How full the agent's own tables are.
    pub fn occupancy(&self) -> Vec<Occupancy> {
        let mut tables = self.monitor.occupancy();
        tables.extend(self.activity.occupancy());
        tables.push(self.tracker.occupancy());
        tables.push(Occupancy::new("placements", self.placements.len(), None));
        tables
    }
}
