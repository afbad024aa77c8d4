//! Ephemeral port exhaustion toward one destination, from TIME_WAIT.

use std::net::SocketAddr;

use super::{
    Finding, FindingKind, PortSettings, Severity, TIME_WAIT_LENGTH, TimeWaitReuse, non_negative,
    rate_text, seconds_text,
};
use crate::model::endpoint::endpoint;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::model::diagnose::test_support::{addr, settings};

    fn load(destination: &str, time_wait: u64, other: u64, rate: f64) -> DestinationLoad {
        DestinationLoad {
            destination: addr(destination),
            time_wait,
            other_in_use: other,
            connects_per_second: rate,
        }
    }

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
}
