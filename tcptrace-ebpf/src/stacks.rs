//! Stack copies: the user registers and stack of a socket's own syscall,
//! kept in a map until the socket closes for good or the agent reads them.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MMAPABLE},
    helpers::generated::{
        bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, LruHashMap},
};
use tcptrace_common::{
    CopySlot, Counter, RecordKind, STACK_COPY_BYTES, STACK_COPY_NOT_STORED, STACK_COPY_PAGE,
    STACK_COPY_UNREADABLE, StackCopy, StackCopyKey, StackKind, StackRecord,
};

use crate::{
    EVENTS,
    budget::{Payer, allows_copy},
    count,
    kernel_read::load_field,
    python_frames::{PY_FRAMES, copy_python_frames},
    socket_storage::{
        STACK_TAKEN_EOF, STACK_TAKEN_ORIGIN, STACK_TAKEN_PYTHON, current_tgid, socket_state,
    },
    wakeup_flag,
};

/// Stack copies of sockets, by (cookie, slot): each is taken in the
/// socket's own syscall and waits here, so only the copies of sockets that
/// stay in CLOSE_WAIT are ever read and unwound; the rest are deleted when
/// their socket is destroyed, a few milliseconds after its close. LRU, so
/// the copies of sockets whose storage could not mark them age out.
#[map]
pub(crate) static STACK_COPIES: LruHashMap<StackCopyKey, StackCopy> =
    LruHashMap::with_max_entries(1024, 0);

/// A copy is built here first, in the slot of the CPU it runs on: 8 KiB
/// does not fit the program's stack. An array, not a per-CPU one, because
/// an mmapable array's values start on a page boundary (slots are whole
/// pages), so the copy's destination address is known modulo a page: see
/// `copy_user_stack`. The agent sizes it to the possible CPUs.
#[map]
pub(crate) static STACK_SCRATCH: Array<StackScratch> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[repr(C)]
pub(crate) struct StackScratch {
    /// Puts `copy.stack` at SCRATCH_STACK_OFFSET, a multiple of 64.
    _align: [u8; 24],
    copy: StackCopy,
    /// Never written at run time: the verifier cannot relate the last
    /// read's offset to its length (their sum is at most STACK_COPY_BYTES),
    /// so the buffer must hold the largest of each.
    _spill: [u8; STACK_COPY_PAGE],
    /// To whole pages.
    _pad: [u8; STACK_COPY_PAGE - 64],
}

/// Where `copy.stack` lies in its page.
const SCRATCH_STACK_OFFSET: usize = 64;
const _: () = assert!(core::mem::offset_of!(StackScratch, copy) + 40 == SCRATCH_STACK_OFFSET);
const _: () = assert!(core::mem::size_of::<StackScratch>().is_multiple_of(STACK_COPY_PAGE));

/// Copies the stack of the current syscall for `sk` where the budget
/// allows, and marks the copy in the socket's storage, so that the
/// socket's destruction deletes it without a lookup in the copy map for
/// every socket that has none. `cookie` is asked for only then: most
/// moments find the budget spent.
pub(crate) fn sample_stack(sk: *const u8, cookie: impl FnOnce() -> u64, kind: StackKind) {
    let Some(payer) = allows_copy() else {
        return;
    };
    let cookie = cookie();
    let state = socket_state(sk, true);
    let taken = take_stack(cookie, kind);
    match state {
        Some(state) => {
            state.stacks_taken |= match kind.slot() {
                CopySlot::Origin => STACK_TAKEN_ORIGIN,
                CopySlot::Eof => STACK_TAKEN_EOF,
            };
            if taken.python {
                state.stacks_taken |= STACK_TAKEN_PYTHON;
            }
        }
        // The copy is still taken: the LRU map ages it out if no CLOSE can.
        None => count(Counter::OwnerInsertFailed),
    }
    if taken.stored && payer == Payer::Targeted {
        count(Counter::StackCopiedTargeted);
    }
}

/// What a copy stored.
struct Taken {
    stored: bool,
    /// Python frames beside it (`python_frames`).
    python: bool,
}

