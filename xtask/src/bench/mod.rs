//! `cargo xtask bench`: what tracing costs the host, measured side by side
//! with the same load untraced, and written to docs/PERFORMANCE.md.
//!
//! The load generators (tcptrace-testpeer) are the ground truth: they count
//! connections, bytes and calls, and how many sockets the churn server leaked.
//! Configurations alternate round by round so drift hits all of them alike.
//! In-kernel cost comes from separate short runs with bpf_stats enabled,
//! never from the throughput rounds (the statistics cost time themselves).

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::Write,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    harness::{Proc, Tracer, fields, machine},
    step,
};

const CHURN_SECONDS: f64 = 4.0;
const BULK_SECONDS: f64 = 2.0;
const SYSCALL_SECONDS: f64 = 2.0;
/// Long enough for the three workloads and their start-up.
const TRACE_SECONDS: u64 = 11;
const STATS_SECONDS: f64 = 3.0;
/// The churn server keeps one socket in this many: the leaks to find.
const LEAK_EVERY: u64 = 500;
const CLIENT_THREADS: &str = "2";
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Untraced,
    Watch,
    Leaks(&'static str),
    /// The long-running agent: the probe of `leaks --stacks default` plus a
    /// full table read, attribution and diagnoses every refresh.
    Serve,
}

const CONFIGS: [Config; 6] = [
    Config::Untraced,
    Config::Watch,
    Config::Leaks("off"),
    Config::Leaks("default"),
    Config::Leaks("full"),
    Config::Serve,
];
/// `serve` refreshes this often in the benchmark: its default.
const SERVE_INTERVAL: &str = "5s";
/// Past one refresh after the load ends.
const SERVE_REPORT_DELAY_S: u64 = 6;

impl Config {
    fn name(self) -> String {
        match self {
            Self::Untraced => "untraced".into(),
            Self::Watch => "watch --json > /dev/null".into(),
            Self::Leaks(level) => format!("leaks --stacks {level}"),
            Self::Serve => format!("serve --interval {SERVE_INTERVAL}"),
        }
    }

    fn tracer_args(self, seconds: u64) -> Option<Vec<String>> {
        let duration = format!("{seconds}s");
        match self {
            Self::Untraced => None,
            Self::Watch => Some(vec!["watch".into(), "--json".into(), "-d".into(), duration]),
            Self::Leaks(level) => Some(vec![
                "leaks".into(),
                "--json".into(),
                "-d".into(),
                duration,
                "--min-age".into(),
                "1s".into(),
                "--stacks".into(),
                level.into(),
            ]),
            // Runs until SIGTERM; `duration` is not its business.
            Self::Serve => Some(vec![
                "serve".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--interval".into(),
                SERVE_INTERVAL.into(),
                "--min-age".into(),
                "1s".into(),
            ]),
        }
    }
}

/// One configuration, one round.
#[derive(Clone, Debug, Default)]
struct Round {
    churn_per_second: f64,
    leaked: u64,
    leaks_reported: Option<u64>,
    events: Option<u64>,
    drops: Option<u64>,
    agent_cpu: Option<Duration>,
    agent_peak_rss_kib: Option<u64>,
    bulk_bytes_per_second: f64,
    recvs_per_second: f64,
    syscalls_per_second: f64,
}

/// bpf_stats run of one configuration.
#[derive(Clone, Debug, Default)]
struct KernelCost {
    /// program -> (runs, run ns)
    programs: Vec<(String, u64, u64)>,
    delivered: u64,
    drops: u64,
}

/// Puts bpf_stats back as it was, however the benchmark ends.
struct BpfStatsGuard {
    before: String,
}

impl BpfStatsGuard {
    fn enable() -> Result<Self> {
        let before = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self { before })
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.before.trim());
    }
}

struct Binaries {
    tcptrace: PathBuf,
    peer: PathBuf,
}

