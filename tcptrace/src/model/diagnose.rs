//! The diagnoses an operator makes by hand from `ss` output and sysctls —
//! port exhaustion from TIME_WAIT, FIN_WAIT2 that never ends, reads spinning
//! on EOF, failing connects, full accept queues, leaks running a process out
//! of fds — as pure functions of counts the agent collects, so the
//! arithmetic behind each verdict is tested.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Serialize;
use thiserror::Error;

use crate::model::endpoint::endpoint;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    SocketLeak,
    TimeWaitExhaustion,
    FinWait2Stuck,
    EofSpin,
    ConnectFailures,
    SynBacklog,
}

impl Severity {
    pub const ALL: [Severity; 2] = [Severity::Warning, Severity::Critical];

    /// The same name serde writes.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl FindingKind {
    pub const ALL: [FindingKind; 6] = [
        FindingKind::SocketLeak,
        FindingKind::TimeWaitExhaustion,
        FindingKind::FinWait2Stuck,
        FindingKind::EofSpin,
        FindingKind::ConnectFailures,
        FindingKind::SynBacklog,
    ];

    /// The same name serde writes.
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::SocketLeak => "socket_leak",
            FindingKind::TimeWaitExhaustion => "time_wait_exhaustion",
            FindingKind::FinWait2Stuck => "fin_wait2_stuck",
            FindingKind::EofSpin => "eof_spin",
            FindingKind::ConnectFailures => "connect_failures",
            FindingKind::SynBacklog => "syn_backlog",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    /// What it is about: "pid 1234 (nginx)" or "127.0.0.1:5432" or "listener 0.0.0.0:80".
    pub subject: String,
    /// The numbers behind it, one line.
    pub evidence: String,
    /// One sentence: what it usually means and what to do.
    pub advice: &'static str,
}

/// Critical first, then by kind, then by subject, so the output is stable.
pub fn sort_findings(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.kind.name().cmp(b.kind.name()))
            .then_with(|| a.subject.cmp(&b.subject))
    });
}

// Kernel settings

/// How long a socket stays in TIME_WAIT on Linux (TCP_TIMEWAIT_LEN). It is
/// compiled in: net.ipv4.tcp_fin_timeout does not change it.
pub const TIME_WAIT_LENGTH: Duration = Duration::from_secs(60);

/// net.ipv4.tcp_tw_reuse_delay before it existed (Linux < 6.13): reuse was
/// allowed one second after the TIME_WAIT began.
const DEFAULT_REUSE_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("net.ipv4.ip_local_port_range: expected two port numbers, got {text:?}")]
    BadPortRange { text: String },
    #[error("net.ipv4.ip_local_port_range: the low port {low} is above the high port {high}")]
    InvertedPortRange { low: u16, high: u16 },
    #[error("net.ipv4.tcp_tw_reuse: expected 0, 1 or 2, got {text:?}")]
    BadTimeWaitReuse { text: String },
    #[error("net.ipv4.tcp_tw_reuse_delay: expected milliseconds, got {text:?}")]
    BadReuseDelay { text: String },
    #[error("net.ipv4.tcp_fin_timeout: expected seconds, got {text:?}")]
    BadFinTimeout { text: String },
}

/// net.ipv4.tcp_tw_reuse: may connect() take a port whose 4-tuple is still
/// in TIME_WAIT?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeWaitReuse {
    Off,
    On,
    /// 2, the default: only for connections over loopback.
    LoopbackOnly,
}

impl TimeWaitReuse {
    fn sysctl_text(self) -> &'static str {
        match self {
            TimeWaitReuse::Off => "off",
            TimeWaitReuse::On => "on",
            TimeWaitReuse::LoopbackOnly => "loopback-only",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PortSettings {
    /// net.ipv4.ip_local_port_range, inclusive.
    pub ephemeral_low: u16,
    pub ephemeral_high: u16,
    pub time_wait_reuse: TimeWaitReuse,
    /// net.ipv4.tcp_tw_reuse_delay: how old a TIME_WAIT must be to be reused.
    pub time_wait_reuse_delay: Duration,
    /// net.ipv4.tcp_fin_timeout: how long an orphaned FIN_WAIT2 lives.
    pub fin_timeout: Duration,
}

impl PortSettings {
    /// Parses the sysctl files' contents; `tw_reuse_delay_ms` is `None` on
    /// kernels before 6.13, which have no such file.
    pub fn parse(
        port_range: &str,
        tw_reuse: &str,
        tw_reuse_delay_ms: Option<&str>,
        fin_timeout: &str,
    ) -> Result<Self, SettingsError> {
        let (ephemeral_low, ephemeral_high) = parse_port_range(port_range)?;
        let time_wait_reuse = match tw_reuse.trim() {
            "0" => TimeWaitReuse::Off,
            "1" => TimeWaitReuse::On,
            "2" => TimeWaitReuse::LoopbackOnly,
            other => {
                return Err(SettingsError::BadTimeWaitReuse {
                    text: other.to_owned(),
                });
            }
        };
        let time_wait_reuse_delay = match tw_reuse_delay_ms {
            None => DEFAULT_REUSE_DELAY,
            Some(text) => text
                .trim()
                .parse()
                .map(Duration::from_millis)
                .map_err(|_| SettingsError::BadReuseDelay {
                    text: text.trim().to_owned(),
                })?,
        };
        let fin_timeout = fin_timeout
            .trim()
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| SettingsError::BadFinTimeout {
                text: fin_timeout.trim().to_owned(),
            })?;
        Ok(Self {
            ephemeral_low,
            ephemeral_high,
            time_wait_reuse,
            time_wait_reuse_delay,
            fin_timeout,
        })
    }

    /// Local ports connect() may pick from.
    pub fn ephemeral_ports(&self) -> u64 {
        if self.ephemeral_low > self.ephemeral_high {
            return 0;
        }
        u64::from(self.ephemeral_high) - u64::from(self.ephemeral_low) + 1
    }

    /// Whether connect() to `destination` may take over a TIME_WAIT 4-tuple.
    pub fn reuse_applies_to(&self, destination: IpAddr) -> bool {
        match self.time_wait_reuse {
            TimeWaitReuse::Off => false,
            TimeWaitReuse::On => true,
            // ::ffff:127.0.0.1 is loopback to the kernel too.
            TimeWaitReuse::LoopbackOnly => destination.to_canonical().is_loopback(),
        }
    }
}

/// "32768\t60999\n" -> (32768, 60999).
fn parse_port_range(text: &str) -> Result<(u16, u16), SettingsError> {
    let bad = || SettingsError::BadPortRange {
        text: text.trim().to_owned(),
    };
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high)), None) = (ports.next(), ports.next(), ports.next()) else {
        return Err(bad());
    };
    if low > high {
        return Err(SettingsError::InvertedPortRange { low, high });
    }
    Ok((low, high))
}

