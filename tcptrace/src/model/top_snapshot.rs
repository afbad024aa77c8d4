//! What `tcptrace top` shows and `serve` exports, per process: counts from
//! the activity tracker, sockets per state from the kernel's table, leaks
//! from the leak report, rates since the previous snapshot. Pure: every
//! input is an argument.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde::Serialize;
use tcptrace_common::TcpState;

use crate::{
    model::activity::{Activity, ProcessCounts},
    model::diagnose::Finding,
    model::holder::Holder,
    model::inferred_owners::InferredOwners,
    model::kernel_socket::KernelSocket,
    model::leak_report::{LeakReport, ProbeHealth},
    model::process::Placement,
    model::tracker::SocketTracker,
};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: String,
    /// Short container id; empty for host processes.
    pub container: String,
    pub pod_uid: Option<String>,
    pub netns: Option<u64>,
    pub connects: u64,
    pub connects_per_s: f64,
    pub accepts: u64,
    pub accepts_per_s: f64,
    pub failed_connects: u64,
    pub resets: u64,
    /// Leaking sockets this process holds, from the leak tracker.
    pub leaking: u64,
    /// Sockets it owns now, per state, from the kernel's table.
    pub sockets: BTreeMap<&'static str, u64>,
    /// "OLD->NEW" -> count since start.
    pub transitions: BTreeMap<String, u64>,
    /// Exited since the last snapshot: shown once, so its last counts are
    /// not lost, then forgotten.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
}

impl ProcessRow {
    pub fn sockets_in(&self, state: TcpState) -> u64 {
        self.sockets.get(state.name()).copied().unwrap_or(0)
    }
}

/// Sockets and transitions no process could be named for.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Unattributed {
    pub sockets: BTreeMap<&'static str, u64>,
    pub transitions: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TopSnapshot {
    /// Span the rates are measured over.
    pub interval_ms: u64,
    pub processes: Vec<ProcessRow>,
    pub unattributed: Unattributed,
    pub findings: Vec<Finding>,
    pub health: ProbeHealth,
}

fn transition_name((old, new): (TcpState, TcpState)) -> String {
    format!("{}->{}", old.name(), new.name())
}

fn transition_names(counts: &ProcessCounts) -> BTreeMap<String, u64> {
    let mut names: BTreeMap<String, u64> = counts
        .transitions
        .iter()
        .map(|(pair, n)| (transition_name(pair), n))
        .collect();
    if counts.other_transitions > 0 {
        names.insert("other".into(), counts.other_transitions);
    }
    names
}

/// Connect and accept counts at the previous snapshot, for rates.
#[derive(Default)]
pub struct RateBaseline {
    counts: HashMap<u32, (u64, u64)>,
    at_ns: Option<u64>,
}

impl RateBaseline {
    /// Per-second connect and accept rates of each process since the last
    /// call, and the span they cover; the first call has no span.
    pub fn advance(
        &mut self,
        activity: &Activity,
        now_ns: u64,
    ) -> (HashMap<u32, (f64, f64)>, Duration) {
        let span = self
            .at_ns
            .map(|at| Duration::from_nanos(now_ns.saturating_sub(at)))
            .unwrap_or_default();
        let seconds = span.as_secs_f64();
        let mut rates = HashMap::new();
        let mut counts = HashMap::new();
        for (pid, process) in activity.processes() {
            let now = (process.counts.connects, process.counts.accepts);
            let before = self.counts.get(&pid).copied().unwrap_or((0, 0));
            if seconds > 0.0 {
                rates.insert(
                    pid,
                    (
                        now.0.saturating_sub(before.0) as f64 / seconds,
                        now.1.saturating_sub(before.1) as f64 / seconds,
                    ),
                );
            }
            counts.insert(pid, now);
        }
        self.counts = counts;
        self.at_ns = Some(now_ns);
        (rates, span)
    }
}

/// Who owns a socket the kernel lists: its recorded history first, else
/// the process holding its file (the lowest pid, when several share it),
/// else, for a socket with no file (TIME_WAIT, orphans), the owner
/// `inferred` from its listener or its destination.
pub fn socket_owner(
    socket: &KernelSocket,
    tracker: &SocketTracker,
    holders: &HashMap<u64, Vec<Holder>>,
    inferred: &InferredOwners,
) -> Option<(u32, String)> {
    if let Some(process) = tracker.owner_of(socket.cookie) {
        return Some((process.tgid, process.comm.to_string()));
    }
    if socket.inode == 0 {
        return inferred.owner_of(socket, tracker);
    }
    holders
        .get(&socket.inode)?
        .iter()
        .min_by_key(|h| h.pid)
        .map(|h| (h.pid, h.comm.clone()))
}

pub struct SnapshotInputs<'a> {
    pub activity: &'a Activity,
    pub tracker: &'a SocketTracker,
    pub table: &'a [KernelSocket],
    pub holders: &'a HashMap<u64, Vec<Holder>>,
    pub inferred: &'a InferredOwners,
    pub leaks: &'a LeakReport,
    pub rates: &'a HashMap<u32, (f64, f64)>,
    pub span: Duration,
    pub alive: &'a dyn Fn(u32) -> bool,
    pub placement: &'a mut dyn FnMut(u32) -> Placement,
}

pub fn build_snapshot(inputs: SnapshotInputs<'_>) -> TopSnapshot {
    let SnapshotInputs {
        activity,
        tracker,
        table,
        holders,
        inferred,
        leaks,
        rates,
        span,
        alive,
        placement,
    } = inputs;
    let mut rows: BTreeMap<u32, ProcessRow> = BTreeMap::new();

    for (pid, process) in activity.processes() {
        let (connects_per_s, accepts_per_s) = rates.get(&pid).copied().unwrap_or((0.0, 0.0));
        let counts = &process.counts;
        rows.insert(
            pid,
            ProcessRow {
                pid,
                comm: process.comm.to_string(),
                connects: counts.connects,
                connects_per_s,
                accepts: counts.accepts,
                accepts_per_s,
                failed_connects: counts.failed_connects,
                resets: counts.resets,
                transitions: transition_names(counts),
                exited: !alive(pid),
                ..ProcessRow::default()
            },
        );
    }

    let mut unattributed = Unattributed {
        transitions: transition_names(&activity.unattributed),
        ..Unattributed::default()
    };
    for socket in table {
        let state = socket.state.name();
        match socket_owner(socket, tracker, holders, inferred) {
            Some((pid, comm)) => {
                let entry = rows.entry(pid).or_insert_with(|| ProcessRow {
                    pid,
                    comm,
                    ..ProcessRow::default()
                });
                *entry.sockets.entry(state).or_default() += 1;
            }
            None => *unattributed.sockets.entry(state).or_default() += 1,
        }
    }

    for process in &leaks.processes {
        let Some(pid) = process.pid else { continue };
        let entry = rows.entry(pid).or_insert_with(|| ProcessRow {
            pid,
            comm: process.comm.clone().unwrap_or_default(),
            ..ProcessRow::default()
        });
        entry.leaking += (process.close_wait + process.closed_held) as u64;
    }

    let processes = rows
        .into_values()
        .map(|mut row| {
            let where_ = placement(row.pid);
            row.container = where_.container;
            row.pod_uid = where_.pod_uid;
            row.netns = where_.netns;
            row
        })
        .collect();
    TopSnapshot {
        interval_ms: span.as_millis() as u64,
        processes,
        unattributed,
        findings: Vec::new(),
        health: leaks.health.clone(),
    }
}
