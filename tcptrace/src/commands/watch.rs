//! `tcptrace watch`: stream every TCP state transition until stopped.

use std::{
    fmt,
    io::{self, Write},
    ops::ControlFlow,
    time::Duration,
};

use tokio::io::unix::AsyncFd;

use crate::{
    engine::drain_loop::{self, Refresh, Schedule, StopSignals},
    host::clock::WallClock,
    host::reader::{HostRead, HostRequest, states_with_files},
    model::filter::Filter,
    model::tracker::SocketTracker,
    model::transition::Record,
    probe::loader::{KernelCounters, Probe, ProbeOptions},
    probe::records::decode,
    view::watch::{self, Format, Lines, WriteFailed},
};

/// How often the tracker's sockets are checked against the kernel's table:
/// an entry whose CLOSE was lost (ring full) is forgotten then, not kept
/// for the life of the process.
const TRACKER_RECONCILE_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub probe: ProbeOptions,
    pub filter: Filter,
    pub format: Format,
    pub duration: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSummary {
    /// Records read from the ring buffer, decodable or not.
    pub delivered: u64,
    pub shown: u64,
    pub decode_errors: u64,
    pub kernel: KernelCounters,
    /// `None` when the kernel would not say.
    pub recursion_misses: Option<u64>,
    /// The program's run count and total run time: counted by the kernel
    /// only while bpf_stats is enabled (0 otherwise).
    pub probe_runs: u64,
    pub probe_run_ns: u64,
    /// Accepted sockets got their owner at accept() (the fexit hook).
    pub accept_hook: bool,
}

impl fmt::Display for WatchSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcptrace: summary events={} shown={} drops={} (ring_full={} read_failed={}) \
             decode_errors={} failed_inserts={} recursion_misses={} probe_runs={} probe_run_ns={} \
             accepted_owner={}",
            self.delivered,
            self.shown,
            self.kernel.dropped(),
            self.kernel.ring_reserve_failed,
            self.kernel.socket_read_failed,
            self.decode_errors,
            self.kernel.owner_insert_failed,
            self.recursion_misses
                .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            self.probe_runs,
            self.probe_run_ns,
            if self.accept_hook {
                "accept"
            } else {
                "listener"
            },
        )
    }
}

/// Output is gathered here and handed to the writer in pieces of about
/// this size, and at every flush: one write per drain.
const OUTPUT_CHUNK: usize = 1 << 16;

/// Turns ring-buffer records into output lines.
pub(crate) struct Pipeline<W: Write> {
    tracker: SocketTracker,
    filter: Filter,
    format: Format,
    clock: WallClock,
    lines: Lines,
    /// Lines not yet handed to `out`.
    pending: Vec<u8>,
    out: W,
    summary: WatchSummary,
    /// Set when our output cannot be written any more: the reader went
    /// away (`| head`, stop quietly) or a write failed (`write_error`).
    output_closed: bool,
    write_error: Option<WriteFailed>,
}

impl<W: Write> Pipeline<W> {
    pub(crate) fn new(filter: Filter, format: Format, out: W) -> Self {
        Self {
            tracker: SocketTracker::new(),
            filter,
            format,
            clock: WallClock::new(),
            lines: Lines::default(),
            pending: Vec::with_capacity(OUTPUT_CHUNK + 1024),
            out,
            summary: WatchSummary::default(),
            output_closed: false,
            write_error: None,
        }
    }

    pub(crate) fn handle(&mut self, bytes: &[u8]) {
        self.summary.delivered += 1;
        let transition = match decode(bytes) {
            Ok(Record::Transition(transition)) => transition,
            // Only leak mode asks the probe for these.
            Ok(Record::Destroyed { .. } | Record::Stack(_)) => return,
            Err(_) => {
                self.summary.decode_errors += 1;
                return;
            }
        };
        // Track even what is not shown: durations and listener ownership
        // need every transition of a socket.
        let tracked = self.tracker.observe(transition);
        if self.output_closed || !self.filter.matches(&tracked) {
            return;
        }
        let time = self.clock.wall_time(tracked.transition.timestamp_ns);
        self.summary.shown += 1;
        match self.format {
            Format::Text => self.lines.text(&mut self.pending, &tracked, time),
            Format::Json => self.lines.json(&mut self.pending, &tracked, time),
        }
        if self.pending.len() >= OUTPUT_CHUNK {
            self.write_pending();
        }
    }

    fn write_line(&mut self, line: &str) {
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
    }

    fn write_pending(&mut self) {
        if !self.output_closed
            && let Err(error) = self.out.write_all(&self.pending)
        {
            self.note_write_error(error);
        }
        self.pending.clear();
    }

    pub(crate) fn flush(&mut self) {
        self.write_pending();
        if !self.output_closed
            && let Err(error) = self.out.flush()
        {
            self.note_write_error(error);
        }
    }

    fn note_write_error(&mut self, error: io::Error) {
        if let Err(failed) = watch::reader_gone(error) {
            self.write_error.get_or_insert(failed);
        }
        self.output_closed = true;
    }
}

/// The loop's part that is watch's: records become lines, and the
/// tracker is checked against the kernel's table now and then.
impl<W: Write> Refresh for Pipeline<W> {
    fn drain(&mut self, probe: &mut Probe) {
        probe.drain(|bytes| self.handle(bytes));
    }

