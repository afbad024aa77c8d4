//! The tcptrace probe: every TCP state transition into one ring buffer.
//!
//! Attached as `tp_btf` to `inet_sock_set_state` because only there can the
//! program call `bpf_get_socket_cookie`, the socket identity that is never
//! reused and that netlink sock_diag reports too. Struct offsets come from the
//! agent (`PROBE_CONFIG`), read from the running kernel's BTF.
#![no_std]
#![no_main]

use core::{ffi::c_void, ptr::addr_of_mut};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{btf_tracepoint, fexit, map},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FExitContext},
};

macro_rules! config {
    ($field:ident) => {{
        // Allowed: the macro is also used inside callers' unsafe blocks.
        #[allow(unused_unsafe)]
        // Volatile: the value is patched into .rodata at load time, so the
        // compiler must not fold the compiled-in placeholder.
        // SAFETY: PROBE_CONFIG is a static, never written by the program, so
        // the pointer is valid and aligned and no write races the read.
        let value = unsafe { core::ptr::read_volatile(&raw const $crate::PROBE_CONFIG.$field) };
        value
    }};
}

mod budget;
mod first_io;
mod kernel_read;
mod owner_counts;
mod python_frames;
mod socket_storage;
mod stacks;

use kernel_read::{
    ReadFailed, load_field, read_addresses, read_field, read_netns_inode, read_socket_inode,
};
use socket_storage::{
    STACK_TAKEN_EOF, count_repeated_eof_read, current_task, forget_eof_reads, remember_owner,
    socket_state, track_owner,
};
use stacks::{forget_stack_copies, sample_stack};

use tcptrace_common::{
    COUNTER_SLOTS, Counter, DestroyedRecord, IPPROTO_TCP, ProbeConfig, RecordKind, STACKS_OFF,
    SocketOwner, StackKind, TcpState, TransitionRecord,
};

/// Written by the agent before load; read-only to the program.
#[unsafe(no_mangle)]
static PROBE_CONFIG: ProbeConfig = ProbeConfig::UNSET;

/// Sizes here are defaults; the agent sets both at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const ESTABLISHED: u8 = TcpState::Established as u8;
const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old_state = ctx.arg::<i32>(1) as u8;
    let new_state = ctx.arg::<i32>(2) as u8;
    // SAFETY: `sk` is the tracepoint's BTF-typed socket; the offset is from BTF.
    if unsafe { load_field::<u16>(sk, config!(protocol_offset)) } != IPPROTO_TCP {
        count(Counter::NotTcp);
        return 0;
    }
    count(Counter::TransitionsSeen);
    let connect = old_state == CLOSE && new_state == SYN_SENT;
    let held_inode = held_at_close(sk, new_state);
    let ships = config!(verdicts_only) == 0 || held_inode != 0 || is_verdict(old_state, new_state);
    if !ships {
        // Counted above, and for `top` and `serve` per owner: most
        // transitions of leak mode end here.
        if config!(count_owners) != 0 {
            count_for_owner(
                sk,
                old_state,
                new_state,
                &track_owner(sk, old_state, new_state),
            );
        }
        if connect && config!(stack_level) != STACKS_OFF {
            sample_origin(sk, StackKind::Connect);
        }
        return 0;
    }
    let owner = track_owner(sk, old_state, new_state);
    if config!(count_owners) != 0 {
        count_for_owner(sk, old_state, new_state, &owner);
    }
    match record_transition(sk, old_state, new_state, held_inode, &owner) {
        Ok(Some(cookie)) if connect => {
            // connect(): the client-side creator, in its own syscall.
            if config!(stack_level) != STACKS_OFF {
                sample_stack(sk, || cookie, StackKind::Connect);
            }
        }
        Ok(_) => {}
        Err(ReadFailed) => count(Counter::SocketReadFailed),
    }
    0
}

