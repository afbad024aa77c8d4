//! Everything the agent reads from the host besides the ring buffer, in one
//! job on a blocking thread: the kernel's TCP table and sysctls of every
//! namespace, one walk of `/proc` (processes alive, holders of the sockets
//! that matter), fd usage of the holders of leaks, and where processes run.
//! The thread that drains the ring buffer never waits for any of it, so a
//! big `/proc` or table never becomes ring-buffer drops.

use std::{
    collections::{HashMap, HashSet},
    io,
};

use tcptrace_common::TcpState;
use tokio::sync::mpsc;

use crate::{
    host::clock::monotonic_now_ns,
    host::container::{container_of, net_namespace_of},
    host::inet_diag_lookup::SocketQuery,
    host::procfs::{fd_usage, scan_processes},
    host::sockdiag::{TableSnapshot, dump_tcp, in_each_namespace, look_up_all_namespaces},
    host::sysctl::read_port_settings,
    host::thread_priority::run_in_background,
    model::diagnose::{PortSettings, SettingsError},
    model::holder::ProcScan,
    model::process::FdUsage,
    model::process::Placement,
};

/// Every state a socket can be listed in while it has a file: what live
/// sockets are reconciled with. TIME_WAIT minisocks have none, and are many.
pub fn states_with_files() -> Vec<TcpState> {
    TcpState::ALL
        .into_iter()
        .filter(|&s| s != TcpState::TimeWait)
        .collect()
}

/// What to read. Built by the agent from what it knew at the last refresh.
#[derive(Clone, Debug, Default)]
pub struct HostRequest {
    /// The table's states to dump; empty for none.
    pub states: Vec<TcpState>,
    /// Instead of `states`: these sockets alone (none at all, possibly),
    /// looked up one by one in their own namespaces.
    pub lookups: Option<Vec<SocketQuery>>,
    /// Each namespace's port and timeout sysctls, read inside it.
    pub sysctls: bool,
    /// Walk every process's fds for holders (the walk for the list of
    /// processes alive is always made).
    pub holders: bool,
    /// Find holders of every socket the table lists with an inode, not only
    /// of CLOSE_WAIT ones (top and serve attribute every socket).
    pub holders_of_all: bool,
    /// Inodes whose holders are wanted besides the table's (closed-but-held
    /// suspects, which the table no longer lists).
    pub extra_inodes: HashSet<u64>,
    /// Processes whose container and network namespace are wanted.
    pub placements: Vec<u32>,
    /// Processes whose placement is known and fresh: holders found by this
    /// read that are not among them have theirs read too.
    pub fresh_placements: HashSet<u32>,
}

/// One read of the host.
#[derive(Debug)]
pub struct HostRead {
    /// When the read began (CLOCK_MONOTONIC ns): events up to here must be
    /// drained before the table is joined with them.
    pub started_ns: u64,
    /// The dump, or with `lookups_missed` the sockets the lookups found.
    pub table: TableSnapshot,
    /// Set when the table was read by lookups: the cookies of the sockets
    /// asked for and not found (in no namespace listed, or not in its table).
    pub lookups_missed: Option<Vec<u64>>,
    pub settings: Vec<(u64, Result<PortSettings, SettingsError>)>,
    /// The walk of `/proc`; its `holders` are empty unless they were asked for.
    pub processes: Result<ProcScan, io::Error>,
    /// Whether `processes.holders` is a fresh scan of holders.
    pub holders_scanned: bool,
    /// The inodes the holder scan looked for.
    pub scanned_inodes: HashSet<u64>,
    /// Open fds and their limit, for every process holding a CLOSE_WAIT
    /// socket or one of `extra_inodes`.
    pub fd_usage: HashMap<u32, FdUsage>,
    pub placements: Vec<(u32, Placement)>,
}

impl HostRead {
    pub fn processes_alive(&self) -> Option<&HashSet<u32>> {
        self.processes.as_ref().ok().map(|scan| &scan.pids)
    }
}

