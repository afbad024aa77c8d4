//! `tcptrace top`: the per-process table, refreshed in place on a terminal,
//! appended otherwise, or one JSON snapshot per line.

use std::{
    io::{IsTerminal, Write},
    ops::ControlFlow,
    time::Duration,
};

use crate::{
    engine::agent::{self, HostAgent},
    engine::drain_loop::{self, Refresh, Schedule, StopSignals},
    engine::monitor::LeaksOptions,
    host::reader::{HostRead, HostRequest},
    model::top_snapshot::TopSnapshot,
    probe::loader::Probe,
    view::top::{RowFilter, SortKey, render_text, select},
    view::watch,
};

#[derive(Clone, Debug)]
pub struct TopOptions {
    pub leaks: LeaksOptions,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub json: bool,
    pub sort: SortKey,
    pub filter: RowFilter,
    /// Rows in the text view (JSON has them all).
    pub rows: usize,
}

fn write_snapshot<W: Write>(
    out: &mut W,
    snapshot: &TopSnapshot,
    options: &TopOptions,
    clear: bool,
) -> std::io::Result<()> {
    if options.json {
        // Strings and numbers only: always serializes.
        writeln!(
            out,
            "{}",
            serde_json::to_string(snapshot).unwrap_or_default()
        )?;
    } else {
        if clear {
            // Home and clear: a refreshed view, no alternate screen to restore.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{}", render_text(snapshot, options.rows))?;
        if !clear {
            writeln!(out)?;
        }
    }
    out.flush()
}

/// The loop's part that is top's: each host read becomes a table.
struct TopLoop<'a, W: Write> {
    agent: &'a mut HostAgent,
    options: &'a TopOptions,
    out: &'a mut W,
    live_terminal: bool,
    /// The reader went away: no final table.
    reader_gone: bool,
}

impl<W: Write> Refresh for TopLoop<'_, W> {
    fn drain(&mut self, probe: &mut Probe) {
        self.agent.drain(probe);
    }

    fn host_request(&mut self, _probe: &Probe) -> HostRequest {
        self.agent.host_request()
    }

    fn host_read(&mut self, probe: &mut Probe, read: HostRead) -> anyhow::Result<ControlFlow<()>> {
        let (mut snapshot, _) = self.agent.refresh_with(probe, read, false);
        select(&mut snapshot, &self.options.filter, self.options.sort);
        if let Err(error) = write_snapshot(self.out, &snapshot, self.options, self.live_terminal) {
            watch::reader_gone(error)?;
            self.reader_gone = true;
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    }
}

pub async fn run<W: Write>(options: TopOptions, mut out: W) -> anyhow::Result<()> {
    let (mut probe, mut agent) = agent::start(&options.leaks)?;
    let mut signals = StopSignals::new()?;
    let live_terminal = !options.json && std::io::stdout().is_terminal();
    // The first refresh sets the baseline for rates and reconciles leaks.
    let _ = agent.refresh(probe.get_mut(), true);
    for notice in &probe.get_ref().notices {
        eprintln!("{notice}");
    }
    eprintln!(
        "tcptrace: per-process TCP activity every {}; Ctrl-C to stop",
        humantime::format_duration(options.interval)
    );

    let schedule = Schedule {
        host_every: options.interval,
        report_every: None,
        duration: options.duration,
    };
    let mut top = TopLoop {
        agent: &mut agent,
        options: &options,
        out: &mut out,
        live_terminal,
        reader_gone: false,
    };
    drain_loop::run(&mut probe, &mut signals, schedule, &mut top).await?;
    if top.reader_gone {
        return Ok(());
    }
    let (mut snapshot, _) = agent.refresh(probe.get_mut(), false);
    select(&mut snapshot, &options.filter, options.sort);
    if let Err(error) = write_snapshot(&mut out, &snapshot, &options, false) {
        watch::reader_gone(error)?;
    }
    Ok(())
}