/// What a leak verdict reads, besides a CLOSE while held: entering and
/// leaving CLOSE_WAIT, and the listeners, through which the agent
/// attributes the accepted sockets those records name. Listeners come and
/// go rarely; a new child's LISTEN -> SYN_RECV is not a listener's move.
fn is_verdict(old_state: u8, new_state: u8) -> bool {
    old_state == CLOSE_WAIT
        || new_state == CLOSE_WAIT
        || (old_state == CLOSE && new_state == LISTEN)
        || (old_state == LISTEN && new_state == CLOSE)
}

/// `top` and `serve`: the transition counted for its owner. A connect()ing
/// socket keeps its owner in its storage from here, so that its later
/// transitions, in softirq, are counted for it too (an accepted one has
/// the owner accept() stored, where fexit works, or its listener's port).
fn count_for_owner(sk: *const u8, old_state: u8, new_state: u8, owner: &SocketOwner) {
    if old_state == CLOSE && new_state == SYN_SENT {
        remember_owner(sk, owner);
        owner_counts::count_connect(sk, owner.tgid, false);
    } else if old_state == SYN_SENT && new_state == CLOSE && owner.tgid != 0 {
        owner_counts::count_connect(sk, owner.tgid, true);
    }
    owner_counts::count_transition(sk, old_state, new_state, owner, || {
        local_port(sk, new_state).unwrap_or(0)
    });
}

/// The socket's local port, also at CLOSE, after the kernel released it.
fn local_port(sk: *const u8, new_state: u8) -> Result<u16, ReadFailed> {
    // SAFETY: `sk` is the tracepoint's BTF-typed socket; the offset is from BTF.
    let port: u16 = unsafe { load_field(sk, config!(local_port_offset)) };
    if port == 0 && new_state == CLOSE && config!(inet_sport_offset) != 0 {
        // The kernel released the port just before this transition; the
        // source port it used is still in the inet_sock, and a socket
        // closed but held must stay findable by its service's port.
        // A probe read: inet_sock lies beyond the struct sock the verifier
        // checks plain loads against.
        return Ok(u16::from_be(read_field(sk, config!(inet_sport_offset))?));
    }
    Ok(port)
}

/// Leak mode, at a move to CLOSE: the inode of the file that still holds
/// the socket (0 for none, nearly every socket), and the socket marked so
/// that its destruction is recorded.
fn held_at_close(sk: *const u8, new_state: u8) -> u64 {
    if new_state != CLOSE || config!(read_socket_inode) == 0 {
        return 0;
    }
    let inode = read_socket_inode(sk);
    if inode != 0 {
        mark_closed_with_file(sk);
    }
    inode
}

/// Where fexit works (most kernels, not every one): the accepted socket and
/// the process that accepted it, in its own accept() syscall. Its later
/// transitions then carry that owner instead of the listener's guess, with
/// no cost to any other syscall. The return value follows the parameters,
/// whose number changed in 6.10: one program per prototype, each reading a
/// constant context offset (the verifier refuses a computed one), and the
/// agent loads the one the kernel's BTF matches.
#[fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_four_params(ctx: FExitContext) -> i32 {
    // (sk, flags, err, kern) before 6.10.
    remember_accepting_owner(ctx.arg(4));
    0
}

#[fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_two_params(ctx: FExitContext) -> i32 {
    // (sk, arg) since 6.10.
    remember_accepting_owner(ctx.arg(2));
    0
}

fn remember_accepting_owner(accepted: *const u8) {
    if accepted.is_null() {
        return;
    }
    match read_field::<u16>(accepted, config!(protocol_offset)) {
        Ok(IPPROTO_TCP) => {}
        _ => return,
    }
    remember_owner(accepted, &current_task());
    if config!(stack_level) != STACKS_OFF {
        sample_origin(accepted, StackKind::Accept);
    }
}