// 1. Ephemeral port exhaustion toward one destination

/// Sockets from ephemeral ports to one destination address and port.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationLoad {
    pub destination: SocketAddr,
    /// Sockets to it in TIME_WAIT from ephemeral local ports.
    pub time_wait: u64,
    /// Non-TIME_WAIT sockets to it from ephemeral ports.
    pub other_in_use: u64,
    pub connects_per_second: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PortExhaustion {
    /// Ephemeral ports.
    pub capacity: u64,
    /// Ports connect() cannot pick now.
    pub in_use: u64,
    /// Ports blocked once the connect rate has run for a TIME_WAIT length.
    pub steady_state_in_use: f64,
    /// Until connect() finds no port; `None`: the rate settles below capacity.
    pub seconds_left: Option<f64>,
}

/// When fewer seconds are left, the ports run out before anyone is paged
/// and has logged in. A countdown never exceeds the time a port stays
/// blocked (60 s, or the reuse delay), so with real settings every
/// countdown is critical; the warning band is for the steady state alone.
const PORTS_CRITICAL_SECONDS: f64 = 300.0;

/// A steady state above half the range leaves no room for a burst: a rate
/// that doubles (a retry storm, a deploy) exhausts it.
const PORTS_WARNING_SHARE: f64 = 0.5;

const TIME_WAIT_ADVICE: &str = "Short-lived connections to one destination use up the ephemeral ports; pool or reuse connections, widen net.ipv4.ip_local_port_range, or enable net.ipv4.tcp_tw_reuse.";

/// Linux gives connect() a local port whose 4-tuple is unique, so a 4-tuple
/// in TIME_WAIT blocks its port toward this destination until the TIME_WAIT
/// ends — or, with tcp_tw_reuse for this destination, until it is older
/// than tcp_tw_reuse_delay. (Reuse also needs TCP timestamps on the old
/// connection, which Linux peers negotiate by default.)
pub fn port_exhaustion(load: &DestinationLoad, settings: &PortSettings) -> PortExhaustion {
    let capacity = settings.ephemeral_ports();
    let rate = non_negative(load.connects_per_second);
    let reuse = settings.reuse_applies_to(load.destination.ip());
    let blocked_for = if reuse {
        settings.time_wait_reuse_delay
    } else {
        TIME_WAIT_LENGTH
    };
    // Each connection holds its port for `blocked_for` after it closes.
    let recently_closed = rate * blocked_for.as_secs_f64();
    let steady_state_in_use = load.other_in_use as f64 + recently_closed;
    let blocking_time_wait = if reuse {
        // Only TIME_WAITs younger than the delay block; at this rate there
        // are about `recently_closed` of them (a part of a port is a port).
        load.time_wait.min(recently_closed.ceil() as u64)
    } else {
        load.time_wait
    };
    let in_use = load.other_in_use.saturating_add(blocking_time_wait);
    let seconds_left = if in_use >= capacity {
        Some(0.0)
    } else if rate > 0.0 && steady_state_in_use >= capacity as f64 {
        Some((capacity - in_use) as f64 / rate)
    } else {
        None
    };
    PortExhaustion {
        capacity,
        in_use,
        steady_state_in_use,
        seconds_left,
    }
}

pub fn time_wait_finding(load: &DestinationLoad, settings: &PortSettings) -> Option<Finding> {
    let exhaustion = port_exhaustion(load, settings);
    let severity = match exhaustion.seconds_left {
        Some(seconds) if seconds <= PORTS_CRITICAL_SECONDS => Severity::Critical,
        Some(_) => Severity::Warning,
        None if exhaustion.steady_state_in_use
            >= PORTS_WARNING_SHARE * exhaustion.capacity as f64 =>
        {
            Severity::Warning
        }
        None => return None,
    };
    let reuse = settings.time_wait_reuse.sysctl_text();
    let reuse_note = match settings.time_wait_reuse {
        TimeWaitReuse::LoopbackOnly if !settings.reuse_applies_to(load.destination.ip()) => {
            " (not for this destination)"
        }
        _ => "",
    };
    let outlook = match exhaustion.seconds_left {
        Some(seconds) if seconds <= 0.0 => "exhausted now".to_owned(),
        Some(seconds) => format!("exhausted in ~{}", seconds_text(seconds)),
        None => format!("~{:.0} in use at this rate", exhaustion.steady_state_in_use),
    };
    Some(Finding {
        kind: FindingKind::TimeWaitExhaustion,
        severity,
        subject: endpoint(load.destination),
        evidence: format!(
            "{} TIME_WAIT + {} open of {} ephemeral ports, {} connects/s, tcp_tw_reuse={reuse}{reuse_note}: {outlook}",
            load.time_wait,
            load.other_in_use,
            exhaustion.capacity,
            rate_text(non_negative(load.connects_per_second)),
        ),
        advice: TIME_WAIT_ADVICE,
    })
}

// 2. FIN_WAIT2 held open by a file

/// A FIN_WAIT2 socket that still has a file.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckSocket {
    /// "pid 12 (app)".
    pub owner: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub age: Duration,
    /// First seen in FIN_WAIT2 by a scan, not at the transition.
    pub age_is_lower_bound: bool,
}

/// This many stuck sockets per process is a leak that will run it out of
/// fds, not a few slow peers.
const FIN_WAIT2_CRITICAL_COUNT: usize = 100;

/// Remote addresses an evidence line lists before "+N more".
const SHOWN_REMOTES: usize = 3;

const FIN_WAIT2_ADVICE: &str = "The process shut down its side but the peer never closed; these never time out while the file is open: set a read timeout and close after shutdown().";

/// An orphaned FIN_WAIT2 is gone after tcp_fin_timeout; one older than that
/// still has a file, and the kernel's timeout does not apply to it: it waits
/// for a peer that never closes.
pub fn fin_wait2_findings(sockets: &[StuckSocket], settings: &PortSettings) -> Vec<Finding> {
    let mut by_owner: BTreeMap<&str, Vec<&StuckSocket>> = BTreeMap::new();
    for socket in sockets.iter().filter(|s| s.age > settings.fin_timeout) {
        by_owner.entry(&socket.owner).or_default().push(socket);
    }
    by_owner
        .into_iter()
        .filter_map(|(owner, mut stuck)| {
            // Oldest first: its peers are the likeliest culprits.
            stuck.sort_by(|a, b| b.age.cmp(&a.age).then_with(|| a.remote.cmp(&b.remote)));
            let oldest = *stuck.first()?;
            let severity = if stuck.len() >= FIN_WAIT2_CRITICAL_COUNT {
                Severity::Critical
            } else {
                Severity::Warning
            };
            Some(Finding {
                kind: FindingKind::FinWait2Stuck,
                severity,
                subject: owner.to_owned(),
                evidence: format!(
                    "{} in FIN_WAIT2 past tcp_fin_timeout ({}), oldest {}{}, peers {}",
                    plural(stuck.len() as u64, "socket"),
                    humantime::format_duration(settings.fin_timeout),
                    if oldest.age_is_lower_bound { ">=" } else { "" },
                    age_text(oldest.age),
                    remotes_text(stuck.iter().map(|s| s.remote)),
                ),
                advice: FIN_WAIT2_ADVICE,
            })
        })
        .collect()
}

