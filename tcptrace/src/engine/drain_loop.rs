//! The event loop every tracing command runs: drain the ring buffer when the
//! probe wakes us and on a steady tick, read the host off the drain thread
//! on another tick, and stop on SIGINT, SIGTERM or `--duration`. A command
//! says only what differs: where the records go, what it reads from the
//! host and what it does with the read.

use std::{ops::ControlFlow, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep},
};

use crate::{
    engine::monitor::all_drops,
    host::reader::{HostRead, HostReader, HostRequest},
    probe::loader::Probe,
};

/// How often the ring buffer is drained when the probe does not wake us: it
/// wakes the reader only when a backlog builds up, to spare an interrupt per event.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// A host read may take up to this share of the time: on a churning host
/// the kernel's table holds hundreds of thousands of TIME_WAIT sockets, and
/// walking it every second would take more CPU than the tracing itself.
const HOST_READ_SHARE: u32 = 50;
/// However long a read takes, the host is read at least this often.
pub(crate) const HOST_READ_LONGEST_PAUSE: Duration = Duration::from_secs(60);

/// When the next host read is due after one that began at the last and
/// took `took`: the command's own interval, or longer so that reading stays
/// under 1/HOST_READ_SHARE of the time (never while events are being lost:
/// only a read of the table makes them good). Wall time, not CPU time: a read in
/// another namespace runs on a thread of its own, and on a loaded host the
/// longer figure errs on the side of the host.
pub(crate) fn host_read_pause(every: Duration, took: Duration) -> Duration {
    every.max((took * HOST_READ_SHARE).min(HOST_READ_LONGEST_PAUSE))
}

/// What one command does in the loop.
pub trait Refresh {
    /// Hands what the probe wrote to the command.
    fn drain(&mut self, probe: &mut Probe);

    /// What to read from the host at this tick.
    fn host_request(&mut self, probe: &Probe) -> HostRequest;

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
    // The caller has just read the host.
    let host_due = sleep(schedule.host_every);
    tokio::pin!(host_due);
    let mut host_started = Instant::now();
    let mut told_paced = false;
    let mut dropped = 0;
    let mut dropped_before = 0;
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
            _ = &mut host_due, if !host.is_busy() => {
                host_started = Instant::now();
                dropped = probe.get_ref().counters().map_or(dropped, |c| all_drops(&c));
                dropped_before = dropped;
                host.start(command.host_request(probe.get_ref()));
                ControlFlow::Continue(())
            }
            Some(read) = host.finished() => {
                let took = host_started.elapsed();
                // Lost events are made good only by the next read: no
                // spacing while any are being lost.
                let dropped = probe.get_ref().counters().map_or(dropped, |c| all_drops(&c));
                let pause = if dropped > dropped_before {
                    schedule.host_every
                } else {
                    host_read_pause(schedule.host_every, took)
                };
                dropped_before = dropped;
                if pause >= schedule.host_every * 3 / 2 && !told_paced {
                    told_paced = true;
                    eprintln!(
                        "tcptrace: reading the kernel's table and /proc took {} ms; read every {:.1}s rather than every {}s, to keep reading under 1/{HOST_READ_SHARE} of the time (adjusted at each read)",
                        took.as_millis(),
                        pause.as_secs_f64(),
                        schedule.host_every.as_secs_f64(),
                    );
                }
                host_due.as_mut().reset(host_started + pause);
                command.host_read(probe.get_mut(), read)?
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_read_keeps_the_commands_interval() {
        let every = Duration::from_secs(1);
        assert_eq!(host_read_pause(every, Duration::from_millis(5)), every);
        assert_eq!(host_read_pause(every, Duration::from_millis(20)), every);
    }

    #[test]
    fn a_slow_read_spaces_the_next_to_stay_within_its_share() {
        let every = Duration::from_secs(1);
        assert_eq!(
            host_read_pause(every, Duration::from_millis(70)),
            Duration::from_millis(3500)
        );
        assert_eq!(
            host_read_pause(every, Duration::from_secs(5)),
            HOST_READ_LONGEST_PAUSE
        );
    }
}
