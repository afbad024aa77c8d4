//! Command line: what the user may ask for, and its translation into options.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tcptrace_common::TcpState;

use crate::{
    build_info,
    commands::leaks::FlamegraphOutput,
    commands::serve::{DEFAULT_LISTEN, ServeOptions},
    commands::top::TopOptions,
    commands::watch::WatchOptions,
    engine::monitor::LeaksOptions,
    model::filter::{Filter, IpFamily},
    model::leak_report::ReportFilter,
    probe::loader::{
        DEFAULT_MAX_SOCKETS, DEFAULT_RING_BUFFER_BYTES, DEFAULT_STACK_BUDGET, ProbeOptions,
        StackLevel, validate_max_sockets, validate_ring_buffer_bytes,
    },
    view::flamegraph::FlamegraphKind,
    view::metrics::MetricsLimits,
    view::report::DEFAULT_STACK_DEPTH,
    view::top::{RowFilter, SortKey},
    view::watch::Format,
};

#[derive(Debug, Parser)]
#[command(
    name = "tcptrace",
    version,
    long_version = build_info::LONG_VERSION,
    about = "Finds TCP socket leaks with eBPF: which process, which peers, how old, which code path",
    after_help = "Without a command, tcptrace runs `leaks`.\nExit status: 0 ok, 1 runtime error, 2 usage error, 3 leaks found (with --fail-on-leak).\nNeeds root (or CAP_BPF and CAP_PERFMON) and a kernel with BTF and the BPF features of Linux 5.15 (or backported, as in RHEL 9)."
)]
// Negative numbers reach the value parsers, which say what is allowed,
// instead of clap's "unexpected argument '-1'".
#[command(args_conflicts_with_subcommands = true, allow_negative_numbers = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Plain `tcptrace [OPTIONS]` is `tcptrace leaks [OPTIONS]`.
    #[command(flatten)]
    pub leaks: LeaksArgs,
}

impl Cli {
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Leaks(self.leaks))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Find leaking sockets: CLOSE_WAIT or closed-but-held past --min-age, per holder process.
    #[command(after_help = LEAKS_EXAMPLES, allow_negative_numbers = true)]
    Leaks(LeaksArgs),
    /// Stream every TCP state transition on this host, one line each.
    #[command(after_help = WATCH_EXAMPLES, allow_negative_numbers = true)]
    Watch(WatchArgs),
    /// Per-process TCP activity, sockets per state, leaks and diagnoses, refreshed.
    #[command(after_help = TOP_EXAMPLES, allow_negative_numbers = true)]
    Top(TopArgs),
    /// Long-running agent: Prometheus /metrics, /leaks JSON, a live page at /, new leaks logged on stderr.
    #[command(after_help = SERVE_EXAMPLES, allow_negative_numbers = true)]
    Serve(ServeArgs),
}

const TOP_EXAMPLES: &str = "\
Examples:
  tcptrace top                           every process doing TCP, refreshed every 2 s
  tcptrace top --sort time-wait          the biggest TIME_WAIT producers first
  tcptrace top --comm nginx --json -d 1m one JSON snapshot per refresh, for a minute

Processes are the sockets' owners (never the task that happened to be on the
CPU). Counts are since tcptrace started; sockets per state come from the
kernel's table, TIME_WAIT included (attributed through the socket cookie the
kernel keeps for the TIME_WAIT entry). RESETS counts moves to CLOSE straight
from ESTABLISHED, CLOSE_WAIT, FIN_WAIT1 or SYN_RECV: a reset or an abortive close.";

const SERVE_EXAMPLES: &str = "\
Examples:
  tcptrace serve                         http://127.0.0.1:9464/ (a live page), /metrics and /leaks
  tcptrace serve --listen 0.0.0.0:9464   reachable from other hosts (a Prometheus elsewhere)

