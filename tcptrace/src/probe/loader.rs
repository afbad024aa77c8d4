//! Loads and attaches the embedded eBPF probe and gives access to its ring
//! buffer and counters. The only module besides `watch` that touches aya;
//! the integration tests load the probe through it too.

use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd, RawFd},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as AyaHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePoint, FExit, ProgramError},
};
use tcptrace_common::{
    COUNTER_SLOTS, CopySlot, Counter, PY_PROCESSES_CAPACITY, ProbeConfig, PyFrames, PyProcess,
    STACK_TARGETS_CAPACITY, STACKS_OFF, STACKS_ON, StackCopy, StackCopyKey, names,
    owner_counts::{
        DESTINATION_KEYS_CAPACITY, DestinationCounts, DestinationKey, OWNER_KEYS_CAPACITY,
        OwnerCounts, OwnerKey,
    },
};
use thiserror::Error;

use crate::{
    model::health::Occupancy,
    probe::btf::{Btf, BtfError, VMLINUX_BTF},
    probe::layout::{self, LayoutError},
    probe::preflight::{self, PreflightError},
    probe::ring_reader::{RingError, RingReader},
};

/// The probe object, built for the bpf target by build.rs.
static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

pub const PAGE_SIZE: u32 = 4096;
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 4 * 1024 * 1024;
pub const DEFAULT_MAX_SOCKETS: u32 = 65536;
/// The largest ring buffer accepted: at 72 bytes a transition, seconds of a
/// churning host's events; more only pins kernel memory.
pub const MAX_RING_BUFFER_BYTES: u32 = 256 * 1024 * 1024;
/// The largest `--max-sockets`: the EOF-count map, preallocated by the
/// kernel, then takes about `MAX_SOCKETS * SOCKET_ENTRY_BYTES`.
pub const MAX_MAX_SOCKETS: u32 = 1 << 22;
/// Kernel memory per entry of a preallocated LRU hash of u64 -> u64: the
/// map's `memlock` in /proc/PID/fdinfo on 6.18 (83886976 bytes for 1 Mi entries).
pub const SOCKET_ENTRY_BYTES: u64 = 80;
/// Stack copies waiting for their socket to close or be read: 8 KiB each,
/// so 8 MiB of kernel memory. A healthy socket's copy lives for the few
/// milliseconds between its EOF read and its close; the agent reads the
/// copies of sockets still open within a second. LRU: a burst of more
/// sockets than this, all reading EOF within that second, loses the oldest
/// copies (their sockets are then shown without a code path, and why).
pub const STACK_COPY_ENTRIES: u32 = 1024;

/// Which user stacks the probe takes, and so what it costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StackLevel {
    /// None, and no per-recv hook.
    #[default]
    Off,
    /// An origin copy per socket (connect, accept, first read or first
    /// write) and an EOF copy at its first read of EOF in CLOSE_WAIT, every
    /// one paid from the copy budget: under light load every socket has
    /// its copies, under churn a sample.
    Sampled,
    /// The same moments with no budget: every socket's copies.
    Full,
}

