//! Stack copies to return addresses: DWARF CFI unwinding in userspace, as
//! `perf --call-graph dwarf` does, so code built without frame pointers
//! (most release builds) still shows its callers.
//!
//! The probe copies the user registers and up to 8 KiB of the user stack
//! in the socket's own syscall. Here framehop walks that copy with each
//! module's `.eh_frame` (or `.debug_frame`), read from the process's own
//! files; code with no unwind info (JIT code, Go) is walked by its frame
//! pointers. Unwinding reads ELF files, so it runs on its own thread.

use std::{
    cell::Cell,
    collections::{HashMap, HashSet},
    fs,
    ops::Range,
    sync::{
        Arc,
        mpsc::{Receiver, Sender, SyncSender, TrySendError, channel, sync_channel},
    },
    time::Duration,
};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use object::{Object, ObjectSection, ObjectSegment};
use tcptrace_common::StackCopy;

use crate::{
    host::{
        process_memory::ProcessMemory, thread_priority::run_in_background,
        worker_queue::send_and_wait,
    },
    model::{python_frames::CopiedPython, stack::UnwoundStack},
};

/// Frames past this are cut (and said to be).
const MAX_FRAMES: usize = 128;
/// The default size of a thread's stack (glibc's, the main thread's
/// RLIMIT_STACK): an address further above the copy is no frame of it.
const STACK_REACH: u64 = 8 << 20;
/// Copies waiting for the thread. The agent queues no more than
/// `QUEUE_DEPTH - CONTROL_SLOTS` (the rest stay in the probe's map until
/// there is room), so forget and flush jobs find a slot too.
const QUEUE_DEPTH: usize = 256;
const CONTROL_SLOTS: usize = 16;

/// What a copy is unwound for: the caller's own key comes back with it.
pub type CopyKey = (u64, u32);

enum Job {
    Unwind {
        key: CopyKey,
        copy: Box<StackCopy>,
        python: Option<CopiedPython>,
    },
    Forget(Vec<u32>),
    Flush(Sender<()>),
}

/// The agent's side of the unwinding thread.
pub struct UnwindWorker {
    jobs: SyncSender<Job>,
    done: Receiver<(CopyKey, u32, UnwoundStack)>,
    /// Copies queued and not yet taken back by `finished`.
    in_flight: Cell<usize>,
}