Stops cleanly on SIGTERM or Ctrl-C. Each new leak is also logged on stderr as
one JSON line (event \"tcp_socket_leak\").";

const WATCH_EXAMPLES: &str = "\
Examples:
  tcptrace watch                         every transition, as a table
  tcptrace watch --state close_wait      sockets entering or leaving CLOSE_WAIT
  tcptrace watch --pid 1234 --json       one process, one JSON object per line
  tcptrace watch --port 5432 -d 30s      both sides of port 5432, for 30 seconds

PID is the socket's owner, known only from transitions that run in the owner's
own syscall (connect, listen, close); '-' means unknown, '~PID' means inferred
from the listening socket an accepted connection arrived on.
FIN_WAIT2/CLOSING -> CLOSE is marked (TIME_WAIT?): the kernel then usually
keeps a TIME_WAIT minisock, which this tracepoint never shows.";

const LEAKS_EXAMPLES: &str = "\
Examples:
  tcptrace                               live view of leaking sockets, refreshed every second
  tcptrace leaks --once                  what is in CLOSE_WAIT now, with its holders; exit
  tcptrace leaks -d 5m --json            observe five minutes, one JSON report
  tcptrace leaks --min-age 10s --fail-on-leak -d 1m    exit 3 if anything leaks
  tcptrace leaks -d 5m --flamegraph leaks.svg           the leaking code paths as a flame graph

A leak is a socket still in CLOSE_WAIT after --min-age (the peer closed, the
application did not), or one that reached CLOSE (usually a peer RST) while an
fd still refers to it. Holders are the processes with an fd to the socket now.
Ages marked >= are lower bounds: the socket was already leaking when first seen.";

#[derive(Debug, Args)]
pub struct LeaksArgs {
    /// How long a socket must be stuck to count as a leak, e.g. 500ms, 10s, 5m; 0 reports at once.
    #[arg(long, value_parser = parse_age, default_value = "30s")]
    pub min_age: Duration,

    /// Observe this long, print one final report, exit.
    #[arg(short, long, value_parser = parse_duration, conflicts_with = "once")]
    pub duration: Option<Duration>,

    /// Read the kernel's socket table now, report what is in CLOSE_WAIT with its holders, exit.
    #[arg(long)]
    pub once: bool,

    /// Without --duration: time between reports, from 100ms to 1h (default: 1s on a terminal,
    /// where the view is redrawn; 10s otherwise, where each report is appended).
    #[arg(long, value_parser = parse_interval, conflicts_with_all = ["once", "duration"])]
    pub interval: Option<Duration>,

    /// Reports as JSON (one document per report).
    #[arg(long)]
    pub json: bool,

    /// Exit with status 3 when the final report has any leak.
    #[arg(long)]
    pub fail_on_leak: bool,

    /// Only sockets held by this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only sockets with this local or remote port.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Code-path stacks: off; default (a copy of the user stack at each
    /// socket's origin (connect, accept, first read or first write) and at
    /// its read of EOF, under the --stack-budget, unwound only for sockets
    /// left open); full (the same with no budget).
    #[arg(long, value_name = "LEVEL", value_parser = parse_stack_level, default_value = "default")]
    pub stacks: StackLevel,

    /// Stack copies a second, host-wide, with --stacks default (1 to
    /// 1000000): under churn the rest are refused and counted. A process
    /// that leaks without a code path gets a budget four times as large for
    /// its new sockets.
    #[arg(long, value_name = "N", value_parser = parse_stack_budget,
          default_value_t = DEFAULT_STACK_BUDGET)]
    pub stack_budget: u32,

    /// Python 3.9-3.13 frames with each stack copy: on (the probe walks the
    /// reading thread's frames, as py-spy does, so a Python program's
    /// functions are named with no flag) or off.
    #[arg(long, value_name = "ON|OFF", value_parser = parse_on_off, default_value = "on",
          action = clap::ArgAction::Set)]
    pub python_frames: bool,

    /// Frames of the program's own code shown per stack in the text report,
    /// 1 to 128; runtime and library frames between them are folded into one
    /// line each. JSON has every frame.
    #[arg(long, value_name = "N", value_parser = parse_stack_depth,
          default_value_t = DEFAULT_STACK_DEPTH)]
    pub stack_depth: usize,

    /// Also write the final report's leaking code paths to FILE as an
    /// interactive SVG flame graph: one root per holder process, a frame's
    /// width the leaked sockets whose stack passes through it.
    #[arg(long, value_name = "FILE")]
    pub flamegraph: Option<PathBuf>,

    /// The stack the flame graph draws: eof (the read of EOF that close()
    /// never followed) or origin (connect, accept, or the first read or
    /// write of data).
    #[arg(long, value_name = "KIND", value_parser = parse_flamegraph_kind,
          default_value = "eof", requires = "flamegraph")]
    pub flamegraph_kind: FlamegraphKind,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// Sizes of the probe's kernel buffers, shared by every command.