/// Copies the user registers and stack of the current syscall into
/// STACK_COPIES for `cookie`, and tells the agent with a record. A copy
/// that cannot be taken is still announced, with its failure, so the report
/// can say why a socket has no code path.
fn take_stack(cookie: u64, kind: StackKind) -> Taken {
    let mut python = false;
    let copy_status = copy_user_stack(cookie, kind.slot(), &mut python);
    let taken = Taken {
        stored: copy_status == 0,
        python,
    };
    if copy_status == 0 {
        count(Counter::StackCopied);
    } else {
        count(Counter::StackNotStored);
    }
    let Some(mut entry) = EVENTS.reserve::<StackRecord>(0) else {
        count(Counter::StackReserveFailed);
        return taken;
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
    taken
}

/// 0, or a STACK_COPY_* failure. Sets `python` when the process's Python
/// frames were stored beside the copy.
fn copy_user_stack(cookie: u64, slot: CopySlot, python: &mut bool) -> i32 {
    // SAFETY: a helper with no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(cpu) else {
        return STACK_COPY_NOT_STORED;
    };
    // SAFETY: this CPU's scratch slot; the program does not nest on a CPU,
    // and does not move to another while it runs.
    let copy = unsafe { &mut (*scratch).copy };
    // SAFETY: a helper with no arguments.
    let task = unsafe { bpf_get_current_task_btf() };
    // SAFETY: the BTF pointer of the current task, whose saved user
    // registers are then read with verifier-checked loads.
    let regs = unsafe { bpf_task_pt_regs(task) } as *const u8;
    copy.tgid = current_tgid();
    // SAFETY: `regs` is the BTF-typed pt_regs the helper returned, the
    // offsets are pt_regs members found in BTF.
    unsafe {
        copy.ip = load_field::<u64>(regs, config!(regs_ip_offset));
        copy.bp = load_field::<u64>(regs, config!(regs_bp_offset));
        copy.sp = load_field::<u64>(regs, config!(regs_sp_offset));
    }
    // The bytes above sp are the frames. Read by page, from sp (its 64-byte
    // line, see below) to its page's end and then whole pages, so that where the stack ends within
    // STACK_COPY_BYTES of sp (a thread near its stack's top: half the EOF
    // reads of a thread-pool server) the read stops at the first page that
    // fails. One 8 KiB read would copy up to the end, fail, zero all of it,
    // and have to be read again.
    //
    // From sp's 64-byte line, so that source and destination are equal
    // modulo 64: on AMD Zen, `rep movsb` (the kernel's user copy) runs 28
    // times slower (4 us for 8 KiB, measured here) when the destination is
    // 8 to 31 bytes ahead of the source modulo 4096, which for a given
    // thread would hold at every one of its EOF reads.
    let sp = copy.sp & !63;
    copy.base = sp;
    let mut wanted = STACK_COPY_BYTES as u32;
    let fsbase_offset = config!(task_fsbase_offset);
    let mut fsbase = 0;
    if fsbase_offset != 0 {
        // glibc and musl put a thread's TCB and static TLS at the top of its
        // stack, and the thread pointer at the TCB: no frame lies above it.
        // Past it a pool thread's copy read TLS, then often a page that
        // could not be read, whose fault cost more than the bytes. A
        // thread pointer anywhere else (a main thread's, a goroutine's M)
        // is not in the way and changes nothing.
        // SAFETY: `task` is the current task's BTF pointer; the offset is
        // `thread.fsbase`, found in BTF.
        fsbase = unsafe { load_field::<u64>(task as *const u8, fsbase_offset) };
        if fsbase > sp && fsbase - sp < wanted as u64 {
            wanted = (fsbase - sp) as u32;
        }
    }
    let mut first = STACK_COPY_PAGE as u32 - (sp as u32 & (STACK_COPY_PAGE as u32 - 1));
    if first > wanted {
        first = wanted;
    }
    let stack = copy.stack.as_mut_ptr();
    const PAGE: u32 = STACK_COPY_PAGE as u32;
    // SAFETY: checked reads of user memory into the scratch copy: `first`
    // is 1..=PAGE, the second read starts there and is at most a page, and
    // the third ends at `wanted` <= STACK_COPY_BYTES (the verifier, which
    // cannot see that, is shown the spill page after `stack`).
    unsafe {
        let read = |offset: u32, len: u32| {
            bpf_probe_read_user(
                stack.add(offset as usize) as *mut c_void,
                len,
                (sp + offset as u64) as *const c_void,
            ) == 0
        };
        // The sizes below less than a page are masked with PAGE - 1, which
        // changes none of them (each is under a page where it is used) but
        // bounds them for the verifier, which does not see the branches'
        // bounds on the register the compiler passes. Read back through
        // memory, so that the compiler, which does see them, keeps the mask.
        // The third read's offset is masked likewise, to two pages.
        let under_page = |size: u32| core::ptr::read_volatile(&size) & (PAGE - 1);
        let under_two_pages = |offset: u32| core::ptr::read_volatile(&offset) & (2 * PAGE - 1);
        let mut len = 0;
        if read(0, first) {
            len = first;
            let rest = wanted - len;
            if rest >= PAGE {
                if read(len, PAGE) {
                    len += PAGE;
                    // Under a page: `first` reached its page's end. And
                    // `len` is under two pages wherever `wanted` exceeds it
                    // (where it does not, `last` is not used).
                    let last = under_page(wanted.wrapping_sub(len));
                    if wanted > len && read(under_two_pages(len), last) {
                        len += last;
                    }
                }
            } else if rest > 0 {
                let second = under_page(rest);
                if read(len, second) {
                    len += second;
                }
            }
        }
        copy.len = len;
    }
    if copy.len == 0 {
        return STACK_COPY_UNREADABLE;
    }
    let key = StackCopyKey {
        cookie,
        slot: slot as u32,
        _reserved: 0,
    };
    let tgid = copy.tgid;
    // By reference: the value is 8 KiB, far over the program's stack.
    if STACK_COPIES.insert(key, copy, BPF_ANY as u64).is_err() {
        return STACK_COPY_NOT_STORED;
    }
    *python = copy_python_frames(tgid, fsbase, &key);
    0
}

/// Deletes the stack copies a socket has, once it cannot leak: those
/// `taken` (STACK_TAKEN_* bits) says, and their Python frames.
pub(crate) fn forget_stack_copies(cookie: u64, taken: u32) {
    for (bit, slot) in [
        (STACK_TAKEN_ORIGIN, CopySlot::Origin),
        (STACK_TAKEN_EOF, CopySlot::Eof),
    ] {
        if taken & bit != 0 {
            let key = StackCopyKey {
                cookie,
                slot: slot as u32,
                _reserved: 0,
            };
            let _ = STACK_COPIES.remove(key);
            if taken & STACK_TAKEN_PYTHON != 0 {
                let _ = PY_FRAMES.remove(key);
            }
        }
    }
}
