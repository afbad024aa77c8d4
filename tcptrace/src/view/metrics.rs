//! What `tcptrace serve` exports to Prometheus, in OpenMetrics text through
//! the official prometheus-client crate.
//!
//! Label cardinality is bounded by [`MetricsLimits`]: with C = `comms` and
//! P = `leaking_pids`, a `comm` label takes at most C + 2 values (C comms of
//! their own, `other`, `unknown`), and there is nothing per socket:
//! - `tcptrace_transitions_total`: (C + 2) x the TCP state pairs seen;
//! - `tcptrace_sockets`: (C + 2) x 12 states;
//! - `tcptrace_leaking_sockets`: (C + 2) x 2 kinds, `tcptrace_oldest_leak_age_seconds`:
//!   C + 2. Their series are per holder, a (comm, container) pair: the C
//!   holders with the most leaks keep both labels, the rest are summed into
//!   comm and container `other`, and sockets no process holds are `unknown`;
//! - `tcptrace_process_leaking_sockets`: P;
//! - `tcptrace_findings`: kinds x severities; occupancy: one per table.
//!
//! Which comms have series of their own: leaking ones first, then the
//! busiest, and a comm keeps its place while any of its processes lives, so
//! a burst of busy short-lived comms never pushes a leaking service into
//! `other`. Counters are kept as running totals here, fed with each
//! process's increase since the last update, so a process exiting or moving
//! into `other` never makes a counter go down: a comm's series either grow or
//! end (when its last process exits, or it gives its place to a leaking
//! comm).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, text::encode},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

use crate::{
    build_info,
    model::diagnose::{FindingKind, Severity},
    model::health::{AgentTotals, Occupancy},
    model::leak_report::LeakReport,
    model::top_snapshot::TopSnapshot,
};

/// The label value for everything folded together.
pub const OTHER: &str = "other";
/// The label value for sockets and transitions with no known owner.
pub const UNKNOWN: &str = "unknown";
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, Debug)]
pub struct MetricsLimits {
    /// Comms with series of their own, and holders (comm and container)
    /// with leak series of their own.
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

type Transitions = BTreeMap<String, u64>;
type GaugeFamily = Family<Vec<(String, String)>, Gauge>;

#[derive(Default)]
pub struct MetricsState {
    limits: MetricsLimits,
    /// Comms that have series of their own; a comm keeps its place while any
    /// of its processes lives, so its counters stay continuous, unless a
    /// leaking comm needs the place of one that leaks nothing.
    admitted: BTreeSet<String>,
    /// ("OLD->NEW", comm label) -> total.
    transition_totals: BTreeMap<(String, String), u64>,
    /// Each process's counts at the last update: pid -> (comm, counts).
    last_seen: HashMap<u32, (String, Transitions)>,
    unattributed_last: Transitions,
}

/// A comm's claim to a series of its own, strongest first: the sockets it
/// leaks (what the agent is for), then how busy it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    leaking: u64,
    /// Transitions since the last update plus sockets held now.
    activity: u64,
}

/// Comms equal to a label tcptrace gives would be mistaken for it.
fn may_have_own_label(comm: &str) -> bool {
    comm != OTHER && comm != UNKNOWN
}

/// Each transition's increase from `before` to `now`.
fn increase(now: &Transitions, before: Option<&Transitions>) -> Transitions {
    now.iter()
        .filter_map(|(transition, &count)| {
            let previous = before.and_then(|b| b.get(transition)).copied().unwrap_or(0);
            // A smaller count means a new process under a reused pid.
            let increase = if count >= previous {
                count - previous
            } else {
                count
            };
            (increase > 0).then(|| (transition.clone(), increase))
        })
        .collect()
}

fn add_to(totals: &mut BTreeMap<(String, String), u64>, label: &str, increase: Transitions) {
    for (transition, n) in increase {
        *totals.entry((transition, label.to_owned())).or_default() += n;
    }
}

/// Leaked sockets of one holder: a (comm, container) pair.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct HolderLeaks {
    close_wait: u64,
    closed_held: u64,
    oldest_age_s: f64,
}

impl HolderLeaks {
    fn total(&self) -> u64 {
        self.close_wait + self.closed_held
    }

    fn merge(&mut self, other: HolderLeaks) {
        self.close_wait += other.close_wait;
        self.closed_held += other.closed_held;
        self.oldest_age_s = self.oldest_age_s.max(other.oldest_age_s);
    }
}

