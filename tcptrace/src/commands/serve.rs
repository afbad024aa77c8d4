//! `tcptrace serve`: the long-running agent. `/metrics` in OpenMetrics text
//! for Prometheus, `/leaks` as the leak report's JSON, and each new leak as
//! one JSON line on stderr for log pipelines.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use bytes::Bytes;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    engine::agent::{self, HostAgent},
    engine::http::{self, Published},
    engine::monitor::LeaksOptions,
    host::reader::{HostRead, HostReader, HostRequest, read_host, release_free_memory},
    model::leak_report::{LeakPage, LeakReport, PageLimits},
    probe::loader::Probe,
    view::metrics::{MetricsLimits, MetricsState},
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub leaks: LeaksOptions,
    pub listen: SocketAddr,
    /// How often the kernel's table is read and the metrics recomputed.
    pub interval: Duration,
    pub limits: MetricsLimits,
}

/// One line on stderr per socket that became a leak.
#[derive(Serialize)]
struct LeakLogLine<'a> {
    event: &'static str,
    pid: Option<u32>,
    comm: Option<&'a str>,
    kind: &'static str,
    cookie: u64,
    local: &'a str,
    remote: &'a str,
    age_ms: u64,
    provenance: &'static str,
}

/// Logs leaks not logged before; forgets those that ended.
fn log_new_leaks(report: &LeakReport, announced: &mut HashSet<u64>) {
    let mut current = HashSet::new();
    for process in &report.processes {
        for socket in &process.sockets {
            current.insert(socket.cookie);
            if announced.contains(&socket.cookie) {
                continue;
            }
            let line = LeakLogLine {
                event: "tcp_socket_leak",
                pid: process.pid,
                comm: process.comm.as_deref(),
                kind: socket.kind,
                cookie: socket.cookie,
                local: &socket.local,
                remote: &socket.remote,
                age_ms: socket.age_ms,
                provenance: socket.provenance,
            };
            if let Ok(json) = serde_json::to_string(&line) {
                eprintln!("{json}");
            }
        }
    }
    *announced = current;
}

pub async fn run(options: ServeOptions) -> anyhow::Result<()> {
    if !options.listen.ip().is_loopback() {
        eprintln!(
            "tcptrace: serving on {}, reachable from other hosts: /leaks shows process names and peer addresses",
            options.listen
        );
    }
    // Bind first: a taken port fails before the probe is loaded.
    let published = Published::default();
    let listen = http::start(options.listen, published.clone())?;

    let (mut probe, mut agent) = agent::start(&options.leaks)?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;

    for notice in &probe.get_ref().notices {
        eprintln!("{notice}");
    }
    let mut metrics = MetricsState::new(options.limits);
    let mut announced = HashSet::new();
    let mut publish =
        |agent: &mut HostAgent, probe: &mut Probe, read: HostRead, startup: bool| -> LeakReport {
            let (snapshot, leaks) = agent.refresh_with(probe, read, startup);
            metrics.update_transitions(&snapshot);
            let mut totals = agent.totals();
            totals.kernel_maps = probe.map_occupancy();
            let text = metrics.render(&snapshot, &leaks, &totals);
            let leaks_json =
                serde_json::to_vec(&LeakPage::new(&leaks, PageLimits::SERVE)).unwrap_or_default();
            published.publish(Bytes::from(text), Bytes::from(leaks_json));
            release_free_memory();
            leaks
        };
    let first = read_host(HostRequest {
        holders: true,
        ..agent.host_request()
    });
    let leaks = publish(&mut agent, probe.get_mut(), first, true);
    // The ready line first: leaks found at start follow it, as later ones do.
    eprintln!(
        "tcptrace: serving http://{listen}/metrics and http://{listen}/leaks (refresh every {}); SIGTERM or Ctrl-C to stop",
        humantime::format_duration(options.interval)
    );
    log_new_leaks(&leaks, &mut announced);

    let (mut drain_tick, mut refresh_tick) = agent::ticks(options.interval).await;
    let mut host = HostReader::default();
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
                let leaks = publish(&mut agent, probe.get_mut(), read, false);
                log_new_leaks(&leaks, &mut announced);
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    eprintln!("tcptrace: stopped");
    Ok(())
}