/// `--stack-budget`'s default: copies a second, host-wide. A light load
/// has every socket's copies; a churning host, a sample of them.
pub const DEFAULT_STACK_BUDGET: u32 = 500;
/// A targeted process (one that leaks with no code path) has a bucket of
/// its own this many times the host-wide one.
pub const TARGETED_BUDGET_FACTOR: u32 = 4;
/// The processes targeted at one time (the probe's map's capacity).
pub const MAX_STACK_TARGETS: usize = STACK_TARGETS_CAPACITY as usize;

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// A power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Capacity of the in-kernel map of EOF-read counts: CLOSE_WAIT sockets
    /// read at EOF more than once, at one time (beyond it the least recently
    /// read give way). Owners need no capacity: they live in each socket's
    /// own storage.
    pub max_sockets: u32,
    pub owner_tgid_filter: Option<u32>,
    pub port_filter: Option<u16>,
    /// Leak mode: the inode of a socket still held at CLOSE, and a record
    /// when the kernel frees such a socket (`tcp_destroy_sock`).
    pub track_closed_held: bool,
    /// Record only what a leak verdict reads, and count every other
    /// transition in the kernel (`ProbeConfig::verdicts_only`).
    pub verdicts_only: bool,
    /// Count every transition per owner, and connects per destination, in
    /// the kernel (`ProbeConfig::count_owners`), for `Probe::owner_counts`.
    pub count_owners: bool,
    pub stacks: StackLevel,
    /// Stack copies a second, host-wide, with `StackLevel::Sampled`.
    pub stack_budget: u32,
    /// Walk the Python frames of the processes the agent describes, at
    /// each stack copy.
    pub python_frames: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            max_sockets: DEFAULT_MAX_SOCKETS,
            owner_tgid_filter: None,
            port_filter: None,
            track_closed_held: false,
            verdicts_only: false,
            count_owners: false,
            stacks: StackLevel::Off,
            stack_budget: DEFAULT_STACK_BUDGET,
            python_frames: true,
        }
    }
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(
        "kernel BTF is not available ({0}): tcptrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y ({VMLINUX_BTF})"
    )]
    NoBtf(#[source] BtfError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("ring buffer size {0} bytes must be a power of two and at least {PAGE_SIZE}")]
    BadRingBufferSize(u32),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(
        "ring buffer size {} MiB would pin as much kernel memory; at most {} MiB",
        .0 / (1024 * 1024),
        MAX_RING_BUFFER_BYTES / (1024 * 1024)
    )]
    RingBufferTooBig(u32),
    #[error(
        "--max-sockets {asked} would take about {} MiB of kernel memory; at most {MAX_MAX_SOCKETS} (about {} MiB)",
        u64::from(*asked) * SOCKET_ENTRY_BYTES / (1024 * 1024),
        u64::from(MAX_MAX_SOCKETS) * SOCKET_ENTRY_BYTES / (1024 * 1024)
    )]
    TooManySockets { asked: u32 },
    #[error("--max-sockets must be at least 1")]
    NoSockets,
    #[error("loading the eBPF probe failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF probe object has no {0}: the build is broken")]
    Missing(&'static str),
    #[error("attaching to inet_sock_set_state failed: {0}")]
    Attach(#[source] ProgramError),
    #[error("reading the probe's {what} failed: {source}")]
    Map {
        what: &'static str,
        #[source]
        source: MapError,
    },
    #[error("reading the probe's statistics failed: {0}")]
    Stats(#[source] std::io::Error),
    #[error("reading the possible CPUs (/sys/devices/system/cpu/possible) failed: {0}")]
    PossibleCpus(#[source] std::io::Error),
}

/// How many CPUs the kernel may run a program on (their ids are below it).
fn possible_cpus() -> Result<u32, ProbeError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| ProbeError::PossibleCpus(error))?;
    Ok(u32::try_from(cpus).unwrap_or(u32::MAX))
}

pub fn validate_ring_buffer_bytes(bytes: u32) -> Result<u32, ProbeError> {
    if bytes > MAX_RING_BUFFER_BYTES {
        Err(ProbeError::RingBufferTooBig(bytes))
    } else if bytes >= PAGE_SIZE && bytes.is_power_of_two() {
        Ok(bytes)
    } else {
        Err(ProbeError::BadRingBufferSize(bytes))
    }
}

pub fn validate_max_sockets(sockets: u32) -> Result<u32, ProbeError> {
    match sockets {
        0 => Err(ProbeError::NoSockets),
        1..=MAX_MAX_SOCKETS => Ok(sockets),
        _ => Err(ProbeError::TooManySockets { asked: sockets }),
    }
}

/// What the probe counted instead of delivering, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ring_reserve_failed: u64,
    pub owner_insert_failed: u64,
    pub not_tcp: u64,
    pub filtered_in_kernel: u64,
    pub socket_read_failed: u64,
    pub destroyed_reserve_failed: u64,
    pub stack_reserve_failed: u64,
    /// Stack copies not taken (no readable stack page) or not stored (the
    /// copy map refused them): code paths shown as not taken.
    pub stack_not_stored: u64,
    /// Failed inserts into the EOF-count map.
    pub map_insert_failed: u64,
    /// Stack copies taken and stored, and of those the targeted processes'.
    pub stack_copied: u64,
    pub stack_copied_targeted: u64,
    /// Of the copies, those stored with their thread's Python frames, and
    /// the nanoseconds their walks took.
    pub python_frames_copied: u64,
    pub python_frames_ns: u64,
    /// Moments to copy a stack that the budget refused.
    pub stack_budget_refused: u64,
    /// TCP transitions the probe ran for, recorded or only counted.
    pub transitions_seen: u64,
    /// Transitions or connects per-owner counting could not count.
    pub owner_count_lost: u64,
}

