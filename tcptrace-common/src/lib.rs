//! Wire types shared by the tcptrace eBPF program and the agent.
//!
//! Every type here has one `#[repr(C)]` definition, fixed-width fields ordered
//! largest first so that there is no implicit padding, and a compile-time size
//! assertion. Userspace never reinterprets raw bytes as these types: it decodes
//! them field by field with length checks (see `tcptrace::decode`).
#![no_std]

pub mod owner_counts;

/// What a ring-buffer record is. Every record starts with this as a `u32`.
/// Numbers are never reused: a retired kind keeps its number forever.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Transition = 1,
    Destroyed = 2,
    Stack = 3,
}

impl RecordKind {
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Transition),
            2 => Some(Self::Destroyed),
            3 => Some(Self::Stack),
            _ => None,
        }
    }
}

/// Linux TCP states, numbered as in `include/net/tcp_states.h`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    /// `None` for a number the kernel does not define: a decode error, never an index.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Self::Established),
            2 => Some(Self::SynSent),
            3 => Some(Self::SynRecv),
            4 => Some(Self::FinWait1),
            5 => Some(Self::FinWait2),
            6 => Some(Self::TimeWait),
            7 => Some(Self::Close),
            8 => Some(Self::CloseWait),
            9 => Some(Self::LastAck),
            10 => Some(Self::Listen),
            11 => Some(Self::Closing),
            12 => Some(Self::NewSynRecv),
            _ => None,
        }
    }

    /// The name `ss` and the kernel use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// Whether the task on the CPU during `old -> new` is the socket's owner.
    ///
    /// Only these transitions run in the owning process's syscall; all others
    /// may run in softirq on behalf of whatever task the CPU was running (on
    /// loopback typically the peer). See `shared/reference/linux-tcp-states.md`.
    pub const fn runs_in_owner_context(old: u8, new: u8) -> bool {
        const CLOSE: u8 = TcpState::Close as u8;
        const SYN_SENT: u8 = TcpState::SynSent as u8;
        const LISTEN: u8 = TcpState::Listen as u8;
        const ESTABLISHED: u8 = TcpState::Established as u8;
        const FIN_WAIT1: u8 = TcpState::FinWait1 as u8;
        const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;
        const LAST_ACK: u8 = TcpState::LastAck as u8;
        matches!(
            (old, new),
            (CLOSE, SYN_SENT)
                | (CLOSE, LISTEN)
                | (LISTEN, CLOSE)
                | (ESTABLISHED, FIN_WAIT1)
                | (CLOSE_WAIT, LAST_ACK)
        )
    }
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const TASK_COMM_LEN: usize = 16;

/// One TCP state transition, as the probe writes it into the ring buffer.
///
/// `owner_tgid == 0` means the owner is unknown (tgid 0 is the idle task,
/// which never owns a socket). IPv4 addresses use the first 4 bytes of the
/// address fields and leave the rest zero. `netns_inode` is filled only at
/// transitions from or to LISTEN (0 elsewhere): the agent needs it to tell
/// listeners in different namespaces apart, and reading it costs two more
/// kernel reads that the other transitions should not pay. `socket_inode` is
/// filled only in leak mode and only at transitions to CLOSE: non-zero means a
/// file (an fd) still refers to the closed socket, the mark of a
/// closed-but-held leak.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionRecord {
    pub kind: u32,
    pub owner_tgid: u32,
    pub timestamp_ns: u64,
    pub cookie: u64,
    pub skaddr: u64,
    pub socket_inode: u64,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub owner_comm: [u8; TASK_COMM_LEN],
    pub netns_inode: u32,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub family: u16,
    pub old_state: u8,
    pub new_state: u8,
    pub _reserved: u32,
}

pub const TRANSITION_RECORD_SIZE: usize = 104;

