//! `cargo xtask bench`: what tracing costs the host, measured side by side
//! with the same load untraced, and written to docs/PERFORMANCE.md.
//!
//! The load generators (tcptrace-testpeer) are the ground truth: they count
//! connections, bytes and calls, and how many sockets the churn server leaked.
//! Configurations alternate round by round so drift hits all of them alike.
//! In-kernel cost comes from separate short runs with bpf_stats enabled,
//! never from the throughput rounds (the statistics cost time themselves).
//!
//! Each traced round is compared with the untraced round of the same
//! alternation cycle (a paired ratio), so that the host's drift between
//! cycles does not blur a 5 % difference. bpftrace one-liners run as peers in
//! the same cycles: what a user would otherwise reach for.
//!
//! With `--baseline REV`, the default `leaks` and `serve` of an earlier
//! commit run in the same cycles, so that a change is judged against what
//! it replaces. After the cycles, the time to code path: how soon a live
//! report names the function that leaks on a churning server.
//!
//! Here: the configurations, the plan of rounds and the criterion run;
//! `rounds` runs one round or one in-kernel cost run; `bpftrace` the peers;
//! `baseline` builds the earlier commit; `time_to_path` times the code
//! path; `stats` the arithmetic; `report` writes the document.

mod baseline;
mod bpftrace;
mod python_walk;
mod report;
mod rounds;
mod stats;
mod time_to_path;

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use baseline::Baseline;
use bpftrace::{Availability, PEERS, Peer};
use report::render;
use rounds::{BpfStatsGuard, kernel_cost, run_round};
use time_to_path::{PathRun, Scenario};

use crate::step;

/// Scales every load's length (0 < scale <= 1): for a smoke run of the
/// benchmark's code, whose numbers are not measurements.
const SCALE_ENV: &str = "TCPTRACE_BENCH_SCALE";

/// How long each load runs.
#[derive(Clone, Copy, Debug)]
struct Timing {
    churn: f64,
    bulk: f64,
    syscalls: f64,
    stats: f64,
    scale: f64,
}

impl Timing {
    const FULL: Self = Self {
        churn: 4.0,
        bulk: 2.0,
        syscalls: 2.0,
        stats: 3.0,
        scale: 1.0,
    };

    fn from_env() -> Result<Self> {
        let Some(text) = std::env::var_os(SCALE_ENV) else {
            return Ok(Self::FULL);
        };
        let text = text.to_string_lossy();
        let scale: f64 = text
            .parse()
            .ok()
            .filter(|s| *s > 0.0 && *s <= 1.0)
            .with_context(|| format!("{SCALE_ENV}={text}: want a number in (0, 1]"))?;
        let full = Self::FULL;
        Ok(Self {
            churn: full.churn * scale,
            bulk: full.bulk * scale,
            syscalls: full.syscalls * scale,
            stats: full.stats * scale,
            scale,
        })
    }

