//! One benchmark round: the load generators against a leaking server, with
//! or without a tracer (tcptrace or a bpftrace peer), and what each side
//! counted; and the short runs with bpf_stats enabled that measure the
//! probes' in-kernel cost.

use std::{collections::HashMap, fs, thread, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    BPF_STATS, Bench, CLIENT_THREADS, Config, KernelCost, LEAK_EVERY, Round, SERVE_REPORT_DELAY_S,
    bpftrace::{self, Availability, PeerExit},
};
use crate::harness::{Proc, Tracer, TracerExit, fields};

/// Puts bpf_stats back as it was, however the benchmark ends.
pub(super) struct BpfStatsGuard {
    before: String,
}

impl BpfStatsGuard {
    pub(super) fn enable() -> Result<Self> {
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

/// What churn measured: its rate and the server's leaks.
struct Churned {
    per_second: f64,
    connections: u64,
    leaked: u64,
    server_pid: u32,
}

/// testpeer's churn client, CLIENT_THREADS threads against 127.0.0.1:`port`
/// for `seconds`; it says `done` with its rate.
pub(super) fn churn_client(bench: &Bench, port: &str, seconds: f64) -> Result<Proc> {
    Proc::spawn(
        &bench.peer,
        &[
            "churn-client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--threads",
            CLIENT_THREADS,
            "--seconds",
            &seconds.to_string(),
        ],
    )
}

/// Churn for `seconds` against a leaking server, which keeps its leaks until
/// `until` has returned.
fn churn(bin: &Bench, seconds: f64, until: impl FnOnce(u32) -> Result<()>) -> Result<Churned> {
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
    let client = churn_client(bin, &port, seconds)?;
    let done = client.expect("done")?;
    let per_second: f64 = done["per_second"].parse()?;
    let connections: u64 = done["connections"].parse()?;
    // The server keeps its leaks until the tracer has reported.
    let server_pid = server.pid();
    until(server_pid)?;
    server.close_stdin();
    let leaked: u64 = server.expect("served")?["leaked"].parse()?;
    Ok(Churned {
        per_second,
        connections,
        leaked,
        server_pid,
    })
}

fn bulk(bin: &Bench) -> Result<(f64, f64)> {
    let server = Proc::spawn(&bin.peer, &["bulk-server", "--addr", "127.0.0.1:0"])?;
    let port = server.expect("listening")?["port"].clone();
    let client = Proc::spawn(
        &bin.peer,
        &[
            "bulk-client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--seconds",
            &bin.timing.bulk.to_string(),
        ],
    )?;
    client.expect("done")?;
    let done = server.expect("done")?;
    Ok((
        done["bytes_per_second"].parse()?,
        done["recvs_per_second"].parse()?,
    ))
}

/// `sock_recv_length` on data reads alone: (runs, ns per run) of the
/// default `leaks` probe while the bulk load (16 KiB recvs, each returning
/// data but the streams' last) runs, with bpf_stats enabled.
pub(super) fn data_read_cost(bench: &Bench) -> Result<(u64, f64)> {
    let seconds = bench.timing.bulk.ceil() as u64 + 2;
    let args: Vec<String> = [
        "leaks",
        "--json",
        "-d",
        &format!("{seconds}s"),
        "--stacks",
        "default",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let tracer = Tracer::start(&bench.tcptrace, &args, true)?;
    bulk(bench)?;
    let exit = tracer.wait()?;
    let report = leak_report(&exit.stdout)?;
    let recv = report["health"]["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["program"] == "sock_recv_length")
        .context("no sock_recv_length in the report's programs")?;
    let runs = recv["runs"].as_u64().unwrap_or(0);
    let ns = recv["run_ns"].as_u64().unwrap_or(0);
    Ok((runs, ns as f64 / runs.max(1) as f64))
}

fn syscalls(bin: &Bench) -> Result<f64> {
    let looper = Proc::spawn(
        &bin.peer,
        &[
            "syscall-loop",
            "--seconds",
            &bin.timing.syscalls.to_string(),
        ],
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

/// The leaks the report gives the churn server: it made them, and it is the
/// only process whose leaks are counted (other programs on a shared host may
/// leak too).
fn server_leaks(report: &serde_json::Value, server_pid: u32) -> Option<u64> {
    let processes = report["processes"].as_array()?;
    let held: u64 = processes
        .iter()
        .filter(|p| p["pid"].as_u64() == Some(u64::from(server_pid)))
        .map(|p| p["close_wait"].as_u64().unwrap_or(0) + p["closed_held"].as_u64().unwrap_or(0))
        .sum();
    if report["truncated"].as_bool() == Some(true) && held == 0 {
        // A page that left the server out says nothing about it.
        return None;
    }
    Some(held)
}

/// A tracer of either kind, running.
enum Running {
    Tcptrace(Tracer),
    Peer(bpftrace::Running),
}

enum Exited {
    /// What it said at exit, `serve`'s /leaks, and how long it ran.
    Tcptrace(TracerExit, Option<serde_json::Value>, Duration),
    Peer(PeerExit),
}

fn start(bench: &Bench, config: Config, seconds: u64) -> Result<Option<Running>> {
    if let Config::Peer(peer) = config {
        let Availability::Runs { private_tracefs } = bench.bpftrace else {
            anyhow::bail!("bpftrace does not run here");
        };
        return Ok(Some(Running::Peer(bpftrace::start(peer, private_tracefs)?)));
    }
    config
        .tracer_args(seconds)
        .map(|args| {
            Tracer::start(bench.tcptrace_for(config), &args, config != Config::Watch)
                .map(Running::Tcptrace)
        })
        .transpose()
}

/// The agent's threads that name the leaks' code paths: their work is paid
/// once per binary (reading its unwind tables and debug info) and per
/// leaking stack, not per event.
const CODE_PATH_THREADS: [&str; 2] = ["unwind", "symbolize"];

/// A running process's CPU so far (clock-tick resolution).
#[derive(Clone, Copy)]
struct CpuSoFar {
    /// User and system time of every thread, exited ones included.
    all: Duration,
    /// That of its CODE_PATH_THREADS.
    code_paths: Duration,
}

fn cpu_so_far(pid: u32) -> Option<CpuSoFar> {
    let (_, all) = stat_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let code_paths = fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|task| stat_cpu(&fs::read_to_string(task.path().join("stat")).ok()?))
        .filter(|(comm, _)| CODE_PATH_THREADS.contains(&comm.as_str()))
        .map(|(_, cpu)| cpu)
        .sum();
    Some(CpuSoFar { all, code_paths })
}

/// The command and the user + system time of a `/proc/.../stat` line.
fn stat_cpu(stat: &str) -> Option<(String, Duration)> {
    // The command, field 2, may hold spaces and parentheses: fields 3 on
    // follow its last ')'. utime and stime are fields 14 and 15.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((comm, Duration::from_nanos(ticks * 1_000_000_000 / hz)))
}

/// Stack copies taken and refused a second, from a report's counters
/// over `seconds` of the tracer's run; `None` where it has none.
pub(super) fn copies_per_second(report: &serde_json::Value, seconds: f64) -> Option<(f64, f64)> {
    let stacks = &report["stacks"];
    let seconds = seconds.max(1e-3);
    Some((
        stacks["copies_taken"].as_u64()? as f64 / seconds,
        stacks["copies_refused"].as_u64()? as f64 / seconds,
    ))
}

pub(super) fn run_round(bench: &Bench, config: Config, cycle: usize) -> Result<Round> {
    let tracer_started = std::time::Instant::now();
    let tracer = start(bench, config, bench.timing.trace_seconds())?;
    let mut round = Round {
        cycle,
        ..Round::default()
    };
    let pid = tracer.as_ref().map(|t| match t {
        Running::Tcptrace(tracer) => tracer.pid(),
        Running::Peer(peer) => peer.pid(),
    });
    let load_began = pid.and_then(cpu_so_far);
    let mut exited = None;
    let churned = churn(bench, bench.timing.churn, |_| {
        let (bytes, recvs) = bulk(bench)?;
        round.bulk_bytes_per_second = bytes;
        round.recvs_per_second = recvs;
        round.syscalls_per_second = syscalls(bench)?;
        if let (Some(began), Some(ended)) = (load_began, pid.and_then(cpu_so_far)) {
            round.agent_cpu_under_load = Some(ended.all.saturating_sub(began.all));
            round.code_path_cpu_under_load =
                Some(ended.code_paths.saturating_sub(began.code_paths));
        }
        exited = match tracer {
            None => None,
            Some(Running::Peer(peer)) => Some(Exited::Peer(peer.stop()?)),
            Some(Running::Tcptrace(tracer)) => {
                let mut served = None;
                if config.as_current() == Config::Serve {
                    // Past one refresh after the load, as a scrape would see it.
                    thread::sleep(Duration::from_secs(SERVE_REPORT_DELAY_S));
                    served = Some(tracer.leaks_over_http()?);
                    tracer.terminate();
                }
                let exit = tracer.wait()?;
                Some(Exited::Tcptrace(exit, served, tracer_started.elapsed()))
            }
        };
        Ok(())
    })?;
    round.churn_per_second = churned.per_second;
    round.connections = Some(churned.connections);
    round.leaked = churned.leaked;
    match exited {
        None => {}
        Some(Exited::Peer(exit)) => {
            round.agent_cpu = Some(exit.cpu);
            round.agent_peak_rss_kib = Some(exit.peak_rss_kib);
            round.events = exit.transitions;
        }
        Some(Exited::Tcptrace(exit, served, ran)) => {
            round.agent_cpu = Some(exit.cpu);
            round.agent_peak_rss_kib = Some(exit.peak_rss_kib);
            let report = match config.as_current() {
                Config::Watch => {
                    let summary = summary_fields(&exit.stderr)?;
                    round.events = Some(summary["events"].parse()?);
                    round.drops = Some(summary["drops"].parse()?);
                    None
                }
                Config::Serve => Some(served.context("serve's /leaks")?),
                _ => Some(leak_report(&exit.stdout)?),
            };
            if let Some(report) = report {
                round.events = report["health"]["events"].as_u64();
                round.drops = report["health"]["drops"].as_u64();
                round.leaks_reported = server_leaks(&report, churned.server_pid);
                round.copies_per_second = copies_per_second(&report, ran.as_secs_f64());
            }
        }
    }
    Ok(round)
}

pub(super) fn kernel_cost(bench: &Bench, config: Config) -> Result<KernelCost> {
    let stats = bench.timing.stats;
    let seconds = stats.ceil() as u64 + 3;
    let tracer = if config == Config::Serve {
        // serve's probe (per-owner counts besides leak mode) runs as `top`,
        // which loads the same and reports on its own when its time is up.
        let args: Vec<String> = ["top", "--json", "-d", &format!("{seconds}s"), "-i", "1s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Running::Tcptrace(Tracer::start(&bench.tcptrace, &args, true)?)
    } else {
        start(bench, config, seconds)?.context("a traced configuration")?
    };
    let mut exited = None;
    churn(bench, stats, |_| {
        exited = Some(match tracer {
            Running::Tcptrace(tracer) => Exited::Tcptrace(tracer.wait()?, None, Duration::ZERO),
            Running::Peer(peer) => Exited::Peer(peer.stop()?),
        });
        Ok(())
    })?;
    let mut cost = KernelCost::default();
    match exited.context("waited")? {
        Exited::Peer(exit) => {
            cost.programs = exit.programs;
            cost.delivered = exit.transitions;
            cost.agent_cpu = exit.cpu;
        }
        Exited::Tcptrace(exit, ..) => {
            cost.agent_cpu = exit.cpu;
            if config == Config::Watch {
                let summary = summary_fields(&exit.stderr)?;
                cost.programs.push((
                    "inet_sock_set_state".into(),
                    summary["probe_runs"].parse()?,
                    summary["probe_run_ns"].parse()?,
                ));
                cost.delivered = Some(summary["events"].parse()?);
                cost.drops = Some(summary["drops"].parse()?);
            } else {
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
                cost.delivered = report["health"]["events"].as_u64();
                cost.drops = report["health"]["drops"].as_u64();
            }
        }
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_command_and_cpu_whatever_the_command_holds() {
        // SAFETY: sysconf reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let line = format!(
            "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 {} {} 0 0 20 0 1 0",
            hz * 3,
            hz / 2
        );
        let (comm, cpu) = stat_cpu(&line).unwrap();
        assert_eq!(comm, "a (b) c");
        assert_eq!(cpu, Duration::from_millis(3500));
        assert_eq!(stat_cpu("4242 (short"), None);
    }
}