impl TransitionRecord {
    /// The bytes the probe writes for this record (its memory, field by
    /// field, without unsafe): for tests and benchmarks of the decoder.
    pub fn to_bytes(&self) -> [u8; TRANSITION_RECORD_SIZE] {
        use core::mem::offset_of;
        let mut out = [0u8; TRANSITION_RECORD_SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            out[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(offset_of!(Self, kind), &self.kind.to_ne_bytes());
        put(offset_of!(Self, owner_tgid), &self.owner_tgid.to_ne_bytes());
        put(
            offset_of!(Self, timestamp_ns),
            &self.timestamp_ns.to_ne_bytes(),
        );
        put(offset_of!(Self, cookie), &self.cookie.to_ne_bytes());
        put(offset_of!(Self, skaddr), &self.skaddr.to_ne_bytes());
        put(
            offset_of!(Self, socket_inode),
            &self.socket_inode.to_ne_bytes(),
        );
        put(offset_of!(Self, local_addr), &self.local_addr);
        put(offset_of!(Self, remote_addr), &self.remote_addr);
        put(offset_of!(Self, owner_comm), &self.owner_comm);
        put(
            offset_of!(Self, netns_inode),
            &self.netns_inode.to_ne_bytes(),
        );
        put(offset_of!(Self, local_port), &self.local_port.to_ne_bytes());
        put(
            offset_of!(Self, remote_port),
            &self.remote_port.to_ne_bytes(),
        );
        put(offset_of!(Self, family), &self.family.to_ne_bytes());
        put(offset_of!(Self, old_state), &[self.old_state]);
        put(offset_of!(Self, new_state), &[self.new_state]);
        put(offset_of!(Self, _reserved), &self._reserved.to_ne_bytes());
        out
    }
}
const _: () = assert!(core::mem::size_of::<TransitionRecord>() == TRANSITION_RECORD_SIZE);
const _: () = assert!(core::mem::align_of::<TransitionRecord>() == 8);

/// The kernel destroyed a TCP socket (`tcp:tcp_destroy_sock`): no fd or
/// kernel reference is left. Sent only in leak mode, for a socket that
/// moved to CLOSE while a file still referred to it (the one kind of
/// suspicion a destruction ends), and with `verdicts_only` for a socket
/// with stack copies, whose CLOSE is not recorded. Any other socket's CLOSE
/// record, whose `socket_inode` is 0, already says that nothing will report
/// it again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestroyedRecord {
    pub kind: u32,
    pub _reserved: u32,
    pub timestamp_ns: u64,
    pub cookie: u64,
}

pub const DESTROYED_RECORD_SIZE: usize = 24;
const _: () = assert!(core::mem::size_of::<DestroyedRecord>() == DESTROYED_RECORD_SIZE);

/// Which moment a stack shows, all taken in the owning process's syscall.
/// A socket's origin is the first of connect, accept, first read and first
/// write the probe sees (a first read or write replaces an accept copy: it
/// names the handler, where accept() names only the accept loop).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StackKind {
    /// connect(): the socket's creator on the client side.
    Connect = 1,
    /// The first recv() of an accepted socket that returned data, before it
    /// wrote any: the handler that serves it.
    FirstRead = 2,
    /// The recv() that returned 0 on a socket in CLOSE_WAIT: the code that saw EOF.
    Eof = 3,
    /// accept() (fexit on `inet_csk_accept`, where the kernel allows it).
    Accept = 4,
    /// The first send() of an accepted socket that had read nothing.
    FirstWrite = 5,
}

impl StackKind {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Self::Connect),
            2 => Some(Self::FirstRead),
            3 => Some(Self::Eof),
            4 => Some(Self::Accept),
            5 => Some(Self::FirstWrite),
            _ => None,
        }
    }

    /// Where its copy waits: one origin copy per socket, and its EOF copy.
    pub const fn slot(self) -> CopySlot {
        match self {
            Self::Eof => CopySlot::Eof,
            Self::Connect | Self::FirstRead | Self::Accept | Self::FirstWrite => CopySlot::Origin,
        }
    }
}

/// `StackCopyKey::slot`: a socket has at most one copy in each.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopySlot {
    Origin = 1,
    Eof = 3,
}

/// Announces that a copy of the user stack was taken for a socket: the
/// copy itself waits in the probe's `STACK_COPIES` map, keyed by
/// (cookie, kind), until the socket is destroyed or the agent reads it.
/// `copy_status` is 0, or a `STACK_COPY_*` failure.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackRecord {
    pub kind: u32,
    pub tgid: u32,
    pub timestamp_ns: u64,
    pub cookie: u64,
    pub copy_status: i32,
    pub stack_kind: u8,
    pub _reserved: [u8; 3],
}

