//! What the diagnoses are given, assembled each refresh from the kernel's
//! table, the activity, the probe's EOF counts and each namespace's
//! sysctls: connect outcomes and rates since the previous refresh, port
//! loads, stuck FIN_WAIT2 sockets, EOF spins and listener backlogs.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use tcptrace_common::TcpState;

use crate::{
    host::reader::HostRead,
    host::sockdiag::TableSnapshot,
    model::activity::Activity,
    model::diagnose::{
        ConnectOutcomes, DestinationLoad, EofReads, Finding, ListenerLoad, PortSettings,
        ProcessLeakSummary, StuckSocket, connect_failure_findings, eof_spin_findings,
        fin_wait2_findings, leak_findings, sort_findings, syn_backlog_findings, time_wait_finding,
    },
    model::holder::Holder,
    model::inferred_owners::InferredOwners,
    model::kernel_socket::KernelSocket,
    model::leak_report::{CodePath, LeakReport},
    model::stack_gaps::StackMode,
    model::top_snapshot::socket_owner,
    model::tracker::SocketTracker,
    probe::loader::Probe,
};

fn owner_label(pid: u32, comm: &str) -> String {
    format!("pid {pid} ({comm})")
}

/// Counts at the previous refresh, for the diagnoses that need a rate.
#[derive(Default)]
struct Previous {
    at_ns: Option<u64>,
    connects: HashMap<(u32, SocketAddr), (u64, u64)>,
    eof_reads: HashMap<u64, (u64, u64)>,
    /// FIN_WAIT2 sockets first seen in the table (no history): a lower bound.
    fin_wait2_seen: HashMap<u64, u64>,
}

/// Who owns a socket, as the agent knows it: its history, then its holders.
pub(super) struct Owners<'a> {
    pub(super) activity: &'a Activity,
    pub(super) tracker: &'a SocketTracker,
    pub(super) holders: &'a HashMap<u64, Vec<Holder>>,
    pub(super) inferred: &'a InferredOwners,
}

impl Owners<'_> {
    fn owner_of(&self, socket: &KernelSocket) -> Option<String> {
        socket_owner(socket, self.tracker, self.holders, self.inferred)
            .map(|(pid, comm)| owner_label(pid, &comm))
    }
}

/// The diagnoses' memory between refreshes.
#[derive(Default)]
pub(super) struct Diagnoses {
    previous: Previous,
    /// Each network namespace's port and timeout sysctls, read inside it.
    settings: HashMap<u64, PortSettings>,
    /// Namespaces whose settings could not be read, told once each.
    settings_unreadable: HashSet<u64>,
}

impl Diagnoses {
    /// Keeps each namespace's settings (telling once about those that could
    /// not be read) and returns the table.
    pub(super) fn take_settings(&mut self, read: HostRead) -> TableSnapshot {
        // Settings of a failed read are not known to have changed.
        if read.table.failed.is_some() {
            return read.table;
        }
        self.settings.clear();
        for (namespace, settings) in read.settings {
            match settings {
                Ok(settings) => {
                    self.settings.insert(namespace, settings);
                }
                Err(error) => {
                    if self.settings_unreadable.insert(namespace) {
                        eprintln!(
                            "tcptrace: no TIME_WAIT or FIN_WAIT2 diagnoses in network namespace {namespace}: {error}"
                        );
                    }
                }
            }
        }
        read.table
    }

    pub(super) fn diagnose(
        &mut self,
        owners: &Owners<'_>,
        table: &[KernelSocket],
        leaks: &LeakReport,
        probe: &Probe,
        now_ns: u64,
    ) -> Vec<Finding> {
        let window = self
            .previous
            .at_ns
            .map(|at| Duration::from_nanos(now_ns.saturating_sub(at)))
            .unwrap_or_default();
        let mut findings = leak_findings(
            &leaks
                .processes
                .iter()
                .map(|p| ProcessLeakSummary {
                    owner: match (p.pid, &p.comm) {
                        (Some(pid), Some(comm)) => owner_label(pid, comm),
                        _ => "no process holds them".to_owned(),
                    },
                    leaking_sockets: (p.close_wait + p.closed_held) as u64,
                    oldest_age: Duration::from_millis(p.oldest_age_ms),
                    leaks_per_minute: p.growth_per_minute,
                    open_fds: p.fds_open,
                    fd_limit: p.fd_limit,
                    read_eof: (leaks.stacks.mode != StackMode::Off && leaks.stacks.reads_seen)
                        .then(|| p.code_paths.iter().any(CodePath::read_eof)),
                })
                .collect::<Vec<_>>(),
        );

        // Connects per destination and owner since the last refresh.
        let mut outcomes = Vec::new();
        let mut destination_rates: HashMap<SocketAddr, f64> = HashMap::new();
        let mut connects = HashMap::new();
        for (tgid, destination, counts) in owners.activity.destinations() {
            let (attempted_before, failed_before) = self
                .previous
                .connects
                .get(&(tgid, destination))
                .copied()
                .unwrap_or((0, 0));
            let attempted = counts.attempted.saturating_sub(attempted_before);
            let failed = counts.failed.saturating_sub(failed_before);
            connects.insert((tgid, destination), (counts.attempted, counts.failed));
            if window.is_zero() {
                continue;
            }
            *destination_rates.entry(destination).or_default() +=
                attempted as f64 / window.as_secs_f64();
            if attempted > 0 || failed > 0 {
                let comm = owners
                    .activity
                    .process(tgid)
                    .map(|p| p.comm.to_string())
                    .unwrap_or_default();
                outcomes.push(ConnectOutcomes {
                    owner: owner_label(tgid, &comm),
                    destination,
                    attempted,
                    failed,
                    window,
                });
            }
        }
        self.previous.connects = connects;
        findings.extend(connect_failure_findings(&outcomes));

        findings.extend(self.port_findings(table, &destination_rates));
        findings.extend(self.fin_wait2(owners, table, now_ns));
        findings.extend(self.eof_spins(owners, table, probe, now_ns, window));
        findings.extend(syn_backlog_findings(&self.listener_loads(owners, table)));
        self.previous.at_ns = Some(now_ns);
        sort_findings(&mut findings);
        findings
    }