impl KernelCounters {
    /// TCP transitions the probe ran for but could not deliver.
    pub fn dropped(&self) -> u64 {
        self.ring_reserve_failed + self.socket_read_failed
    }
}

/// The capacities the probe's bounded maps were created with.
#[derive(Clone, Copy, Debug)]
struct MapCapacities {
    stack_copies: u32,
    /// One slot per possible CPU, indexed by the CPU the copy runs on.
    stack_scratch: u32,
    eof_reads: u32,
    /// As many as stack copies: each copy may have its Python frames.
    python_frames: u32,
    python_processes: u32,
    owner_keys: u32,
    destination_keys: u32,
}

/// The kernel's own accounting of the program (run counts need bpf_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    pub run_count: u64,
    pub run_time: Duration,
    /// Runs the kernel skipped because the program was already running on
    /// that CPU (an interrupt arrived mid-run). Not in `run_count`.
    pub recursion_misses: u64,
}

pub struct Probe {
    // Keeps the program and its link alive.
    ebpf: Ebpf,
    events: RingReader,
    counters: PerCpuArray<MapData, u64>,
    stack_copies: AyaHashMap<MapData, StackCopyKey, StackCopy>,
    /// Processes whose new sockets are copied from a budget of their own
    /// (`None` without stacks).
    stack_targets: Option<AyaHashMap<MapData, u32, u32>>,
    /// Python processes the probe walks the frames of, and the frames it
    /// copied (`None` without stacks).
    python: Option<PythonMaps>,
    /// Per-owner counts (`None` unless `ProbeOptions::count_owners`).
    owner_counts: Option<OwnerMaps>,
    /// EOF reads per CLOSE_WAIT socket; `None` when the receive hook is not attached.
    eof_reads: Option<AyaHashMap<MapData, u64, u64>>,
    /// The capacities the maps were created with.
    capacities: MapCapacities,
    /// Features this kernel could not give, one line each for the user.
    pub notices: Vec<String>,
    /// Accepted sockets get their owner at accept() (fexit), not at close.
    pub accept_hook: bool,
    /// What the probe can copy on this kernel.
    pub stack_moments: StackMoments,
    /// Whether Python processes may be described to the probe
    /// (`ProbeOptions::python_frames`).
    pub python_frames: bool,
}

struct OwnerMaps {
    owners: PerCpuHashMap<MapData, OwnerKey, OwnerCounts>,
    destinations: PerCpuHashMap<MapData, DestinationKey, DestinationCounts>,
}

struct PythonMaps {
    processes: AyaHashMap<MapData, u32, PyProcess>,
    frames: AyaHashMap<MapData, StackCopyKey, PyFrames>,
}

/// The moments the probe can copy a stack at on this kernel, so that a
/// missing stack says which moment this kernel does not show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackMoments {
    pub level: StackLevel,
    /// Host-wide copies a second; 0 with no budget.
    pub budget: u32,
    /// accept() (fexit allowed).
    pub accept: bool,
    /// First reads and EOF reads (`sock_recv_length`, 6.3+).
    pub reads: bool,
    /// First writes (`sock_send_length`, 6.3+).
    pub writes: bool,
}

