//! The Python frames of the thread whose stack is copied. CPython keeps
//! them in its own memory (frame objects, or the thread's data stack from
//! 3.11), not on the C stack, and they change as soon as the thread moves
//! on: they are walked here, in the thread's own syscall, as py-spy walks
//! them from outside. No TLS: the thread's state is found by its
//! `thread_id`, which is `pthread_self()`, the thread pointer.

use core::ffi::c_void;

use crate::{add, count};

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::generated::{bpf_ktime_get_ns, bpf_loop, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use tcptrace_common::{
    Counter, PY_BLOCK_MAX, PY_FRAME_ENTRY, PY_FRAMES_MAX, PY_NO_FIELD, PY_PROCESSES_CAPACITY,
    PY_THREADS_MAX, PY_WALK_COMPLETE, PY_WALK_DEEPER, PY_WALK_NO_THREAD, PY_WALK_NO_THREAD_POINTER,
    PY_WALK_READ_FAILED, PyFrame, PyFrames, PyProcess, StackCopyKey,
};

/// tgid -> where its interpreter keeps its threads and frames. The agent
/// inserts a process once it has read and checked its interpreter, and
/// deletes it when the process exits.
#[map]
pub(crate) static PY_PROCESSES: HashMap<u32, PyProcess> =
    HashMap::with_max_entries(PY_PROCESSES_CAPACITY, 0);

/// The Python frames of a stack copy, under the copy's own key, deleted
/// with it. LRU like the copies, and as many.
#[map]
pub(crate) static PY_FRAMES: LruHashMap<StackCopyKey, PyFrames> =
    LruHashMap::with_max_entries(1024, 0);

/// Built here first: 560 bytes do not fit the program's stack.
#[map]
static PY_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct Scratch {
    frames: PyFrames,
    /// One thread state or frame, read at once. Past PY_BLOCK_MAX, room
    /// for a field read at any offset under it (the verifier's bound).
    block: [u8; BLOCK_BYTES],
}

const BLOCK_BYTES: usize = PY_BLOCK_MAX as usize + 8;
const OFFSET_MASK: u32 = PY_BLOCK_MAX - 1;
const _: () = assert!(PY_BLOCK_MAX.is_power_of_two());

/// Copies the current thread's Python frames for the stack copy under
/// `key`, if the process is one the agent described. `thread_pointer` is
/// the task's fs base. True when frames (or why there are none) were stored.
pub(crate) fn copy_python_frames(tgid: u32, thread_pointer: u64, key: &StackCopyKey) -> bool {
    // SAFETY: the value is copied out before any other map call.
    let Some(process) = (unsafe { PY_PROCESSES.get(tgid) }).copied() else {
        return false;
    };
    let Some(scratch) = PY_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; the program does not nest on a CPU.
    let scratch = unsafe { &mut *scratch };
    scratch.frames.count = 0;
    scratch.frames.thread_state = 0;
    // SAFETY: a helper with no arguments.
    let started = unsafe { bpf_ktime_get_ns() };
    scratch.frames.status = walk(&process, thread_pointer, scratch);
    // By reference: 560 bytes do not fit the program's stack.
    let frames: &PyFrames = &scratch.frames;
    let stored = PY_FRAMES.insert(key, frames, BPF_ANY as u64).is_ok();
    if stored {
        count(Counter::PythonFramesCopied);
        // What the walk and its insert cost: bpf_stats times whole
        // programs only.
        // SAFETY: a helper with no arguments.
        add(
            Counter::PythonFramesNs,
            unsafe { bpf_ktime_get_ns() } - started,
        );
    }
    stored
}

/// What the loops' callbacks share: `bpf_loop` runs each step as a
/// function the verifier checks once, where a bounded loop is checked
/// iteration by iteration at every program's load.
#[repr(C)]
struct Walk {
    thread_pointer: u64,
    /// The thread state looked at, then the frame.
    at: u64,
    /// 1 once the step found what it looked for or the end.
    found: u64,
    failed: u64,
    next: u32,
    id: u32,
    block: u32,
    frame_code: u32,
    frame_instr: u32,
    frame_owner: u32,
    frame_entry: u32,
    _pad: u32,
}

fn walk(process: &PyProcess, thread_pointer: u64, scratch: &mut Scratch) -> i32 {
    if thread_pointer == 0 {
        return PY_WALK_NO_THREAD_POINTER;
    }
    let Some(interpreter) = read_u64(process.runtime + process.interpreters_head as u64) else {
        return PY_WALK_READ_FAILED;
    };
    let Some(thread) = read_u64(interpreter + process.threads_head as u64) else {
        return PY_WALK_READ_FAILED;
    };
    let mut walk = Walk {
        thread_pointer,
        at: thread,
        found: 0,
        failed: 0,
        next: process.thread_next,
        id: process.thread_id,
        block: process.thread_block,
        frame_code: process.frame_code,
        frame_instr: process.frame_instr,
        frame_owner: process.frame_owner,
        frame_entry: process.frame_entry,
        _pad: 0,
    };
    // SAFETY: `thread_step` takes the pointer to `walk`, which outlives the
    // loop.
    unsafe {
        bpf_loop(
            PY_THREADS_MAX,
            thread_step as *const () as *mut c_void,
            &raw mut walk as *mut c_void,
            0,
        )
    };
    if walk.failed != 0 {
        return PY_WALK_READ_FAILED;
    }
    if walk.found == 0 {
        return PY_WALK_NO_THREAD;
    }
    // The matching thread state is still in the block.
    scratch.frames.thread_state = walk.at;
    let mut frame = field_u64(&scratch.block, process.thread_frame);
    if process.cframe_frame != PY_NO_FIELD && frame != 0 {
        match read_u64(frame + process.cframe_frame as u64) {
            Some(current) => frame = current,
            None => return PY_WALK_READ_FAILED,
        }
    }
    walk.at = frame;
    walk.found = 0;
    walk.next = process.frame_previous;
    walk.block = process.frame_block;
    // SAFETY: as above.
    unsafe {
        bpf_loop(
            PY_FRAMES_MAX as u32,
            frame_step as *const () as *mut c_void,
            &raw mut walk as *mut c_void,
            0,
        )
    };
    if walk.failed != 0 {
        PY_WALK_READ_FAILED
    } else if walk.at == 0 {
        PY_WALK_COMPLETE
    } else {
        PY_WALK_DEEPER
    }
}

/// One thread state: 1 (stop) once it is the copying thread's, at the
/// list's end, or on a failed read; its block stays in the scratch.
unsafe extern "C" fn thread_step(_index: u32, context: *mut c_void) -> i64 {
    // SAFETY: `walk` passes a pointer to its own `Walk`.
    let walk = unsafe { &mut *(context as *mut Walk) };
    let Some(scratch) = read_next(walk) else {
        return 1;
    };
    let block = &scratch.block;
    if field_u64(block, walk.id) == walk.thread_pointer {
        walk.found = 1;
        return 1;
    }
    walk.at = field_u64(block, walk.next);
    0
}

/// One frame, copied into slot `index`: 1 (stop) past the outermost frame
/// or on a failed read.
unsafe extern "C" fn frame_step(index: u32, context: *mut c_void) -> i64 {
    // SAFETY: `walk` passes a pointer to its own `Walk`.
    let walk = unsafe { &mut *(context as *mut Walk) };
    let Some(scratch) = read_next(walk) else {
        return 1;
    };
    let block = &scratch.block;
    let mut flags = 0;
    if walk.frame_owner != PY_NO_FIELD {
        flags = field_u8(block, walk.frame_owner) & 0x0f;
    }
    if walk.frame_entry != PY_NO_FIELD && field_u8(block, walk.frame_entry) != 0 {
        flags |= PY_FRAME_ENTRY;
    }
    let copied = PyFrame {
        code: field_u64(block, walk.frame_code),
        instr: field_u64(block, walk.frame_instr),
    };
    let index = index as usize;
    if let (Some(slot), Some(flag)) = (
        scratch.frames.frames.get_mut(index),
        scratch.frames.flags.get_mut(index),
    ) {
        *slot = copied;
        *flag = flags;
        scratch.frames.count = index as u32 + 1;
    }
    walk.at = field_u64(block, walk.next);
    0
}

/// Reads the object `walk` is at into this CPU's scratch block; `None`
/// (the step stops) past the list's end, or with `failed` set.
fn read_next(walk: &mut Walk) -> Option<&'static mut Scratch> {
    if walk.at == 0 {
        return None;
    }
    let Some(scratch) = PY_SCRATCH.get_ptr_mut(0) else {
        walk.failed = 1;
        return None;
    };
    // SAFETY: this CPU's slot; the program does not nest on a CPU.
    let scratch = unsafe { &mut *scratch };
    if !read_block(&mut scratch.block, walk.at, walk.block) {
        walk.failed = 1;
        return None;
    }
    Some(scratch)
}

