//! An accepted socket's first read and first write, told from the kernel's
//! own sequence counters, with no per-socket state: every read and write on
//! the host passes here, and a storage per socket would cost more than the
//! copy it guards.
//!
//! After a recv returned `ret` bytes, the bytes the application has read
//! in all are `bytes_received - (rcv_nxt - copied_seq)` (received less
//! still queued), less one for a FIN that was read: a FIN counts once in
//! both terms, and a read that drains the last data of the segment that
//! carries the FIN consumes the FIN too. A FIN was read when one arrived
//! (the socket is in CLOSE_WAIT, LAST_ACK or CLOSING) and nothing is left
//! unread. After a send, the bytes it has written in all are
//! `bytes_acked + (write_seq - snd_una)`; for a socket that connect()
//! opened, `bytes_acked` also holds its SYN, so the sum is one more and
//! never equals a first write: its origin is its connect. So a read is an
//! accepted socket's first when what it read in all is `ret` and it wrote
//! nothing; a write likewise. The side the call is on is checked first, so
//! that nearly every call reads only its own side's counters. Two threads
//! reading one socket at once can both see more than their own bytes: that
//! socket's first read is then missed, never taken twice.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_skc_to_tcp_sock;
use tcptrace_common::TcpState;

use crate::kernel_read::load_field;

const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;
const LAST_ACK: u8 = TcpState::LastAck as u8;
const CLOSING: u8 = TcpState::Closing as u8;

/// `sk` as a tcp_sock, where the counters were found in BTF.
fn tcp_sock(sk: *const u8) -> Option<*const u8> {
    if config!(tcp_write_seq_offset) == 0 {
        return None;
    }
    // SAFETY: `sk` is a BTF-typed socket the kernel gave; the helper returns
    // it typed as a tcp_sock, or null for any other socket.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as *const u8;
    (!tp.is_null()).then_some(tp)
}

/// What the application has read from `sk` (whose tcp_sock is `tp`) in all.
fn bytes_read(sk: *const u8, tp: *const u8) -> u64 {
    // SAFETY: `sk` is a BTF-typed socket, `tp` the helper's BTF-typed
    // tcp_sock; the offsets are their members, found in BTF, with the
    // widths the configuration names.
    unsafe {
        let state: u8 = load_field(sk, config!(state_offset));
        let received: u64 = load_field(tp, config!(tcp_bytes_received_offset));
        let rcv_nxt: u32 = load_field(tp, config!(tcp_rcv_nxt_offset));
        let copied_seq: u32 = load_field(tp, config!(tcp_copied_seq_offset));
        let unread = rcv_nxt.wrapping_sub(copied_seq);
        let fin_read = (matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING) && unread == 0) as u64;
        received.wrapping_sub(unread as u64).wrapping_sub(fin_read)
    }
}

/// What the application has written to the tcp_sock `tp` in all.
fn bytes_written(tp: *const u8) -> u64 {
    // SAFETY: as in `bytes_read`.
    unsafe {
        let acked: u64 = load_field(tp, config!(tcp_bytes_acked_offset));
        let snd_una: u32 = load_field(tp, config!(tcp_snd_una_offset));
        let write_seq: u32 = load_field(tp, config!(tcp_write_seq_offset));
        acked.wrapping_add(write_seq.wrapping_sub(snd_una) as u64)
    }
}

/// Whether a recv that returned `ret` > 0 bytes was the first read of an
/// accepted socket that has written nothing yet.
pub(crate) fn is_first_read(sk: *const u8, ret: u32) -> bool {
    tcp_sock(sk).is_some_and(|tp| bytes_read(sk, tp) == ret as u64 && bytes_written(tp) == 0)
}

/// Whether a send that took `ret` > 0 bytes was the first write of an
/// accepted socket that has read nothing yet.
pub(crate) fn is_first_write(sk: *const u8, ret: u32) -> bool {
    tcp_sock(sk).is_some_and(|tp| bytes_written(tp) == ret as u64 && bytes_read(sk, tp) == 0)
}
