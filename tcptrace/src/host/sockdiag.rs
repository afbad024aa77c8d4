//! The kernel's TCP socket table, read with netlink sock_diag (what `ss`
//! reads), in every network namespace that has processes.
//!
//! The table is the ground truth that live events are reconciled against:
//! its `cookie` is the same number the probe reports, so the two join exactly.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};
use tcptrace_common::TcpState;
use thiserror::Error;

use crate::host::{
    inet_diag_lookup::{SocketQuery, look_up_tcp},
    inet_diag_walk::{Walk, walk_tcp},
    procfs,
};

use crate::model::kernel_socket::{KernelSocket, NetNamespace};

#[derive(Debug, Error)]
pub enum SockDiagError {
    #[error("sock_diag netlink {step} failed: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sock_diag reply could not be decoded: {0}")]
    Decode(String),
    #[error("sock_diag request refused by the kernel (errno {0})")]
    Kernel(i32),
    #[error("cannot enter the network namespace of pid {pid}: {source}")]
    Namespace {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Every distinct network namespace that has at least one process. An error
/// when /proc cannot be listed, or a process's namespace cannot be read for
/// a reason other than its exit (out of fds, say): a partial list would read
/// as namespaces, and their sockets, that are gone.
pub fn net_namespaces() -> std::io::Result<Vec<NetNamespace>> {
    let mut seen = HashSet::new();
    let mut namespaces = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let meta = match fs::metadata(entry.path().join("ns/net")) {
            Ok(meta) => meta,
            Err(error) if procfs::process_went_away(&error) => continue,
            Err(error) => return Err(error),
        };
        if seen.insert(meta.ino()) {
            namespaces.push(NetNamespace {
                inode: meta.ino(),
                pid,
            });
        }
    }
    match own_net_namespace() {
        Some(own) if seen.contains(&own) => Ok(namespaces),
        _ => Err(std::io::Error::other(
            "this process's own network namespace was not among those listed",
        )),
    }
}

/// The inode of this thread's own network namespace.
pub fn own_net_namespace() -> Option<u64> {
    fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// What a dump across namespaces found, and the namespaces it could not read
/// (their processes exited meanwhile, or entering them was refused).
#[derive(Debug, Default)]
pub struct TableSnapshot {
    pub sockets: Vec<KernelSocket>,
    pub unreadable: Vec<(NetNamespace, SockDiagError)>,
    /// The namespaces themselves could not be listed: nothing here says a
    /// socket is gone.
    pub failed: Option<std::io::Error>,
}

impl TableSnapshot {
    /// Every namespace was read: a socket missing here is gone.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none() && self.unreadable.is_empty()
    }

    /// The cookies of every socket listed, when the table is complete: built
    /// once per read, since a busy host's table holds a minute of TIME_WAIT
    /// sockets and every forgetting of sockets it no longer lists needs it.
    pub fn listed_cookies(&self) -> Option<foldhash::HashSet<u64>> {
        self.is_complete()
            .then(|| self.sockets.iter().map(|s| s.cookie).collect())
    }
}

/// Dumps the TCP tables of every network namespace that has processes.
pub fn dump_all_namespaces(states: &[TcpState]) -> TableSnapshot {
    let mut snapshot = TableSnapshot::default();
    match in_each_namespace(|namespace| dump_tcp(states, namespace.inode)) {
        Ok(results) => {
            for (namespace, result) in results {
                match result {
                    Ok(sockets) => snapshot.sockets.extend(sockets),
                    Err(error) => snapshot.unreadable.push((namespace, error)),
                }
            }
        }
        Err(error) => snapshot.failed = Some(error),
    }
    snapshot
}

/// Looks `queries` up, each in its own namespace: the sockets found, and
/// the cookies of those that were not (in no namespace listed, or not in
/// its table).
pub fn look_up_all_namespaces(queries: &[SocketQuery]) -> (TableSnapshot, Vec<u64>) {
    let mut table = TableSnapshot::default();
    if queries.is_empty() {
        return (table, Vec::new());
    }
    let cookies = |queries: &[SocketQuery]| queries.iter().map(|q| q.cookie).collect::<Vec<_>>();
    let namespaces = match net_namespaces() {
        Ok(namespaces) => namespaces,
        Err(error) => {
            table.failed = Some(error);
            return (table, cookies(queries));
        }
    };
    let mut by_namespace: HashMap<u64, Vec<SocketQuery>> = HashMap::new();
    for query in queries {
        by_namespace
            .entry(query.netns_inode)
            .or_default()
            .push(*query);
    }
    let own = own_net_namespace();
    let mut missed = Vec::new();
    for (inode, queries) in by_namespace {
        let Some(&namespace) = namespaces.iter().find(|n| n.inode == inode) else {
            // No process left in it: its sockets may be gone with it.
            missed.extend(cookies(&queries));
            continue;
        };
        let read = |namespace: NetNamespace| look_up_tcp(&queries, namespace.inode);
        match in_namespace(namespace, own, &read) {
            Ok(lookup) => {
                missed.extend(lookup.missed);
                table.sockets.extend(lookup.found);
            }
            Err(error) => {
                missed.extend(cookies(&queries));
                table.unreadable.push((namespace, error));
            }
        }
    }
    (table, missed)
}

/// Runs `read` inside every network namespace that has processes: what it
/// reads of /proc/sys/net or sock_diag is that namespace's. setns() changes
/// only the calling thread, so each foreign namespace is read from a
/// short-lived thread of its own.
pub fn in_each_namespace<T: Send>(
    read: impl Fn(NetNamespace) -> Result<T, SockDiagError> + Sync,
) -> std::io::Result<Vec<(NetNamespace, Result<T, SockDiagError>)>> {
    let own = own_net_namespace();
    Ok(net_namespaces()?
        .into_iter()
        .map(|namespace| (namespace, in_namespace(namespace, own, &read)))
        .collect())
}

/// Runs `read` in `namespace`: on this thread when it is `own`, this
/// thread's namespace, otherwise on a short-lived thread that enters it.
fn in_namespace<T: Send>(
    namespace: NetNamespace,
    own: Option<u64>,
    read: &(impl Fn(NetNamespace) -> Result<T, SockDiagError> + Sync),
) -> Result<T, SockDiagError> {
    if Some(namespace.inode) == own {
        return read(namespace);
    }
    let path = format!("/proc/{}/ns/net", namespace.pid);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_namespace(Path::new(&path)).map_err(|source| SockDiagError::Namespace {
                    pid: namespace.pid,
                    source,
                })?;
                read(namespace)
            })
            .join()
            .unwrap_or_else(|_| Err(SockDiagError::Decode("namespace reader panicked".into())))
    })
}