impl UnwindWorker {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(QUEUE_DEPTH);
        let (results, done) = channel();
        std::thread::Builder::new()
            .name("unwind".into())
            .spawn(move || work(queue, results))?;
        Ok(Self {
            jobs,
            done,
            in_flight: Cell::new(0),
        })
    }

    /// Whether a copy queued now would be taken: when not, the caller
    /// leaves it where it is and asks again after `finished`.
    pub fn has_room(&self) -> bool {
        self.in_flight.get() < QUEUE_DEPTH - CONTROL_SLOTS
    }

    /// Queues a copy, with the Python frames copied beside it; false when
    /// the thread is too far behind to take it.
    pub fn request(
        &self,
        key: CopyKey,
        copy: Box<StackCopy>,
        python: Option<CopiedPython>,
    ) -> bool {
        match self.jobs.try_send(Job::Unwind { key, copy, python }) {
            Ok(()) => {
                self.in_flight.set(self.in_flight.get() + 1);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// The stacks unwound since the last call: (key, process, stack).
    pub fn finished(&self) -> Vec<(CopyKey, u32, UnwoundStack)> {
        let finished: Vec<_> = self.done.try_iter().collect();
        self.in_flight
            .set(self.in_flight.get().saturating_sub(finished.len()));
        finished
    }

    /// Drops the modules of processes that exited.
    pub fn forget(&self, pids: &HashSet<u32>) {
        if !pids.is_empty() {
            // Best effort: a full queue keeps the modules a little longer.
            let _ = self
                .jobs
                .try_send(Job::Forget(pids.iter().copied().collect()));
        }
    }

    /// Waits until every copy queued so far is unwound, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, finished) = channel();
        send_and_wait(&self.jobs, Job::Flush(done), finished, timeout)
    }
}

fn work(queue: Receiver<Job>, results: Sender<(CopyKey, u32, UnwoundStack)>) {
    run_in_background();
    let mut processes = Processes::default();
    while let Ok(job) = queue.recv() {
        match job {
            Job::Unwind { key, copy, python } => {
                let mut stack = processes.unwind(&copy);
                stack.python = python;
                if results.send((key, copy.tgid, stack)).is_err() {
                    return;
                }
            }
            Job::Forget(pids) => processes.forget(&pids),
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

type SectionData = Arc<[u8]>;

/// One process's modules, rebuilt when its mappings change.
struct ProcessModules {
    maps: String,
    /// The files whose sections `unwinder` holds.
    file_keys: Vec<FileKey>,
    files: Vec<Range<u64>>,
    unwinder: UnwinderX86_64<SectionData>,
    cache: CacheX86_64,
}

#[derive(Default)]
struct Processes {
    by_pid: HashMap<u32, ProcessModules>,
    /// Unwind sections per file, shared by every process mapping it.
    files: HashMap<FileKey, Option<Arc<FileSections>>>,
}

/// A file as the kernel names it in /proc/PID/maps: device and inode.
type FileKey = (String, u64);

struct FileSections {
    /// Only the range: framehop reads code bytes just to unwind a first
    /// frame caught mid-prologue, and a syscall's first frame never is; a
    /// JVM's or Node's text is tens of MiB.
    text_svma: Option<Range<u64>>,
    eh_frame: Option<(Range<u64>, SectionData)>,
    eh_frame_hdr: Option<(Range<u64>, SectionData)>,
    debug_frame: Option<SectionData>,
    got: Option<Range<u64>>,
    /// (file range, p_vaddr) of each executable loadable segment: maps an
    /// executable mapping's file offset to the addresses the file states.
    segments: Vec<(Range<u64>, u64)>,
}

impl Processes {
    fn unwind(&mut self, copy: &StackCopy) -> UnwoundStack {
        let pid = copy.tgid;
        let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return UnwoundStack {
                addresses: vec![copy.ip],
                truncated: Some("the process exited before its stack was unwound".to_owned()),
                python: None,
            };
        };
        let stale = self.by_pid.get(&pid).is_none_or(|known| known.maps != maps);
        if stale {
            let (unwinder, file_keys) = self.build(pid, &maps);
            let files = executable_mappings(&maps)
                .into_iter()
                .map(|m| m.range)
                .collect();
            self.by_pid.insert(
                pid,
                ProcessModules {
                    maps,
                    file_keys,
                    files,
                    unwinder,
                    cache: CacheX86_64::new(),
                },
            );
        }
        let Some(process) = self.by_pid.get_mut(&pid) else {
            return UnwoundStack::default();
        };
        let mut code = JitCode {
            memory: ProcessMemory::of(pid),
            files: &process.files,
            known: HashMap::new(),
        };
        unwind_copy(&process.unwinder, &mut process.cache, &mut code, copy)
    }

    fn build(&mut self, pid: u32, maps: &str) -> (UnwinderX86_64<SectionData>, Vec<FileKey>) {
        let mut unwinder = UnwinderX86_64::new();
        let mut file_keys = Vec::new();
        for mapping in executable_mappings(maps) {
            let key = (mapping.device.clone(), mapping.inode);
            file_keys.push(key.clone());
            let sections = self
                .files
                .entry(key)
                .or_insert_with(|| read_sections(pid, &mapping).map(Arc::new))
                .clone();
            let Some(sections) = sections else { continue };
            let Some(bias) = load_bias(&sections.segments, &mapping) else {
                continue;
            };
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: sections.text_svma.clone(),
                eh_frame_svma: sections.eh_frame.as_ref().map(|(r, _)| r.clone()),
                eh_frame: sections.eh_frame.as_ref().map(|(_, d)| d.clone()),
                eh_frame_hdr_svma: sections.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
                eh_frame_hdr: sections.eh_frame_hdr.as_ref().map(|(_, d)| d.clone()),
                debug_frame: sections.debug_frame.clone(),
                got_svma: sections.got.clone(),
                ..Default::default()
            };
            unwinder.add_module(Module::new(
                mapping.path.clone(),
                mapping.range.clone(),
                bias,
                info,
            ));
        }
        (unwinder, file_keys)
    }

    /// Drops exited processes and the files no remaining process maps.
    fn forget(&mut self, pids: &[u32]) {
        for pid in pids {
            self.by_pid.remove(pid);
        }
        let used: HashSet<&FileKey> = self
            .by_pid
            .values()
            .flat_map(|process| &process.file_keys)
            .collect();
        self.files.retain(|key, _| used.contains(key));
    }
}

/// Python 3.12's perf trampoline (`sub $8,%rsp; call *%rcx; add $8,%rsp;
/// ret`), one per Python function named in its perf map. It keeps no
/// frame pointer and has no unwind info, so neither CFI nor the
/// frame-pointer fallback can step out of it; its frame is 16 bytes.
const PYTHON_TRAMPOLINE: [u8; 11] = [
    0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83, 0xc4, 0x08, 0xc3,
];
/// Where the return address sits in it: after the call.
const PYTHON_TRAMPOLINE_RETURN: u64 = 6;

/// Code bytes of the process, for frames outside any file: read from its
/// memory, since JIT code exists nowhere else.
pub trait CodeReader {
    fn is_python_trampoline(&mut self, return_address: u64) -> bool;
    /// Whether `address` is in code mapped from a file (which has unwind
    /// info or frame pointers), rather than JIT code.
    fn is_file_backed(&self, address: u64) -> bool;
}

/// Reads the process's JIT code, remembering answers per address.
struct JitCode<'a> {
    memory: ProcessMemory,
    /// Code mapped from files: never a trampoline, and not read.
    files: &'a [Range<u64>],
    known: HashMap<u64, bool>,
}

impl CodeReader for JitCode<'_> {
    fn is_file_backed(&self, address: u64) -> bool {
        self.files.iter().any(|file| file.contains(&address))
    }

    fn is_python_trampoline(&mut self, return_address: u64) -> bool {
        if self.is_file_backed(return_address) {
            return false;
        }
        let memory = self.memory;
        *self.known.entry(return_address).or_insert_with(|| {
            let Some(start) = return_address.checked_sub(PYTHON_TRAMPOLINE_RETURN) else {
                return false;
            };
            let mut code = [0u8; PYTHON_TRAMPOLINE.len()];
            memory
                .read(start, &mut code)
                .is_ok_and(|()| code == PYTHON_TRAMPOLINE)
        })
    }
}

