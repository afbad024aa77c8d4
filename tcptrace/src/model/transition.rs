//! What the probe reports, decoded: a socket's state transition with its
//! owner, a socket the kernel freed, a stack taken for a socket.

use std::net::SocketAddr;

use tcptrace_common::{StackKind, TcpState};

/// A process as the kernel named it when it was seen owning a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub tgid: u32,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    pub cookie: u64,
    pub skaddr: u64,
    /// The owner as the kernel knew it; `None` when no process-context
    /// transition of this socket has been seen.
    pub owner: Option<Process>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub old_state: TcpState,
    pub new_state: TcpState,
    /// Only at transitions from or to LISTEN, and SYN_RECV -> ESTABLISHED
    /// (where an accepted socket may first show itself).
    pub netns_inode: Option<u32>,
    /// Only in leak mode, at transitions to CLOSE, while a file still refers to
    /// the socket: the inode of that file.
    pub socket_inode: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Transition(Transition),
    /// The kernel freed the socket with this cookie.
    Destroyed {
        cookie: u64,
    },
    Stack(StackSample),
}

/// A user stack copy the probe took for a socket: the copy waits in the
/// probe's map under (cookie, kind) until the agent reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackSample {
    pub timestamp_ns: u64,
    pub cookie: u64,
    pub tgid: u32,
    pub kind: StackKind,
    pub copied: Result<(), StackCopyFailure>,
}

/// Why the probe has no copy of a stack it tried to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackCopyFailure {
    /// Not one page at the user stack pointer could be read.
    Unreadable,
    /// The copy map refused it.
    NotStored,
    Other(i32),
}
