//! `tcptrace serve`: the long-running agent. `/metrics` in OpenMetrics text
//! for Prometheus, `/leaks` as the leak report's JSON, `/` a page for a
//! person with the flame graph of leaking code paths at `/flamegraph.svg`,
//! and each new leak as one JSON line on stderr for log pipelines.

use std::{collections::HashSet, net::SocketAddr, ops::ControlFlow, time::Duration};

use bytes::Bytes;
use serde::Serialize;

use crate::{
    engine::agent::{self, HostAgent},
    engine::drain_loop::{self, HOST_READ_LONGEST_PAUSE, Refresh, Schedule, StopSignals},
    engine::http::{self, Bodies, Published},
    engine::monitor::LeaksOptions,
    host::clock::WallClock,
    host::reader::{HostRead, HostRequest, read_host, release_free_memory},
    model::leak_report::{LeakPage, LeakReport, OwnListener, PageLimits},
    probe::loader::Probe,
    view::flamegraph::{self, folded_lines},
    view::metrics::{MetricsLimits, MetricsState},
    view::page::{self, PageInputs},
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

/// The flame graph last drawn, and what it was drawn from: most refreshes
/// change no code path's count, and drawing costs more than comparing.
struct FlamegraphCache {
    drawn_from: Option<(Vec<String>, usize)>,
    svg: Result<Bytes, String>,
}

impl FlamegraphCache {
    fn new() -> Self {
        Self {
            drawn_from: None,
            svg: Err("not drawn yet".to_owned()),
        }
    }

    fn svg(&mut self, leaks: &LeakReport) -> Result<Bytes, String> {
        let key = (folded_lines(leaks), leaks.leaking_sockets);
        if self.drawn_from.as_ref() != Some(&key) {
            self.svg = flamegraph::render_svg(leaks)
                .map(Bytes::from)
                .map_err(|error| error.to_string());
            self.drawn_from = Some(key);
        }
        self.svg.clone()
    }
}

/// The loop's part that is serve's: each host read is published.
struct ServeLoop<'a> {
    agent: &'a mut HostAgent,
    metrics: MetricsState,
    published: Published,
    announced: HashSet<u64>,
    /// For the page's header.
    host: String,
    interval: Duration,
    flamegraph: FlamegraphCache,
}

impl ServeLoop<'_> {
    /// Refreshes, and publishes /metrics, /leaks, the page and its flame
    /// graph.
    fn publish(&mut self, probe: &mut Probe, read: HostRead, startup: bool) -> LeakReport {
        let as_of = WallClock::new().wall_time(read.started_ns);
        let (snapshot, leaks) = self.agent.refresh_with(probe, read, startup);
        self.metrics.update_transitions(&snapshot);
        let mut totals = self.agent.totals();
        totals.kernel_maps = probe.map_occupancy();
        totals.http_accept_errors = self.published.accept_errors();
        let text = self.metrics.render(&snapshot, &leaks, &totals);
        let leaks_json = serde_json::to_vec(&LeakPage {
            as_of: Some(humantime::format_rfc3339_millis(as_of).to_string()),
            ..LeakPage::new(&leaks, PageLimits::SERVE)
        })
        .unwrap_or_default();
        let flamegraph = self.flamegraph.svg(&leaks);
        let page = page::render(&PageInputs {
            host: &self.host,
            updated: as_of,
            refresh: self.interval,
            report: &leaks,
            findings: &snapshot.findings,
            flamegraph: flamegraph.as_ref().map(|_| ()).map_err(Clone::clone),
        });
        self.published.publish(Bodies {
            metrics: Bytes::from(text),
            leaks: Bytes::from(leaks_json),
            page: Bytes::from(page),
            flamegraph,
            as_of: Some(as_of),
            stale_after: stale_after(self.interval),
        });
        release_free_memory();
        leaks
    }
}

/// Past this age a publication is late: reads are spaced out on a busy
/// host, up to HOST_READ_LONGEST_PAUSE apart, and each takes its time.
fn stale_after(interval: Duration) -> Duration {
    (interval * 3).max(HOST_READ_LONGEST_PAUSE + Duration::from_secs(30))
}

/// The host's name as `hostname` prints it, for the page's header.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "(hostname unreadable)".to_owned())
}

impl Refresh for ServeLoop<'_> {
    fn drain(&mut self, probe: &mut Probe) {
        self.agent.drain(probe);
    }

    fn host_request(&mut self, _probe: &Probe) -> HostRequest {
        self.agent.host_request()
    }

    fn host_read(&mut self, probe: &mut Probe, read: HostRead) -> anyhow::Result<ControlFlow<()>> {
        let leaks = self.publish(probe, read, false);
        log_new_leaks(&leaks, &mut self.announced);
        Ok(ControlFlow::Continue(()))
    }
}

/// This process's network namespace, whose sockets its listener's are.
fn own_netns_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

pub async fn run(mut options: ServeOptions) -> anyhow::Result<()> {
    if !options.listen.ip().is_loopback() {
        eprintln!(
            "tcptrace: serving on {}, reachable from other hosts: /leaks shows process names and peer addresses",
            options.listen
        );
    }
    // Bind first: a taken port fails before the probe is loaded.
    let published = Published::default();
    let listen = http::start(options.listen, published.clone())?;
    options.leaks.filter.own_listener = Some(OwnListener {
        addr: listen,
        netns_inode: own_netns_inode(),
    });

    let (mut probe, mut agent) = agent::start(&options.leaks)?;
    let mut signals = StopSignals::new()?;

    for notice in &probe.get_ref().notices {
        eprintln!("{notice}");
    }
    let mut serve = ServeLoop {
        agent: &mut agent,
        metrics: MetricsState::new(options.limits),
        published,
        announced: HashSet::new(),
        host: host_name(),
        interval: options.interval,
        flamegraph: FlamegraphCache::new(),
    };
    let first = read_host(HostRequest {
        holders: true,
        ..serve.agent.host_request()
    });
    let leaks = serve.publish(probe.get_mut(), first, true);
    // The ready line first: leaks found at start follow it, as later ones do.
    eprintln!(
        "tcptrace: serving http://{listen}/metrics and http://{listen}/leaks, a page at http://{listen}/ (refresh every {}); SIGTERM or Ctrl-C to stop",
        humantime::format_duration(options.interval)
    );
    log_new_leaks(&leaks, &mut serve.announced);

    let schedule = Schedule {
        host_every: options.interval,
        report_every: None,
        duration: None,
    };
    drain_loop::run(&mut probe, &mut signals, schedule, &mut serve).await?;
    eprintln!("tcptrace: stopped");
    Ok(())
}
