//! How a transition is shown: one aligned text line, or one JSON object.

use std::{
    fmt,
    io::{self, Write},
    net::IpAddr,
    time::SystemTime,
};

use serde::Serialize;
use thiserror::Error;

use crate::{
    model::endpoint::endpoint,
    model::tracker::{OwnerSource, TrackedTransition},
    view::terminal::sanitize,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Our output could not be written, and not because its reader left.
#[derive(Debug, Error)]
#[error("writing output failed: {0}")]
pub struct WriteFailed(#[from] pub io::Error);

/// Sorts a failed write: the reader going away (`| head`) is how a
/// pipeline ends, so stopping quietly is right; anything else (a full disk,
/// `>/dev/full`) is an error the user must see.
pub fn reader_gone(error: io::Error) -> Result<(), WriteFailed> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(WriteFailed(error))
    }
}

pub const TEXT_HEADER: &str = "TIME             PID     COMM             LOCAL                  REMOTE                 TRANSITION                    MS_IN_OLD";

fn clock_time(time: SystemTime) -> String {
    // "2026-11-22T03:21:36.123456Z" -> "03:21:36.123456"
    let stamp = humantime::format_rfc3339_micros(time).to_string();
    stamp.get(11..26).unwrap_or(&stamp).to_owned()
}

