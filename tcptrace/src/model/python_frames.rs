//! A thread's Python frames, as the probe copied them beside its stack,
//! named and put in their place among the native frames: each run of
//! Python frames goes where the interpreter's C function that runs it
//! (`_PyEval_EvalFrameDefault`) is on the native stack.

use super::{
    python_layout::OWNED_BY_CSTACK,
    stack::{Frame, FrameKind},
};

/// The module a Python frame is shown in: it is in no mapping.
pub const PYTHON_MODULE: &str = "[python]";

/// One frame as the probe copied it: its code object, its instruction
/// (`PyFrame::instr`), and its flags (`PyFrames::flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CopiedFrame {
    pub code: u64,
    pub instr: u64,
    pub flags: u8,
}

/// How the probe's walk of the thread's frames ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PythonWalk {
    Complete,
    /// More frames than the probe copies.
    Deeper,
    /// The copying thread was not among the interpreter's thread states.
    NoThread,
    ReadFailed,
    NoThreadPointer,
    Other(i32),
}

impl PythonWalk {
    pub fn from_status(status: i32) -> Self {
        use tcptrace_common::*;
        match status {
            PY_WALK_COMPLETE => Self::Complete,
            PY_WALK_DEEPER => Self::Deeper,
            PY_WALK_NO_THREAD => Self::NoThread,
            PY_WALK_READ_FAILED => Self::ReadFailed,
            PY_WALK_NO_THREAD_POINTER => Self::NoThreadPointer,
            other => Self::Other(other),
        }
    }

    /// Why a stack shows no Python frames, or fewer than the thread had.
    pub fn gap(self) -> Option<String> {
        let why = match self {
            Self::Complete => return None,
            Self::Deeper => format!(
                "more than {} Python frames: the outer ones were not copied",
                tcptrace_common::PY_FRAMES_MAX
            ),
            Self::NoThread => format!(
                "Python frames not copied: the reading thread was not among the interpreter's first {} thread states (a thread Python did not start, or more threads than that)",
                tcptrace_common::PY_THREADS_MAX
            ),
            Self::ReadFailed => {
                "Python frames not copied: a read of the interpreter's memory failed in the kernel (a page not resident, or a layout that does not match)".to_owned()
            }
            Self::NoThreadPointer => {
                "Python frames not copied: this kernel's BTF does not say where a task's thread pointer is".to_owned()
            }
            Self::Other(status) => format!("Python frames not copied (walk status {status})"),
        };
        Some(why)
    }
}

/// A thread's copied Python frames, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CopiedPython {
    pub walk: PythonWalk,
    pub frames: Vec<CopiedFrame>,
}

/// A Python frame named from its code object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonFrame {
    /// `co_qualname` (3.11+) or `co_name`.
    pub function: String,
    /// `co_filename` as the interpreter has it: a path, or `<frozen …>`.
    pub path: String,
    pub line: Option<u32>,
}

impl PythonFrame {
    pub fn frame(&self) -> Frame {
        let file = self.path.rsplit('/').next().unwrap_or(&self.path);
        let text = match self.line {
            Some(line) => format!("{} ({file}:{line})", self.function),
            None => format!("{} ({file})", self.function),
        };
        Frame {
            text,
            module: Some(PYTHON_MODULE.to_owned()),
            kind: if is_python_library(&self.path) {
                FrameKind::Runtime
            } else {
                FrameKind::Program
            },
        }
    }
}

/// Python's own standard library (a program's dependencies in
/// site-packages are its code).
pub fn is_python_library(path: &str) -> bool {
    (path.starts_with("<frozen")
        || path.contains("/lib/python3")
        || path.contains("/lib64/python3"))
        && !path.contains("/site-packages/")
        && !path.contains("/dist-packages/")
}

/// The frames to show, each with whether it is the outermost of the run
/// one interpreter C call executes. Shim frames (3.12+) mark a run's end
/// and are not shown; 3.11 marks the run's outermost frame itself; before
/// 3.11 every Python frame has a C call of its own.
pub fn shown_frames(minor: u8, frames: &[CopiedFrame]) -> Vec<(CopiedFrame, bool)> {
    let mut shown: Vec<(CopiedFrame, bool)> = Vec::with_capacity(frames.len());
    for frame in frames {
        match minor {
            ..=10 => shown.push((*frame, true)),
            11 => shown.push((*frame, frame.flags & tcptrace_common::PY_FRAME_ENTRY != 0)),
            _ if frame.flags & 0x0f == OWNED_BY_CSTACK => {
                if let Some(last) = shown.last_mut() {
                    last.1 = true;
                }
            }
            _ => shown.push((*frame, false)),
        }
    }
    shown
}

/// A native frame that runs Python frames.
pub fn is_eval_frame(frame: &Frame) -> bool {
    frame.text.starts_with("_PyEval_EvalFrameDefault")
}

/// A frame a perf map names for Python's `-X perf` trampolines: the
/// interpreter's own frames say the same, and more.
fn is_perf_trampoline(frame: &Frame) -> bool {
    frame.text.starts_with("py::")
}