/// Every recvmsg on every socket: the fast path leaves as soon as it knows
/// there is nothing to take: an error, a non-TCP socket, or a data read
/// that is not an accepted socket's first.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    if ret < 0 {
        return 0;
    }
    if ret > 0 {
        // A data read, nearly every run: the tcp_sock cast also tells TCP
        // from any other socket, so the protocol is not read first.
        if first_io::is_first_read(sk, ret as u32) {
            sample_origin(sk, StackKind::FirstRead);
        }
        return 0;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed socket; offsets are from BTF.
    if unsafe { load_field::<u16>(sk, config!(protocol_offset)) } != IPPROTO_TCP {
        return 0;
    }
    // 0 is EOF only in CLOSE_WAIT: a zero-length read on a live socket returns 0 too.
    // SAFETY: as above.
    if unsafe { load_field::<u8>(sk, config!(state_offset)) } != CLOSE_WAIT {
        return 0;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    // The EOF copy's bit marks the socket's first read of EOF. One the
    // budget refused is tried again at the next read, which the spin count
    // then misses: it is a lower bound.
    let eof_taken =
        socket_state(sk, false).is_some_and(|state| state.stacks_taken & STACK_TAKEN_EOF != 0);
    if eof_taken {
        count_repeated_eof_read(cookie);
    } else {
        sample_stack(sk, || cookie, StackKind::Eof);
    }
    0
}

/// Every sendmsg on every socket: only an accepted socket's first write,
/// before it read anything, is its origin (a server that speaks first).
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    if ret <= 0 {
        return 0;
    }
    // The tcp_sock cast tells TCP from any other socket.
    if first_io::is_first_write(sk, ret as u32) {
        sample_origin(sk, StackKind::FirstWrite);
    }
    0
}

fn sample_origin(sk: *const u8, kind: StackKind) {
    // SAFETY: `sk` is a BTF-typed socket pointer the kernel gave.
    let cookie = || unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    sample_stack(sk, cookie, kind);
}

