//! The tcptrace probe: every TCP state transition into one ring buffer.
//!
//! Attached as `tp_btf` to `inet_sock_set_state` because only there can the
//! program call `bpf_get_socket_cookie`, the socket identity that is never
//! reused and that netlink sock_diag reports too. Struct offsets come from the
//! agent (`PROBE_CONFIG`), read from the running kernel's BTF.
#![no_std]
#![no_main]

use core::{
    ffi::c_void,
    mem::size_of,
    ptr::{addr_of_mut, null_mut, read_volatile},
};

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        BPF_SK_STORAGE_GET_F_CREATE,
    },
    btf_maps::SkStorage,
    helpers::generated::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_sk_storage_get, bpf_task_pt_regs,
    },
    macros::{btf_map, btf_tracepoint, fexit, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FExitContext},
};
use tcptrace_common::{
    AF_INET, COUNTER_SLOTS, Counter, DestroyedRecord, IPPROTO_TCP, ProbeConfig, RecordKind,
    STACK_COPY_NOT_STORED, STACK_COPY_PAGE, STACK_COPY_PAGES, STACK_COPY_UNREADABLE, STACKS_FULL,
    SocketOwner, StackCopy, StackCopyKey, StackKind, StackRecord, TASK_COMM_LEN, TcpState,
    TransitionRecord,
};

/// Written by the agent before load; read-only to the program.
#[unsafe(no_mangle)]
static PROBE_CONFIG: ProbeConfig = ProbeConfig::UNSET;

/// Sizes here are defaults; the agent sets both at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// What the probe keeps per socket, in the socket itself: the kernel frees
/// it with the socket, so nothing is inserted or deleted per connection and
/// nothing can be left behind by a CLOSE the program did not see.
#[repr(C)]
#[derive(Clone, Copy)]
struct SocketState {
    /// The process seen owning it at a process-context transition (tgid 0:
    /// none yet).
    owner: SocketOwner,
    /// STACK_TAKEN_* bits.
    stacks_taken: u32,
    /// Reads that returned EOF in CLOSE_WAIT. Published to EOF_READS from
    /// the second on: a correct server reads EOF once and closes, and must
    /// not cost a map insert per connection.
    eof_reads: u32,
}

#[btf_map]
static SOCKETS: SkStorage<SocketState> = SkStorage::new();

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Stack copies of sockets, by (cookie, kind): each is taken in the
/// socket's own syscall and waits here, so only the copies of sockets that
/// stay in CLOSE_WAIT are ever read and unwound; the rest are deleted when
/// their socket is destroyed, a few milliseconds later. LRU, so copies of
/// sockets whose destruction the probe missed age out.
#[map]
static STACK_COPIES: LruHashMap<StackCopyKey, StackCopy> = LruHashMap::with_max_entries(1024, 0);

/// A copy is built here first: 16 KiB does not fit the program's stack.
#[map]
static STACK_SCRATCH: PerCpuArray<StackCopy> = PerCpuArray::with_max_entries(1, 0);

/// Socket cookie -> reads that returned EOF in CLOSE_WAIT, for the sockets
/// read at EOF more than once (code spinning on EOF), which the agent reads
/// by cookie. An entry is deleted when its socket leaves CLOSE_WAIT, so the
/// map holds only CLOSE_WAIT sockets (but for a read that races its socket's
/// reset, after the socket lock is released); LRU, so such a leftover ages
/// out and a flood of spinning sockets cannot fail an insert.
#[map]
static EOF_READS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

const STACK_TAKEN_FIRST_IO: u32 = 1;
const STACK_TAKEN_EOF: u32 = 2;
const STACK_TAKEN_CONNECT: u32 = 4;

macro_rules! config {
    ($field:ident) => {
        // Volatile: the value is patched into .rodata at load time, so the
        // compiler must not fold the compiled-in placeholder.
        // SAFETY: PROBE_CONFIG is a static, never written by the program, so
        // the pointer is valid and aligned and no write races the read.
        unsafe { read_volatile(&raw const PROBE_CONFIG.$field) }
    };
}

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const ESTABLISHED: u8 = TcpState::Established as u8;
const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    match record_transition(sk, old_state as u8, new_state as u8) {
        Ok(Some(cookie)) if new_state as u8 == SYN_SENT && old_state as u8 == CLOSE => {
            // connect(): the client-side creator, in its own syscall.
            if config!(stack_level) == STACKS_FULL
                && let Some(state) = socket_state(sk, true)
            {
                state.stacks_taken |= STACK_TAKEN_CONNECT;
                take_stack(cookie, StackKind::Connect);
            }
        }
        Ok(_) => {}
        Err(ReadFailed) => count(Counter::SocketReadFailed),
    }
    0
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
}

