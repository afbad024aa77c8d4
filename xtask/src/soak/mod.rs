//! `cargo xtask soak`: the release `serve` for `--minutes` against load
//! processes: a sustained load until the cool-down (4-thread connection
//! churn, process churn, a growing leaker), and phases on top of it (CPU
//! hogs that starve serve, ring bursts, a `kill -9` and restart, idle and
//! slowloris HTTP clients), sampled every few seconds; docs/RELIABILITY.md gets the series, a plot
//! and the verdicts. A benchmark, not a test: its numbers are in the
//! document, and it exits non-zero when a verdict fails.
//!
//! Here: the running soak (serve, the churn server, the leaker) and its
//! leak checks; `plan` scales the phases, `phases` runs each phase's load,
//! `sample` samples serve, `outcomes` is what the run recorded, `verdicts`
//! judges it, `report` and `svg` write the document and the plot.

mod outcomes;
mod phases;
mod plan;
mod report;
mod sample;
mod svg;
mod verdicts;

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    harness::{Proc, Tracer, http_get},
    step,
};
use outcomes::{LeakCheck, Outcomes};
use plan::{PHASES, Plan};
use sample::{SCRAPE_TIMEOUT, Sampler, Shared, ss_close_wait};

/// serve's own defaults, except a short --min-age so a new leak counts at
/// once and the soak can compare it with `ss`.
const SERVE_INTERVAL: Duration = Duration::from_secs(5);
const SERVE_MIN_AGE: &str = "1s";
/// serve's longest pause between host reads on a busy host (its
/// drain_loop's HOST_READ_LONGEST_PAUSE).
const HOST_READ_LONGEST_PAUSE: Duration = Duration::from_secs(60);
/// Leaks the leaker adds each step, and closes every third step.
const LEAKS_PER_STEP: u32 = 10;
const CLOSED_PER_THIRD_STEP: u32 = 5;
/// /metrics must answer within this while the idle connections are open.
const METRICS_DEADLINE: Duration = Duration::from_secs(1);
/// The sustained connection churn's client threads (and its server's).
pub(super) const CHURN_THREADS: u32 = 4;

struct Binaries {
    tcptrace: PathBuf,
    peer: PathBuf,
}

/// Everything running; dropping it kills every child.
struct Soak {
    bin: Binaries,
    plan: Plan,
    started: Instant,
    shared: Arc<Shared>,
    serve: Option<Tracer>,
    instance: usize,
    churn_server: Proc,
    churn_port: String,
    leaker: Proc,
    leaker_pid: u32,
    /// The sustained load: connection churn and process churn, each ending
    /// by itself when the cool-down begins.
    background: Vec<Proc>,
    held: u64,
    leak_steps: u32,
    next_leak_step: Instant,
    outcomes: Outcomes,
}

fn serve_args() -> Vec<String> {
    [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--interval",
        &format!("{}s", SERVE_INTERVAL.as_secs()),
        "--min-age",
        SERVE_MIN_AGE,
    ]
    .map(str::to_owned)
    .to_vec()
}

impl Soak {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn serve(&self) -> Result<&Tracer> {
        self.serve.as_ref().context("serve is not running")
    }

    fn address(&self) -> Result<String> {
        self.serve()?
            .address
            .clone()
            .context("serve said no address")
    }

    fn start_serve(&mut self) -> Result<()> {
        let tracer = Tracer::start(&self.bin.tcptrace, &serve_args(), false)?;
        let target = (
            tracer.pid(),
            tracer.address.clone().context("serve address")?,
        );
        self.serve = Some(tracer);
        self.shared.set_serve(Some(target), self.instance);
        Ok(())
    }

    /// Drains serve's stderr (one JSON line per new leak) so it never blocks.
    fn drain_serve_log(&mut self) {
        if let Some(serve) = &self.serve {
            self.outcomes.leaks_logged += serve
                .stderr
                .try_iter()
                .filter(|l| l.contains("tcp_socket_leak"))
                .count();
        }
    }

    fn tell_leaker(&mut self, command: &str) -> Result<()> {
        self.leaker.tell(command)?;
        self.held = self.leaker.expect("holding")?["count"].parse()?;
        Ok(())
    }