impl Probe {
    pub fn load(options: &ProbeOptions) -> Result<Self, ProbeError> {
        preflight::check_privileges()?;
        preflight::check_kernel_features()?;
        let ring_buffer_bytes = validate_ring_buffer_bytes(options.ring_buffer_bytes)?;
        let max_sockets = validate_max_sockets(options.max_sockets)?;

        let btf = Btf::from_sys_fs().map_err(ProbeError::NoBtf)?;
        let mut config = layout::probe_config(&btf)?;
        config.owner_tgid_filter = options.owner_tgid_filter.unwrap_or(0);
        config.port_filter = options.port_filter.map_or(0, u32::from);
        // Half full: the reader is woken with room to spare, and a steady
        // trickle is picked up by its timer instead of by interrupts.
        config.wakeup_threshold_bytes = ring_buffer_bytes / 2;
        config.read_socket_inode = u32::from(options.track_closed_held);
        config.verdicts_only = u32::from(options.verdicts_only);
        config.count_owners = u32::from(options.count_owners);
        let mut notices = Vec::new();
        let mut stack_level = options.stacks;
        if stack_level != StackLevel::Off && config.regs_sp_offset == 0 {
            notices.push(
                "tcptrace: no stacks: this kernel's BTF does not describe the saved user registers (pt_regs)".to_owned(),
            );
            stack_level = StackLevel::Off;
        }
        config.stack_level = match stack_level {
            StackLevel::Off => STACKS_OFF,
            StackLevel::Sampled | StackLevel::Full => STACKS_ON,
        };
        if stack_level == StackLevel::Sampled {
            set_budget(&mut config, options.stack_budget, possible_cpus()?);
        }
        let recv_hook = format!("btf_trace_{}", names::RECV_TRACEPOINT);
        let attach_recv = stack_level != StackLevel::Off && btf.has_type_named(&recv_hook);
        let send_hook = format!("btf_trace_{}", names::SEND_TRACEPOINT);
        let attach_send = stack_level != StackLevel::Off && btf.has_type_named(&send_hook);
        if stack_level != StackLevel::Off && !attach_recv {
            notices.push(
                "tcptrace: no first-read or EOF stacks: this kernel has no sock:sock_recv_length tracepoint (Linux 6.3+); a code path comes from connect() or accept()"
                    .to_owned(),
            );
        }
        if stack_level != StackLevel::Off && config.tcp_write_seq_offset == 0 {
            notices.push(
                "tcptrace: no first-read or first-write stacks: this kernel's BTF lacks a tcp_sock counter they are told by".to_owned(),
            );
        }

        // A map the mode does not use still exists in the object: one entry.
        let stacks = stack_level != StackLevel::Off;
        let capacities = MapCapacities {
            stack_copies: if stacks { STACK_COPY_ENTRIES } else { 1 },
            stack_scratch: if stacks { possible_cpus()? } else { 1 },
            eof_reads: if attach_recv { max_sockets } else { 1 },
            python_frames: if stacks { STACK_COPY_ENTRIES } else { 1 },
            python_processes: if stacks { PY_PROCESSES_CAPACITY } else { 1 },
            // An LRU map spreads its free entries over the CPUs: one each.
            owner_keys: if options.count_owners {
                OWNER_KEYS_CAPACITY
            } else {
                possible_cpus()?
            },
            destination_keys: if options.count_owners {
                DESTINATION_KEYS_CAPACITY
            } else {
                possible_cpus()?
            },
        };
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .override_global(names::CONFIG_GLOBAL, &config, true)
            .map_max_entries(names::EVENTS_MAP, ring_buffer_bytes)
            .map_max_entries(names::STACK_COPIES_MAP, capacities.stack_copies)
            .map_max_entries(names::STACK_SCRATCH_MAP, capacities.stack_scratch)
            .map_max_entries(names::EOF_READS_MAP, capacities.eof_reads)
            .map_max_entries(names::PY_FRAMES_MAP, capacities.python_frames)
            .map_max_entries(names::PY_PROCESSES_MAP, capacities.python_processes)
            .map_max_entries(names::OWNER_COUNTS_MAP, capacities.owner_keys)
            .map_max_entries(names::DESTINATIONS_MAP, capacities.destination_keys)
            .load(PROBE_OBJECT)
            .map_err(ProbeError::Load)?;

        let kernel_btf = aya::Btf::from_sys_fs().map_err(|e| {
            ProbeError::NoBtf(BtfError::Read {
                path: VMLINUX_BTF.into(),
                source: std::io::Error::other(e),
            })
        })?;
        attach(&mut ebpf, names::PROGRAM, names::TRACEPOINT, &kernel_btf)?;
        // Also where stack copies are taken: a socket's copies are deleted
        // when it is destroyed.
        if options.track_closed_held || stacks {
            attach(
                &mut ebpf,
                names::DESTROY_PROGRAM,
                names::DESTROY_TRACEPOINT,
                &kernel_btf,
            )?;
        }
        if attach_recv {
            attach(
                &mut ebpf,
                names::RECV_PROGRAM,
                names::RECV_TRACEPOINT,
                &kernel_btf,
            )?;
        }
        if attach_send {
            attach(
                &mut ebpf,
                names::SEND_PROGRAM,
                names::SEND_TRACEPOINT,
                &kernel_btf,
            )?;
        }
        // Optional: where the kernel refuses fexit (or its prototype is new
        // to us) accepted sockets keep the listener's owner until they close.
        let accept_program = match btf.function_params(names::ACCEPT_FUNCTION) {
            Some(4) => Some(names::ACCEPT_PROGRAM_FOUR_PARAMS),
            Some(2) => Some(names::ACCEPT_PROGRAM_TWO_PARAMS),
            _ => None,
        };
        if options.count_owners {
            // A connect()ing socket keeps its owner in its storage.
            set_owners_stored(&mut ebpf, true)?;
        }
        let accept_hook = match accept_program {
            None => {
                notices.push(
                    "tcptrace: accepted sockets are attributed through their listener: inet_csk_accept has a prototype this version does not know".to_owned(),
                );
                false
            }
            Some(program) => {
                // Before attaching, so that no owner is stored unread.
                set_owners_stored(&mut ebpf, true)?;
                match attach_fexit(&mut ebpf, program, names::ACCEPT_FUNCTION, &kernel_btf) {
                    Ok(()) => true,
                    Err(error) => {
                        set_owners_stored(&mut ebpf, options.count_owners)?;
                        notices.push(format!(
                        "tcptrace: accepted sockets are attributed through their listener: this kernel refuses fexit on inet_csk_accept ({})",
                        first_line(&error.to_string())
                    ));
                        false
                    }
                }
            }
        };
        let events = take_map(&mut ebpf, names::EVENTS_MAP, |map| match map {
            aya::maps::Map::RingBuf(data) => Ok(data),
            _ => Err(MapError::InvalidName {
                name: names::EVENTS_MAP.into(),
            }),
        })?;
        let events = RingReader::new(events, ring_buffer_bytes).map_err(ProbeError::Ring)?;
        let counters = take_map(&mut ebpf, names::COUNTERS_MAP, PerCpuArray::try_from)?;
        let stack_copies = take_map(&mut ebpf, names::STACK_COPIES_MAP, AyaHashMap::try_from)?;
        let stack_targets = if stacks {
            Some(take_map(
                &mut ebpf,
                names::STACK_TARGETS_MAP,
                AyaHashMap::try_from,
            )?)
        } else {
            None
        };
        let python = if stacks {
            Some(PythonMaps {
                processes: take_map(&mut ebpf, names::PY_PROCESSES_MAP, AyaHashMap::try_from)?,
                frames: take_map(&mut ebpf, names::PY_FRAMES_MAP, AyaHashMap::try_from)?,
            })
        } else {
            None
        };
        let first_io = config.tcp_write_seq_offset != 0;
        let stack_moments = StackMoments {
            level: stack_level,
            budget: if stack_level == StackLevel::Sampled {
                options.stack_budget
            } else {
                0
            },
            accept: stacks && accept_hook,
            reads: attach_recv,
            writes: attach_send && first_io,
        };
        let owner_counts = if options.count_owners {
            Some(OwnerMaps {
                owners: take_map(&mut ebpf, names::OWNER_COUNTS_MAP, PerCpuHashMap::try_from)?,
                destinations: take_map(
                    &mut ebpf,
                    names::DESTINATIONS_MAP,
                    PerCpuHashMap::try_from,
                )?,
            })
        } else {
            None
        };
        let eof_reads = if attach_recv {
            Some(take_map(
                &mut ebpf,
                names::EOF_READS_MAP,
                AyaHashMap::try_from,
            )?)
        } else {
            None
        };
        Ok(Self {
            ebpf,
            events,
            counters,
            stack_copies,
            stack_targets,
            python,
            eof_reads,
            owner_counts,
            capacities,
            notices,
            accept_hook,
            stack_moments,
            python_frames: options.python_frames,
        })
    }

