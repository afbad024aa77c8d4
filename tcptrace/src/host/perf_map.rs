//! A process's perf map (`/tmp/perf-PID.map`): the names a JIT or an
//! interpreter gives its code in anonymous memory.
//!
//! Our own parser, because runtimes write it loosely: the JVM's
//! `jcmd PID Compiler.perfmap` prefixes addresses with `0x`, Python 3.12's
//! `-X perf` does not, and one bad line must not lose every other name.
//! Malformed lines are skipped and counted. The file grows while the
//! process runs, so a process's map is read again when its size or time
//! changed.

use std::{collections::HashMap, fs, io::Read, path::PathBuf, time::SystemTime};

/// Bigger maps are read only this far: a name is worth less than the
/// agent's memory.
const MAX_MAP_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerfMap {
    /// (start, end, name), sorted by start; for equal starts the line
    /// written last comes last (code replaced at the same address).
    entries: Vec<(u64, u64, String)>,
    /// Lines that were not `START SIZE NAME`.
    pub skipped_lines: u64,
}

/// How far back a lookup looks past entries that start below the address
/// but end before it, for a big entry that encloses smaller ones.
const OVERLAP_LOOKBACK: usize = 16;

impl PerfMap {
    pub fn parse(text: &str) -> Self {
        let mut map = Self::default();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line) {
                Some(entry) => map.entries.push(entry),
                None => map.skipped_lines += 1,
            }
        }
        // Stable: later lines stay after earlier ones at the same start.
        map.entries.sort_by_key(|&(start, _, _)| start);
        map
    }

    /// The name of the code at `address`; the newest entry wins where
    /// entries overlap.
    pub fn lookup(&self, address: u64) -> Option<&str> {
        let after = self
            .entries
            .partition_point(|&(start, _, _)| start <= address);
        self.entries[..after]
            .iter()
            .rev()
            .take(OVERLAP_LOOKBACK)
            .find(|&&(start, end, _)| (start..end).contains(&address))
            .map(|(_, _, name)| name.as_str())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

fn hex(field: &str) -> Option<u64> {
    let digits = field
        .strip_prefix("0x")
        .or_else(|| field.strip_prefix("0X"))
        .unwrap_or(field);
    u64::from_str_radix(digits, 16).ok()
}

/// `START SIZE NAME`, both numbers hex; the name may hold spaces.
fn parse_line(line: &str) -> Option<(u64, u64, String)> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (start, rest) = line.trim_start().split_once(char::is_whitespace)?;
    let (size, name) = rest.trim_start().split_once(char::is_whitespace)?;
    let (start, size) = (hex(start)?, hex(size)?);
    let name = name.trim();
    if name.is_empty() || size == 0 {
        return None;
    }
    Some((start, start.checked_add(size)?, name.to_owned()))
}

/// The pid a process has inside its own pid namespace: the last of
/// `NSpid:` in `/proc/PID/status`, which is what it names its map with.
pub fn namespace_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Where `pid`'s map may be, seen through its own root (a container's /tmp
/// is not the host's): named by its namespace pid first, then by the host's.
fn candidate_paths(pid: u32) -> Vec<PathBuf> {
    let root = format!("/proc/{pid}/root/tmp");
    let mut names = Vec::new();
    if let Some(ns_pid) = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(namespace_pid)
    {
        names.push(ns_pid);
    }
    if !names.contains(&pid) {
        names.push(pid);
    }
    names
        .into_iter()
        .map(|n| PathBuf::from(format!("{root}/perf-{n}.map")))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    len: u64,
    modified: Option<SystemTime>,
}

struct Cached {
    path: PathBuf,
    version: Version,
    map: PerfMap,
}

/// Each process's map, read again only when the file changed.
#[derive(Default)]
pub struct PerfMaps {
    by_pid: HashMap<u32, Cached>,
    /// Malformed lines skipped, over every read.
    pub skipped_lines: u64,
}

impl PerfMaps {
    /// `pid`'s map as the file is now, or `None` without one.
    pub fn of(&mut self, pid: u32) -> Option<&PerfMap> {
        self.at(pid, candidate_paths(pid))
    }

    fn at(&mut self, pid: u32, paths: Vec<PathBuf>) -> Option<&PerfMap> {
        let found = paths.into_iter().find_map(|path| {
            let meta = fs::metadata(&path).ok()?;
            meta.is_file().then(|| {
                let version = Version {
                    len: meta.len(),
                    modified: meta.modified().ok(),
                };
                (path, version)
            })
        });
        let Some((path, version)) = found else {
            self.by_pid.remove(&pid);
            return None;
        };
        let fresh = self
            .by_pid
            .get(&pid)
            .is_some_and(|c| c.path == path && c.version == version);
        if !fresh {
            let map = read_map(&path)?;
            self.skipped_lines += map.skipped_lines;
            self.by_pid.insert(pid, Cached { path, version, map });
        }
        self.by_pid.get(&pid).map(|c| &c.map)
    }

    pub fn forget(&mut self, pids: &[u32]) {
        for pid in pids {
            self.by_pid.remove(pid);
        }
    }
}