pub const STACK_RECORD_SIZE: usize = 32;
const _: () = assert!(core::mem::size_of::<StackRecord>() == STACK_RECORD_SIZE);

/// `StackRecord::copy_status`: not one page of the user stack was readable.
pub const STACK_COPY_UNREADABLE: i32 = -1;
/// `StackRecord::copy_status`: the copy map refused the insert.
pub const STACK_COPY_NOT_STORED: i32 = -2;

/// Page size: where a short stack ends, and the unit a copy is read by.
pub const STACK_COPY_PAGE: usize = 4096;
/// 8 KiB from the stack pointer up: twice the deepest handler measured
/// (docs/STACKS.md), and half the bytes the copy used to read and store per
/// passive close, which is most of its cost.
pub const STACK_COPY_PAGES: usize = 2;
pub const STACK_COPY_BYTES: usize = STACK_COPY_PAGE * STACK_COPY_PAGES;

/// Key of the probe's stack-copy map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackCopyKey {
    pub cookie: u64,
    /// `CopySlot`.
    pub slot: u32,
    pub _reserved: u32,
}

const _: () = assert!(core::mem::size_of::<StackCopyKey>() == 16);

// SAFETY: plain old data: integers only, no padding (asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for StackCopyKey {}

/// The user registers an unwinder starts from and the bytes of the user
/// stack from `sp` up (fewer where the stack ends within STACK_COPY_BYTES
/// of `sp`): what `perf --call-graph dwarf` takes,
/// so code built without frame pointers unwinds from its `.eh_frame`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackCopy {
    pub tgid: u32,
    /// Bytes of `stack` read, 0 to STACK_COPY_BYTES.
    pub len: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The user address of `stack[0]` (the probe starts the copy at `sp`;
    /// the unwinder takes any base).
    pub base: u64,
    pub stack: [u8; STACK_COPY_BYTES],
}

const _: () = assert!(core::mem::size_of::<StackCopy>() == 40 + STACK_COPY_BYTES);

// SAFETY: plain old data: integers and bytes only, no padding (asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for StackCopy {}

/// Python processes the agent can describe to the probe at once
/// (`names::PY_PROCESSES_MAP`).
pub const PY_PROCESSES_CAPACITY: u32 = 1024;
/// Python frames copied with a stack, innermost first: deeper ones are
/// said to be missing, not guessed.
pub const PY_FRAMES_MAX: usize = 32;
/// Thread states looked at to find the copying thread's: a thread-per-
/// connection server's newest threads come first in the interpreter's list.
pub const PY_THREADS_MAX: u32 = 256;
/// Bytes read at once from a thread state or a frame: one read per object,
/// of the span its wanted fields lie in.
pub const PY_BLOCK_MAX: u32 = 256;
/// A `PyProcess` offset the version does not have.
pub const PY_NO_FIELD: u32 = u32::MAX;

/// Where one Python process keeps what the probe walks, as the agent read
/// it from the interpreter's headers and checked against the process
/// (`names::PY_PROCESSES_MAP`, keyed by tgid). Offsets are from the start
/// of the struct each is named after.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyProcess {
    /// The address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// `_PyRuntime.interpreters.head`: the main interpreter.
    pub interpreters_head: u32,
    /// `PyInterpreterState.threads.head` (`tstate_head` before 3.11).
    pub threads_head: u32,
    /// `PyThreadState.next`, `.thread_id` (`pthread_self()`, the thread
    /// pointer on glibc and musl) and the frame: `.frame` (3.9, 3.10),
    /// `.cframe` (3.11, 3.12), `.current_frame` (3.13).
    pub thread_next: u32,
    pub thread_id: u32,
    pub thread_frame: u32,
    /// Bytes of a thread state read at once: past the three fields above.
    pub thread_block: u32,
    /// `_PyCFrame.current_frame` (3.11, 3.12), else PY_NO_FIELD.
    pub cframe_frame: u32,
    /// The frame's `f_back`/`previous`, `f_code`/`f_executable`, and its
    /// instruction: `f_lasti` (3.9, 3.10, an int), `prev_instr` (3.11,
    /// 3.12) or `instr_ptr` (3.13), a pointer.
    pub frame_previous: u32,
    pub frame_code: u32,
    pub frame_instr: u32,
    /// `owner` (a byte, 3.11+) and `is_entry` (a byte, 3.11 only), else
    /// PY_NO_FIELD.
    pub frame_owner: u32,
    pub frame_entry: u32,
    /// Bytes of a frame read at once: past every field above.
    pub frame_block: u32,
    pub _reserved: u32,
}