#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Kernel ring buffer size: a power of two from 4K to 256M, e.g. 4M.
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_buffer_size,
          default_value_t = DEFAULT_RING_BUFFER_BYTES)]
    pub ring_buffer_size: u32,

    /// CLOSE_WAIT sockets read at EOF more than once whose reads the probe
    /// counts at one time (for the EOF-spin diagnosis; about 80 bytes of kernel
    /// memory each, 1 to 4194304). Owners need no room: the probe keeps them in
    /// each socket.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SOCKETS,
          value_parser = parse_max_sockets)]
    pub max_sockets: u32,
}

impl KernelArgs {
    fn probe_options(&self) -> ProbeOptions {
        ProbeOptions {
            ring_buffer_bytes: self.ring_buffer_size,
            max_sockets: self.max_sockets,
            ..ProbeOptions::default()
        }
    }
}

pub fn parse_stack_level(text: &str) -> Result<StackLevel, String> {
    match text.trim() {
        "off" => Ok(StackLevel::Off),
        "default" => Ok(StackLevel::Sampled),
        "full" => Ok(StackLevel::Full),
        other => Err(format!(
            "unknown stack level '{other}'; one of: off, default, full"
        )),
    }
}

pub fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("'{other}': on or off")),
    }
}

pub fn parse_stack_budget(text: &str) -> Result<u32, String> {
    const MAX: u32 = 1_000_000;
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{text}' is not a stack budget: copies a second, from 1 to {MAX}"
        )),
    }
}

pub fn parse_flamegraph_kind(text: &str) -> Result<FlamegraphKind, String> {
    FlamegraphKind::parse(text).ok_or_else(|| {
        format!(
            "unknown flame graph kind '{text}'; one of: {}",
            FlamegraphKind::NAMES
        )
    })
}

impl LeaksArgs {
    /// `--flamegraph`, taken out before the rest becomes [`LeaksOptions`].
    pub fn take_flamegraph(&mut self) -> Option<FlamegraphOutput> {
        Some(FlamegraphOutput {
            path: self.flamegraph.take()?,
            kind: self.flamegraph_kind,
        })
    }

    pub fn into_options(self) -> LeaksOptions {
        LeaksOptions {
            // No in-kernel filters: the holder, not the owner, decides what
            // is shown, and reconciliation needs every transition.
            probe: ProbeOptions {
                stacks: self.stacks,
                stack_budget: self.stack_budget,
                python_frames: self.python_frames,
                ..self.kernel.probe_options()
            },
            min_age: self.min_age,
            duration: self.duration,
            interval: self.interval,
            once: self.once,
            json: self.json,
            filter: ReportFilter {
                pid: self.pid,
                port: self.port,
                own_listener: None,
            },
            stack_depth: self.stack_depth,
        }
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Only sockets owned by this process (tgid).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only sockets with this local or remote port.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Only transitions from or to this state (repeatable), e.g. close_wait.
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<TcpState>,

    /// Only IPv4 connections (including IPv4 peers of dual-stack sockets).
    #[arg(long, conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 connections.
    #[arg(long)]
    pub ipv6: bool,

    /// Stop by itself after this long, e.g. 10s, 500ms, 5m.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

impl WatchArgs {
    pub fn into_options(self) -> WatchOptions {
        let family = match (self.ipv4, self.ipv6) {
            (true, _) => Some(IpFamily::V4),
            (_, true) => Some(IpFamily::V6),
            _ => None,
        };
        WatchOptions {
            probe: ProbeOptions {
                owner_tgid_filter: self.pid,
                port_filter: self.port,
                ..self.kernel.probe_options()
            },
            filter: Filter {
                owner_pid: self.pid,
                port: self.port,
                states: self.states,
                family,
            },
            format: if self.json {
                Format::Json
            } else {
                Format::Text
            },
            duration: self.duration,
        }
    }
}

/// What `top` and `serve` share: the leak threshold and the probe.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// How long a socket must be stuck to count as a leak; 0 counts it at once.
    #[arg(long, value_parser = parse_age, default_value = "30s")]
    pub min_age: Duration,

    /// Code-path stacks for leaks: off, default or full (see `tcptrace leaks --help`).
    #[arg(long, value_name = "LEVEL", value_parser = parse_stack_level, default_value = "default")]
    pub stacks: StackLevel,

    /// Stack copies a second, host-wide (see `tcptrace leaks --help`).
    #[arg(long, value_name = "N", value_parser = parse_stack_budget,
          default_value_t = DEFAULT_STACK_BUDGET)]
    pub stack_budget: u32,

    /// Python frames with each stack copy: on or off (see `tcptrace leaks --help`).
    #[arg(long, value_name = "ON|OFF", value_parser = parse_on_off, default_value = "on",
          action = clap::ArgAction::Set)]
    pub python_frames: bool,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

