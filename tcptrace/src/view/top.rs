//! The per-process view of `tcptrace top` (and the data `serve` exports):
//! counts from the activity tracker, sockets per state from the kernel's
//! table, leaks from the leak report. Pure: every input is an argument.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    time::Duration,
};

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets::NOTHING};
use serde::Serialize;
use tcptrace_common::TcpState;

use crate::{
    model::activity::{Activity, ProcessCounts},
    model::diagnose::Finding,
    model::holder::Holder,
    model::kernel_socket::KernelSocket,
    model::leak_report::{LeakReport, ProbeHealth},
    view::terminal::sanitize,
};

use crate::model::process::Placement;

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

/// Columns `top` sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Pid,
    Comm,
    Container,
    ConnectRate,
    AcceptRate,
    Connects,
    Accepts,
    Failed,
    Resets,
    Listen,
    Established,
    SynSent,
    CloseWait,
    FinWait,
    TimeWait,
    Leaking,
}

#[derive(Clone, Debug, Default)]
pub struct RowFilter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

impl RowFilter {
    fn keeps(&self, row: &ProcessRow) -> bool {
        self.pid.is_none_or(|pid| pid == row.pid)
            && self.comm.as_deref().is_none_or(|comm| comm == row.comm)
    }
}

fn transition_name((old, new): (TcpState, TcpState)) -> String {
    format!("{}->{}", old.name(), new.name())
}

fn transition_names(counts: &ProcessCounts) -> BTreeMap<String, u64> {
    counts
        .transitions
        .iter()
        .map(|(&pair, &n)| (transition_name(pair), n))
        .collect()
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

/// Who owns a socket the kernel lists: its history first (exact, and the
/// only way for TIME_WAIT entries, which have no file), else the process
/// holding its file (the lowest pid, when several share it).
pub fn socket_owner(
    socket: &KernelSocket,
    activity: &Activity,
    holders: &HashMap<u64, Vec<Holder>>,
) -> Option<(u32, String)> {
    if let Some(process) = activity.owner_of(socket.cookie) {
        return Some((process.tgid, process.comm.clone()));
    }
    if socket.inode == 0 {
        return None;
    }
    holders
        .get(&socket.inode)?
        .iter()
        .min_by_key(|h| h.pid)
        .map(|h| (h.pid, h.comm.clone()))
}

pub struct SnapshotInputs<'a> {
    pub activity: &'a Activity,
    pub table: &'a [KernelSocket],
    pub holders: &'a HashMap<u64, Vec<Holder>>,
    pub leaks: &'a LeakReport,
    pub rates: &'a HashMap<u32, (f64, f64)>,
    pub span: Duration,
    pub alive: &'a dyn Fn(u32) -> bool,
    pub placement: &'a mut dyn FnMut(u32) -> Placement,
}