/// Reads what `request` asks for. Takes tens to hundreds of milliseconds on
/// a busy host: run it off the thread that drains the ring buffer.
pub fn read_host(request: HostRequest) -> HostRead {
    let started_ns = monotonic_now_ns();
    let mut read = HostRead {
        started_ns,
        table: TableSnapshot::default(),
        lookups_missed: None,
        settings: Vec::new(),
        processes: Ok(ProcScan::default()),
        holders_scanned: false,
        scanned_inodes: HashSet::new(),
        fd_usage: HashMap::new(),
        placements: Vec::new(),
    };
    if let Some(lookups) = &request.lookups {
        let (table, missed) = look_up_all_namespaces(lookups);
        read.table = table;
        read.lookups_missed = Some(missed);
    } else if !request.states.is_empty() {
        let sysctls = request.sysctls;
        match in_each_namespace(|namespace| {
            let sockets = dump_tcp(&request.states, namespace.inode)?;
            Ok((sockets, sysctls.then(read_port_settings)))
        }) {
            Ok(results) => {
                for (namespace, result) in results {
                    match result {
                        Ok((sockets, settings)) => {
                            read.table.sockets.extend(sockets);
                            if let Some(settings) = settings {
                                read.settings.push((namespace.inode, settings));
                            }
                        }
                        Err(error) => read.table.unreadable.push((namespace, error)),
                    }
                }
            }
            Err(error) => read.table.failed = Some(error),
        }
    }

    let extra = request.extra_inodes;
    let mut inodes = extra.clone();
    if request.holders {
        inodes.extend(
            read.table
                .sockets
                .iter()
                .filter(|s| s.inode != 0)
                .filter(|s| request.holders_of_all || s.state == TcpState::CloseWait)
                .map(|s| s.inode),
        );
    } else {
        inodes.clear();
    }
    read.processes = scan_processes(&inodes);
    read.holders_scanned = request.holders && read.processes.is_ok();
    if let Ok(scan) = &read.processes {
        let leak_inodes: HashSet<u64> = read
            .table
            .sockets
            .iter()
            .filter(|s| s.state == TcpState::CloseWait && s.inode != 0)
            .map(|s| s.inode)
            .chain(extra.iter().copied())
            .collect();
        let holding_leaks: HashSet<u32> = scan
            .holders
            .iter()
            .filter(|(inode, _)| leak_inodes.contains(inode))
            .flat_map(|(_, holders)| holders.iter().map(|h| h.pid))
            .collect();
        for pid in holding_leaks {
            if let Some((open, limit)) = fd_usage(pid) {
                read.fd_usage.insert(pid, FdUsage { open, limit });
            }
        }
    }
    read.scanned_inodes = inodes;
    let mut wanted: HashSet<u32> = request.placements.into_iter().collect();
    if request.holders_of_all
        && let Ok(scan) = &read.processes
    {
        wanted.extend(
            scan.holders
                .values()
                .flatten()
                .map(|h| h.pid)
                .filter(|pid| !request.fresh_placements.contains(pid)),
        );
    }
    read.placements = wanted
        .into_iter()
        .map(|pid| {
            let container = container_of(pid);
            let placement = Placement {
                container: container
                    .as_ref()
                    .map(|c| c.short_label())
                    .unwrap_or_default(),
                pod_uid: container.and_then(|c| c.pod_uid),
                netns: net_namespace_of(pid),
            };
            (pid, placement)
        })
        .collect();
    read
}

/// Hands the memory a host read freed back to the kernel. A busy host's
/// table is hundreds of thousands of sockets, read on a blocking thread and
/// freed on the draining one; glibc keeps such freed memory in the arena of
/// the thread that allocated it, so without this the resident size stays at
/// the highest table ever read, and creeps up as reads land in new arenas.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims the allocator's own free
    // lists; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Host reads on a blocking thread, one at a time.
pub struct HostReader {
    done: mpsc::Sender<HostRead>,
    results: mpsc::Receiver<HostRead>,
    busy: bool,
}

impl Default for HostReader {
    fn default() -> Self {
        let (done, results) = mpsc::channel(1);
        Self {
            done,
            results,
            busy: false,
        }
    }
}

impl HostReader {
    /// Begins a read unless one is under way; returns whether it began.
    pub fn start(&mut self, request: HostRequest) -> bool {
        if self.busy {
            return false;
        }
        self.busy = true;
        let done = self.done.clone();
        tokio::task::spawn_blocking(move || {
            run_in_background();
            // The receiver lives as long as the reader: a send cannot fail
            // while anyone waits for it.
            let _ = done.blocking_send(read_host(request));
        });
        true
    }

    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// The read begun last, when it is done.
    pub async fn finished(&mut self) -> Option<HostRead> {
        let read = self.results.recv().await;
        self.busy = false;
        read
    }
}