    /// Long enough for the three workloads and their start-up.
    fn trace_seconds(self) -> u64 {
        (self.churn + self.bulk + self.syscalls + 3.0).ceil() as u64
    }
}
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
    /// Not tcptrace: a bpftrace one-liner, for comparison.
    Peer(Peer),
    /// `leaks --stacks default` of the --baseline commit.
    PreviousLeaks,
    /// `serve` of the --baseline commit.
    PreviousServe,
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
            Self::Peer(peer) => peer.name().into(),
            Self::PreviousLeaks => "baseline: leaks --stacks default".into(),
            Self::PreviousServe => format!("baseline: serve --interval {SERVE_INTERVAL}"),
        }
    }

    /// The configuration whose arguments this one runs.
    fn as_current(self) -> Self {
        match self {
            Self::PreviousLeaks => Self::Leaks("default"),
            Self::PreviousServe => Self::Serve,
            other => other,
        }
    }

    /// Runs the --baseline commit's binary.
    fn is_baseline(self) -> bool {
        matches!(self, Self::PreviousLeaks | Self::PreviousServe)
    }

    /// The tcptrace configurations, the baseline's where there is one and,
    /// where bpftrace runs, its peers.
    fn all(bpftrace: &Availability, baseline: bool) -> Vec<Self> {
        let peers = match bpftrace {
            Availability::Runs { .. } => &PEERS[..],
            Availability::Cannot(_) => &[],
        };
        let previous: &[Self] = if baseline {
            &[Self::PreviousLeaks, Self::PreviousServe]
        } else {
            &[]
        };
        CONFIGS
            .into_iter()
            .chain(previous.iter().copied())
            .chain(peers.iter().map(|peer| Self::Peer(*peer)))
            .collect()
    }

    /// tcptrace's arguments; `None` where tcptrace does not run.
    fn tracer_args(self, seconds: u64) -> Option<Vec<String>> {
        let duration = format!("{seconds}s");
        match self.as_current() {
            Self::Untraced | Self::Peer(_) | Self::PreviousLeaks | Self::PreviousServe => None,
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
    /// The alternation cycle: its untraced round is this round's pair.
    cycle: usize,
    churn_per_second: f64,
    /// Connections the churn made.
    connections: Option<u64>,
    leaked: u64,
    leaks_reported: Option<u64>,
    events: Option<u64>,
    drops: Option<u64>,
    agent_cpu: Option<Duration>,
    /// The tracer's CPU from the start of the load to its end: what the
    /// events cost, without its start-up (BTF, the verifier, the first
    /// table read) and its final report.
    agent_cpu_under_load: Option<Duration>,
    /// Of `agent_cpu_under_load`, the threads that unwind and name the
    /// leaks' code paths.
    code_path_cpu_under_load: Option<Duration>,
    agent_peak_rss_kib: Option<u64>,
    /// Stack copies taken and refused a second over the tracer's run, from
    /// its report's counters.
    copies_per_second: Option<(f64, f64)>,
    bulk_bytes_per_second: f64,
    recvs_per_second: f64,
    syscalls_per_second: f64,
}

impl Round {
    /// The agent's CPU while the load ran, less naming the leaks' code
    /// paths: the part that grows with the events.
    fn event_path_cpu_under_load(&self) -> Option<Duration> {
        Some(
            self.agent_cpu_under_load?
                .saturating_sub(self.code_path_cpu_under_load.unwrap_or_default()),
        )
    }
}

/// bpf_stats run of one configuration.
#[derive(Clone, Debug, Default)]
struct KernelCost {
    /// program -> (runs, run ns)
    programs: Vec<(String, u64, u64)>,
    /// Records that reached userspace (for the count-only peer: the
    /// transitions its map counted); `None` where nothing says.
    delivered: Option<u64>,
    drops: Option<u64>,
    /// The tracer's CPU over the whole run.
    agent_cpu: Duration,
}

/// What a round runs, and how long.
struct Bench {
    tcptrace: PathBuf,
    peer: PathBuf,
    timing: Timing,
    bpftrace: Availability,
    baseline: Option<Baseline>,
}

impl Bench {
    fn tcptrace_for(&self, config: Config) -> &Path {
        match (&self.baseline, config.is_baseline()) {
            (Some(baseline), true) => &baseline.tcptrace,
            _ => &self.tcptrace,
        }
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

pub fn run(root: &Path, rounds: u32, baseline: Option<&str>) -> Result<()> {
    let started = Instant::now();
    if rounds == 0 {
        anyhow::bail!("--rounds 0: at least one round per configuration");
    }
    let timing = Timing::from_env()?;
    let baseline = baseline
        .map(|revision| baseline::build(root, revision))
        .transpose()?;
    step("bench: does bpftrace attach here? (count-only one-liner, one loopback connection)");
    let bpftrace = bpftrace::availability();
    match &bpftrace {
        Availability::Runs { private_tracefs } => step(&format!(
            "bench: bpftrace runs{}",
            if *private_tracefs {
                " (tracefs is not mounted here: in its own mount namespace with tracefs mounted)"
            } else {
                ""
            }
        )),
        Availability::Cannot(why) => step(&format!("bench: bpftrace rows left out: {why}")),
    }
    let bench = Bench {
        tcptrace: root.join("target/release/tcptrace"),
        peer: root.join("target/release/tcptrace-testpeer"),
        timing,
        bpftrace,
        baseline,
    };
    let configs = Config::all(&bench.bpftrace, bench.baseline.is_some());
    step("bench: warm-up round, untraced and with watch");
    run_round(&bench, Config::Untraced, 0)?;
    run_round(&bench, Config::Watch, 0)?;

    let mut results: HashMap<String, Vec<Round>> = HashMap::new();
    for cycle in 0..rounds as usize {
        // Rotate the order so no configuration always runs first.
        for i in 0..configs.len() {
            let config = configs[(i + cycle) % configs.len()];
            step(&format!(
                "bench: round {}/{rounds}: {}",
                cycle + 1,
                config.name()
            ));
            let result = run_round(&bench, config, cycle)?;
            results.entry(config.name()).or_default().push(result);
        }
    }

    let mut paths: Vec<(Scenario, PathRun)> = Vec::new();
    for run in 0..rounds {
        for scenario in Scenario::ALL {
            step(&format!(
                "bench: time to code path {}/{rounds}, {} leaks before tcptrace starts",
                run + 1,
                scenario.leaks_before()
            ));
            paths.push((scenario, time_to_path::run(&bench, scenario)?));
        }
    }

    step("bench: in-kernel cost, short runs with bpf_stats enabled");
    let mut kernel = Vec::new();
    let python;
    let data_reads;
    {
        let _stats = BpfStatsGuard::enable()?;
        // serve's probe counts per owner besides what `leaks --stacks
        // default` does: measured as `top`, which loads the same.
        for config in configs
            .iter()
            .filter(|c| !matches!(c, Config::Untraced) && !c.is_baseline())
        {
            kernel.push((config.name(), kernel_cost(&bench, *config)?));
        }
        step("bench: sock_recv_length on data reads alone (bulk load, default stacks)");
        data_reads = Some(rounds::data_read_cost(&bench)?);
        step("bench: the Python walk's cost per copy, each Python");
        python = python_walk::run(&bench, root)?;
    }

    step("bench: criterion, decode and track on one core");
    let pipeline_rate = criterion_events_per_second(root)?;

    let doc = render(
        &report::Run {
            rounds,
            timing: bench.timing,
            bpftrace: &bench.bpftrace,
            configs: &configs,
            results: &results,
            kernel: &kernel,
            pipeline_rate,
            baseline: bench.baseline.as_ref().map(|b| b.commit.as_str()),
            paths: &paths,
            python: &python,
            data_reads,
        },
        started.elapsed(),
    );
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
