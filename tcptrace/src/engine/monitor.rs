//! The leak monitor that `leaks`, `top` and `serve` share: it follows every
//! transition, reconciles with the kernel's table, finds the holders and
//! keeps the stacks of the sockets it tracks, and builds the leak report.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use tcptrace_common::TcpState;

use crate::{
    engine::stacks::{FINAL_TIMEOUT, MAX_SOCKET_STACKS, SocketStackBook},
    host::clock::monotonic_now_ns,
    host::inet_diag_lookup::SocketQuery,
    host::reader::{HostRead, HostRequest},
    model::health::Occupancy,
    model::holder::Holder,
    model::kernel_socket::KernelSocket,
    model::leak_report::{
        GrowthHistory, LeakReport, ProbeHealth, ProgramHealth, ReportFilter, SocketStacks,
        build_report,
    },
    model::leaks::{LeakKind, LeakTracker},
    model::process::FdUsage,
    model::stack_gaps::{StackMode, StackSampling},
    model::transition::{Record, Transition},
    probe::loader::{
        KernelCounters, MAX_STACK_TARGETS, Probe, ProbeOptions, StackLevel, StackMoments,
    },
    probe::records::decode,
};

/// How often the stack copies of leaking sockets are looked for.
const COPY_READ_EVERY: Duration = Duration::from_millis(250);
/// How often the processes to target are chosen again.
const AIM_EVERY: Duration = Duration::from_secs(1);
/// How often live tracking is checked against the kernel's table. A leak
/// whose CLOSE_WAIT event was lost is aged from the reconcile that finds it,
/// so this bounds how much of its age can go uncounted.
pub(crate) const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// The holder scan walks every process's fds: at most this often, unless
/// the set of leaking sockets changed.
const HOLDER_RESCAN_INTERVAL: Duration = Duration::from_secs(5);
/// How long a drain before a host read is applied waits for a record still
/// being written.
pub(crate) const SETTLE_WAIT: Duration = Duration::from_millis(50);

/// Every this many reconciles, if a CLOSE may have been missed since the
/// last time (and every `STACK_PRUNE_ANYWAY_EVERY` in any case), the table
/// is read in every state a socket with a file can be in, and the stacks of
/// sockets it no longer lists are forgotten (their CLOSE was lost).
const STACK_PRUNE_EVERY: u64 = 10;
const STACK_PRUNE_ANYWAY_EVERY: u64 = 60;
/// Past this many CLOSE_WAIT suspects, one walk of the table costs less
/// than looking each up.
const MAX_LOOKUPS: usize = 4096;

#[derive(Clone, Debug)]
pub struct LeaksOptions {
    pub probe: ProbeOptions,
    pub min_age: Duration,
    pub duration: Option<Duration>,
    /// Time between live reports, where the command's default is not wanted.
    pub interval: Option<Duration>,
    /// Read the kernel table once, report, exit.
    pub once: bool,
    pub json: bool,
    pub filter: ReportFilter,
    /// The program's frames shown per stack in the text report.
    pub stack_depth: usize,
}

pub(crate) struct Monitor {
    pub(crate) tracker: LeakTracker,
    pub(crate) health: ProbeHealth,
    growth: GrowthHistory,
    options: LeaksOptions,
    /// The stacks of live sockets, by cookie; forgotten when the socket is.
    stacks: SocketStackBook,
    /// Holders of the sockets that matter, from the newest walk of /proc.
    pub(crate) holders: HashMap<u64, Vec<Holder>>,
    holders_scanned_at: Option<Instant>,
    /// The inodes the newest holder walk looked for.
    scanned_inodes: HashSet<u64>,
    fd_usage: HashMap<u32, FdUsage>,
    /// Processes with stacks that the newest walk did not list.
    missing_once: HashSet<u32>,
    told_unreadable: bool,
    /// Said once per run of failures.
    told_failed: bool,
    told_walk_failed: bool,
    told_aim_failed: bool,
    copies_read_at: Option<Instant>,
    aimed_at: Option<Instant>,
    /// What the probe could copy and what its budget refused, as of the
    /// newest counters.
    sampling: StackSampling,
    /// The processes whose new sockets the probe copies from a budget of
    /// their own.
    targets: HashSet<u32>,
    /// The events lost (dropped or missed by the probe) when the newest
    /// complete read of the whole table's CLOSE_WAIT sockets was asked for.
    /// While that count stands, the events say which sockets are in
    /// CLOSE_WAIT, and the table is asked about those alone.
    lost_at_whole_read: Option<u64>,
    /// The events lost when the read under way was asked for.
    pending_lost: Option<u64>,
}

