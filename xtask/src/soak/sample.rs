//! What the soak reads about the running `serve`: RSS and fds from /proc,
//! the occupancy, drop and series figures of its /metrics, the BPF objects
//! it holds, and what a process or the kernel still has at the end.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::harness::http_get;

/// A scrape slower than this is recorded as failed.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The figures of one /metrics scrape.
#[derive(Clone, Debug, Default)]
pub struct MetricsFigures {
    /// Lines that are a sample, not a comment.
    pub series: usize,
    pub drops: Option<f64>,
    pub kernel_storage_failures: Option<f64>,
    /// `tcptrace_map_entries{map=...}`; empty when not exported.
    pub maps: BTreeMap<String, f64>,
    pub map_capacity: BTreeMap<String, f64>,
    /// `tcptrace_agent_table_entries{table=...}`; empty when not exported.
    pub tables: BTreeMap<String, f64>,
    pub table_capacity: BTreeMap<String, f64>,
    /// Per metric name: distinct comm/container label pairs (the folds
    /// comm="other" and "unknown" not counted), and distinct pids.
    pub holders: BTreeMap<String, usize>,
    pub pids: BTreeMap<String, usize>,
}

#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds since the soak started.
    pub t: f64,
    pub phase: usize,
    /// Which `serve` (0 before the restart, 1 after).
    pub instance: usize,
    pub rss_kib: Option<u64>,
    pub fds: Option<u64>,
    pub metrics: Result<MetricsFigures, String>,
    pub scrape_ms: f64,
}

/// Label pairs of one sample line, unescaped.
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches([',', ' ']).to_owned(), value);
        rest = &after[end..];
    }
    out
}

/// The figures the soak follows, from OpenMetrics text.
pub fn parse_metrics(text: &str) -> MetricsFigures {
    let mut figures = MetricsFigures::default();
    let mut holders: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut pids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        figures.series += 1;
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(f64::NAN);
        let (name, label_text) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        let labels = labels(label_text);
        let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
        match name {
            "tcptrace_events_dropped_total" => {
                *figures.drops.get_or_insert(0.0) += value;
            }
            "tcptrace_kernel_storage_failures_total" => {
                figures.kernel_storage_failures = Some(value);
            }
            "tcptrace_map_entries" => {
                figures.maps.insert(label("map"), value);
            }
            "tcptrace_map_capacity" => {
                figures.map_capacity.insert(label("map"), value);
            }
            "tcptrace_agent_table_entries" => {
                figures.tables.insert(label("table"), value);
            }
            "tcptrace_agent_table_capacity" => {
                figures.table_capacity.insert(label("table"), value);
            }
            _ => {}
        }
        // "other" and "unknown" are the folds, not holders of their own.
        let folded = matches!(
            labels.get("comm").map(String::as_str),
            Some("other" | "unknown")
        );
        if (labels.contains_key("comm") || labels.contains_key("container")) && !folded {
            holders
                .entry(name.to_owned())
                .or_default()
                .insert((label("comm"), label("container")));
        }
        if let Some(pid) = labels.get("pid") {
            pids.entry(name.to_owned()).or_default().insert(pid.clone());
        }
    }
    figures.holders = holders.into_iter().map(|(k, v)| (k, v.len())).collect();
    figures.pids = pids.into_iter().map(|(k, v)| (k, v.len())).collect();
    figures
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn fd_count(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Program and map ids the process holds an fd to (programs, links, maps).
pub fn bpf_ids_held(pid: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let (mut programs, mut maps) = (BTreeSet::new(), BTreeSet::new());
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (programs, maps);
    };
    for entry in entries.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            let id = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u32>().ok())
            };
            if line.starts_with("prog_id:") {
                programs.extend(id(line));
            } else if line.starts_with("map_id:") {
                maps.extend(id(line));
            }
        }
    }
    (programs, maps)
}

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;

#[repr(C)]
struct NextIdAttr {
    start_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn all_ids(command: libc::c_long) -> Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    let mut attr = NextIdAttr {
        start_id: 0,
        next_id: 0,
        open_flags: 0,
    };
    // Ids are 31-bit; a kernel with that many objects is not one to soak on.
    for _ in 0..1_000_000 {
        // SAFETY: the bpf syscall reads and writes this attr, of the size given.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                &raw mut attr,
                std::mem::size_of::<NextIdAttr>(),
            )
        };
        if ret != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOENT) {
                return Ok(ids);
            }
            return Err(error).context("bpf(GET_NEXT_ID)");
        }
        ids.insert(attr.next_id);
        attr.start_id = attr.next_id;
    }
    bail!("more than a million BPF objects")
}

/// Every BPF program and map id on the host now.
pub fn all_bpf_ids() -> Result<(BTreeSet<u32>, BTreeSet<u32>)> {
    Ok((
        all_ids(BPF_PROG_GET_NEXT_ID)?,
        all_ids(BPF_MAP_GET_NEXT_ID)?,
    ))
}