const _: () = assert!(core::mem::size_of::<PyProcess>() == 64);

// SAFETY: plain old data: integers only, no padding (asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for PyProcess {}

/// One Python frame as copied: its code object and where it was.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyFrame {
    pub code: u64,
    /// The 8 bytes at `PyProcess::frame_instr`: an instruction pointer
    /// (3.11+), or `f_lasti` in the low 32 bits (3.9, 3.10).
    pub instr: u64,
}

/// The Python frames of the thread a stack copy is of, kept beside it in
/// `names::PY_FRAMES_MAP` under the same key.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyFrames {
    /// A `PY_WALK_*` outcome.
    pub status: i32,
    /// Frames filled in `frames`, innermost first.
    pub count: u32,
    /// The thread state the walk matched, 0 if none.
    pub thread_state: u64,
    pub frames: [PyFrame; PY_FRAMES_MAX],
    /// Per frame: its `owner` in the low 4 bits, and PY_FRAME_ENTRY.
    pub flags: [u8; PY_FRAMES_MAX],
}

const _: () = assert!(core::mem::size_of::<PyFrames>() == 16 + 17 * PY_FRAMES_MAX);

// SAFETY: plain old data: integers only, no padding (asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for PyFrames {}

/// `PyFrames::flags`: the frame was entered from C (3.11's `is_entry`).
pub const PY_FRAME_ENTRY: u8 = 0x80;
/// `PyFrames::status`: the walk reached the outermost frame.
pub const PY_WALK_COMPLETE: i32 = 0;
/// `PyFrames::status`: the thread had more than PY_FRAMES_MAX frames.
pub const PY_WALK_DEEPER: i32 = 1;
/// `PyFrames::status`: no thread state among the first PY_THREADS_MAX had
/// the copying thread's id (a thread Python does not know, or too many).
pub const PY_WALK_NO_THREAD: i32 = -1;
/// `PyFrames::status`: a read of the interpreter's memory failed.
pub const PY_WALK_READ_FAILED: i32 = -2;
/// `PyFrames::status`: the thread pointer is unknown on this kernel.
pub const PY_WALK_NO_THREAD_POINTER: i32 = -3;

/// `ProbeConfig::stack_level`.
pub const STACKS_OFF: u32 = 0;
/// An origin copy per socket (connect, accept, first read or first write)
/// and an EOF copy at its first read of EOF in CLOSE_WAIT.
pub const STACKS_ON: u32 = 1;

/// Processes the agent can target at once (`names::STACK_TARGETS_MAP`).
pub const STACK_TARGETS_CAPACITY: u32 = 1024;

/// A socket's owner as the probe keeps it in the socket's storage.
/// Aligned to 8: the bpf target has no memset, and builds a zeroed owner of
/// smaller alignment with a byte loop, on every transition.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub comm: [u8; TASK_COMM_LEN],
    pub tgid: u32,
}

const _: () = assert!(core::mem::size_of::<SocketOwner>() == 24);

