//! Which processes run CPython, which version, and where its `_PyRuntime`
//! is: read from the process's mappings (a `python3.X` executable or a
//! `libpython3.X.so`), their ELF symbols (through `/proc/PID/map_files`,
//! so a container's files are read as the container sees them), and the
//! interpreter's own memory, where the layout tcptrace knows is checked
//! before the probe is told to walk it.

use std::{collections::HashMap, fs, io, ops::Range, sync::Arc};

use object::{Object, ObjectSymbol};

use crate::{
    host::{
        process_memory::ProcessMemory,
        unwind::{Mapping, executable_mappings, executable_segments, load_bias, read_mapped_file},
    },
    model::python_layout::{
        DEBUG_OFFSETS_BYTES, NEWEST_MINOR, OLDEST_MINOR, PyLayout, from_debug_offsets,
    },
};

/// A CPython process whose frames the probe can walk and the agent name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonRuntime {
    /// `3.11.7` where the interpreter says (3.11+), else `3.10`.
    pub version: String,
    pub layout: PyLayout,
    /// Addresses in the process: `_PyRuntime`, and the type objects a code
    /// object, a str and a bytes object point to.
    pub runtime: u64,
    pub code_type: u64,
    pub unicode_type: u64,
    pub bytes_type: u64,
}

/// What a process is, as far as Python frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detection {
    NotPython,
    /// Its interpreter has no thread yet (just started): ask again later.
    NotReady,
    Python(Arc<PythonRuntime>),
    /// A Python whose frames tcptrace does not read, and why.
    Unsupported {
        version: String,
        why: String,
    },
}

/// The interpreter's symbols in one file, and the version its name says.
#[derive(Clone, Debug, Default)]
struct FileSymbols {
    /// Stated addresses (before the load bias).
    runtime: Option<u64>,
    code_type: Option<u64>,
    unicode_type: Option<u64>,
    bytes_type: Option<u64>,
    version: Option<u64>,
    /// (file range, p_vaddr) of each executable segment.
    segments: Vec<(Range<u64>, u64)>,
}

/// Detections share what they read of each file: every worker of a
/// pre-fork server maps the same libpython.
#[derive(Default)]
pub struct Detector {
    files: HashMap<(String, u64), Option<Arc<FileSymbols>>>,
}

/// The minor version a mapped file's name says: `python3.11`,
/// `libpython3.11.so.1.0`, `libpython3.9d.so`. `Some(None)` for a Python
/// whose name carries no minor (`python3`).
fn python_minor(path: &str) -> Option<Option<u8>> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let rest = name
        .strip_prefix("libpython3.")
        .or_else(|| name.strip_prefix("python3."))
        .or_else(|| (name == "python3" || name == "python").then_some(""))?;
    if rest.is_empty() {
        return Some(None);
    }
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    // `python3.11`, `python3.11d`, `libpython3.11.so…`; not `python3.11-config`.
    let plausible = after.is_empty()
        || after.starts_with(".so")
        || after.starts_with("d.so")
        || after.starts_with("t.so")
        || after == "d"
        || after == "t";
    plausible.then(|| digits.parse().ok())
}

impl Detector {
    /// What process `pid` is. Reads its maps, the symbols of its Python
    /// files (once per file), and a few words of its memory.
    pub fn detect(&mut self, pid: u32) -> Detection {
        let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return Detection::NotPython;
        };
        self.detect_in(pid, &maps)
    }

    fn detect_in(&mut self, pid: u32, maps: &str) -> Detection {
        let mut candidates: Vec<(Mapping, Option<u8>)> = executable_mappings(maps)
            .into_iter()
            .filter_map(|m| Some((m.clone(), python_minor(&m.path)?)))
            .collect();
        if candidates.is_empty() {
            return Detection::NotPython;
        }
        // A shared libpython holds the runtime; its executable then does not.
        candidates
            .sort_by_key(|(m, _)| !m.path.rsplit('/').next().unwrap_or("").starts_with("lib"));
        let memory = ProcessMemory::of(pid);
        for (mapping, named_minor) in candidates {
            let key = (mapping.device.clone(), mapping.inode);
            let symbols = self
                .files
                .entry(key)
                .or_insert_with(|| read_symbols(pid, &mapping).map(Arc::new))
                .clone();
            let Some(symbols) = symbols else { continue };
            let Some(runtime) = symbols.runtime else {
                continue;
            };
            let Some(bias) = load_bias(&symbols.segments, &mapping) else {
                continue;
            };
            let at = |stated: Option<u64>| stated.map(|s| s.wrapping_add(bias));
            // `Py_Version` (3.11+) says the version exactly.
            let hex = at(symbols.version).and_then(|a| memory.u32(a).ok());
            let (minor, version) = match (hex, named_minor) {
                (Some(hex), _) if hex >> 24 == 3 => {
                    let minor = (hex >> 16) as u8;
                    (Some(minor), format!("3.{minor}.{}", (hex >> 8) & 0xff))
                }
                (_, Some(minor)) => (Some(minor), format!("3.{minor}")),
                _ => (None, "3 (version unknown)".to_owned()),
            };
            let Some(minor) = minor.filter(|m| (OLDEST_MINOR..=NEWEST_MINOR).contains(m)) else {
                return Detection::Unsupported {
                    version,
                    why: format!(
                        "tcptrace reads the frames of Python 3.{OLDEST_MINOR} to 3.{NEWEST_MINOR}"
                    ),
                };
            };
            let runtime = runtime.wrapping_add(bias);
            return match check(&memory, minor, runtime) {
                Ok(Some(layout)) => {
                    let (Some(code_type), Some(unicode_type), Some(bytes_type)) = (
                        at(symbols.code_type),
                        at(symbols.unicode_type),
                        at(symbols.bytes_type),
                    ) else {
                        return Detection::Unsupported {
                            version,
                            why: "its interpreter does not export PyCode_Type, PyUnicode_Type and PyBytes_Type".to_owned(),
                        };
                    };
                    Detection::Python(Arc::new(PythonRuntime {
                        version,
                        layout,
                        runtime,
                        code_type,
                        unicode_type,
                        bytes_type,
                    }))
                }
                Ok(None) => Detection::NotReady,
                Err(why) => Detection::Unsupported { version, why },
            };
        }
        Detection::NotPython
    }

    /// Lets go of the files no process is expected to map any more.
    pub fn clear_files(&mut self) {
        self.files.clear();
    }
}