/// `native` with `python`'s runs in their places (innermost first, each
/// with whether it ends a run), and the new index of every old native
/// frame (`None`: dropped). Runs left when the native frames run out (a
/// native walk cut short) follow them.
pub fn merge(native: Vec<Frame>, python: Vec<(Frame, bool)>) -> (Vec<Frame>, Vec<Option<usize>>) {
    let mut merged = Vec::with_capacity(native.len() + python.len());
    let mut moved = Vec::with_capacity(native.len());
    let mut python = python.into_iter();
    for frame in native {
        if is_eval_frame(&frame) {
            for (py, ends_run) in python.by_ref() {
                merged.push(py);
                if ends_run {
                    break;
                }
            }
        }
        if is_perf_trampoline(&frame) {
            moved.push(None);
            continue;
        }
        moved.push(Some(merged.len()));
        merged.push(frame);
    }
    merged.extend(python.map(|(frame, _)| frame));
    (merged, moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(text: &str) -> Frame {
        Frame {
            text: text.to_owned(),
            module: Some("libpython3.11.so.1.0".to_owned()),
            kind: FrameKind::Runtime,
        }
    }

    fn py(function: &str, path: &str) -> Frame {
        PythonFrame {
            function: function.to_owned(),
            path: path.to_owned(),
            line: Some(3),
        }
        .frame()
    }

    fn copied(code: u64, flags: u8) -> CopiedFrame {
        CopiedFrame {
            code,
            instr: 0,
            flags,
        }
    }

    #[test]
    fn a_program_frame_is_its_own_and_the_library_is_the_runtime() {
        let handler = py("Server.handle", "/srv/app/server.py");
        assert_eq!(handler.text, "Server.handle (server.py:3)");
        assert_eq!(handler.kind, FrameKind::Program);
        assert_eq!(handler.module.as_deref(), Some(PYTHON_MODULE));
        for library in [
            "/usr/lib/python3.11/socketserver.py",
            "/root/.pyenv/versions/3.9.18/lib/python3.9/asyncio/base_events.py",
            "<frozen importlib._bootstrap>",
        ] {
            assert_eq!(py("f", library).kind, FrameKind::Runtime, "{library}");
        }
        assert_eq!(
            py(
                "get",
                "/srv/venv/lib/python3.11/site-packages/requests/api.py"
            )
            .kind,
            FrameKind::Program
        );
        let no_line = PythonFrame {
            line: None,
            ..PythonFrame {
                function: "f".into(),
                path: "x.py".into(),
                line: None,
            }
        };
        assert_eq!(no_line.frame().text, "f (x.py)");
    }

    #[test]
    fn runs_end_at_each_version_s_marks_and_shims_are_not_shown() {
        let frames = [copied(1, 0), copied(2, 0), copied(3, 0)];
        assert!(shown_frames(9, &frames).iter().all(|(_, ends)| *ends));
        let entry = tcptrace_common::PY_FRAME_ENTRY;
        let ends: Vec<bool> = shown_frames(11, &[copied(1, 0), copied(2, entry), copied(3, entry)])
            .iter()
            .map(|(_, ends)| *ends)
            .collect();
        assert_eq!(ends, [false, true, true]);
        let shim = OWNED_BY_CSTACK;
        let shown = shown_frames(
            12,
            &[
                copied(1, 0),
                copied(2, 0),
                copied(9, shim),
                copied(3, 1),
                copied(9, shim),
            ],
        );
        let shown: Vec<(u64, bool)> = shown.iter().map(|(f, ends)| (f.code, *ends)).collect();
        assert_eq!(shown, [(1, false), (2, true), (3, true)]);
    }

    #[test]
    fn each_run_goes_where_its_eval_frame_is_and_trampolines_go() {
        let stack = vec![
            native("__libc_recv"),
            native("sock_recv (socketmodule.c:1)"),
            native("_PyEval_EvalFrameDefault (ceval.c:1)"),
            native("py::handle:/srv/app.py"),
            native("_PyEval_EvalFrameDefault (ceval.c:1)"),
            native("main"),
        ];
        let python = vec![
            (py("recv_line", "/srv/app.py"), false),
            (py("handle", "/srv/app.py"), true),
            (py("serve", "/srv/app.py"), true),
            (py("<module>", "/srv/app.py"), true),
        ];
        let (merged, moved) = merge(stack, python);
        let texts: Vec<&str> = merged.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "__libc_recv",
                "sock_recv (socketmodule.c:1)",
                "recv_line (app.py:3)",
                "handle (app.py:3)",
                "_PyEval_EvalFrameDefault (ceval.c:1)",
                "serve (app.py:3)",
                "_PyEval_EvalFrameDefault (ceval.c:1)",
                "main",
                "<module> (app.py:3)",
            ]
        );
        assert_eq!(
            moved,
            [Some(0), Some(1), Some(4), None, Some(6), Some(7)],
            "the trampoline is dropped"
        );
    }

    #[test]
    fn every_walk_that_stopped_short_says_why() {
        assert_eq!(PythonWalk::from_status(0).gap(), None);
        for status in [1, -1, -2, -3, -9] {
            let gap = PythonWalk::from_status(status).gap().unwrap();
            assert!(gap.contains("Python frames"), "{gap}");
        }
    }
}