impl Monitor {
    pub(crate) fn new(options: LeaksOptions) -> anyhow::Result<Self> {
        Ok(Self {
            tracker: LeakTracker::new(),
            health: ProbeHealth::default(),
            growth: GrowthHistory::default(),
            options,
            stacks: SocketStackBook::start()?,
            holders: HashMap::new(),
            holders_scanned_at: None,
            scanned_inodes: HashSet::new(),
            fd_usage: HashMap::new(),
            missing_once: HashSet::new(),
            told_unreadable: false,
            told_failed: false,
            told_walk_failed: false,
            told_aim_failed: false,
            copies_read_at: None,
            aimed_at: None,
            sampling: StackSampling::default(),
            targets: HashSet::new(),
            lost_at_whole_read: None,
            pending_lost: None,
        })
    }

    fn handle(&mut self, bytes: &[u8]) {
        self.health.events += 1;
        match decode(bytes) {
            Ok(record) => self.handle_record(record),
            Err(_) => self.health.decode_errors += 1,
        }
    }

    /// A transition; the caller counts it in `health.events`.
    pub(crate) fn observe_transition(&mut self, transition: &Transition) {
        self.tracker.observe(transition);
        // listen(): a server's first socket, before any connection it
        // accepts is copied, so that a Python server's frames are copied
        // from its first connection. (A connect() is not recorded in leak
        // mode: a client is looked at at its first copy.)
        if self.options.probe.stacks != StackLevel::Off
            && transition.old_state == TcpState::Close
            && transition.new_state == TcpState::Listen
            && let Some(owner) = &transition.owner
        {
            self.stacks.notice_process(owner.tgid);
        }
        // Closed with no file left: nothing will ever report it again.
        if transition.new_state == TcpState::Close && transition.socket_inode.is_none() {
            self.stacks.forget_socket(transition.cookie);
        }
    }

    /// A decoded record, in the order the probe wrote it: a socket's stack
    /// records come before its CLOSE, so forgetting at CLOSE is final. The
    /// caller counts it in `health.events`.
    pub(crate) fn handle_record(&mut self, record: Record) {
        match record {
            Record::Transition(transition) => self.observe_transition(&transition),
            Record::Destroyed { cookie, .. } => {
                self.tracker.destroyed(cookie);
                self.stacks.forget_socket(cookie);
            }
            Record::Stack(sample) => {
                self.stacks.observe(sample);
                self.health.stack_errors = self.stacks.errors;
            }
        }
    }

    /// Reads the stack copies of the sockets leaking long enough to be
    /// worth unwinding, and takes in the stacks unwound since last time.
    pub(crate) fn read_new_stacks(&mut self, probe: &mut Probe) {
        self.stacks.take_unwound();
        // Not every drain: the suspects are walked, and a copy waits half a
        // second before it is read anyway.
        if self
            .copies_read_at
            .is_some_and(|at| at.elapsed() < COPY_READ_EVERY)
        {
            return;
        }
        self.copies_read_at = Some(Instant::now());
        let leaking = self.tracker.suspects().map(|s| s.cookie);
        self.stacks
            .read_copies(probe, leaking, monotonic_now_ns(), false);
        self.health.stack_errors = self.stacks.errors;
        if self.aimed_at.is_none_or(|at| at.elapsed() >= AIM_EVERY) {
            self.aimed_at = Some(Instant::now());
            self.aim_stacks(probe);
        }
    }

    /// Targets the processes whose newest leak has no origin stack: the
    /// probe then copies each of their new sockets from a budget of their
    /// own, so their next leak carries its code path. A leak older than
    /// tcptrace, or one the budget skipped, can never have one; a process
    /// is untargeted once its newest leak has one.
    fn aim_stacks(&mut self, probe: &mut Probe) {
        if probe.stack_moments.level == StackLevel::Off {
            return;
        }
        let now_ns = monotonic_now_ns();
        let mut newest: HashMap<u32, (u64, bool)> = HashMap::new();
        for leak in self.tracker.leaks(now_ns, self.options.min_age) {
            let Some(holders) = leak.inode.and_then(|inode| self.holders.get(&inode)) else {
                continue;
            };
            let has_origin = self.stacks.has_origin(leak.cookie);
            for holder in holders {
                let entry = newest.entry(holder.pid).or_insert((0, true));
                if leak.since_ns >= entry.0 {
                    *entry = (leak.since_ns, has_origin);
                }
            }
        }
        let targets: HashSet<u32> = newest
            .into_iter()
            .filter(|(_, (_, has_origin))| !has_origin)
            .map(|(pid, _)| pid)
            .collect();
        if targets != self.targets {
            match probe.set_stack_targets(&targets) {
                Ok(()) => {
                    self.targets = targets;
                    self.told_aim_failed = false;
                }
                Err(error) => {
                    self.health.host_read_failures += 1;
                    // Said once per run of failures: it is retried every second.
                    if !self.told_aim_failed {
                        self.told_aim_failed = true;
                        eprintln!(
                            "tcptrace: cannot aim the stack copies at leaking processes ({error})"
                        );
                    }
                }
            }
        }
    }