/// Churn for `seconds` against a leaking server; returns (connections/s, leaked, server pid).
fn churn(bin: &Binaries, seconds: f64, until: impl FnOnce() -> Result<()>) -> Result<(f64, u64)> {
    let addr = "127.0.0.1:0";
    let mut server = Proc::spawn(
        &bin.peer,
        &[
            "churn-server",
            "--addr",
            addr,
            "--leak-every",
            &LEAK_EVERY.to_string(),
        ],
    )?;
    let port = server.expect("listening")?["port"].clone();
    let client = Proc::spawn(
        &bin.peer,
        &[
            "churn-client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--threads",
            CLIENT_THREADS,
            "--seconds",
            &seconds.to_string(),
        ],
    )?;
    let done = client.expect("done")?;
    let per_second: f64 = done["per_second"].parse()?;
    // The server keeps its leaks until the tracer has reported.
    until()?;
    server.close_stdin();
    let leaked: u64 = server.expect("served")?["leaked"].parse()?;
    Ok((per_second, leaked))
}

fn bulk(bin: &Binaries) -> Result<(f64, f64)> {
    let server = Proc::spawn(&bin.peer, &["bulk-server", "--addr", "127.0.0.1:0"])?;
    let port = server.expect("listening")?["port"].clone();
    let client = Proc::spawn(
        &bin.peer,
        &[
            "bulk-client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--seconds",
            &BULK_SECONDS.to_string(),
        ],
    )?;
    client.expect("done")?;
    let done = server.expect("done")?;
    Ok((
        done["bytes_per_second"].parse()?,
        done["recvs_per_second"].parse()?,
    ))
}

fn syscalls(bin: &Binaries) -> Result<f64> {
    let looper = Proc::spawn(
        &bin.peer,
        &["syscall-loop", "--seconds", &SYSCALL_SECONDS.to_string()],
    )?;
    Ok(looper.expect("done")?["calls_per_second"].parse()?)
}

fn summary_fields(stderr: &[String]) -> Result<HashMap<String, String>> {
    stderr
        .iter()
        .find(|line| line.starts_with("tcptrace: summary"))
        .map(|line| fields(line))
        .context("tcptrace watch printed no summary")
}

fn leak_report(stdout: &[String]) -> Result<serde_json::Value> {
    let last = stdout.last().context("tcptrace leaks printed no report")?;
    serde_json::from_str(last).context("the leak report is not JSON")
}

fn run_round(bin: &Binaries, config: Config) -> Result<Round> {
    let tracer = match config.tracer_args(TRACE_SECONDS) {
        Some(args) => Some(Tracer::start(
            &bin.tcptrace,
            &args,
            config != Config::Watch,
        )?),
        None => None,
    };
    let mut round = Round::default();
    let mut exit = None;
    let mut served_report = None;
    let (per_second, leaked) = churn(bin, CHURN_SECONDS, || {
        let (bytes, recvs) = bulk(bin)?;
        round.bulk_bytes_per_second = bytes;
        round.recvs_per_second = recvs;
        round.syscalls_per_second = syscalls(bin)?;
        if let Some(tracer) = tracer {
            if config == Config::Serve {
                // Past one refresh after the load, as a scrape would see it.
                thread::sleep(Duration::from_secs(SERVE_REPORT_DELAY_S));
                served_report = Some(tracer.leaks_over_http()?);
                tracer.terminate();
            }
            exit = Some(tracer.wait()?);
        }
        Ok(())
    })?;
    round.churn_per_second = per_second;
    round.leaked = leaked;
    if let Some(exit) = exit {
        round.agent_cpu = Some(exit.cpu);
        round.agent_peak_rss_kib = Some(exit.peak_rss_kib);
        match config {
            Config::Watch => {
                let summary = summary_fields(&exit.stderr)?;
                round.events = Some(summary["events"].parse()?);
                round.drops = Some(summary["drops"].parse()?);
            }
            Config::Leaks(_) => {
                let report = leak_report(&exit.stdout)?;
                round.events = report["health"]["events"].as_u64();
                round.drops = report["health"]["drops"].as_u64();
                // The churn server is the only leaker the benchmark makes.
                round.leaks_reported = report["leaking_sockets"].as_u64();
            }
            Config::Serve => {
                let report = served_report.context("serve's /leaks")?;
                round.events = report["health"]["events"].as_u64();
                round.drops = report["health"]["drops"].as_u64();
                round.leaks_reported = report["leaking_sockets"].as_u64();
            }
            Config::Untraced => {}
        }
    }
    Ok(round)
}

