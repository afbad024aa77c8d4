//! The event loop every tracing command runs: drain the ring buffer when the
//! probe wakes us and on a steady tick, read the host off the drain thread
//! on another tick, and stop on SIGINT, SIGTERM or `--duration`. A command
//! says only what differs: where the records go, what it reads from the
//! host and what it does with the read.

use std::{ops::ControlFlow, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};

use crate::{
    host::reader::{HostRead, HostReader, HostRequest},
    probe::loader::Probe,
};

/// How often the ring buffer is drained when the probe does not wake us: it
/// wakes the reader only when a backlog builds up, to spare an interrupt per event.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// What one command does in the loop.
pub trait Refresh {
    /// Hands what the probe wrote to the command.
    fn drain(&mut self, probe: &mut Probe);

    /// What to read from the host at this tick.
    fn host_request(&mut self) -> HostRequest;

    /// Joins a host read begun at a tick with the events drained meanwhile.
    fn host_read(&mut self, probe: &mut Probe, read: HostRead) -> anyhow::Result<ControlFlow<()>>;

    /// The report tick, for a command that asks for one.
    fn report(&mut self, _probe: &mut Probe) -> anyhow::Result<ControlFlow<()>> {
        Ok(ControlFlow::Continue(()))
    }

    /// After every wake-up, whatever woke the loop.
    fn woke(&mut self) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// SIGINT and SIGTERM, taken over from the default (which kills) as soon as
/// a command has its probe, so a stop during start-up is still graceful.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }
}

/// When the loop reads the host, reports and stops.
pub struct Schedule {
    /// How often the host is read; the first read is the caller's, before
    /// the loop.
    pub host_every: Duration,
    /// How often `Refresh::report` runs; never when `None`.
    pub report_every: Option<Duration>,
    /// Stop after this long; run until a signal when `None`.
    pub duration: Option<Duration>,
}

/// Runs until a signal, the duration, or the command says stop.
pub async fn run(
    probe: &mut AsyncFd<Probe>,
    signals: &mut StopSignals,
    schedule: Schedule,
    command: &mut impl Refresh,
) -> anyhow::Result<()> {
    let mut drain_tick = interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let report_every = schedule.report_every;
    let mut report_tick = interval(report_every.unwrap_or(schedule.host_every));
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    report_tick.tick().await;
    // The first, immediate tick is taken: the caller has just read the host.
    let mut host_tick = interval(schedule.host_every);
    host_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    host_tick.tick().await;
    let mut host = HostReader::default();
    let deadline = sleep(schedule.duration.unwrap_or(Duration::MAX));
    tokio::pin!(deadline);
    loop {
        let flow = tokio::select! {
            guard = probe.readable_mut() => {
                let mut guard = guard?;
                command.drain(guard.get_inner_mut());
                guard.clear_ready();
                ControlFlow::Continue(())
            }
            _ = drain_tick.tick() => {
                command.drain(probe.get_mut());
                ControlFlow::Continue(())
            }
            _ = host_tick.tick(), if !host.is_busy() => {
                host.start(command.host_request());
                ControlFlow::Continue(())
            }
            Some(read) = host.finished() => command.host_read(probe.get_mut(), read)?,
            _ = report_tick.tick(), if report_every.is_some() => command.report(probe.get_mut())?,
            _ = signals.interrupt.recv() => break,
            _ = signals.terminate.recv() => break,
            _ = &mut deadline, if schedule.duration.is_some() => break,
        };
        if flow.is_break() || command.woke().is_break() {
            break;
        }
    }
    Ok(())
}
