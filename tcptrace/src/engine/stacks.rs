//! The code paths of live sockets: from the probe's stack copies, through
//! unwinding, to names.
//!
//! The probe copies a socket's user stack in the socket's own syscall and
//! keeps the copy in its map. Only the copies of sockets still leaking
//! after `COPY_READ_DELAY` are read and unwound: a healthy socket closes
//! within milliseconds of its EOF read, and the probe deletes its copy when
//! the kernel destroys it. Each socket's stack is its own: two sockets
//! share a stack id only when their unwound addresses are the same.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tcptrace_common::{CopySlot, StackKind};

use crate::{
    host::{
        python_runtime::Detection, python_watch::PythonWatch, symbolize::SymbolizerWorker,
        unwind::UnwindWorker,
    },
    model::{
        leak_report::{ProbeHealth, SocketStacks},
        stack::{NamedStack, UnwoundStack},
        stack_gaps::OriginMoment,
        transition::{StackCopyFailure, StackSample},
    },
    probe::{
        loader::{Probe, StackLevel},
        records::python_frames,
    },
};

/// A copy younger than this is left in the probe: its socket is probably
/// about to close, and then the probe deletes it unread.
const COPY_READ_DELAY: Duration = Duration::from_millis(500);
/// How long a final report waits for stacks still being unwound or named.
pub(crate) const FINAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Live sockets are not capped by number: they are freed at CLOSE or
/// destroy and reconciled with the kernel's table, so they follow the
/// host's own socket count. This is only a guard against a host whose table
/// cannot be read at all for a long time.
pub(crate) const MAX_SOCKET_STACKS: usize = 1 << 21;

/// Where one socket's stack of one kind is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// In the probe's copy map since `taken_ns`.
    Copied { taken_ns: u64 },
    /// With the unwinding thread.
    Unwinding,
    /// Unwound, by (process, stack id).
    Unwound(u32, u32),
    /// No copy, and why: the probe could not take or keep one, or the
    /// agent could not.
    Lost(&'static str),
}

#[derive(Clone, Copy, Debug, Default)]
struct StackRefs {
    /// Which moment the origin copy is of, and where it is.
    origin: Option<(StackKind, Slot)>,
    eof: Option<Slot>,
    /// The newest record's time: a socket listed by no table read begun
    /// after it is gone (its CLOSE was lost).
    seen_ns: u64,
}

impl StackRefs {
    /// The kind of copy `slot` holds, and where it is.
    fn in_slot(&mut self, slot: CopySlot) -> Option<(StackKind, &mut Slot)> {
        match slot {
            CopySlot::Origin => self.origin.as_mut().map(|(kind, slot)| (*kind, slot)),
            CopySlot::Eof => self.eof.as_mut().map(|slot| (StackKind::Eof, slot)),
        }
    }

    /// A new copy of `kind`. The probe keeps one origin copy per socket and
    /// replaces an accept copy with the first read's or write's, which
    /// names the handler where accept() names only the accept loop; the
    /// first of any other kind stays, as the probe's does.
    fn copied(&mut self, kind: StackKind, slot: Slot) {
        match kind.slot() {
            CopySlot::Eof => {
                self.eof.get_or_insert(slot);
            }
            CopySlot::Origin => {
                let replaces = match self.origin {
                    None => true,
                    Some((old, _)) => {
                        old == StackKind::Accept
                            && matches!(kind, StackKind::FirstRead | StackKind::FirstWrite)
                    }
                };
                if replaces {
                    self.origin = Some((kind, slot));
                }
            }
        }
    }

    fn slots(&self) -> [Option<Slot>; 2] {
        [self.origin.map(|(_, slot)| slot), self.eof]
    }
}

pub(crate) struct SocketStackBook {
    symbolizer: SymbolizerWorker,
    unwinder: UnwindWorker,
    python: PythonProcesses,
    /// Looked up at every CLOSE and destroy: a fast hash, for cookies the
    /// kernel hands out and no one chooses.
    by_socket: foldhash::HashMap<u64, StackRefs>,
    /// One id per distinct (process, unwound stack).
    ids: HashMap<(u32, UnwoundStack), u32>,
    next_id: u32,
    /// Stacks that could not be taken, kept, unwound or named.
    pub(crate) errors: u64,
}

