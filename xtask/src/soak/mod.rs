//! `cargo xtask soak`: the release `serve` for `--minutes` against load
//! processes (connection churn, process churn, a growing leaker, ring
//! bursts, a `kill -9` and restart, idle and slowloris HTTP clients),
//! sampled every few seconds; docs/RELIABILITY.md gets the series, a plot
//! and the verdicts. A benchmark, not a test: its numbers are in the
//! document, and it exits non-zero when a verdict fails.

mod report;
mod sample;
mod svg;

use std::{
    collections::BTreeSet,
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
use sample::{SCRAPE_TIMEOUT, Sampler, Shared, ss_close_wait};

/// serve's own defaults, except a short --min-age so a new leak counts at
/// once and the soak can compare it with `ss`.
const SERVE_INTERVAL: Duration = Duration::from_secs(5);
const SERVE_MIN_AGE: &str = "1s";
/// Leaks the leaker adds each step, and closes every third step.
const LEAKS_PER_STEP: u32 = 10;
const CLOSED_PER_THIRD_STEP: u32 = 5;
/// A burst: this many processes, each opening and then closing this many
/// connections at once: about 200,000 transitions of 104 bytes in well under
/// a second, several times what the default 4 MiB ring holds. (Four such
/// processes did not overflow it here; eight did.)
const BURST_PROCESSES: usize = 8;
const BURST_CONNECTIONS: u32 = 4000;
const IDLE_CONNECTIONS: u32 = 2000;
const SLOWLORIS_BYTE_EVERY_MS: u64 = 3000;
const MIN_COOL_DOWN: Duration = Duration::from_secs(70);
/// /metrics must answer within this while the idle connections are open.
const METRICS_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    WarmUp,
    ConnectionChurn,
    ProcessChurn,
    Bursts,
    Restart,
    IdleClients,
    CoolDown,
}

/// Each phase's share of the run, in order.
pub const PHASES: [(PhaseKind, &str, f64); 7] = [
    (PhaseKind::WarmUp, "warm-up", 0.10),
    (PhaseKind::ConnectionChurn, "connection churn", 0.15),
    (PhaseKind::ProcessChurn, "process churn", 0.15),
    (PhaseKind::Bursts, "ring bursts", 0.10),
    (PhaseKind::Restart, "kill -9 + restart", 0.15),
    (PhaseKind::IdleClients, "idle + slowloris", 0.15),
    (PhaseKind::CoolDown, "cool-down", 0.20),
];

/// How the run is scaled from `--minutes`.
#[derive(Clone, Debug)]
pub struct Plan {
    pub minutes: u32,
    pub total: Duration,
    pub sample_every: Duration,
    pub leak_step: Duration,
    pub processes: u32,
    pub bursts: u32,
}

impl Plan {
    pub fn new(minutes: u32) -> Self {
        let total = Duration::from_secs(u64::from(minutes) * 60);
        let seconds = total.as_secs_f64();
        Self {
            minutes,
            total,
            // Every 20 s on a 30-minute run; at least ~20 samples on a short one.
            sample_every: Duration::from_secs_f64((seconds / 90.0).clamp(5.0, 20.0)),
            // Every minute on a 30-minute run.
            leak_step: Duration::from_secs_f64((seconds / 30.0).clamp(8.0, 60.0)),
            processes: (50 * minutes).max(300),
            bursts: (minutes / 5).max(2),
        }
    }

    pub fn phase_length(&self, index: usize) -> Duration {
        let share = self.total.mul_f64(PHASES[index].2);
        if PHASES[index].0 == PhaseKind::CoolDown {
            // Past TIME_WAIT (60 s): what the churn left in the kernel's table
            // is gone, so what is left in the tables is serve's own.
            share.max(MIN_COOL_DOWN)
        } else {
            share
        }
    }
}

/// When each phase really ran, in seconds since the start.
#[derive(Clone, Debug)]
pub struct PhaseSpan {
    pub start: f64,
    pub end: f64,
}

