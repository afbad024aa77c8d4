//! Values the model's and the engine's unit tests build sockets from.

use tcptrace_common::TcpState;

use crate::model::{kernel_socket::KernelSocket, transition::Transition};

pub(crate) const S: u64 = 1_000_000_000;

/// A transition of socket `cookie` between 127.0.0.1:8080 and
/// 127.0.0.1:40000, `at_s` seconds in, with no owner.
pub(crate) fn transition(cookie: u64, at_s: u64, old: TcpState, new: TcpState) -> Transition {
    Transition {
        timestamp_ns: at_s * S,
        cookie,
        skaddr: 0xffff_0000,
        owner: None,
        local: "127.0.0.1:8080".parse().unwrap(),
        remote: "127.0.0.1:40000".parse().unwrap(),
        old_state: old,
        new_state: new,
        netns_inode: None,
        socket_inode: None,
    }
}

/// The kernel table's row for that socket in CLOSE_WAIT.
pub(crate) fn close_wait_in_kernel(cookie: u64, inode: u64) -> KernelSocket {
    KernelSocket {
        cookie,
        inode,
        state: TcpState::CloseWait,
        local: "127.0.0.1:8080".parse().unwrap(),
        remote: "127.0.0.1:40000".parse().unwrap(),
        recv_queue: 0,
        send_queue: 0,
        netns_inode: 4026531840,
    }
}
