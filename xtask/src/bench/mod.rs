//! `cargo xtask bench`: what tracing costs the host, measured side by side
//! with the same load untraced, and written to docs/PERFORMANCE.md.
//!
//! The load generators (tcptrace-testpeer) are the ground truth: they count
//! connections, bytes and calls, and how many sockets the churn server leaked.
//! Configurations alternate round by round so drift hits all of them alike.
//! In-kernel cost comes from separate short runs with bpf_stats enabled,
//! never from the throughput rounds (the statistics cost time themselves).
//!
//! Here: the configurations, the plan of rounds and the criterion run;
//! `rounds` runs one round or one in-kernel cost run; `report` writes the
//! document.

mod report;
mod rounds;
mod stats;

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use report::render;
use rounds::{BpfStatsGuard, kernel_cost, run_round};

use crate::step;

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

struct Binaries {
    tcptrace: PathBuf,
    peer: PathBuf,
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
