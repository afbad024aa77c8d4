//! What `tcptrace serve` exports to Prometheus, in OpenMetrics text through
//! the official prometheus-client crate.
//!
//! Label cardinality is bounded: per-comm series for the busiest comms only,
//! the rest folded into `other`; pids only for the top leakers; nothing per
//! socket. Series of comms whose processes all exited are removed. Counters
//! are kept as running totals here, fed with each process's increase since
//! the last update, so a process exiting or moving into `other` never makes a
//! counter go down.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::{
    diagnose::{FindingKind, Severity},
    report::LeakReport,
    top::TopSnapshot,
};

/// The label value for everything folded together.
pub const OTHER: &str = "other";
/// The label value for sockets and transitions with no known owner.
pub const UNKNOWN: &str = "unknown";
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, Debug)]
pub struct MetricsLimits {
    /// Comms with series of their own.
    pub comms: usize,
    /// Processes with a pid-labelled leak series.
    pub leaking_pids: usize,
}

impl Default for MetricsLimits {
    fn default() -> Self {
        Self {
            comms: 20,
            leaking_pids: 10,
        }
    }
}

/// How full one bounded table is: a map of the probe or a collection of
/// the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occupancy {
    /// A short, fixed name (`owners`, `stacks`, `suspects`, ...).
    pub name: &'static str,
    pub entries: u64,
    /// `None` where nothing but what it describes bounds it (storage freed
    /// with its socket or process, entries reconciled with the kernel's table).
    pub capacity: Option<u64>,
}

/// Agent-wide counts, running totals since start, and how full its tables are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentTotals {
    pub events: u64,
    pub dropped: u64,
    pub decode_errors: u64,
    /// Failed inserts into the probe's maps and the agent's bounded tables.
    pub map_insert_failures: u64,
    pub reconcile_corrections: u64,
    /// Reads of /proc or of the kernel's table that failed (fd exhaustion,
    /// an unreadable namespace): what was known before is kept meanwhile.
    pub host_read_failures: u64,
    /// The probe's maps.
    pub kernel_maps: Vec<Occupancy>,
    /// The agent's own collections.
    pub agent_tables: Vec<Occupancy>,
}

type Transitions = BTreeMap<String, u64>;

#[derive(Default)]
pub struct MetricsState {
    limits: MetricsLimits,
    /// Comms that have series of their own; a comm keeps its place while any
    /// of its processes lives, so its counters stay continuous.
    admitted: BTreeSet<String>,
    /// ("OLD->NEW", comm label) -> total.
    transition_totals: BTreeMap<(String, String), u64>,
    /// Each process's counts at the last update: pid -> (comm, counts).
    last_seen: HashMap<u32, (String, Transitions)>,
    unattributed_last: Transitions,
}

/// Top `limit` keys by value (ties by name), the rest folded into `other`.
pub fn fold_top<V: Copy + PartialOrd + std::ops::Add<Output = V>>(
    values: BTreeMap<String, V>,
    limit: usize,
) -> BTreeMap<String, V> {
    let mut ranked: Vec<(String, V)> = values.into_iter().collect();
    ranked.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut folded = BTreeMap::new();
    for (index, (key, value)) in ranked.into_iter().enumerate() {
        let key = if index < limit || key == UNKNOWN {
            key
        } else {
            OTHER.to_owned()
        };
        match folded.get_mut(&key) {
            Some(total) => *total = *total + value,
            None => {
                folded.insert(key, value);
            }
        }
    }
    folded
}

fn add_increase(
    totals: &mut BTreeMap<(String, String), u64>,
    label: &str,
    now: &Transitions,
    before: Option<&Transitions>,
) {
    for (transition, &count) in now {
        let previous = before.and_then(|b| b.get(transition)).copied().unwrap_or(0);
        // A smaller count means a new process under a reused pid.
        let increase = if count >= previous {
            count - previous
        } else {
            count
        };
        if increase > 0 {
            *totals
                .entry((transition.clone(), label.to_owned()))
                .or_default() += increase;
        }
    }
}

