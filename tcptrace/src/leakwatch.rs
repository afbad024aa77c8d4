//! `tcptrace leaks`: follow every transition, age CLOSE_WAIT and
//! closed-but-held sockets, reconcile with the kernel's table, and report the
//! leaks per holder process.

use std::{
    collections::{HashMap, HashSet},
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use tcptrace_common::{StackKind, TcpState};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};

use crate::{
    clock::monotonic_now_ns,
    decode::{Record, StackSample, Transition, decode},
    holders::{Holder, fd_usage, socket_holders},
    leaks::LeakTracker,
    preflight,
    probe::{KernelCounters, Probe, ProbeOptions},
    report::{
        FdUsage, GrowthHistory, LeakReport, ProbeHealth, ProgramHealth, ReportFilter, SocketStacks,
        build_report, render_text,
    },
    sockdiag::{KernelSocket, TableSnapshot, dump_all_namespaces},
    symbolize::StackSymbolizer,
    watch::DRAIN_INTERVAL,
};

/// How often the live view is redrawn.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// When stdout is not a terminal, reports are appended this often instead.
const APPEND_INTERVAL: Duration = Duration::from_secs(10);
/// How often live tracking is checked against the kernel's table. A leak
/// whose CLOSE_WAIT event was lost is aged from the reconcile that finds it,
/// so this bounds how much of its age can go uncounted.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// The holder scan walks every process's fds: at most this often, unless
/// the set of leaking sockets changed.
const HOLDER_RESCAN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct LeaksOptions {
    pub probe: ProbeOptions,
    pub min_age: Duration,
    pub duration: Option<Duration>,
    /// Read the kernel table once, report, exit.
    pub once: bool,
    pub json: bool,
    pub filter: ReportFilter,
}

pub struct LeaksOutcome {
    pub leaks_found: bool,
}

struct HolderCache {
    inodes: HashSet<u64>,
    scanned_at: Option<Instant>,
    holders: HashMap<u64, Vec<Holder>>,
}

impl HolderCache {
    fn holders_of(&mut self, inodes: HashSet<u64>) -> (&HashMap<u64, Vec<Holder>>, bool) {
        let stale = self
            .scanned_at
            .is_none_or(|at| at.elapsed() >= HOLDER_RESCAN_INTERVAL);
        let rescanned = stale || inodes != self.inodes;
        if rescanned {
            self.holders = socket_holders(&inodes);
            self.inodes = inodes;
            self.scanned_at = Some(Instant::now());
        }
        (&self.holders, rescanned)
    }
}

pub(crate) struct Monitor {
    pub(crate) tracker: LeakTracker,
    pub(crate) health: ProbeHealth,
    growth: GrowthHistory,
    holder_cache: HolderCache,
    options: LeaksOptions,
    symbolizer: StackSymbolizer,
    /// Resolved stacks of live sockets, by cookie; forgotten when the socket is.
    socket_stacks: HashMap<u64, SocketStacks>,
    /// Stack records of the current drain, resolved right after it.
    pending_stacks: Vec<StackSample>,
    told_unreadable: bool,
}

impl Monitor {
    pub(crate) fn new(options: LeaksOptions) -> Self {
        Self {
            tracker: LeakTracker::new(),
            health: ProbeHealth::default(),
            growth: GrowthHistory::default(),
            holder_cache: HolderCache {
                inodes: HashSet::new(),
                scanned_at: None,
                holders: HashMap::new(),
            },
            options,
            symbolizer: StackSymbolizer::new(),
            socket_stacks: HashMap::new(),
            pending_stacks: Vec::new(),
            told_unreadable: false,
        }
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
        // Closed with no file left: nothing will ever report it again.
        if transition.new_state == TcpState::Close && transition.socket_inode.is_none() {
            self.socket_stacks.remove(&transition.cookie);
        }
    }

    /// A decoded record; the caller counts it in `health.events`.
    pub(crate) fn handle_record(&mut self, record: Record) {
        match record {
            Record::Transition(transition) => self.observe_transition(&transition),
            Record::Destroyed { cookie, .. } => {
                self.tracker.destroyed(cookie);
                self.socket_stacks.remove(&cookie);
            }
            Record::Stack(sample) => self.pending_stacks.push(sample),
        }
    }

    /// Copies each new stack out of the probe's map and names its frames
    /// now, while the process is alive and before the id can be reused.
    pub(crate) fn resolve_stacks(&mut self, probe: &Probe) {
        for sample in std::mem::take(&mut self.pending_stacks) {
            let Ok(stack_id) = sample.stack_id else {
                self.health.stack_errors += 1;
                continue;
            };
            let Some(frames) = self
                .symbolizer
                .frames(sample.tgid, stack_id, || probe.stack_addresses(stack_id))
            else {
                continue;
            };
            let stacks = self.socket_stacks.entry(sample.cookie).or_default();
            let slot = match sample.kind {
                StackKind::Connect => &mut stacks.connect,
                StackKind::FirstIo => &mut stacks.first_io,
                StackKind::Eof => &mut stacks.eof,
            };
            slot.get_or_insert(frames);
        }
    }

    fn drain(&mut self, probe: &mut Probe) {
        probe.drain(|bytes| self.handle(bytes));
        self.resolve_stacks(probe);
    }

    /// Call only after draining every event written so far.
    fn reconcile(&mut self, startup: bool) {
        let snapshot_ns = monotonic_now_ns();
        let table = dump_all_namespaces(&[TcpState::CloseWait]);
        self.reconcile_with(&table, snapshot_ns, startup);
    }