/// Walks a copy. Reads outside the copy end the walk: that is where the
/// copy, not the stack, ended, and the stack is then said to be cut.
pub fn unwind_copy(
    unwinder: &UnwinderX86_64<SectionData>,
    cache: &mut CacheX86_64,
    code: &mut impl CodeReader,
    copy: &StackCopy,
) -> UnwoundStack {
    let len = (copy.len as usize).min(copy.stack.len());
    let stack = &copy.stack[..len];
    let base = copy.base;
    let mut read_stack = |address: u64| -> Result<u64, ()> {
        let offset = address.checked_sub(base).ok_or(())? as usize;
        let bytes = stack
            .get(offset..offset.checked_add(8).ok_or(())?)
            .ok_or(())?;
        Ok(u64::from_ne_bytes(bytes.try_into().map_err(|_| ())?))
    };
    let mut regs = UnwindRegsX86_64::new(copy.ip, copy.sp, copy.bp);
    let mut frame = FrameAddress::InstructionPointer(copy.ip);
    let mut addresses = Vec::new();
    let truncated = loop {
        if addresses.len() >= MAX_FRAMES {
            break Some(format!("more than {MAX_FRAMES} frames"));
        }
        addresses.push(frame.address_for_lookup());
        let step = match frame {
            FrameAddress::ReturnAddress(address) if code.is_python_trampoline(address.get()) => {
                let sp = regs.sp() + 16;
                regs.set_sp(sp);
                read_stack(sp - 8)
                    .map(Some)
                    .map_err(|()| framehop::Error::CouldNotReadStack(sp - 8))
            }
            _ => unwinder.unwind_frame(frame, &mut regs, cache, &mut read_stack),
        };
        match step {
            Ok(Some(return_address)) => match FrameAddress::from_return_address(return_address) {
                Some(next) => frame = next,
                None => break ended_at(code, frame),
            },
            Ok(None) => break ended_at(code, frame),
            Err(framehop::Error::CouldNotReadStack(address)) => {
                // Past a full copy, and near it, the stack goes on; past a
                // short one (the stack ended, or the thread pointer), or
                // far away (a register that a JIT used for data, taken for
                // a frame pointer), no frame can be.
                let past_copy = address >= base + len as u64
                    && len == copy.stack.len()
                    && address - base < STACK_REACH;
                break Some(if past_copy {
                    format!(
                        "the {} KiB stack copy ended before the outermost frame",
                        len / 1024
                    )
                } else {
                    format!("a frame pointed outside the stack ({address:#x})")
                });
            }
            Err(error) => break Some(format!("unwinding stopped: {error}")),
        }
    };
    UnwoundStack {
        addresses,
        truncated,
        python: None,
    }
}