fn kernel_cost(bin: &Binaries, config: Config) -> Result<KernelCost> {
    let seconds = STATS_SECONDS as u64 + 3;
    let args = config.tracer_args(seconds).expect("a traced configuration");
    let tracer = Tracer::start(&bin.tcptrace, &args, config != Config::Watch)?;
    let mut exit = None;
    churn(bin, STATS_SECONDS, || {
        exit = Some(tracer.wait()?);
        Ok(())
    })?;
    let exit = exit.expect("waited");
    let mut cost = KernelCost::default();
    match config {
        Config::Watch => {
            let summary = summary_fields(&exit.stderr)?;
            cost.programs.push((
                "inet_sock_set_state".into(),
                summary["probe_runs"].parse()?,
                summary["probe_run_ns"].parse()?,
            ));
            cost.delivered = summary["events"].parse()?;
            cost.drops = summary["drops"].parse()?;
        }
        _ => {
            let report = leak_report(&exit.stdout)?;
            for program in report["health"]["programs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                cost.programs.push((
                    program["program"].as_str().unwrap_or("?").to_owned(),
                    program["runs"].as_u64().unwrap_or(0),
                    program["run_ns"].as_u64().unwrap_or(0),
                ));
            }
            cost.delivered = report["health"]["events"].as_u64().unwrap_or(0);
            cost.drops = report["health"]["drops"].as_u64().unwrap_or(0);
        }
    }
    Ok(cost)
}

struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(values: impl Iterator<Item = f64>) -> Option<Spread> {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: values[0],
        max: values[n - 1],
    })
}

fn show(s: Option<Spread>, scale: f64, decimals: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.d$} ({:.d$}–{:.d$})",
            s.median / scale,
            s.min / scale,
            s.max / scale,
            d = decimals
        ),
        None => "–".into(),
    }
}

