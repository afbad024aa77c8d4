//! Time to code path: how long after tcptrace starts its live report names
//! the function that leaks, on a server under full churn whose leak never
//! reads EOF (testpeer's read-once-server: one connection in LEAK_EVERY is
//! kept by `serve_and_forget` after its only read, the rest are closed by
//! `serve_and_close` after EOF; both read through the same function).
//! Once with no leak before tcptrace starts, and once with PRELEAKED of
//! them already held: those are older than tcptrace and can have no stack,
//! so the next leak must be found by aiming the budget at their process.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::{Bench, CLIENT_THREADS, LEAK_EVERY, rounds::copies_per_second};
use crate::harness::{Proc, Tracer};

/// Leaks the server holds before tcptrace starts, in that scenario.
pub(super) const PRELEAKED: u64 = 200;
pub(super) const LEAKY: &str = "serve_and_forget";
pub(super) const HEALTHY: &str = "serve_and_close";
pub(super) const MIN_AGE: &str = "2s";
/// The live report's interval: a time is known to this much.
pub(super) const REPORT_INTERVAL: &str = "500ms";
/// A run whose report has not named the function by then counts as not
/// named (the load lasts a little longer).
pub(super) const GIVE_UP: Duration = Duration::from_secs(25);
/// Load runs this long before tcptrace starts.
const LOAD_HEAD_START: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scenario {
    /// No leak before tcptrace starts.
    Fresh,
    /// PRELEAKED leaks held before it starts.
    Preleaked,
}

impl Scenario {
    pub(super) const ALL: [Self; 2] = [Self::Fresh, Self::Preleaked];

    pub(super) fn leaks_before(self) -> u64 {
        match self {
            Self::Fresh => 0,
            Self::Preleaked => PRELEAKED,
        }
    }
}

/// One run of one scenario.
#[derive(Clone, Debug)]
pub(super) struct PathRun {
    /// The server's connections a second while the load ran, tcptrace
    /// starting and running included.
    pub(super) per_second: f64,
    /// From tcptrace's start (its spawn, probe loading included) to the
    /// first report that named LEAKY; `None` if none did before GIVE_UP.
    pub(super) named_after: Option<Duration>,
    /// Some report named HEALTHY as a code path of the leaks.
    pub(super) named_healthy: bool,
    /// At the report that named LEAKY: sockets with a code path, and
    /// sockets, of the server's leaks.
    pub(super) coverage: Option<(u64, u64)>,
    /// Stack copies taken and refused a second, over tcptrace's run.
    pub(super) copies_per_second: Option<(f64, f64)>,
}

/// `function` as a frame's name in `frames`, not part of a longer one.
fn names(frames: &serde_json::Value, function: &str) -> bool {
    let part_of_name = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    frames.as_array().into_iter().flatten().any(|frame| {
        let frame = frame.as_str().unwrap_or_default();
        frame.match_indices(function).any(|(at, _)| {
            !part_of_name(frame[..at].chars().next_back())
                && !part_of_name(frame[at + function.len()..].chars().next())
        })
    })
}

/// What one live report says of the server: whether its code paths name
/// `function`, and its coverage.
pub(super) fn report_names(
    report: &serde_json::Value,
    server_pid: u32,
    function: &str,
) -> (bool, Option<(u64, u64)>) {
    let Some(entry) = report["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pid"].as_u64() == Some(u64::from(server_pid)))
    else {
        return (false, None);
    };
    let named = entry["code_paths"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|path| names(&path["origin_stack"], function) || names(&path["eof_stack"], function));
    let coverage = &entry["code_path_coverage"];
    let coverage = coverage["sockets_with_code_path"]
        .as_u64()
        .zip(coverage["sockets"].as_u64());
    (named, coverage)
}

