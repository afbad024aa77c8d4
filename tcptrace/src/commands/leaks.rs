//! `tcptrace leaks`: follow every transition, age CLOSE_WAIT and
//! closed-but-held sockets, reconcile with the kernel's table, and report the
//! leaks per holder process.

use std::{
    io::{IsTerminal, Write},
    ops::ControlFlow,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail};

use tcptrace_common::TcpState;
use tokio::io::unix::AsyncFd;

use crate::{
    engine::drain_loop::{self, Refresh, Schedule, StopSignals},
    engine::monitor::{LeaksOptions, Monitor, RECONCILE_INTERVAL, events_lost, prune_due},
    host::reader::{HostRead, HostRequest, read_host, release_free_memory, states_with_files},
    model::leak_report::LeakReport,
    probe::loader::{Probe, ProbeOptions},
    probe::{loader::StackLevel, preflight},
    view::flamegraph::{FlamegraphKind, render_svg_of},
    view::report::render_text,
    view::watch,
};

/// How often the live view is redrawn.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// When stdout is not a terminal, reports are appended this often instead.
const APPEND_INTERVAL: Duration = Duration::from_secs(10);

pub struct LeaksOutcome {
    pub leaks_found: bool,
}

/// `--flamegraph`: the file the final report's flame graph goes to, and
/// which stack it draws.
#[derive(Clone, Debug)]
pub struct FlamegraphOutput {
    pub path: PathBuf,
    pub kind: FlamegraphKind,
}

impl FlamegraphOutput {
    /// Before observing for minutes: what cannot work is said at once, as
    /// a usage error (main calls it before `run`).
    pub fn check(&self, stacks: StackLevel) -> anyhow::Result<()> {
        if stacks == StackLevel::Off {
            bail!("--flamegraph draws code paths, which --stacks off does not take");
        }
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "cannot write the flame graph to {}: {} is not a directory",
                self.path.display(),
                dir.display()
            );
        }
        Ok(())
    }

    /// Called after the report is out, so a failure here loses only the
    /// picture.
    fn write(&self, report: &LeakReport) -> anyhow::Result<()> {
        let svg = render_svg_of(report, self.kind)?;
        std::fs::write(&self.path, svg).map_err(|error| {
            anyhow!(
                "cannot write the flame graph to {}: {error} (the report itself was written)",
                self.path.display()
            )
        })
    }
}

fn write_report<W: Write>(
    out: &mut W,
    report: &LeakReport,
    json: bool,
    stack_depth: usize,
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
        write!(out, "{}", render_text(report, stack_depth))?;
    }
    out.flush()
}

/// The loop's part that is leaks': reconciles with the table, and the
/// live report.
struct LeaksLoop<'a, W: Write> {
    monitor: &'a mut Monitor,
    min_age: Duration,
    out: &'a mut W,
    json: bool,
    stack_depth: usize,
    live_terminal: bool,
    reconciles: u64,
    /// Whether the read under way lists every socket with a file, for
    /// pruning the stacks of sockets gone.
    pruning: bool,
    /// Events lost and transitions filtered in the kernel at the last
    /// prune: while neither grows, every socket's CLOSE reached the stack
    /// book, which then holds no stack of a socket gone.
    unseen_closes_at_prune: Option<u64>,
    /// Set when the reader went away: there is nobody to give a final
    /// report to.
    gone: Option<LeaksOutcome>,
}