impl HostArgs {
    fn leaks_options(self) -> LeaksOptions {
        LeaksOptions {
            probe: ProbeOptions {
                stacks: self.stacks,
                stack_budget: self.stack_budget,
                python_frames: self.python_frames,
                ..self.kernel.probe_options()
            },
            min_age: self.min_age,
            duration: None,
            interval: None,
            once: false,
            json: false,
            filter: ReportFilter::default(),
            stack_depth: DEFAULT_STACK_DEPTH,
        }
    }
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Sort by this column (numbers biggest first).
    #[arg(long, value_enum, default_value = "connect-rate")]
    pub sort: SortKey,

    /// Only this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only processes with this command name (as in /proc/PID/comm).
    #[arg(long, value_name = "COMM")]
    pub comm: Option<String>,

    /// One JSON snapshot per line instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Time between refreshes.
    #[arg(short, long, value_parser = parse_interval, default_value = "2s")]
    pub interval: Duration,

    /// Stop by itself after this long, with a final snapshot.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Processes shown in the table, 1 to 100000 (JSON has all).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rows: u64,

    #[command(flatten)]
    pub host: HostArgs,
}

impl TopArgs {
    pub fn into_options(self) -> TopOptions {
        TopOptions {
            leaks: self.host.leaks_options(),
            interval: self.interval,
            duration: self.duration,
            json: self.json,
            sort: self.sort,
            filter: RowFilter {
                pid: self.pid,
                comm: self.comm,
            },
            rows: usize::try_from(self.rows).unwrap_or(usize::MAX),
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve on. Loopback by default: another address must be asked for.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,

    /// How often the kernel's table is read and the metrics recomputed.
    #[arg(short, long, value_parser = parse_interval, default_value = "5s")]
    pub interval: Duration,

    /// Comms with series of their own; the rest are folded into comm="other".
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub top_comms: u64,

    /// Leaking processes with a pid-labelled series.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub top_leaking_pids: u64,

    #[command(flatten)]
    pub host: HostArgs,
}

impl ServeArgs {
    pub fn into_options(self) -> ServeOptions {
        ServeOptions {
            leaks: self.host.leaks_options(),
            listen: self.listen,
            interval: self.interval,
            // Both bounded to 1000 by the parser.
            limits: MetricsLimits {
                comms: self.top_comms as usize,
                leaking_pids: self.top_leaking_pids as usize,
            },
        }
    }
}

pub fn parse_state(text: &str) -> Result<TcpState, String> {
    let wanted = text.trim().to_ascii_uppercase().replace('-', "_");
    TcpState::ALL
        .into_iter()
        .find(|state| state.name() == wanted)
        .ok_or_else(|| {
            let names: Vec<_> = TcpState::ALL
                .iter()
                .map(|s| s.name().to_lowercase())
                .collect();
            format!("unknown TCP state '{text}'; one of: {}", names.join(", "))
        })
}

/// The longest age or run: beyond it a duration is a typo, and far beyond
/// it one overflows the clock's arithmetic.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
/// Refreshes and reports: faster would cost more than the tracing, slower
/// shows nothing live.
const REFRESH_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

fn parse_length(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration like 0, 500ms, 10s or 5m ({e})"))
}

/// A length of time, zero included, up to a year.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let age = parse_length(text)?;
    if age > LONGEST {
        return Err(format!(
            "'{text}' is longer than a year (365d), the longest accepted"
        ));
    }
    Ok(age)
}

/// How long to run (`--duration`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_age(text)?;
    if duration.is_zero() {
        return Err("a duration of zero would stop at once".into());
    }
    Ok(duration)
}