fn enter_namespace(path: &Path) -> std::io::Result<()> {
    let file = fs::File::open(path)?;
    // SAFETY: a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How long one receive on a sock_diag socket may wait.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Set once the kernel refuses the one-walk request.
static PER_FAMILY_ONLY: AtomicBool = AtomicBool::new(false);

/// Dumps IPv4 and IPv6 TCP sockets in `states` of the calling thread's
/// namespace, in one walk of the kernel's hash where the kernel allows it.
pub fn dump_tcp(states: &[TcpState], netns_inode: u64) -> Result<Vec<KernelSocket>, SockDiagError> {
    let socket = open()?;
    if !PER_FAMILY_ONLY.load(Ordering::Relaxed) {
        match walk_tcp(&socket, state_flags(states).bits(), netns_inode)? {
            Walk::Sockets(sockets) => return Ok(sockets),
            // A kernel without the older request: asked per family from now on.
            Walk::Refused => PER_FAMILY_ONLY.store(true, Ordering::Relaxed),
        }
    }
    let mut sockets = Vec::new();
    for (family, socket_id) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        send_request(&socket, family, state_flags(states), socket_id)?;
        receive_dump(&socket, |response| {
            if let Some(found) = kernel_socket(&response, netns_inode) {
                sockets.push(found);
            }
        })?;
    }
    Ok(sockets)
}

/// A sock_diag socket of the calling thread's network namespace, talking
/// to the kernel.
pub(crate) fn open() -> Result<Socket, SockDiagError> {
    let io = |step| move |source| SockDiagError::Io { step, source };
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(io("socket"))?;
    socket.bind_auto().map_err(io("bind"))?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .map_err(io("connect"))?;
    // The kernel answers within the send (lookups) or the receive (dumps),
    // so a receive never waits on it; should an answer ever be lost, the
    // read fails after this instead of stalling every later host read.
    let timeout = libc::timeval {
        tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: a valid socket fd and a timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io("setsockopt")(std::io::Error::last_os_error()));
    }
    Ok(socket)
}

fn send_request(
    socket: &Socket,
    family: u8,
    states: StateFlags,
    socket_id: SocketId,
) -> Result<(), SockDiagError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(|source| SockDiagError::Io {
        step: "send",
        source,
    })?;
    Ok(())
}

/// One datagram of a dump into `buf`; its size.
pub(crate) fn receive(socket: &Socket, buf: &mut [u8]) -> Result<usize, SockDiagError> {
    socket
        .recv(&mut &mut buf[..], 0)
        .map_err(|source| SockDiagError::Io {
            step: "recv",
            source,
        })
}

fn receive_dump(socket: &Socket, mut each: impl FnMut(InetResponse)) -> Result<(), SockDiagError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = receive(socket, &mut buf)?;
        let mut offset = 0;
        while offset < size {
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[offset..size])
                .map_err(|e| SockDiagError::Decode(e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    each(*response)
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => {
                    return Err(SockDiagError::Kernel(
                        error.code.map_or(0, |code| code.get()),
                    ));
                }
                _ => {}
            }
            if length == 0 {
                return Err(SockDiagError::Decode("zero-length netlink message".into()));
            }
            offset += length;
        }
    }
}

fn kernel_socket(response: &InetResponse, netns_inode: u64) -> Option<KernelSocket> {
    let header = &response.header;
    let id = &header.socket_id;
    let cookie_low = u32::from_ne_bytes(id.cookie[..4].try_into().ok()?);
    let cookie_high = u32::from_ne_bytes(id.cookie[4..].try_into().ok()?);
    Some(KernelSocket {
        cookie: u64::from(cookie_low) | (u64::from(cookie_high) << 32),
        inode: u64::from(header.inode),
        state: TcpState::from_raw(header.state)?,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        recv_queue: header.recv_queue,
        send_queue: header.send_queue,
        netns_inode,
    })
}

/// Bit N is state N, as in `ss`.
fn state_flags(states: &[TcpState]) -> StateFlags {
    StateFlags::from_bits_retain(states.iter().fold(0, |bits, &s| bits | 1 << (s as u32)))
}
