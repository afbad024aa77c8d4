//! User stacks to readable frames, while the process is still alive, on a
//! thread of their own.
//!
//! Stacks are resolved when their record arrives, not at report time, so a
//! process that leaks and then exits still has named frames. Resolution
//! reads ELF and DWARF files: it runs on its own thread, never on the one
//! that drains the ring buffer. Frames are kept per (pid, stack id) while
//! the process lives; the agent tells the worker which processes exited.
//!
//! Code in anonymous memory (JIT code, Python's perf trampolines) is named
//! from the process's perf map. A map may be written after the leak
//! (`jcmd PID Compiler.perfmap`): frames it did not name on arrival are
//! looked up again when a report shows them.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, Sender, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use blazesym::{
    Pid,
    symbolize::{
        CodeInfo, Input, Sym, Symbolized, Symbolizer,
        source::{Process, Source},
    },
};

use crate::{
    host::{
        perf_map::PerfMaps, python_names::PythonNamer, python_runtime::Detection,
        thread_priority::run_in_background, worker_queue::send_and_wait,
    },
    model::{
        python_frames::{CopiedPython, merge, shown_frames},
        stack::{Frame, Frames, NameSource, NamedStack, UnwoundStack, classify},
    },
};

/// Stacks waiting for the worker; past this, new ones are counted and left
/// unresolved rather than queued without bound.
const QUEUE_DEPTH: usize = 4096;
/// blazesym keeps every ELF file it opened; a fresh symbolizer after
/// processes exit lets the files of exited programs go, at most this often.
const SYMBOLIZER_RENEWAL: Duration = Duration::from_secs(60);

enum Job {
    Resolve {
        pid: u32,
        stack_id: u32,
        stack: UnwoundStack,
    },
    /// What a process is, for its Python frames: sent before any stack of
    /// it that carries them.
    Python {
        pid: u32,
        detection: Detection,
    },
    /// Look the frames of these stacks that no perf map named up again;
    /// answered when done.
    Refresh {
        stacks: Vec<(u32, u32)>,
        done: Sender<()>,
    },
    Forget(Vec<u32>),
    /// Answered once every job queued before it is done.
    Flush(Sender<()>),
}

#[derive(Clone, Debug)]
struct Named {
    stack: Frames,
    /// (frame index, address) of frames in anonymous memory that no perf
    /// map named yet.
    pending: Vec<(usize, u64)>,
    /// What the stack says of its Python frames, kept when it is renamed.
    python_note: Option<String>,
}

type Resolved = Arc<Mutex<HashMap<(u32, u32), Named>>>;

#[derive(Debug, Default)]
struct Counters {
    /// Stacks blazesym failed on: their frames are unnamed.
    failures: AtomicU64,
    /// Malformed perf-map lines skipped.
    perf_map_skipped_lines: AtomicU64,
}

/// The agent's side of the symbolizer thread.
pub struct SymbolizerWorker {
    jobs: SyncSender<Job>,
    resolved: Resolved,
    /// (pid, stack id) already sent: each stack is read from the probe and
    /// resolved once per process.
    requested: HashSet<(u32, u32)>,
    /// Process descriptions not yet taken by the worker (`describe_python`).
    undescribed: VecDeque<(u32, Detection)>,
    counters: Arc<Counters>,
}