    /// Takes the stack copy of socket `cookie` out of the probe's map.
    pub fn take_stack_copy(&mut self, cookie: u64, slot: CopySlot) -> Option<Box<StackCopy>> {
        let key = StackCopyKey {
            cookie,
            slot: slot as u32,
            _reserved: 0,
        };
        let copy = Box::new(self.stack_copies.get(&key, 0).ok()?);
        // A copy still there when its socket closes for good is deleted by
        // the probe; here it only frees the slot sooner.
        let _ = self.stack_copies.remove(&key);
        Some(copy)
    }

    /// Takes the Python frames copied beside a stack copy out of the
    /// probe's map.
    pub fn take_python_frames(&mut self, cookie: u64, slot: CopySlot) -> Option<Box<PyFrames>> {
        let maps = self.python.as_mut()?;
        let key = StackCopyKey {
            cookie,
            slot: slot as u32,
            _reserved: 0,
        };
        let frames = Box::new(maps.frames.get(&key, 0).ok()?);
        let _ = maps.frames.remove(&key);
        Some(frames)
    }

    /// Has the probe walk the Python frames of `tgid`'s threads at each
    /// stack copy, as `process` says.
    pub fn describe_python(&mut self, tgid: u32, process: &PyProcess) -> Result<(), ProbeError> {
        let Some(maps) = self.python.as_mut() else {
            return Ok(());
        };
        maps.processes
            .insert(tgid, process, 0)
            .map_err(|source| ProbeError::Map {
                what: names::PY_PROCESSES_MAP,
                source,
            })
    }