impl MetricsState {
    pub fn new(limits: MetricsLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Takes the processes' counts at this update into the running totals.
    pub fn update_transitions(&mut self, snapshot: &TopSnapshot) {
        let live_comms: BTreeSet<&str> =
            snapshot.processes.iter().map(|p| p.comm.as_str()).collect();
        let gone: Vec<String> = self
            .admitted
            .iter()
            .filter(|comm| !live_comms.contains(comm.as_str()))
            .cloned()
            .collect();
        for comm in &gone {
            self.admitted.remove(comm);
            self.transition_totals.retain(|(_, label), _| label != comm);
        }

        // The busiest processes are admitted first when places are free.
        let mut rows: Vec<_> = snapshot.processes.iter().collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.transitions.values().sum::<u64>()));
        let mut seen = HashMap::new();
        for row in rows {
            if !self.admitted.contains(&row.comm) && self.admitted.len() < self.limits.comms {
                self.admitted.insert(row.comm.clone());
            }
            let label = if self.admitted.contains(&row.comm) {
                row.comm.as_str()
            } else {
                OTHER
            };
            let before = self
                .last_seen
                .get(&row.pid)
                .filter(|(comm, _)| *comm == row.comm)
                .map(|(_, counts)| counts);
            add_increase(&mut self.transition_totals, label, &row.transitions, before);
            seen.insert(row.pid, (row.comm.clone(), row.transitions.clone()));
        }
        self.last_seen = seen;