impl SymbolizerWorker {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(QUEUE_DEPTH);
        let resolved = Resolved::default();
        let shared = resolved.clone();
        let counters = Arc::new(Counters::default());
        let worker_counters = counters.clone();
        // The thread ends when the sender is dropped.
        std::thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || work(queue, shared, worker_counters))?;
        Ok(Self {
            jobs,
            resolved,
            requested: HashSet::new(),
            undescribed: VecDeque::new(),
            counters,
        })
    }

    /// Whether stack `stack_id` of `pid` was handed to the worker already.
    pub fn is_requested(&self, pid: u32, stack_id: u32) -> bool {
        self.requested.contains(&(pid, stack_id))
    }

    /// Tells the worker what process `pid` is, for the Python frames of
    /// its stacks; before any of them is requested.
    pub fn describe_python(&mut self, pid: u32, detection: Detection) {
        self.undescribed.push_back((pid, detection));
        self.send_descriptions();
    }

    /// Descriptions a full queue refused go first, so that they still come
    /// before the stacks they describe.
    fn send_descriptions(&mut self) -> bool {
        while let Some((pid, detection)) = self.undescribed.pop_front() {
            if let Err(TrySendError::Full(Job::Python { pid, detection })) =
                self.jobs.try_send(Job::Python { pid, detection })
            {
                self.undescribed.push_front((pid, detection));
                return false;
            }
        }
        true
    }

    /// Queues a stack for resolution. False when the worker is too far
    /// behind to take it: the stack stays unnamed.
    pub fn request(&mut self, pid: u32, stack_id: u32, stack: UnwoundStack) -> bool {
        if !self.send_descriptions() {
            return false;
        }
        match self.jobs.try_send(Job::Resolve {
            pid,
            stack_id,
            stack,
        }) {
            Ok(()) => {
                self.requested.insert((pid, stack_id));
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Waits until every stack queued so far is resolved, at most `timeout`;
    /// false if the worker did not get there (a final report then shows
    /// those stacks as not taken).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        self.wait_for(Job::Flush(done), finished, timeout)
    }

    /// Looks the unnamed JIT frames of `stacks` up again in their processes'
    /// perf maps, now; waits for it at most `timeout` (a report built
    /// meanwhile shows the old names). For the stacks a report is about to
    /// show, once per report: a map written after the leak still names it.
    pub fn refresh(&self, stacks: impl IntoIterator<Item = (u32, u32)>, timeout: Duration) -> bool {
        let stacks: Vec<(u32, u32)> = {
            let resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
            let unique: HashSet<(u32, u32)> = stacks
                .into_iter()
                .filter(|key| resolved.get(key).is_some_and(|n| !n.pending.is_empty()))
                .collect();
            unique.into_iter().collect()
        };
        if stacks.is_empty() {
            return true;
        }
        let (done, finished) = std::sync::mpsc::channel();
        self.wait_for(Job::Refresh { stacks, done }, finished, timeout)
    }

    fn wait_for(&self, job: Job, finished: Receiver<()>, timeout: Duration) -> bool {
        send_and_wait(&self.jobs, job, finished, timeout)
    }

    /// The processes whose stacks are known.
    pub fn processes(&self) -> HashSet<u32> {
        self.requested.iter().map(|(pid, _)| *pid).collect()
    }

    /// The frames of a stack, once resolved.
    pub fn frames(&self, pid: u32, stack_id: u32) -> Option<Frames> {
        let resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved.get(&(pid, stack_id)).map(|n| n.stack.clone())
    }

    /// Stacks blazesym failed on (their frames are unnamed), since start.
    pub fn failures(&self) -> u64 {
        self.counters.failures.load(Ordering::Relaxed)
    }

    /// Malformed perf-map lines skipped, since start.
    pub fn perf_map_skipped_lines(&self) -> u64 {
        self.counters.perf_map_skipped_lines.load(Ordering::Relaxed)
    }

    /// Drops everything known about processes that exited.
    pub fn forget(&mut self, exited: &HashSet<u32>) {
        if exited.is_empty() {
            return;
        }
        self.requested.retain(|(pid, _)| !exited.contains(pid));
        // Best effort: a full queue only delays renewing the symbolizer.
        let _ = self
            .jobs
            .try_send(Job::Forget(exited.iter().copied().collect()));
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved.retain(|(pid, _), _| !exited.contains(pid));
    }

    /// Stacks remembered by the agent's side.
    pub fn entries(&self) -> usize {
        self.requested.len()
    }
}

/// The worker's own state: blazesym, and the perf maps it read.
struct Namer {
    symbolizer: Symbolizer,
    perf_maps: PerfMaps,
    pythons: HashMap<u32, PythonProcess>,
    counters: Arc<Counters>,
}

struct PythonProcess {
    detection: Detection,
    names: PythonNamer,
}

fn work(queue: Receiver<Job>, resolved: Resolved, counters: Arc<Counters>) {
    run_in_background();
    let mut namer = Namer {
        symbolizer: Symbolizer::new(),
        perf_maps: PerfMaps::default(),
        pythons: HashMap::new(),
        counters,
    };
    let mut renewed = Instant::now();
    let mut forgotten_since_renewal = false;
    while let Ok(job) = queue.recv() {
        match job {
            Job::Resolve {
                pid,
                stack_id,
                stack,
            } => {
                let named = namer.resolve(pid, stack);
                namer.publish_counts();
                let mut resolved = resolved.lock().unwrap_or_else(|e| e.into_inner());
                resolved.insert((pid, stack_id), named);
            }
            Job::Refresh { stacks, done } => {
                for key in stacks {
                    let entry = {
                        let resolved = resolved.lock().unwrap_or_else(|e| e.into_inner());
                        resolved.get(&key).cloned()
                    };
                    let Some(entry) = entry else { continue };
                    if let Some(renamed) = namer.rename(key.0, &entry) {
                        let mut resolved = resolved.lock().unwrap_or_else(|e| e.into_inner());
                        // Forgotten meanwhile: the process exited.
                        if let Some(slot) = resolved.get_mut(&key) {
                            *slot = renamed;
                        }
                    }
                }
                // Before the answer: whoever waits reads the count next.
                namer.publish_counts();
                let _ = done.send(());
            }
            Job::Python { pid, detection } => {
                namer.pythons.insert(
                    pid,
                    PythonProcess {
                        detection,
                        names: PythonNamer::default(),
                    },
                );
            }
            Job::Forget(pids) => {
                namer.perf_maps.forget(&pids);
                for pid in &pids {
                    namer.pythons.remove(pid);
                }
                forgotten_since_renewal |= !pids.is_empty();
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
        if forgotten_since_renewal && renewed.elapsed() >= SYMBOLIZER_RENEWAL {
            namer.symbolizer = Symbolizer::new();
            renewed = Instant::now();
            forgotten_since_renewal = false;
        }
    }
}

impl Namer {
    fn publish_counts(&self) {
        self.counters
            .perf_map_skipped_lines
            .store(self.perf_maps.skipped_lines, Ordering::Relaxed);
    }

    fn resolve(&mut self, pid: u32, stack: UnwoundStack) -> Named {
        let UnwoundStack {
            addresses,
            truncated,
            python,
        } = stack;
        // blazesym's own perf-map reader fails the whole stack on a map it
        // cannot parse (the JVM's `0x` addresses): ours is used instead.
        let source = Source::Process(Process {
            perf_map: false,
            ..Process::new(Pid::from(pid))
        });
        // Best effort: a failure leaves the frames unnamed, and is counted.
        let symbolized = self
            .symbolizer
            .symbolize(&source, Input::AbsAddr(&addresses))
            .unwrap_or_else(|_| {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            });
        let maps =
            Mappings::parse(&fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default());
        let mut frames = Vec::new();
        let mut pending = Vec::new();
        for (index, &address) in addresses.iter().enumerate() {
            let mapping = maps.find(address);
            let path = mapping.and_then(|m| m.path.as_deref());
            match symbolized.get(index) {
                Some(Symbolized::Sym(sym)) => push_symbol(&mut frames, sym, mapping),
                _ => {
                    let jit = mapping.is_none_or(Mapping::is_anonymous);
                    let name = if jit {
                        self.perf_maps
                            .of(pid)
                            .and_then(|map| map.lookup(address))
                            .map(str::to_owned)
                    } else {
                        None
                    };
                    match name {
                        Some(name) => frames.push(Frame {
                            kind: classify(Some(&name), path, NameSource::PerfMap),
                            text: name,
                            module: mapping.map(Mapping::module),
                        }),
                        None => {
                            if jit {
                                pending.push((frames.len(), address));
                            }
                            frames.push(Frame {
                                text: maps.module_offset(address),
                                module: mapping.map(Mapping::module),
                                kind: classify(None, path, NameSource::None),
                            });
                        }
                    }
                }
            }
        }
        let (frames, pending, python_note) = self.with_python(pid, frames, pending, python);
        Named {
            stack: Arc::new(NamedStack::with_python_note(
                frames,
                truncated,
                pid,
                python_note.clone(),
            )),
            pending,
            python_note,
        }
    }

    /// `frames` with the process's Python frames in their places, where
    /// they were copied; and what to say of them.
    fn with_python(
        &mut self,
        pid: u32,
        frames: Vec<Frame>,
        pending: Vec<(usize, u64)>,
        python: Option<CopiedPython>,
    ) -> (Vec<Frame>, Vec<(usize, u64)>, Option<String>) {
        let Some(process) = self.pythons.get_mut(&pid) else {
            return (frames, pending, None);
        };
        match (&process.detection, python) {
            (Detection::Python(runtime), Some(copied)) => {
                let named: Vec<(Frame, bool)> = shown_frames(runtime.layout.minor, &copied.frames)
                    .iter()
                    .map(|(frame, ends_run)| (process.names.name(pid, runtime, frame), *ends_run))
                    .collect();
                let (merged, moved) = merge(frames, named);
                let pending = pending
                    .into_iter()
                    .filter_map(|(index, address)| Some((moved.get(index).copied()??, address)))
                    .collect();
                (merged, pending, copied.walk.gap())
            }
            (Detection::Python(runtime), None) => (
                frames,
                pending,
                Some(format!(
                    "Python {} frames were not copied with this stack: tcptrace had not yet read this process's interpreter when it was copied (the process's first sockets), or the probe's table of Python processes was full",
                    runtime.version
                )),
            ),
            (Detection::Unsupported { version, why }, _) => (
                frames,
                pending,
                Some(format!(
                    "Python {version} frames are not read: {why}; on 3.12+, -X perf (or PYTHONPERFSUPPORT=1) names them"
                )),
            ),
            (Detection::NotPython | Detection::NotReady, _) => (frames, pending, None),
        }
    }

    /// `entry` with the frames its process's perf map names now; `None`
    /// when nothing new is named or the process is gone.
    fn rename(&mut self, pid: u32, entry: &Named) -> Option<Named> {
        if entry.pending.is_empty() || !Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        let map = self.perf_maps.of(pid)?;
        let mut frames = entry.stack.frames.clone();
        let mut pending = Vec::new();
        for &(index, address) in &entry.pending {
            match (map.lookup(address), frames.get_mut(index)) {
                (Some(name), Some(frame)) => {
                    frame.kind = classify(Some(name), None, NameSource::PerfMap);
                    frame.text = name.to_owned();
                }
                _ => pending.push((index, address)),
            }
        }
        (pending.len() < entry.pending.len()).then(|| Named {
            stack: Arc::new(NamedStack::with_python_note(
                frames,
                entry.stack.truncated.clone(),
                pid,
                entry.python_note.clone(),
            )),
            pending,
            python_note: entry.python_note.clone(),
        })
    }
}

/// `function (file:line)`, with inlined callees first, innermost first.
fn push_symbol(frames: &mut Vec<Frame>, sym: &Sym<'_>, mapping: Option<&Mapping>) {
    let path = mapping.and_then(|m| m.path.as_deref());
    let module = mapping.map(Mapping::module);
    for inlined in sym.inlined.iter().rev() {
        let place = place(inlined.code_info.as_ref());
        frames.push(Frame {
            text: format!("{}{place} [inlined]", inlined.name),
            module: module.clone(),
            kind: classify(Some(&inlined.name), path, NameSource::Symbols),
        });
    }
    frames.push(Frame {
        text: format!("{}{}", sym.name, place(sym.code_info.as_deref())),
        module,
        kind: classify(Some(&sym.name), path, NameSource::Symbols),
    });
}

/// ` (file:line)`, or nothing without debug info.
fn place(info: Option<&CodeInfo<'_>>) -> String {
    let Some(info) = info else {
        return String::new();
    };
    let file = info.file.to_string_lossy();
    match info.line {
        Some(line) => format!(" ({file}:{line})"),
        None => format!(" ({file})"),
    }
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    /// `None` for anonymous memory.
    path: Option<String>,
}

impl Mapping {
    /// Memory no file backs: where JITs and Python's perf trampolines put
    /// their code.
    fn is_anonymous(&self) -> bool {
        self.path.as_deref().is_none_or(|path| {
            path.starts_with("[anon") || path.starts_with("/memfd:") || path.starts_with("//anon")
        })
    }

    /// The file name, or `[anon]`.
    fn module(&self) -> String {
        match &self.path {
            Some(path) if !self.is_anonymous() => Path::new(path)
                .file_name()
                .map_or(path.clone(), |n| n.to_string_lossy().into_owned()),
            _ => "[anon]".to_owned(),
        }
    }
}

struct Mappings(Vec<Mapping>);

impl Mappings {
    fn parse(maps: &str) -> Self {
        let mut mappings = Vec::new();
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(_perms), Some(offset)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end), Ok(offset)) = (
                u64::from_str_radix(start, 16),
                u64::from_str_radix(end, 16),
                u64::from_str_radix(offset, 16),
            ) else {
                continue;
            };
            // Device and inode, then the path (which may hold spaces).
            let path = fields.nth(2).map(|first| {
                let rest: Vec<&str> = fields.collect();
                if rest.is_empty() {
                    first.to_owned()
                } else {
                    format!("{first} {}", rest.join(" "))
                }
            });
            mappings.push(Mapping {
                start,
                end,
                offset,
                path,
            });
        }
        Self(mappings)
    }

    fn find(&self, address: u64) -> Option<&Mapping> {
        self.0.iter().find(|m| (m.start..m.end).contains(&address))
    }

    /// `module+0xoffset`, or the bare address.
    fn module_offset(&self, address: u64) -> String {
        match self.find(address) {
            Some(m) => format!("{}+{:#x}", m.module(), address - m.start + m.offset),
            None => format!("{address:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unresolved_addresses_become_module_offsets() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 42 /usr/bin/server
55d0c0001000-55d0c0005000 r-xp 00001000 08:01 42 /usr/bin/server
7f0000000000-7f0000001000 rw-p 00000000 00:00 0
";
        let maps = Mappings::parse(maps);
        assert_eq!(maps.module_offset(0x55d0c0001234), "server+0x1234");
        assert_eq!(maps.module_offset(0x7f0000000010), "[anon]+0x10");
        assert_eq!(maps.module_offset(0x1), "0x1");
        assert!(maps.find(0x7f0000000010).unwrap().is_anonymous());
        assert!(!maps.find(0x55d0c0001234).unwrap().is_anonymous());
    }

    #[test]
    fn paths_with_spaces_and_memfd_jit_code() {
        let maps = Mappings::parse(
            "7f0000000000-7f0000001000 r-xp 00000000 00:01 9 /memfd:doublemapper (deleted)\n\
             7f0000001000-7f0000002000 r-xp 00000000 08:01 42 /opt/my app/server\n",
        );
        assert!(maps.find(0x7f0000000000).unwrap().is_anonymous());
        assert_eq!(maps.find(0x7f0000001000).unwrap().module(), "server");
    }

    /// Needs no root: this test process resolves one of its own functions.
    #[test]
    fn resolves_a_function_of_this_process_on_the_worker() {
        #[inline(never)]
        fn marker_function_for_symbolization() -> u64 {
            marker_function_for_symbolization as *const () as u64
        }
        let address = marker_function_for_symbolization();
        let pid = std::process::id();
        let mut worker = SymbolizerWorker::start().unwrap();
        assert!(worker.request(
            pid,
            1,
            UnwoundStack {
                addresses: vec![address],
                ..UnwoundStack::default()
            }
        ));
        assert!(worker.is_requested(pid, 1));
        assert!(worker.flush(Duration::from_secs(60)), "never resolved");
        let frames = worker.frames(pid, 1).expect("resolved once flushed");
        assert!(
            frames.frames[0]
                .text
                .contains("marker_function_for_symbolization"),
            "{frames:?}"
        );
        assert_eq!(
            frames.frames[0].kind,
            crate::model::stack::FrameKind::Program
        );
        worker.forget(&HashSet::from([pid]));
        assert!(worker.frames(pid, 1).is_none());
        assert!(!worker.is_requested(pid, 1));
        assert_eq!(worker.entries(), 0);
    }

    /// Needs no root: code at an address no file backs is named by a perf
    /// map this process writes only after the stack was resolved, once a
    /// report asks again.
    #[test]
    fn a_perf_map_written_after_the_stack_names_it_at_the_next_refresh() {
        let pid = std::process::id();
        // Never mapped (below mmap_min_addr): what blazesym cannot name.
        let jit = 0x1040;
        let path = format!("/tmp/perf-{pid}.map");
        let _ = fs::remove_file(&path);
        let mut worker = SymbolizerWorker::start().unwrap();
        assert!(worker.request(
            pid,
            7,
            UnwoundStack {
                addresses: vec![jit],
                truncated: Some("the 16 KiB stack copy ended".into()),
                python: None,
            }
        ));
        assert!(worker.flush(Duration::from_secs(60)));
        let before = worker.frames(pid, 7).unwrap();
        assert_eq!(
            before.frames[0].kind,
            crate::model::stack::FrameKind::Unresolved
        );
        // JDK 17's format, with a line it writes nothing like.
        fs::write(
            &path,
            "not a perf map line\n0x0000000000001000 0x0000000000000100 void com.acme.Leak.handleClient(java.net.Socket)\n",
        )
        .unwrap();
        let refreshed = worker.refresh([(pid, 7), (pid, 7), (pid, 99)], Duration::from_secs(60));
        let after = worker.frames(pid, 7).unwrap();
        let skipped = worker.perf_map_skipped_lines();
        fs::remove_file(&path).unwrap();
        assert!(refreshed);
        assert_eq!(
            after.frames[0].text,
            "void com.acme.Leak.handleClient(java.net.Socket)"
        );
        assert_eq!(after.frames[0].kind, crate::model::stack::FrameKind::Jit);
        assert_eq!(
            after.truncated.as_deref(),
            Some("the 16 KiB stack copy ended")
        );
        assert_eq!(skipped, 1);
    }
}