    /// Each attached program's kernel statistics, for the next report
    /// (counted only while bpf_stats is enabled).
    pub(crate) fn note_programs(&mut self, probe: &Probe) {
        self.health.programs = probe
            .all_program_stats()
            .into_iter()
            .map(|(program, stats)| ProgramHealth {
                program,
                runs: stats.run_count,
                run_ns: stats.run_time.as_nanos() as u64,
                recursion_misses: stats.recursion_misses,
            })
            .collect();
    }

    /// What the next report says of the probe's losses and its stack
    /// copies: from `counters`, which the caller reads anyway.
    pub(crate) fn note_counters(&mut self, moments: &StackMoments, counters: &KernelCounters) {
        self.health.drops = all_drops(counters);
        self.health.transitions = counters.transitions_seen;
        self.sampling = StackSampling {
            mode: match moments.level {
                StackLevel::Off => StackMode::Off,
                StackLevel::Sampled => StackMode::Sampled,
                StackLevel::Full => StackMode::Full,
            },
            budget_per_second: (moments.budget > 0).then_some(moments.budget),
            accept_seen: moments.accept,
            reads_seen: moments.reads,
            writes_seen: moments.writes,
            copies_taken: counters.stack_copied,
            copies_refused: counters.stack_budget_refused,
            copies_targeted: counters.stack_copied_targeted,
            python_frames_copied: counters.python_frames_copied,
            python_frames_ns: counters.python_frames_ns,
            targeted_processes: self.targets.len().min(MAX_STACK_TARGETS),
        };
    }

    pub(crate) fn drain(&mut self, probe: &mut Probe) {
        probe.drain(|bytes| self.handle(bytes));
        self.read_new_stacks(probe);
    }

    /// As `drain`, with every event from before the call in (see
    /// `Probe::drain_settled`): before a host read is applied.
    pub(crate) fn drain_settled(&mut self, probe: &mut Probe) {
        probe.drain_settled(SETTLE_WAIT, |bytes| self.handle(bytes));
        self.read_new_stacks(probe);
    }

    /// A host read is asked for: until it is joined, a socket that leaves
    /// CLOSE_WAIT is remembered, so that a table listing it from before
    /// does not bring it back.
    pub(crate) fn begin_read(&mut self) {
        self.tracker.reading();
    }

    /// What the next host read must bring: the CLOSE_WAIT table (`states`
    /// may ask for more) and, when due, the holders of the leaks.
    pub(crate) fn host_request(&self, states: &[TcpState]) -> HostRequest {
        let extra_inodes: HashSet<u64> = self
            .tracker
            .suspects()
            .filter(|s| s.kind == LeakKind::ClosedHeld)
            .filter_map(|s| s.inode)
            .collect();
        let suspects: HashSet<u64> = self.tracker.inodes();
        let stale = self
            .holders_scanned_at
            .is_none_or(|at| at.elapsed() >= HOLDER_RESCAN_INTERVAL);
        HostRequest {
            states: states.to_vec(),
            holders: stale || !suspects.is_subset(&self.scanned_inodes),
            extra_inodes,
            ..HostRequest::default()
        }
    }

    /// `leaks`'s read of the table in `states`, with `lost` the events lost
    /// so far (`events_lost`). A read of CLOSE_WAIT alone becomes lookups of
    /// the CLOSE_WAIT suspects when no event was lost since the last whole
    /// read: the events then say which sockets are in CLOSE_WAIT, and the
    /// lookups bring their inodes without walking every TIME_WAIT socket.
    pub(crate) fn leaks_request(&mut self, lost: u64, states: &[TcpState]) -> HostRequest {
        self.begin_read();
        let lookups = (states == [TcpState::CloseWait] && self.lost_at_whole_read == Some(lost))
            .then(|| self.close_wait_lookups())
            .flatten();
        self.pending_lost = Some(lost);
        match lookups {
            Some(lookups) => HostRequest {
                lookups: Some(lookups),
                ..self.host_request(&[])
            },
            None => self.host_request(states),
        }
    }