impl SocketStackBook {
    pub(crate) fn start() -> anyhow::Result<Self> {
        Ok(Self {
            symbolizer: SymbolizerWorker::start()
                .map_err(|e| anyhow::anyhow!("cannot start the symbolizer thread: {e}"))?,
            unwinder: UnwindWorker::start()
                .map_err(|e| anyhow::anyhow!("cannot start the unwinding thread: {e}"))?,
            python: PythonProcesses {
                watch: PythonWatch::start()
                    .map_err(|e| anyhow::anyhow!("cannot start the Python thread: {e}"))?,
                seen: foldhash::HashSet::default(),
                seen_since: Instant::now(),
                known: HashSet::new(),
                exited: Vec::new(),
                looked_at_all: false,
                told_full: false,
            },
            by_socket: foldhash::HashMap::default(),
            ids: HashMap::new(),
            next_id: 0,
            errors: 0,
        })
    }

    pub(crate) fn observe(&mut self, sample: StackSample) {
        self.python.notice(sample.tgid);
        if self.by_socket.len() >= MAX_SOCKET_STACKS && !self.by_socket.contains_key(&sample.cookie)
        {
            self.errors += 1;
            return;
        }
        let refs = self.by_socket.entry(sample.cookie).or_default();
        refs.seen_ns = refs.seen_ns.max(sample.timestamp_ns);
        let slot = match sample.copied {
            Ok(()) => Slot::Copied {
                taken_ns: sample.timestamp_ns,
            },
            Err(failure) => {
                self.errors += 1;
                Slot::Lost(match failure {
                    StackCopyFailure::Unreadable => {
                        "its user stack was not readable at the stack pointer"
                    }
                    StackCopyFailure::NotStored => "the probe's copy map refused it",
                    StackCopyFailure::Other(_) => "the kernel refused its copy",
                })
            }
        };
        refs.copied(sample.kind, slot);
    }

    pub(crate) fn forget_socket(&mut self, cookie: u64) {
        self.by_socket.remove(&cookie);
    }

    /// Reads the copies of `leaking` sockets that waited long enough (all of
    /// them with `all`, before a final report) and queues them for
    /// unwinding; takes in the stacks unwound since the last call.
    pub(crate) fn read_copies(
        &mut self,
        probe: &mut Probe,
        leaking: impl Iterator<Item = u64>,
        now_ns: u64,
        all: bool,
    ) {
        self.take_unwound();
        self.python.tell(probe, &mut self.symbolizer);
        let delay = COPY_READ_DELAY.as_nanos() as u64;
        for cookie in leaking {
            let Some(refs) = self.by_socket.get_mut(&cookie) else {
                continue;
            };
            for copy_slot in [CopySlot::Origin, CopySlot::Eof] {
                let Some((kind, slot)) = refs.in_slot(copy_slot) else {
                    continue;
                };
                let Slot::Copied { taken_ns } = *slot else {
                    continue;
                };
                if !all && now_ns.saturating_sub(taken_ns) < delay {
                    continue;
                }
                if !self.unwinder.has_room() {
                    // Left in the probe's map, read at a later call.
                    return;
                }
                let lost = match probe.take_stack_copy(cookie, copy_slot) {
                    // The LRU map gave its slot to newer copies.
                    None => Some("its copy was gone from the probe's map before it was read"),
                    Some(copy) => {
                        let python = probe
                            .take_python_frames(cookie, copy_slot)
                            .map(|raw| python_frames(&raw));
                        (!self.unwinder.request((cookie, kind as u32), copy, python))
                            .then_some("the unwinding thread was gone")
                    }
                };
                *slot = lost.map_or(Slot::Unwinding, Slot::Lost);
                if lost.is_some() {
                    self.errors += 1;
                }
            }
        }
    }