/// Slots of the probe's per-CPU counter array. Numbers are never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// The ring buffer was full: the transition was dropped.
    RingReserveFailed = 0,
    /// The kernel could not allocate a socket's storage (out of memory):
    /// its owner is lost (shown unknown), and its stacks may be taken twice.
    OwnerInsertFailed = 1,
    /// A transition of a non-TCP socket (MPTCP, SCTP) that was skipped.
    NotTcp = 2,
    /// A transition dropped by an exact in-kernel filter.
    FilteredInKernel = 3,
    /// A kernel read of the socket failed: the transition was dropped.
    SocketReadFailed = 4,
    /// A socket-destroyed record was dropped: the ring buffer was full, or
    /// the socket's storage, which marks a socket closed while held, could
    /// not be allocated at its CLOSE.
    DestroyedReserveFailed = 5,
    /// The ring buffer was full: a stack record was dropped.
    StackReserveFailed = 6,
    /// A stack copy could not be taken or stored (no readable page at the
    /// stack pointer, or the copy map refused it): the socket's code path is
    /// not known.
    StackNotStored = 7,
    /// An insert into the EOF-count map failed.
    MapInsertFailed = 8,
    /// A stack copy taken and stored.
    StackCopied = 9,
    /// A moment to copy a stack that the copy budget refused (neither the
    /// host-wide budget nor a targeted process's had room).
    StackBudgetRefused = 10,
    /// Of `StackCopied`, those the targeted processes' budget paid for.
    StackCopiedTargeted = 11,
    /// Of `StackCopied`, those stored with the thread's Python frames.
    PythonFramesCopied = 12,
    /// Nanoseconds those walks and their inserts took, summed.
    PythonFramesNs = 13,
    /// Transitions of TCP sockets the probe ran for, recorded or not: with
    /// `verdicts_only`, most are counted here and never recorded.
    TransitionsSeen = 14,
    /// A transition or connect that per-owner counting could not count (the
    /// kernel refused the map entry): `top`'s counts are low by as many.
    OwnerCountLost = 15,
}

impl Counter {
    pub const ALL: [Counter; 16] = [
        Self::RingReserveFailed,
        Self::OwnerInsertFailed,
        Self::NotTcp,
        Self::FilteredInKernel,
        Self::SocketReadFailed,
        Self::DestroyedReserveFailed,
        Self::StackReserveFailed,
        Self::StackNotStored,
        Self::MapInsertFailed,
        Self::StackCopied,
        Self::StackBudgetRefused,
        Self::StackCopiedTargeted,
        Self::PythonFramesCopied,
        Self::PythonFramesNs,
        Self::TransitionsSeen,
        Self::OwnerCountLost,
    ];
}

/// Number of slots in the counter array (room to add counters without
/// changing the map's size).
pub const COUNTER_SLOTS: u32 = 16;

