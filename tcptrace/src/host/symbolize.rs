//! User stacks to readable frames, while the process is still alive, on a
//! thread of their own.
//!
//! Stacks are resolved when their record arrives, not at report time, so a
//! process that leaks and then exits still has named frames. Resolution
//! reads ELF and DWARF files: it runs on its own thread, never on the one
//! that drains the ring buffer. Frames are kept per (pid, stack id) while
//! the process lives; the agent tells the worker which processes exited.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
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

use crate::model::stack::Frames;

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
        addresses: Vec<u64>,
        truncated: Option<String>,
    },
    Forget(Vec<u32>),
    /// Answered once every job queued before it is done.
    Flush(std::sync::mpsc::Sender<()>),
}

type Resolved = Arc<Mutex<HashMap<(u32, u32), Frames>>>;

/// The agent's side of the symbolizer thread.
pub struct SymbolizerWorker {
    jobs: SyncSender<Job>,
    resolved: Resolved,
    /// (pid, stack id) already sent: each stack is read from the probe and
    /// resolved once per process.
    requested: HashSet<(u32, u32)>,
}

impl SymbolizerWorker {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(QUEUE_DEPTH);
        let resolved = Resolved::default();
        let shared = resolved.clone();
        // The thread ends when the sender is dropped.
        std::thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || work(queue, shared))?;
        Ok(Self {
            jobs,
            resolved,
            requested: HashSet::new(),
        })
    }

    /// Whether stack `stack_id` of `pid` was handed to the worker already.
    pub fn is_requested(&self, pid: u32, stack_id: u32) -> bool {
        self.requested.contains(&(pid, stack_id))
    }

    /// Queues a stack for resolution; `addresses` innermost first. False
    /// when the worker is too far behind to take it: the stack stays unnamed.
    pub fn request(
        &mut self,
        pid: u32,
        stack_id: u32,
        addresses: Vec<u64>,
        truncated: Option<String>,
    ) -> bool {
        match self.jobs.try_send(Job::Resolve {
            pid,
            stack_id,
            addresses,
            truncated,
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
        let deadline = Instant::now() + timeout;
        let mut job = Job::Flush(done);
        loop {
            match self.jobs.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return false,
            }
        }
        finished
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// The processes whose stacks are known.
    pub fn processes(&self) -> HashSet<u32> {
        self.requested.iter().map(|(pid, _)| *pid).collect()
    }

    /// The frames of a stack, once resolved.
    pub fn frames(&self, pid: u32, stack_id: u32) -> Option<Frames> {
        let resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved.get(&(pid, stack_id)).cloned()
    }

    /// Drops everything known about processes that exited; returns the
    /// stack ids no remaining process uses (the probe may free them).
    pub fn forget(&mut self, exited: &HashSet<u32>) -> Vec<u32> {
        if exited.is_empty() {
            return Vec::new();
        }
        let mut ids_of_exited = HashSet::new();
        self.requested.retain(|(pid, id)| {
            let gone = exited.contains(pid);
            if gone {
                ids_of_exited.insert(*id);
            }
            !gone
        });
        for (_, id) in &self.requested {
            ids_of_exited.remove(id);
        }
        // Best effort: a full queue only delays renewing the symbolizer.
        let _ = self
            .jobs
            .try_send(Job::Forget(exited.iter().copied().collect()));
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved.retain(|(pid, _), _| !exited.contains(pid));
        ids_of_exited.into_iter().collect()
    }

    /// Stacks remembered by the agent's side.
    pub fn entries(&self) -> usize {
        self.requested.len()
    }
}

fn work(queue: Receiver<Job>, resolved: Resolved) {
    let mut symbolizer = Symbolizer::new();
    let mut renewed = Instant::now();
    let mut forgotten_since_renewal = false;
    while let Ok(job) = queue.recv() {
        match job {
            Job::Resolve {
                pid,
                stack_id,
                addresses,
                truncated,
            } => {
                let mut frames = resolve(&symbolizer, pid, &addresses);
                if let Some(reason) = truncated {
                    frames.push(format!("(stack truncated: {reason})"));
                }
                let frames = Arc::new(frames);
                let mut resolved = resolved.lock().unwrap_or_else(|e| e.into_inner());
                resolved.insert((pid, stack_id), frames);
            }
            Job::Forget(pids) => {
                forgotten_since_renewal |= !pids.is_empty();
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
        if forgotten_since_renewal && renewed.elapsed() >= SYMBOLIZER_RENEWAL {
            symbolizer = Symbolizer::new();
            renewed = Instant::now();
            forgotten_since_renewal = false;
        }
    }
}

fn resolve(symbolizer: &Symbolizer, pid: u32, addresses: &[u64]) -> Vec<String> {
    let source = Source::Process(Process::new(Pid::from(pid)));
    // Resolution is best effort: never fail a report over a stack.
    let symbolized = symbolizer
        .symbolize(&source, Input::AbsAddr(addresses))
        .unwrap_or_default();
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut frames = Vec::new();
    for (index, &address) in addresses.iter().enumerate() {
        match symbolized.get(index) {
            Some(Symbolized::Sym(sym)) => push_symbol(&mut frames, sym),
            _ => frames.push(module_offset(&maps, address)),
        }
    }
    frames
}

/// `function (file:line)`, with inlined callees first, innermost first.
fn push_symbol(frames: &mut Vec<String>, sym: &Sym<'_>) {
    for inlined in sym.inlined.iter().rev() {
        let place = place(inlined.code_info.as_ref());
        frames.push(format!("{}{place} [inlined]", inlined.name));
    }
    frames.push(format!("{}{}", sym.name, place(sym.code_info.as_deref())));
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

/// `module+0xoffset` from `/proc/<pid>/maps`, or the bare address.
pub fn module_offset(maps: &str, address: u64) -> String {
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
        if (start..end).contains(&address) {
            let module = fields
                .nth(2)
                .map(|path| {
                    Path::new(path)
                        .file_name()
                        .map_or(path.to_owned(), |n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "[anon]".to_owned());
            return format!("{module}+{:#x}", address - start + offset);
        }
    }
    format!("{address:#x}")
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
        assert_eq!(module_offset(maps, 0x55d0c0001234), "server+0x1234");
        assert_eq!(module_offset(maps, 0x7f0000000010), "[anon]+0x10");
        assert_eq!(module_offset(maps, 0x1), "0x1");
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
        assert!(worker.request(pid, 1, vec![address], None));
        assert!(worker.is_requested(pid, 1));
        assert!(worker.flush(Duration::from_secs(60)), "never resolved");
        let frames = worker.frames(pid, 1).expect("resolved once flushed");
        assert!(
            frames[0].contains("marker_function_for_symbolization"),
            "{frames:?}"
        );
        assert_eq!(worker.forget(&HashSet::from([pid])), vec![1]);
        assert!(worker.frames(pid, 1).is_none());
        assert!(!worker.is_requested(pid, 1));
        assert_eq!(worker.entries(), 0);
    }
}