/// The environment variable every process the soak starts inherits.
pub const OWNER_VARIABLE: &str = "TCPTRACE_SOAK_OWNER";

/// Processes still carrying this soak's mark (itself excluded).
pub fn marked_processes() -> Vec<(u32, String)> {
    let me = std::process::id();
    let mark = format!("{OWNER_VARIABLE}={me}");
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == mark.as_bytes()) {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_owned()));
        }
    }
    found
}

/// Sockets in CLOSE_WAIT that `pid` holds, as `ss -tanp state close-wait` lists them.
pub fn ss_close_wait(pid: u32) -> Result<u64> {
    let output = Command::new("ss")
        .args(["-tanpH", "state", "close-wait"])
        .output()
        .context("running ss")?;
    if !output.status.success() {
        bail!("ss failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let holder = format!("pid={pid},");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&holder))
        .count() as u64)
}

/// The `serve` being sampled, and where the soak is.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub serve: Option<(u32, String)>,
    pub instance: usize,
    pub phase: usize,
}

#[derive(Default)]
pub struct Shared {
    pub target: Mutex<Target>,
    pub samples: Mutex<Vec<Sample>>,
    /// Every program and map id any `serve` of this soak held.
    pub held: Mutex<(BTreeSet<u32>, BTreeSet<u32>)>,
    stop: AtomicBool,
}

impl Shared {
    pub fn set_phase(&self, phase: usize) {
        self.target.lock().expect("target").phase = phase;
    }

    pub fn set_serve(&self, serve: Option<(u32, String)>, instance: usize) {
        if let Some((pid, _)) = &serve {
            self.note_bpf(*pid);
        }
        let mut target = self.target.lock().expect("target");
        target.serve = serve;
        target.instance = instance;
    }

    fn note_bpf(&self, pid: u32) {
        let (programs, maps) = bpf_ids_held(pid);
        let mut held = self.held.lock().expect("held");
        held.0.extend(programs);
        held.1.extend(maps);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }
}

pub fn take(shared: &Shared, started: Instant) -> Sample {
    let target = shared.target.lock().expect("target").clone();
    let t = started.elapsed().as_secs_f64();
    let (pid, address) = target.serve.unwrap_or_default();
    let scrape_started = Instant::now();
    let metrics = if address.is_empty() {
        Err("serve not running".to_owned())
    } else {
        http_get(&address, "/metrics", SCRAPE_TIMEOUT)
            .map(|text| parse_metrics(&text))
            .map_err(|e| format!("{e:#}"))
    };
    let scrape_ms = scrape_started.elapsed().as_secs_f64() * 1e3;
    if pid != 0 {
        shared.note_bpf(pid);
    }
    Sample {
        t,
        phase: target.phase,
        instance: target.instance,
        rss_kib: (pid != 0).then(|| rss_kib(pid)).flatten(),
        fds: (pid != 0).then(|| fd_count(pid)).flatten(),
        metrics,
        scrape_ms,
    }
}

/// Samples every `every` on a thread of its own until stopped.
pub struct Sampler {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(shared: Arc<Shared>, started: Instant, every: Duration) -> Self {
        let inner = shared.clone();
        let thread = thread::spawn(move || {
            let mut next = Instant::now();
            while !inner.stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let sample = take(&inner, started);
                    inner.samples.lock().expect("samples").push(sample);
                    next += every;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            shared,
            thread: Some(thread),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_figures() {
        let text = "# TYPE tcptrace_map_entries gauge\n\
            tcptrace_map_entries{map=\"owners\"} 40\n\
            tcptrace_map_capacity{map=\"owners\"} 65536\n\
            tcptrace_agent_table_entries{table=\"socket_stacks\"} 3\n\
            tcptrace_events_dropped_total 7\n\
            tcptrace_leaking_sockets{comm=\"a\\\"b}\",container=\"\"} 1\n\
            tcptrace_leaking_sockets{comm=\"other\",container=\"x\"} 2\n\
            tcptrace_leaking_sockets{comm=\"b\",container=\"x\"} 2\n\
            tcptrace_process_leaking_sockets{pid=\"12\",comm=\"a\"} 1\n\
            # EOF\n";
        let figures = parse_metrics(text);
        assert_eq!(figures.series, 8);
        assert_eq!(figures.drops, Some(7.0));
        assert_eq!(figures.maps["owners"], 40.0);
        assert_eq!(figures.map_capacity["owners"], 65536.0);
        assert_eq!(figures.tables["socket_stacks"], 3.0);
        assert_eq!(figures.holders["tcptrace_leaking_sockets"], 2);
        assert_eq!(figures.pids["tcptrace_process_leaking_sockets"], 1);
        let parsed = labels("comm=\"a\\\"b}\",container=\"\"");
        assert_eq!(parsed["comm"], "a\"b}");
        assert_eq!(parsed["container"], "");
    }
}