/// Configuration the agent writes into the program's read-only data before
/// loading it: struct offsets read from the running kernel's BTF (aya has no
/// CO-RE for Rust programs) and the exact in-kernel filters.
///
/// All offsets are in bytes from the start of `struct sock`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `sk_protocol` (u16).
    pub protocol_offset: u32,
    /// `__sk_common.skc_family` (u16).
    pub family_offset: u32,
    /// `__sk_common.skc_num` (u16, host order).
    pub local_port_offset: u32,
    /// `__sk_common.skc_dport` (u16, network order).
    pub remote_port_offset: u32,
    /// `__sk_common.skc_rcv_saddr` (4 bytes).
    pub local_v4_offset: u32,
    /// `__sk_common.skc_daddr` (4 bytes).
    pub remote_v4_offset: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub local_v6_offset: u32,
    /// `__sk_common.skc_v6_daddr` (16 bytes).
    pub remote_v6_offset: u32,
    /// `__sk_common.skc_net.net` (pointer to `struct net`).
    pub net_offset: u32,
    /// `ns.inum` inside `struct net` (u32).
    pub netns_inode_offset: u32,
    /// 1 when the two netns offsets above are valid (CONFIG_NET_NS).
    pub has_netns: u32,
    /// Drop transitions whose known owner has another tgid; 0 = no filter.
    pub owner_tgid_filter: u32,
    /// Drop transitions on neither this local nor remote port; 0 = no filter.
    pub port_filter: u32,
    /// Force a consumer wake-up once this many bytes wait unread.
    pub wakeup_threshold_bytes: u32,
    /// `sk_socket` (pointer to `struct socket`).
    pub socket_offset: u32,
    /// From a `struct socket *` to its inode number: `socket_alloc.vfs_inode`
    /// plus `inode.i_ino` (u64).
    pub socket_inode_number_offset: u32,
    /// `__sk_common.skc_state` (u8).
    pub state_offset: u32,
    /// `pt_regs.ip`, `pt_regs.bp` and `pt_regs.sp` (u64 each): where the
    /// user registers saved at syscall entry keep the instruction, frame and
    /// stack pointers.
    pub regs_ip_offset: u32,
    pub regs_bp_offset: u32,
    pub regs_sp_offset: u32,
    /// `inet_sock.inet_sport` (big-endian u16), 0 if not found: the local
    /// port a socket keeps after the kernel released it at CLOSE.
    pub inet_sport_offset: u32,
    /// STACKS_OFF or STACKS_ON.
    pub stack_level: u32,
    /// 1 in leak mode: fill `socket_inode` at transitions to CLOSE.
    pub read_socket_inode: u32,
    /// `task_struct.thread.fsbase` (u64, x86-64), 0 if not found: the
    /// thread pointer, above which no frame of a thread's stack lies.
    pub task_fsbase_offset: u32,
    /// `sk_bpf_storage` (pointer), 0 if not found: null while no program
    /// gave the socket storage, which is most sockets.
    pub sk_storage_offset: u32,
    /// `tcp_sock` fields that tell a socket's first read and first write
    /// with no per-socket state: `bytes_received` and `bytes_acked` (u64),
    /// `rcv_nxt`, `copied_seq`, `snd_una` and `write_seq` (u32). All 0 if
    /// one is not found: then no first read or write is copied.
    pub tcp_bytes_received_offset: u32,
    pub tcp_rcv_nxt_offset: u32,
    pub tcp_copied_seq_offset: u32,
    pub tcp_bytes_acked_offset: u32,
    pub tcp_snd_una_offset: u32,
    pub tcp_write_seq_offset: u32,
    /// The copy budget, per CPU: each copy costs this many nanoseconds of
    /// credit, which accrues with time up to `stack_burst_copies` copies'
    /// worth. 0: no budget (`--stacks full`).
    pub stack_copy_cost_ns: u32,
    pub stack_burst_copies: u32,
    /// The same for the processes the agent targets (`STACK_TARGETS`), whose
    /// every socket it wants a copy of, paid from a bucket of their own.
    pub targeted_copy_cost_ns: u32,
    pub targeted_burst_copies: u32,
    /// 1: record only the transitions a leak verdict reads (into and out of
    /// CLOSE_WAIT, CLOSE while a file holds the socket) and the listeners'
    /// (which attribute accepted sockets); count the rest in
    /// `Counter::TransitionsSeen`. A socket with stack copies then has its
    /// destruction recorded, which frees the agent's copy of its stacks.
    pub verdicts_only: u32,
    /// 1: count every transition per owner, and connects per owner and
    /// destination, in the `owner_counts` maps (`top`, `serve`); a
    /// connect()ing socket then keeps its owner in its storage, so that its
    /// transitions in softirq are counted for it.
    pub count_owners: u32,
}

const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 148);

impl ProbeConfig {
    pub const UNSET: ProbeConfig = ProbeConfig {
        protocol_offset: 0,
        family_offset: 0,
        local_port_offset: 0,
        remote_port_offset: 0,
        local_v4_offset: 0,
        remote_v4_offset: 0,
        local_v6_offset: 0,
        remote_v6_offset: 0,
        net_offset: 0,
        netns_inode_offset: 0,
        has_netns: 0,
        owner_tgid_filter: 0,
        port_filter: 0,
        wakeup_threshold_bytes: 0,
        socket_offset: 0,
        socket_inode_number_offset: 0,
        state_offset: 0,
        regs_ip_offset: 0,
        regs_bp_offset: 0,
        regs_sp_offset: 0,
        inet_sport_offset: 0,
        stack_level: STACKS_OFF,
        read_socket_inode: 0,
        task_fsbase_offset: 0,
        sk_storage_offset: 0,
        tcp_bytes_received_offset: 0,
        tcp_rcv_nxt_offset: 0,
        tcp_copied_seq_offset: 0,
        tcp_bytes_acked_offset: 0,
        tcp_snd_una_offset: 0,
        tcp_write_seq_offset: 0,
        stack_copy_cost_ns: 0,
        stack_burst_copies: 0,
        targeted_copy_cost_ns: 0,
        targeted_burst_copies: 0,
        verdicts_only: 0,
        count_owners: 0,
    };
}

// SAFETY: plain old data: only integers, no padding (asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeConfig {}