/// Up to SHOWN_REMOTES distinct addresses in order, then "+N more".
fn remotes_text(remotes: impl Iterator<Item = SocketAddr>) -> String {
    let mut distinct: Vec<String> = Vec::new();
    for remote in remotes.map(endpoint) {
        if !distinct.contains(&remote) {
            distinct.push(remote);
        }
    }
    let hidden = distinct.len().saturating_sub(SHOWN_REMOTES);
    distinct.truncate(SHOWN_REMOTES);
    let shown = distinct.join(", ");
    if hidden > 0 {
        format!("{shown} +{hidden} more")
    } else {
        shown
    }
}

// 3. Reads spinning on EOF

/// EOF reads on one CLOSE_WAIT socket over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct EofReads {
    pub owner: String,
    pub cookie: u64,
    pub remote: SocketAddr,
    pub eof_reads: u64,
    pub window: Duration,
}

/// Code that meant to read again after EOF would do it a few times, not a
/// hundred times a second: that is a loop without a close.
const EOF_SPIN_RATE: f64 = 100.0;

/// Fewer reads are too few to call a rate (a short window).
const EOF_SPIN_MIN_READS: u64 = 100;

/// A busy loop on read(): a core burnt per socket.
const EOF_SPIN_CRITICAL_RATE: f64 = 10_000.0;

const EOF_SPIN_ADVICE: &str = "A read returned 0 (end of file) and the code keeps reading instead of closing: treat a 0-byte read as the peer's close.";

fn eof_read_rate(reads: &EofReads) -> Option<f64> {
    let seconds = reads.window.as_secs_f64();
    (seconds > 0.0).then(|| reads.eof_reads as f64 / seconds)
}

fn is_spinning(reads: &EofReads) -> bool {
    reads.eof_reads >= EOF_SPIN_MIN_READS
        && eof_read_rate(reads).is_some_and(|r| r >= EOF_SPIN_RATE)
}

pub fn eof_spin_findings(reads: &[EofReads]) -> Vec<Finding> {
    let mut by_owner: BTreeMap<&str, Vec<&EofReads>> = BTreeMap::new();
    for spinning in reads.iter().filter(|r| is_spinning(r)) {
        by_owner.entry(&spinning.owner).or_default().push(spinning);
    }
    by_owner
        .into_iter()
        .filter_map(|(owner, spinning)| {
            let (worst, rate) = spinning
                .iter()
                .filter_map(|r| Some((*r, eof_read_rate(r)?)))
                .max_by(|a, b| {
                    a.1.total_cmp(&b.1)
                        .then_with(|| b.0.cookie.cmp(&a.0.cookie))
                })?;
            let severity = if rate >= EOF_SPIN_CRITICAL_RATE {
                Severity::Critical
            } else {
                Severity::Warning
            };
            Some(Finding {
                kind: FindingKind::EofSpin,
                severity,
                subject: owner.to_owned(),
                evidence: format!(
                    "{} reading EOF in a loop; worst {} reads/s ({} in {}, socket {} from {})",
                    plural(spinning.len() as u64, "socket"),
                    rate_text(rate),
                    worst.eof_reads,
                    humantime::format_duration(round_to_millis(worst.window)),
                    worst.cookie,
                    endpoint(worst.remote),
                ),
                advice: EOF_SPIN_ADVICE,
            })
        })
        .collect()
}

// 4. Failing connects

/// connect() outcomes of one process toward one destination over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectOutcomes {
    pub owner: String,
    pub destination: SocketAddr,
    pub attempted: u64,
    pub failed: u64,
    pub window: Duration,
}

/// A few failures are a restart or a blip, not a pattern.
const CONNECT_WARNING_FAILURES: u64 = 5;
/// One connect in ten failing is more than a flaky network does.
const CONNECT_WARNING_PERCENT: u64 = 10;
/// Half failing, and often: the destination is down for this client.
const CONNECT_CRITICAL_FAILURES: u64 = 20;
const CONNECT_CRITICAL_PERCENT: u64 = 50;

const CONNECT_ADVICE: &str = "Connections to this destination fail (refused, reset or timed out in SYN_SENT): check that the service is up and reachable.";

/// `failed` is at least `percent`% of the attempts. A connect attempted in
/// the previous window can fail in this one, so attempts count at least the
/// failures.
fn failed_share_at_least(outcomes: &ConnectOutcomes, percent: u64) -> bool {
    let attempted = outcomes.attempted.max(outcomes.failed);
    u128::from(outcomes.failed) * 100 >= u128::from(attempted) * u128::from(percent)
}

pub fn connect_failure_findings(outcomes: &[ConnectOutcomes]) -> Vec<Finding> {
    outcomes
        .iter()
        .filter_map(|o| {
            let severity = if o.failed >= CONNECT_CRITICAL_FAILURES
                && failed_share_at_least(o, CONNECT_CRITICAL_PERCENT)
            {
                Severity::Critical
            } else if o.failed >= CONNECT_WARNING_FAILURES
                && failed_share_at_least(o, CONNECT_WARNING_PERCENT)
            {
                Severity::Warning
            } else {
                return None;
            };
            let attempted = o.attempted.max(o.failed);
            Some(Finding {
                kind: FindingKind::ConnectFailures,
                severity,
                subject: format!("{} to {}", o.owner, endpoint(o.destination)),
                evidence: format!(
                    "{} of {} connects failed ({:.0}%) in {}",
                    o.failed,
                    attempted,
                    o.failed as f64 * 100.0 / attempted as f64,
                    humantime::format_duration(round_to_seconds(o.window)),
                ),
                advice: CONNECT_ADVICE,
            })
        })
        .collect()
}

// 5. Listen backlog

/// One listening socket's queues, as `ss -lt` shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerLoad {
    pub owner: String,
    pub local: SocketAddr,
    /// Half-open connections to it (SYN_RECV).
    pub syn_recv: u64,
    /// Connections waiting for accept() (Recv-Q of a listener).
    pub accept_queue: u64,
    /// The listen() backlog, capped by net.core.somaxconn (Send-Q).
    pub accept_backlog: u64,
}

/// Half full: accept() falls behind and a burst will fill the rest.
const ACCEPT_QUEUE_WARNING_PERCENT: u64 = 50;

/// Half-open connections past both the listen backlog and 128 (the
/// smallest usual tcp_max_syn_backlog) are not a busy server's handshakes
/// in flight but handshakes that never finish.
const SYN_RECV_WARNING_FLOOR: u64 = 128;

