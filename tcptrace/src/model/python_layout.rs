//! Where CPython 3.9–3.13 keep what tcptrace reads of a running
//! interpreter: the thread states and frames the probe walks, and the code
//! objects and strings that name a frame. x86-64, default (GIL) builds.
//!
//! The numbers are `offsetof` of each version's own headers (`Python.h`
//! and `internal/`, built with Py_BUILD_CORE): `cargo xtask test` compiles
//! that program against every pyenv version present and checks this table
//! against it. 3.13 also describes itself: its `_PyRuntime` starts with
//! `_Py_DebugOffsets`, which is read instead where present. Whatever the
//! source, the agent checks a layout against the process before the probe
//! uses it (a thread state must point back at its interpreter).

use tcptrace_common::{PY_BLOCK_MAX, PY_NO_FIELD, PyProcess};

/// The oldest and newest minor versions of Python 3 known here.
pub const OLDEST_MINOR: u8 = 9;
pub const NEWEST_MINOR: u8 = 13;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyLayout {
    pub minor: u8,
    pub runtime_interpreters_head: u32,
    pub interp_threads_head: u32,
    pub thread_next: u32,
    pub thread_interp: u32,
    pub thread_id: u32,
    /// `frame`, `cframe` or `current_frame`.
    pub thread_frame: u32,
    /// `_PyCFrame.current_frame` (3.11, 3.12).
    pub cframe_frame: Option<u32>,
    pub frame_previous: u32,
    pub frame_code: u32,
    pub frame_instr: u32,
    pub frame_owner: Option<u32>,
    pub frame_entry: Option<u32>,
    pub code_name: u32,
    pub code_qualname: Option<u32>,
    pub code_filename: u32,
    pub code_firstlineno: u32,
    /// `co_lnotab` (3.9) or `co_linetable` (3.10+), a bytes object.
    pub code_linetable: u32,
    /// `co_code_adaptive` (3.11+): where the instructions `frame_instr`
    /// points into begin.
    pub code_adaptive: Option<u32>,
    /// `sizeof(PyASCIIObject)` and `sizeof(PyCompactUnicodeObject)`: where
    /// a compact string's characters begin.
    pub ascii_size: u32,
    pub compact_size: u32,
}

/// `PyObject.ob_type`, `PyASCIIObject.length` and `.state`,
/// `PyBytesObject.ob_size` and `.ob_sval`: the same in every version here.
pub const OB_TYPE: u64 = 8;
pub const STR_LENGTH: u64 = 16;
pub const STR_STATE: u64 = 32;
pub const BYTES_SIZE: u64 = 16;
pub const BYTES_DATA: u64 = 32;

/// `_PyInterpreterFrame.owner` of a shim frame that marks where C entered
/// the interpreter (3.12+: FRAME_OWNED_BY_CSTACK).
pub const OWNED_BY_CSTACK: u8 = 3;