    fn port_findings(
        &self,
        table: &[KernelSocket],
        rates: &HashMap<SocketAddr, f64>,
    ) -> Vec<Finding> {
        // Per namespace: each has its own ports and its own sysctls.
        let mut loads: HashMap<(u64, SocketAddr), DestinationLoad> = HashMap::new();
        for socket in table {
            let Some(settings) = self.settings.get(&socket.netns_inode) else {
                continue;
            };
            let ephemeral = settings.ephemeral_low..=settings.ephemeral_high;
            if socket.state == TcpState::Listen || !ephemeral.contains(&socket.local.port()) {
                continue;
            }
            let load = loads
                .entry((socket.netns_inode, socket.remote))
                .or_insert_with(|| DestinationLoad {
                    destination: socket.remote,
                    time_wait: 0,
                    other_in_use: 0,
                    connects_per_second: rates.get(&socket.remote).copied().unwrap_or(0.0),
                });
            if socket.state == TcpState::TimeWait {
                load.time_wait += 1;
            } else {
                load.other_in_use += 1;
            }
        }
        loads
            .iter()
            .filter_map(|((netns, _), load)| time_wait_finding(load, self.settings.get(netns)?))
            .collect()
    }

    fn fin_wait2(
        &mut self,
        owners: &Owners<'_>,
        table: &[KernelSocket],
        now_ns: u64,
    ) -> Vec<Finding> {
        let mut seen = HashMap::new();
        let mut stuck: HashMap<u64, Vec<StuckSocket>> = HashMap::new();
        for socket in table {
            if socket.state != TcpState::FinWait2 || socket.inode == 0 {
                continue;
            }
            // No move to FIN_WAIT2 is recorded for `top` and `serve`: its
            // age runs from the first table that listed it there.
            let since_ns = self
                .previous
                .fin_wait2_seen
                .get(&socket.cookie)
                .copied()
                .unwrap_or(now_ns);
            seen.insert(socket.cookie, since_ns);
            stuck
                .entry(socket.netns_inode)
                .or_default()
                .push(StuckSocket {
                    owner: owners
                        .owner_of(socket)
                        .unwrap_or_else(|| "unknown".to_owned()),
                    local: socket.local,
                    remote: socket.remote,
                    age: Duration::from_nanos(now_ns.saturating_sub(since_ns)),
                });
        }
        self.previous.fin_wait2_seen = seen;
        stuck
            .iter()
            .filter_map(|(netns, sockets)| {
                Some(fin_wait2_findings(sockets, self.settings.get(netns)?))
            })
            .flatten()
            .collect()
    }

    fn eof_spins(
        &mut self,
        owners: &Owners<'_>,
        table: &[KernelSocket],
        probe: &Probe,
        now_ns: u64,
        window: Duration,
    ) -> Vec<Finding> {
        let mut samples = HashMap::new();
        let mut reads = Vec::new();
        for socket in table.iter().filter(|s| s.state == TcpState::CloseWait) {
            let Some(count) = probe.eof_reads(socket.cookie) else {
                continue;
            };
            samples.insert(socket.cookie, (count, now_ns));
            let Some(&(before, at_ns)) = self.previous.eof_reads.get(&socket.cookie) else {
                continue;
            };
            let span = Duration::from_nanos(now_ns.saturating_sub(at_ns));
            if span.is_zero() || window.is_zero() {
                continue;
            }
            reads.push(EofReads {
                owner: owners
                    .owner_of(socket)
                    .unwrap_or_else(|| "unknown".to_owned()),
                cookie: socket.cookie,
                remote: socket.remote,
                eof_reads: count.saturating_sub(before),
                window: span,
            });
        }
        self.previous.eof_reads = samples;
        eof_spin_findings(&reads)
    }

    fn listener_loads(&self, owners: &Owners<'_>, table: &[KernelSocket]) -> Vec<ListenerLoad> {
        let mut syn_recv: HashMap<(u64, u16), Vec<SocketAddr>> = HashMap::new();
        for socket in table.iter().filter(|s| s.state == TcpState::SynRecv) {
            syn_recv
                .entry((socket.netns_inode, socket.local.port()))
                .or_default()
                .push(socket.local);
        }
        table
            .iter()
            .filter(|s| s.state == TcpState::Listen)
            .map(|listener| {
                let half_open = syn_recv
                    .get(&(listener.netns_inode, listener.local.port()))
                    .map_or(0, |locals| {
                        locals
                            .iter()
                            .filter(|local| {
                                listener.local.ip().is_unspecified()
                                    || local.ip().to_canonical()
                                        == listener.local.ip().to_canonical()
                            })
                            .count()
                    });
                ListenerLoad {
                    owner: owners
                        .owner_of(listener)
                        .unwrap_or_else(|| "unknown".to_owned()),
                    local: listener.local,
                    syn_recv: half_open as u64,
                    accept_queue: u64::from(listener.recv_queue),
                    accept_backlog: u64::from(listener.send_queue),
                }
            })
            .collect()
    }
}