    /// Every CLOSE_WAIT suspect, where it is; `None` when some cannot be
    /// looked up (their namespace is not known) or there are too many.
    fn close_wait_lookups(&self) -> Option<Vec<SocketQuery>> {
        let mut lookups = Vec::new();
        for suspect in self.tracker.suspects() {
            if suspect.kind != LeakKind::CloseWait {
                continue;
            }
            if lookups.len() == MAX_LOOKUPS {
                return None;
            }
            lookups.push(SocketQuery {
                cookie: suspect.cookie,
                local: suspect.local,
                remote: suspect.remote,
                netns_inode: suspect.netns_inode?,
            });
        }
        Some(lookups)
    }

    /// Joins a host read with the events: the kernel's CLOSE_WAIT sockets,
    /// the holders, and which processes are gone. Call only after draining
    /// every event written before `read.started_ns`. A read that failed
    /// changes nothing it could not see: suspects stay, with their ages.
    pub(crate) fn apply_host(&mut self, read: &HostRead, startup: bool) {
        let table = &read.table;
        self.health.unreadable_namespaces = table.unreadable.len();
        if let Some(error) = &table.failed {
            self.health.host_read_failures += 1;
            if !self.told_failed {
                self.told_failed = true;
                eprintln!(
                    "tcptrace: cannot list network namespaces ({error}); leaks are kept as they were until the kernel's table can be read"
                );
            }
        } else {
            self.told_failed = false;
            if !table.unreadable.is_empty() {
                self.health.host_read_failures += 1;
            }
            if !self.told_unreadable
                && let Some((namespace, error)) = table.unreadable.first()
            {
                // Said once: it usually means no sock_diag for TCP (the tcp_diag
                // module), which every later read would repeat.
                self.told_unreadable = true;
                eprintln!(
                    "tcptrace: cannot read the TCP table of network namespace {} ({error}); its leaks are tracked from events alone",
                    namespace.inode
                );
            }
            let pending_lost = self.pending_lost.take();
            if let Some(missed) = &read.lookups_missed {
                // A suspect that left CLOSE_WAIT while it was looked up (on
                // a churning host, a healthy socket between its EOF and its
                // close) is explained by its event, drained by now.
                let explained = self.tracker.confirm_close_wait(&table.sockets, missed);
                self.health.table_lookups += 1;
                if !explained || !table.is_complete() {
                    // Something the events did not say: the next read walks
                    // the whole table.
                    self.lost_at_whole_read = None;
                }
            } else {
                let close_wait: Vec<KernelSocket> = table
                    .sockets
                    .iter()
                    .filter(|s| s.state == TcpState::CloseWait)
                    .cloned()
                    .collect();
                let unreadable: HashSet<u64> =
                    table.unreadable.iter().map(|(ns, _)| ns.inode).collect();
                self.tracker.reconcile_close_wait(
                    &close_wait,
                    &unreadable,
                    read.started_ns,
                    startup,
                );
                // Every table read covers CLOSE_WAIT (`host_request`).
                if let Some(lost) = pending_lost
                    && table.is_complete()
                {
                    self.lost_at_whole_read = Some(lost);
                }
            }
        }

        match &read.processes {
            Ok(scan) => {
                if read.holders_scanned {
                    let held: HashSet<u64> = scan
                        .holders
                        .iter()
                        .filter(|(_, h)| !h.is_empty())
                        .map(|(inode, _)| *inode)
                        .collect();
                    self.tracker
                        .reconcile_closed_held(&read.scanned_inodes, &held);
                    self.holders = scan.holders.clone();
                    self.scanned_inodes = read.scanned_inodes.clone();
                    self.holders_scanned_at = Some(Instant::now());
                    self.fd_usage = read.fd_usage.clone();
                }
                self.told_walk_failed = false;
                self.forget_exited(&scan.pids);
            }
            Err(error) => {
                // Holders and fd usage stay as last known.
                self.health.host_read_failures += 1;
                if !self.told_walk_failed {
                    self.told_walk_failed = true;
                    eprintln!("tcptrace: cannot walk /proc ({error}); holders are as last seen");
                }
            }
        }
        self.tracker.read_done();
        self.health.corrections = self.tracker.corrections();
    }