/// Every recvmsg on every socket: the fast path leaves as soon as it knows
/// there is nothing to take (an error, a non-TCP socket, or stacks already
/// taken for this socket).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    // Data reads matter only with full stacks: leave before any helper.
    if ret < 0 || (ret > 0 && config!(stack_level) != STACKS_FULL) {
        return 0;
    }
    match read_field::<u16>(sk, config!(protocol_offset)) {
        Ok(IPPROTO_TCP) => {}
        _ => return 0,
    }
    let (kind, bit) = if ret == 0 {
        // 0 is EOF only in CLOSE_WAIT: a zero-length read on a live socket returns 0 too.
        if read_field::<u8>(sk, config!(state_offset)) != Ok(CLOSE_WAIT) {
            return 0;
        }
        (StackKind::Eof, STACK_TAKEN_EOF)
    } else {
        (StackKind::FirstIo, STACK_TAKEN_FIRST_IO)
    };
    let Some(state) = socket_state(sk, true) else {
        count(Counter::OwnerInsertFailed);
        return 0;
    };
    let taken = state.stacks_taken & bit != 0;
    if taken && kind == StackKind::FirstIo {
        return 0;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    if kind == StackKind::Eof {
        // Plain read-modify-write, as below: a lower bound.
        state.eof_reads = state.eof_reads.saturating_add(1);
        if state.eof_reads > 1 {
            publish_eof_reads(cookie, state.eof_reads);
        }
    }
    if taken {
        return 0;
    }
    // Plain read-modify-write: two CPUs reading one socket at once can take
    // a stack twice, never miss one.
    state.stacks_taken |= bit;
    take_stack(cookie, kind);
    0
}

fn publish_eof_reads(cookie: u64, reads: u32) {
    match EOF_READS.get_ptr_mut(cookie) {
        // SAFETY: a live map value of the right type.
        Some(count) => unsafe { *count = u64::from(reads) },
        None => {
            if EOF_READS
                .insert(cookie, u64::from(reads), BPF_ANY as u64)
                .is_err()
            {
                count(Counter::MapInsertFailed);
            }
        }
    }
}

/// The probe's storage in `sk`; with `create`, allocated (zeroed) if it is
/// not there yet. `sk` must be a BTF-typed socket pointer the kernel gave.
fn socket_state(sk: *const u8, create: bool) -> Option<&'static mut SocketState> {
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: the map is a socket storage map of SocketState, `sk` a socket
    // pointer the kernel typed from BTF; the helper returns a pointer to the
    // storage, valid for this program run, or null.
    let state = unsafe {
        bpf_sk_storage_get(
            &raw const SOCKETS as *mut c_void,
            sk as *mut c_void,
            null_mut(),
            flags,
        )
    } as *mut SocketState;
    // SAFETY: non-null storage of the right type (see above).
    unsafe { state.as_mut() }
}

/// Copies the user registers and stack of the current syscall into
/// STACK_COPIES for `cookie`, and tells the agent with a record. A copy
/// that cannot be taken is still announced, with its failure, so the report
/// can say why a socket has no code path.
fn take_stack(cookie: u64, kind: StackKind) {
    let copy_status = copy_user_stack(cookie, kind);
    if copy_status != 0 {
        count(Counter::StackNotStored);
    }
    let Some(mut entry) = EVENTS.reserve::<StackRecord>(0) else {
        count(Counter::StackReserveFailed);
        return;
    };
    // SAFETY: a reserved slot of the right size; every field is written.
    unsafe {
        entry.as_mut_ptr().write(StackRecord {
            kind: RecordKind::Stack as u32,
            tgid: current_tgid(),
            timestamp_ns: bpf_ktime_get_ns(),
            cookie,
            copy_status,
            stack_kind: kind as u8,
            _reserved: [0; 3],
        });
    }
    entry.submit(wakeup_flag());
}

