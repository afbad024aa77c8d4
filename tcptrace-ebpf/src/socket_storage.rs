//! What the probe keeps per socket, in the socket's own storage, and the
//! owner it records: the process seen at a process-context transition.

use core::{ffi::c_void, ptr::null_mut};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::SkStorage,
    helpers::generated::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_sk_storage_get},
    macros::{btf_map, map},
    maps::{Array, LruHashMap},
};
use tcptrace_common::{Counter, SocketOwner, TASK_COMM_LEN, TcpState};

use crate::{count, kernel_read::load_field};

/// What the probe keeps per socket, in the socket itself: the kernel frees
/// it with the socket, so nothing is inserted or deleted per connection and
/// nothing can be left behind by a CLOSE the program did not see.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SocketState {
    /// The process that accepted it, where the fexit hook works (tgid 0:
    /// not known).
    pub(crate) owner: SocketOwner,
    /// STACK_TAKEN_* bits: the copies this socket has, which its CLOSE
    /// deletes; the EOF bit also marks its first read of EOF.
    pub(crate) stacks_taken: u32,
    /// 1 once the socket moved to CLOSE while a file still referred to it:
    /// its destruction is then recorded (see `tcp_destroy_sock`).
    pub(crate) closed_with_file: u32,
}

#[btf_map]
pub(crate) static SOCKETS: SkStorage<SocketState> = SkStorage::new();

/// Socket cookie -> reads that returned EOF in CLOSE_WAIT, for the sockets
/// read at EOF more than once (code spinning on EOF), which the agent reads
/// by cookie. An entry is deleted when its socket leaves CLOSE_WAIT, so the
/// map holds only CLOSE_WAIT sockets (but for a read that races its socket's
/// reset, after the socket lock is released); LRU, so such a leftover ages
/// out and a flood of spinning sockets cannot fail an insert.
#[map]
pub(crate) static EOF_READS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Slot 0 is 1 while the accept hook may be attached (the agent sets it
/// just before attaching, and clears it if the kernel refuses): only then
/// can a socket's storage hold an owner. Elsewhere (no fexit) the owner
/// lookup at every softirq transition would always find none.
#[map]
pub(crate) static OWNERS_STORED: Array<u32> = Array::with_max_entries(1, 0);

pub(crate) const STACK_TAKEN_ORIGIN: u32 = 1;
pub(crate) const STACK_TAKEN_EOF: u32 = 2;
/// Python frames were stored beside one of its copies.
pub(crate) const STACK_TAKEN_PYTHON: u32 = 4;

/// Counts a read of EOF after the first (the first took the socket's EOF
/// stack, whose bit marks it): a correct server reads EOF once and closes,
/// and must not cost a map insert per connection.
pub(crate) fn count_repeated_eof_read(cookie: u64) {
    match EOF_READS.get_ptr_mut(cookie) {
        // SAFETY: a live map value of the right type. Plain read-modify-write:
        // two CPUs reading one socket at once make the count a lower bound.
        Some(count) => unsafe { *count += 1 },
        None => {
            if EOF_READS.insert(cookie, 2, BPF_ANY as u64).is_err() {
                count(Counter::MapInsertFailed);
            }
        }
    }
}

/// The probe's storage in `sk`; with `create`, allocated (zeroed) if it is
/// not there yet. `sk` must be a BTF-typed socket pointer the kernel gave.
pub(crate) fn socket_state(sk: *const u8, create: bool) -> Option<&'static mut SocketState> {
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        let storage_offset = config!(sk_storage_offset);
        // A socket no program gave storage (nearly every one) has none of
        // ours: one load instead of a helper call.
        // SAFETY: `sk` is a BTF-typed socket (the caller's contract); the
        // offset is `sk_bpf_storage`, found in BTF.
        if storage_offset != 0 && unsafe { load_field::<u64>(sk, storage_offset) } == 0 {
            return None;
        }
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

/// The owner of `sk` at this transition: the current task where the
/// transition runs in the owner's syscall, otherwise the one accept()
/// recorded in the socket (where fexit works), or unknown (tgid 0). The
/// agent carries an owner seen at a socket's process-context transition to
/// its later ones: recording it here too would cost every connection a
/// storage allocation.
pub(crate) fn track_owner(sk: *const u8, old_state: u8, new_state: u8) -> SocketOwner {
    if TcpState::runs_in_owner_context(old_state, new_state) {
        return current_task();
    }
    if !OWNERS_STORED.get(0).is_some_and(|stored| *stored != 0) {
        return zeroed_owner();
    }
    match socket_state(sk, false) {
        // A concurrent update can at worst mix two owners' bytes for one
        // event, never fault.
        Some(state) => state.owner,
        None => zeroed_owner(),
    }
}

/// A socket leaving CLOSE_WAIT takes its EOF count with it. A lookup first:
/// few sockets have a count, and a delete takes the bucket's lock.
pub(crate) fn forget_eof_reads(cookie: u64) {
    // SAFETY: a lookup only tests presence; the value is not read.
    if unsafe { EOF_READS.get(cookie) }.is_some() {
        let _ = EOF_READS.remove(cookie);
    }
}

pub(crate) fn remember_owner(
    sk: *const u8,
    owner: &SocketOwner,
) -> Option<&'static mut SocketState> {
    let Some(state) = socket_state(sk, true) else {
        count(Counter::OwnerInsertFailed);
        return None;
    };
    state.owner = *owner;
    Some(state)
}

pub(crate) fn current_tgid() -> u32 {
    // SAFETY: a helper with no arguments.
    (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32
}

pub(crate) fn current_task() -> SocketOwner {
    let mut owner = zeroed_owner();
    // SAFETY: the helper writes at most the stated size into the local buffer.
    unsafe {
        bpf_get_current_comm(owner.comm.as_mut_ptr() as *mut c_void, TASK_COMM_LEN as u32);
    }
    owner.tgid = current_tgid();
    owner
}

/// An owner of all zeros (tgid 0: not known), built from a zero the
/// compiler cannot see through: the bpf target has no memset, and a zeroed
/// value it can see becomes a call to a byte loop, on every transition.
fn zeroed_owner() -> SocketOwner {
    let zero = core::hint::black_box(0u64);
    SocketOwner {
        // SAFETY: two u64 are 16 bytes, and every bit pattern is a valid u8.
        comm: unsafe { core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>([zero, zero]) },
        tgid: zero as u32,
    }
}
