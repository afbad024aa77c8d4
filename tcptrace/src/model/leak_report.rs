//! The leak report: leaks grouped per holder process, with the questions an
//! operator asks next — how old, growing how fast, when do fds run out, and
//! which peers. Pure: holders, fd usage and time come in as arguments.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Serialize;

use crate::{
    model::endpoint::endpoint,
    model::holder::Holder,
    model::leaks::{LeakKind, Suspect},
    model::stack::{Frame, Frames, NamedStack},
    model::stack_gaps::{OriginMoment, SocketStackFacts, StackSampling, eof_gap, origin_gap},
};

use crate::model::process::FdUsage;

/// The stacks the probe took for one socket, resolved.
#[derive(Clone, Debug, Default)]
pub struct SocketStacks {
    /// Its connect, accept, first read or first write.
    pub origin: Option<(OriginMoment, Frames)>,
    pub eof: Option<Frames>,
}

/// Leaked sockets of one process that share their code paths: the same
/// named frames, whatever the addresses of frames nothing names.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CodePath {
    pub sockets: usize,
    /// Connect (the client that opened it), accept, or the first read or
    /// write (an accepted socket's first I/O: the handler serving it);
    /// `None` when no origin stack was taken.
    pub origin: Option<OriginMoment>,
    /// One line per frame, innermost first, then `(stack truncated: …)`
    /// if the stack was cut.
    pub origin_stack: Vec<String>,
    /// The recv that returned EOF and was never followed by close().
    pub eof_stack: Vec<String>,
    /// The same frames with their module and whose code they are.
    pub origin_frames: Vec<Frame>,
    pub eof_frames: Vec<Frame>,
    /// Why the walk stopped before the outermost frame.
    pub origin_truncated: Option<String>,
    pub eof_truncated: Option<String>,
    /// Why there is no origin stack, and why no EOF stack (`None` where
    /// there is one).
    pub origin_missing: Option<&'static str>,
    pub eof_missing: Option<&'static str>,
    /// Which runtime's frames hide the program's, and what would name them.
    pub note: Option<String>,
}

impl CodePath {
    fn new(
        sockets: usize,
        origin: Option<OriginMoment>,
        origin_stack: Option<&NamedStack>,
        eof_stack: Option<&NamedStack>,
        (origin_missing, eof_missing): Gaps,
    ) -> Self {
        let lines = |s: Option<&NamedStack>| s.map(NamedStack::lines).unwrap_or_default();
        let frames = |s: Option<&NamedStack>| s.map(|s| s.frames.clone()).unwrap_or_default();
        let truncated = |s: Option<&NamedStack>| s.and_then(|s| s.truncated.clone());
        // The EOF read is the leaking one: its advice first.
        let note = eof_stack
            .and_then(|s| s.note.clone())
            .or_else(|| origin_stack.and_then(|s| s.note.clone()));
        Self {
            sockets,
            origin,
            origin_stack: lines(origin_stack),
            eof_stack: lines(eof_stack),
            origin_frames: frames(origin_stack),
            eof_frames: frames(eof_stack),
            origin_truncated: truncated(origin_stack),
            eof_truncated: truncated(eof_stack),
            origin_missing,
            eof_missing,
            note,
        }
    }

    /// The EOF read was seen: the finding can say the process read EOF.
    pub fn read_eof(&self) -> bool {
        !self.eof_frames.is_empty()
    }
}