impl<W: Write> Refresh for LeaksLoop<'_, W> {
    fn drain(&mut self, probe: &mut Probe) {
        self.monitor.drain(probe);
    }

    fn host_request(&mut self, probe: &Probe) -> HostRequest {
        self.reconciles += 1;
        // A prune walks the whole table (tens of milliseconds on a churning
        // host), to free memory only: skipped while no CLOSE can have
        // been missed, but for the rare record that follows its socket's
        // CLOSE (a read racing the close on another CPU).
        let unseen_closes = unseen_closes(probe);
        self.pruning = prune_due(self.reconciles, unseen_closes, self.unseen_closes_at_prune);
        if self.pruning {
            self.unseen_closes_at_prune = unseen_closes;
        }
        let states = if self.pruning {
            states_with_files()
        } else {
            vec![TcpState::CloseWait]
        };
        leaks_request(self.monitor, probe, &states)
    }

    fn host_read(&mut self, probe: &mut Probe, read: HostRead) -> anyhow::Result<ControlFlow<()>> {
        self.monitor.drain_settled(probe);
        self.monitor.apply_host(&read, false);
        if self.pruning
            && let Some(listed) = read.table.listed_cookies()
        {
            self.monitor.prune_stacks(&listed, read.started_ns);
        }
        drop(read);
        release_free_memory();
        Ok(ControlFlow::Continue(()))
    }

    fn report(&mut self, probe: &mut Probe) -> anyhow::Result<ControlFlow<()>> {
        self.monitor.drain(probe);
        note_counters(self.monitor, probe);
        let report = self.monitor.report(self.min_age);
        if let Err(error) = write_report(
            self.out,
            &report,
            self.json,
            self.stack_depth,
            self.live_terminal,
        ) {
            watch::reader_gone(error)?;
            self.gone = Some(LeaksOutcome {
                leaks_found: !report.is_empty(),
            });
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// The probe's counters into the next report; a failed read keeps what
/// the last one said.
fn note_counters(monitor: &mut Monitor, probe: &Probe) {
    if let Ok(counters) = probe.counters() {
        monitor.note_counters(&probe.stack_moments, &counters);
    }
}

/// Transitions the agent did not see: lost, or dropped in the kernel by a
/// filter. `None` when they cannot be read.
fn unseen_closes(probe: &Probe) -> Option<u64> {
    let filtered = probe.counters().ok()?.filtered_in_kernel;
    Some(events_lost(probe)? + filtered)
}

/// The monitor's read of `states`; lookups when nothing was lost, and a
/// whole read when what was lost cannot be told.
fn leaks_request(monitor: &mut Monitor, probe: &Probe, states: &[TcpState]) -> HostRequest {
    match events_lost(probe) {
        Some(lost) => monitor.leaks_request(lost, states),
        None => monitor.host_request(states),
    }
}

/// Write the final report to `out`, and its flame graph to `flamegraph`.
pub async fn run<W: Write>(
    options: LeaksOptions,
    flamegraph: Option<FlamegraphOutput>,
    mut out: W,
) -> anyhow::Result<LeaksOutcome> {
    let json = options.json;
    let stack_depth = options.stack_depth;
    let finish = |report: &LeakReport| -> anyhow::Result<LeaksOutcome> {
        if let Some(flamegraph) = &flamegraph {
            flamegraph.write(report)?;
        }
        Ok(LeaksOutcome {
            leaks_found: !report.is_empty(),
        })
    };
    if options.once {
        preflight::check_privileges()?;
        let mut monitor = Monitor::new(options)?;
        let read = read_host(HostRequest {
            holders: true,
            ..monitor.host_request(&[TcpState::CloseWait])
        });
        monitor.apply_host(&read, true);
        // Ages are unknown without history: everything in CLOSE_WAIT now is listed.
        let report = monitor.report(Duration::ZERO);
        if let Err(error) = write_report(&mut out, &report, json, stack_depth, false) {
            watch::reader_gone(error)?;
        }
        return finish(&report);
    }

    let probe = Probe::load(&ProbeOptions {
        track_closed_held: true,
        verdicts_only: true,
        ..options.probe.clone()
    })?;
    // SAFETY: the probe owns the ring buffer's fd and keeps it open and
    // unchanged for as long as the AsyncFd holds the probe.
    let mut probe = unsafe { AsyncFd::register(probe)? };
    let mut signals = StopSignals::new()?;
    let min_age = options.min_age;
    let duration = options.duration;
    let interval = options.interval;
    let live_terminal = duration.is_none() && !json && std::io::stdout().is_terminal();
    let mut monitor = Monitor::new(options)?;

    let read = read_host(leaks_request(
        &mut monitor,
        probe.get_ref(),
        &[TcpState::CloseWait],
    ));
    monitor.drain_settled(probe.get_mut());
    monitor.apply_host(&read, true);
    eprintln!(
        "tcptrace: watching for TCP socket leaks (CLOSE_WAIT or closed but held for >= {}); Ctrl-C to stop",
        humantime::format_duration(min_age)
    );
    for notice in &probe.get_ref().notices {
        eprintln!("{notice}");
    }

    let schedule = Schedule {
        host_every: RECONCILE_INTERVAL,
        report_every: duration
            .is_none()
            .then_some(interval.unwrap_or(if live_terminal {
                REPORT_INTERVAL
            } else {
                APPEND_INTERVAL
            })),
        duration,
    };
    let mut leaks = LeaksLoop {
        monitor: &mut monitor,
        min_age,
        out: &mut out,
        json,
        stack_depth,
        live_terminal,
        reconciles: 0,
        pruning: false,
        unseen_closes_at_prune: None,
        gone: None,
    };
    drain_loop::run(&mut probe, &mut signals, schedule, &mut leaks).await?;
    if let Some(outcome) = leaks.gone {
        // Nobody reads stdout any more; the file still gets its graph.
        if let Some(flamegraph) = &flamegraph {
            note_counters(&mut monitor, probe.get_ref());
            flamegraph.write(&monitor.report(min_age))?;
        }
        return Ok(outcome);
    }

    let read = read_host(HostRequest {
        holders: true,
        ..leaks_request(&mut monitor, probe.get_ref(), &[TcpState::CloseWait])
    });
    monitor.drain_settled(probe.get_mut());
    monitor.apply_host(&read, false);
    monitor.wait_for_stacks(probe.get_mut());
    let counters = probe.get_ref().counters()?;
    monitor.note_counters(&probe.get_ref().stack_moments, &counters);
    monitor.note_programs(probe.get_ref());
    let report = monitor.report(min_age);
    if let Err(error) = write_report(&mut out, &report, json, stack_depth, false) {
        watch::reader_gone(error)?;
    }
    finish(&report)
}