pub fn build_snapshot(inputs: SnapshotInputs<'_>) -> TopSnapshot {
    let SnapshotInputs {
        activity,
        table,
        holders,
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
                comm: process.comm.clone(),
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
        match socket_owner(socket, activity, holders) {
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

fn fin_wait(row: &ProcessRow) -> u64 {
    row.sockets_in(TcpState::FinWait1) + row.sockets_in(TcpState::FinWait2)
}

/// Sorts biggest first for numeric columns, alphabetically for names.
pub fn sort_rows(rows: &mut [ProcessRow], key: SortKey) {
    let number = |row: &ProcessRow| -> f64 {
        match key {
            SortKey::ConnectRate => row.connects_per_s,
            SortKey::AcceptRate => row.accepts_per_s,
            SortKey::Connects => row.connects as f64,
            SortKey::Accepts => row.accepts as f64,
            SortKey::Failed => row.failed_connects as f64,
            SortKey::Resets => row.resets as f64,
            SortKey::Listen => row.sockets_in(TcpState::Listen) as f64,
            SortKey::Established => row.sockets_in(TcpState::Established) as f64,
            SortKey::SynSent => row.sockets_in(TcpState::SynSent) as f64,
            SortKey::CloseWait => row.sockets_in(TcpState::CloseWait) as f64,
            SortKey::FinWait => fin_wait(row) as f64,
            SortKey::TimeWait => row.sockets_in(TcpState::TimeWait) as f64,
            SortKey::Leaking => row.leaking as f64,
            SortKey::Pid | SortKey::Comm | SortKey::Container => 0.0,
        }
    };
    rows.sort_by(|a, b| match key {
        SortKey::Pid => a.pid.cmp(&b.pid),
        SortKey::Comm => a.comm.cmp(&b.comm).then(a.pid.cmp(&b.pid)),
        SortKey::Container => a.container.cmp(&b.container).then(a.pid.cmp(&b.pid)),
        _ => number(b).total_cmp(&number(a)).then(a.pid.cmp(&b.pid)),
    });
}

/// Applies the filter and the sort; the unattributed row and findings stay.
pub fn select(snapshot: &mut TopSnapshot, filter: &RowFilter, key: SortKey) {
    snapshot
        .processes
        .retain(|row| !row.exited && filter.keeps(row));
    sort_rows(&mut snapshot.processes, key);
}

fn rate(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The table, at most `max_rows` processes, then the findings.
pub fn render_text(snapshot: &TopSnapshot, max_rows: usize) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header([
            "PID",
            "COMM",
            "CONTAINER",
            "CONN/s",
            "ACC/s",
            "CONNECTS",
            "ACCEPTS",
            "FAILED",
            "RESETS",
            "LISTEN",
            "ESTAB",
            "SYN_SENT",
            "CLOSE_WAIT",
            "FIN_WAIT",
            "TIME_WAIT",
            "LEAKING",
        ]);
    for row in snapshot.processes.iter().take(max_rows) {
        table.add_row([
            Cell::new(row.pid),
            Cell::new(sanitize(&row.comm)),
            Cell::new(if row.container.is_empty() {
                "-".into()
            } else {
                sanitize(&row.container)
            }),
            Cell::new(rate(row.connects_per_s)),
            Cell::new(rate(row.accepts_per_s)),
            Cell::new(row.connects),
            Cell::new(row.accepts),
            Cell::new(row.failed_connects),
            Cell::new(row.resets),
            Cell::new(row.sockets_in(TcpState::Listen)),
            Cell::new(row.sockets_in(TcpState::Established)),
            Cell::new(row.sockets_in(TcpState::SynSent)),
            Cell::new(row.sockets_in(TcpState::CloseWait)),
            Cell::new(fin_wait(row)),
            Cell::new(row.sockets_in(TcpState::TimeWait)),
            Cell::new(row.leaking),
        ]);
    }
    for index in 0..16 {
        if index >= 3
            && let Some(column) = table.column_mut(index)
        {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text = format!("{table}\n");
    let hidden = snapshot.processes.len().saturating_sub(max_rows);
    if hidden > 0 {
        let _ = writeln!(text, "... and {hidden} more processes");
    }
    let unknown: u64 = snapshot.unattributed.sockets.values().sum();
    if unknown > 0 {
        let states: Vec<String> = snapshot
            .unattributed
            .sockets
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        let _ = writeln!(
            text,
            "no owner known for {unknown} sockets ({}): no file and no history since tcptrace started",
            states.join(", ")
        );
    }
    if snapshot.findings.is_empty() {
        text.push_str("\nno findings\n");
    } else {
        text.push_str("\nfindings:\n");
        for finding in &snapshot.findings {
            let _ = writeln!(
                text,
                "  [{}] {} {}: {}\n      {}",
                finding.severity.name(),
                finding.kind.name(),
                sanitize(&finding.subject),
                sanitize(&finding.evidence),
                finding.advice
            );
        }
    }
    let health = &snapshot.health;
    let _ = writeln!(
        text,
        "\nevents {} dropped {} decode errors {} corrections {}",
        health.events, health.drops, health.decode_errors, health.corrections
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::tracker::{Owner, OwnerSource, TrackedTransition},
        model::transition::{Process, Transition},
        view::metrics::{MetricsLimits, MetricsState},
    };

    fn connect(activity: &mut Activity, tgid: u32, comm: &str, cookie: u64) {
        activity.observe(&TrackedTransition {
            transition: Transition {
                timestamp_ns: 1_000,
                cookie,
                skaddr: cookie,
                owner: None,
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: "127.0.0.1:80".parse().unwrap(),
                old_state: TcpState::Close,
                new_state: TcpState::SynSent,
                netns_inode: None,
                socket_inode: None,
            },
            owner: Some(Owner {
                process: Process {
                    tgid,
                    comm: comm.into(),
                },
                source: OwnerSource::ProcessContext,
            }),
            time_in_old_state: None,
            likely_time_wait: false,
        });
    }

    fn snapshot(activity: &Activity, alive: &dyn Fn(u32) -> bool) -> TopSnapshot {
        build_snapshot(SnapshotInputs {
            activity,
            table: &[],
            holders: &HashMap::new(),
            leaks: &LeakReport {
                min_age_ms: 0,
                leaking_sockets: 0,
                processes: Vec::new(),
                health: ProbeHealth::default(),
            },
            rates: &HashMap::new(),
            span: Duration::ZERO,
            alive,
            placement: &mut |_| Placement::default(),
        })
    }

    #[test]
    fn a_process_that_lived_between_two_refreshes_still_counts() {
        let mut activity = Activity::new();
        connect(&mut activity, 10, "long-lived", 1);
        connect(&mut activity, 11, "one-shot", 2);
        connect(&mut activity, 11, "one-shot", 3);
        let mut metrics = MetricsState::new(MetricsLimits::default());
        // 11 exited before the refresh saw it alive.
        let snap = snapshot(&activity, &|pid| pid == 10);
        let exited: Vec<u32> = snap
            .processes
            .iter()
            .filter(|r| r.exited)
            .map(|r| r.pid)
            .collect();
        assert_eq!(exited, [11]);
        metrics.update_transitions(&snap);
        activity.retain_processes(|pid| !exited.contains(&pid));
        let total = |comm: &str| {
            metrics
                .transition_totals()
                .iter()
                .filter(|((_, c), _)| c == comm)
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
        assert_eq!(total("one-shot"), 2);
        // Forgotten after, and never shown by top.
        let mut next = snapshot(&activity, &|pid| pid == 10);
        assert!(next.processes.iter().all(|r| r.pid == 10));
        select(&mut next, &RowFilter::default(), SortKey::Pid);
        assert_eq!(next.processes.len(), 1);
        let mut with_exited = snap;
        select(&mut with_exited, &RowFilter::default(), SortKey::Pid);
        assert!(with_exited.processes.iter().all(|r| !r.exited));
    }
}