pub(super) fn run(bench: &Bench, scenario: Scenario) -> Result<PathRun> {
    let mut server = Proc::spawn(
        &bench.peer,
        &[
            "read-once-server",
            "--addr",
            "127.0.0.1:0",
            "--leak-every",
            &LEAK_EVERY.to_string(),
            "--leak-first",
            &scenario.leaks_before().to_string(),
        ],
    )?;
    let port = server.expect("listening")?["port"].clone();
    let connect = format!("127.0.0.1:{port}");
    let server_pid = server.pid();
    let mut before_load = 0u64;
    if scenario == Scenario::Preleaked {
        // Paced, so that few more than PRELEAKED leak before tcptrace starts.
        let seed = Proc::spawn(
            &bench.peer,
            &[
                "churn-client",
                "--connect",
                &connect,
                "--seconds",
                "0.5",
                "--per-second",
                "1000",
            ],
        )?;
        before_load = seed.expect("done")?["connections"].parse()?;
        server.expect("preleaked")?;
    }
    let load_seconds = (LOAD_HEAD_START + GIVE_UP + Duration::from_secs(2)).as_secs_f64();
    let client = Proc::spawn(
        &bench.peer,
        &[
            "churn-client",
            "--connect",
            &connect,
            "--threads",
            CLIENT_THREADS,
            "--seconds",
            &load_seconds.to_string(),
        ],
    )?;
    let load_started = Instant::now();
    std::thread::sleep(LOAD_HEAD_START);

    let started = Instant::now();
    let args: Vec<String> = [
        "leaks",
        "--json",
        "--min-age",
        MIN_AGE,
        "--interval",
        REPORT_INTERVAL,
        "--pid",
        &server_pid.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let tracer = Tracer::start(&bench.tcptrace, &args, true)?;
    let mut named_after = None;
    let mut named_healthy = false;
    let mut coverage = None;
    let mut last = None;
    while named_after.is_none() && started.elapsed() < GIVE_UP {
        let Some(line) = tracer
            .proc
            .next_line(GIVE_UP.saturating_sub(started.elapsed()))
        else {
            break;
        };
        let at = started.elapsed();
        let report: serde_json::Value =
            serde_json::from_str(&line).context("a live report that is not JSON")?;
        named_healthy |= report_names(&report, server_pid, HEALTHY).0;
        let (named, shown) = report_names(&report, server_pid, LEAKY);
        if named {
            named_after = Some(at);
            coverage = shown;
        }
        last = Some((at, report));
    }
    tracer.terminate();
    let stopped_at = load_started.elapsed();
    let exit = tracer.wait()?;
    if let Some(line) = exit.stdout.last()
        && let Ok(report) = serde_json::from_str::<serde_json::Value>(line)
    {
        named_healthy |= report_names(&report, server_pid, HEALTHY).0;
        last = Some((started.elapsed(), report));
    }
    let copies_per_second =
        last.and_then(|(at, report)| copies_per_second(&report, at.as_secs_f64()));
    // The client runs on past the tracer; the server's count says how many
    // connections it served while the tracer did.
    drop(client);
    server.close_stdin();
    let served: u64 = server.expect("served")?["connections"].parse()?;
    Ok(PathRun {
        per_second: served.saturating_sub(before_load) as f64 / stopped_at.as_secs_f64(),
        named_after,
        named_healthy,
        coverage,
        copies_per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pid: u32, origin: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "processes": [{
                "pid": pid,
                "code_path_coverage": {"sockets_with_code_path": 3, "sockets": 40},
                "code_paths": [{"origin_stack": origin, "eof_stack": []}],
            }]
        })
    }

    #[test]
    fn a_report_names_the_function_only_as_a_whole_name_of_that_process() {
        let named = report(
            7,
            &["read", "tcptrace_testpeer::read_once::serve_and_forget"],
        );
        assert_eq!(report_names(&named, 7, LEAKY), (true, Some((3, 40))));
        assert!(!report_names(&named, 8, LEAKY).0);
        assert!(!report_names(&named, 7, HEALTHY).0);
        let longer = report(7, &["serve_and_forget_later"]);
        assert!(!report_names(&longer, 7, LEAKY).0);
    }
}