    /// Waits until `deadline`, growing the leaker's leaks every step unless
    /// `quiet`.
    fn wait_until(&mut self, deadline: Instant, quiet: bool) -> Result<()> {
        while Instant::now() < deadline {
            self.drain_serve_log();
            if !quiet && Instant::now() >= self.next_leak_step {
                self.leak_steps += 1;
                self.tell_leaker(&format!("leak {LEAKS_PER_STEP}"))?;
                if self.leak_steps.is_multiple_of(3) {
                    self.tell_leaker(&format!("close {CLOSED_PER_THIRD_STEP}"))?;
                }
                self.next_leak_step += self.plan.leak_step;
            }
            let until = deadline.min(self.next_leak_step);
            let nap = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            thread::sleep(nap.max(Duration::from_millis(10)));
        }
        Ok(())
    }

    /// The leaker's CLOSE_WAIT count in /leaks, once it equals `ss`'s, or
    /// what both said after a few host reads. The leaker's count does not
    /// change meanwhile; a starved serve spaces its reads out (up to a
    /// minute apart, plus the read), so /leaks may be that old before a
    /// read made after the change shows it.
    fn check_leaks(&mut self, after: &str) -> LeakCheck {
        let started = Instant::now();
        let patience = (SERVE_INTERVAL * 4).max(HOST_READ_LONGEST_PAUSE * 2);
        loop {
            let ss = ss_close_wait(self.leaker_pid).ok();
            let leaks = self.leaker_in_leaks();
            let check = LeakCheck {
                after: after.to_owned(),
                t: self.now(),
                held: self.held,
                ss,
                leaks,
                waited: started.elapsed(),
            };
            if check.matched() || started.elapsed() >= patience {
                step(&format!(
                    "soak: after {after}: /leaks {:?}, ss {:?} ({:.0?})",
                    check.leaks, check.ss, check.waited
                ));
                return check;
            }
            self.drain_serve_log();
            thread::sleep(Duration::from_secs(1));
        }
    }

    fn leaker_in_leaks(&self) -> Result<u64, String> {
        let report = self
            .serve()
            .and_then(|serve| serve.leaks_over_http())
            .map_err(|e| format!("{e:#}"))?;
        let processes = report["processes"]
            .as_array()
            .ok_or("/leaks has no processes list")?;
        match processes
            .iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(self.leaker_pid)))
        {
            Some(process) => process["close_wait"]
                .as_u64()
                .ok_or_else(|| "no close_wait count".to_owned()),
            None if report["truncated"].as_bool() == Some(true) => {
                Err("the leaker is not on the truncated page".to_owned())
            }
            None => Ok(0),
        }
    }

    fn drops_now(&self) -> Option<f64> {
        let address = self.address().ok()?;
        let text = http_get(&address, "/metrics", SCRAPE_TIMEOUT).ok()?;
        sample::parse_metrics(&text).drops
    }

    /// The sustained load, until the cool-down.
    fn start_background(&mut self) -> Result<()> {
        let seconds = format!("{:.1}", self.plan.loaded().as_secs_f64());
        let connect = format!("127.0.0.1:{}", self.churn_port);
        self.background = vec![
            self.churn_client(CHURN_THREADS, self.plan.loaded().as_secs_f64())?,
            Proc::spawn(
                &self.bin.peer,
                &[
                    "process-churn",
                    "--connect",
                    &connect,
                    "--processes",
                    &self.plan.processes.to_string(),
                    "--seconds",
                    &seconds,
                ],
            )?,
        ];
        Ok(())
    }

    fn churn_client(&self, threads: u32, seconds: f64) -> Result<Proc> {
        Proc::spawn(
            &self.bin.peer,
            &[
                "churn-client",
                "--connect",
                &format!("127.0.0.1:{}", self.churn_port),
                "--threads",
                &threads.to_string(),
                "--seconds",
                &format!("{seconds:.1}"),
            ],
        )
    }
}

fn commit(root: &Path) -> String {
    let git = |args: &[&str]| crate::harness::git(root, args).unwrap_or_default();
    let head = git(&["rev-parse", "--short", "HEAD"]);
    if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        head
    } else {
        format!("{head} with uncommitted changes")
    }
}

