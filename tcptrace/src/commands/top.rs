//! `tcptrace top`: the per-process table, refreshed in place on a terminal,
//! appended otherwise, or one JSON snapshot per line.

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    time::sleep,
};

use crate::{
    engine::agent,
    engine::monitor::LeaksOptions,
    host::reader::HostReader,
    model::top_snapshot::TopSnapshot,
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

pub async fn run<W: Write>(options: TopOptions, mut out: W) -> anyhow::Result<()> {
    let (mut probe, mut agent) = agent::start(&options.leaks)?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
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

    let (mut drain_tick, mut refresh_tick) = agent::ticks(options.interval).await;
    let mut host = HostReader::default();
    let deadline = sleep(options.duration.unwrap_or(Duration::MAX));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            guard = probe.readable_mut() => {
                let mut guard = guard?;
                agent.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = drain_tick.tick() => agent.drain(probe.get_mut()),
            _ = refresh_tick.tick(), if !host.is_busy() => {
                host.start(agent.host_request());
            }
            Some(read) = host.finished() => {
                let (mut snapshot, _) = agent.refresh_with(probe.get_mut(), read, false);
                select(&mut snapshot, &options.filter, options.sort);
                if let Err(error) = write_snapshot(&mut out, &snapshot, &options, live_terminal) {
                    watch::reader_gone(error)?;
                    return Ok(());
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = &mut deadline, if options.duration.is_some() => break,
        }
    }
    let (mut snapshot, _) = agent.refresh(probe.get_mut(), false);
    select(&mut snapshot, &options.filter, options.sort);
    if let Err(error) = write_snapshot(&mut out, &snapshot, &options, false) {
        watch::reader_gone(error)?;
    }
    Ok(())
}