fn read_u64(address: u64) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: a checked read of user memory into a local of 8 bytes.
    let status =
        unsafe { bpf_probe_read_user(&raw mut value as *mut c_void, 8, address as *const c_void) };
    (status == 0).then_some(value)
}

/// Reads `len` bytes (1 to PY_BLOCK_MAX, the agent's span of the fields
/// wanted) from `address` into `block`.
fn read_block(block: &mut [u8; BLOCK_BYTES], address: u64, len: u32) -> bool {
    // Read back through memory with its bound, which the verifier then
    // sees on the register passed (as in the stack copy).
    // SAFETY: a volatile read of a local.
    let len = unsafe { core::ptr::read_volatile(&len) } & (2 * PY_BLOCK_MAX - 1);
    if len == 0 || len > PY_BLOCK_MAX {
        return false;
    }
    // SAFETY: a checked read of user memory into `block`, which holds
    // PY_BLOCK_MAX bytes and more.
    unsafe {
        bpf_probe_read_user(
            block.as_mut_ptr() as *mut c_void,
            len,
            address as *const c_void,
        ) == 0
    }
}

fn field_u64(block: &[u8; BLOCK_BYTES], offset: u32) -> u64 {
    let offset = (offset & OFFSET_MASK) as usize;
    // SAFETY: offset < PY_BLOCK_MAX, and the block has 8 bytes past it.
    unsafe { core::ptr::read_unaligned(block.as_ptr().add(offset) as *const u64) }
}

fn field_u8(block: &[u8; BLOCK_BYTES], offset: u32) -> u8 {
    let offset = (offset & OFFSET_MASK) as usize;
    // SAFETY: offset < PY_BLOCK_MAX.
    unsafe { *block.as_ptr().add(offset) }
}