pub fn text_line(tracked: &TrackedTransition, time: SystemTime) -> String {
    let t = &tracked.transition;
    let (pid, comm) = match &tracked.owner {
        // "~": inferred from the listening socket, see the README.
        Some(owner) if owner.source == OwnerSource::Listener => (
            format!("~{}", owner.process.tgid),
            sanitize(&owner.process.comm),
        ),
        Some(owner) => (
            owner.process.tgid.to_string(),
            sanitize(&owner.process.comm),
        ),
        None => ("-".to_owned(), "-".into()),
    };
    let transition = format!(
        "{} -> {}{}",
        t.old_state.name(),
        t.new_state.name(),
        if tracked.likely_time_wait {
            " (TIME_WAIT?)"
        } else {
            ""
        }
    );
    let ms = tracked
        .time_in_old_state
        .map(|d| format!("{:.3}", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".to_owned());
    format!(
        "{:<16} {:<7} {:<16} {:<22} {:<22} {:<29} {}",
        clock_time(time),
        pid,
        comm,
        endpoint(t.local),
        endpoint(t.remote),
        transition,
        ms
    )
}

/// Serializes through `Display` straight into the output: no String per field.
struct Shown<T: fmt::Display>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

struct Hex(u64);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[derive(Serialize)]
struct JsonTransition<'a> {
    time: Shown<humantime::Rfc3339Timestamp>,
    timestamp_ns: u64,
    cookie: u64,
    skaddr: Shown<Hex>,
    pid: Option<u32>,
    comm: Option<&'a str>,
    owner_source: Option<&'static str>,
    family: &'static str,
    local_addr: Shown<IpAddr>,
    local_port: u16,
    remote_addr: Shown<IpAddr>,
    remote_port: u16,
    old_state: &'static str,
    new_state: &'static str,
    ms_in_old_state: Option<f64>,
    likely_time_wait: bool,
    netns_inode: Option<u32>,
}

/// One JSON object and a newline, written straight into `out`: this runs
/// for every event `watch --json` shows.
pub fn write_json(
    out: &mut impl Write,
    tracked: &TrackedTransition,
    time: SystemTime,
) -> io::Result<()> {
    let t = &tracked.transition;
    let local_ip = t.local.ip().to_canonical();
    let json = JsonTransition {
        time: Shown(humantime::format_rfc3339_micros(time)),
        timestamp_ns: t.timestamp_ns,
        cookie: t.cookie,
        skaddr: Shown(Hex(t.skaddr)),
        pid: tracked.owner.as_ref().map(|o| o.process.tgid),
        comm: tracked.owner.as_ref().map(|o| o.process.comm.as_str()),
        owner_source: tracked.owner.as_ref().map(|o| o.source.name()),
        family: if local_ip.is_ipv4() { "ipv4" } else { "ipv6" },
        local_addr: Shown(local_ip),
        local_port: t.local.port(),
        remote_addr: Shown(t.remote.ip().to_canonical()),
        remote_port: t.remote.port(),
        old_state: t.old_state.name(),
        new_state: t.new_state.name(),
        ms_in_old_state: tracked
            .time_in_old_state
            .map(|d| d.as_nanos() as f64 / 1_000_000.0),
        likely_time_wait: tracked.likely_time_wait,
        netns_inode: t.netns_inode,
    };
    serde_json::to_writer(&mut *out, &json).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tcptrace_common::TcpState;

    use super::*;
    use crate::{
        model::tracker::Owner,
        model::transition::{Process, Transition},
    };

    fn sample(owner_source: Option<OwnerSource>) -> TrackedTransition {
        TrackedTransition {
            transition: Transition {
                timestamp_ns: 5_000_000_000,
                cookie: 4097,
                skaddr: 0xffff_8880_0000_1000,
                owner: None,
                local: "[::ffff:127.0.0.1]:8080".parse().unwrap(),
                remote: "[::ffff:127.0.0.1]:45000".parse().unwrap(),
                old_state: TcpState::FinWait2,
                new_state: TcpState::Close,
                netns_inode: None,
                socket_inode: None,
            },
            owner: owner_source.map(|source| Owner {
                process: Process {
                    tgid: 321,
                    comm: "nginx".into(),
                },
                source,
            }),
            time_in_old_state: Some(Duration::from_micros(1500)),
            likely_time_wait: true,
        }
    }

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456)
    }

    fn json_line(tracked: &TrackedTransition, time: SystemTime) -> String {
        let mut out = Vec::new();
        write_json(&mut out, tracked, time).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        line
    }

    #[test]
    fn json_has_every_field_with_units_in_the_names() {
        let value: serde_json::Value =
            serde_json::from_str(&json_line(&sample(Some(OwnerSource::ProcessContext)), at()))
                .unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "time": "2026-11-18T11:06:40.123456Z",
                "timestamp_ns": 5_000_000_000u64,
                "cookie": 4097,
                "skaddr": "0xffff888000001000",
                "pid": 321,
                "comm": "nginx",
                "owner_source": "process_context",
                "family": "ipv4",
                "local_addr": "127.0.0.1",
                "local_port": 8080,
                "remote_addr": "127.0.0.1",
                "remote_port": 45000,
                "old_state": "FIN_WAIT2",
                "new_state": "CLOSE",
                "ms_in_old_state": 1.5,
                "likely_time_wait": true,
                "netns_inode": null,
            })
        );
    }

    #[test]
    fn json_unknown_owner_is_null_not_zero() {
        let value: serde_json::Value =
            serde_json::from_str(&json_line(&sample(None), at())).unwrap();
        assert_eq!(value["pid"], serde_json::Value::Null);
        assert_eq!(value["comm"], serde_json::Value::Null);
        assert_eq!(value["owner_source"], serde_json::Value::Null);
    }

    #[test]
    fn text_marks_unknown_and_inferred_owners() {
        let line = text_line(&sample(None), at());
        assert!(line.starts_with("11:06:40.123456  -  "), "{line}");
        assert!(
            line.contains("127.0.0.1:8080"),
            "v4-mapped shown as IPv4: {line}"
        );
        assert!(line.contains("FIN_WAIT2 -> CLOSE (TIME_WAIT?)"), "{line}");
        assert!(line.ends_with(" 1.500"), "{line}");
        let inferred = text_line(&sample(Some(OwnerSource::Listener)), at());
        assert!(inferred.contains(" ~321 "), "{inferred}");
        assert!(endpoint("[::1]:80".parse().unwrap()) == "[::1]:80");
    }

    #[test]
    fn a_hostile_comm_is_one_field_in_text_and_exact_in_json() {
        let mut tracked = sample(Some(OwnerSource::ProcessContext));
        let hostile = "\n99999 FAKE\x1b[2J\x07";
        if let Some(owner) = tracked.owner.as_mut() {
            owner.process.comm = hostile.into();
        }
        let line = text_line(&tracked, at());
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains(" ?99999 FAKE?[2J? "), "{line:?}");
        let value: serde_json::Value = serde_json::from_str(&json_line(&tracked, at())).unwrap();
        assert_eq!(value["comm"], hostile);
    }
}