        let unattributed = &snapshot.unattributed.transitions;
        add_increase(
            &mut self.transition_totals,
            UNKNOWN,
            unattributed,
            Some(&self.unattributed_last),
        );
        self.unattributed_last = unattributed.clone();
    }

    pub fn transition_totals(&self) -> &BTreeMap<(String, String), u64> {
        &self.transition_totals
    }

    /// The whole exposition for this update.
    pub fn render(
        &self,
        snapshot: &TopSnapshot,
        leaks: &LeakReport,
        totals: &AgentTotals,
    ) -> String {
        let mut registry = Registry::default();
        let labels = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };

        let transitions = Family::<Vec<(String, String)>, Counter>::default();
        for ((transition, comm), &total) in &self.transition_totals {
            let (from, to) = transition.split_once("->").unwrap_or((transition, ""));
            transitions
                .get_or_create(&labels(&[("from", from), ("to", to), ("comm", comm)]))
                .inc_by(total);
        }
        registry.register(
            "tcptrace_transitions",
            "TCP state transitions since the agent started, by the owning process's comm (never the task that happened to be on the CPU)",
            transitions,
        );

        // Sockets by state and comm, comms folded by socket count.
        let mut per_comm: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for row in &snapshot.processes {
            let states = per_comm.entry(row.comm.clone()).or_default();
            for (state, n) in &row.sockets {
                *states.entry(state).or_default() += n;
            }
        }
        if !snapshot.unattributed.sockets.is_empty() {
            let states = per_comm.entry(UNKNOWN.to_owned()).or_default();
            for (state, n) in &snapshot.unattributed.sockets {
                *states.entry(state).or_default() += n;
            }
        }
        let sizes: BTreeMap<String, u64> = per_comm
            .iter()
            .map(|(comm, states)| (comm.clone(), states.values().sum()))
            .collect();
        let kept = fold_top(sizes, self.limits.comms);
        let sockets = Family::<Vec<(String, String)>, Gauge>::default();
        for (comm, states) in &per_comm {
            let label = if kept.contains_key(comm) {
                comm.as_str()
            } else {
                OTHER
            };
            for (state, n) in states {
                sockets
                    .get_or_create(&labels(&[("state", state), ("comm", label)]))
                    .inc_by(*n as i64);
            }
        }
        registry.register(
            "tcptrace_sockets",
            "TCP sockets in the kernel's table by state and owning comm (TIME_WAIT attributed through the socket cookie; no owner known: comm=\"unknown\")",
            sockets,
        );

        let containers: HashMap<u32, &str> = snapshot
            .processes
            .iter()
            .map(|row| (row.pid, row.container.as_str()))
            .collect();
        let mut leak_counts: BTreeMap<String, u64> = BTreeMap::new();
        for process in &leaks.processes {
            let comm = process.comm.clone().unwrap_or_else(|| UNKNOWN.to_owned());
            *leak_counts.entry(comm).or_default() +=
                (process.close_wait + process.closed_held) as u64;
        }
        let kept = fold_top(leak_counts, self.limits.comms);
        let leaking = Family::<Vec<(String, String)>, Gauge>::default();
        let oldest =
            Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for process in &leaks.processes {
            let comm = process.comm.as_deref().unwrap_or(UNKNOWN);
            let comm = if kept.contains_key(comm) { comm } else { OTHER };
            let container = process
                .pid
                .and_then(|pid| containers.get(&pid).copied())
                .unwrap_or("");
            for (kind, n) in [
                ("close_wait", process.close_wait),
                ("closed_held", process.closed_held),
            ] {
                if n > 0 {
                    leaking
                        .get_or_create(&labels(&[
                            ("comm", comm),
                            ("container", container),
                            ("kind", kind),
                        ]))
                        .inc_by(n as i64);
                }
            }
            let age = process.oldest_age_ms as f64 / 1000.0;
            let gauge = oldest.get_or_create(&labels(&[("comm", comm), ("container", container)]));
            if gauge.get() < age {
                gauge.set(age);
            }
        }
        registry.register(
            "tcptrace_leaking_sockets",
            "Sockets leaked (CLOSE_WAIT or closed but still held) for at least the agent's --min-age, by holder comm and container",
            leaking,
        );
        registry.register_with_unit(
            "tcptrace_oldest_leak_age",
            "Age of the oldest leaked socket, by holder comm and container",
            Unit::Seconds,
            oldest,
        );

        let mut leakers: Vec<_> = leaks
            .processes
            .iter()
            .filter_map(|p| {
                Some((
                    p.pid?,
                    p.comm.as_deref().unwrap_or(UNKNOWN),
                    p.close_wait + p.closed_held,
                ))
            })
            .collect();
        leakers.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        let by_pid = Family::<Vec<(String, String)>, Gauge>::default();
        for (pid, comm, n) in leakers.into_iter().take(self.limits.leaking_pids) {
            by_pid
                .get_or_create(&labels(&[("pid", &pid.to_string()), ("comm", comm)]))
                .set(n as i64);
        }
        registry.register(
            "tcptrace_process_leaking_sockets",
            "Leaked sockets of the top leaking processes only, by pid",
            by_pid,
        );

        let findings = Family::<Vec<(String, String)>, Gauge>::default();
        // Every kind and severity, 0 when absent: alerts need no absent().
        for kind in FindingKind::ALL {
            for severity in Severity::ALL {
                let count = snapshot
                    .findings
                    .iter()
                    .filter(|f| f.kind == kind && f.severity == severity)
                    .count();
                findings
                    .get_or_create(&labels(&[
                        ("kind", kind.name()),
                        ("severity", severity.name()),
                    ]))
                    .set(count as i64);
            }
        }
        registry.register(
            "tcptrace_findings",
            "Active diagnoses by kind and severity (see /leaks and `tcptrace top` for the evidence)",
            findings,
        );

        for (name, help, value) in [
            (
                "tcptrace_events",
                "Records received from the probe",
                totals.events,
            ),
            (
                "tcptrace_events_dropped",
                "Records the probe could not deliver (ring buffer full); reconciliation with the kernel's table keeps them from becoming false leaks",
                totals.dropped,
            ),
            (
                "tcptrace_decode_errors",
                "Records that failed to decode",
                totals.decode_errors,
            ),
            (
                "tcptrace_map_insert_failures",
                "Failed inserts into the probe's maps and the agent's bounded tables",
                totals.map_insert_failures,
            ),
            (
                "tcptrace_reconcile_corrections",
                "Tracked sockets corrected after comparing with the kernel's socket table",
                totals.reconcile_corrections,
            ),
        ] {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            registry.register(name, help, counter);
        }

        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::ProcessRow;

    fn row(pid: u32, comm: &str, transitions: &[(&str, u64)]) -> ProcessRow {
        ProcessRow {
            pid,
            comm: comm.into(),
            transitions: transitions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            ..ProcessRow::default()
        }
    }

    fn snapshot(rows: Vec<ProcessRow>) -> TopSnapshot {
        TopSnapshot {
            processes: rows,
            ..TopSnapshot::default()
        }
    }

    fn total(state: &MetricsState, transition: &str, comm: &str) -> u64 {
        state
            .transition_totals()
            .get(&(transition.to_owned(), comm.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn fold_top_keeps_the_biggest_and_folds_the_rest() {
        let values: BTreeMap<String, u64> = [("a", 5), ("b", 9), ("c", 1), ("d", 3), (UNKNOWN, 2)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let folded = fold_top(values, 2);
        let expected: BTreeMap<String, u64> = [("b", 9), ("a", 5), (OTHER, 4), (UNKNOWN, 2)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(folded, expected, "unknown is never folded into other");
    }

    #[test]
    fn counters_never_go_down_when_processes_fold_or_exit() {
        let mut state = MetricsState::new(MetricsLimits {
            comms: 1,
            leaking_pids: 1,
        });
        let t = "CLOSE->SYN_SENT";
        state.update_transitions(&snapshot(vec![
            row(1, "busy", &[(t, 10)]),
            row(2, "quiet", &[(t, 1)]),
        ]));
        assert_eq!(total(&state, t, "busy"), 10);
        assert_eq!(total(&state, t, OTHER), 1);

        // quiet exits: its share of `other` stays.
        state.update_transitions(&snapshot(vec![row(1, "busy", &[(t, 15)])]));
        assert_eq!(total(&state, t, "busy"), 15);
        assert_eq!(total(&state, t, OTHER), 1);

        // busy exits: its series goes; a newcomer takes the free place.
        state.update_transitions(&snapshot(vec![row(3, "new", &[(t, 4)])]));
        assert_eq!(total(&state, t, "busy"), 0);
        assert!(!state.transition_totals().keys().any(|(_, c)| c == "busy"));
        assert_eq!(total(&state, t, "new"), 4);
        assert_eq!(total(&state, t, OTHER), 1);

        // A reused pid with smaller counts is a new process: its counts add.
        state.update_transitions(&snapshot(vec![row(3, "new", &[(t, 2)])]));
        assert_eq!(total(&state, t, "new"), 6);
    }

    #[test]
    fn exposition_has_units_help_and_bounded_labels() {
        let mut state = MetricsState::new(MetricsLimits {
            comms: 1,
            leaking_pids: 1,
        });
        let mut rows = vec![row(1, "a", &[("CLOSE->SYN_SENT", 3)]), row(2, "b", &[])];
        rows[0].sockets.insert("ESTABLISHED", 2);
        rows[1].sockets.insert("ESTABLISHED", 1);
        let snap = snapshot(rows);
        state.update_transitions(&snap);
        let leaks = LeakReport {
            min_age_ms: 0,
            leaking_sockets: 3,
            processes: vec![
                crate::report::ProcessLeaks {
                    pid: Some(1),
                    comm: Some("a".into()),
                    close_wait: 2,
                    closed_held: 0,
                    oldest_age_ms: 1500,
                    ..Default::default()
                },
                crate::report::ProcessLeaks {
                    pid: Some(2),
                    comm: Some("b".into()),
                    close_wait: 1,
                    closed_held: 0,
                    oldest_age_ms: 500,
                    ..Default::default()
                },
            ],
            health: Default::default(),
        };
        let text = state.render(&snap, &leaks, &AgentTotals::default());
        assert!(
            text.contains(
                "tcptrace_transitions_total{from=\"CLOSE\",to=\"SYN_SENT\",comm=\"a\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_sockets{state=\"ESTABLISHED\",comm=\"a\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_sockets{state=\"ESTABLISHED\",comm=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tcptrace_leaking_sockets{comm=\"a\",container=\"\",kind=\"close_wait\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tcptrace_leaking_sockets{comm=\"other\",container=\"\",kind=\"close_wait\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("# UNIT tcptrace_oldest_leak_age_seconds seconds"),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_oldest_leak_age_seconds{comm=\"a\",container=\"\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_process_leaking_sockets{pid=\"1\",comm=\"a\"} 2"),
            "{text}"
        );
        assert!(
            !text.contains("pid=\"2\""),
            "only the top leaker has a pid series: {text}"
        );
        assert!(text.contains("# HELP tcptrace_events_dropped"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
