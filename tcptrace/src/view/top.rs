//! The per-process table of `tcptrace top`: which rows, in which order, and
//! the text. The snapshot itself is built in `model::top_snapshot`.

use std::fmt::Write as _;

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets::NOTHING};
use tcptrace_common::TcpState;

use crate::{
    model::top_snapshot::{ProcessRow, TopSnapshot},
    view::terminal::sanitize,
};

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
            "no owner known for {unknown} sockets ({}): no process holds a file of theirs, and nothing seen since tcptrace started names one",
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
        "\ntransitions {} records {} dropped {} decode errors {} corrections {}",
        health.transitions, health.events, health.drops, health.decode_errors, health.corrections
    );
    text
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;
    use crate::{
        model::activity::Activity,
        model::leak_report::{LeakReport, ProbeHealth},
        model::process::Placement,
        model::top_snapshot::{SnapshotInputs, build_snapshot},
        model::tracker::{Owner, OwnerSource, SocketTracker, TrackedTransition},
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
            tracker: &SocketTracker::new(),
            table: &[],
            holders: &HashMap::new(),
            inferred: &Default::default(),
            leaks: &LeakReport {
                min_age_ms: 0,
                leaking_sockets: 0,
                processes: Vec::new(),
                health: ProbeHealth::default(),
                stacks: Default::default(),
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