impl PyLayout {
    /// The layout of Python 3.`minor`, from its headers.
    pub fn known(minor: u8) -> Option<Self> {
        let layout = match minor {
            9 | 10 => Self {
                minor,
                runtime_interpreters_head: 32,
                interp_threads_head: 8,
                thread_next: 8,
                thread_interp: 16,
                thread_id: 176,
                thread_frame: 24,
                cframe_frame: None,
                frame_previous: 24,
                frame_code: 32,
                frame_instr: if minor == 9 { 104 } else { 96 },
                frame_owner: None,
                frame_entry: None,
                code_name: 112,
                code_qualname: None,
                code_filename: 104,
                code_firstlineno: 40,
                code_linetable: 120,
                code_adaptive: None,
                ascii_size: 48,
                compact_size: 72,
            },
            11 => Self {
                minor,
                runtime_interpreters_head: 40,
                interp_threads_head: 16,
                thread_next: 8,
                thread_interp: 16,
                thread_id: 152,
                thread_frame: 56,
                cframe_frame: Some(8),
                frame_previous: 48,
                frame_code: 32,
                frame_instr: 56,
                frame_owner: Some(69),
                frame_entry: Some(68),
                code_name: 120,
                code_qualname: Some(128),
                code_filename: 112,
                code_firstlineno: 72,
                code_linetable: 136,
                code_adaptive: Some(184),
                ascii_size: 48,
                compact_size: 72,
            },
            12 => Self {
                minor,
                runtime_interpreters_head: 40,
                interp_threads_head: 72,
                thread_next: 8,
                thread_interp: 16,
                thread_id: 136,
                thread_frame: 56,
                cframe_frame: Some(0),
                frame_previous: 8,
                frame_code: 0,
                frame_instr: 56,
                frame_owner: Some(70),
                frame_entry: None,
                code_name: 120,
                code_qualname: Some(128),
                code_filename: 112,
                code_firstlineno: 68,
                code_linetable: 136,
                code_adaptive: Some(192),
                ascii_size: 40,
                compact_size: 56,
            },
            // 3.12's frames, code objects and strings; the runtime, the
            // interpreter and the thread state moved (`cframe` is gone).
            13 => Self {
                minor,
                runtime_interpreters_head: 632,
                interp_threads_head: 7344,
                thread_id: 152,
                thread_frame: 72,
                cframe_frame: None,
                code_adaptive: Some(200),
                ..Self::known(12)?
            },
            _ => return None,
        };
        Some(layout)
    }

    /// What the probe needs, for the process whose `_PyRuntime` is at
    /// `runtime`.
    pub fn for_probe(&self, runtime: u64) -> PyProcess {
        let span =
            |fields: &[Option<u32>]| fields.iter().flatten().map(|f| f + 8).max().unwrap_or(8);
        PyProcess {
            runtime,
            interpreters_head: self.runtime_interpreters_head,
            threads_head: self.interp_threads_head,
            thread_next: self.thread_next,
            thread_id: self.thread_id,
            thread_frame: self.thread_frame,
            thread_block: span(&[
                Some(self.thread_next),
                Some(self.thread_id),
                Some(self.thread_frame),
            ]),
            cframe_frame: self.cframe_frame.unwrap_or(PY_NO_FIELD),
            frame_previous: self.frame_previous,
            frame_code: self.frame_code,
            frame_instr: self.frame_instr,
            frame_owner: self.frame_owner.unwrap_or(PY_NO_FIELD),
            frame_entry: self.frame_entry.unwrap_or(PY_NO_FIELD),
            // The owner and entry bytes lie below `instr`'s 8 bytes' end in
            // every version; a frame is at least that long.
            frame_block: span(&[
                Some(self.frame_previous),
                Some(self.frame_code),
                Some(self.frame_instr),
                self.frame_owner,
                self.frame_entry,
            ]),
            _reserved: 0,
        }
    }

    /// Whether the probe can read what it needs of a thread state and a
    /// frame in one read each.
    pub fn fits_probe(&self) -> bool {
        let probe = self.for_probe(0);
        probe.thread_block <= PY_BLOCK_MAX && probe.frame_block <= PY_BLOCK_MAX
    }
}

/// Why `_Py_DebugOffsets` was not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DebugOffsetsError {
    #[error("_PyRuntime does not start with _Py_DebugOffsets")]
    NoCookie,
    #[error("it is a free-threaded build, whose frames tcptrace does not read")]
    FreeThreaded,
    #[error("_Py_DebugOffsets describes version {0:#x}, not 3.13")]
    OtherVersion(u64),
}

/// Bytes of `_Py_DebugOffsets` read: up to `code_object`'s last field.
pub const DEBUG_OFFSETS_BYTES: usize = 352;