/// A walk that ends cleanly in a file's code reached the outermost frame
/// (`_start`, a thread's start, `runtime.goexit`). One that ends in JIT
/// code only met a frame pointer of 0, which such code may well not keep.
fn ended_at(code: &impl CodeReader, frame: FrameAddress) -> Option<String> {
    let address = frame.address_for_lookup();
    (!code.is_file_backed(address)).then(|| {
        format!("the walk ended in code with no unwind info at {address:#x} (JIT code without frame pointers?)")
    })
}

/// One executable, file-backed mapping of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub range: Range<u64>,
    pub offset: u64,
    pub device: String,
    pub inode: u64,
    pub path: String,
}

pub fn executable_mappings(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let device = fields.next()?.to_owned();
            let inode = fields.next()?.parse::<u64>().ok()?;
            let path = fields.collect::<Vec<_>>().join(" ");
            if !perms.contains('x') || inode == 0 || !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let range = u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?;
            Some(Mapping {
                range,
                offset,
                device,
                inode,
                path,
            })
        })
        .collect()
}

/// What to add to an address the file states to get where it is mapped.
/// `segments` are the executable ones: the kernel maps a segment from the
/// page holding its first byte, so a mapping's offset may lie up to a page
/// before the segment's own (lld leaves the two unaligned).
pub fn load_bias(segments: &[(Range<u64>, u64)], mapping: &Mapping) -> Option<u64> {
    let page = 4096;
    let (file_range, vaddr) = segments.iter().find(|(file_range, _)| {
        (file_range.start & !(page - 1)..file_range.end).contains(&mapping.offset)
    })?;
    let stated = if mapping.offset >= file_range.start {
        vaddr.checked_add(mapping.offset - file_range.start)?
    } else {
        vaddr.checked_sub(file_range.start - mapping.offset)?
    };
    mapping.range.start.checked_sub(stated)
}