/// 0, or a STACK_COPY_* failure.
fn copy_user_stack(cookie: u64, kind: StackKind) -> i32 {
    let Some(copy) = STACK_SCRATCH.get_ptr_mut(0) else {
        return STACK_COPY_NOT_STORED;
    };
    // SAFETY: this CPU's scratch slot; the program does not nest on a CPU.
    let copy = unsafe { &mut *copy };
    // SAFETY: the BTF pointer of the current task, whose saved user
    // registers are then read with checked probe reads.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    copy.tgid = current_tgid();
    copy.ip = read_field::<u64>(regs, config!(regs_ip_offset)).unwrap_or(0);
    copy.bp = read_field::<u64>(regs, config!(regs_bp_offset)).unwrap_or(0);
    copy.sp = read_field::<u64>(regs, config!(regs_sp_offset)).unwrap_or(0);
    copy.base = copy.sp & !(STACK_COPY_PAGE as u64 - 1);
    copy.len = 0;
    // Whole pages up from the one holding sp: a stack ends at a page
    // boundary, so the first page that fails is where this stack ends.
    for page in 0..STACK_COPY_PAGES {
        let offset = page * STACK_COPY_PAGE;
        let source = (copy.base + offset as u64) as *const c_void;
        // SAFETY: a checked read of user memory into a page of the scratch
        // copy, which has STACK_COPY_PAGES of them.
        let failed = unsafe {
            bpf_probe_read_user(
                copy.stack.as_mut_ptr().add(offset) as *mut c_void,
                STACK_COPY_PAGE as u32,
                source,
            )
        } != 0;
        if failed {
            break;
        }
        copy.len += STACK_COPY_PAGE as u32;
    }
    if copy.len == 0 {
        return STACK_COPY_UNREADABLE;
    }
    let key = StackCopyKey {
        cookie,
        stack_kind: kind as u32,
        _reserved: 0,
    };
    // By reference: the value is 16 KiB, far over the program's stack.
    match STACK_COPIES.insert(key, copy, BPF_ANY as u64) {
        Ok(()) => 0,
        Err(_) => STACK_COPY_NOT_STORED,
    }
}

/// Deletes the stack copies a socket has, at its destruction.
fn forget_stack_copies(cookie: u64, taken: u32) {
    for (bit, kind) in [
        (STACK_TAKEN_CONNECT, StackKind::Connect),
        (STACK_TAKEN_FIRST_IO, StackKind::FirstIo),
        (STACK_TAKEN_EOF, StackKind::Eof),
    ] {
        if taken & bit != 0 {
            let key = StackCopyKey {
                cookie,
                stack_kind: kind as u32,
                _reserved: 0,
            };
            let _ = STACK_COPIES.remove(key);
        }
    }
}

#[derive(PartialEq, Eq)]
struct ReadFailed;

/// Returns the socket's cookie when the transition was recorded.
fn record_transition(
    sk: *const u8,
    old_state: u8,
    new_state: u8,
) -> Result<Option<u64>, ReadFailed> {
    let protocol: u16 = read_field(sk, config!(protocol_offset))?;
    if protocol != IPPROTO_TCP {
        count(Counter::NotTcp);
        return Ok(None);
    }
    let family: u16 = read_field(sk, config!(family_offset))?;
    let mut local_port: u16 = read_field(sk, config!(local_port_offset))?;
    if local_port == 0 && new_state == CLOSE && config!(inet_sport_offset) != 0 {
        // The kernel released the port just before this transition; the
        // source port it used is still in the inet_sock, and a socket
        // closed but held must stay findable by its service's port.
        local_port = u16::from_be(read_field(sk, config!(inet_sport_offset))?);
    }
    let remote_port = u16::from_be(read_field(sk, config!(remote_port_offset))?);

    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let owner = track_owner(sk, cookie, old_state, new_state);

    if is_filtered_out(&owner, old_state, new_state, local_port, remote_port) {
        count(Counter::FilteredInKernel);
        return Ok(None);
    }

    let Some(mut entry) = EVENTS.reserve::<TransitionRecord>(0) else {
        count(Counter::RingReserveFailed);
        return Ok(None);
    };
    let wants_inode = new_state == CLOSE && config!(read_socket_inode) != 0;
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
        // listener by namespace.
        let netns = if old_state == LISTEN
            || new_state == LISTEN
            || (old_state == SYN_RECV && new_state == ESTABLISHED)
        {
            read_netns_inode(sk)
        } else {
            0
        };
        addr_of_mut!((*record).netns_inode).write(netns);
        let inode = if wants_inode {
            read_socket_inode(sk)
        } else {
            0
        };
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

/// The owner of `sk` after this transition: the current task where the
/// transition runs in the owner's syscall, otherwise whatever an earlier
/// process-context transition recorded (or unknown, tgid 0). A socket
/// leaving CLOSE_WAIT also takes its EOF count out of EOF_READS, with the
/// storage lookup the owner needs anyway.
fn track_owner(sk: *const u8, cookie: u64, old_state: u8, new_state: u8) -> SocketOwner {
    if TcpState::runs_in_owner_context(old_state, new_state) {
        let current = current_task();
        if new_state != CLOSE
            && let Some(state) = remember_owner(sk, &current)
            && old_state == CLOSE_WAIT
        {
            forget_eof_reads(state, cookie);
        }
        return current;
    }
    match socket_state(sk, false) {
        // A concurrent update can at worst mix two owners' bytes for one
        // event, never fault.
        Some(state) => {
            if old_state == CLOSE_WAIT {
                forget_eof_reads(state, cookie);
            }
            state.owner
        }
        None => SocketOwner {
            comm: [0; TASK_COMM_LEN],
            tgid: 0,
        },
    }
}

fn forget_eof_reads(state: &SocketState, cookie: u64) {
    // Only a socket read at EOF twice has an entry.
    if state.eof_reads > 1 {
        let _ = EOF_READS.remove(cookie);
    }
}

fn remember_owner(sk: *const u8, owner: &SocketOwner) -> Option<&'static mut SocketState> {
    let Some(state) = socket_state(sk, true) else {
        count(Counter::OwnerInsertFailed);
        return None;
    };
    state.owner = *owner;
    Some(state)
}

