//! Stack copies: the user registers and stack of a socket's own syscall.
//! EOF copies go to the agent in a ring of their own; connect and first-I/O
//! copies wait in a map until the socket is destroyed or the agent reads them.

use core::{ffi::c_void, ptr::addr_of_mut};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{
        bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use tcptrace_common::{
    Counter, RecordKind, STACK_COPY_BYTES, STACK_COPY_NOT_STORED, STACK_COPY_PAGE,
    STACK_COPY_PAGES, STACK_COPY_UNREADABLE, StackCopy, StackCopyKey, StackCopyRecord, StackKind,
    StackRecord,
};

use crate::{
    EVENTS, count,
    kernel_read::load_field,
    socket_storage::{STACK_TAKEN_CONNECT, STACK_TAKEN_FIRST_IO, current_tgid},
    wakeup_flag,
};

/// Connect and first-I/O copies (`--stacks full`), by (cookie, kind): each
/// is taken in the socket's own syscall and waits here, so only the copies
/// of sockets that stay in CLOSE_WAIT are ever read and unwound; the rest
/// are deleted when their socket is destroyed. LRU, so copies of sockets
/// whose destruction the probe missed age out.
#[map]
pub(crate) static STACK_COPIES: LruHashMap<StackCopyKey, StackCopy> =
    LruHashMap::with_max_entries(1024, 0);

/// A copy is built here first: 8 KiB does not fit the program's stack.
#[map]
pub(crate) static STACK_SCRATCH: PerCpuArray<StackCopy> = PerCpuArray::with_max_entries(1, 0);

/// EOF copies, one `StackCopyRecord` each, read straight into the slot the
/// ring reserved: no scratch copy, no map insert, and nothing to delete when
/// the socket goes, since the agent drops a copy whose socket has already
/// closed. Its own ring: a burst of copies must never cost a transition.
/// The agent sets the size.
#[map]
pub(crate) static EOF_COPIES: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// The cookies of the latest sockets to read EOF, by cookie modulo the
/// size: a socket whose cookie is still in its slot has read EOF before.
/// Where another socket took the slot in between, a repeated read looks
/// like a first and takes a second copy, which the agent ignores (the first
/// of a kind names the socket), and the EOF count misses that read.
#[map]
pub(crate) static RECENT_EOF: Array<u64> = Array::with_max_entries(RECENT_EOF_SLOTS, 0);

const RECENT_EOF_SLOTS: u32 = 4096;

/// Whether socket `cookie` read EOF before; marks it as having read it.
pub(crate) fn read_eof_before(cookie: u64) -> bool {
    let Some(slot) = RECENT_EOF.get_ptr_mut((cookie % RECENT_EOF_SLOTS as u64) as u32) else {
        return false;
    };
    // SAFETY: an array slot, valid for the run; a racing write from another
    // CPU is a whole u64 and at worst takes one more copy.
    unsafe {
        if *slot == cookie {
            return true;
        }
        *slot = cookie;
    }
    false
}

/// Copies the user registers and stack of the current syscall into
/// STACK_COPIES for `cookie`, and tells the agent with a record. A copy
/// that cannot be taken is still announced, with its failure, so the report
/// can say why a socket has no code path.
pub(crate) fn take_stack(cookie: u64, kind: StackKind) {
    let copy_status = copy_user_stack(cookie, kind);
    announce_stack(cookie, kind, copy_status);
}

/// A stack record in the events ring.
fn announce_stack(cookie: u64, kind: StackKind, copy_status: i32) {
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

/// Copies the user registers and stack of the current syscall, with its
/// announcement, into the EOF_COPIES ring. Where the ring is full, the
/// events ring says so instead.
pub(crate) fn take_eof_stack(cookie: u64) {
    let Some(mut entry) = EOF_COPIES.reserve::<StackCopyRecord>(0) else {
        announce_stack(cookie, StackKind::Eof, STACK_COPY_NOT_STORED);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of the right size. Every
    // header field and register is written; of the stack, the `len` bytes
    // the agent reads.
    let copy_status = unsafe {
        let status = fill_copy(addr_of_mut!((*record).copy));
        addr_of_mut!((*record).record).write(StackRecord {
            kind: RecordKind::Stack as u32,
            tgid: current_tgid(),
            timestamp_ns: bpf_ktime_get_ns(),
            cookie,
            copy_status: status,
            stack_kind: StackKind::Eof as u8,
            _reserved: [0; 3],
        });
        status
    };
    if copy_status != 0 {
        count(Counter::StackNotStored);
    }
    // The agent drains this ring with the events ring, on its timer; a
    // burst of passive closes fills it within tens of milliseconds, so a
    // backlog wakes the agent early.
    let unread = EOF_COPIES.query(BPF_RB_AVAIL_DATA as u64);
    entry.submit(if unread >= config!(eof_copy_wakeup_bytes) as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    });
}

/// 0, or a STACK_COPY_* failure.
pub(crate) fn copy_user_stack(cookie: u64, kind: StackKind) -> i32 {
    let Some(copy) = STACK_SCRATCH.get_ptr_mut(0) else {
        return STACK_COPY_NOT_STORED;
    };
    // SAFETY: this CPU's scratch slot; the program does not nest on a CPU.
    let status = unsafe { fill_copy(copy) };
    if status != 0 {
        return status;
    }
    let key = StackCopyKey {
        cookie,
        stack_kind: kind as u32,
        _reserved: 0,
    };
    // SAFETY: the scratch slot, filled above.
    let copy: &StackCopy = unsafe { &*copy };
    // By reference: the value is 8 KiB, far over the program's stack.
    match STACK_COPIES.insert(key, copy, BPF_ANY as u64) {
        Ok(()) => 0,
        Err(_) => STACK_COPY_NOT_STORED,
    }
}

/// Fills `copy` with the current task's user registers and stack; 0, or
/// STACK_COPY_UNREADABLE.
///
/// # Safety
/// `copy` must be valid for writes of a whole `StackCopy`.
unsafe fn fill_copy(copy: *mut StackCopy) -> i32 {
    // SAFETY: the caller's contract.
    let copy = unsafe { &mut *copy };
    // SAFETY: the BTF pointer of the current task, whose saved user
    // registers are then read with checked probe reads.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    copy.tgid = current_tgid();
    // SAFETY: `regs` is the BTF-typed pt_regs the helper returned, the
    // offsets are pt_regs members found in BTF.
    unsafe {
        copy.ip = load_field::<u64>(regs, config!(regs_ip_offset));
        copy.bp = load_field::<u64>(regs, config!(regs_bp_offset));
        copy.sp = load_field::<u64>(regs, config!(regs_sp_offset));
    }
    // One read from sp up: the bytes above sp are the frames, and one call
    // costs less than one per page.
    copy.base = copy.sp;
    // SAFETY: a checked read of user memory into the copy, which has
    // STACK_COPY_BYTES.
    let whole = unsafe {
        bpf_probe_read_user(
            copy.stack.as_mut_ptr() as *mut c_void,
            STACK_COPY_BYTES as u32,
            copy.sp as *const c_void,
        )
    } == 0;
    if whole {
        copy.len = STACK_COPY_BYTES as u32;
        return 0;
    }
    // The stack ends (at a page boundary) within STACK_COPY_BYTES of sp:
    // whole pages from sp's own, up to the first that fails, reach it.
    copy.base = copy.sp & !(STACK_COPY_PAGE as u64 - 1);
    copy.len = 0;
    for page in 0..STACK_COPY_PAGES {
        let offset = page * STACK_COPY_PAGE;
        let source = (copy.base + offset as u64) as *const c_void;
        // SAFETY: a checked read of user memory into a page of the copy,
        // which has STACK_COPY_PAGES of them.
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
    0
}

/// Deletes the connect and first-I/O copies a socket has, at its
/// destruction, as `full_taken` (STACK_TAKEN_* bits) says. EOF copies are
/// in a ring, and need nothing.
pub(crate) fn forget_stack_copies(cookie: u64, full_taken: u32) {
    for (taken, kind) in [
        (full_taken & STACK_TAKEN_CONNECT != 0, StackKind::Connect),
        (full_taken & STACK_TAKEN_FIRST_IO != 0, StackKind::FirstIo),
    ] {
        if taken {
            let key = StackCopyKey {
                cookie,
                stack_kind: kind as u32,
                _reserved: 0,
            };
            let _ = STACK_COPIES.remove(key);
        }
    }
}