/// How many of a process's leaked sockets have a code path.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CodePathCoverage {
    /// With an origin or an EOF stack.
    pub sockets_with_code_path: usize,
    pub sockets: usize,
    /// The copy budget refused some copies: the rest are a sample.
    pub sampled: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ReportFilter {
    /// Holder process.
    pub pid: Option<u32>,
    /// Local or remote port.
    pub port: Option<u16>,
    /// The agent's own HTTP listener: a socket on it that no process
    /// holds is a connection waiting in its accept queue (while the agent
    /// is out of fds, say), not a leak of some program.
    pub own_listener: Option<OwnListener>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnListener {
    pub addr: SocketAddr,
    /// Its network namespace, where known: the same port in another one
    /// is another program's.
    pub netns_inode: Option<u64>,
}

impl OwnListener {
    /// `suspect` is a connection to this listener.
    fn queued(&self, suspect: &Suspect) -> bool {
        let ip_matches = self.addr.ip().is_unspecified() || self.addr.ip() == suspect.local.ip();
        let netns_matches = match (self.netns_inode, suspect.netns_inode) {
            (Some(own), Some(its)) => own == its,
            _ => true,
        };
        suspect.local.port() == self.addr.port() && ip_matches && netns_matches
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LeakedSocket {
    pub cookie: u64,
    pub kind: &'static str,
    pub local: String,
    pub remote: String,
    pub age_ms: u64,
    /// Seen only after it started leaking: the true age is larger.
    pub age_is_lower_bound: bool,
    pub provenance: &'static str,
    pub fd: Option<u32>,
    pub netns_inode: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeerCount {
    pub address: String,
    pub sockets: usize,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProcessLeaks {
    /// `None`: sockets no process holds (e.g. never accepted from a backlog).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub close_wait: usize,
    pub closed_held: usize,
    pub oldest_age_ms: u64,
    pub oldest_age_is_lower_bound: bool,
    /// Change of this process's leak count over the last minute, per minute.
    pub growth_per_minute: Option<f64>,
    pub fds_open: Option<u64>,
    pub fd_limit: Option<u64>,
    /// At the current growth.
    pub fds_exhausted_in_s: Option<f64>,
    pub peers: Vec<PeerCount>,
    pub peer_pattern: Option<&'static str>,
    pub code_path_coverage: CodePathCoverage,
    /// Most sockets first.
    pub code_paths: Vec<CodePath>,
    pub sockets: Vec<LeakedSocket>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProbeHealth {
    /// TCP transitions the probe saw, recorded or only counted in the
    /// kernel (most, in leak mode: a verdict reads few of them).
    pub transitions: u64,
    /// Records received from the probe.
    pub events: u64,
    pub drops: u64,
    pub decode_errors: u64,
    pub corrections: u64,
    pub unreadable_namespaces: usize,
    /// Reads of the kernel's table or of /proc that failed: what was known
    /// before was kept, so the report may be out of date.
    pub host_read_failures: u64,
    /// Reads of the kernel's table that asked about the CLOSE_WAIT sockets
    /// the events named, one by one, instead of walking the whole table
    /// (done while no event was lost since the last whole read).
    pub table_lookups: u64,
    /// Stacks the kernel could not store (map full, bucket collision).
    pub stack_errors: u64,
    /// Stacks the symbolizer failed on: their frames are unnamed.
    pub symbolize_failures: u64,
    /// Malformed lines skipped in processes' perf maps (the rest of each
    /// map is still used).
    pub perf_map_lines_skipped: u64,
    /// Each attached program's kernel statistics (counted only while
    /// bpf_stats is enabled).
    pub programs: Vec<ProgramHealth>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProgramHealth {
    pub program: &'static str,
    pub runs: u64,
    pub run_ns: u64,
    pub recursion_misses: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LeakReport {
    pub min_age_ms: u64,
    /// Distinct sockets: one held by two processes counts once.
    pub leaking_sockets: usize,
    pub processes: Vec<ProcessLeaks>,
    pub health: ProbeHealth,
    /// Which stacks the probe could take and the budget let it, so a code
    /// path without one says why.
    pub stacks: StackSampling,
}

impl LeakReport {
    pub fn is_empty(&self) -> bool {
        self.leaking_sockets == 0
    }
}

/// How much of a report one document shows.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct PageLimits {
    /// Processes, most leaking sockets first.
    pub processes: usize,
    /// Sockets per process, oldest first.
    pub sockets_per_process: usize,
    /// Code paths per process, most sockets first.
    pub code_paths_per_process: usize,
}

impl PageLimits {
    /// `serve`'s `/leaks`: a host with 100k leaks must not make every
    /// scrape a 100 MB document.
    pub const SERVE: Self = Self {
        processes: 50,
        sockets_per_process: 50,
        code_paths_per_process: 10,
    };
}

/// A report cut to [`PageLimits`], with the totals of the whole.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LeakPage<'a> {
    /// When the host read it reflects began (RFC 3339, UTC), where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
    pub min_age_ms: u64,
    /// Of the whole report.
    pub leaking_sockets: usize,
    /// Process entries of the whole report (unheld sockets are one).
    pub leaking_processes: usize,
    /// Some processes, sockets or code paths were left out; each process's
    /// `close_wait` and `closed_held` still count all of its sockets.
    pub truncated: bool,
    pub limits: PageLimits,
    pub processes: Vec<ProcessLeaks>,
    pub health: &'a ProbeHealth,
    /// As in the report: which stacks could be taken, and the budget's
    /// copies taken and refused.
    pub stacks: &'a StackSampling,
}

impl<'a> LeakPage<'a> {
    pub fn new(report: &'a LeakReport, limits: PageLimits) -> Self {
        let mut truncated = report.processes.len() > limits.processes;
        let processes = report
            .processes
            .iter()
            .take(limits.processes)
            .map(|process| {
                truncated |= process.sockets.len() > limits.sockets_per_process
                    || process.code_paths.len() > limits.code_paths_per_process;
                ProcessLeaks {
                    sockets: process
                        .sockets
                        .iter()
                        .take(limits.sockets_per_process)
                        .cloned()
                        .collect(),
                    code_paths: process
                        .code_paths
                        .iter()
                        .take(limits.code_paths_per_process)
                        .cloned()
                        .collect(),
                    peers: process.peers.clone(),
                    comm: process.comm.clone(),
                    ..*process
                }
            })
            .collect();
        Self {
            as_of: None,
            min_age_ms: report.min_age_ms,
            leaking_sockets: report.leaking_sockets,
            leaking_processes: report.processes.len(),
            truncated,
            limits,
            processes,
            health: &report.health,
            stacks: &report.stacks,
        }
    }
}

/// Leak counts per process over the last minute, for growth rates.
#[derive(Default)]
pub struct GrowthHistory {
    samples: HashMap<Option<u32>, VecDeque<(u64, usize)>>,
}

const GROWTH_WINDOW: Duration = Duration::from_secs(60);
/// Shorter spans give rates that mean little.
const MIN_GROWTH_SPAN: Duration = Duration::from_secs(10);

impl GrowthHistory {
    fn record(&mut self, pid: Option<u32>, now_ns: u64, count: usize) -> Option<f64> {
        let samples = self.samples.entry(pid).or_default();
        samples.push_back((now_ns, count));
        while samples
            .front()
            .is_some_and(|&(at, _)| now_ns.saturating_sub(at) > GROWTH_WINDOW.as_nanos() as u64)
        {
            samples.pop_front();
        }
        let &(first_ns, first_count) = samples.front()?;
        let span = Duration::from_nanos(now_ns.saturating_sub(first_ns));
        (span >= MIN_GROWTH_SPAN)
            .then(|| (count as f64 - first_count as f64) / (span.as_secs_f64() / 60.0))
    }

    /// Forgets processes that no longer leak.
    fn retain(&mut self, pids: &[Option<u32>]) {
        self.samples.retain(|pid, _| pids.contains(pid));
    }
}

/// One process's comm and its leaked sockets, each with the fd it holds.
type HeldLeaks<'a> = (Option<String>, Vec<(&'a Suspect, Option<u32>)>);

#[allow(clippy::too_many_arguments)] // the report's inputs, each from another source
pub fn build_report(
    leaks: &[&Suspect],
    holders: &HashMap<u64, Vec<Holder>>,
    stacks: &HashMap<u64, SocketStacks>,
    sampling: &StackSampling,
    now_ns: u64,
    min_age: Duration,
    filter: &ReportFilter,
    fd_usage: impl Fn(u32) -> Option<FdUsage>,
    growth: &mut GrowthHistory,
) -> LeakReport {
    let no_holders = Vec::new();
    let mut by_process: BTreeMap<Option<u32>, HeldLeaks> = BTreeMap::new();
    let mut counted = std::collections::HashSet::new();
    for &suspect in leaks {
        if let Some(port) = filter.port
            && suspect.local.port() != port
            && suspect.remote.port() != port
        {
            continue;
        }
        let socket_holders = suspect
            .inode
            .and_then(|inode| holders.get(&inode))
            .unwrap_or(&no_holders);
        if socket_holders.is_empty() {
            if filter.own_listener.is_some_and(|own| own.queued(suspect)) {
                continue;
            }
            if filter.pid.is_none() {
                counted.insert(suspect.cookie);
                by_process.entry(None).or_default().1.push((suspect, None));
            }
            continue;
        }
        for holder in socket_holders {
            if filter.pid.is_some_and(|pid| pid != holder.pid) {
                continue;
            }
            counted.insert(suspect.cookie);
            let entry = by_process.entry(Some(holder.pid)).or_default();
            entry.0.get_or_insert_with(|| holder.comm.clone());
            entry.1.push((suspect, Some(holder.fd)));
        }
    }

    let pids: Vec<Option<u32>> = by_process.keys().copied().collect();
    growth.retain(&pids);
    let mut processes: Vec<ProcessLeaks> = by_process
        .into_iter()
        .map(|(pid, (comm, sockets))| {
            let stacks = Stacks {
                of_socket: stacks,
                sampling,
            };
            process_leaks(pid, comm, &sockets, &stacks, now_ns, &fd_usage, growth)
        })
        .collect();
    processes.sort_by(|a, b| {
        (b.close_wait + b.closed_held)
            .cmp(&(a.close_wait + a.closed_held))
            .then(a.pid.cmp(&b.pid))
    });
    LeakReport {
        min_age_ms: min_age.as_millis() as u64,
        leaking_sockets: counted.len(),
        processes,
        health: ProbeHealth::default(),
        stacks: *sampling,
    }
}

/// The stacks of the leaked sockets, and what explains a missing one.
struct Stacks<'a> {
    of_socket: &'a HashMap<u64, SocketStacks>,
    sampling: &'a StackSampling,
}

fn process_leaks(
    pid: Option<u32>,
    comm: Option<String>,
    sockets: &[(&Suspect, Option<u32>)],
    stacks: &Stacks,
    now_ns: u64,
    fd_usage: &impl Fn(u32) -> Option<FdUsage>,
    growth: &mut GrowthHistory,
) -> ProcessLeaks {
    let count = |kind| sockets.iter().filter(|(s, _)| s.kind == kind).count();
    let oldest = sockets
        .iter()
        .map(|(s, _)| s)
        .max_by_key(|s| s.age(now_ns))
        .expect("a process entry has at least one socket");
    let growth_per_minute = growth.record(pid, now_ns, sockets.len());
    let usage = pid.and_then(fd_usage);
    let fds_exhausted_in_s = match (usage, growth_per_minute) {
        (
            Some(FdUsage {
                open,
                limit: Some(limit),
            }),
            Some(rate),
        ) if rate > 0.0 => Some(limit.saturating_sub(open) as f64 / rate * 60.0),
        _ => None,
    };
    let endpoints: Vec<(SocketAddr, SocketAddr)> =
        sockets.iter().map(|(s, _)| (s.local, s.remote)).collect();
    let accepted = side_of(&endpoints) == Side::Accepted;
    let (peers, peer_pattern) = group_peers(endpoints.iter().copied());
    let mut listed: Vec<LeakedSocket> = sockets
        .iter()
        .map(|(s, fd)| LeakedSocket {
            cookie: s.cookie,
            kind: s.kind.name(),
            local: endpoint(s.local),
            remote: endpoint(s.remote),
            age_ms: s.age(now_ns).as_millis() as u64,
            age_is_lower_bound: s.provenance.age_is_lower_bound(),
            provenance: s.provenance.name(),
            fd: *fd,
            netns_inode: s.netns_inode,
        })
        .collect();
    listed.sort_by(|a, b| b.age_ms.cmp(&a.age_ms).then(a.cookie.cmp(&b.cookie)));
    let code_paths = code_paths(sockets.iter().map(|(s, _)| {
        let socket_stacks = stacks.of_socket.get(&s.cookie);
        let facts = SocketStackFacts {
            provenance: s.provenance,
            accepted,
            has_origin: socket_stacks.is_some_and(|st| st.origin.is_some()),
            has_eof: socket_stacks.is_some_and(|st| st.eof.is_some()),
        };
        let gaps = (
            origin_gap(&facts, stacks.sampling),
            eof_gap(&facts, stacks.sampling),
        );
        (socket_stacks, gaps)
    }));
    let code_path_coverage = CodePathCoverage {
        sockets_with_code_path: code_paths
            .iter()
            .filter(|p| !p.origin_frames.is_empty() || !p.eof_frames.is_empty())
            .map(|p| p.sockets)
            .sum(),
        sockets: sockets.len(),
        sampled: stacks.sampling.is_sampled(),
    };
    ProcessLeaks {
        pid,
        comm,
        close_wait: count(LeakKind::CloseWait),
        closed_held: count(LeakKind::ClosedHeld),
        oldest_age_ms: oldest.age(now_ns).as_millis() as u64,
        oldest_age_is_lower_bound: oldest.provenance.age_is_lower_bound(),
        growth_per_minute,
        fds_open: usage.map(|u| u.open),
        fd_limit: usage.and_then(|u| u.limit),
        fds_exhausted_in_s,
        peers,
        peer_pattern,
        code_path_coverage,
        code_paths,
        sockets: listed,
    }
}

/// Why a socket has no origin stack, and why no EOF stack.
type Gaps = (Option<&'static str>, Option<&'static str>);
/// What makes two code paths one: the origin kind, each stack's named
/// frames (unnamed ones by module only), and why a stack is missing.
type CodePathKey = (
    Option<OriginMoment>,
    Option<StackKey>,
    Option<StackKey>,
    Gaps,
);
type StackKey = (Vec<String>, bool);
/// Sockets of a code path, its origin kind, the stacks of its first socket
/// and its gaps.
type Grouped = (
    usize,
    Option<OriginMoment>,
    Option<Frames>,
    Option<Frames>,
    Gaps,
);

fn code_paths<'a>(
    sockets: impl Iterator<Item = (Option<&'a SocketStacks>, Gaps)>,
) -> Vec<CodePath> {
    // Each group shows the stacks of its first socket.
    let mut paths: HashMap<CodePathKey, Grouped> = HashMap::new();
    for (stacks, gaps) in sockets {
        let (origin, origin_stack) = match stacks.and_then(|s| s.origin.as_ref()) {
            Some((moment, frames)) => (Some(*moment), Some(frames.clone())),
            None => (None, None),
        };
        let eof_stack = stacks.and_then(|s| s.eof.clone());
        let key = (
            origin,
            origin_stack.as_ref().map(|s| s.group_key()),
            eof_stack.as_ref().map(|s| s.group_key()),
            gaps,
        );
        paths
            .entry(key)
            .or_insert((0, origin, origin_stack, eof_stack, gaps))
            .0 += 1;
    }
    let mut paths: Vec<CodePath> = paths
        .into_values()
        .map(|(sockets, origin, origin_stack, eof_stack, gaps)| {
            CodePath::new(
                sockets,
                origin,
                origin_stack.as_deref(),
                eof_stack.as_deref(),
                gaps,
            )
        })
        .collect();
    paths.sort_by(|a, b| {
        b.sockets
            .cmp(&a.sockets)
            .then_with(|| a.origin_stack.cmp(&b.origin_stack))
            .then_with(|| a.eof_stack.cmp(&b.eof_stack))
            .then_with(|| a.origin_missing.cmp(&b.origin_missing))
    });
    paths
}

const TOP_PEERS: usize = 5;

/// Which end of its connections a process's leaking sockets are.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    /// All on one local port, from many remote ports: a server's.
    Accepted,
    /// All to one remote port, from many local ports: a client's.
    Connected,
    Unknown,
}

fn side_of(sockets: &[(SocketAddr, SocketAddr)]) -> Side {
    let local_ports: HashSet<u16> = sockets.iter().map(|(l, _)| l.port()).collect();
    let remote_ports: HashSet<u16> = sockets.iter().map(|(_, r)| r.port()).collect();
    match (local_ports.len(), remote_ports.len()) {
        (1, n) if n > 1 => Side::Accepted,
        (n, 1) if n > 1 => Side::Connected,
        _ => Side::Unknown,
    }
}

/// Peers by leaked sockets, most first, and what the spread usually means
/// (the reading an operator does by hand with `ss | sort | uniq -c`).
fn group_peers(
    sockets: impl Iterator<Item = (SocketAddr, SocketAddr)>,
) -> (Vec<PeerCount>, Option<&'static str>) {
    let sockets: Vec<(SocketAddr, SocketAddr)> = sockets.collect();
    let mut counts: HashMap<IpAddr, usize> = HashMap::new();
    for (_, remote) in &sockets {
        *counts.entry(remote.ip().to_canonical()).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    let distinct = counts.len();
    let mut sorted: Vec<(IpAddr, usize)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let pattern = match sorted.first() {
        Some(&(_, top)) if total >= 3 && top * 2 > total => Some(match side_of(&sockets) {
            Side::Accepted => {
                "one client holds most: it hung up and this server did not close; look at the handler that serves it"
            }
            Side::Connected => {
                "one server holds most: it hung up and this client did not close; a pool that keeps idle connections, or a missing close()"
            }
            Side::Unknown => "one peer holds most of them",
        }),
        Some(&(_, top)) if distinct >= 3 && top <= 2 => {
            Some("many peers with one or two each: the application forgets close()")
        }
        _ => None,
    };
    let peers = sorted
        .into_iter()
        .take(TOP_PEERS)
        .map(|(ip, sockets)| PeerCount {
            address: ip.to_string(),
            sockets,
        })
        .collect();
    (peers, pattern)
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::{collections::HashMap, time::Duration};

    use super::{
        GrowthHistory, LeakReport, ReportFilter, SocketStacks, StackSampling, build_report,
    };
    use crate::model::{
        holder::Holder,
        leaks::{LeakKind, Provenance, Suspect},
    };

    pub(crate) const S: u64 = 1_000_000_000;

    pub(crate) fn suspect(
        cookie: u64,
        inode: u64,
        remote: &str,
        since_s: u64,
        kind: LeakKind,
    ) -> Suspect {
        Suspect {
            cookie,
            kind,
            since_ns: since_s * S,
            provenance: Provenance::Observed,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode: Some(inode),
            netns_inode: Some(1),
        }
    }

    pub(crate) fn holder(pid: u32, fd: u32) -> Holder {
        Holder {
            pid,
            comm: format!("proc{pid}"),
            fd,
        }
    }

    /// A 6.18 host like this one, no copy refused yet: reads and writes
    /// are seen, accept() is not.
    pub(crate) fn quiet_sampling() -> StackSampling {
        StackSampling {
            mode: crate::model::stack_gaps::StackMode::Sampled,
            budget_per_second: Some(500),
            reads_seen: true,
            writes_seen: true,
            ..StackSampling::default()
        }
    }

    /// Everything, 10 s in, no fd usage and no history.
    pub(crate) fn report_at_10s(
        leaks: &[&Suspect],
        holders: &HashMap<u64, Vec<Holder>>,
        stacks: &HashMap<u64, SocketStacks>,
    ) -> LeakReport {
        report_at_10s_with(leaks, holders, stacks, &quiet_sampling())
    }

    pub(crate) fn report_at_10s_with(
        leaks: &[&Suspect],
        holders: &HashMap<u64, Vec<Holder>>,
        stacks: &HashMap<u64, SocketStacks>,
        sampling: &StackSampling,
    ) -> LeakReport {
        build_report(
            leaks,
            holders,
            stacks,
            sampling,
            10 * S,
            Duration::ZERO,
            &ReportFilter::default(),
            |_| None,
            &mut GrowthHistory::default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::leak_report::test_support::{S, holder, report_at_10s, suspect};

    fn usage(_pid: u32) -> Option<FdUsage> {
        Some(FdUsage {
            open: 100,
            limit: Some(1024),
        })
    }

    #[test]
    fn groups_by_holder_and_counts_shared_sockets_once() {
        let leaks = [
            suspect(1, 11, "10.0.0.1:1000", 0, LeakKind::CloseWait),
            suspect(2, 12, "10.0.0.2:1000", 5, LeakKind::CloseWait),
            suspect(3, 13, "10.0.0.3:1000", 8, LeakKind::ClosedHeld),
        ];
        let refs: Vec<&Suspect> = leaks.iter().collect();
        // Socket 1 is shared by a parent and its forked child.
        let holders = HashMap::from([
            (11, vec![holder(10, 3), holder(20, 3)]),
            (12, vec![holder(10, 4)]),
            (13, vec![holder(10, 5)]),
        ]);
        let report = build_report(
            &refs,
            &holders,
            &HashMap::new(),
            &crate::model::stack_gaps::StackSampling::default(),
            100 * S,
            Duration::from_secs(30),
            &ReportFilter::default(),
            usage,
            &mut GrowthHistory::default(),
        );
        assert_eq!(report.leaking_sockets, 3);
        let parent = &report.processes[0];
        assert_eq!(parent.pid, Some(10));
        assert_eq!((parent.close_wait, parent.closed_held), (2, 1));
        assert_eq!(parent.oldest_age_ms, 100_000);
        assert_eq!(parent.sockets[0].fd, Some(3));
        assert_eq!(parent.fds_open, Some(100));
        let child = &report.processes[1];
        assert_eq!((child.pid, child.close_wait), (Some(20), 1));
        assert_eq!(
            parent.peer_pattern,
            Some("many peers with one or two each: the application forgets close()")
        );
    }

    #[test]
    fn unheld_sockets_and_filters() {
        let leaks = [
            suspect(1, 11, "10.0.0.1:1000", 0, LeakKind::CloseWait),
            suspect(2, 12, "10.0.0.1:2000", 0, LeakKind::CloseWait),
        ];
        let refs: Vec<&Suspect> = leaks.iter().collect();
        let holders = HashMap::from([(11, vec![holder(10, 3)])]);
        let build = |filter: ReportFilter| {
            build_report(
                &refs,
                &holders,
                &HashMap::new(),
                &crate::model::stack_gaps::StackSampling::default(),
                10 * S,
                Duration::ZERO,
                &filter,
                usage,
                &mut GrowthHistory::default(),
            )
        };
        let all = build(ReportFilter::default());
        assert_eq!(all.leaking_sockets, 2);
        assert!(
            all.processes.iter().any(|p| p.pid.is_none()),
            "an unheld socket is still reported"
        );
        let by_pid = build(ReportFilter {
            pid: Some(10),
            ..ReportFilter::default()
        });
        assert_eq!(by_pid.leaking_sockets, 1);
        let by_port = build(ReportFilter {
            port: Some(2000),
            ..ReportFilter::default()
        });
        assert_eq!(by_port.leaking_sockets, 1);
        assert_eq!(by_port.processes[0].pid, None);
        assert!(
            build(ReportFilter {
                pid: Some(99),
                ..ReportFilter::default()
            })
            .is_empty()
        );
        // Socket 2 waits in the agent's own accept queue (port 8080, no
        // holder); socket 1 on the same port is held, so a program's.
        let own = |addr: &str, netns_inode| {
            build(ReportFilter {
                own_listener: Some(OwnListener {
                    addr: addr.parse().unwrap(),
                    netns_inode,
                }),
                ..ReportFilter::default()
            })
        };
        let queued_left_out = own("0.0.0.0:8080", Some(1));
        assert_eq!(queued_left_out.leaking_sockets, 1);
        assert!(queued_left_out.processes.iter().all(|p| p.pid == Some(10)));
        assert_eq!(own("127.0.0.1:8080", None).leaking_sockets, 1);
        // Another port, address or namespace: someone else's socket.
        assert_eq!(own("127.0.0.1:9090", Some(1)).leaking_sockets, 2);
        assert_eq!(own("10.1.1.1:8080", Some(1)).leaking_sockets, 2);
        assert_eq!(own("0.0.0.0:8080", Some(2)).leaking_sockets, 2);
    }

    #[test]
    fn growth_and_fd_exhaustion() {
        let mut growth = GrowthHistory::default();
        assert_eq!(growth.record(Some(1), 0, 10), None);
        assert_eq!(growth.record(Some(1), 5 * S, 12), None, "too short a span");
        let rate = growth.record(Some(1), 30 * S, 20).unwrap();
        assert!((rate - 20.0).abs() < 1e-9, "{rate}");
        // Samples older than a minute are forgotten: 20 at 30 s, 20 now.
        let rate = growth.record(Some(1), 85 * S, 20).unwrap();
        assert_eq!(rate, 0.0);

        let leaks = [suspect(1, 11, "10.0.0.1:1", 0, LeakKind::CloseWait)];
        let refs: Vec<&Suspect> = leaks.iter().collect();
        let holders = HashMap::from([(11, vec![holder(10, 3)])]);
        let mut history = GrowthHistory::default();
        history.record(Some(10), 0, 0);
        let report = build_report(
            &refs,
            &holders,
            &HashMap::new(),
            &crate::model::stack_gaps::StackSampling::default(),
            60 * S,
            Duration::ZERO,
            &ReportFilter::default(),
            usage,
            &mut history,
        );
        let p = &report.processes[0];
        assert_eq!(p.growth_per_minute, Some(1.0));
        // 924 fds left at one per minute.
        assert_eq!(p.fds_exhausted_in_s, Some(924.0 * 60.0));
    }

    #[test]
    fn one_dominant_peer_is_called_out_by_the_side_the_leaks_are_on() {
        let addr = |text: &str| -> SocketAddr { text.parse().unwrap() };
        // A server on :8080: accepted sockets from many client ports.
        let accepted = [
            ("10.0.0.2:8080", "10.0.0.9:40001"),
            ("10.0.0.2:8080", "10.0.0.9:40002"),
            ("10.0.0.2:8080", "10.0.0.9:40003"),
            ("10.0.0.2:8080", "10.0.0.1:40004"),
        ];
        let (top, pattern) = group_peers(accepted.iter().map(|(l, r)| (addr(l), addr(r))));
        assert_eq!(
            top[0],
            PeerCount {
                address: "10.0.0.9".into(),
                sockets: 3
            }
        );
        let pattern = pattern.unwrap();
        assert!(pattern.starts_with("one client holds most"), "{pattern}");
        assert!(!pattern.contains("pool"), "{pattern}");
        // A client with a pool to one upstream :5432.
        let connected = [
            ("10.0.0.2:51001", "10.0.0.9:5432"),
            ("10.0.0.2:51002", "10.0.0.9:5432"),
            ("10.0.0.2:51003", "10.0.0.9:5432"),
        ];
        let (_, pattern) = group_peers(connected.iter().map(|(l, r)| (addr(l), addr(r))));
        assert!(pattern.unwrap().contains("pool"));
        // Neither shape: no guess at the side.
        let mixed = [
            ("10.0.0.2:51001", "10.0.0.9:5432"),
            ("10.0.0.2:8080", "10.0.0.9:40001"),
            ("10.0.0.2:51003", "10.0.0.9:6379"),
        ];
        let (_, pattern) = group_peers(mixed.iter().map(|(l, r)| (addr(l), addr(r))));
        assert_eq!(pattern, Some("one peer holds most of them"));
    }

    #[test]
    fn a_page_keeps_the_top_processes_and_the_totals() {
        // Process 10 + k holds k + 1 sockets.
        let mut leaks = Vec::new();
        let mut holders = HashMap::new();
        let mut cookie = 0;
        for k in 0..5u32 {
            for fd in 0..=k {
                cookie += 1;
                leaks.push(suspect(
                    cookie,
                    100 + cookie,
                    "10.0.0.1:1",
                    0,
                    LeakKind::CloseWait,
                ));
                holders.insert(100 + cookie, vec![holder(10 + k, fd)]);
            }
        }
        let refs: Vec<&Suspect> = leaks.iter().collect();
        let report = report_at_10s(&refs, &holders, &HashMap::new());
        let limits = PageLimits {
            processes: 2,
            sockets_per_process: 3,
            code_paths_per_process: 1,
        };
        let page = LeakPage::new(&report, limits);
        assert!(page.truncated);
        assert_eq!((page.leaking_sockets, page.leaking_processes), (15, 5));
        let shown: Vec<(Option<u32>, usize, usize)> = page
            .processes
            .iter()
            .map(|p| (p.pid, p.close_wait, p.sockets.len()))
            .collect();
        assert_eq!(shown, [(Some(14), 5, 3), (Some(13), 4, 3)]);
        let json = serde_json::to_value(&page).unwrap();
        assert_eq!(json["truncated"], true);
        assert_eq!(json["limits"]["processes"], 2);

        let roomy = PageLimits {
            processes: 5,
            sockets_per_process: 5,
            code_paths_per_process: 1,
        };
        let whole = LeakPage::new(&report, roomy);
        assert!(!whole.truncated);
        assert_eq!(whole.processes, report.processes);
    }
}