    /// Stops walking the Python frames of a process (it exited).
    pub fn forget_python(&mut self, tgid: u32) {
        if let Some(maps) = self.python.as_mut() {
            let _ = maps.processes.remove(&tgid);
        }
    }

    /// Makes `targets` the processes whose new sockets are copied from a
    /// budget of their own; at most `MAX_STACK_TARGETS` of them.
    pub fn set_stack_targets(&mut self, targets: &HashSet<u32>) -> Result<(), ProbeError> {
        let Some(map) = self.stack_targets.as_mut() else {
            return Ok(());
        };
        let error = |source| ProbeError::Map {
            what: names::STACK_TARGETS_MAP,
            source,
        };
        let present: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for tgid in &present {
            if !targets.contains(tgid) {
                map.remove(tgid).map_err(error)?;
            }
        }
        for tgid in targets.iter().take(MAX_STACK_TARGETS) {
            if !present.contains(tgid) {
                map.insert(tgid, 1, 0).map_err(error)?;
            }
        }
        Ok(())
    }

    /// How many reads of socket `cookie` returned EOF in CLOSE_WAIT (a lower
    /// bound: see the probe); `None` without the receive hook or the entry.
    pub fn eof_reads(&self, cookie: u64) -> Option<u64> {
        self.eof_reads.as_ref()?.get(&cookie, 0).ok()
    }

    /// How full each bounded map is. Counting walks the keys (one syscall
    /// each): call it every few seconds, not per event. The owners live in
    /// each socket's storage, freed with it, and are not counted.
    pub fn map_occupancy(&self) -> Vec<Occupancy> {
        let capacities = &self.capacities;
        let mut maps = vec![Occupancy::new(
            "stack_copies",
            self.stack_copies.keys().filter(Result::is_ok).count(),
            Some(capacities.stack_copies as usize),
        )];
        if let Some(eof_reads) = &self.eof_reads {
            maps.push(Occupancy::new(
                "eof_reads",
                eof_reads.keys().filter(Result::is_ok).count(),
                Some(capacities.eof_reads as usize),
            ));
        }
        if let Some(targets) = &self.stack_targets {
            maps.push(Occupancy::new(
                "stack_targets",
                targets.keys().filter(Result::is_ok).count(),
                Some(MAX_STACK_TARGETS),
            ));
        }
        if let Some(counts) = &self.owner_counts {
            maps.push(Occupancy::new(
                "owner_counts",
                counts.owners.keys().filter(Result::is_ok).count(),
                Some(capacities.owner_keys as usize),
            ));
            maps.push(Occupancy::new(
                "destination_counts",
                counts.destinations.keys().filter(Result::is_ok).count(),
                Some(capacities.destination_keys as usize),
            ));
        }
        if let Some(python) = &self.python {
            maps.push(Occupancy::new(
                "python_processes",
                python.processes.keys().filter(Result::is_ok).count(),
                Some(capacities.python_processes as usize),
            ));
            maps.push(Occupancy::new(
                "python_frames",
                python.frames.keys().filter(Result::is_ok).count(),
                Some(capacities.python_frames as usize),
            ));
        }
        maps
    }

    /// Every per-owner entry, one value per CPU; empty unless
    /// `ProbeOptions::count_owners`.
    pub fn owner_counts(&self) -> Result<Vec<(OwnerKey, Vec<OwnerCounts>)>, ProbeError> {
        match &self.owner_counts {
            Some(maps) => per_cpu_entries(&maps.owners, "owner counts"),
            None => Ok(Vec::new()),
        }
    }