    /// Takes in the stacks unwound since the last call.
    pub(crate) fn take_unwound(&mut self) {
        for ((cookie, kind), pid, stack) in self.unwinder.finished() {
            let id = match self.ids.get(&(pid, stack.clone())) {
                Some(&id) => id,
                None => {
                    let id = self.next_id;
                    self.next_id = self.next_id.wrapping_add(1);
                    self.ids.insert((pid, stack.clone()), id);
                    id
                }
            };
            if !self.symbolizer.is_requested(pid, id) && !self.symbolizer.request(pid, id, stack) {
                self.errors += 1;
            }
            let Some(kind) = StackKind::from_raw(kind as u8) else {
                continue;
            };
            // A socket that closed meanwhile was forgotten: so is its stack.
            // An accept copy a first read replaced meanwhile is not its origin.
            if let Some(refs) = self.by_socket.get_mut(&cookie)
                && let Some((current, slot)) = refs.in_slot(kind.slot())
                && current == kind
                && *slot == Slot::Unwinding
            {
                *slot = Slot::Unwound(pid, id);
            }
        }
    }

    /// Forgets the stacks of sockets the kernel's table no longer lists.
    /// `listed` must be a complete table of every state a socket with a file
    /// can be in. The table never lists a socket closed while a file holds
    /// it: `suspects` (still leaking) keep theirs until their destruction.
    pub(crate) fn prune(
        &mut self,
        listed: &foldhash::HashSet<u64>,
        suspects: &foldhash::HashSet<u64>,
        started_ns: u64,
    ) {
        self.by_socket.retain(|cookie, refs| {
            refs.seen_ns >= started_ns || listed.contains(cookie) || suspects.contains(cookie)
        });
    }

    /// Whether the socket has an origin copy, or one on its way.
    pub(crate) fn has_origin(&self, cookie: u64) -> bool {
        self.by_socket
            .get(&cookie)
            .is_some_and(|refs| refs.origin.is_some())
    }

    /// The processes whose stacks are known, and the Python processes.
    pub(crate) fn processes(&self) -> HashSet<u32> {
        let mut processes = self.symbolizer.processes();
        processes.extend(self.python.known.iter().copied());
        processes
    }

    /// Looks at a process that made a socket: a Python process's frames
    /// are copied with its stacks once the probe knows where they are.
    pub(crate) fn notice_process(&mut self, pid: u32) {
        self.python.notice(pid);
    }

    /// Frees everything known about processes that exited.
    pub(crate) fn forget_processes(&mut self, exited: &HashSet<u32>) {
        self.python.forget(exited);
        self.symbolizer.forget(exited);
        self.unwinder.forget(exited);
        self.ids.retain(|(pid, _), _| !exited.contains(pid));
    }

    /// Reads, unwinds and names every stack of `leaking` sockets before a
    /// final report; false if that took longer than the report can wait.
    pub(crate) fn finish(&mut self, probe: &mut Probe, leaking: impl Iterator<Item = u64>) -> bool {
        let leaking: Vec<u64> = leaking.collect();
        let deadline = Instant::now() + FINAL_TIMEOUT;
        // More copies than the unwinding queue holds are read in turns.
        loop {
            self.read_copies(probe, leaking.iter().copied(), 0, true);
            let unread = leaking.iter().any(|cookie| self.has_unread_copy(*cookie));
            let unwound = self
                .unwinder
                .flush(deadline.saturating_duration_since(Instant::now()));
            self.take_unwound();
            if !unwound {
                return false;
            }
            if !unread {
                break;
            }
        }
        self.symbolizer.flush(FINAL_TIMEOUT)
            && self.refresh_names(leaking.into_iter(), FINAL_TIMEOUT)
    }

    fn has_unread_copy(&self, cookie: u64) -> bool {
        self.by_socket.get(&cookie).is_some_and(|refs| {
            refs.slots()
                .iter()
                .any(|slot| matches!(slot, Some(Slot::Copied { .. })))
        })
    }