/// A mapped file's bytes, read through the process's own view of it (its
/// mount namespace; still there if the file was replaced).
pub fn read_mapped_file(pid: u32, mapping: &Mapping) -> Option<Vec<u8>> {
    let through_map_files = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.range.start, mapping.range.end
    );
    fs::read(&through_map_files)
        .or_else(|_| fs::read(format!("/proc/{pid}/root{}", mapping.path)))
        .ok()
}

/// (file range, p_vaddr) of each executable loadable segment: what
/// `load_bias` maps an executable mapping's offset with.
pub fn executable_segments(file: &object::File<'_>) -> Vec<(Range<u64>, u64)> {
    file.segments()
        .filter(|segment| match segment.flags() {
            object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
            _ => false,
        })
        .filter_map(|segment| {
            let (offset, size) = segment.file_range();
            (size > 0).then(|| (offset..offset + size, segment.address()))
        })
        .collect()
}

/// The unwind sections of a mapped file.
fn read_sections(pid: u32, mapping: &Mapping) -> Option<FileSections> {
    let data = read_mapped_file(pid, mapping)?;
    let file = object::File::parse(&*data).ok()?;
    let section = |name: &str| -> Option<(Range<u64>, SectionData)> {
        let section = file.section_by_name(name)?;
        let bytes = section.uncompressed_data().ok()?;
        let start = section.address();
        Some((start..start + section.size(), Arc::from(&*bytes)))
    };
    let segments = executable_segments(&file);
    Some(FileSections {
        text_svma: file
            .section_by_name(".text")
            .map(|s| s.address()..s.address() + s.size()),
        eh_frame: section(".eh_frame"),
        eh_frame_hdr: section(".eh_frame_hdr"),
        debug_frame: section(".debug_frame").map(|(_, data)| data),
        got: file
            .section_by_name(".got")
            .map(|s| s.address()..s.address() + s.size()),
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 42 /usr/bin/server
55d0c0001000-55d0c0005000 r-xp 00001000 08:01 42 /usr/bin/server
7f0000000000-7f0000001000 rwxp 00000000 00:00 0
7f1000000000-7f1000100000 r-xp 00028000 08:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn only_executable_file_mappings_are_modules() {
        let mappings = executable_mappings(MAPS);
        assert_eq!(mappings.len(), 2, "{mappings:?}");
        assert_eq!(mappings[0].path, "/usr/bin/server");
        assert_eq!(mappings[0].range, 0x55d0c0001000..0x55d0c0005000);
        assert_eq!(mappings[1].offset, 0x28000);
        assert_eq!(mappings[1].inode, 77);
    }

    #[test]
    fn the_bias_maps_the_stated_address_of_the_mapped_offset() {
        let mapping = &executable_mappings(MAPS)[1];
        // libc: the text segment at file offset 0x28000 states 0x28000,
        // mapped at 0x7f1000000000: the file's address 0 is 0x28000 below.
        let segments = vec![(0x28000..0x1a0000, 0x28000)];
        assert_eq!(
            load_bias(&segments, mapping),
            Some(0x7f1000000000 - 0x28000)
        );
        // lld: the segment starts mid-page (offset 0x28940, address
        // 0x29940); the mapping begins at the page holding it, 0x28000,
        // which is address 0x29000.
        let unaligned = vec![(0x28940..0x1a0000, 0x29940)];
        assert_eq!(
            load_bias(&unaligned, mapping),
            Some(0x7f1000000000 - 0x29000)
        );
        // A second mapping of one segment, 0x8000 into it.
        let before = vec![(0x20000..0x1a0000, 0x20000)];
        assert_eq!(load_bias(&before, mapping), Some(0x7f1000000000 - 0x28000));
        assert_eq!(load_bias(&[], mapping), None);
    }

    struct Trampolines(Vec<u64>);

    impl CodeReader for Trampolines {
        fn is_python_trampoline(&mut self, return_address: u64) -> bool {
            self.0.contains(&return_address)
        }

        /// Every address in these tests is JIT code, but the last one.
        fn is_file_backed(&self, address: u64) -> bool {
            address == 0x2fff
        }
    }

    fn zeroed_copy() -> Box<StackCopy> {
        // SAFETY: all-zero bytes are a valid StackCopy (integers only).
        unsafe { Box::new_zeroed().assume_init() }
    }

    #[test]
    fn copies_past_the_queue_wait_their_turn_and_control_jobs_still_fit() {
        // A thread that takes no job yet: nothing leaves the queue.
        let (jobs, queue) = sync_channel(QUEUE_DEPTH);
        let (results, done) = channel();
        let worker = UnwindWorker {
            jobs,
            done,
            in_flight: Cell::new(0),
        };
        let mut queued = 0u64;
        while worker.has_room() {
            assert!(worker.request((queued, 0), zeroed_copy(), None));
            queued += 1;
        }
        assert_eq!(queued as usize, QUEUE_DEPTH - CONTROL_SLOTS);
        // What used to be lost here now waits; forget and flush still fit.
        worker.forget(&HashSet::from([7]));
        let (flushed, _) = channel();
        assert!(worker.jobs.try_send(Job::Flush(flushed)).is_ok());

        let Ok(Job::Unwind { key, copy, .. }) = queue.recv() else {
            panic!("the first job is the first copy");
        };
        results
            .send((key, copy.tgid, UnwoundStack::default()))
            .unwrap();
        assert_eq!(worker.finished().len(), 1);
        assert!(worker.has_room());
    }

    /// Writes `value` at `offset` bytes above the copy's base.
    fn put(copy: &mut StackCopy, offset: usize, value: u64) {
        copy.stack[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    /// JIT code with frame pointers calls through a Python trampoline,
    /// whose 16-byte frame has neither: it is stepped over by its own rule.
    #[test]
    fn steps_over_a_python_trampoline_that_keeps_no_frame_pointer() {
        let mut copy = zeroed_copy();
        copy.base = 0x7ffd_0000_0000;
        copy.len = 4096;
        copy.ip = 0x1000;
        copy.sp = copy.base + 0x80;
        // Innermost frame: [bp] saved bp, [bp + 8] return address into
        // the trampoline, whose frame then is 16 bytes above bp + 16.
        copy.bp = copy.base + 0x100;
        put(&mut copy, 0x100, 0);
        put(&mut copy, 0x108, 0x2006);
        put(&mut copy, 0x118, 0x3000);
        let unwinder = UnwinderX86_64::new();
        let mut cache = CacheX86_64::new();
        let stack = unwind_copy(&unwinder, &mut cache, &mut Trampolines(vec![0x2006]), &copy);
        assert_eq!(stack.addresses, vec![0x1000, 0x2005, 0x2fff], "{stack:?}");
        assert_eq!(stack.truncated, None);

        // Not a trampoline: the frame-pointer rule meets the null frame
        // pointer the JIT code left, and the stack says it may be cut.
        let mut cache = CacheX86_64::new();
        let stack = unwind_copy(&unwinder, &mut cache, &mut Trampolines(vec![]), &copy);
        assert_eq!(stack.addresses, vec![0x1000, 0x2005], "{stack:?}");
        assert!(
            stack
                .truncated
                .as_deref()
                .is_some_and(|why| why.contains("no unwind info at 0x2005")),
            "{stack:?}"
        );
    }

    #[test]
    fn a_stack_longer_than_the_copy_says_where_the_copy_ended() {
        let walk = |len: usize, bp_offset: u64| {
            let mut copy = zeroed_copy();
            copy.base = 0x7ffd_0000_0000;
            copy.len = len as u32;
            copy.ip = 0x1000;
            copy.sp = copy.base + 0x80;
            copy.bp = copy.base + bp_offset;
            let unwinder = UnwinderX86_64::new();
            let mut cache = CacheX86_64::new();
            unwind_copy(&unwinder, &mut cache, &mut Trampolines(vec![]), &copy)
        };
        // The frame chain leads just past a full copy: the stack goes on.
        let stack = walk(copy_bytes(), copy_bytes() as u64 - 8);
        assert_eq!(stack.addresses, vec![0x1000]);
        assert_eq!(
            stack.truncated.as_deref(),
            Some("the 8 KiB stack copy ended before the outermost frame")
        );
        // A copy cut short held the whole stack: past it is no frame.
        let stack = walk(4096, 0xff8);
        assert_eq!(
            stack.truncated.as_deref(),
            Some("a frame pointed outside the stack (0x7ffd00001000)")
        );
        // Nor is an address far above a full copy (JIT code's rbp holding
        // an object).
        let stack = walk(copy_bytes(), 0x1000_0000);
        assert_eq!(
            stack.truncated.as_deref(),
            Some("a frame pointed outside the stack (0x7ffd10000000)")
        );
    }

    fn copy_bytes() -> usize {
        tcptrace_common::STACK_COPY_BYTES
    }

    /// This test process unwinds a copy of its own stack, taken as the
    /// probe takes one: registers and the bytes above the stack pointer.
    #[test]
    #[inline(never)]
    fn unwinds_a_copy_of_this_threads_stack() {
        let copy = copy_own_stack();
        let mut processes = Processes::default();
        let stack = processes.unwind(&copy);
        assert!(stack.addresses.len() >= 3, "{stack:?}");
        // This test function's caller chain passes through the test
        // harness: some return address must fall in this binary's text.
        let own = executable_mappings(&fs::read_to_string("/proc/self/maps").unwrap());
        let exe = fs::read_link("/proc/self/exe").unwrap();
        let in_exe = stack.addresses.iter().skip(1).filter(|a| {
            own.iter()
                .any(|m| m.range.contains(a) && exe.to_string_lossy() == m.path)
        });
        assert!(in_exe.count() >= 2, "{stack:?}");
        // Once the process is gone, so are the files only it mapped.
        assert!(!processes.files.is_empty());
        processes.forget(&[std::process::id()]);
        assert!(processes.by_pid.is_empty() && processes.files.is_empty());
    }

    /// Registers and stack bytes of this very frame: the registers are read
    /// here, and nothing above this frame's stack pointer changes while the
    /// bytes are copied (calls only write below it), so the copy is what
    /// the probe would have taken at this instruction.
    #[inline(never)]
    fn copy_own_stack() -> Box<StackCopy> {
        // Zeroed on the heap: 16 KiB on this frame would fill the copy.
        // SAFETY: all-zero bytes are a valid StackCopy (integers only).
        let mut copy: Box<StackCopy> = unsafe { Box::new_zeroed().assume_init() };
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, touches no memory.
        unsafe {
            std::arch::asm!("lea {0}, [rip]", "mov {1}, rsp", "mov {2}, rbp",
                out(reg) ip, out(reg) sp, out(reg) bp);
        }
        copy.tgid = std::process::id();
        (copy.ip, copy.sp, copy.bp) = (ip, sp, bp);
        copy.base = sp & !4095;
        let start = copy.base as usize;
        let len = (mapping_end(start) - start).min(copy.stack.len());
        // SAFETY: [start, start + len) lies inside this thread's mapped stack.
        let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
        copy.stack[..len].copy_from_slice(bytes);
        copy.len = len as u32;
        copy
    }

    /// The end of the mapping holding `address`.
    fn mapping_end(address: usize) -> usize {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|line| {
                let (start, end) = line.split_whitespace().next()?.split_once('-')?;
                Some((
                    usize::from_str_radix(start, 16).ok()?,
                    usize::from_str_radix(end, 16).ok()?,
                ))
            })
            .find(|(start, end)| (*start..*end).contains(&address))
            .map(|(_, end)| end)
            .unwrap()
    }
}