/// The layout of the interpreter at `runtime`, checked against it:
/// `None` while it has no thread state yet; an error when what it holds
/// does not match.
fn check(memory: &ProcessMemory, minor: u8, runtime: u64) -> Result<Option<PyLayout>, String> {
    let unreadable = |e: io::Error| format!("its memory could not be read ({e})");
    let layout = if minor == 13 {
        let bytes = memory
            .bytes(runtime, DEBUG_OFFSETS_BYTES)
            .map_err(unreadable)?;
        from_debug_offsets(&bytes).map_err(|e| e.to_string())?
    } else {
        PyLayout::known(minor).ok_or_else(|| format!("no layout of 3.{minor}"))?
    };
    if !layout.fits_probe() {
        return Err("its thread states are larger than the probe reads".to_owned());
    }
    let interpreter = memory
        .u64(runtime + u64::from(layout.runtime_interpreters_head))
        .map_err(unreadable)?;
    if interpreter == 0 {
        return Ok(None);
    }
    let thread = memory
        .u64(interpreter + u64::from(layout.interp_threads_head))
        .map_err(unreadable)?;
    if thread == 0 {
        return Ok(None);
    }
    let back = memory
        .u64(thread + u64::from(layout.thread_interp))
        .map_err(unreadable)?;
    if back != interpreter {
        return Err(format!(
            "its thread states do not match the 3.{minor} layout tcptrace knows"
        ));
    }
    Ok(Some(layout))
}

fn read_symbols(pid: u32, mapping: &Mapping) -> Option<FileSymbols> {
    let data = read_mapped_file(pid, mapping)?;
    let file = object::File::parse(&*data).ok()?;
    let mut symbols = FileSymbols {
        segments: executable_segments(&file),
        ..FileSymbols::default()
    };
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        let slot = match symbol.name() {
            Ok("_PyRuntime") => &mut symbols.runtime,
            Ok("PyCode_Type") => &mut symbols.code_type,
            Ok("PyUnicode_Type") => &mut symbols.unicode_type,
            Ok("PyBytes_Type") => &mut symbols.bytes_type,
            Ok("Py_Version") => &mut symbols.version,
            _ => continue,
        };
        if slot.is_none() && symbol.address() != 0 {
            *slot = Some(symbol.address());
        }
    }
    Some(symbols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_files_by_name() {
        assert_eq!(python_minor("/usr/bin/python3.11"), Some(Some(11)));
        assert_eq!(
            python_minor("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"),
            Some(Some(11))
        );
        assert_eq!(python_minor("/opt/libpython3.9d.so"), Some(Some(9)));
        assert_eq!(python_minor("/usr/bin/python3"), Some(None));
        assert_eq!(python_minor("/usr/bin/python3.11-config"), None);
        assert_eq!(python_minor("/usr/lib/libpthread.so.0"), None);
        assert_eq!(python_minor("/usr/bin/pythonista"), None);
    }

    #[test]
    fn a_process_with_no_python_file_is_not_python() {
        let maps = "55d0c0001000-55d0c0002000 r-xp 00001000 08:01 42 /usr/bin/server\n";
        assert_eq!(Detector::default().detect_in(1, maps), Detection::NotPython);
    }

    /// This test's own process is no Python; real interpreters are checked
    /// by tests/code_paths.rs and tests/origin_paths.rs, each version apart.
    #[test]
    fn a_python_file_that_cannot_be_read_is_not_taken_for_python() {
        let maps =
            "7f0000001000-7f0000002000 r-xp 00001000 08:01 43 /nonexistent/libpython3.11.so.1.0\n";
        assert_eq!(
            Detector::default().detect_in(u32::MAX, maps),
            Detection::NotPython
        );
    }
}
