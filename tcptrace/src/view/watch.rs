//! How a transition is shown: one aligned text line, or one JSON object.

use std::{
    fmt,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;

use crate::{
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

/// "2026-11-22T03:21:36.123" of RFC 3339 with microseconds: the part a
/// millisecond shares.
const MILLISECOND_TEXT_LEN: usize = 23;
const RFC3339_MICROS_LEN: usize = 27;

/// Writes `watch` lines into a byte buffer. This runs for every event
/// `watch` shows, so there is no serde value and no String per field, and
/// the time's text is made once per millisecond. The JSON is byte for byte
/// what `serde_json` writes for the same object (a test holds it to that).
#[derive(Default)]
pub struct Lines {
    /// The wall-clock millisecond (since the epoch) whose text `ms_text` holds.
    cached_ms: Option<u64>,
    ms_text: [u8; MILLISECOND_TEXT_LEN],
}

impl Lines {
    /// One aligned text line (under [`TEXT_HEADER`]), appended to `out`.
    /// The comm is sanitized: a process names itself.
    pub fn text(&mut self, out: &mut Vec<u8>, tracked: &TrackedTransition, time: SystemTime) {
        let t = &tracked.transition;
        let stamp = self.stamp(time);
        // "2026-11-22T03:21:36.123456Z" -> "03:21:36.123456"
        let clock: &[u8] = stamp.as_ref().map_or(b"?", |s| &s[11..26]);
        let mut pid = StackText::default();
        let comm_text;
        let comm = match &tracked.owner {
            Some(owner) => {
                // "~": inferred from the listening socket, see the README.
                if owner.source == OwnerSource::Listener {
                    pid.push("~");
                }
                pid.push(itoa::Buffer::new().format(owner.process.tgid));
                comm_text = owner.process.comm.to_text();
                sanitize(&comm_text)
            }
            None => {
                pid.push("-");
                "-".into()
            }
        };
        let mut transition = StackText::default();
        transition.push(t.old_state.name());
        transition.push(" -> ");
        transition.push(t.new_state.name());
        if tracked.likely_time_wait {
            transition.push(" (TIME_WAIT?)");
        }
        // The columns of "{:<16} {:<7} {:<16} {:<22} {:<22} {:<29} {}".
        padded(out, clock, 16);
        padded(out, pid.as_bytes(), 7);
        padded(out, comm.as_bytes(), 16);
        padded(out, endpoint_text(t.local).as_bytes(), 22);
        padded(out, endpoint_text(t.remote).as_bytes(), 22);
        padded(out, transition.as_bytes(), 29);
        match tracked.time_in_old_state {
            Some(d) => {
                let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
            }
            None => out.push(b'-'),
        }
        out.push(b'\n');
    }

    /// One JSON object and a newline, appended to `out`.
    pub fn json(&mut self, out: &mut Vec<u8>, tracked: &TrackedTransition, time: SystemTime) {
        let t = &tracked.transition;
        let owner = tracked.owner.as_ref();
        let mut numbers = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":");
        match self.stamp(time) {
            Some(stamp) => {
                out.push(b'"');
                out.extend_from_slice(&stamp);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"timestamp_ns\":");
        out.extend_from_slice(numbers.format(t.timestamp_ns).as_bytes());
        out.extend_from_slice(b",\"cookie\":");
        out.extend_from_slice(numbers.format(t.cookie).as_bytes());
        out.extend_from_slice(b",\"skaddr\":\"");
        write_hex(out, t.skaddr);
        out.extend_from_slice(b"\",\"pid\":");
        match owner {
            Some(o) => out.extend_from_slice(numbers.format(o.process.tgid).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"comm\":");
        match owner {
            Some(o) => write_json_string(out, o.process.comm.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"owner_source\":");
        match owner {
            Some(o) => {
                out.push(b'"');
                out.extend_from_slice(o.source.name().as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        let local_ip = t.local.ip().to_canonical();
        out.extend_from_slice(if local_ip.is_ipv4() {
            b",\"family\":\"ipv4\",\"local_addr\":\""
        } else {
            b",\"family\":\"ipv6\",\"local_addr\":\""
        });
        write_ip(out, local_ip);
        out.extend_from_slice(b"\",\"local_port\":");
        out.extend_from_slice(numbers.format(t.local.port()).as_bytes());
        out.extend_from_slice(b",\"remote_addr\":\"");
        write_ip(out, t.remote.ip().to_canonical());
        out.extend_from_slice(b"\",\"remote_port\":");
        out.extend_from_slice(numbers.format(t.remote.port()).as_bytes());
        out.extend_from_slice(b",\"old_state\":\"");
        out.extend_from_slice(t.old_state.name().as_bytes());
        out.extend_from_slice(b"\",\"new_state\":\"");
        out.extend_from_slice(t.new_state.name().as_bytes());
        out.extend_from_slice(b"\",\"ms_in_old_state\":");
        match tracked
            .time_in_old_state
            .map(|d| d.as_nanos() as f64 / 1_000_000.0)
        {
            // serde_json writes floats with zmij, and non-finite ones as null.
            Some(ms) if ms.is_finite() => {
                out.extend_from_slice(zmij::Buffer::new().format_finite(ms).as_bytes())
            }
            _ => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(if tracked.likely_time_wait {
            b",\"likely_time_wait\":true,\"netns_inode\":"
        } else {
            b",\"likely_time_wait\":false,\"netns_inode\":"
        });
        match t.netns_inode {
            Some(inode) => out.extend_from_slice(numbers.format(inode).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}\n");
    }

    /// RFC 3339 with microseconds, as humantime writes it; `None` for a
    /// time it cannot write (past the year 9999).
    fn stamp(&mut self, time: SystemTime) -> Option<[u8; RFC3339_MICROS_LEN]> {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = since_epoch.as_millis() as u64;
        if self.cached_ms != Some(ms) {
            let start = UNIX_EPOCH + Duration::from_millis(ms);
            let mut text = StackText::default();
            if fmt::write(
                &mut text,
                format_args!("{}", humantime::format_rfc3339_micros(start)),
            )
            .is_err()
                || text.len != RFC3339_MICROS_LEN
            {
                self.cached_ms = None;
                return None;
            }
            self.ms_text
                .copy_from_slice(&text.bytes[..MILLISECOND_TEXT_LEN]);
            self.cached_ms = Some(ms);
        }
        let mut stamp = [0; RFC3339_MICROS_LEN];
        stamp[..MILLISECOND_TEXT_LEN].copy_from_slice(&self.ms_text);
        let micros = since_epoch.subsec_micros() % 1000;
        stamp[MILLISECOND_TEXT_LEN..].copy_from_slice(&[
            b'0' + (micros / 100) as u8,
            b'0' + (micros / 10 % 10) as u8,
            b'0' + (micros % 10) as u8,
            b'Z',
        ]);
        Some(stamp)
    }
}

/// `text` and a space, first filled with spaces to `width` characters, as
/// `{:<width$}` fills.
fn padded(out: &mut Vec<u8>, text: &[u8], width: usize) {
    out.extend_from_slice(text);
    // Characters of UTF-8 text: the bytes that do not continue one.
    let chars = text.iter().filter(|&&b| (b as i8) >= -0x40).count();
    out.resize(out.len() + width.saturating_sub(chars) + 1, b' ');
}

/// A socket address as findings name it (`model::endpoint`), without a
/// String: IPv6 in brackets, an IPv4 peer of a dual-stack socket as IPv4.
fn endpoint_text(addr: SocketAddr) -> StackText {
    let ip = addr.ip().to_canonical();
    let mut text = StackText::default();
    if ip.is_ipv6() {
        text.push("[");
    }
    push_ip(&mut text, ip);
    if ip.is_ipv6() {
        text.push("]");
    }
    text.push(":");
    text.push(itoa::Buffer::new().format(addr.port()));
    text
}

/// An address as std writes it.
fn push_ip(text: &mut StackText, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut dotted = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    dotted[len] = b'.';
                    len += 1;
                }
                for (place, shown) in [(100, octet >= 100), (10, octet >= 10), (1, true)] {
                    if shown {
                        dotted[len] = b'0' + octet / place % 10;
                        len += 1;
                    }
                }
            }
            text.push_ascii(&dotted[..len]);
        }
        // Rare on a busy host's loopback, and its shortening rules are many:
        // std's own text.
        IpAddr::V6(v6) => {
            let _ = fmt::write(text, format_args!("{v6}"));
        }
    }
}

/// Text of at most 64 bytes, made without an allocation.
struct StackText {
    bytes: [u8; 64],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        Self {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl StackText {
    /// Appends what fits; every use here fits.
    fn push(&mut self, text: &str) {
        let _ = fmt::Write::write_str(self, text);
    }

    fn push_ascii(&mut self, ascii: &[u8]) {
        if let Some(room) = self.bytes.get_mut(self.len..self.len + ascii.len()) {
            room.copy_from_slice(ascii);
            self.len += ascii.len();
        }
    }

    /// UTF-8: only whole `&str`s are pushed.
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `{:#x}`: "0x" and lowercase digits, no leading zeros.
fn write_hex(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"0x");
    let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(DIGITS[(value >> (i * 4)) as usize & 0xf]);
    }
}

fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    let mut text = StackText::default();
    push_ip(&mut text, ip);
    out.extend_from_slice(text.as_bytes());
}

/// A JSON string of `bytes` (a comm: any bytes a process chose): shown as
/// text with U+FFFD for what is not UTF-8, escaped as serde_json escapes.
fn write_json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text.as_ref());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tcptrace_common::TcpState;

    use super::*;
    use crate::{
        model::endpoint::endpoint,
        model::tracker::Owner,
        model::transition::{Comm, Process, Transition},
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
        Lines::default().json(&mut out, tracked, time);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        line
    }

    fn text_line(tracked: &TrackedTransition, time: SystemTime) -> String {
        let mut out = Vec::new();
        Lines::default().text(&mut out, tracked, time);
        let line = String::from_utf8(out).unwrap();
        line.strip_suffix('\n').unwrap().to_owned()
    }

    /// The line `watch` has always written, through `format!`: the bytes
    /// [`Lines::text`] must match.
    fn clock_time(time: SystemTime) -> String {
        // "2026-11-22T03:21:36.123456Z" -> "03:21:36.123456"
        let stamp = humantime::format_rfc3339_micros(time).to_string();
        stamp.get(11..26).unwrap_or(&stamp).to_owned()
    }

    fn formatted_text_line(tracked: &TrackedTransition, time: SystemTime) -> String {
        let t = &tracked.transition;
        let comm = tracked.owner.as_ref().map(|o| o.process.comm.to_text());
        let (pid, comm) = match (&tracked.owner, &comm) {
            // "~": inferred from the listening socket, see the README.
            (Some(owner), Some(comm)) if owner.source == OwnerSource::Listener => {
                (format!("~{}", owner.process.tgid), sanitize(comm))
            }
            (Some(owner), Some(comm)) => (owner.process.tgid.to_string(), sanitize(comm)),
            _ => ("-".to_owned(), "-".into()),
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

    /// The object `watch --json` has always written, through serde: the
    /// bytes [`Lines::json`] must match.
    #[derive(serde::Serialize)]
    struct SerdeTransition<'a> {
        time: String,
        timestamp_ns: u64,
        cookie: u64,
        skaddr: String,
        pid: Option<u32>,
        comm: Option<&'a str>,
        owner_source: Option<&'static str>,
        family: &'static str,
        local_addr: String,
        local_port: u16,
        remote_addr: String,
        remote_port: u16,
        old_state: &'static str,
        new_state: &'static str,
        ms_in_old_state: Option<f64>,
        likely_time_wait: bool,
        netns_inode: Option<u32>,
    }

    fn serde_line(tracked: &TrackedTransition, time: SystemTime) -> String {
        let t = &tracked.transition;
        let local_ip = t.local.ip().to_canonical();
        let comm = tracked.owner.as_ref().map(|o| o.process.comm.to_text());
        let json = SerdeTransition {
            time: humantime::format_rfc3339_micros(time).to_string(),
            timestamp_ns: t.timestamp_ns,
            cookie: t.cookie,
            skaddr: format!("{:#x}", t.skaddr),
            pid: tracked.owner.as_ref().map(|o| o.process.tgid),
            comm: comm.as_deref(),
            owner_source: tracked.owner.as_ref().map(|o| o.source.name()),
            family: if local_ip.is_ipv4() { "ipv4" } else { "ipv6" },
            local_addr: local_ip.to_string(),
            local_port: t.local.port(),
            remote_addr: t.remote.ip().to_canonical().to_string(),
            remote_port: t.remote.port(),
            old_state: t.old_state.name(),
            new_state: t.new_state.name(),
            ms_in_old_state: tracked
                .time_in_old_state
                .map(|d| d.as_nanos() as f64 / 1_000_000.0),
            likely_time_wait: tracked.likely_time_wait,
            netns_inode: t.netns_inode,
        };
        serde_json::to_string(&json).unwrap() + "\n"
    }

    /// Transitions with hostile comms, both families, every owner kind and
    /// durations from none to huge, at times that step by less and more than
    /// a millisecond and back.
    fn cases() -> Vec<(TrackedTransition, SystemTime)> {
        let hostile: [&[u8]; 6] = [
            b"\n99999 FAKE\x1b[2J\x07",
            b"q\"uote\\back",
            b"\xff\xfe not utf8",
            "数据库".as_bytes(),
            b"del\x7f\t\r",
            b"",
        ];
        let mut cases = Vec::new();
        let base = at();
        let mut case = 0u64;
        for comm in hostile {
            for source in [
                None,
                Some(OwnerSource::ProcessContext),
                Some(OwnerSource::Listener),
            ] {
                for (local, remote) in [
                    ("[::ffff:127.0.0.1]:8080", "[::ffff:127.0.0.1]:45000"),
                    ("0.0.0.0:0", "255.255.255.255:65535"),
                    ("[::1]:80", "[2001:db8::1:0:0:1]:443"),
                    ("[fe80::1]:1", "[::]:0"),
                ] {
                    for in_old in [
                        None,
                        Some(Duration::ZERO),
                        Some(Duration::from_nanos(1)),
                        Some(Duration::from_nanos(123_456_789)),
                        Some(Duration::from_secs(86_400 * 400)),
                    ] {
                        case += 1;
                        let mut tracked = sample(source);
                        if let Some(owner) = tracked.owner.as_mut() {
                            let mut raw = [0u8; 16];
                            raw[..comm.len().min(16)].copy_from_slice(&comm[..comm.len().min(16)]);
                            owner.process.comm = Comm::from_kernel(&raw);
                        }
                        let t = &mut tracked.transition;
                        t.local = local.parse().unwrap();
                        t.remote = remote.parse().unwrap();
                        t.skaddr = [0, 1, 0xf, 0x10, u64::MAX][case as usize % 5];
                        t.cookie = case * 0x1_0000_0001;
                        t.timestamp_ns = case * 999_999_937;
                        t.netns_inode = case.is_multiple_of(2).then_some(case as u32 * 7);
                        tracked.likely_time_wait = case.is_multiple_of(3);
                        tracked.time_in_old_state = in_old;
                        // Steps of under and over a millisecond, and a
                        // return to an earlier one.
                        let time = match case % 4 {
                            0 => base - Duration::from_micros(1001),
                            _ => base + Duration::from_micros(case * case * 37),
                        };
                        cases.push((tracked, time));
                    }
                }
            }
        }
        assert_eq!(cases.len(), case as usize);
        cases
    }

    #[test]
    fn json_lines_are_the_bytes_serde_json_writes() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        let mut expected = String::new();
        for (tracked, time) in cases() {
            lines.json(&mut out, &tracked, time);
            expected.push_str(&serde_line(&tracked, time));
        }
        let written = String::from_utf8(out).unwrap();
        for (ours, theirs) in written.lines().zip(expected.lines()) {
            assert_eq!(ours, theirs);
        }
        assert_eq!(written, expected);
    }

    #[test]
    fn text_lines_are_the_bytes_format_wrote() {
        let mut lines = Lines::default();
        for (tracked, time) in cases() {
            let mut out = Vec::new();
            lines.text(&mut out, &tracked, time);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                formatted_text_line(&tracked, time) + "\n"
            );
        }
    }

    #[test]
    fn the_epoch_is_a_time_and_the_year_10000_is_none() {
        let mut lines = Lines::default();
        let tracked = sample(None);
        for time in [SystemTime::UNIX_EPOCH, at()] {
            let mut out = Vec::new();
            lines.json(&mut out, &tracked, time);
            assert_eq!(String::from_utf8(out).unwrap(), serde_line(&tracked, time));
        }
        let mut out = Vec::new();
        lines.json(
            &mut out,
            &tracked,
            SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000),
        );
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["time"], serde_json::Value::Null, "not a wrong date");
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
            owner.process.comm = Comm::from(hostile);
        }
        let line = text_line(&tracked, at());
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains(" ?99999 FAKE?[2J? "), "{line:?}");
        let value: serde_json::Value = serde_json::from_str(&json_line(&tracked, at())).unwrap();
        assert_eq!(value["comm"], hostile);
    }
}
