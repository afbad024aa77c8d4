//! The diagnoses an operator makes by hand from `ss` output and sysctls —
//! port exhaustion from TIME_WAIT, FIN_WAIT2 that never ends, reads spinning
//! on EOF, failing connects, full accept queues, leaks running a process out
//! of fds — as pure functions of counts the agent collects, so the
//! arithmetic behind each verdict is tested.

use std::{io, net::IpAddr, time::Duration};

use serde::Serialize;
use thiserror::Error;

mod connect_failure;
mod eof_spin;
mod fin_wait2;
mod leak;
mod syn_backlog;
mod time_wait;

pub(crate) use connect_failure::{ConnectOutcomes, connect_failure_findings};
pub(crate) use eof_spin::{EofReads, eof_spin_findings};
pub(crate) use fin_wait2::{StuckSocket, fin_wait2_findings};
pub(crate) use leak::{ProcessLeakSummary, leak_findings};
pub(crate) use syn_backlog::{ListenerLoad, syn_backlog_findings};
pub(crate) use time_wait::{DestinationLoad, time_wait_finding};

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
mod test_support {
    use std::{net::SocketAddr, time::Duration};

    use super::{PortSettings, TimeWaitReuse};

    pub(super) fn settings(reuse: TimeWaitReuse) -> PortSettings {
        PortSettings {
            ephemeral_low: 32768,
            ephemeral_high: 60999,
            time_wait_reuse: reuse,
            time_wait_reuse_delay: Duration::from_secs(1),
            fin_timeout: Duration::from_secs(60),
        }
    }

    pub(super) fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diagnose::test_support::settings;

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
