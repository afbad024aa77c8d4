//! `tcptrace leaks`: follow every transition, age CLOSE_WAIT and
//! closed-but-held sockets, reconcile with the kernel's table, and report the
//! leaks per holder process.

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use tcptrace_common::TcpState;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};

use crate::{
    engine::DRAIN_INTERVAL,
    engine::monitor::{LeaksOptions, Monitor, RECONCILE_INTERVAL, STACK_PRUNE_EVERY, all_drops},
    host::reader::{HostReader, HostRequest, read_host, release_free_memory, states_with_files},
    model::leak_report::{LeakReport, ProgramHealth},
    probe::loader::{Probe, ProbeOptions},
    probe::preflight,
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
        let mut monitor = Monitor::new(options)?;
        let read = read_host(HostRequest {
            holders: true,
            ..monitor.host_request(&[TcpState::CloseWait])
        });
        monitor.apply_host(&read, None, true);
        // Ages are unknown without history: everything in CLOSE_WAIT now is listed.
        let report = monitor.report(Duration::ZERO);
        if let Err(error) = write_report(&mut out, &report, json, false) {
            watch::reader_gone(error)?;
        }
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
    let mut monitor = Monitor::new(options)?;

    let read = read_host(monitor.host_request(&[TcpState::CloseWait]));
    monitor.drain(probe.get_mut());
    monitor.apply_host(&read, Some(probe.get_mut()), true);
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
    let mut host = HostReader::default();
    let mut reconciles = 0u64;
    let mut pruning = false;
    loop {
        tokio::select! {
            guard = probe.readable_mut() => {
                let mut guard = guard?;
                monitor.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain_tick.tick() => monitor.drain(probe.get_mut()),
            _ = reconcile_tick.tick(), if !host.is_busy() => {
                reconciles += 1;
                pruning = reconciles.is_multiple_of(STACK_PRUNE_EVERY);
                let states = if pruning { states_with_files() } else { vec![TcpState::CloseWait] };
                host.start(monitor.host_request(&states));
            }
            Some(read) = host.finished() => {
                monitor.drain(probe.get_mut());
                monitor.apply_host(&read, Some(probe.get_mut()), false);
                if pruning {
                    monitor.prune_stacks(&read.table, read.started_ns);
                }
                drop(read);
                release_free_memory();
            }
            _ = report_tick.tick(), if duration.is_none() => {
                monitor.drain(probe.get_mut());
                monitor.health.drops = probe.get_ref().counters().map(|c| all_drops(&c)).unwrap_or(0);
                let report = monitor.report(min_age);
                if let Err(error) = write_report(&mut out, &report, json, live_terminal) {
                    // The reader left: there is nobody to give a final report to.
                    watch::reader_gone(error)?;
                    return Ok(LeaksOutcome {
                        leaks_found: !report.is_empty(),
                    });
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = &mut deadline, if duration.is_some() => break,
        }
    }

    let read = read_host(HostRequest {
        holders: true,
        ..monitor.host_request(&[TcpState::CloseWait])
    });
    monitor.drain(probe.get_mut());
    monitor.apply_host(&read, Some(probe.get_mut()), false);
    monitor.wait_for_stacks(probe.get_mut());
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
    if let Err(error) = write_report(&mut out, &report, json, false) {
        watch::reader_gone(error)?;
    }
    Ok(LeaksOutcome {
        leaks_found: !report.is_empty(),
    })
}