const ACCEPT_QUEUE_ADVICE: &str = "The process does not accept() fast enough: its accept queue is full and the kernel drops new connections; add acceptor threads or raise the backlog (listen(), net.core.somaxconn).";

const SYN_RECV_ADVICE: &str = "Handshakes are not completing: clients vanish after SYN (a SYN flood or a broken path); check net.ipv4.tcp_syncookies and tcp_max_syn_backlog.";

pub fn syn_backlog_findings(listeners: &[ListenerLoad]) -> Vec<Finding> {
    listeners.iter().filter_map(listener_finding).collect()
}

fn listener_finding(listener: &ListenerLoad) -> Option<Finding> {
    let backlog = listener.accept_backlog;
    // The kernel drops once the queue holds one more than the backlog; at
    // the backlog the next connection is the last one it takes.
    let queue_full = backlog > 0 && listener.accept_queue >= backlog;
    let queue_filling = backlog > 0
        && u128::from(listener.accept_queue) * 100
            >= u128::from(backlog) * u128::from(ACCEPT_QUEUE_WARNING_PERCENT);
    let half_open_build_up = listener.syn_recv >= SYN_RECV_WARNING_FLOOR.max(backlog);
    // A slow acceptor explains SYN_RECV too (the kernel stops completing
    // handshakes into a full queue), so the accept queue's advice wins.
    let (severity, advice) = if queue_full {
        (Severity::Critical, ACCEPT_QUEUE_ADVICE)
    } else if queue_filling {
        (Severity::Warning, ACCEPT_QUEUE_ADVICE)
    } else if half_open_build_up {
        (Severity::Warning, SYN_RECV_ADVICE)
    } else {
        return None;
    };
    Some(Finding {
        kind: FindingKind::SynBacklog,
        severity,
        subject: format!("listener {}, {}", endpoint(listener.local), listener.owner),
        evidence: format!(
            "accept queue {} of {}, {} in SYN_RECV",
            listener.accept_queue, backlog, listener.syn_recv
        ),
        advice,
    })
}

// 6. Leaks running a process out of fds

/// Seconds until the process has no free fd at this leak rate; `None` when
/// the leaks do not grow, 0 when it is already at its limit.
pub fn fd_exhaustion_seconds(open_fds: u64, fd_limit: u64, leaks_per_minute: f64) -> Option<f64> {
    if open_fds >= fd_limit {
        return Some(0.0);
    }
    if leaks_per_minute.is_nan() || leaks_per_minute <= 0.0 {
        return None;
    }
    Some((fd_limit - open_fds) as f64 / (leaks_per_minute / 60.0))
}

/// One process's leaks, from the leak report.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessLeakSummary {
    pub owner: String,
    pub leaking_sockets: u64,
    pub oldest_age: Duration,
    pub leaks_per_minute: Option<f64>,
    pub open_fds: Option<u64>,
    pub fd_limit: Option<u64>,
}

/// Out of fds within the hour: accept() and open() start failing before a
/// fix can ship, so someone must restart it.
const FD_EXHAUSTION_CRITICAL_SECONDS: f64 = 3600.0;

const LEAK_ADVICE: &str = "The process read the peer's close (EOF) and never called close(), or keeps a closed socket's file open; fix the code path shown in the leak report.";

pub fn leak_findings(processes: &[ProcessLeakSummary]) -> Vec<Finding> {
    processes
        .iter()
        .filter(|p| p.leaking_sockets > 0)
        .map(leak_finding)
        .collect()
}

fn leak_finding(process: &ProcessLeakSummary) -> Finding {
    let exhaustion = match (process.open_fds, process.fd_limit) {
        (Some(open), Some(limit)) => {
            fd_exhaustion_seconds(open, limit, process.leaks_per_minute.unwrap_or(0.0))
        }
        _ => None,
    };
    let severity = match exhaustion {
        Some(seconds) if seconds <= FD_EXHAUSTION_CRITICAL_SECONDS => Severity::Critical,
        _ => Severity::Warning,
    };
    let mut evidence = format!(
        "{} leaked, oldest {}",
        plural(process.leaking_sockets, "socket"),
        age_text(process.oldest_age)
    );
    if let Some(rate) = process.leaks_per_minute.filter(|r| r.is_finite()) {
        let _ = write!(evidence, ", {rate:+.1}/min");
    }
    match (process.open_fds, process.fd_limit) {
        (Some(open), Some(limit)) => {
            let _ = write!(evidence, ", {open} of {limit} fds");
        }
        (Some(open), None) => {
            let _ = write!(evidence, ", {open} fds");
        }
        _ => {}
    }
    match exhaustion {
        Some(seconds) if seconds <= 0.0 => evidence.push_str(": out of fds now"),
        Some(seconds) => {
            let _ = write!(evidence, ": out of fds in ~{}", seconds_text(seconds));
        }
        None => {}
    }
    Finding {
        kind: FindingKind::SocketLeak,
        severity,
        subject: process.owner.clone(),
        evidence,
        advice: LEAK_ADVICE,
    }
}

// Text helpers

/// Negative, NaN and infinite rates count as no rate.
fn non_negative(rate: f64) -> f64 {
    if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        0.0
    }
}

/// Windows are measured to the nanosecond; evidence reads better in ms.
fn round_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}

fn round_to_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs_f64().round() as u64)
}

/// "5m 3s".
fn age_text(age: Duration) -> String {
    humantime::format_duration(round_to_seconds(age)).to_string()
}

/// "57s", from fractional seconds (non-finite or negative as 0).
fn seconds_text(seconds: f64) -> String {
    // `as` saturates: huge values cannot panic.
    age_text(Duration::from_secs(non_negative(seconds).round() as u64))
}