type Holder = (String, String);

/// The folded holder: comm and container both `other`.
fn other_holder() -> Holder {
    (OTHER.to_owned(), OTHER.to_owned())
}

/// The `limit` holders with the most leaks (ties by name) keep their comm
/// and container; the rest are added into (`other`, `other`), so sums over
/// the series stay the totals. Sockets no process holds stay `unknown`.
fn fold_holders(
    holders: BTreeMap<Holder, HolderLeaks>,
    limit: usize,
) -> BTreeMap<Holder, HolderLeaks> {
    let mut ranked: Vec<(Holder, HolderLeaks)> = holders.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then_with(|| a.0.cmp(&b.0)));
    let mut folded: BTreeMap<Holder, HolderLeaks> = BTreeMap::new();
    let mut kept = 0;
    for (holder, leaks) in ranked {
        let holder = if holder.0 == UNKNOWN || holder == other_holder() {
            holder
        } else if kept < limit {
            kept += 1;
            holder
        } else {
            other_holder()
        };
        folded.entry(holder).or_default().merge(leaks);
    }
    folded
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
        let mut claims: BTreeMap<&str, Claim> = BTreeMap::new();
        let mut increases = Vec::with_capacity(snapshot.processes.len());
        for row in &snapshot.processes {
            let before = self
                .last_seen
                .get(&row.pid)
                .filter(|(comm, _)| *comm == row.comm)
                .map(|(_, counts)| counts);
            let increase = increase(&row.transitions, before);
            let claim = claims.entry(row.comm.as_str()).or_default();
            claim.leaking += row.leaking;
            claim.activity += increase.values().sum::<u64>() + row.sockets.values().sum::<u64>();
            increases.push((row, increase));
        }
        self.admit(&claims);

        let mut seen = HashMap::with_capacity(increases.len());
        for (row, increase) in increases {
            let label = self.comm_label(&row.comm);
            add_to(&mut self.transition_totals, label, increase);
            seen.insert(row.pid, (row.comm.clone(), row.transitions.clone()));
        }
        self.last_seen = seen;

        let unattributed = &snapshot.unattributed.transitions;
        let unattributed_increase = increase(unattributed, Some(&self.unattributed_last));
        add_to(&mut self.transition_totals, UNKNOWN, unattributed_increase);
        self.unattributed_last = unattributed.clone();
    }

    /// Gives places to comms, leaking ones first: a burst of busy
    /// short-lived comms never keeps a leaking service in `other`.
    fn admit(&mut self, claims: &BTreeMap<&str, Claim>) {
        let gone: Vec<String> = self
            .admitted
            .iter()
            .filter(|comm| !claims.contains_key(comm.as_str()))
            .cloned()
            .collect();
        for comm in &gone {
            self.forget(comm);
        }

        let mut candidates: Vec<(&str, Claim)> = claims
            .iter()
            .filter(|(comm, _)| may_have_own_label(comm) && !self.admitted.contains(**comm))
            .map(|(comm, claim)| (*comm, *claim))
            .collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        for (comm, claim) in candidates {
            if self.admitted.len() >= self.limits.comms {
                if claim.leaking == 0 {
                    break;
                }
                // The least busy comm that leaks nothing gives up its place;
                // its series end, and nothing is added to `other` for its past.
                let victim = self
                    .admitted
                    .iter()
                    .map(|admitted| {
                        (
                            claims.get(admitted.as_str()).copied().unwrap_or_default(),
                            admitted,
                        )
                    })
                    .filter(|(claim, _)| claim.leaking == 0)
                    .min_by(|a, b| a.0.activity.cmp(&b.0.activity).then_with(|| a.1.cmp(b.1)))
                    .map(|(_, admitted)| admitted.clone());
                let Some(victim) = victim else { break };
                self.forget(&victim);
            }
            self.admitted.insert(comm.to_owned());
        }
    }

    fn forget(&mut self, comm: &str) {
        self.admitted.remove(comm);
        self.transition_totals.retain(|(_, label), _| label != comm);
    }

    #[cfg(test)]
    pub fn transition_totals(&self) -> &BTreeMap<(String, String), u64> {
        &self.transition_totals
    }

    /// The comm label a process's series carry.
    fn comm_label<'a>(&self, comm: &'a str) -> &'a str {
        if self.admitted.contains(comm) {
            comm
        } else {
            OTHER
        }
    }

    /// The whole exposition for this update, family by family in the order
    /// they are exposed.
    pub fn render(
        &self,
        snapshot: &TopSnapshot,
        leaks: &LeakReport,
        totals: &AgentTotals,
    ) -> String {
        let mut registry = Registry::default();
        register_build(&mut registry);
        self.register_transitions(&mut registry);
        self.register_sockets(&mut registry, snapshot);
        self.register_leaks(&mut registry, snapshot, leaks);
        self.register_leaking_pids(&mut registry, leaks);
        register_findings(&mut registry, snapshot);
        register_totals(&mut registry, totals);
        register_stack_copies(&mut registry, leaks);
        register_occupancy(&mut registry, totals);

        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }

    /// Transitions per owning comm, since start.
    fn register_transitions(&self, registry: &mut Registry) {
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
    }

    /// Sockets in the kernel's table per state and owning comm.
    fn register_sockets(&self, registry: &mut Registry, snapshot: &TopSnapshot) {
        // The same comms as the transitions: a comm's series can be joined.
        let sockets = GaugeFamily::default();
        for row in &snapshot.processes {
            let comm = self.comm_label(&row.comm);
            for (state, n) in &row.sockets {
                sockets
                    .get_or_create(&labels(&[("state", state), ("comm", comm)]))
                    .inc_by(gauge_value(*n));
            }
        }
        for (state, n) in &snapshot.unattributed.sockets {
            sockets
                .get_or_create(&labels(&[("state", state), ("comm", UNKNOWN)]))
                .inc_by(gauge_value(*n));
        }
        registry.register(
            "tcptrace_sockets",
            "TCP sockets in the kernel's table by state and owning comm (TIME_WAIT attributed through the socket cookie; no owner known: comm=\"unknown\")",
            sockets,
        );
    }

    /// Leaked sockets and the oldest leak's age per holder, folded past
    /// `--top-comms`.
    fn register_leaks(&self, registry: &mut Registry, snapshot: &TopSnapshot, leaks: &LeakReport) {
        let containers: HashMap<u32, &str> = snapshot
            .processes
            .iter()
            .map(|row| (row.pid, row.container.as_str()))
            .collect();
        let mut holders: BTreeMap<Holder, HolderLeaks> = BTreeMap::new();
        for process in &leaks.processes {
            let holder = match (process.pid, process.comm.as_deref()) {
                (Some(pid), Some(comm)) if may_have_own_label(comm) => (
                    comm.to_owned(),
                    containers.get(&pid).copied().unwrap_or("").to_owned(),
                ),
                (Some(_), _) => other_holder(),
                (None, _) => (UNKNOWN.to_owned(), String::new()),
            };
            holders.entry(holder).or_default().merge(HolderLeaks {
                close_wait: process.close_wait as u64,
                closed_held: process.closed_held as u64,
                oldest_age_s: process.oldest_age_ms as f64 / 1000.0,
            });
        }
        let leaking = GaugeFamily::default();
        let oldest =
            Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for ((comm, container), holder) in fold_holders(holders, self.limits.comms) {
            for (kind, n) in [
                ("close_wait", holder.close_wait),
                ("closed_held", holder.closed_held),
            ] {
                if n > 0 {
                    leaking
                        .get_or_create(&labels(&[
                            ("comm", &comm),
                            ("container", &container),
                            ("kind", kind),
                        ]))
                        .set(gauge_value(n));
                }
            }
            oldest
                .get_or_create(&labels(&[("comm", &comm), ("container", &container)]))
                .set(holder.oldest_age_s);
        }
        registry.register(
            "tcptrace_leaking_sockets",
            "Sockets leaked (CLOSE_WAIT or closed but still held) for at least the agent's --min-age, by holder comm and container; holders beyond --top-comms are summed into comm=\"other\",container=\"other\"",
            leaking,
        );
        registry.register_with_unit(
            "tcptrace_oldest_leak_age",
            "Age of the oldest leaked socket, by holder comm and container (folded like tcptrace_leaking_sockets)",
            Unit::Seconds,
            oldest,
        );
    }

    /// The top leaking processes by pid: the only per-pid series.
    fn register_leaking_pids(&self, registry: &mut Registry, leaks: &LeakReport) {
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
        let by_pid = GaugeFamily::default();
        for (pid, comm, n) in leakers.into_iter().take(self.limits.leaking_pids) {
            by_pid
                .get_or_create(&labels(&[("pid", &pid.to_string()), ("comm", comm)]))
                .set(gauge_value(n as u64));
        }
        registry.register(
            "tcptrace_process_leaking_sockets",
            "Leaked sockets of the top leaking processes only, by pid",
            by_pid,
        );
    }
}