/// Names shared by the program and the loader.
pub mod names {
    pub const PROGRAM: &str = "inet_sock_set_state";
    pub const TRACEPOINT: &str = "inet_sock_set_state";
    pub const DESTROY_PROGRAM: &str = "tcp_destroy_sock";
    pub const DESTROY_TRACEPOINT: &str = "tcp_destroy_sock";
    pub const RECV_PROGRAM: &str = "sock_recv_length";
    pub const RECV_TRACEPOINT: &str = "sock_recv_length";
    pub const SEND_PROGRAM: &str = "sock_send_length";
    pub const SEND_TRACEPOINT: &str = "sock_send_length";
    /// fexit programs for `inet_csk_accept` with 4 parameters (before 6.10) and 2.
    pub const ACCEPT_PROGRAM_FOUR_PARAMS: &str = "inet_csk_accept_four_params";
    pub const ACCEPT_PROGRAM_TWO_PARAMS: &str = "inet_csk_accept_two_params";
    pub const ACCEPT_FUNCTION: &str = "inet_csk_accept";
    pub const STACK_COPIES_MAP: &str = "STACK_COPIES";
    pub const STACK_SCRATCH_MAP: &str = "STACK_SCRATCH";
    pub const EVENTS_MAP: &str = "EVENTS";
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const EOF_READS_MAP: &str = "EOF_READS";
    pub const OWNERS_STORED_MAP: &str = "OWNERS_STORED";
    pub const STACK_TARGETS_MAP: &str = "STACK_TARGETS";
    pub const PY_PROCESSES_MAP: &str = "PY_PROCESSES";
    pub const PY_FRAMES_MAP: &str = "PY_FRAMES";
    pub const PY_SCRATCH_MAP: &str = "PY_SCRATCH";
    pub const OWNER_COUNTS_MAP: &str = "OWNER_COUNTS";
    pub const DESTINATIONS_MAP: &str = "DESTINATIONS";
    pub const CONFIG_GLOBAL: &str = "PROBE_CONFIG";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_syscall_driven_transitions_name_the_owner() {
        use TcpState::*;
        let owner_context = [
            (Close, SynSent),
            (Close, Listen),
            (Listen, Close),
            (Established, FinWait1),
            (CloseWait, LastAck),
        ];
        for old in TcpState::ALL {
            for new in TcpState::ALL {
                assert_eq!(
                    TcpState::runs_in_owner_context(old as u8, new as u8),
                    owner_context.contains(&(old, new)),
                    "{} -> {}",
                    old.name(),
                    new.name()
                );
            }
        }
    }

    #[test]
    fn numbers_round_trip_and_unknown_ones_are_rejected() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_raw(state as u8), Some(state));
        }
        assert_eq!(TcpState::from_raw(0), None);
        assert_eq!(TcpState::from_raw(13), None);
        assert_eq!(RecordKind::from_raw(1), Some(RecordKind::Transition));
        assert_eq!(RecordKind::from_raw(2), Some(RecordKind::Destroyed));
        assert_eq!(RecordKind::from_raw(3), Some(RecordKind::Stack));
        assert_eq!(StackKind::from_raw(3), Some(StackKind::Eof));
        assert_eq!(StackKind::from_raw(5), Some(StackKind::FirstWrite));
        assert_eq!(StackKind::from_raw(0), None);
        assert_eq!(StackKind::Accept.slot(), CopySlot::Origin);
        assert_eq!(StackKind::Eof.slot(), CopySlot::Eof);
        assert_eq!(RecordKind::from_raw(0), None);
    }

    #[test]
    fn wire_layout_has_no_implicit_padding() {
        use core::mem::{offset_of, size_of};
        // Each field starts where the previous one ended.
        assert_eq!(offset_of!(TransitionRecord, timestamp_ns), 8);
        assert_eq!(offset_of!(TransitionRecord, socket_inode), 32);
        assert_eq!(offset_of!(TransitionRecord, local_addr), 40);
        assert_eq!(offset_of!(TransitionRecord, owner_comm), 72);
        assert_eq!(offset_of!(TransitionRecord, netns_inode), 88);
        assert_eq!(offset_of!(TransitionRecord, new_state), 99);
        assert_eq!(offset_of!(TransitionRecord, _reserved), 100);
        assert_eq!(offset_of!(DestroyedRecord, cookie), 16);
        assert_eq!(size_of::<ProbeConfig>(), 37 * 4);
        assert_eq!(offset_of!(StackRecord, copy_status), 24);
        assert_eq!(offset_of!(StackRecord, stack_kind), 28);
    }
}