/// Returns the socket's cookie when the transition was recorded. `inode`:
/// the file still holding a socket at CLOSE, or 0.
fn record_transition(
    sk: *const u8,
    old_state: u8,
    new_state: u8,
    inode: u64,
    owner: &SocketOwner,
) -> Result<Option<u64>, ReadFailed> {
    // SAFETY: `sk` is the tracepoint's BTF-typed socket; the offset is from BTF.
    let family: u16 = unsafe { load_field(sk, config!(family_offset)) };
    let local_port = local_port(sk, new_state)?;
    // SAFETY: as for the family.
    let remote_port = u16::from_be(unsafe { load_field(sk, config!(remote_port_offset)) });

    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    if old_state == CLOSE_WAIT && config!(stack_level) != STACKS_OFF {
        // Only the receive hook, attached with stacks, counts EOF reads.
        forget_eof_reads(cookie);
    }

    if is_filtered_out(owner, old_state, new_state, local_port, remote_port) {
        count(Counter::FilteredInKernel);
        return Ok(None);
    }

    let Some(mut entry) = EVENTS.reserve::<TransitionRecord>(0) else {
        count(Counter::RingReserveFailed);
        return Ok(None);
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved, exclusively owned ring-buffer slot
    // of the right size; every field is written before submit because the
    // slot holds stale bytes of earlier records.
    let addresses_read = unsafe {
        addr_of_mut!((*record).kind).write(RecordKind::Transition as u32);
        addr_of_mut!((*record).owner_tgid).write(owner.tgid);
        addr_of_mut!((*record).timestamp_ns).write(bpf_ktime_get_ns());
        addr_of_mut!((*record).cookie).write(cookie);
        addr_of_mut!((*record).skaddr).write(sk as u64);
        addr_of_mut!((*record).owner_comm).write(owner.comm);
        addr_of_mut!((*record).local_port).write(local_port);
        addr_of_mut!((*record).remote_port).write(remote_port);
        addr_of_mut!((*record).family).write(family);
        addr_of_mut!((*record).old_state).write(old_state);
        addr_of_mut!((*record).new_state).write(new_state);
        addr_of_mut!((*record)._reserved).write(0);
        // Also where an accepted socket may show itself first (kernels that
        // create it in SYN_RECV silently): the agent matches it to its
        // listener by namespace. At CLOSE_WAIT, so that the agent can look
        // a suspect up in its own namespace instead of walking every table.
        let netns = if old_state == LISTEN
            || new_state == LISTEN
            || new_state == CLOSE_WAIT
            || (old_state == SYN_RECV && new_state == ESTABLISHED)
        {
            read_netns_inode(sk)
        } else {
            0
        };
        addr_of_mut!((*record).netns_inode).write(netns);
        addr_of_mut!((*record).socket_inode).write(inode);
        read_addresses(sk, family, record)
    };
    if addresses_read.is_err() {
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        return Err(ReadFailed);
    }
    entry.submit(wakeup_flag());
    Ok(Some(cookie))
}

/// Exact filters only: an owner filter drops a transition only when its owner
/// is known, and never a listener's transition (the agent needs every
/// listener to attribute accepted sockets); a port filter keeps a socket whose
/// local port is not assigned yet (0 at SYN_SENT).
fn is_filtered_out(
    owner: &SocketOwner,
    old_state: u8,
    new_state: u8,
    local_port: u16,
    remote_port: u16,
) -> bool {
    let owner_filter = config!(owner_tgid_filter);
    if owner_filter != 0
        && owner.tgid != 0
        && owner.tgid != owner_filter
        && old_state != LISTEN
        && new_state != LISTEN
    {
        return true;
    }
    let port_filter = config!(port_filter);
    if port_filter != 0 {
        let port = port_filter as u16;
        return local_port != 0 && local_port != port && remote_port != port;
    }
    false
}

/// Leak mode, at a move to CLOSE while a file still holds the socket,
/// whether or not the transition is then recorded: its destruction, which
/// ends its closed-but-held suspicion, is then recorded. Only such sockets
/// (a RST while the application holds the fd, SO_LINGER 0) pay for a
/// storage; any other's destruction needs no record.
fn mark_closed_with_file(sk: *const u8) {
    match socket_state(sk, true) {
        Some(state) => state.closed_with_file = 1,
        // Its destroy record will not be sent: counted as lost, so the
        // suspicion is then ended by a holder scan, as for a full ring.
        None => count(Counter::DestroyedReserveFailed),
    }
}

/// Deletes the stack copies a socket has, which nothing can ask for once
/// it is gone, and in leak mode tells the agent that a socket closed while
/// a file held it is gone for good, which ends its suspicion without
/// scanning every process's fds. Only sockets with a copy or such a mark
/// have storage: this runs for every socket and returns at one load for
/// nearly all.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let Some(state) = socket_state(sk, false) else {
        return 0;
    };
    if state.closed_with_file == 0 && state.stacks_taken == 0 {
        return 0;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    forget_stack_copies(cookie, state.stacks_taken);
    // With `verdicts_only` no CLOSE tells the agent to forget the socket's
    // stacks; copies are budgeted, and so are these records.
    let copied = state.stacks_taken != 0 && config!(verdicts_only) != 0;
    if state.closed_with_file == 0 && !copied {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<DestroyedRecord>(0) else {
        count(Counter::DestroyedReserveFailed);
        return 0;
    };
    // SAFETY: a reserved slot of the right size; every field is written.
    unsafe {
        entry.as_mut_ptr().write(DestroyedRecord {
            kind: RecordKind::Destroyed as u32,
            _reserved: 0,
            timestamp_ns: bpf_ktime_get_ns(),
            cookie,
        });
    }
    entry.submit(wakeup_flag());
    0
}

fn wakeup_flag() -> u64 {
    // Waking the reader per event costs an interrupt each; the agent also
    // drains on a short timer, so wake it only when a backlog builds up.
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if unread >= config!(wakeup_threshold_bytes) as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

fn count(counter: Counter) {
    add(counter, 1);
}

fn add(counter: Counter, amount: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot, and the kernel never nests this program on
        // one CPU (a nested run is skipped and counted as a recursion miss),
        // so a plain addition cannot race.
        unsafe { *slot += amount };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL: bpf_probe_read_kernel and bpf_get_current_comm are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
