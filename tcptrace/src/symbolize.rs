//! User stacks to readable frames, while the process is still alive.
//!
//! Stacks are resolved when their record arrives, not at report time, so a
//! process that leaks and then exits still has named frames. The cache is
//! keyed by (pid, process start time, stack id): an exec or a reused pid
//! starts afresh.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use blazesym::{
    Pid,
    symbolize::{
        CodeInfo, Input, Sym, Symbolized, Symbolizer,
        source::{Process, Source},
    },
};

/// One frame per line, innermost first.
pub type Frames = Arc<Vec<String>>;

/// How long a process start time read from /proc is trusted.
const START_TIME_TTL: Duration = Duration::from_secs(1);

pub struct StackSymbolizer {
    symbolizer: Symbolizer,
    cache: HashMap<(u32, u64, u32), Frames>,
    start_times: HashMap<u32, (u64, Instant)>,
}

impl Default for StackSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl StackSymbolizer {
    pub fn new() -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            cache: HashMap::new(),
            start_times: HashMap::new(),
        }
    }

    /// The frames of stack `stack_id` of `pid`, resolving them with
    /// `read_stack` (the probe's stack map) only on a cache miss.
    pub fn frames(
        &mut self,
        pid: u32,
        stack_id: u32,
        read_stack: impl FnOnce() -> Option<Vec<u64>>,
    ) -> Option<Frames> {
        let started = self.start_time(pid)?;
        if let Some(frames) = self.cache.get(&(pid, started, stack_id)) {
            return Some(frames.clone());
        }
        let addresses = read_stack()?;
        let frames = Arc::new(self.resolve(pid, &addresses));
        self.cache.insert((pid, started, stack_id), frames.clone());
        Some(frames)
    }

    fn start_time(&mut self, pid: u32) -> Option<u64> {
        if let Some(&(started, checked)) = self.start_times.get(&pid)
            && checked.elapsed() < START_TIME_TTL
        {
            return Some(started);
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let started = parse_start_time(&stat)?;
        if self
            .start_times
            .insert(pid, (started, Instant::now()))
            .is_some_and(|(before, _)| before != started)
        {
            // Another process under this pid now: its stacks are not ours.
            self.cache.retain(|(p, s, _), _| *p != pid || *s == started);
        }
        Some(started)
    }

    fn resolve(&self, pid: u32, addresses: &[u64]) -> Vec<String> {
        let source = Source::Process(Process::new(Pid::from(pid)));
        // Resolution is best effort: never fail a report over a stack.
        let symbolized = self
            .symbolizer
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

/// Field 22 of `/proc/<pid>/stat`, after the parenthesised comm (which may
/// itself contain spaces and parentheses).
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_comms() {
        let stat =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

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
    fn resolves_a_function_of_this_process() {
        #[inline(never)]
        fn marker_function_for_symbolization() -> u64 {
            marker_function_for_symbolization as *const () as u64
        }
        let address = marker_function_for_symbolization();
        let mut symbolizer = StackSymbolizer::new();
        let frames = symbolizer
            .frames(std::process::id(), 1, || Some(vec![address]))
            .unwrap();
        assert!(
            frames[0].contains("marker_function_for_symbolization"),
            "{frames:?}"
        );
        // Cached: the stack is not read again.
        let again = symbolizer
            .frames(std::process::id(), 1, || panic!("read twice"))
            .unwrap();
        assert!(Arc::ptr_eq(&frames, &again));
    }
}