#[derive(Clone, Debug)]
pub struct LeakCheck {
    pub after: String,
    pub t: f64,
    /// The leaker's own count of what it holds.
    pub held: u64,
    pub ss: Option<u64>,
    pub leaks: Result<u64, String>,
    pub waited: Duration,
}

impl LeakCheck {
    pub fn matched(&self) -> bool {
        matches!((&self.leaks, self.ss), (Ok(leaks), Some(ss)) if *leaks == ss)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outcomes {
    pub spans: Vec<PhaseSpan>,
    pub checks: Vec<LeakCheck>,
    /// (seconds since start, Ok(ms) or the error) of each timed /metrics GET.
    pub metrics_under_idle: Vec<(f64, Result<f64, String>)>,
    pub idle_report: Option<String>,
    pub process_churn_report: Option<String>,
    pub burst_reports: Vec<String>,
    /// Drop counter at the start and end of the burst phase.
    pub burst_drops: (Option<f64>, Option<f64>),
    pub restart_at: Option<f64>,
    pub leaks_logged: usize,
    pub serve_exit: Option<String>,
    pub bpf_before: (usize, usize),
    pub bpf_after: (usize, usize),
    pub bpf_held: (BTreeSet<u32>, BTreeSet<u32>),
    pub bpf_left: (Vec<u32>, Vec<u32>),
    /// How long after the end those were still listed.
    pub bpf_wait: Duration,
    pub processes_left: Vec<(u32, String)>,
    pub samples: Vec<sample::Sample>,
}

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
    /// what both said after a few refreshes.
    fn check_leaks(&mut self, after: &str) -> LeakCheck {
        let started = Instant::now();
        let patience = SERVE_INTERVAL * 4 + Duration::from_secs(2);
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

    fn run_phase(&mut self, index: usize) -> Result<()> {
        let (kind, name, _) = PHASES[index];
        let length = self.plan.phase_length(index);
        let phase_started = Instant::now();
        let deadline = phase_started + length;
        let seconds = length.as_secs_f64();
        self.shared.set_phase(index);
        step(&format!(
            "soak: {name} for {seconds:.0} s (at {:.0} s)",
            self.now()
        ));
        let span_start = self.now();
        // Loads that end by themselves before the phase does.
        let mut loads: Vec<Proc> = Vec::new();
        match kind {
            PhaseKind::WarmUp | PhaseKind::Restart => {
                if kind == PhaseKind::Restart {
                    self.restart()?;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                loads.push(self.churn_client(1, (left.as_secs_f64() - 1.0).max(1.0))?);
            }
            PhaseKind::ConnectionChurn => {
                loads.push(self.churn_client(2, (seconds - 1.0).max(1.0))?);
            }
            PhaseKind::ProcessChurn => {
                loads.push(Proc::spawn(
                    &self.bin.peer,
                    &[
                        "process-churn",
                        "--connect",
                        &format!("127.0.0.1:{}", self.churn_port),
                        "--processes",
                        &self.plan.processes.to_string(),
                        "--seconds",
                        &format!("{:.1}", (seconds - 2.0).max(1.0)),
                    ],
                )?);
            }
            PhaseKind::Bursts => self.bursts(deadline)?,
            PhaseKind::IdleClients => self.idle_clients(deadline)?,
            PhaseKind::CoolDown => {}
        }
        self.wait_until(deadline, kind == PhaseKind::CoolDown)?;
        for load in &loads {
            let done = load.expect_within("done", Duration::from_secs(30))?;
            if kind == PhaseKind::ProcessChurn {
                self.outcomes.process_churn_report = Some(format!(
                    "{} processes forked, {} failed, in {} s",
                    done["processes"], done["failed"], done["seconds"]
                ));
            }
        }
        drop(loads);
        let check = self.check_leaks(name);
        self.outcomes.checks.push(check);
        self.outcomes.spans.push(PhaseSpan {
            start: span_start,
            end: self.now(),
        });
        Ok(())
    }

    /// `kill -9` of serve, a new one, and at once the leak check.
    fn restart(&mut self) -> Result<()> {
        self.drain_serve_log();
        self.shared.set_serve(None, self.instance);
        // Dropping kills with SIGKILL and reaps.
        self.serve = None;
        self.outcomes.restart_at = Some(self.now());
        self.instance += 1;
        step("soak: serve killed with SIGKILL; starting it again");
        self.start_serve()?;
        let check = self.check_leaks("the restart");
        self.outcomes.checks.push(check);
        Ok(())
    }

    fn bursts(&mut self, deadline: Instant) -> Result<()> {
        self.outcomes.burst_drops.0 = self.drops_now();
        // Leave the end of the phase for serve to catch up and count.
        let room = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(SERVE_INTERVAL + Duration::from_secs(1));
        let spacing = room / self.plan.bursts;
        for burst in 0..self.plan.bursts {
            let next = Instant::now() + spacing;
            let mut peers = (0..BURST_PROCESSES)
                .map(|_| {
                    Proc::spawn(
                        &self.bin.peer,
                        &[
                            "ring-burst",
                            "--addr",
                            "127.0.0.1:0",
                            "--connections",
                            &BURST_CONNECTIONS.to_string(),
                        ],
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            for peer in &peers {
                peer.expect_within("open", Duration::from_secs(60))?;
            }
            for peer in &mut peers {
                peer.tell("go")?;
            }
            let mut slowest = 0.0f64;
            for peer in &peers {
                slowest = slowest.max(peer.expect("done")?["seconds"].parse()?);
            }
            self.outcomes.burst_reports.push(format!(
                "burst {}: {} connections opened, then closed at once in {:.0} ms",
                burst + 1,
                BURST_PROCESSES as u32 * BURST_CONNECTIONS,
                slowest * 1e3
            ));
            drop(peers);
            self.wait_until(next, false)?;
        }
        self.wait_until(deadline, false)?;
        self.outcomes.burst_drops.1 = self.drops_now();
        Ok(())
    }

    fn idle_clients(&mut self, deadline: Instant) -> Result<()> {
        let address = self.address()?;
        // Over before the phase ends, so its closing shows in the samples.
        let seconds = (deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
            - 2.0)
            .max(2.0);
        let clients = Proc::spawn(
            &self.bin.peer,
            &[
                "idle-http",
                "--connect",
                &address,
                "--connections",
                &IDLE_CONNECTIONS.to_string(),
                "--seconds",
                &format!("{seconds:.1}"),
                "--byte-every-ms",
                &SLOWLORIS_BYTE_EVERY_MS.to_string(),
            ],
        )?;
        let opened = clients.expect_within("opened", Duration::from_secs(60))?;
        step(&format!(
            "soak: {} idle and slowloris connections open ({} failed)",
            opened["connected"], opened["failed"]
        ));
        let window_start = Instant::now();
        let window = (window_start + Duration::from_secs_f64(seconds - 1.0))
            .saturating_duration_since(window_start);
        // Three GETs spread over the time the connections are open.
        for i in 0..3u32 {
            self.wait_until(window_start + window * i / 3, false)?;
            let timer = Instant::now();
            let answer = http_get(&address, "/metrics", SCRAPE_TIMEOUT)
                .map(|_| timer.elapsed().as_secs_f64() * 1e3)
                .map_err(|e| format!("{e:#}"));
            self.outcomes.metrics_under_idle.push((self.now(), answer));
        }
        self.wait_until(deadline, false)?;
        let done = clients.expect_within("done", Duration::from_secs(30))?;
        self.outcomes.idle_report = Some(format!(
            "{} connected ({} failed to connect); closed by serve within {:.0} s: {} of the idle (the last {} s after all were open), {} of the slowloris (the last after {} s); {} still open",
            done["connected"],
            opened["failed"],
            seconds,
            done["idle_closed"],
            done["idle_last_closed_s"],
            done["slow_closed"],
            done["slow_last_closed_s"],
            done["open"]
        ));
        Ok(())
    }
}

fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
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
        &["churn-server", "--addr", "127.0.0.1:0", "--threads", "2"],
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
        held: 0,
        leak_steps: 0,
        outcomes: Outcomes::default(),
    };
    soak.start_serve()?;
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