    /// Looks the JIT frames of these sockets' stacks that no perf map named
    /// on arrival up again: a map written after the leak (`jcmd PID
    /// Compiler.perfmap`) still names it. Waits at most `wait`: a periodic
    /// report only queues it (it runs where events are drained) and shows
    /// the new names next time; a final report waits.
    pub(crate) fn refresh_names(&self, cookies: impl Iterator<Item = u64>, wait: Duration) -> bool {
        let stacks = cookies
            .filter_map(|cookie| self.by_socket.get(&cookie))
            .flat_map(|refs| refs.slots())
            .filter_map(|slot| match slot {
                Some(Slot::Unwound(pid, id)) => Some((pid, id)),
                _ => None,
            });
        self.symbolizer.refresh(stacks, wait)
    }

    /// What naming stacks failed at, into a report's health.
    pub(crate) fn naming_health(&self, health: &mut ProbeHealth) {
        health.symbolize_failures = self.symbolizer.failures();
        health.perf_map_lines_skipped = self.symbolizer.perf_map_skipped_lines();
    }

    /// The named frames of one socket, as far as they are known.
    pub(crate) fn of_socket(&self, cookie: u64) -> Option<SocketStacks> {
        let refs = self.by_socket.get(&cookie)?;
        let frames = |slot: Option<Slot>| match slot {
            Some(Slot::Unwound(pid, id)) => self.symbolizer.frames(pid, id),
            // Said where the stack would be: a lost copy is not "no EOF read".
            Some(Slot::Lost(why)) => Some(Arc::new(NamedStack {
                truncated: Some(format!("no copy: {why} (counted in stack_errors)")),
                ..NamedStack::default()
            })),
            _ => None,
        };
        let origin = refs
            .origin
            .and_then(|(kind, slot)| Some((OriginMoment::of(kind)?, frames(Some(slot))?)));
        Some(SocketStacks {
            origin,
            eof: frames(refs.eof),
        })
    }

    pub(crate) fn sockets(&self) -> usize {
        self.by_socket.len()
    }

    pub(crate) fn named(&self) -> usize {
        self.symbolizer.entries()
    }
}

/// How long start-up waits for the Python processes already running to be
/// found: a libpython's symbols are read once, in well under a second.
const LOOK_AT_ALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a process found not to be Python is not looked at again.
const SEEN_FOR: Duration = Duration::from_secs(60);

/// Which processes run Python, and which of them the probe was told
/// about.
struct PythonProcesses {
    watch: PythonWatch,
    /// Looked at, or on their way: each process is looked at once (again
    /// while its interpreter was not ready). Those found not to be Python
    /// are forgotten every SEEN_FOR, which bounds the set on a host where
    /// processes come and go, and looks again at a pid reused since.
    seen: foldhash::HashSet<u32>,
    seen_since: Instant,
    /// Python processes the symbolizer was told about (and the probe, where
    /// their frames can be walked): forgotten in both when they exit.
    known: HashSet<u32>,
    /// Exited, still in the probe's map until the next `tell`.
    exited: Vec<u32>,
    /// Whether the processes older than tcptrace were asked for.
    looked_at_all: bool,
    /// Said once: the probe's map refused a process.
    told_full: bool,
}

impl PythonProcesses {
    /// Called at every connect() and listen() on the host: a set lookup.
    fn notice(&mut self, pid: u32) {
        if pid != 0 && self.seen.insert(pid) && !self.watch.look(pid) {
            // Asked again at its next socket.
            self.seen.remove(&pid);
        }
    }

    fn forget(&mut self, exited: &HashSet<u32>) {
        for pid in exited {
            self.seen.remove(pid);
            if self.known.remove(pid) {
                self.exited.push(*pid);
            }
        }
        if !self.exited.is_empty() {
            self.watch.clear_files();
        }
    }