    /// Forgets the stacks of sockets the kernel's table no longer lists.
    /// `listed` (see `TableSnapshot::listed_cookies`) must be a complete
    /// table of every state a socket with a file can be in.
    pub(crate) fn prune_stacks(&mut self, listed: &foldhash::HashSet<u64>, started_ns: u64) {
        let suspects: foldhash::HashSet<u64> = self.tracker.suspects().map(|s| s.cookie).collect();
        self.stacks.prune(listed, &suspects, started_ns);
    }

    /// Stacks of processes that exited: freed here, in the unwinder and in
    /// the symbolizer. A process must be missing from two walks in a row:
    /// one that began before it was born does not list it.
    fn forget_exited(&mut self, alive: &HashSet<u32>) {
        let missing: HashSet<u32> = self
            .stacks
            .processes()
            .into_iter()
            .filter(|pid| !alive.contains(pid))
            .collect();
        let exited: HashSet<u32> = missing.intersection(&self.missing_once).copied().collect();
        self.missing_once = missing.difference(&exited).copied().collect();
        if exited.is_empty() {
            return;
        }
        self.stacks.forget_processes(&exited);
    }

    /// Waits for the stacks read so far to be named: before a final report,
    /// which would otherwise show them as not taken.
    pub(crate) fn wait_for_stacks(&mut self, probe: &mut Probe) {
        let leaking: Vec<u64> = self.tracker.suspects().map(|s| s.cookie).collect();
        let done = self.stacks.finish(probe, leaking.into_iter());
        self.health.stack_errors = self.stacks.errors;
        if !done {
            eprintln!(
                "tcptrace: unwinding and naming the stacks took over {}s; the report shows those not named yet as not taken",
                FINAL_TIMEOUT.as_secs()
            );
        }
    }

    /// How many entries the monitor's tables hold.
    pub(crate) fn occupancy(&self) -> Vec<Occupancy> {
        vec![
            Occupancy::new("suspects", self.tracker.suspects().count(), None),
            Occupancy::new(
                "socket_stacks",
                self.stacks.sockets(),
                Some(MAX_SOCKET_STACKS),
            ),
            Occupancy::new("symbolized_stacks", self.stacks.named(), None),
            Occupancy::new("holders", self.holders.len(), None),
        ]
    }

    pub(crate) fn report(&mut self, min_age: Duration) -> LeakReport {
        let now_ns = monotonic_now_ns();
        let leaks = self.tracker.leaks(now_ns, min_age);
        self.stacks
            .refresh_names(leaks.iter().map(|s| s.cookie), Duration::ZERO);
        let stacks: HashMap<u64, SocketStacks> = leaks
            .iter()
            .filter_map(|s| Some((s.cookie, self.stacks.of_socket(s.cookie)?)))
            .collect();
        let fd_usage = &self.fd_usage;
        let mut report = build_report(
            &leaks,
            &self.holders,
            &stacks,
            &self.sampling,
            now_ns,
            min_age,
            &self.options.filter,
            |pid| fd_usage.get(&pid).copied(),
            &mut self.growth,
        );
        self.health.corrections = self.tracker.corrections();
        report.health = self.health.clone();
        self.stacks.naming_health(&mut report.health);
        report
    }
}

/// Every record the probe could not deliver, of any kind.
pub(crate) fn all_drops(counters: &KernelCounters) -> u64 {
    counters.dropped() + counters.destroyed_reserve_failed + counters.stack_reserve_failed
}

/// Whether the `reconciles`th read prunes the stacks, given the closes the
/// agent cannot have seen (events lost and transitions filtered in the
/// kernel) now and at the last prune.
pub(crate) fn prune_due(
    reconciles: u64,
    unseen_closes: Option<u64>,
    at_last_prune: Option<u64>,
) -> bool {
    reconciles.is_multiple_of(STACK_PRUNE_EVERY)
        && (unseen_closes.is_none()
            || unseen_closes != at_last_prune
            || reconciles.is_multiple_of(STACK_PRUNE_ANYWAY_EVERY))
}