    /// Every destination entry, one value per CPU; empty unless
    /// `ProbeOptions::count_owners`.
    pub fn destination_counts(
        &self,
    ) -> Result<Vec<(DestinationKey, Vec<DestinationCounts>)>, ProbeError> {
        match &self.owner_counts {
            Some(maps) => per_cpu_entries(&maps.destinations, "destination counts"),
            None => Ok(Vec::new()),
        }
    }

    /// Deletes per-owner entries whose last counts were read and that
    /// nothing else frees before the map fills: those of processes that
    /// exited, and idle ones of ports no one listens on any more.
    pub fn forget_owner_keys(&mut self, keys: &[OwnerKey]) {
        let Some(maps) = &mut self.owner_counts else {
            return;
        };
        for key in keys {
            // Already gone (evicted) is as good.
            let _ = maps.owners.remove(key);
        }
    }

    /// Deletes the destination entries of processes that exited.
    pub fn forget_destinations(&mut self, keys: &[DestinationKey]) {
        let Some(maps) = &mut self.owner_counts else {
            return;
        };
        for key in keys {
            let _ = maps.destinations.remove(key);
        }
    }

    /// Hands every record waiting in the ring buffer to `each`; returns how many.
    pub fn drain(&mut self, each: impl FnMut(&[u8])) -> u64 {
        self.events.drain(each)
    }

    /// As `drain`, and then, while a record reserved before the call is
    /// still being written, drains again until it is (or `wait` passes):
    /// before the kernel's table is compared with the events, every event
    /// from before the table read must be in. A program writes a record in
    /// microseconds, but a guest's vCPU can be descheduled mid-run.
    pub fn drain_settled(&mut self, wait: Duration, mut each: impl FnMut(&[u8])) -> u64 {
        let target = self.events.produced();
        let deadline = Instant::now() + wait;
        let mut drained = self.events.drain(&mut each);
        while self.events.consumed() < target && Instant::now() < deadline {
            std::thread::yield_now();
            drained += self.events.drain(&mut each);
        }
        drained
    }

    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let read = |counter: Counter| -> Result<u64, ProbeError> {
            let per_cpu =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| ProbeError::Map {
                        what: "counters",
                        source,
                    })?;
            Ok(per_cpu.iter().sum())
        };
        debug_assert!(Counter::ALL.len() as u32 <= COUNTER_SLOTS);
        Ok(KernelCounters {
            ring_reserve_failed: read(Counter::RingReserveFailed)?,
            owner_insert_failed: read(Counter::OwnerInsertFailed)?,
            not_tcp: read(Counter::NotTcp)?,
            filtered_in_kernel: read(Counter::FilteredInKernel)?,
            socket_read_failed: read(Counter::SocketReadFailed)?,
            destroyed_reserve_failed: read(Counter::DestroyedReserveFailed)?,
            stack_reserve_failed: read(Counter::StackReserveFailed)?,
            stack_not_stored: read(Counter::StackNotStored)?,
            map_insert_failed: read(Counter::MapInsertFailed)?,
            stack_copied: read(Counter::StackCopied)?,
            stack_copied_targeted: read(Counter::StackCopiedTargeted)?,
            python_frames_copied: read(Counter::PythonFramesCopied)?,
            python_frames_ns: read(Counter::PythonFramesNs)?,
            stack_budget_refused: read(Counter::StackBudgetRefused)?,
            transitions_seen: read(Counter::TransitionsSeen)?,
            owner_count_lost: read(Counter::OwnerCountLost)?,
        })
    }

    /// The transition program's statistics.
    pub fn program_stats(&self) -> Result<ProgramStats, ProbeError> {
        self.stats_of(names::PROGRAM)
    }

    /// Statistics of every program attached, by name.
    pub fn all_program_stats(&self) -> Vec<(&'static str, ProgramStats)> {
        [
            names::PROGRAM,
            names::DESTROY_PROGRAM,
            names::RECV_PROGRAM,
            names::SEND_PROGRAM,
            names::ACCEPT_PROGRAM_FOUR_PARAMS,
            names::ACCEPT_PROGRAM_TWO_PARAMS,
        ]
        .into_iter()
        .filter_map(|name| Some((name, self.stats_of(name).ok()?)))
        .collect()
    }

    fn stats_of(&self, name: &'static str) -> Result<ProgramStats, ProbeError> {
        let program = self
            .ebpf
            .program(name)
            .ok_or(ProbeError::Missing("program"))?;
        // A program that was never loaded has no fd: it has no stats either.
        let fd = program.fd().map_err(ProbeError::Attach)?;
        let info = program_info(fd.as_fd().as_raw_fd()).map_err(ProbeError::Stats)?;
        Ok(ProgramStats {
            run_count: info.run_cnt,
            run_time: Duration::from_nanos(info.run_time_ns),
            recursion_misses: info.recursion_misses,
        })
    }
}