fn current_tgid() -> u32 {
    // SAFETY: a helper with no arguments.
    (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32
}

fn current_task() -> SocketOwner {
    let mut owner = SocketOwner {
        comm: [0; TASK_COMM_LEN],
        tgid: 0,
    };
    // SAFETY: helpers writing into a local buffer of the stated size.
    unsafe {
        owner.tgid = current_tgid();
        bpf_get_current_comm(owner.comm.as_mut_ptr() as *mut c_void, TASK_COMM_LEN as u32);
    }
    owner
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

/// # Safety
/// `record` must point to a reserved ring-buffer slot.
unsafe fn read_addresses(
    sk: *const u8,
    family: u16,
    record: *mut TransitionRecord,
) -> Result<(), ReadFailed> {
    let (local_offset, remote_offset, len) = if family == AF_INET {
        (config!(local_v4_offset), config!(remote_v4_offset), 4)
    } else {
        (config!(local_v6_offset), config!(remote_v6_offset), 16)
    };
    // SAFETY: the caller passes a reserved slot, whose two 16-byte address
    // fields are valid for writes; the reads are bounded by `len` <= 16.
    unsafe {
        let local = addr_of_mut!((*record).local_addr) as *mut u8;
        let remote = addr_of_mut!((*record).remote_addr) as *mut u8;
        local.write_bytes(0, 16);
        remote.write_bytes(0, 16);
        read_into(local, len, sk, local_offset)?;
        read_into(remote, len, sk, remote_offset)
    }
}

fn read_netns_inode(sk: *const u8) -> u32 {
    if config!(has_netns) == 0 {
        return 0;
    }
    let Ok(net) = read_field::<u64>(sk, config!(net_offset)) else {
        return 0;
    };
    read_field::<u32>(net as *const u8, config!(netns_inode_offset)).unwrap_or(0)
}

/// The inode number of the file still attached to `sk`, or 0 when the
/// socket is orphaned (its last fd closed).
fn read_socket_inode(sk: *const u8) -> u64 {
    let Ok(socket) = read_field::<u64>(sk, config!(socket_offset)) else {
        return 0;
    };
    if socket == 0 {
        return 0;
    }
    read_field::<u64>(socket as *const u8, config!(socket_inode_number_offset)).unwrap_or(0)
}

/// Leak mode only: tells the agent a socket is gone for good, which ends a
/// closed-but-held suspicion without scanning every process's fds.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    if let Some(state) = socket_state(sk, false)
        && state.stacks_taken != 0
    {
        forget_stack_copies(cookie, state.stacks_taken);
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

fn read_field<T: Copy + Default>(base: *const u8, offset: u32) -> Result<T, ReadFailed> {
    let mut value = T::default();
    // SAFETY: probe-read into a local of exactly size_of::<T>() bytes.
    unsafe {
        read_into(
            &raw mut value as *mut u8,
            size_of::<T>() as u32,
            base,
            offset,
        )?
    };
    Ok(value)
}

/// # Safety
/// `dst` must be valid for `len` bytes of writes.
unsafe fn read_into(
    dst: *mut u8,
    len: u32,
    base: *const u8,
    offset: u32,
) -> Result<(), ReadFailed> {
    let src = base.wrapping_add(offset as usize) as *const c_void;
    // SAFETY: `dst` is valid for `len` bytes (the caller's contract); the
    // kernel side of the read is checked by bpf_probe_read_kernel itself.
    match unsafe { bpf_probe_read_kernel(dst as *mut c_void, len, src) } {
        0 => Ok(()),
        _ => Err(ReadFailed),
    }
}

fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot, and the kernel never nests this program on
        // one CPU (a nested run is skipped and counted as a recursion miss),
        // so a plain increment cannot race.
        unsafe { *slot += 1 };
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
