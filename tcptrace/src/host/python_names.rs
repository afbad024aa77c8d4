//! Python frames to names: each copied frame's code object is read from
//! the process's memory (its qualified name, file, first line and line
//! table), once per code object, and its instruction becomes a line.
//! Every object read is checked to be of the type it should be, so memory
//! reused since the copy names nothing rather than something wrong.

use std::{collections::HashMap, sync::Arc};

use crate::{
    host::{process_memory::ProcessMemory, python_runtime::PythonRuntime},
    model::{
        python_frames::{CopiedFrame, PYTHON_MODULE, PythonFrame},
        python_layout::{BYTES_DATA, BYTES_SIZE, OB_TYPE, STR_LENGTH, STR_STATE},
        python_lines::line_of,
        stack::{Frame, FrameKind},
    },
};

/// Longer names and line tables are not read: no real code has them.
const MAX_NAME_CHARS: u64 = 1024;
const MAX_TABLE_BYTES: u64 = 1 << 20;
/// Code objects remembered per process; past this the cache starts over.
const MAX_CODES_PER_PROCESS: usize = 65536;

#[derive(Clone, Debug)]
struct Code {
    function: String,
    path: String,
    first_line: u32,
    table: Vec<u8>,
}

/// The code objects of one process.
#[derive(Default)]
pub struct PythonNamer {
    codes: HashMap<u64, Option<Arc<Code>>>,
}

impl PythonNamer {
    /// The frame `frame` shows, in the process `runtime` describes.
    pub fn name(&mut self, pid: u32, runtime: &PythonRuntime, frame: &CopiedFrame) -> Frame {
        if self.codes.len() >= MAX_CODES_PER_PROCESS {
            self.codes.clear();
        }
        let memory = ProcessMemory::of(pid);
        let code = self
            .codes
            .entry(frame.code)
            .or_insert_with(|| read_code(&memory, runtime, frame.code).map(Arc::new))
            .clone();
        let Some(code) = code else {
            return Frame {
                text: format!(
                    "a Python frame whose code object could not be read ({:#x})",
                    frame.code
                ),
                module: Some(PYTHON_MODULE.to_owned()),
                kind: FrameKind::Unresolved,
            };
        };
        let layout = &runtime.layout;
        let offset = match layout.code_adaptive {
            Some(adaptive) => frame.instr.checked_sub(frame.code + u64::from(adaptive)),
            None => {
                // `f_lasti`, an int: -1 before the first instruction.
                let lasti = frame.instr as u32 as i32;
                u64::try_from(lasti)
                    .ok()
                    .map(|i| if layout.minor >= 10 { i * 2 } else { i })
            }
        };
        let line =
            offset.and_then(|offset| line_of(layout.minor, &code.table, code.first_line, offset));
        PythonFrame {
            function: code.function.clone(),
            path: code.path.clone(),
            line,
        }
        .frame()
    }
}

fn read_code(memory: &ProcessMemory, runtime: &PythonRuntime, code: u64) -> Option<Code> {
    let layout = &runtime.layout;
    if memory.u64(code + OB_TYPE).ok()? != runtime.code_type {
        return None;
    }
    let field = |offset: u32| memory.u64(code + u64::from(offset)).ok();
    let name = layout
        .code_qualname
        .and_then(field)
        .and_then(|s| read_str(memory, runtime, s))
        .or_else(|| read_str(memory, runtime, field(layout.code_name)?))?;
    let path = read_str(memory, runtime, field(layout.code_filename)?)?;
    let first_line = memory.u32(code + u64::from(layout.code_firstlineno)).ok()?;
    let table = read_bytes(memory, runtime, field(layout.code_linetable)?).unwrap_or_default();
    Some(Code {
        function: name,
        path,
        first_line,
        table,
    })
}

/// A compact str (every name and file name the compiler makes is one).
fn read_str(memory: &ProcessMemory, runtime: &PythonRuntime, address: u64) -> Option<String> {
    if memory.u64(address + OB_TYPE).ok()? != runtime.unicode_type {
        return None;
    }
    let length = memory.u64(address + STR_LENGTH).ok()?;
    let state = memory.u32(address + STR_STATE).ok()?;
    let kind = (state >> 2) & 7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact || length > MAX_NAME_CHARS {
        return None;
    }
    let layout = &runtime.layout;
    let data = address
        + u64::from(if ascii {
            layout.ascii_size
        } else {
            layout.compact_size
        });
    let bytes = memory
        .bytes(data, (length * u64::from(kind)) as usize)
        .ok()?;
    match kind {
        1 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        2 => Some(
            bytes
                .chunks_exact(2)
                .map(|c| {
                    char::from_u32(u32::from(u16::from_ne_bytes([c[0], c[1]])))
                        .unwrap_or(char::REPLACEMENT_CHARACTER)
                })
                .collect(),
        ),
        4 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| {
                    char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .unwrap_or(char::REPLACEMENT_CHARACTER)
                })
                .collect(),
        ),
        _ => None,
    }
}

fn read_bytes(memory: &ProcessMemory, runtime: &PythonRuntime, address: u64) -> Option<Vec<u8>> {
    if memory.u64(address + OB_TYPE).ok()? != runtime.bytes_type {
        return None;
    }
    let size = memory.u64(address + BYTES_SIZE).ok()?;
    if size > MAX_TABLE_BYTES {
        return None;
    }
    memory.bytes(address + BYTES_DATA, size as usize).ok()
}