    /// Hands what the watch found to the probe and the symbolizer.
    fn tell(&mut self, probe: &mut Probe, symbolizer: &mut SymbolizerWorker) {
        if probe.stack_moments.level == StackLevel::Off {
            return;
        }
        if !self.looked_at_all {
            self.looked_at_all = true;
            if !self.watch.look_at_all(LOOK_AT_ALL_TIMEOUT) {
                eprintln!(
                    "tcptrace: looking for Python processes took over {}s; the first stacks of those not found yet show no Python frames",
                    LOOK_AT_ALL_TIMEOUT.as_secs()
                );
            }
        }
        for pid in self.exited.drain(..) {
            probe.forget_python(pid);
        }
        if self.seen_since.elapsed() >= SEEN_FOR {
            self.seen_since = Instant::now();
            let known = &self.known;
            self.seen.retain(|pid| known.contains(pid));
        }
        for (pid, mut detection) in self.watch.found() {
            self.seen.insert(pid);
            if let (Detection::Python(runtime), false) = (&detection, probe.python_frames) {
                detection = Detection::Unsupported {
                    version: runtime.version.clone(),
                    why: "tcptrace runs with --python-frames off".to_owned(),
                };
            }
            match &detection {
                Detection::NotPython => continue,
                Detection::NotReady => {
                    self.seen.remove(&pid);
                    continue;
                }
                Detection::Python(runtime) => {
                    if let Err(error) =
                        probe.describe_python(pid, &runtime.layout.for_probe(runtime.runtime))
                        && !self.told_full
                    {
                        self.told_full = true;
                        eprintln!(
                            "tcptrace: cannot have the probe walk the Python frames of process {pid} ({error}); its stacks show no Python frames"
                        );
                    }
                }
                Detection::Unsupported { .. } => {}
            }
            self.known.insert(pid);
            symbolizer.describe_python(pid, detection);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn sample(cookie: u64, at_s: u64, kind: StackKind) -> StackSample {
        StackSample {
            timestamp_ns: at_s * S,
            cookie,
            tgid: 42,
            kind,
            copied: Ok(()),
        }
    }

    #[test]
    fn a_failed_copy_is_counted_and_the_first_copy_of_a_kind_stays() {
        let mut book = SocketStackBook::start().unwrap();
        book.observe(StackSample {
            copied: Err(StackCopyFailure::Unreadable),
            ..sample(1, 1, StackKind::Eof)
        });
        assert_eq!(book.errors, 1);
        // The report says why it has no stack, not that there was no EOF read.
        let eof = book.of_socket(1).unwrap().eof.unwrap();
        assert!(eof.frames.is_empty());
        assert_eq!(
            eof.truncated.as_deref(),
            Some(
                "no copy: its user stack was not readable at the stack pointer (counted in stack_errors)"
            )
        );
        book.observe(sample(2, 1, StackKind::Eof));
        book.observe(sample(2, 3, StackKind::Eof));
        assert_eq!(
            book.by_socket[&2].eof,
            Some(Slot::Copied { taken_ns: S }),
            "the second EOF read of a socket does not replace its stack"
        );
        book.forget_socket(2);
        assert_eq!(book.sockets(), 1);
    }

    #[test]
    fn a_first_read_replaces_an_accept_copy_and_nothing_replaces_a_connect() {
        let mut book = SocketStackBook::start().unwrap();
        book.observe(sample(1, 1, StackKind::Accept));
        book.observe(sample(1, 2, StackKind::FirstRead));
        assert_eq!(
            book.by_socket[&1].origin,
            Some((StackKind::FirstRead, Slot::Copied { taken_ns: 2 * S }))
        );
        book.observe(sample(1, 3, StackKind::FirstWrite));
        assert_eq!(book.by_socket[&1].origin.unwrap().0, StackKind::FirstRead);
        book.observe(sample(2, 1, StackKind::Connect));
        book.observe(sample(2, 2, StackKind::FirstRead));
        assert_eq!(book.by_socket[&2].origin.unwrap().0, StackKind::Connect);
        assert!(book.has_origin(2) && !book.has_origin(3));
    }

    #[test]
    fn a_suspect_keeps_its_stacks_though_the_table_does_not_list_it() {
        let mut book = SocketStackBook::start().unwrap();
        book.observe(sample(1, 1, StackKind::FirstRead));
        book.observe(sample(2, 1, StackKind::FirstRead));
        let listed = foldhash::HashSet::default();
        let suspects: foldhash::HashSet<u64> = [1].into_iter().collect();
        book.prune(&listed, &suspects, 2 * S);
        assert!(book.has_origin(1), "closed but held: still a leak");
        assert!(!book.has_origin(2));
    }
}