fn read_map(path: &std::path::Path) -> Option<PerfMap> {
    let file = fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_MAP_BYTES).read_to_end(&mut bytes).ok()?;
    // A line the runtime is writing right now is cut: it is skipped, and
    // read whole the next time the size changes.
    if let Some(end) = bytes.iter().rposition(|&b| b == b'\n') {
        bytes.truncate(end + 1);
    }
    Some(PerfMap::parse(&String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Python 3.12.1 `-X perf` writes it on this machine.
    const PYTHON: &str = "\
7fa55a596000 b py::_find_and_load:<frozen importlib._bootstrap>
7fa55a596882 b py::<module>:/root/.pyenv/versions/3.12.1/lib/python3.12/socket.py
7fa55a597a1b b py::process_data:/srv/app.py
7fa55a597a26 b py::handle_request:/srv/app.py
";

    /// As JDK 17's `jcmd PID Compiler.perfmap` writes it on this machine.
    const JAVA: &str = "\
0x00007f68d0ec7620 0x00000000000000b8 long Spin.work(long)
0x00007f68d0ec7920 0x0000000000000338 long Spin.work(long)
0x00007f68d0940b80 0x0000000000017de0 Interpreter
0x00007f68d0958a00 0x00000000000001b0 I2C/C2I adapters
0x00007f68d0ec7e80 0x0000000000000020 java.lang.Object java.lang.invoke.MethodHandle.linkToStatic(java.lang.Object, java.lang.Object, java.lang.invoke.MemberName)
";

    #[test]
    fn python_lines_without_0x() {
        let map = PerfMap::parse(PYTHON);
        assert_eq!((map.len(), map.skipped_lines), (4, 0));
        assert_eq!(
            map.lookup(0x7fa55a597a26 + 4),
            Some("py::handle_request:/srv/app.py")
        );
        assert_eq!(
            map.lookup(0x7fa55a597a1b),
            Some("py::process_data:/srv/app.py")
        );
        assert_eq!(map.lookup(0x7fa55a597a26 + 0xb), None, "past the end");
        assert_eq!(map.lookup(0x1000), None);
    }

    #[test]
    fn jvm_lines_with_0x_and_names_with_spaces() {
        let map = PerfMap::parse(JAVA);
        assert_eq!((map.len(), map.skipped_lines), (5, 0));
        assert_eq!(map.lookup(0x7f68d0ec7630), Some("long Spin.work(long)"));
        assert_eq!(map.lookup(0x7f68d0941000), Some("Interpreter"));
        assert_eq!(
            map.lookup(0x7f68d0ec7e90),
            Some(
                "java.lang.Object java.lang.invoke.MethodHandle.linkToStatic(java.lang.Object, java.lang.Object, java.lang.invoke.MemberName)"
            )
        );
    }

    #[test]
    fn bad_lines_are_skipped_and_counted_not_the_whole_file() {
        let text = format!(
            "{PYTHON}garbage\n7fa55a598000 zz py::bad_size:/x.py\n7fa55a599000\n0x7fa55a59a000 0x0 empty\n\n7fa55a59b000 10 py::after:/srv/app.py\n"
        );
        let map = PerfMap::parse(&text);
        assert_eq!(map.skipped_lines, 4);
        assert_eq!(map.lookup(0x7fa55a59b00f), Some("py::after:/srv/app.py"));
        assert_eq!(
            map.lookup(0x7fa55a597a26),
            Some("py::handle_request:/srv/app.py")
        );
    }

    #[test]
    fn the_newest_of_overlapping_entries_wins() {
        let map = PerfMap::parse(
            "1000 100 old_method\n1000 100 new_method\n900 1000 enclosing_blob\n1200 10 small\n",
        );
        assert_eq!(map.lookup(0x1050), Some("new_method"));
        assert_eq!(map.lookup(0x1150), Some("enclosing_blob"));
        assert_eq!(map.lookup(0x1205), Some("small"));
    }

    #[test]
    fn namespace_pid_is_the_last_of_nspid() {
        let status = "Name:\tpython3\nTgid:\t4242\nPid:\t4242\nNSpid:\t4242\t7\n";
        assert_eq!(namespace_pid(status), Some(7));
        assert_eq!(namespace_pid("NSpid:\t4242\n"), Some(4242));
        assert_eq!(namespace_pid("Name:\tx\n"), None);
    }

    /// A map written in steps, as a runtime does, between lookups.
    #[test]
    fn a_map_that_grows_is_read_again() {
        let pid = std::process::id();
        let path = std::env::temp_dir().join(format!("tcptrace-perf-map-test-{pid}.map"));
        let at = |maps: &mut PerfMaps| maps.at(pid, vec![path.clone()]).cloned();
        fs::write(&path, "0x1000 0x10 first\n").unwrap();
        let mut maps = PerfMaps::default();
        let first = at(&mut maps).map(|m| m.lookup(0x2000).is_none());
        // A line half written is not read yet.
        fs::write(&path, "0x1000 0x10 first\n0x2000 0x10 sec").unwrap();
        let half = at(&mut maps).map(|m| m.lookup(0x2000).map(str::to_owned));
        fs::write(&path, "0x1000 0x10 first\n0x2000 0x10 second\n").unwrap();
        let grown = at(&mut maps).map(|m| m.lookup(0x2000).map(str::to_owned));
        fs::remove_file(&path).unwrap();
        let gone = at(&mut maps).is_none();
        assert_eq!(first, Some(true));
        assert_eq!(half, Some(None));
        assert_eq!(grown, Some(Some("second".to_owned())));
        assert!(gone);
    }
}
