//! A TCP socket as the kernel's table lists it, and the network namespace it
//! is read through: the authority that live tracking is reconciled with.

use std::net::SocketAddr;

use tcptrace_common::TcpState;

/// One TCP socket as the kernel's table shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSocket {
    pub cookie: u64,
    /// 0 for sockets without a file (timewait minisocks, request socks, orphans).
    pub inode: u64,
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Bytes received and not yet read by the application.
    pub recv_queue: u32,
    /// Bytes sent and not yet acknowledged; for a listener, its accept backlog
    /// (and `recv_queue` the connections waiting in its accept queue).
    pub send_queue: u32,
    /// Inode of the network namespace it lives in.
    pub netns_inode: u64,
}

/// A network namespace and one process in it, through which it is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetNamespace {
    pub inode: u64,
    pub pid: u32,
}