/// Which build runs here: a fleet's agents told apart by version, commit
/// and probe, as `--version` names them.
fn register_build(registry: &mut Registry) {
    let labels = vec![
        ("version".to_owned(), build_info::VERSION.to_owned()),
        ("commit".to_owned(), build_info::COMMIT.to_owned()),
        (
            "probe_build_id".to_owned(),
            build_info::PROBE_BUILD_ID.to_owned(),
        ),
    ];
    registry.register(
        "tcptrace_build",
        "The running tcptrace: its version, the commit it was built from, and its eBPF object's build id",
        Info::new(labels),
    );
}

/// Every finding kind and severity, 0 when absent.
fn register_findings(registry: &mut Registry, snapshot: &TopSnapshot) {
    let findings = GaugeFamily::default();
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
}

/// The agent's running totals: events, drops, failures.
fn register_totals(registry: &mut Registry, totals: &AgentTotals) {
    for (name, help, value) in [
        (
            "tcptrace_probe_transitions",
            "TCP state transitions the probe saw: recorded, or counted in the kernel",
            totals.transitions,
        ),
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
            "tcptrace_kernel_storage_failures",
            "Sockets whose storage the kernel could not allocate (memory pressure): their owner is lost and their transitions count as of an unknown owner",
            totals.kernel_storage_failures,
        ),
        (
            "tcptrace_reconcile_corrections",
            "Tracked sockets corrected after comparing with the kernel's socket table",
            totals.reconcile_corrections,
        ),
        (
            "tcptrace_host_read_failures",
            "Reads of /proc or of the kernel's socket table that failed (fd exhaustion, an unreadable namespace); what was known before is kept meanwhile, so leak reports may be out of date",
            totals.host_read_failures,
        ),
        (
            "tcptrace_http_accept_errors",
            "accept() calls of the HTTP side that failed, out of fds mostly; scrapes are then answered through fds kept in reserve",
            totals.http_accept_errors,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
    let forgotten = Family::<Vec<(String, String)>, Counter>::default();
    for (table, count) in &totals.forgotten_entries {
        forgotten
            .get_or_create(&labels(&[("table", table)]))
            .inc_by(*count);
    }
    registry.register(
        "tcptrace_agent_table_forgotten",
        "Entries a capped table of the agent did not keep, or forgot early, because it was full: precision only (a destination's connects left out, an owner's counts the kernel's map evicted between two reads), never a leak missed",
        forgotten,
    );
}

/// The stack-copy budget at work: copies taken (by which budget), and
/// moments refused, from which a code path's coverage follows.
fn register_stack_copies(registry: &mut Registry, leaks: &LeakReport) {
    let sampling = &leaks.stacks;
    let copies = Family::<Vec<(String, String)>, Counter>::default();
    for (budget, value) in [
        (
            "host",
            sampling
                .copies_taken
                .saturating_sub(sampling.copies_targeted),
        ),
        ("targeted", sampling.copies_targeted),
    ] {
        copies
            .get_or_create(&labels(&[("budget", budget)]))
            .inc_by(value);
    }
    registry.register(
        "tcptrace_stack_copies",
        "User stack copies taken for code paths, by the budget that paid for them (targeted: a process that leaked without a code path)",
        copies,
    );
    let refused = Counter::<u64>::default();
    refused.inc_by(sampling.copies_refused);
    registry.register(
        "tcptrace_stack_copies_refused",
        "Moments to copy a stack (connect, accept, first read or write, EOF read) that the copy budget refused: those sockets have no code path",
        refused,
    );
    let targeted = Gauge::<i64>::default();
    targeted.set(gauge_value(sampling.targeted_processes as u64));
    registry.register(
        "tcptrace_stack_targeted_processes",
        "Processes whose every new socket is copied, because they leak without a code path",
        targeted,
    );
}

/// How full the probe's maps and the agent's tables are.
fn register_occupancy(registry: &mut Registry, totals: &AgentTotals) {
    for (tables, label, entries, entries_help, capacity, capacity_help) in [
        (
            &totals.kernel_maps,
            "map",
            "tcptrace_map_entries",
            "Entries in each of the probe's maps in the kernel",
            "tcptrace_map_capacity",
            "Entries each of the probe's maps can hold (none for maps freed with what they describe)",
        ),
        (
            &totals.agent_tables,
            "table",
            "tcptrace_agent_table_entries",
            "Entries in each of the agent's own tables",
            "tcptrace_agent_table_capacity",
            "Entries each of the agent's tables can hold (none for tables bounded by what they describe: live sockets, processes)",
        ),
    ] {
        let (entries_family, capacity_family) = occupancy_families(tables, label);
        registry.register(entries, entries_help, entries_family);
        registry.register(capacity, capacity_help, capacity_family);
    }
}

/// Label pairs as prometheus-client takes them.
fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A count as a gauge value; no count comes near i64::MAX.
fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A family declared even with no series, so its name is in /metrics for
/// alert rules and dashboards before anything reports into it. OpenMetrics
/// allows a family without samples; prometheus-client leaves empty families
/// out unless a metric says it is never empty.
#[derive(Debug)]
struct Declared<M>(M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Entries and capacity of each table, by name; capacity only where bounded
/// by a number.
fn occupancy_families(
    tables: &[Occupancy],
    label: &str,
) -> (Declared<GaugeFamily>, Declared<GaugeFamily>) {
    let entries = GaugeFamily::default();
    let capacity = GaugeFamily::default();
    for table in tables {
        let labels = vec![(label.to_owned(), table.name.to_owned())];
        entries
            .get_or_create(&labels)
            .set(gauge_value(table.entries));
        if let Some(bound) = table.capacity {
            capacity.get_or_create(&labels).set(gauge_value(bound));
        }
    }
    (Declared(entries), Declared(capacity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::leak_report::ProcessLeaks, model::top_snapshot::ProcessRow};

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

    fn holder(comm: &str, container: &str) -> Holder {
        (comm.to_owned(), container.to_owned())
    }

    fn leaks_of(close_wait: u64, closed_held: u64, oldest_age_s: f64) -> HolderLeaks {
        HolderLeaks {
            close_wait,
            closed_held,
            oldest_age_s,
        }
    }

    #[test]
    fn fold_holders_keeps_the_biggest_and_folds_the_rest() {
        let holders: BTreeMap<Holder, HolderLeaks> = [
            (holder("a", "c1"), leaks_of(5, 0, 10.0)),
            (holder("b", ""), leaks_of(8, 1, 3.0)),
            (holder("a", "c2"), leaks_of(1, 0, 99.0)),
            (holder("d", "c3"), leaks_of(2, 1, 7.0)),
            (holder(UNKNOWN, ""), leaks_of(2, 0, 1.0)),
            (other_holder(), leaks_of(1, 0, 2.0)),
        ]
        .into_iter()
        .collect();
        let folded = fold_holders(holders, 2);
        let expected: BTreeMap<Holder, HolderLeaks> = [
            (holder("b", ""), leaks_of(8, 1, 3.0)),
            (holder("a", "c1"), leaks_of(5, 0, 10.0)),
            (other_holder(), leaks_of(4, 1, 99.0)),
            (holder(UNKNOWN, ""), leaks_of(2, 0, 1.0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            folded, expected,
            "unknown is never folded; a folded holder's oldest leak is the fold's"
        );
    }

    fn leaking_process(pid: u32, comm: &str, close_wait: usize, age_ms: u64) -> ProcessLeaks {
        ProcessLeaks {
            pid: Some(pid),
            comm: Some(comm.into()),
            close_wait,
            oldest_age_ms: age_ms,
            ..Default::default()
        }
    }

    fn report(processes: Vec<ProcessLeaks>) -> LeakReport {
        LeakReport {
            min_age_ms: 0,
            leaking_sockets: processes.iter().map(|p| p.close_wait + p.closed_held).sum(),
            processes,
            health: Default::default(),
            stacks: Default::default(),
        }
    }

    /// Samples of one family: (labels, value).
    fn samples<'a>(text: &'a str, family: &str) -> Vec<(&'a str, f64)> {
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(family)?.strip_prefix('{')?;
                let (labels, value) = rest.split_once("} ")?;
                Some((labels, value.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn leaks_in_many_containers_are_folded_and_sum_to_the_total() {
        const LIMIT: usize = 5;
        const PROCESSES: u32 = 150;
        let mut state = MetricsState::new(MetricsLimits {
            comms: LIMIT,
            leaking_pids: 3,
        });
        // 150 leaking processes, each in a container of its own, half of
        // them sharing a comm; one holds the oldest leak.
        let rows: Vec<ProcessRow> = (1..=PROCESSES)
            .map(|pid| {
                let comm = if pid % 2 == 0 {
                    "worker".to_owned()
                } else {
                    format!("svc{pid}")
                };
                ProcessRow {
                    container: format!("{pid:012x}"),
                    leaking: u64::from(pid % 3 + 1),
                    ..row(pid, &comm, &[])
                }
            })
            .collect();
        let leaks = report(
            rows.iter()
                .map(|r| {
                    let age_ms = if r.pid == 76 { 90_000 } else { 5_000 };
                    leaking_process(r.pid, &r.comm, r.leaking as usize, age_ms)
                })
                .chain([ProcessLeaks {
                    close_wait: 4,
                    ..Default::default()
                }])
                .collect(),
        );
        let snap = snapshot(rows);
        state.update_transitions(&snap);
        let text = state.render(&snap, &leaks, &AgentTotals::default());

        let leaking = samples(&text, "tcptrace_leaking_sockets");
        assert!(
            leaking.len() <= 2 * (LIMIT + 2),
            "{} series: {leaking:#?}",
            leaking.len()
        );
        let kept = leaking
            .iter()
            .filter(|(labels, _)| {
                !labels.contains("comm=\"other\"") && !labels.contains("comm=\"unknown\"")
            })
            .count();
        assert_eq!(kept, LIMIT, "{leaking:#?}");
        let sum: f64 = leaking.iter().map(|(_, v)| v).sum();
        assert_eq!(sum, leaks.leaking_sockets as f64, "{leaking:#?}");
        assert!(
            leaking.contains(&(
                "comm=\"other\",container=\"other\",kind=\"close_wait\"",
                300.0 - 3.0 * 5.0
            )),
            "the folded rest: {leaking:#?}"
        );
        assert!(leaking.contains(&("comm=\"unknown\",container=\"\",kind=\"close_wait\"", 4.0)));

        let oldest = samples(&text, "tcptrace_oldest_leak_age_seconds");
        assert!(oldest.len() <= LIMIT + 2, "{oldest:#?}");
        assert!(
            oldest.contains(&("comm=\"other\",container=\"other\"", 90.0)),
            "the fold's oldest is the oldest of what it holds: {oldest:#?}"
        );
        assert_eq!(samples(&text, "tcptrace_process_leaking_sockets").len(), 3);
    }

    #[test]
    fn a_leaking_comm_keeps_its_series_through_a_burst_of_busy_comms() {
        const LIMIT: usize = 3;
        let mut state = MetricsState::new(MetricsLimits {
            comms: LIMIT,
            leaking_pids: 1,
        });
        let t = "ESTABLISHED->CLOSE_WAIT";
        let c = "CLOSE->SYN_SENT";
        // Busy comms take every place first.
        let busy = |n: u32, count: u64| row(1000 + n, &format!("busy{n}"), &[(c, count)]);
        state.update_transitions(&snapshot((0..LIMIT as u32).map(|n| busy(n, 500)).collect()));
        assert_eq!(state.admitted.len(), LIMIT);

        // The service starts leaking: it takes the place of a comm that
        // leaks nothing, while 50 short-lived busy comms come and go.
        let service = |count: u64| ProcessRow {
            leaking: 3,
            ..row(7, "leaky-service", &[(t, count)])
        };
        let mut before: BTreeMap<(String, String), u64> = BTreeMap::new();
        for round in 0..10u32 {
            let mut rows = vec![service(u64::from(round) + 3)];
            // Five new busy comms each round, each far busier than the service.
            rows.extend((0..5).map(|i| busy(10 + round * 5 + i, 10_000)));
            state.update_transitions(&snapshot(rows));
            assert!(
                state.admitted.contains("leaky-service"),
                "round {round}: {:?}",
                state.admitted
            );
            assert!(state.admitted.len() <= LIMIT);
            let labels: BTreeSet<&str> = state
                .transition_totals()
                .keys()
                .map(|(_, label)| label.as_str())
                .collect();
            assert!(labels.len() <= LIMIT + 2, "{labels:?}");
            // Counters never go down: a series either grows or ends.
            for (key, &total) in state.transition_totals() {
                if let Some(&was) = before.get(key) {
                    assert!(total >= was, "{key:?} went from {was} to {total}");
                }
            }
            before = state.transition_totals().clone();
        }
        assert_eq!(total(&state, t, "leaky-service"), 12);
        assert_eq!(total(&state, t, OTHER), 0);
    }

    #[test]
    fn busy_comms_do_not_evict_each_other_and_leakers_do_not_evict_leakers() {
        let mut state = MetricsState::new(MetricsLimits {
            comms: 2,
            leaking_pids: 1,
        });
        let c = "CLOSE->SYN_SENT";
        let leaker = |pid: u32, comm: &str, leaking: u64| ProcessRow {
            leaking,
            ..row(pid, comm, &[(c, 1)])
        };
        state.update_transitions(&snapshot(vec![leaker(1, "a", 1), leaker(2, "b", 1)]));
        // A busier comm, and a bigger leaker: places are kept while their
        // holders live, so no series flaps between updates.
        state.update_transitions(&snapshot(vec![
            leaker(1, "a", 1),
            leaker(2, "b", 1),
            row(3, "busy", &[(c, 1000)]),
            leaker(4, "big", 50),
        ]));
        assert_eq!(
            state.admitted,
            ["a", "b"].into_iter().map(String::from).collect()
        );
        assert_eq!(total(&state, c, OTHER), 1001);
    }

    #[test]
    fn comms_named_like_the_fold_labels_are_folded() {
        let mut state = MetricsState::new(MetricsLimits::default());
        let c = "CLOSE->SYN_SENT";
        state.update_transitions(&snapshot(vec![
            row(1, OTHER, &[(c, 2)]),
            row(2, UNKNOWN, &[(c, 3)]),
        ]));
        assert!(state.admitted.is_empty());
        assert_eq!(total(&state, c, OTHER), 5);
        assert_eq!(total(&state, c, UNKNOWN), 0);
    }

    #[test]
    fn occupancy_and_read_failures_are_exported() {
        let state = MetricsState::new(MetricsLimits::default());
        let totals = AgentTotals {
            host_read_failures: 2,
            kernel_maps: vec![
                Occupancy {
                    name: "stacks",
                    entries: 12,
                    capacity: Some(16384),
                },
                Occupancy {
                    name: "owners",
                    entries: 40,
                    capacity: None,
                },
            ],
            agent_tables: vec![Occupancy {
                name: "socket_stacks",
                entries: 3,
                capacity: Some(65536),
            }],
            kernel_storage_failures: 1,
            forgotten_entries: vec![("owner_counts", 7), ("destinations", 0)],
            ..AgentTotals::default()
        };
        let text = state.render(&snapshot(vec![]), &report(vec![]), &totals);
        for line in [
            "tcptrace_kernel_storage_failures_total 1",
            "tcptrace_agent_table_forgotten_total{table=\"owner_counts\"} 7",
            "tcptrace_agent_table_forgotten_total{table=\"destinations\"} 0",
            "tcptrace_map_entries{map=\"stacks\"} 12",
            "tcptrace_map_entries{map=\"owners\"} 40",
            "tcptrace_map_capacity{map=\"stacks\"} 16384",
            "tcptrace_agent_table_entries{table=\"socket_stacks\"} 3",
            "tcptrace_agent_table_capacity{table=\"socket_stacks\"} 65536",
            "tcptrace_host_read_failures_total 2",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains("tcptrace_map_capacity{map=\"owners\"}"),
            "{text}"
        );

        // With nothing to report, each family is still declared: alert
        // rules and dashboards find its name.
        let empty = state.render(&snapshot(vec![]), &report(vec![]), &AgentTotals::default());
        for family in [
            "tcptrace_map_entries",
            "tcptrace_map_capacity",
            "tcptrace_agent_table_entries",
            "tcptrace_agent_table_capacity",
        ] {
            assert!(
                empty.contains(&format!("# TYPE {family} gauge")),
                "{family} in {empty}"
            );
        }
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
            stacks: Default::default(),
            leaking_sockets: 3,
            processes: vec![
                crate::model::leak_report::ProcessLeaks {
                    pid: Some(1),
                    comm: Some("a".into()),
                    close_wait: 2,
                    closed_held: 0,
                    oldest_age_ms: 1500,
                    ..Default::default()
                },
                crate::model::leak_report::ProcessLeaks {
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
                "tcptrace_leaking_sockets{comm=\"other\",container=\"other\",kind=\"close_wait\"} 1"
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