/// Every event the probe lost: its drops, and the transitions the kernel
/// did not run the program for (a run on a CPU where it was already
/// running, from an interrupt). `None` when they cannot be read: nothing
/// can then be trusted to be complete.
pub(crate) fn events_lost(probe: &Probe) -> Option<u64> {
    let counters = probe.counters().ok()?;
    let misses = probe.program_stats().ok()?.recursion_misses;
    Some(all_drops(&counters) + misses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sockdiag::TableSnapshot;
    use crate::model::{
        fixtures::{S, close_wait_in_kernel, transition},
        holder::ProcScan,
        kernel_socket::NetNamespace,
    };
    use tcptrace_common::StackKind;

    fn monitor() -> Monitor {
        Monitor::new(LeaksOptions {
            probe: ProbeOptions::default(),
            min_age: Duration::ZERO,
            duration: None,
            interval: None,
            once: false,
            json: false,
            filter: ReportFilter::default(),
            stack_depth: 8,
        })
        .unwrap()
    }

    fn event(cookie: u64, at_s: u64, old: TcpState, new: TcpState) -> Record {
        Record::Transition(transition(cookie, at_s, old, new))
    }

    fn stack(cookie: u64, at_s: u64, kind: StackKind) -> Record {
        Record::Stack(crate::model::transition::StackSample {
            timestamp_ns: at_s * S,
            cookie,
            tgid: 42,
            kind,
            copied: Ok(()),
        })
    }

    fn read(
        started_s: u64,
        table: TableSnapshot,
        processes: std::io::Result<ProcScan>,
    ) -> HostRead {
        HostRead {
            started_ns: started_s * S,
            table,
            lookups_missed: None,
            settings: Vec::new(),
            processes,
            holders_scanned: false,
            scanned_inodes: HashSet::new(),
            fd_usage: HashMap::new(),
            placements: Vec::new(),
        }
    }

    fn entries(monitor: &Monitor, name: &str) -> u64 {
        monitor
            .occupancy()
            .into_iter()
            .find(|o| o.name == name)
            .unwrap()
            .entries
    }

    use TcpState::*;

    #[test]
    fn a_socket_whose_whole_life_fits_in_one_drain_leaves_no_stacks() {
        let mut monitor = monitor();
        // One batch: connect stack, first-I/O stack, then the close.
        monitor.handle_record(event(1, 1, Close, SynSent));
        monitor.handle_record(stack(1, 1, StackKind::Connect));
        monitor.handle_record(event(1, 1, SynSent, Established));
        monitor.handle_record(stack(1, 1, StackKind::FirstRead));
        monitor.handle_record(event(1, 2, Established, FinWait1));
        monitor.handle_record(event(1, 2, FinWait1, FinWait2));
        monitor.handle_record(event(1, 2, FinWait2, Close));
        assert_eq!(entries(&monitor, "socket_stacks"), 0);
        // A live one keeps its stacks.
        monitor.handle_record(stack(2, 3, StackKind::Connect));
        assert_eq!(entries(&monitor, "socket_stacks"), 1);
    }

    #[test]
    fn stacks_of_sockets_the_table_no_longer_lists_are_forgotten() {
        let mut monitor = monitor();
        monitor.handle_record(stack(1, 1, StackKind::Connect));
        monitor.handle_record(stack(2, 1, StackKind::Connect));
        monitor.handle_record(stack(3, 5, StackKind::Connect));
        let table = TableSnapshot {
            sockets: vec![close_wait_in_kernel(2, 20)],
            ..TableSnapshot::default()
        };
        // Socket 1's CLOSE was lost; socket 3 postdates the dump.
        monitor.prune_stacks(&table.listed_cookies().unwrap(), 4 * S);
        assert_eq!(entries(&monitor, "socket_stacks"), 2);
        // An incomplete table says nothing about what it did not list.
        let partial = TableSnapshot {
            unreadable: vec![(
                NetNamespace { inode: 9, pid: 1 },
                crate::host::sockdiag::SockDiagError::Kernel(1),
            )],
            ..TableSnapshot::default()
        };
        assert!(partial.listed_cookies().is_none());
    }

    #[test]
    fn a_failed_read_keeps_leaks_and_their_ages() {
        let mut monitor = monitor();
        monitor.handle_record(event(1, 1, Established, CloseWait));
        let table = TableSnapshot {
            sockets: vec![close_wait_in_kernel(1, 11)],
            ..TableSnapshot::default()
        };
        monitor.apply_host(&read(2, table, Ok(ProcScan::default())), false);
        let before = monitor.tracker.suspects().next().unwrap().clone();
        assert_eq!(before.since_ns, S);

        // Out of fds: neither the namespaces nor /proc can be read.
        let failed = TableSnapshot {
            failed: Some(std::io::Error::from_raw_os_error(libc::EMFILE)),
            ..TableSnapshot::default()
        };
        let walk = Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        monitor.apply_host(&read(3, failed, walk), false);
        assert_eq!(
            monitor.tracker.suspects().cloned().collect::<Vec<_>>(),
            std::slice::from_ref(&before)
        );
        assert_eq!(monitor.tracker.corrections(), 0);
        assert_eq!(monitor.health.host_read_failures, 2);

        // Readable again: the same leak, with the age it had, not a new one.
        let table = TableSnapshot {
            sockets: vec![close_wait_in_kernel(1, 11)],
            ..TableSnapshot::default()
        };
        monitor.apply_host(&read(4, table, Ok(ProcScan::default())), false);
        assert_eq!(
            monitor.tracker.suspects().cloned().collect::<Vec<_>>(),
            [before]
        );
        assert_eq!(monitor.tracker.corrections(), 0);
    }

    fn close_wait_with_netns(cookie: u64, at_s: u64) -> Record {
        let mut t = transition(cookie, at_s, Established, CloseWait);
        t.netns_inode = Some(4026531840);
        Record::Transition(t)
    }

    fn whole_table(sockets: Vec<KernelSocket>) -> TableSnapshot {
        TableSnapshot {
            sockets,
            ..TableSnapshot::default()
        }
    }

    #[test]
    fn close_wait_is_looked_up_only_while_nothing_was_lost_since_a_whole_read() {
        let mut monitor = monitor();
        monitor.handle_record(close_wait_with_netns(1, 1));
        // No whole read yet: the first one walks the table.
        let first = monitor.leaks_request(0, &[CloseWait]);
        assert_eq!(
            (first.states.as_slice(), first.lookups.is_none()),
            (&[CloseWait][..], true)
        );
        monitor.apply_host(
            &read(
                2,
                whole_table(vec![close_wait_in_kernel(1, 11)]),
                Ok(ProcScan::default()),
            ),
            true,
        );

        // Nothing lost since: the suspect alone, where the event put it.
        let lookup = monitor.leaks_request(0, &[CloseWait]);
        assert!(lookup.states.is_empty());
        let lookups = lookup.lookups.unwrap();
        assert_eq!(lookups.len(), 1);
        assert_eq!(lookups[0].cookie, 1);
        assert_eq!(lookups[0].netns_inode, 4026531840);
        let found = HostRead {
            lookups_missed: Some(Vec::new()),
            ..read(
                3,
                whole_table(vec![close_wait_in_kernel(1, 11)]),
                Ok(ProcScan::default()),
            )
        };
        monitor.apply_host(&found, false);
        assert_eq!(monitor.health.table_lookups, 1);
        assert_eq!(
            monitor
                .leaks_request(0, &[CloseWait])
                .lookups
                .map(|l| l.len()),
            Some(1)
        );
        monitor.pending_lost = None;

        // One event lost: the whole table again, and only a complete whole
        // read makes lookups trusted again.
        assert!(monitor.leaks_request(1, &[CloseWait]).lookups.is_none());
        let unreadable = TableSnapshot {
            unreadable: vec![(
                NetNamespace { inode: 9, pid: 9 },
                crate::host::sockdiag::SockDiagError::Kernel(1),
            )],
            ..whole_table(vec![close_wait_in_kernel(1, 11)])
        };
        monitor.apply_host(&read(4, unreadable, Ok(ProcScan::default())), false);
        assert!(monitor.leaks_request(1, &[CloseWait]).lookups.is_none());
        monitor.apply_host(
            &read(
                5,
                whole_table(vec![close_wait_in_kernel(1, 11)]),
                Ok(ProcScan::default()),
            ),
            false,
        );
        assert_eq!(
            monitor
                .leaks_request(1, &[CloseWait])
                .lookups
                .map(|l| l.len()),
            Some(1)
        );

        // A lookup that did not find a suspect removes nothing, and the next
        // read walks the table.
        let missed = HostRead {
            lookups_missed: Some(vec![1]),
            ..read(6, whole_table(Vec::new()), Ok(ProcScan::default()))
        };
        monitor.apply_host(&missed, false);
        assert_eq!(monitor.tracker.suspects().count(), 1);
        assert_eq!(monitor.tracker.corrections(), 0);
        assert!(monitor.leaks_request(1, &[CloseWait]).lookups.is_none());
    }

    #[test]
    fn stacks_are_pruned_when_a_close_may_have_been_missed_and_once_a_minute() {
        assert!(!prune_due(9, None, None), "only every tenth read");
        assert!(prune_due(10, None, None), "nothing is known");
        assert!(prune_due(10, Some(0), None), "never pruned yet");
        assert!(!prune_due(10, Some(3), Some(3)), "nothing missed since");
        assert!(prune_due(20, Some(4), Some(3)), "one event lost since");
        assert!(prune_due(60, Some(3), Some(3)), "once a minute anyway");
    }

    /// On a churning host a healthy socket is in CLOSE_WAIT between its EOF
    /// and its close: looked up as a suspect, it is gone or in LAST_ACK by
    /// the time the kernel answers. Its event says so, and lookups stay
    /// trusted; a suspect the events still hold in CLOSE_WAIT does not.
    #[test]
    fn a_suspect_that_left_close_wait_during_its_lookup_keeps_lookups_trusted() {
        let mut monitor = monitor();
        for cookie in [1, 2, 3] {
            monitor.handle_record(close_wait_with_netns(cookie, 1));
        }
        monitor.leaks_request(0, &[CloseWait]);
        let table = [1, 2, 3].map(|cookie| close_wait_in_kernel(cookie, 10 + cookie));
        monitor.apply_host(
            &read(2, whole_table(table.to_vec()), Ok(ProcScan::default())),
            true,
        );
        let lookups = monitor.leaks_request(0, &[CloseWait]).lookups.unwrap();
        assert_eq!(lookups.len(), 3);
        // While the lookups ran: 2 closed, 3 moved to LAST_ACK.
        for (cookie, old, new) in [
            (2, CloseWait, LastAck),
            (2, LastAck, Close),
            (3, CloseWait, LastAck),
        ] {
            monitor.handle_record(event(cookie, 3, old, new));
        }
        let mut last_ack = close_wait_in_kernel(3, 13);
        last_ack.state = LastAck;
        let answered = HostRead {
            lookups_missed: Some(vec![2]),
            ..read(
                3,
                whole_table(vec![table[0].clone(), last_ack.clone()]),
                Ok(ProcScan::default()),
            )
        };
        monitor.apply_host(&answered, false);
        let next = monitor.leaks_request(0, &[CloseWait]).lookups;
        assert_eq!(
            next.map(|l| l.iter().map(|q| q.cookie).collect::<Vec<_>>()),
            Some(vec![1])
        );

        // The same answers with no event to explain them: 1 is missed, or
        // found in LAST_ACK, while the events hold it in CLOSE_WAIT.
        for unexplained in [
            HostRead {
                lookups_missed: Some(vec![1]),
                ..read(4, whole_table(Vec::new()), Ok(ProcScan::default()))
            },
            HostRead {
                lookups_missed: Some(Vec::new()),
                ..read(
                    4,
                    whole_table(vec![KernelSocket {
                        state: LastAck,
                        ..table[0].clone()
                    }]),
                    Ok(ProcScan::default()),
                )
            },
        ] {
            monitor.apply_host(&unexplained, false);
            assert_eq!(monitor.tracker.suspects().count(), 1);
            assert!(monitor.leaks_request(0, &[CloseWait]).lookups.is_none());
            monitor.apply_host(
                &read(
                    5,
                    whole_table(vec![table[0].clone()]),
                    Ok(ProcScan::default()),
                ),
                false,
            );
            assert!(monitor.leaks_request(0, &[CloseWait]).lookups.is_some());
        }
    }

    #[test]
    fn a_suspect_of_no_known_namespace_and_a_read_of_every_state_walk_the_table() {
        let mut monitor = monitor();
        monitor.handle_record(close_wait_with_netns(1, 1));
        monitor.leaks_request(0, &[CloseWait]);
        monitor.apply_host(
            &read(
                2,
                whole_table(vec![close_wait_in_kernel(1, 11)]),
                Ok(ProcScan::default()),
            ),
            true,
        );
        let every_state = monitor.leaks_request(0, &[Established, CloseWait]);
        assert!(every_state.lookups.is_none());
        assert_eq!(every_state.states.len(), 2);
        monitor.pending_lost = None;

        // A CLOSE_WAIT event without a namespace (a kernel whose BTF lacks it).
        monitor.handle_record(event(2, 3, Established, CloseWait));
        let request = monitor.leaks_request(0, &[CloseWait]);
        assert!(request.lookups.is_none());
        assert_eq!(request.states, [CloseWait]);
    }
}