    /// `table` may list any states; only its CLOSE_WAIT sockets are used.
    /// Call only after draining every event written before `snapshot_ns`.
    pub(crate) fn reconcile_with(
        &mut self,
        table: &TableSnapshot,
        snapshot_ns: u64,
        startup: bool,
    ) {
        self.health.unreadable_namespaces = table.unreadable.len();
        let close_wait: Vec<KernelSocket> = table
            .sockets
            .iter()
            .filter(|s| s.state == TcpState::CloseWait)
            .cloned()
            .collect();
        let unreadable: HashSet<u64> = table.unreadable.iter().map(|(ns, _)| ns.inode).collect();
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
        self.tracker
            .reconcile_close_wait(&close_wait, &unreadable, snapshot_ns, startup);
        self.health.corrections = self.tracker.corrections();
    }

    pub(crate) fn report(&mut self, min_age: Duration) -> LeakReport {
        let now_ns = monotonic_now_ns();
        let leak_inodes: HashSet<u64> = self
            .tracker
            .leaks(now_ns, min_age)
            .iter()
            .filter_map(|s| s.inode)
            .collect();
        let (holders, rescanned) = self.holder_cache.holders_of(leak_inodes.clone());
        if rescanned {
            let held: HashSet<u64> = holders
                .iter()
                .filter(|(_, h)| !h.is_empty())
                .map(|(inode, _)| *inode)
                .collect();
            self.tracker.reconcile_closed_held(&leak_inodes, &held);
        }
        let leaks = self.tracker.leaks(now_ns, min_age);
        let mut report = build_report(
            &leaks,
            &self.holder_cache.holders,
            &self.socket_stacks,
            now_ns,
            min_age,
            &self.options.filter,
            |pid| fd_usage(pid).map(|(open, limit)| FdUsage { open, limit }),
            &mut self.growth,
        );
        self.health.corrections = self.tracker.corrections();
        report.health = self.health.clone();
        report
    }
}

/// Every record the probe could not deliver, of any kind.
pub(crate) fn all_drops(counters: &KernelCounters) -> u64 {
    counters.dropped() + counters.destroyed_reserve_failed + counters.stack_reserve_failed
}

fn write_report<W: Write>(
    out: &mut W,
    report: &LeakReport,
    json: bool,
    clear: bool,
) -> std::io::Result<()> {
    if json {
        // A report of strings and numbers always serializes.
        writeln!(out, "{}", serde_json::to_string(report).unwrap_or_default())?;
    } else {
        if clear {
            // Home and clear: a refreshed view, no alternate screen to restore.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{}", render_text(report))?;
    }
    out.flush()
}

pub async fn run<W: Write>(options: LeaksOptions, mut out: W) -> anyhow::Result<LeaksOutcome> {
    let json = options.json;
    if options.once {
        preflight::check_privileges()?;
        let mut monitor = Monitor::new(options);
        monitor.reconcile(true);
        // Ages are unknown without history: everything in CLOSE_WAIT now is listed.
        let report = monitor.report(Duration::ZERO);
        write_report(&mut out, &report, json, false)?;
        return Ok(LeaksOutcome {
            leaks_found: !report.is_empty(),
        });
    }

    let probe = Probe::load(&ProbeOptions {
        track_closed_held: true,
        ..options.probe.clone()
    })?;
    // SAFETY: the probe owns the ring buffer's fd and keeps it open and
    // unchanged for as long as the AsyncFd holds the probe.
    let mut probe = unsafe { AsyncFd::register(probe)? };
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let min_age = options.min_age;
    let duration = options.duration;
    let live_terminal = duration.is_none() && !json && std::io::stdout().is_terminal();
    let mut monitor = Monitor::new(options);

    monitor.reconcile(true);
    eprintln!(
        "tcptrace: watching for TCP socket leaks (CLOSE_WAIT or closed but held for >= {}); Ctrl-C to stop",
        humantime::format_duration(min_age)
    );
    for notice in &probe.get_ref().notices {
        eprintln!("{notice}");
    }

    let mut drain_tick = interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report_tick = interval(if live_terminal {
        REPORT_INTERVAL
    } else {
        APPEND_INTERVAL
    });
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    report_tick.tick().await;
    let mut reconcile_tick = interval(RECONCILE_INTERVAL);
    reconcile_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    reconcile_tick.tick().await;
    let deadline = sleep(duration.unwrap_or(Duration::MAX));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            guard = probe.readable_mut() => {
                let mut guard = guard?;
                monitor.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain_tick.tick() => monitor.drain(probe.get_mut()),
            _ = reconcile_tick.tick() => {
                monitor.drain(probe.get_mut());
                monitor.reconcile(false);
            }
            _ = report_tick.tick(), if duration.is_none() => {
                monitor.drain(probe.get_mut());
                monitor.health.drops = probe.get_ref().counters().map(|c| all_drops(&c)).unwrap_or(0);
                let report = monitor.report(min_age);
                if write_report(&mut out, &report, json, live_terminal).is_err() {
                    break;
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = &mut deadline, if duration.is_some() => break,
        }
    }

    monitor.drain(probe.get_mut());
    monitor.reconcile(false);
    let counters = probe.get_ref().counters()?;
    monitor.health.drops = all_drops(&counters);
    monitor.health.programs = probe
        .get_ref()
        .all_program_stats()
        .into_iter()
        .map(|(program, stats)| ProgramHealth {
            program,
            runs: stats.run_count,
            run_ns: stats.run_time.as_nanos() as u64,
            recursion_misses: stats.recursion_misses,
        })
        .collect();
    let report = monitor.report(min_age);
    write_report(&mut out, &report, json, false)?;
    Ok(LeaksOutcome {
        leaks_found: !report.is_empty(),
    })
}