fn criterion_events_per_second(root: &Path) -> Result<f64> {
    crate::cargo(&[
        "bench",
        "--package",
        "tcptrace",
        "--bench",
        "pipeline",
        "--",
        "--noplot",
    ])?;
    let dir = root.join("target/criterion/pipeline/decode_and_track/new");
    let read = |name: &str| -> Result<serde_json::Value> {
        let path = dir.join(name);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let ns_per_iteration = read("estimates.json")?["mean"]["point_estimate"]
        .as_f64()
        .context("criterion estimate without a mean")?;
    let events_per_iteration = read("benchmark.json")?["throughput"]["Elements"]
        .as_f64()
        .context("criterion benchmark without an element throughput")?;
    Ok(events_per_iteration / (ns_per_iteration * 1e-9))
}

pub fn run(root: &Path, rounds: u32) -> Result<()> {
    let started = Instant::now();
    let bin = Binaries {
        tcptrace: root.join("target/release/tcptrace"),
        peer: root.join("target/release/tcptrace-testpeer"),
    };
    step("bench: warm-up round, untraced and with watch");
    run_round(&bin, Config::Untraced)?;
    run_round(&bin, Config::Watch)?;

    let mut results: HashMap<String, Vec<Round>> = HashMap::new();
    for round in 0..rounds {
        // Rotate the order so no configuration always runs first.
        for i in 0..CONFIGS.len() {
            let config = CONFIGS[(i + round as usize) % CONFIGS.len()];
            step(&format!(
                "bench: round {}/{rounds}: {}",
                round + 1,
                config.name()
            ));
            let result = run_round(&bin, config)?;
            results.entry(config.name()).or_default().push(result);
        }
    }

    step("bench: in-kernel cost, short runs with bpf_stats enabled");
    let mut kernel = Vec::new();
    {
        let _stats = BpfStatsGuard::enable()?;
        // serve attaches what `leaks --stacks default` does.
        for config in CONFIGS[1..]
            .iter()
            .filter(|c| matches!(c, Config::Watch | Config::Leaks(_)))
        {
            kernel.push((config.name(), kernel_cost(&bin, *config)?));
        }
    }

    step("bench: criterion, decode and track on one core");
    let pipeline_rate = criterion_events_per_second(root)?;

    let doc = render(rounds, &results, &kernel, pipeline_rate, started.elapsed());
    let path = root.join("docs/PERFORMANCE.md");
    fs::create_dir_all(root.join("docs"))?;
    fs::write(&path, &doc)?;
    std::io::stdout().write_all(doc.as_bytes())?;
    step(&format!(
        "bench: wrote {} in {:.0?}",
        path.display(),
        started.elapsed()
    ));
    Ok(())
}

fn median_of(results: &HashMap<String, Vec<Round>>, config: Config, f: fn(&Round) -> f64) -> f64 {
    spread(results[&config.name()].iter().map(f)).map_or(f64::NAN, |s| s.median)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// The targets next to what this run measured.
fn render_targets(
    out: &mut String,
    results: &HashMap<String, Vec<Round>>,
    kernel: &[(String, KernelCost)],
    pipeline_rate: f64,
    base_churn: f64,
    base_bulk: f64,
    base_syscalls: f64,
) {
    let default = Config::Leaks("default");
    let churn = |c| median_of(results, c, |r| r.churn_per_second) / base_churn;
    let leaks_ratio = churn(default);
    let watch_ratio = churn(Config::Watch);
    let bulk_ratio = median_of(results, default, |r| r.bulk_bytes_per_second) / base_bulk;
    let syscall_ratio = median_of(results, default, |r| r.syscalls_per_second) / base_syscalls;
    let exact_leaks = results
        .values()
        .flatten()
        .filter(|r| r.leaks_reported.is_some())
        .all(|r| r.leaks_reported == Some(r.leaked));
    let transition_ns = kernel
        .iter()
        .flat_map(|(_, cost)| &cost.programs)
        .filter(|(program, ..)| program == "inet_sock_set_state")
        .map(|(_, runs, ns)| *ns as f64 / (*runs).max(1) as f64)
        .fold(f64::NAN, f64::min);
    let watch_balanced = kernel.iter().any(|(name, cost)| {
        *name == Config::Watch.name()
            && cost
                .programs
                .first()
                .is_some_and(|(_, runs, _)| cost.delivered + cost.drops == *runs)
    });
    let agent_ns = |c: Config| {
        spread(
            results[&c.name()]
                .iter()
                .filter_map(|r| Some(r.agent_cpu?.as_nanos() as f64 / r.events?.max(1) as f64)),
        )
        .map_or(f64::NAN, |s| s.median)
    };
    let _ = writeln!(out, "\n## Against the targets\n");
    let _ = writeln!(out, "| target | measured | |");
    let _ = writeln!(out, "|---|---|---|");
    let rows = [
        (
            "`leaks` (default stacks) ≥ 0.95× untraced connections/s",
            format!("{leaks_ratio:.2}×"),
            leaks_ratio >= 0.95,
        ),
        (
            "`watch --json > /dev/null` ≥ 0.90×",
            format!("{watch_ratio:.2}×"),
            watch_ratio >= 0.90,
        ),
        (
            "the generator's leaks reported exactly, every round",
            if exact_leaks {
                "yes".into()
            } else {
                "no".into()
            },
            exact_leaks,
        ),
        (
            "`watch`: delivered + drops = the program's run count",
            if watch_balanced {
                "yes".into()
            } else {
                "no".into()
            },
            watch_balanced,
        ),
        (
            "in-kernel cost per transition well below 450 ns",
            format!("{transition_ns:.0} ns (lowest configuration)"),
            transition_ns < 450.0,
        ),
        (
            "bulk ≥ 0.98× untraced at 16 KiB recvs (default stacks)",
            format!("{bulk_ratio:.3}×"),
            bulk_ratio >= 0.98,
        ),
        (
            "no tax on unrelated syscalls (default stacks)",
            format!("getppid {syscall_ratio:.3}×"),
            syscall_ratio >= 0.98,
        ),
        (
            "agent ≤ 1 µs CPU per event (`leaks`, default stacks)",
            format!("{:.0} ns", agent_ns(default)),
            agent_ns(default) <= 1000.0,
        ),
        (
            "agent ≤ 1 µs CPU per event (`watch --json`)",
            format!("{:.0} ns", agent_ns(Config::Watch)),
            agent_ns(Config::Watch) <= 1000.0,
        ),
        (
            "decode + track ≥ 2 M events/s on one core",
            format!("{:.2} M/s", pipeline_rate / 1e6),
            pipeline_rate >= 2e6,
        ),
    ];
    for (target, measured, met) in rows {
        let _ = writeln!(out, "| {target} | {measured} | {} |", verdict(met));
    }
    let _ = writeln!(
        out,
        "\n**What costs what.** On two cores the load alone keeps both busy, so every cycle the tracer spends, in the kernel or in the agent, comes out of the load's share; the untraced baseline itself varies by about ±10 % between rounds here, so differences of a few percent (and ratios above 1) are noise. The transition program runs for every state change (about 10 per connection) and pays its kernel reads, the socket cookie, an owner-map lookup and a ring-buffer reserve and submit. In leak mode, `tcp_destroy_sock` adds one small run per socket, and with stacks the per-recv hook adds one run per `recv()`: cheap for a socket whose stacks are taken, but on churn every connection is new, so each pays its first-I/O and EOF checks and LRU inserts. The agent's CPU per event is the `watch` JSON formatting for `watch`, and decode + tracking for `leaks`."
    );
}

fn render(
    rounds: u32,
    results: &HashMap<String, Vec<Round>>,
    kernel: &[(String, KernelCost)],
    pipeline_rate: f64,
    elapsed: Duration,
) -> String {
    let mut out = String::new();
    let untraced = |f: fn(&Round) -> f64| {
        spread(results[&Config::Untraced.name()].iter().map(f)).map_or(f64::NAN, |s| s.median)
    };
    let base_churn = untraced(|r| r.churn_per_second);
    let base_bulk = untraced(|r| r.bulk_bytes_per_second);
    let base_syscalls = untraced(|r| r.syscalls_per_second);
    let _ = writeln!(out, "# Performance\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask bench` (run as root) on {}; {rounds} rounds per configuration after a warm-up, configurations alternating round by round; {:.0} s in all. Medians, with min–max in parentheses. Every number below comes from that command; nothing here is asserted by a test.\n",
        machine(),
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Load (tcptrace-testpeer, separate processes, loopback only): churn = {CLIENT_THREADS} client threads doing connect → send → read answer → close for {CHURN_SECONDS} s against a server that keeps one socket in {LEAK_EVERY} open after EOF (the leaks to find), sources spread over 127.1.x.y; bulk = 2 streams received with 16 KiB recv() for {BULK_SECONDS} s; syscalls = getppid() in a loop for {SYSCALL_SECONDS} s. Each traced round runs the tracer for {TRACE_SECONDS} s around all three; `serve` runs until SIGTERM, and its events, drops and leaks are what its `/leaks` endpoint said {SERVE_REPORT_DELAY_S} s after the load (its agent CPU includes reading the whole table and attributing every socket every {SERVE_INTERVAL}).\n"
    );
    let _ = writeln!(out, "## Connection churn\n");
    let _ = writeln!(
        out,
        "| configuration | connections/s | vs untraced | events delivered | drops | leaks made → reported | agent CPU per event | agent peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for config in CONFIGS {
        let rows = &results[&config.name()];
        let churn = spread(rows.iter().map(|r| r.churn_per_second));
        let ratio = churn.as_ref().map_or(f64::NAN, |s| s.median / base_churn);
        let events = spread(rows.iter().filter_map(|r| r.events.map(|e| e as f64)));
        let drops: u64 = rows.iter().filter_map(|r| r.drops).sum();
        let leaks = rows
            .iter()
            .map(|r| match r.leaks_reported {
                Some(reported) => format!("{} → {reported}", r.leaked),
                None => format!("{} → –", r.leaked),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let cpu_per_event = spread(
            rows.iter()
                .filter_map(|r| Some(r.agent_cpu?.as_nanos() as f64 / r.events?.max(1) as f64)),
        );
        let rss = spread(
            rows.iter()
                .filter_map(|r| r.agent_peak_rss_kib.map(|k| k as f64)),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {:.2}× | {} | {} | {} | {} | {} |",
            config.name(),
            show(churn, 1.0, 0),
            ratio,
            show(events, 1.0, 0),
            if config == Config::Untraced {
                "–".into()
            } else {
                drops.to_string()
            },
            if matches!(config, Config::Leaks(_) | Config::Serve) {
                leaks
            } else {
                "–".into()
            },
            show(cpu_per_event, 1.0, 0)
                .replace(" (", " ns (")
                .replace(')', " ns)"),
            show(rss, 1024.0, 1).replace(" (", " MiB ("),
        );
    }
    let _ = writeln!(out, "\n## Other traffic on the same host\n");
    let _ = writeln!(
        out,
        "| configuration | bulk MB/s | vs untraced | recv() calls/s | getppid() calls/s | vs untraced |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for config in CONFIGS {
        let rows = &results[&config.name()];
        let bulk = spread(rows.iter().map(|r| r.bulk_bytes_per_second));
        let bulk_ratio = bulk.as_ref().map_or(f64::NAN, |s| s.median / base_bulk);
        let recvs = spread(rows.iter().map(|r| r.recvs_per_second));
        let sys = spread(rows.iter().map(|r| r.syscalls_per_second));
        let sys_ratio = sys.as_ref().map_or(f64::NAN, |s| s.median / base_syscalls);
        let _ = writeln!(
            out,
            "| {} | {} | {:.3}× | {} | {} | {:.3}× |",
            config.name(),
            show(bulk, 1e6, 0),
            bulk_ratio,
            show(recvs, 1.0, 0),
            show(sys, 1.0, 0),
            sys_ratio
        );
    }
    let _ = writeln!(
        out,
        "\n## In the kernel (separate {STATS_SECONDS} s churn runs with bpf_stats enabled)\n"
    );
    let _ = writeln!(
        out,
        "| configuration | program | runs | ns per run | records delivered | drops |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (name, cost) in kernel {
        for (program, runs, run_ns) in &cost.programs {
            let _ = writeln!(
                out,
                "| {name} | {program} | {runs} | {:.0} | {} | {} |",
                *run_ns as f64 / (*runs).max(1) as f64,
                cost.delivered,
                cost.drops
            );
        }
    }
    let _ = writeln!(
        out,
        "\nFor `watch`, every transition the program ran for is either delivered or counted as a drop: records delivered + drops = runs (less non-TCP runs, none here). In leak mode the delivered records also include destroy and stack records, so they can exceed the transition program's runs."
    );
    render_targets(
        &mut out,
        results,
        kernel,
        pipeline_rate,
        base_churn,
        base_bulk,
        base_syscalls,
    );
    let _ = writeln!(out, "\n## Agent hot path (criterion)\n");
    let _ = writeln!(
        out,
        "`cargo bench -p tcptrace --bench pipeline`: decode + per-socket tracking of synthetic connection lifecycles on one core: **{:.2} M events/s**.",
        pipeline_rate / 1e6
    );
    out
}