    fn host_request(&mut self, _probe: &Probe) -> HostRequest {
        HostRequest {
            states: states_with_files(),
            ..HostRequest::default()
        }
    }

    fn host_read(&mut self, probe: &mut Probe, read: HostRead) -> anyhow::Result<ControlFlow<()>> {
        self.drain(probe);
        if let Some(listed) = read.table.listed_cookies() {
            self.tracker
                .reconcile(&|cookie| listed.contains(&cookie), read.started_ns);
        }
        Ok(ControlFlow::Continue(()))
    }

    fn woke(&mut self) -> ControlFlow<()> {
        self.flush();
        if self.output_closed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

pub async fn run<W: Write>(options: WatchOptions, out: W) -> anyhow::Result<WatchSummary> {
    let probe = Probe::load(&options.probe)?;
    // SAFETY: the probe owns the ring buffer's fd and keeps it open and
    // unchanged for as long as the AsyncFd holds the probe.
    let mut probe = unsafe { AsyncFd::register(probe)? };
    let mut signals = StopSignals::new()?;
    let mut pipeline = Pipeline::new(options.filter, options.format, out);
    eprintln!("tcptrace: watching TCP state transitions; Ctrl-C to stop");
    for notice in &probe.get_ref().notices {
        eprintln!("{notice}");
    }
    pipeline.summary.accept_hook = probe.get_ref().accept_hook;
    if options.format == Format::Text {
        pipeline.write_line(watch::TEXT_HEADER);
        pipeline.flush();
    }

    let schedule = Schedule {
        host_every: TRACKER_RECONCILE_INTERVAL,
        report_every: None,
        duration: options.duration,
    };
    drain_loop::run(&mut probe, &mut signals, schedule, &mut pipeline).await?;
    // What the probe wrote before we stopped is still owed to the user.
    probe.get_mut().drain(|bytes| pipeline.handle(bytes));
    pipeline.flush();
    if let Some(failed) = pipeline.write_error {
        return Err(failed.into());
    }

    let probe = probe.get_ref();
    pipeline.summary.kernel = probe.counters()?;
    let stats = probe.program_stats().ok();
    pipeline.summary.recursion_misses = stats.map(|s| s.recursion_misses);
    pipeline.summary.probe_runs = stats.map_or(0, |s| s.run_count);
    pipeline.summary.probe_run_ns = stats.map_or(0, |s| s.run_time.as_nanos() as u64);
    Ok(pipeline.summary)
}

#[cfg(test)]
mod tests {
    use tcptrace_common::{TcpState, TransitionRecord};

    use super::*;
    use crate::probe::records::tests::{record_bytes, sample_record};

    fn pipeline(filter: Filter) -> Pipeline<Vec<u8>> {
        Pipeline::new(filter, Format::Json, Vec::new())
    }

    #[test]
    fn counts_decode_errors_and_keeps_going() {
        let mut p = pipeline(Filter::default());
        let good = record_bytes(&sample_record());
        p.handle(&good[..10]);
        p.handle(&good);
        let mut bad_state: TransitionRecord = sample_record();
        bad_state.old_state = 42;
        p.handle(&record_bytes(&bad_state));
        assert_eq!(p.summary.delivered, 3);
        assert_eq!(p.summary.decode_errors, 2);
        assert_eq!(p.summary.shown, 1);
        p.flush();
        let text = String::from_utf8(p.out).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("\"new_state\":\"CLOSE_WAIT\""));
    }

    #[test]
    fn filtered_events_are_tracked_but_not_shown() {
        let mut p = pipeline(Filter {
            states: vec![TcpState::CloseWait],
            ..Filter::default()
        });
        let mut record = sample_record();
        record.old_state = TcpState::SynRecv as u8;
        record.new_state = TcpState::Established as u8;
        p.handle(&record_bytes(&record));
        record.old_state = TcpState::Established as u8;
        record.new_state = TcpState::CloseWait as u8;
        record.timestamp_ns += 2_000_000;
        p.handle(&record_bytes(&record));
        assert_eq!(p.summary.shown, 1);
        p.flush();
        let line: serde_json::Value =
            serde_json::from_slice(p.out.split(|&b| b == b'\n').next().unwrap()).unwrap();
        assert_eq!(line["ms_in_old_state"], 2.0);
    }

    #[test]
    fn summary_line_is_key_value() {
        let summary = WatchSummary {
            delivered: 10,
            shown: 7,
            decode_errors: 1,
            kernel: KernelCounters {
                ring_reserve_failed: 2,
                socket_read_failed: 1,
                owner_insert_failed: 4,
                ..KernelCounters::default()
            },
            recursion_misses: None,
            probe_runs: 5,
            probe_run_ns: 600,
            accept_hook: false,
        };
        assert_eq!(
            summary.to_string(),
            "tcptrace: summary events=10 shown=7 drops=3 (ring_full=2 read_failed=1) \
             decode_errors=1 failed_inserts=4 recursion_misses=unknown probe_runs=5 probe_run_ns=600 \
             accepted_owner=listener"
        );
    }
}
