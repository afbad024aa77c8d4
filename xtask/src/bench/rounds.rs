//! One benchmark round: the load generators against a leaking server, with
//! or without a tracer, and what each side counted; and the short runs with
//! bpf_stats enabled that measure the probe's in-kernel cost.

use std::{collections::HashMap, fs, thread, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    BPF_STATS, BULK_SECONDS, Binaries, CHURN_SECONDS, CLIENT_THREADS, Config, KernelCost,
    LEAK_EVERY, Round, SERVE_REPORT_DELAY_S, STATS_SECONDS, SYSCALL_SECONDS, TRACE_SECONDS,
};
use crate::harness::{Proc, Tracer, fields};

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

pub(super) fn run_round(bin: &Binaries, config: Config) -> Result<Round> {
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

pub(super) fn kernel_cost(bin: &Binaries, config: Config) -> Result<KernelCost> {
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
