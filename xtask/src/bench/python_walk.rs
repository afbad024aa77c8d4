//! What walking a Python thread's frames adds to a stack copy: a plain
//! Python 3 server (python_server.py, no flag) under testpeer's churn,
//! traced by `leaks --stacks full` (every origin and EOF read copied) with
//! bpf_stats enabled, for each Python the image has. The probe times each
//! walk itself (`stacks.python_frames_ns`): bpf_stats times whole programs,
//! whose runs on this load are mostly not copies.

use std::{path::Path, thread, time::Duration};

use anyhow::{Context as _, Result};

use super::{Bench, rounds::churn_client};
use crate::harness::{Proc, Tracer};

/// The Pythons measured, from the image's pyenv.
pub(super) const PYTHONS: [&str; 5] = ["3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"];
/// Load seconds per run: a Python server serves a few thousand a second.
const SECONDS: u64 = 4;

/// One Python's run.
#[derive(Clone, Debug, Default)]
pub(super) struct WalkCost {
    pub(super) python: &'static str,
    pub(super) connections: u64,
    pub(super) copies: u64,
    /// Of `copies`, those with Python frames (the client's connects are
    /// copied too, and have none), and the probe's time walking them.
    pub(super) walks: u64,
    pub(super) walk_ns: u64,
    /// Every program's runs and nanoseconds, summed.
    pub(super) runs: u64,
    pub(super) run_ns: u64,
}

impl WalkCost {
    /// Nanoseconds a walk (and its insert) took, on average.
    pub(super) fn walk_ns_per_copy(&self) -> Option<f64> {
        (self.walks > 0).then(|| self.walk_ns as f64 / self.walks as f64)
    }

    /// The programs' whole time per copy, walks included.
    pub(super) fn ns_per_copy(&self) -> Option<f64> {
        (self.copies > 0).then(|| self.run_ns as f64 / self.copies as f64)
    }
}

/// Runs each Python; bpf_stats must be enabled.
pub(super) fn run(bench: &Bench, root: &Path) -> Result<Vec<WalkCost>> {
    let script = root.join("xtask/src/bench/python_server.py");
    PYTHONS
        .iter()
        .map(|&python| {
            let minor = python.rsplit_once('.').map_or(python, |(mm, _)| mm);
            let interpreter =
                Path::new("/root/.pyenv/versions").join(format!("{python}/bin/python{minor}"));
            traced(bench, python, &interpreter, &script)
        })
        .collect()
}

fn traced(
    bench: &Bench,
    python: &'static str,
    interpreter: &Path,
    script: &Path,
) -> Result<WalkCost> {
    let mut server = Proc::spawn(interpreter, &[&script.to_string_lossy()])
        .with_context(|| format!("{} (run `cargo xtask setup`)", interpreter.display()))?;
    let listening = server.expect("listening")?;
    let port = listening["port"].clone();
    let pid = listening["pid"].clone();
    let args: Vec<String> = [
        "leaks",
        "--json",
        "-d",
        &format!("{}s", SECONDS + 3),
        "--min-age",
        "1s",
        "--stacks",
        "full",
        "--pid",
        &pid,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let tracer = Tracer::start(&bench.tcptrace, &args, true)?;
    // The server is found (its interpreter read) before the first copy.
    thread::sleep(Duration::from_millis(500));
    let client = churn_client(bench, &port, SECONDS as f64)?;
    client.expect_within("done", Duration::from_secs(SECONDS + 30))?;
    let exit = tracer.wait()?;
    server.close_stdin();
    let served: u64 = server.expect("served")?["count"].parse()?;
    let last = exit.stdout.last().context("leaks printed no report")?;
    let report: serde_json::Value = serde_json::from_str(last)?;
    let stacks = &report["stacks"];
    let mut run = WalkCost {
        python,
        connections: served,
        copies: stacks["copies_taken"].as_u64().unwrap_or(0),
        walks: stacks["python_frames_copied"].as_u64().unwrap_or(0),
        walk_ns: stacks["python_frames_ns"].as_u64().unwrap_or(0),
        ..WalkCost::default()
    };
    for program in report["health"]["programs"]
        .as_array()
        .into_iter()
        .flatten()
    {
        run.runs += program["runs"].as_u64().unwrap_or(0);
        // The program's whole time, not per run.
        run.run_ns += program["run_ns"].as_u64().unwrap_or(0);
    }
    Ok(run)
}