/// 3.13's layout as its `_Py_DebugOffsets` states it (the first
/// DEBUG_OFFSETS_BYTES of `_PyRuntime`); what it does not describe comes
/// from the headers.
pub fn from_debug_offsets(bytes: &[u8]) -> Result<PyLayout, DebugOffsetsError> {
    let word = |index: usize| -> u64 {
        bytes
            .get(index * 8..index * 8 + 8)
            .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or_default()))
    };
    if bytes.len() < DEBUG_OFFSETS_BYTES || &bytes[..8] != b"xdebugpy" {
        return Err(DebugOffsetsError::NoCookie);
    }
    let version = word(1);
    if version >> 16 != 0x030d {
        return Err(DebugOffsetsError::OtherVersion(version));
    }
    if word(2) != 0 {
        return Err(DebugOffsetsError::FreeThreaded);
    }
    let Some(mut layout) = PyLayout::known(13) else {
        return Err(DebugOffsetsError::OtherVersion(version));
    };
    let field = |index: usize| word(index) as u32;
    // The word indexes of each struct's fields, after its `size`:
    // runtime_state at 3, interpreter_state at 6, thread_state at 19,
    // interpreter_frame at 28, code_object at 34.
    layout.runtime_interpreters_head = field(5);
    layout.interp_threads_head = field(9);
    layout.thread_next = field(21);
    layout.thread_interp = field(22);
    layout.thread_frame = field(23);
    layout.thread_id = field(24);
    layout.frame_previous = field(29);
    layout.frame_code = field(30);
    layout.frame_instr = field(31);
    layout.frame_owner = Some(field(33));
    layout.code_filename = field(35);
    layout.code_name = field(36);
    layout.code_qualname = Some(field(37));
    layout.code_linetable = field(38);
    layout.code_firstlineno = field(39);
    layout.code_adaptive = Some(field(43));
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_version_fits_the_probe_and_nothing_else_is_known() {
        for minor in OLDEST_MINOR..=NEWEST_MINOR {
            let layout = PyLayout::known(minor).unwrap();
            assert!(layout.fits_probe(), "3.{minor}");
            assert_eq!(layout.minor, minor);
        }
        assert_eq!(PyLayout::known(8), None);
        assert_eq!(PyLayout::known(14), None);
        let probe = PyLayout::known(9).unwrap().for_probe(0x1000);
        assert_eq!(probe.thread_block, 184, "past thread_id at 176");
        assert_eq!(probe.frame_block, 112, "past f_lasti at 104");
        assert_eq!(probe.cframe_frame, PY_NO_FIELD);
        assert_eq!(probe.runtime, 0x1000);
    }

    /// `_Py_DebugOffsets` as 3.13 fills it, built from the table itself.
    fn debug_offsets(free_threaded: u64) -> Vec<u8> {
        let layout = PyLayout::known(13).unwrap();
        let mut words = vec![0u64; DEBUG_OFFSETS_BYTES / 8];
        words[1] = 0x030d00f0;
        words[2] = free_threaded;
        words[5] = 632;
        words[9] = 7344;
        words[21] = 8;
        words[22] = 16;
        words[23] = 72;
        words[24] = 152;
        words[29] = 8;
        words[30] = 0;
        words[31] = 56;
        words[33] = 70;
        words[35] = 112;
        words[36] = 120;
        words[37] = 128;
        words[38] = 136;
        words[39] = 68;
        words[43] = layout.code_adaptive.unwrap() as u64;
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        bytes[..8].copy_from_slice(b"xdebugpy");
        bytes
    }

    #[test]
    fn the_debug_offsets_of_3_13_agree_with_its_headers() {
        assert_eq!(
            from_debug_offsets(&debug_offsets(0)),
            Ok(PyLayout::known(13).unwrap())
        );
        assert_eq!(
            from_debug_offsets(&debug_offsets(1)),
            Err(DebugOffsetsError::FreeThreaded)
        );
        let mut other = debug_offsets(0);
        other[8..16].copy_from_slice(&0x030e00f0u64.to_ne_bytes());
        assert_eq!(
            from_debug_offsets(&other),
            Err(DebugOffsetsError::OtherVersion(0x030e00f0))
        );
        assert_eq!(
            from_debug_offsets(&[0; DEBUG_OFFSETS_BYTES]),
            Err(DebugOffsetsError::NoCookie)
        );
    }
}