pub fn run(root: &Path, minutes: u32) -> Result<ExitCode> {
    // SAFETY: no other thread runs yet; every child inherits the mark, so
    // the end can tell whether any of them is left.
    unsafe { std::env::set_var(sample::OWNER_VARIABLE, std::process::id().to_string()) };
    let plan = Plan::new(minutes);
    let bin = Binaries {
        tcptrace: root.join("target/release/tcptrace"),
        peer: root.join("target/release/tcptrace-testpeer"),
    };
    let commit = commit(root);
    let (programs_before, maps_before) = sample::all_bpf_ids()?;
    let mut outcomes = soak(bin, plan.clone())?;
    outcomes.bpf_before = (programs_before.len(), maps_before.len());
    // Every child has been killed and reaped by now.
    outcomes.processes_left = sample::marked_processes();
    // The kernel frees a program or map after its last fd closes, after RCU
    // grace periods (seconds, here): give it time before calling anything
    // left behind.
    let waiting = Instant::now();
    let patience = waiting + Duration::from_secs(30);
    loop {
        outcomes.bpf_wait = waiting.elapsed();
        let (programs, maps) = sample::all_bpf_ids()?;
        outcomes.bpf_after = (programs.len(), maps.len());
        let (held_programs, held_maps) = &outcomes.bpf_held;
        outcomes.bpf_left = (
            held_programs.intersection(&programs).copied().collect(),
            held_maps.intersection(&maps).copied().collect(),
        );
        let clean = outcomes.bpf_left.0.is_empty() && outcomes.bpf_left.1.is_empty();
        if clean || Instant::now() >= patience {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let (doc, svg, passed) = report::render(&plan, &commit, &outcomes);
    fs::create_dir_all(root.join("docs"))?;
    fs::write(root.join("docs/RELIABILITY.md"), &doc)?;
    fs::write(root.join(report::SVG_PATH), &svg)?;
    println!("{doc}");
    step(&format!(
        "soak: wrote docs/RELIABILITY.md and {}; {}",
        report::SVG_PATH,
        if passed {
            "every verdict passed"
        } else {
            "a verdict FAILED"
        }
    ));
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The run itself; every child is killed when it returns, error or not.
fn soak(bin: Binaries, plan: Plan) -> Result<Outcomes> {
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    let churn_server = Proc::spawn(
        &bin.peer,
        &[
            "churn-server",
            "--addr",
            "127.0.0.1:0",
            "--threads",
            &CHURN_THREADS.to_string(),
        ],
    )?;
    let churn_port = churn_server.expect("listening")?["port"].clone();
    let leaker = Proc::spawn(&bin.peer, &["growing-leaker", "--addr", "127.0.0.1:0"])?;
    let leaker_pid: u32 = leaker.expect("listening")?["pid"].parse()?;
    let mut soak = Soak {
        bin,
        next_leak_step: Instant::now(),
        plan,
        started,
        shared: shared.clone(),
        serve: None,
        instance: 0,
        churn_server,
        churn_port,
        leaker,
        leaker_pid,
        background: Vec::new(),
        held: 0,
        leak_steps: 0,
        outcomes: Outcomes::default(),
    };
    soak.start_serve()?;
    soak.start_background()?;
    let sampler = Sampler::start(shared.clone(), started, soak.plan.sample_every);
    for index in 0..PHASES.len() {
        soak.run_phase(index)?;
    }
    drop(sampler);
    soak.drain_serve_log();
    let mut samples = shared.samples();
    samples.push(sample::take(&shared, started));
    shared.set_serve(None, soak.instance);
    if let Some(serve) = soak.serve.take() {
        serve.terminate();
        soak.outcomes.serve_exit = Some(match serve.wait() {
            Ok(_) => "exited 0 on SIGTERM".to_owned(),
            Err(e) => format!("{e:#}"),
        });
    }
    soak.leaker.close_stdin();
    soak.churn_server.close_stdin();
    let _ = soak.churn_server.expect("served");
    let mut outcomes = std::mem::take(&mut soak.outcomes);
    outcomes.bpf_held = shared.held.lock().expect("held").clone();
    drop(soak);
    outcomes.samples = samples;
    Ok(outcomes)
}