/// Whole numbers once they are large, a decimal while small.
fn rate_text(rate: f64) -> String {
    if rate >= 10.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(reuse: TimeWaitReuse) -> PortSettings {
        PortSettings {
            ephemeral_low: 32768,
            ephemeral_high: 60999,
            time_wait_reuse: reuse,
            time_wait_reuse_delay: Duration::from_secs(1),
            fin_timeout: Duration::from_secs(60),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    fn load(destination: &str, time_wait: u64, other: u64, rate: f64) -> DestinationLoad {
        DestinationLoad {
            destination: addr(destination),
            time_wait,
            other_in_use: other,
            connects_per_second: rate,
        }
    }

    // --- settings

    #[test]
    fn parses_kernel_file_contents() {
        let parsed = PortSettings::parse("32768\t60999\n", "2\n", Some("1000\n"), "60\n")
            .expect("valid settings");
        assert_eq!(parsed, settings(TimeWaitReuse::LoopbackOnly));
        assert_eq!(parsed.ephemeral_ports(), 28232);
    }

    #[test]
    fn reuse_values_and_delay() {
        let parse = |reuse, delay| PortSettings::parse("1024 65535", reuse, delay, "30");
        let on = parse("1", Some("250")).expect("valid");
        assert_eq!(on.time_wait_reuse, TimeWaitReuse::On);
        assert_eq!(on.time_wait_reuse_delay, Duration::from_millis(250));
        assert_eq!(on.fin_timeout, Duration::from_secs(30));
        assert_eq!(on.ephemeral_ports(), 64512);
        let off = parse("0", None).expect("valid");
        assert_eq!(off.time_wait_reuse, TimeWaitReuse::Off);
        // Kernels before 6.13 have no delay setting: one second.
        assert_eq!(off.time_wait_reuse_delay, Duration::from_secs(1));
    }

    #[test]
    fn single_port_range_has_one_port() {
        let one = PortSettings::parse("40000 40000", "0", None, "60").expect("valid");
        assert_eq!(one.ephemeral_ports(), 1);
    }

    #[test]
    fn settings_errors() {
        for bad in [
            "",
            "32768",
            "32768 60999 1",
            "low high",
            "32768 70000",
            "-1 5",
        ] {
            assert!(
                matches!(
                    PortSettings::parse(bad, "0", None, "60"),
                    Err(SettingsError::BadPortRange { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            PortSettings::parse("60999 32768", "0", None, "60"),
            Err(SettingsError::InvertedPortRange {
                low: 60999,
                high: 32768
            })
        ));
        let error = PortSettings::parse("32768 60999", "7", None, "60").unwrap_err();
        assert!(matches!(error, SettingsError::BadTimeWaitReuse { ref text } if text == "7"));
        assert_eq!(
            error.to_string(),
            "net.ipv4.tcp_tw_reuse: expected 0, 1 or 2, got \"7\""
        );
        assert!(matches!(
            PortSettings::parse("32768 60999", "1", Some("soon"), "60"),
            Err(SettingsError::BadReuseDelay { .. })
        ));
        assert!(matches!(
            PortSettings::parse("32768 60999", "1", None, "-5"),
            Err(SettingsError::BadFinTimeout { .. })
        ));
    }

    #[test]
    fn inverted_range_set_by_hand_has_no_ports() {
        let mut inverted = settings(TimeWaitReuse::Off);
        inverted.ephemeral_low = 61000;
        inverted.ephemeral_high = 60999;
        assert_eq!(inverted.ephemeral_ports(), 0);
    }

    #[test]
    fn reuse_applies_by_setting_and_destination() {
        let v4_loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped_loopback: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let v6_loopback: IpAddr = "::1".parse().unwrap();
        let remote: IpAddr = "10.0.0.7".parse().unwrap();
        let loopback_only = settings(TimeWaitReuse::LoopbackOnly);
        assert!(loopback_only.reuse_applies_to(v4_loopback));
        assert!(loopback_only.reuse_applies_to(mapped_loopback));
        assert!(loopback_only.reuse_applies_to(v6_loopback));
        assert!(!loopback_only.reuse_applies_to(remote));
        assert!(settings(TimeWaitReuse::On).reuse_applies_to(remote));
        assert!(!settings(TimeWaitReuse::Off).reuse_applies_to(v4_loopback));
    }

    // --- port exhaustion

    #[test]
    fn reuse_off_equilibrium_below_capacity() {
        let result = port_exhaustion(
            &load("10.0.0.7:5432", 1000, 0, 100.0),
            &settings(TimeWaitReuse::Off),
        );
        assert_eq!(
            result,
            PortExhaustion {
                capacity: 28232,
                in_use: 1000,
                steady_state_in_use: 6000.0,
                seconds_left: None,
            }
        );
        let finding = time_wait_finding(
            &load("10.0.0.7:5432", 1000, 0, 100.0),
            &settings(TimeWaitReuse::Off),
        );
        assert_eq!(finding, None);
    }

    #[test]
    fn reuse_off_runs_out() {
        let busy = load("10.0.0.7:5432", 1000, 0, 1000.0);
        let result = port_exhaustion(&busy, &settings(TimeWaitReuse::Off));
        assert_eq!(result.steady_state_in_use, 60000.0);
        assert_eq!(result.in_use, 1000);
        assert_eq!(result.seconds_left, Some(27.232));
        let finding = time_wait_finding(&busy, &settings(TimeWaitReuse::Off)).expect("finding");
        assert_eq!(finding.kind, FindingKind::TimeWaitExhaustion);
        assert_eq!(finding.severity, Severity::Critical);
        assert_eq!(finding.subject, "10.0.0.7:5432");
        assert_eq!(
            finding.evidence,
            "1000 TIME_WAIT + 0 open of 28232 ephemeral ports, 1000 connects/s, tcp_tw_reuse=off: exhausted in ~27s"
        );
        assert_eq!(finding.advice, TIME_WAIT_ADVICE);
    }

    #[test]
    fn open_sockets_count_against_capacity() {
        // 10 + 480 * 60 = 28810 >= 28232; (28232 - 1244) / 480 = 56.225.
        let result = port_exhaustion(
            &load("10.0.0.7:80", 1234, 10, 480.0),
            &settings(TimeWaitReuse::Off),
        );
        assert_eq!(result.in_use, 1244);
        assert_eq!(result.steady_state_in_use, 28810.0);
        assert_eq!(result.seconds_left, Some(26988.0 / 480.0));
    }

    #[test]
    fn reuse_on_blocks_ports_only_for_the_delay() {
        // 10 + 1000 * 1 s = 1010 steady; only the last second's 1000 of the
        // 20000 TIME_WAITs block.
        let result = port_exhaustion(
            &load("10.0.0.7:5432", 20000, 10, 1000.0),
            &settings(TimeWaitReuse::On),
        );
        assert_eq!(result.in_use, 1010);
        assert_eq!(result.steady_state_in_use, 1010.0);
        assert_eq!(result.seconds_left, None);
        // Fewer TIME_WAITs than the delay's worth: all of them block.
        let few = port_exhaustion(
            &load("10.0.0.7:5432", 300, 10, 1000.0),
            &settings(TimeWaitReuse::On),
        );
        assert_eq!(few.in_use, 310);
    }

    #[test]
    fn reuse_delay_scales_the_steady_state() {
        let mut slow_reuse = settings(TimeWaitReuse::On);
        slow_reuse.time_wait_reuse_delay = Duration::from_millis(2000);
        // 30000 connects/s * 2 s = 60000 >= 28232: (28232 - 0) / 30000.
        let result = port_exhaustion(&load("10.0.0.7:5432", 0, 0, 30000.0), &slow_reuse);
        assert_eq!(result.steady_state_in_use, 60000.0);
        assert_eq!(result.seconds_left, Some(28232.0 / 30000.0));
    }

    #[test]
    fn loopback_only_reuse_for_loopback_destination() {
        let result = port_exhaustion(
            &load("127.0.0.1:5432", 20000, 0, 1000.0),
            &settings(TimeWaitReuse::LoopbackOnly),
        );
        assert_eq!(result.in_use, 1000);
        assert_eq!(result.steady_state_in_use, 1000.0);
        assert_eq!(result.seconds_left, None);
    }

    #[test]
    fn loopback_only_reuse_does_not_help_remote_destination() {
        let remote = load("10.0.0.7:5432", 20000, 0, 1000.0);
        let result = port_exhaustion(&remote, &settings(TimeWaitReuse::LoopbackOnly));
        assert_eq!(result.in_use, 20000);
        assert_eq!(result.steady_state_in_use, 60000.0);
        assert_eq!(result.seconds_left, Some(8.232));
        let finding =
            time_wait_finding(&remote, &settings(TimeWaitReuse::LoopbackOnly)).expect("finding");
        assert_eq!(
            finding.evidence,
            "20000 TIME_WAIT + 0 open of 28232 ephemeral ports, 1000 connects/s, tcp_tw_reuse=loopback-only (not for this destination): exhausted in ~8s"
        );
    }

    #[test]
    fn zero_rate_never_runs_out() {
        let result = port_exhaustion(
            &load("10.0.0.7:5432", 20000, 0, 0.0),
            &settings(TimeWaitReuse::Off),
        );
        assert_eq!(result.steady_state_in_use, 0.0);
        assert_eq!(result.seconds_left, None);
        // NaN and negative rates are no rate.
        for rate in [f64::NAN, -5.0, f64::INFINITY] {
            let odd = port_exhaustion(
                &load("10.0.0.7:5432", 10, 0, rate),
                &settings(TimeWaitReuse::Off),
            );
            assert_eq!(odd.seconds_left, None, "{rate}");
        }
    }

    #[test]
    fn already_exhausted() {
        let full = load("10.0.0.7:5432", 28000, 232, 0.0);
        let result = port_exhaustion(&full, &settings(TimeWaitReuse::Off));
        assert_eq!(result.in_use, 28232);
        assert_eq!(result.seconds_left, Some(0.0));
        let finding = time_wait_finding(&full, &settings(TimeWaitReuse::Off)).expect("finding");
        assert_eq!(finding.severity, Severity::Critical);
        assert!(
            finding
                .evidence
                .ends_with("0 connects/s, tcp_tw_reuse=off: exhausted now")
        );
        // One port short is not exhausted yet.
        let almost = port_exhaustion(
            &load("10.0.0.7:5432", 27999, 232, 0.0),
            &settings(TimeWaitReuse::Off),
        );
        assert_eq!(almost.seconds_left, None);
    }

    #[test]
    fn time_wait_severity_edges() {
        let off = settings(TimeWaitReuse::Off);
        let severity = |l: DestinationLoad| time_wait_finding(&l, &off).map(|f| f.severity);
        // Steady state at capacity: 22232 open + 100/s * 60 s = 28232, and
        // (28232 - 22232) / 100 = 60 s left.
        let at_capacity = load("10.0.0.7:1", 0, 22232, 100.0);
        assert_eq!(port_exhaustion(&at_capacity, &off).seconds_left, Some(60.0));
        assert_eq!(severity(at_capacity), Some(Severity::Critical));
        // One below: it settles at 28231 ports, above half the range.
        let below_capacity = load("10.0.0.7:1", 0, 22231, 100.0);
        assert_eq!(port_exhaustion(&below_capacity, &off).seconds_left, None);
        assert_eq!(severity(below_capacity), Some(Severity::Warning));
        // Half the range is 14116: 8116 open + 6000 -> warning, 8115 -> none.
        assert_eq!(
            severity(load("10.0.0.7:1", 0, 8116, 100.0)),
            Some(Severity::Warning)
        );
        assert_eq!(severity(load("10.0.0.7:1", 0, 8115, 100.0)), None);
    }

    #[test]
    fn countdown_beyond_five_minutes_is_a_warning() {
        // Without reuse a countdown never exceeds one TIME_WAIT length (60 s),
        // so only a reuse delay longer than 300 s (not a real kernel value)
        // reaches the warning band: 50/s * 600 s = 30000 >= 28232, and
        // (28232 - 13232) / 50 = 300 s.
        let mut long_delay = settings(TimeWaitReuse::On);
        long_delay.time_wait_reuse_delay = Duration::from_secs(600);
        let at_edge = load("10.0.0.7:1", 13232, 0, 50.0);
        assert_eq!(
            port_exhaustion(&at_edge, &long_delay).seconds_left,
            Some(300.0)
        );
        assert_eq!(
            time_wait_finding(&at_edge, &long_delay).map(|f| f.severity),
            Some(Severity::Critical)
        );
        let past_edge = load("10.0.0.7:1", 13231, 0, 50.0);
        assert_eq!(
            port_exhaustion(&past_edge, &long_delay).seconds_left,
            Some(15001.0 / 50.0)
        );
        let finding = time_wait_finding(&past_edge, &long_delay).expect("finding");
        assert_eq!(finding.severity, Severity::Warning);
        assert!(
            finding
                .evidence
                .ends_with("tcp_tw_reuse=on: exhausted in ~5m"),
            "{}",
            finding.evidence
        );
    }

    #[test]
    fn equilibrium_warning_evidence() {
        let finding = time_wait_finding(
            &load("[::ffff:10.0.0.7]:80", 100, 16000, 2.5),
            &settings(TimeWaitReuse::Off),
        )
        .expect("finding");
        assert_eq!(finding.subject, "10.0.0.7:80");
        assert_eq!(
            finding.evidence,
            "100 TIME_WAIT + 16000 open of 28232 ephemeral ports, 2.5 connects/s, tcp_tw_reuse=off: ~16150 in use at this rate"
        );
    }

    // --- FIN_WAIT2

    fn stuck(owner: &str, remote: &str, age_s: u64) -> StuckSocket {
        StuckSocket {
            owner: owner.into(),
            local: addr("10.0.0.1:40000"),
            remote: addr(remote),
            age: Duration::from_secs(age_s),
            age_is_lower_bound: false,
        }
    }

    #[test]
    fn fin_wait2_counts_only_past_fin_timeout() {
        let off = settings(TimeWaitReuse::Off);
        let mut at_timeout = stuck("pid 1 (a)", "10.0.0.2:80", 60);
        assert!(fin_wait2_findings(std::slice::from_ref(&at_timeout), &off).is_empty());
        at_timeout.age += Duration::from_millis(1);
        let findings = fin_wait2_findings(&[at_timeout], &off);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].severity, Severity::Warning);
        assert_eq!(findings[0].kind, FindingKind::FinWait2Stuck);
        assert_eq!(findings[0].advice, FIN_WAIT2_ADVICE);
    }

    #[test]
    fn fin_wait2_groups_by_owner() {
        let mut sockets = vec![
            stuck("pid 1 (a)", "10.0.0.2:80", 61),
            stuck("pid 1 (a)", "10.0.0.3:80", 303),
            stuck("pid 1 (a)", "10.0.0.2:80", 70),
            stuck("pid 1 (a)", "10.0.0.4:80", 65),
            stuck("pid 1 (a)", "10.0.0.5:80", 62),
            stuck("pid 2 (b)", "10.0.0.9:443", 10),
        ];
        sockets[1].age_is_lower_bound = true;
        let findings = fin_wait2_findings(&sockets, &settings(TimeWaitReuse::Off));
        assert_eq!(findings.len(), 1, "pid 2 is within tcp_fin_timeout");
        assert_eq!(findings[0].subject, "pid 1 (a)");
        assert_eq!(
            findings[0].evidence,
            "5 sockets in FIN_WAIT2 past tcp_fin_timeout (1m), oldest >=5m 3s, peers 10.0.0.3:80, 10.0.0.2:80, 10.0.0.4:80 +1 more"
        );
    }

    #[test]
    fn fin_wait2_critical_at_one_hundred() {
        let off = settings(TimeWaitReuse::Off);
        let many = |n| vec![stuck("pid 1 (a)", "10.0.0.2:80", 120); n];
        assert_eq!(
            fin_wait2_findings(&many(99), &off)[0].severity,
            Severity::Warning
        );
        assert_eq!(
            fin_wait2_findings(&many(100), &off)[0].severity,
            Severity::Critical
        );
    }

    // --- EOF spin

    fn eof(owner: &str, cookie: u64, reads: u64, window_ms: u64) -> EofReads {
        EofReads {
            owner: owner.into(),
            cookie,
            remote: addr("10.0.0.2:80"),
            eof_reads: reads,
            window: Duration::from_millis(window_ms),
        }
    }

    #[test]
    fn eof_spin_rate_and_total_edges() {
        let severity = |r: EofReads| eof_spin_findings(&[r]).first().map(|f| f.severity);
        // 1000 in 10 s = 100/s: spinning; 999 in 10 s: not.
        assert_eq!(severity(eof("p", 1, 1000, 10_000)), Some(Severity::Warning));
        assert_eq!(severity(eof("p", 1, 999, 10_000)), None);
        // 99 in 0.5 s is 198/s but too few reads to call it a rate.
        assert_eq!(severity(eof("p", 1, 99, 500)), None);
        assert_eq!(severity(eof("p", 1, 100, 500)), Some(Severity::Warning));
        // No window, no rate.
        assert_eq!(severity(eof("p", 1, 5000, 0)), None);
        // 10000/s is critical, 9999/s a warning.
        assert_eq!(
            severity(eof("p", 1, 20_000, 2000)),
            Some(Severity::Critical)
        );
        assert_eq!(severity(eof("p", 1, 19_998, 2000)), Some(Severity::Warning));
    }

    #[test]
    fn eof_spin_one_finding_per_owner_with_the_worst_socket() {
        let findings = eof_spin_findings(&[
            eof("pid 1 (a)", 7, 500, 2000),
            eof("pid 1 (a)", 8, 24_000, 2000),
            eof("pid 1 (a)", 9, 10, 2000),
            eof("pid 2 (b)", 3, 300, 1000),
        ]);
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0].subject, "pid 1 (a)");
        assert_eq!(findings[0].severity, Severity::Critical);
        assert_eq!(
            findings[0].evidence,
            "2 sockets reading EOF in a loop; worst 12000 reads/s (24000 in 2s, socket 8 from 10.0.0.2:80)"
        );
        assert_eq!(findings[1].subject, "pid 2 (b)");
        assert_eq!(findings[1].severity, Severity::Warning);
        assert_eq!(findings[1].advice, EOF_SPIN_ADVICE);
    }

    // --- connect failures

    fn connects(attempted: u64, failed: u64) -> ConnectOutcomes {
        ConnectOutcomes {
            owner: "pid 1 (a)".into(),
            destination: addr("10.0.0.2:5432"),
            attempted,
            failed,
            window: Duration::from_secs(10),
        }
    }

    fn connect_severity(attempted: u64, failed: u64) -> Option<Severity> {
        connect_failure_findings(&[connects(attempted, failed)])
            .first()
            .map(|f| f.severity)
    }

    #[test]
    fn connect_failure_edges() {
        // Warning: at least 5 failures and at least 10%.
        assert_eq!(connect_severity(50, 5), Some(Severity::Warning));
        assert_eq!(connect_severity(51, 5), None);
        assert_eq!(connect_severity(40, 4), None);
        // Critical: at least 20 failures and at least 50%.
        assert_eq!(connect_severity(40, 20), Some(Severity::Critical));
        assert_eq!(connect_severity(41, 20), Some(Severity::Warning));
        assert_eq!(connect_severity(38, 19), Some(Severity::Warning));
        assert_eq!(connect_severity(0, 0), None);
    }

    #[test]
    fn failures_of_earlier_attempts_count_as_attempts() {
        assert_eq!(connect_severity(0, 25), Some(Severity::Critical));
        let finding = &connect_failure_findings(&[connects(3, 6)])[0];
        assert_eq!(finding.subject, "pid 1 (a) to 10.0.0.2:5432");
        assert_eq!(finding.evidence, "6 of 6 connects failed (100%) in 10s");
    }

    #[test]
    fn connect_failure_evidence() {
        let finding = &connect_failure_findings(&[connects(40, 12)])[0];
        assert_eq!(finding.evidence, "12 of 40 connects failed (30%) in 10s");
        assert_eq!(finding.advice, CONNECT_ADVICE);
    }

    // --- listen backlog

    fn listener(syn_recv: u64, accept_queue: u64, accept_backlog: u64) -> ListenerLoad {
        ListenerLoad {
            owner: "pid 1 (nginx)".into(),
            local: addr("0.0.0.0:80"),
            syn_recv,
            accept_queue,
            accept_backlog,
        }
    }

    fn backlog_verdict(load: ListenerLoad) -> Option<(Severity, &'static str)> {
        syn_backlog_findings(&[load])
            .first()
            .map(|f| (f.severity, f.advice))
    }

    #[test]
    fn accept_queue_edges() {
        assert_eq!(
            backlog_verdict(listener(0, 511, 511)),
            Some((Severity::Critical, ACCEPT_QUEUE_ADVICE))
        );
        assert_eq!(
            backlog_verdict(listener(0, 510, 511)),
            Some((Severity::Warning, ACCEPT_QUEUE_ADVICE))
        );
        // Half of 511 is 255.5: 256 is at it, 255 below.
        assert_eq!(
            backlog_verdict(listener(0, 256, 511)),
            Some((Severity::Warning, ACCEPT_QUEUE_ADVICE))
        );
        assert_eq!(backlog_verdict(listener(0, 255, 511)), None);
        // A zero backlog (unknown) is never full.
        assert_eq!(backlog_verdict(listener(0, 0, 0)), None);
    }

    #[test]
    fn syn_recv_edges() {
        // At least max(128, backlog).
        assert_eq!(
            backlog_verdict(listener(128, 0, 64)),
            Some((Severity::Warning, SYN_RECV_ADVICE))
        );
        assert_eq!(backlog_verdict(listener(127, 0, 64)), None);
        assert_eq!(
            backlog_verdict(listener(4096, 0, 4096)),
            Some((Severity::Warning, SYN_RECV_ADVICE))
        );
        assert_eq!(backlog_verdict(listener(4095, 0, 4096)), None);
        // A full queue explains the half-open ones: its advice wins.
        assert_eq!(
            backlog_verdict(listener(4096, 4096, 4096)),
            Some((Severity::Critical, ACCEPT_QUEUE_ADVICE))
        );
    }

    #[test]
    fn listener_subject_and_evidence() {
        let finding = &syn_backlog_findings(&[listener(3, 128, 128)])[0];
        assert_eq!(finding.kind, FindingKind::SynBacklog);
        assert_eq!(finding.subject, "listener 0.0.0.0:80, pid 1 (nginx)");
        assert_eq!(finding.evidence, "accept queue 128 of 128, 3 in SYN_RECV");
    }

    // --- leaks and fds

    #[test]
    fn fd_exhaustion_arithmetic() {
        assert_eq!(fd_exhaustion_seconds(1012, 1024, 3.0), Some(240.0));
        assert_eq!(fd_exhaustion_seconds(100, 1024, 60.0), Some(924.0));
        assert_eq!(fd_exhaustion_seconds(1024, 1024, 3.0), Some(0.0));
        assert_eq!(fd_exhaustion_seconds(2000, 1024, 0.0), Some(0.0));
        assert_eq!(fd_exhaustion_seconds(100, 1024, 0.0), None);
        assert_eq!(fd_exhaustion_seconds(100, 1024, -2.0), None);
        assert_eq!(fd_exhaustion_seconds(100, 1024, f64::NAN), None);
    }

    fn leaking(
        count: u64,
        rate: Option<f64>,
        open: Option<u64>,
        limit: Option<u64>,
    ) -> ProcessLeakSummary {
        ProcessLeakSummary {
            owner: "pid 12 (app)".into(),
            leaking_sockets: count,
            oldest_age: Duration::from_millis(303_400),
            leaks_per_minute: rate,
            open_fds: open,
            fd_limit: limit,
        }
    }

    #[test]
    fn leak_evidence_and_severity() {
        let findings = leak_findings(&[leaking(12, Some(3.0), Some(1012), Some(1024))]);
        assert_eq!(findings.len(), 1);
        let finding = &findings[0];
        assert_eq!(finding.kind, FindingKind::SocketLeak);
        assert_eq!(finding.severity, Severity::Critical);
        assert_eq!(finding.subject, "pid 12 (app)");
        assert_eq!(
            finding.evidence,
            "12 sockets leaked, oldest 5m 3s, +3.0/min, 1012 of 1024 fds: out of fds in ~4m"
        );
        assert_eq!(finding.advice, LEAK_ADVICE);
    }

    #[test]
    fn leak_severity_edges() {
        let severity = |p| leak_findings(&[p])[0].severity;
        // 60 free fds at 1/min: exactly one hour -> critical.
        assert_eq!(
            severity(leaking(1, Some(1.0), Some(964), Some(1024))),
            Severity::Critical
        );
        // 61 free fds: 61 minutes -> warning.
        assert_eq!(
            severity(leaking(1, Some(1.0), Some(963), Some(1024))),
            Severity::Warning
        );
        // Not growing, or nothing known about fds.
        assert_eq!(
            severity(leaking(1, Some(0.0), Some(1000), Some(1024))),
            Severity::Warning
        );
        assert_eq!(severity(leaking(1, None, None, None)), Severity::Warning);
        // At the limit is critical whatever the rate.
        assert_eq!(
            severity(leaking(1, None, Some(1024), Some(1024))),
            Severity::Critical
        );
    }

    #[test]
    fn leak_evidence_without_fd_numbers() {
        let bare = &leak_findings(&[leaking(1, None, None, None)])[0];
        assert_eq!(bare.evidence, "1 socket leaked, oldest 5m 3s");
        let no_limit = &leak_findings(&[leaking(2, Some(-1.0), Some(40), None)])[0];
        assert_eq!(
            no_limit.evidence,
            "2 sockets leaked, oldest 5m 3s, -1.0/min, 40 fds"
        );
        let full = &leak_findings(&[leaking(2, None, Some(1024), Some(1024))])[0];
        assert!(full.evidence.ends_with("1024 of 1024 fds: out of fds now"));
    }

    #[test]
    fn processes_without_leaks_have_no_finding() {
        assert!(leak_findings(&[leaking(0, Some(5.0), Some(1024), Some(1024))]).is_empty());
    }

    // --- kinds and order

    #[test]
    fn kind_names_match_serde() {
        for kind in [
            FindingKind::SocketLeak,
            FindingKind::TimeWaitExhaustion,
            FindingKind::FinWait2Stuck,
            FindingKind::EofSpin,
            FindingKind::ConnectFailures,
            FindingKind::SynBacklog,
        ] {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.name())
            );
        }
        assert_eq!(
            serde_json::to_string(&Severity::Critical).unwrap(),
            "\"critical\""
        );
        assert!(Severity::Warning < Severity::Critical);
    }

    #[test]
    fn sorts_critical_first_then_kind_then_subject() {
        let finding = |severity, kind, subject: &str| Finding {
            kind,
            severity,
            subject: subject.into(),
            evidence: String::new(),
            advice: "",
        };
        let mut findings = vec![
            finding(Severity::Warning, FindingKind::EofSpin, "b"),
            finding(Severity::Critical, FindingKind::SynBacklog, "a"),
            finding(Severity::Warning, FindingKind::ConnectFailures, "z"),
            finding(Severity::Critical, FindingKind::SocketLeak, "b"),
            finding(Severity::Warning, FindingKind::EofSpin, "a"),
            finding(Severity::Critical, FindingKind::SocketLeak, "a"),
        ];
        sort_findings(&mut findings);
        let order: Vec<(&str, &str)> = findings
            .iter()
            .map(|f| (f.kind.name(), f.subject.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("socket_leak", "a"),
                ("socket_leak", "b"),
                ("syn_backlog", "a"),
                ("connect_failures", "z"),
                ("eof_spin", "a"),
                ("eof_spin", "b"),
            ]
        );
    }
}