/// Time between refreshes or reports (`--interval`).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_length(text)?;
    if interval.is_zero() {
        return Err("an interval of zero would refresh without pause".into());
    }
    if !REFRESH_RANGE.contains(&interval) {
        return Err(format!(
            "'{text}' is outside 100ms to 1h, the range of times between refreshes"
        ));
    }
    Ok(interval)
}

pub fn parse_stack_depth(text: &str) -> Result<usize, String> {
    const MAX: usize = 128;
    match text.trim().parse::<usize>() {
        Ok(depth @ 1..=MAX) => Ok(depth),
        _ => Err(format!(
            "'{text}' is not a stack depth: a number of frames from 1 to {MAX}"
        )),
    }
}

pub fn parse_max_sockets(text: &str) -> Result<u32, String> {
    let sockets: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of sockets"))?;
    validate_max_sockets(sockets).map_err(|e| e.to_string())
}

pub fn parse_ring_buffer_size(text: &str) -> Result<u32, String> {
    let trimmed = text.trim();
    let (digits, multiplier) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (trimmed, 1u64),
        Some((at, _)) => {
            let multiplier = match trimmed[at..].to_ascii_uppercase().as_str() {
                "K" | "KB" | "KIB" => 1 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                _ => return Err(format!("'{text}' is not a size like 4096, 256K or 4M")),
            };
            (&trimmed[..at], multiplier)
        }
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("'{text}' is not a size like 4096, 256K or 4M (at most 256M)"))?;
    validate_ring_buffer_bytes(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn stack_depth_is_checked() {
        assert_eq!(parse_stack_depth("1"), Ok(1));
        assert_eq!(parse_stack_depth(" 128 "), Ok(128));
        for bad in ["0", "129", "-1", "eight", ""] {
            let error = parse_stack_depth(bad).unwrap_err();
            assert!(error.contains("from 1 to 128"), "{bad}: {error}");
        }
        let Command::Leaks(args) = Cli::try_parse_from(["tcptrace", "leaks"])
            .unwrap()
            .into_command()
        else {
            panic!("leaks")
        };
        assert_eq!(args.stack_depth, DEFAULT_STACK_DEPTH);
        let Command::Leaks(args) = Cli::try_parse_from(["tcptrace", "leaks", "--stack-depth", "3"])
            .unwrap()
            .into_command()
        else {
            panic!("leaks")
        };
        assert_eq!(args.into_options().stack_depth, 3);
        assert!(Cli::try_parse_from(["tcptrace", "leaks", "--stack-depth", "0"]).is_err());
    }

    #[test]
    fn python_frames_are_on_unless_turned_off() {
        let python_frames = |args: &[&str]| match Cli::try_parse_from(args).ok()?.command? {
            Command::Leaks(args) => Some(args.into_options().probe.python_frames),
            Command::Serve(args) => Some(args.into_options().leaks.probe.python_frames),
            _ => None,
        };
        assert_eq!(python_frames(&["tcptrace", "leaks"]), Some(true));
        assert_eq!(
            python_frames(&["tcptrace", "leaks", "--python-frames", "off"]),
            Some(false)
        );
        assert_eq!(
            python_frames(&["tcptrace", "serve", "--python-frames", "off"]),
            Some(false)
        );
        assert_eq!(
            python_frames(&["tcptrace", "leaks", "--python-frames"]),
            None
        );
        assert_eq!(
            python_frames(&["tcptrace", "leaks", "--python-frames", "yes"]),
            None
        );
    }

    #[test]
    fn states_parse_in_any_common_spelling() {
        assert_eq!(parse_state("close_wait"), Ok(TcpState::CloseWait));
        assert_eq!(parse_state("CLOSE-WAIT"), Ok(TcpState::CloseWait));
        assert_eq!(parse_state("fin_wait1"), Ok(TcpState::FinWait1));
        let error = parse_state("closewait").unwrap_err();
        assert!(error.contains("close_wait"), "{error}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_interval("0s").unwrap_err().contains("interval"));
        assert_eq!(parse_ring_buffer_size("4M"), Ok(4 << 20));
        assert_eq!(parse_ring_buffer_size("4096"), Ok(4096));
        let too_big = parse_ring_buffer_size("1G").unwrap_err();
        assert!(
            too_big.contains("1024 MiB") && too_big.contains("256 MiB"),
            "{too_big}"
        );
        assert_eq!(parse_max_sockets("65536"), Ok(65536));
        let too_many = parse_max_sockets("100000000").unwrap_err();
        assert!(
            too_many.contains("about 7629 MiB") && too_many.contains("at most 4194304"),
            "{too_many}"
        );
        assert!(parse_max_sockets("0").is_err());
        assert_eq!(parse_ring_buffer_size("256KiB"), Ok(256 << 10));
        assert!(parse_ring_buffer_size("3M").is_err(), "not a power of two");
        assert!(parse_ring_buffer_size("8G").is_err(), "too large");
        assert!(parse_ring_buffer_size("4X").is_err());
    }

    #[test]
    fn filters_reach_both_kernel_and_userspace() {
        let cli = Cli::try_parse_from([
            "tcptrace", "watch", "--pid", "42", "--port", "80", "--state", "listen", "--ipv6",
        ])
        .unwrap();
        let Some(Command::Watch(args)) = cli.command else {
            panic!("parsed as watch");
        };
        let options = args.into_options();
        assert_eq!(options.probe.owner_tgid_filter, Some(42));
        assert_eq!(options.probe.port_filter, Some(80));
        assert_eq!(options.filter.owner_pid, Some(42));
        assert_eq!(options.filter.states, vec![TcpState::Listen]);
        assert_eq!(options.filter.family, Some(IpFamily::V6));
        assert!(Cli::try_parse_from(["tcptrace", "watch", "--ipv4", "--ipv6"]).is_err());
        assert!(Cli::try_parse_from(["tcptrace", "watch", "--port", "0"]).is_err());
    }

    #[test]
    fn plain_tcptrace_runs_leaks_with_defaults() {
        let Command::Leaks(args) = Cli::try_parse_from(["tcptrace"]).unwrap().into_command() else {
            panic!("expected leaks");
        };
        assert_eq!(args.min_age, Duration::from_secs(30));
        assert!(!args.once && !args.json && !args.fail_on_leak);
        let Some(Command::Leaks(args)) =
            Cli::try_parse_from(["tcptrace", "leaks", "--min-age", "500ms", "--pid", "7"])
                .unwrap()
                .command
        else {
            panic!("expected leaks");
        };
        let options = args.into_options();
        assert_eq!(options.min_age, Duration::from_millis(500));
        assert_eq!(options.filter.pid, Some(7));
        assert_eq!(
            options.probe.owner_tgid_filter, None,
            "no in-kernel filter in leak mode"
        );
        assert!(Cli::try_parse_from(["tcptrace", "leaks", "--once", "-d", "1s"]).is_err());
        let Command::Leaks(args) = Cli::try_parse_from(["tcptrace", "--min-age", "2s", "--json"])
            .unwrap()
            .into_command()
        else {
            panic!("expected leaks");
        };
        assert_eq!(args.min_age, Duration::from_secs(2));
        assert!(args.json);
    }

    #[test]
    fn top_and_serve_options() {
        let Some(Command::Top(args)) = Cli::try_parse_from([
            "tcptrace",
            "top",
            "--sort",
            "time-wait",
            "--comm",
            "nginx",
            "--json",
            "-i",
            "1s",
        ])
        .unwrap()
        .command
        else {
            panic!("expected top");
        };
        let options = args.into_options();
        assert_eq!(options.sort, SortKey::TimeWait);
        assert_eq!(options.filter.comm.as_deref(), Some("nginx"));
        assert_eq!(options.interval, Duration::from_secs(1));
        assert!(options.json);
        assert!(Cli::try_parse_from(["tcptrace", "top", "--sort", "bogus"]).is_err());

        let Some(Command::Serve(args)) =
            Cli::try_parse_from(["tcptrace", "serve"]).unwrap().command
        else {
            panic!("expected serve");
        };
        let options = args.into_options();
        assert_eq!(
            options.listen,
            "127.0.0.1:9464".parse().unwrap(),
            "loopback unless asked"
        );
        assert_eq!(options.limits.comms, 20);
        assert!(Cli::try_parse_from(["tcptrace", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["tcptrace", "serve", "--top-comms", "0"]).is_err());
    }
}