impl AsRawFd for Probe {
    /// The ring buffer's: readable when the probe has woken the reader.
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}

fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &str,
    btf: &aya::Btf,
) -> Result<(), ProbeError> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::Missing(program))?
        .try_into()
        .map_err(ProbeError::Attach)?;
    program.load(tracepoint, btf).map_err(ProbeError::Attach)?;
    program.attach().map_err(ProbeError::Attach)?;
    Ok(())
}

fn attach_fexit(
    ebpf: &mut Ebpf,
    program: &'static str,
    function: &str,
    btf: &aya::Btf,
) -> Result<(), ProgramError> {
    let Some(found) = ebpf.program_mut(program) else {
        return Err(ProgramError::UnexpectedProgramType);
    };
    let program: &mut FExit = found.try_into()?;
    program.load(function, btf)?;
    program.attach()?;
    Ok(())
}

/// A verifier log is many lines; a notice is one.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The host-wide `budget` (copies a second) as a bucket per CPU, each
/// holding a second's worth; targeted processes get a larger one.
fn set_budget(config: &mut ProbeConfig, budget: u32, cpus: u32) {
    let bucket = |per_second: u32| {
        let per_cpu = (per_second / cpus.max(1)).max(1);
        ((1_000_000_000 / per_cpu).max(1), per_cpu)
    };
    let budget = budget.max(1);
    (config.stack_copy_cost_ns, config.stack_burst_copies) = bucket(budget);
    (config.targeted_copy_cost_ns, config.targeted_burst_copies) =
        bucket(budget.saturating_mul(TARGETED_BUDGET_FACTOR));
}

/// Whether the probe looks for an owner in a socket's storage (see
/// `OWNERS_STORED` in the probe).
fn set_owners_stored(ebpf: &mut Ebpf, stored: bool) -> Result<(), ProbeError> {
    let name = names::OWNERS_STORED_MAP;
    let map = ebpf.map_mut(name).ok_or(ProbeError::Missing(name))?;
    let mut flag =
        Array::<_, u32>::try_from(map).map_err(|source| ProbeError::Map { what: name, source })?;
    flag.set(0, u32::from(stored), 0)
        .map_err(|source| ProbeError::Map { what: name, source })
}

fn per_cpu_entries<K: aya::Pod, V: aya::Pod>(
    map: &PerCpuHashMap<MapData, K, V>,
    what: &'static str,
) -> Result<Vec<(K, Vec<V>)>, ProbeError> {
    let mut entries = Vec::new();
    for entry in map.iter() {
        match entry {
            Ok((key, per_cpu)) => entries.push((key, per_cpu.iter().copied().collect())),
            // Evicted or deleted between the key and its lookup.
            Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(ProbeError::Map { what, source }),
        }
    }
    Ok(entries)
}

fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, ProbeError> {
    let map = ebpf.take_map(name).ok_or(ProbeError::Missing(name))?;
    convert(map).map_err(|source| ProbeError::Map { what: name, source })
}

/// aya does not expose `recursion_misses`, so ask the kernel directly.
fn program_info(fd: RawFd) -> std::io::Result<aya_obj::generated::bpf_prog_info> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is a plain C struct of integers; all-zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoByFd {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: the attr layout is the kernel's `info` member of union bpf_attr;
    // the kernel writes at most `info_len` bytes into `info`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw const attr,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(info)
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid resource id and pointer. Failure only matters on old
    // kernels, where loading then fails with its own error.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_sizes() {
        assert_eq!(validate_ring_buffer_bytes(4096).unwrap(), 4096);
        assert_eq!(validate_ring_buffer_bytes(1 << 24).unwrap(), 1 << 24);
        for bad in [0, 1024, 4095, 12288] {
            assert!(validate_ring_buffer_bytes(bad).is_err(), "{bad}");
        }
    }
}
