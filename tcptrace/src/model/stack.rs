//! A user stack resolved to names: each frame knows whose code it is (the
//! program's, a runtime's or library's, JIT code a perf map names, or
//! nothing known), so a report can put the program's frames first and say
//! which runtime hides them when none is named. Pure: names and module
//! paths come in as text.

use std::sync::Arc;

use serde::Serialize;

use super::python_frames::{CopiedPython, PYTHON_MODULE};

/// A named stack, shared by every socket whose stack it is.
pub type Frames = Arc<NamedStack>;

/// A user stack as unwound from the probe's copy: addresses to look up
/// (a return address already moved back into its call), innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwoundStack {
    pub addresses: Vec<u64>,
    /// Why the walk stopped before the outermost frame, if it did.
    pub truncated: Option<String>,
    /// The thread's Python frames, where the probe copied them.
    pub python: Option<CopiedPython>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// The program's own compiled code.
    Program,
    /// libc, the dynamic loader, an interpreter, a VM, an event loop, a
    /// language's standard library or runtime.
    Runtime,
    /// The program's code compiled at run time, named by a perf map.
    Jit,
    /// No name: anonymous memory no perf map names, or a stripped module.
    Unresolved,
}

/// Where a frame's name came from: how far its text can be trusted to be
/// the program's own code depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    /// The module's symbol table or debug info.
    Symbols,
    /// The process's perf map (`/tmp/perf-PID.map`).
    PerfMap,
    /// Nothing named it.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// `function (file:line)`, `module+0xoffset` or a bare address.
    pub text: String,
    /// The file name of the mapping the address is in (`libc.so.6`), or
    /// `[anon]`; `None` when it is in no mapping.
    pub module: Option<String>,
    pub kind: FrameKind,
}

impl Frame {
    /// A frame that names the program's own code.
    pub fn is_program(&self) -> bool {
        matches!(self.kind, FrameKind::Program | FrameKind::Jit)
    }

    /// What a folded line calls the frame's home: a Go package for Go's
    /// standard library, else the module.
    pub fn area(&self) -> String {
        if self.kind == FrameKind::Runtime
            && let Some(package) = go_std_package(&self.text)
        {
            return format!("Go {package}");
        }
        if self.kind == FrameKind::Runtime && self.module.as_deref() == Some(PYTHON_MODULE) {
            return "Python stdlib".to_owned();
        }
        if self.kind == FrameKind::Runtime && self.module.as_deref().is_none_or(|m| m == "[anon]") {
            // Named by a perf map: the module says nothing.
            if self.text.starts_with("py::") {
                return "Python stdlib".to_owned();
            }
            if java_method(&self.text).is_some() {
                return "JDK".to_owned();
            }
            if is_jvm_stub_name(&self.text) {
                return "JVM stubs".to_owned();
            }
            if mono_class(&self.text).is_some() {
                return "Mono".to_owned();
            }
            return "V8".to_owned();
        }
        self.module
            .clone()
            .unwrap_or_else(|| "no module".to_owned())
    }

    /// What makes two frames the same frame in a code path: the name, or for
    /// an unnamed frame only its module (its address says nothing a reader
    /// can use, and differs between processes and runs).
    fn group_key(&self) -> String {
        if self.kind == FrameKind::Unresolved || is_module_offset(&self.text) {
            format!("?{}", self.module.as_deref().unwrap_or(""))
        } else {
            self.text.clone()
        }
    }
}

/// A resolved stack: frames innermost first, why it was cut, and what
/// would name frames a runtime hides.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NamedStack {
    pub frames: Vec<Frame>,
    pub truncated: Option<String>,
    /// Set when the frames are in an interpreter or an event loop and none
    /// of them is the program's: which runtime, and what would name them.
    pub note: Option<String>,
}

impl NamedStack {
    /// `pid` is the process the stack is of, for advice that names it.
    #[cfg(test)]
    pub fn new(frames: Vec<Frame>, truncated: Option<String>, pid: u32) -> Self {
        Self::with_python_note(frames, truncated, pid, None)
    }

    /// With what is known of the process's Python frames: why
    /// they are missing or partial. It replaces the generic advice where
    /// no program frame is named, and is said anyway where the walk of the
    /// frames stopped short.
    pub fn with_python_note(
        frames: Vec<Frame>,
        truncated: Option<String>,
        pid: u32,
        python: Option<String>,
    ) -> Self {
        let note = asyncio_note(&frames)
            .or_else(|| {
                python.clone().filter(|_| {
                    !frames.iter().any(Frame::is_program) || frames.iter().any(is_python)
                })
            })
            .or_else(|| runtime_note(&frames, pid));
        Self {
            frames,
            truncated,
            note,
        }
    }

    /// One line per frame, innermost first, then the cut if there was one.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.frames.iter().map(|f| f.text.clone()).collect();
        if let Some(reason) = &self.truncated {
            lines.push(truncation_line(reason));
        }
        lines
    }

    /// Equal for stacks through the same frames of the program, whatever
    /// runtime and library frames lie between them: a JIT inlines the JDK's
    /// methods into one compilation and not into another, and a reader sees
    /// those frames folded anyway. A stack with none of the program's frames
    /// keys on all of its own, or two such stacks from different places would
    /// be one.
    pub fn group_key(&self) -> (Vec<String>, bool) {
        let key = if self.frames.iter().any(Frame::is_program) {
            self.frames
                .iter()
                .filter(|f| f.is_program())
                .map(Frame::group_key)
                .collect()
        } else {
            runtime_key(&self.frames)
        };
        (key, self.truncated.is_some())
    }
}

/// Every frame, but a run of unnamed frames of one module as one: their
/// addresses and how many there are differ between sockets of one path.
fn runtime_key(frames: &[Frame]) -> Vec<String> {
    let mut key: Vec<String> = Vec::new();
    for frame in frames {
        let part = frame.group_key();
        if part.starts_with('?') && key.last() == Some(&part) {
            continue;
        }
        key.push(part);
    }
    key
}

pub fn truncation_line(reason: &str) -> String {
    format!("(stack truncated: {reason})")
}

/// Whose code a frame is, from its name and the path of its module.
/// `module_path` is the mapping's path as `/proc/PID/maps` shows it
/// (`None`: anonymous memory or no mapping).
pub fn classify(name: Option<&str>, module_path: Option<&str>, source: NameSource) -> FrameKind {
    let module = module_path.map(file_name);
    let name = match (name, source) {
        (Some(name), NameSource::PerfMap) => return classify_jit_name(name),
        (Some(name), NameSource::Symbols) => Some(name),
        _ => None,
    };
    if module_path.is_some_and(is_runtime_module_path) || module.is_some_and(is_runtime_module) {
        return FrameKind::Runtime;
    }
    match name {
        Some(name) if is_runtime_symbol(name) => FrameKind::Runtime,
        Some(_) => FrameKind::Program,
        None => FrameKind::Unresolved,
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `module+0x1f` as the symbolizer writes an address it could not name.
fn is_module_offset(text: &str) -> bool {
    text.starts_with("0x")
        || text
            .rsplit_once("+0x")
            .is_some_and(|(_, hex)| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_runtime_module_path(path: &str) -> bool {
    // Everything a JDK ships: libjvm, libnet, libnio, the java launcher.
    path.contains("/lib/jvm/") || path.contains("/jdk/lib/") || path.contains("/jre/lib/")
        // Python's C extensions (`_socket`, and those in site-packages):
        // a Python program's own code is its Python.
        || path.contains("/lib/python")
        || path.contains("/lib64/python")
        // Mono's class libraries, compiled ahead of time (`mscorlib.dll.so`).
        || path.contains("/lib/mono/")
}

/// Shared objects and executables that are runtimes or system libraries,
/// by file name.
pub fn is_runtime_module(module: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "libc.so",
        "libc-",
        "ld-linux",
        "ld-musl",
        "ld64.so",
        "libpthread",
        "libdl",
        "librt",
        "libm.so",
        "libm-",
        "libresolv",
        "libgcc_s",
        "libstdc++",
        "libc++",
        "libssl",
        "libcrypto",
        "libz.so",
        "libpython",
        "libjvm",
        "libjava",
        "libnet.so",
        "libnio.so",
        "libjli",
        "libnode",
        "libuv",
        "libv8",
        "libmono",
    ];
    const EXECUTABLES: &[&str] = &[
        "node",
        "nodejs",
        "java",
        "python",
        "python2",
        "python3",
        "mono",
        "mono-sgen",
    ];
    if module.starts_with('[') {
        // [vdso], [vsyscall]; [anon] is no runtime.
        return module != "[anon]";
    }
    PREFIXES.iter().any(|p| module.starts_with(p))
        || EXECUTABLES.contains(&module)
        || module.contains(".cpython-")
        || module
            .strip_prefix("python")
            .is_some_and(|version| version.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// Runtime code linked into the program's own executable: Go's runtime
/// and standard library, libuv and V8 in node, libpython in python.
fn is_runtime_symbol(name: &str) -> bool {
    go_std_package(name).is_some()
        || name.starts_with("uv_")
        || name.starts_with("uv__")
        || name.starts_with("node::")
        || name.starts_with("v8::")
        || name.starts_with("Builtins_")
        || name.starts_with("_Py")
        || name
            .strip_prefix("Py")
            .is_some_and(|rest| rest.starts_with(|c: char| c == '_' || c.is_ascii_uppercase()))
        || name.starts_with("__libc_")
        || name.starts_with("__GI_")
}

/// The symbol a frame's text names, without the ` (file:line)` and
/// ` [inlined]` the symbolizer adds: Go's file names are paths, whose
/// slashes would hide the package.
fn symbol_of(text: &str) -> &str {
    let text = text.strip_suffix(" [inlined]").unwrap_or(text);
    text.split_once(" (").map_or(text, |(symbol, _)| symbol)
}

/// The Go standard-library package a symbol is in, if it is in one.
fn go_std_package(name: &str) -> Option<&str> {
    let name = symbol_of(name);
    const STD: &[&str] = &[
        "runtime",
        "syscall",
        "internal/",
        "net",
        "os",
        "io",
        "bufio",
        // crypto/tls reads a record through a bytes.Buffer.
        "bytes",
        "sync",
        "crypto/",
        "reflect",
        "fmt",
        "context",
        "golang.org/x/sys/",
    ];
    // `net/http.(*conn).serve`: the package is what comes before the first
    // dot after the last slash.
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let dot = slash + name[slash..].find('.')?;
    let package = &name[..dot];
    if package.is_empty() || package.contains(' ') || package.contains("::") {
        return None;
    }
    STD.iter()
        .any(|std| {
            if let Some(dir) = std.strip_suffix('/') {
                package.starts_with(dir) && package[dir.len()..].starts_with('/')
            } else {
                package == *std || package.starts_with(&format!("{std}/"))
            }
        })
        .then_some(package)
}

/// A name a perf map gives: the program's code, or a runtime's own
/// (Python's standard library, JVM stubs and the JDK's classes, V8's
/// builtins).
pub fn classify_jit_name(name: &str) -> FrameKind {
    if let Some(python) = name.strip_prefix("py::") {
        // `py::handle_request:/srv/app.py`, `py::_find_and_load:<frozen importlib._bootstrap>`.
        let path = python.split_once(':').map_or("", |(_, path)| path);
        let stdlib = path.starts_with("<frozen")
            || path.contains("/lib/python")
            || path.contains("/lib64/python");
        return if stdlib && !path.contains("/site-packages/") {
            FrameKind::Runtime
        } else {
            FrameKind::Jit
        };
    }
    if let Some(method) = java_method(name) {
        return if is_jdk_class(method) {
            FrameKind::Runtime
        } else {
            FrameKind::Jit
        };
    }
    if let Some(class) = mono_class(name) {
        return if is_mono_library(class) {
            FrameKind::Runtime
        } else {
            FrameKind::Jit
        };
    }
    if is_jvm_stub_name(name) {
        return FrameKind::Runtime;
    }
    // V8's --perf-basic-prof: `Builtin:…`, `BytecodeHandler:…`, `Stub:…`
    // are V8's; `JS:*handler /srv/app.js:3` is the program's, unless in
    // node's own library.
    for v8 in [
        "Builtin:",
        "BytecodeHandler:",
        "Stub:",
        "Handler:",
        "RegExp:",
    ] {
        if name.starts_with(v8) {
            return FrameKind::Runtime;
        }
    }
    if name.contains("node:") {
        return FrameKind::Runtime;
    }
    FrameKind::Jit
}

/// The `pkg.Class.method` of a JVM perf map entry: `long Spin.work(long)`
/// as JDK 17's `jcmd PID Compiler.perfmap` writes it, or
/// `Lcom/foo/Bar;::method` as perf-map-agent does.
fn java_method(name: &str) -> Option<&str> {
    if let Some(class) = name.strip_prefix('L')
        && let Some((class, _method)) = class.split_once(";::")
    {
        return Some(class);
    }
    let signature = name.split_once('(')?.0;
    let method = signature.rsplit(' ').next()?;
    method.contains('.').then_some(method)
}

/// The class of a Mono `--jitmap` entry: `Program:HandleLegacy
/// (System.Net.Sockets.TcpClient)`, `System.Net.Sockets.Socket:Receive
/// (byte[],int,int)`, or `(wrapper …)` for Mono's own wrappers.
fn mono_class(name: &str) -> Option<&str> {
    if name.starts_with("(wrapper ") {
        return Some("(wrapper");
    }
    let (head, _signature) = name.split_once(" (")?;
    if head.contains("::") || head.contains(' ') {
        return None;
    }
    let (class, method) = head.rsplit_once(':')?;
    (!class.is_empty() && !method.is_empty()).then_some(class)
}

fn is_mono_library(class: &str) -> bool {
    class == "(wrapper"
        || ["System.", "Mono.", "Microsoft."]
            .iter()
            .any(|p| class.starts_with(p))
}

fn is_jdk_class(method: &str) -> bool {
    let method = method.replace('/', ".");
    ["java.", "javax.", "jdk.", "sun.", "com.sun."]
        .iter()
        .any(|p| method.starts_with(p))
}

/// The JVM's own code in its code cache, as a perf map names it:
/// `Interpreter`, `StubRoutines (1)`, `I2C/C2I adapters`, `… Runtime1 stub`.
fn is_jvm_stub_name(name: &str) -> bool {
    java_method(name).is_none() && !name.contains("::") && {
        let lower = name.to_ascii_lowercase();
        name == "Interpreter"
            || lower.contains("stub")
            || lower.contains("adapter")
            || lower.contains("blob")
            || lower == "vtable chunks"
            || lower.starts_with("jni_fast_")
            || lower.starts_with("resolve_")
            || lower == "native signature handlers"
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runtime {
    Python,
    Java,
    Node,
    /// Go's net/http client transport, in the goroutines it starts.
    GoHttpClient,
    Mono,
}

/// The runtime whose frames fill a stack, if one does.
fn runtime_of(frames: &[Frame]) -> Option<Runtime> {
    let module_is = |f: &Frame, test: fn(&str) -> bool| f.module.as_deref().is_some_and(test);
    let python = |m: &str| {
        m.starts_with("libpython")
            || m.strip_prefix("python")
                .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
    };
    let java = |m: &str| m.starts_with("libjvm") || m == "java";
    let node = |m: &str| m.starts_with("libnode") || m == "node" || m == "nodejs";
    let mono = |m: &str| m.starts_with("libmono") || m == "mono-sgen" || m == "mono";
    if is_go_http_client(frames) {
        return Some(Runtime::GoHttpClient);
    }
    if frames
        .iter()
        .any(|f| module_is(f, python) || is_python(f) || f.text.starts_with("_PyEval_EvalFrame"))
    {
        return Some(Runtime::Python);
    }
    if frames
        .iter()
        .any(|f| module_is(f, java) || f.text == "Interpreter")
    {
        return Some(Runtime::Java);
    }
    if frames.iter().any(|f| module_is(f, mono)) {
        return Some(Runtime::Mono);
    }
    if frames.iter().any(|f| {
        module_is(f, node) || module_is(f, |m| m.starts_with("libuv")) || f.text.starts_with("uv_")
    }) {
        return Some(Runtime::Node);
    }
    None
}

/// Go's net/http client dials (`(*Transport).dialConnFor`) and reads
/// (`(*persistConn).readLoop`) in goroutines of its own, so the code that
/// made the request is never on such a stack. Any other frame of net/http
/// (the server's `(*conn).serve`, the caller's `(*Client).do`) means the
/// stack is not only the transport's.
fn is_go_http_client(frames: &[Frame]) -> bool {
    let mut http = frames
        .iter()
        .filter(|f| {
            go_std_package(&f.text).is_some_and(|p| p == "net/http" || p.starts_with("net/http/"))
        })
        .map(|f| symbol_of(&f.text))
        .peekable();
    http.peek().is_some() && http.all(is_go_http_transport)
}

fn is_go_http_transport(symbol: &str) -> bool {
    const RECEIVERS: &[&str] = &[
        "(*Transport).",
        "(*persistConn).",
        "persistConnWriter.",
        "(*persistConnWriter).",
    ];
    symbol
        .strip_prefix("net/http.")
        .is_some_and(|method| RECEIVERS.iter().any(|r| method.starts_with(r)))
}

/// The transport is never the culprit: it keeps a connection open for as
/// long as the response body it read into is neither read to EOF nor closed.
const GO_HTTP_CLIENT_NOTE: &str = "these frames are Go's net/http client transport, which dials and reads in goroutines of its own, so the code that made the request is not on this stack: a socket kept open here is a response body that was never closed — look for an http.Get/Do whose resp.Body.Close() is missing";

/// A frame the interpreter's own frames named.
fn is_python(frame: &Frame) -> bool {
    frame.module.as_deref() == Some(PYTHON_MODULE)
}

/// asyncio reads in its event loop: the coroutine that serves the
/// connection is suspended, not on the stack, whatever program frames
/// (the `asyncio.run` caller) are.
fn asyncio_note(frames: &[Frame]) -> Option<String> {
    frames
        .iter()
        .any(|f| is_python(f) && f.kind == FrameKind::Runtime && f.text.contains("(base_events.py:"))
        .then(|| "Python asyncio: the read happens in the event loop (base_events.py); the coroutine that serves the connection is suspended and not on the stack at a read. The peer closed; the socket stays open until the handler calls writer.close() (or transport.close())".to_owned())
}

/// Which runtime hides the program's frames and what would name them, or
/// what they mean when naming would not help; `None` when a frame of the
/// program is named or no runtime is known.
pub fn runtime_note(frames: &[Frame], pid: u32) -> Option<String> {
    if frames.iter().any(Frame::is_program) {
        return None;
    }
    let note = match runtime_of(frames)? {
        Runtime::Python => {
            if frames.iter().any(|f| f.text.starts_with("py::")) {
                // The perf map works; this stack has only the standard
                // library's Python frames.
                "Python frames: only the standard library's are on this stack".to_owned()
            } else {
                "Python interpreter frames: run Python 3.12+ with -X perf (or PYTHONPERFSUPPORT=1) to name them".to_owned()
            }
        }
        Runtime::Java => {
            let interpreted = frames.iter().any(|f| f.text == "Interpreter");
            format!(
                "Java frames{}: compiled methods are named with -XX:+PreserveFramePointer and a perf map from `jcmd {pid} Compiler.perfmap` (read again at each report); interpreted methods stay unnamed",
                if interpreted { " (interpreted here)" } else { "" }
            )
        }
        Runtime::GoHttpClient => GO_HTTP_CLIENT_NOTE.to_owned(),
        Runtime::Mono => "Mono: its JIT code is walked by frame pointers, which Mono leaves out by default, and named from its --jitmap: run with MONO_DEBUG=disable_omit_fp and `mono --jitmap` (Mono buffers the map, so the newest methods are named once it writes more; each report reads it again)".to_owned(),
        Runtime::Node => "Node.js: the read happens in the event loop (libuv); the JS handler is not on the stack at a read. The peer closed; the socket stays open until JS calls end() or destroy() (allowHalfOpen, or an 'end' handler that does neither)".to_owned(),
    };
    Some(note)
}

/// A stack from (text, module path) pairs, each frame classified as the
/// symbolizer would: a name in `[anon]` from a perf map, `module+0x…`
/// unnamed.
#[cfg(test)]
pub(crate) fn test_stack(frames: &[(&str, &str)], truncated: Option<&str>) -> Frames {
    let frames = frames
        .iter()
        .map(|&(text, path)| {
            let source = if is_module_offset(text) {
                NameSource::None
            } else if path == "[anon]" {
                NameSource::PerfMap
            } else {
                NameSource::Symbols
            };
            let path = (!path.is_empty() && path != "[anon]").then_some(path);
            Frame {
                text: text.to_owned(),
                module: Some(path.map_or("[anon]", file_name).to_owned()),
                kind: classify(Some(text), path, source),
            }
        })
        .collect();
    Arc::new(NamedStack::new(frames, truncated.map(str::to_owned), 4242))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str, module: Option<&str>, kind: FrameKind) -> Frame {
        Frame {
            text: text.to_owned(),
            module: module.map(str::to_owned),
            kind,
        }
    }

    #[test]
    fn system_libraries_and_runtimes_are_runtime() {
        use NameSource::Symbols;
        for (name, module) in [
            ("__libc_recv", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            ("_dl_start_user", "/lib64/ld-linux-x86-64.so.2"),
            ("_PyEval_EvalFrameDefault", "/usr/lib/libpython3.11.so.1.0"),
            (
                "_PyEval_EvalFrameDefault",
                "/root/.pyenv/versions/3.12.1/bin/python3.12",
            ),
            (
                "JavaCalls::call_helper",
                "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so",
            ),
            (
                "Java_sun_nio_ch_SocketDispatcher_read0",
                "/usr/lib/jvm/java-17-openjdk-amd64/lib/libnio.so",
            ),
            ("uv__read", "/usr/bin/node"),
            ("uv__stream_io", "/usr/lib/x86_64-linux-gnu/libuv.so.1"),
            (
                "sock_recv_impl (socketmodule.c:3666) [inlined]",
                "/root/.pyenv/versions/3.12.1/lib/python3.12/lib-dynload/_socket.cpython-312-x86_64-linux-gnu.so",
            ),
            (
                "sock_recv",
                "/usr/lib/python3.11/lib-dynload/_socket.cpython-311-x86_64-linux-gnu.so",
            ),
            ("runtime.goexit", "/srv/goserver"),
            ("syscall.Syscall", "/srv/goserver"),
            ("internal/poll.(*FD).Read", "/srv/goserver"),
            ("net.(*conn).Read", "/srv/goserver"),
            ("net/http.(*conn).serve", "/srv/goserver"),
            ("bytes.(*Buffer).ReadFrom", "/srv/goserver"),
        ] {
            assert_eq!(
                classify(Some(name), Some(module), Symbols),
                FrameKind::Runtime,
                "{name} in {module}"
            );
        }
        assert_eq!(
            classify(
                None,
                Some("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                NameSource::None
            ),
            FrameKind::Runtime,
            "an unnamed libc frame is still libc's"
        );
    }

    #[test]
    fn the_programs_own_code_is_program() {
        use NameSource::Symbols;
        for (name, module) in [
            ("handler_leaky", "/srv/server"),
            ("handler_leaky.constprop.0", "/srv/server"),
            ("main.handleLegacy", "/srv/goserver"),
            ("main.drain", "/srv/goserver"),
            ("github.com/acme/svc/net.Serve", "/srv/goserver"),
            ("network_read", "/srv/server"),
            ("iostream_read", "/srv/server"),
            (
                "tcptrace_testpeer::serve_request",
                "/work/target/debug/tcptrace-testpeer",
            ),
            ("app_read", "/srv/libapp.so"),
        ] {
            assert_eq!(
                classify(Some(name), Some(module), Symbols),
                FrameKind::Program,
                "{name} in {module}"
            );
        }
        assert_eq!(
            classify(None, Some("/srv/server"), NameSource::None),
            FrameKind::Unresolved
        );
        assert_eq!(
            classify(None, None, NameSource::None),
            FrameKind::Unresolved
        );
    }

    #[test]
    fn python_notes_a_walk_cut_short_even_under_named_frames_and_asyncio_always() {
        use crate::model::python_frames::PythonFrame;
        let py = |function: &str, path: &str| {
            PythonFrame {
                function: function.into(),
                path: path.into(),
                line: Some(7),
            }
            .frame()
        };
        let libpython = Frame {
            text: "_PyEval_EvalFrameDefault".into(),
            module: Some("libpython3.11.so.1.0".into()),
            kind: FrameKind::Runtime,
        };
        // Frames named, the walk cut short: said.
        let cut = NamedStack::with_python_note(
            vec![libpython.clone(), py("handle", "/srv/app.py")],
            None,
            1,
            Some("more than 32 Python frames: the outer ones were not copied".into()),
        );
        assert!(cut.note.as_deref().unwrap().starts_with("more than 32"));
        // No Python frame and a program frame from elsewhere (a perf map):
        // why they are missing is not said over the named frame.
        let perf = Frame {
            text: "py::handle:/srv/app.py".into(),
            module: Some("[anon]".into()),
            kind: FrameKind::Jit,
        };
        let named = NamedStack::with_python_note(
            vec![libpython.clone(), perf],
            None,
            1,
            Some("Python 3.12.1 frames were not copied with this stack".into()),
        );
        assert_eq!(named.note, None);
        // Nothing named: the reason replaces the generic advice.
        let unnamed = NamedStack::with_python_note(
            vec![libpython.clone()],
            None,
            1,
            Some("Python 3.8 frames are not read: …".into()),
        );
        assert!(unnamed.note.as_deref().unwrap().starts_with("Python 3.8"));
        // asyncio: the loop's frames under the program's `<module>`.
        let asyncio = NamedStack::with_python_note(
            vec![
                libpython,
                py(
                    "BaseEventLoop._run_once",
                    "/usr/lib/python3.11/asyncio/base_events.py",
                ),
                py("<module>", "/srv/app.py"),
            ],
            None,
            1,
            None,
        );
        assert!(asyncio.note.as_deref().unwrap().contains("event loop"));
        assert_eq!(asyncio.frames[1].area(), "Python stdlib");
    }

    #[test]
    fn a_mono_stack_cut_in_its_jit_code_says_what_would_walk_and_name_it() {
        let stack = test_stack(
            &[
                ("__libc_recvfrom", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
                ("mono_w32socket_recv", "/usr/bin/mono-sgen"),
                (
                    "(wrapper managed-to-native) System.Net.Sockets.Socket:Receive_internal (intptr)",
                    "[anon]",
                ),
                ("[anon]+0x671bf", "[anon]"),
            ],
            Some("unwinding stopped: Frame pointer unwinding moved backwards"),
        );
        let note = stack.note.as_deref().unwrap();
        assert!(note.starts_with("Mono:"), "{note}");
        assert!(note.contains("MONO_DEBUG=disable_omit_fp"), "{note}");
        assert!(note.contains("--jitmap"), "{note}");
        assert_eq!(stack.frames[2].area(), "Mono");
        // Named down to the program's method: no note.
        let named = test_stack(
            &[
                ("mono_w32socket_recv", "/usr/bin/mono-sgen"),
                (
                    "Program:HandleLegacy (System.Net.Sockets.TcpClient)",
                    "[anon]",
                ),
            ],
            None,
        );
        assert_eq!(named.note, None);
        assert!(named.frames[1].is_program());
    }

    #[test]
    fn perf_map_names_are_jit_code_unless_a_runtimes() {
        use FrameKind::*;
        for (name, kind) in [
            ("py::handle_request:/srv/app.py", Jit),
            (
                "py::Handler.handle:/srv/venv/lib/python3.12/site-packages/x/y.py",
                Jit,
            ),
            (
                "py::recv_into:/root/.pyenv/versions/3.12.1/lib/python3.12/socket.py",
                Runtime,
            ),
            ("py::_find_and_load:<frozen importlib._bootstrap>", Runtime),
            ("long Spin.work(long)", Jit),
            ("void com.acme.Leak.handleClient(java.net.Socket)", Jit),
            (
                "int java.net.SocketInputStream.read(byte[], int, int)",
                Runtime,
            ),
            (
                "java.lang.Object jdk.internal.misc.Unsafe.getReferenceVolatile(java.lang.Object, long)",
                Runtime,
            ),
            (
                "int sun.nio.ch.NioSocketImpl.read(byte[], int, int)",
                Runtime,
            ),
            (
                "java.lang.String java.io.BufferedReader.readLine()",
                Runtime,
            ),
            (
                "int java.net.Socket$SocketInputStream.read(byte[], int, int)",
                Runtime,
            ),
            ("void Leak$$Lambda$14/0x0000000800c03000.run()", Jit),
            ("Lcom/acme/Leak;::handleClient", Jit),
            ("Ljava/net/SocketInputStream;::read", Runtime),
            ("Interpreter", Runtime),
            ("StubRoutines (1)", Runtime),
            ("I2C/C2I adapters", Runtime),
            ("throw_div0_exception Runtime1 stub", Runtime),
            ("JS:*onData /srv/app.js:12", Jit),
            ("Builtin:ArgumentsAdaptorTrampoline", Runtime),
            ("LazyCompile:~emit node:events:490", Runtime),
            ("Program:HandleLegacy (System.Net.Sockets.TcpClient)", Jit),
            ("Program/<Main>c__AnonStorey0:<>m__0 ()", Jit),
            ("Acme.Billing.Gateway:Charge (Acme.Order)", Jit),
            (
                "System.Net.Sockets.Socket:Receive (byte[],int,int,System.Net.Sockets.SocketFlags)",
                Runtime,
            ),
            (
                "(wrapper managed-to-native) System.Net.Sockets.Socket:Receive_internal (intptr,byte*,int,System.Net.Sockets.SocketFlags,int&,bool)",
                Runtime,
            ),
        ] {
            assert_eq!(classify_jit_name(name), kind, "{name}");
            assert_eq!(classify(Some(name), None, NameSource::PerfMap), kind);
        }
    }

    #[test]
    fn areas_name_go_packages_and_modules() {
        let go = frame(
            "internal/poll.(*FD).Read",
            Some("goserver"),
            FrameKind::Runtime,
        );
        assert_eq!(go.area(), "Go internal/poll");
        let libc = frame("__libc_recv", Some("libc.so.6"), FrameKind::Runtime);
        assert_eq!(libc.area(), "libc.so.6");
        let stub = frame("StubRoutines (1)", Some("[anon]"), FrameKind::Runtime);
        assert_eq!(stub.area(), "JVM stubs");
        let jdk = frame(
            "int java.io.InputStream.read(byte[])",
            Some("[anon]"),
            FrameKind::Runtime,
        );
        assert_eq!(jdk.area(), "JDK");
        let stdlib = frame(
            "py::recv_into:/usr/lib/python3.12/socket.py",
            Some("[anon]"),
            FrameKind::Runtime,
        );
        assert_eq!(stdlib.area(), "Python stdlib");
        let anon = frame("[anon]+0x10", Some("[anon]"), FrameKind::Unresolved);
        assert_eq!(anon.area(), "[anon]");
        let placed = frame(
            "net/http.(*persistConn).readLoop (/usr/local/go/src/net/http/transport.go:2205)",
            Some("goclient"),
            FrameKind::Runtime,
        );
        assert_eq!(
            placed.area(),
            "Go net/http",
            "the file's path is no package"
        );
    }

    #[test]
    fn stacks_that_differ_only_in_unnamed_addresses_group_together() {
        let stack = |frames: Vec<Frame>| NamedStack::new(frames, None, 1);
        let libc = frame("__libc_recv", Some("libc.so.6"), FrameKind::Runtime);
        let anon = |text: &str| frame(text, Some("[anon]"), FrameKind::Unresolved);
        let a = stack(vec![libc.clone(), anon("[anon]+0x86c10")]);
        let b = stack(vec![
            libc.clone(),
            anon("[anon]+0xc23d0"),
            anon("[anon]+0x10"),
        ]);
        assert_eq!(a.group_key(), b.group_key());
        let unnamed_libc = frame("libc.so.6+0x1b431", Some("libc.so.6"), FrameKind::Runtime);
        let c = stack(vec![unnamed_libc, anon("[anon]+0x1")]);
        let d = stack(vec![
            frame("libc.so.6+0x2", Some("libc.so.6"), FrameKind::Runtime),
            anon("[anon]+0x2"),
        ]);
        assert_eq!(c.group_key(), d.group_key());
        let named = stack(vec![
            libc.clone(),
            frame("handler_good", Some("server"), FrameKind::Program),
        ]);
        let other = stack(vec![
            libc,
            frame("handler_leaky", Some("server"), FrameKind::Program),
        ]);
        assert_ne!(
            named.group_key(),
            other.group_key(),
            "named frames tell apart"
        );
    }

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const JDK: &str = "/usr/lib/jvm/java-17-openjdk-amd64/lib";
    const GO: &str = "/srv/goclient";

    /// Java 17 named by `jcmd PID Compiler.perfmap`: a thread of a pool
    /// reading a request line, the JDK's reader either inlined by C2 into
    /// `InputStreamReader.read` or compiled on its own.
    fn java_read(inlined: bool, handler: &'static str) -> Frames {
        let nio = format!("{JDK}/libnio.so");
        let jvm = format!("{JDK}/server/libjvm.so");
        let mut frames = vec![
            ("__GI___libc_read (read.c:26) [inlined]", LIBC),
            ("__GI___libc_read (read.c:24)", LIBC),
            ("Java_sun_nio_ch_SocketDispatcher_read0", nio.as_str()),
            (
                "int sun.nio.ch.SocketDispatcher.read0(java.io.FileDescriptor, long, int)",
                "[anon]",
            ),
            (
                "int sun.nio.ch.NioSocketImpl.read(byte[], int, int)",
                "[anon]",
            ),
        ];
        if !inlined {
            frames.extend([
                ("int sun.nio.cs.StreamDecoder.readBytes()", "[anon]"),
                (
                    "int sun.nio.cs.StreamDecoder.implRead(char[], int, int)",
                    "[anon]",
                ),
                (
                    "int sun.nio.cs.StreamDecoder.read(char[], int, int)",
                    "[anon]",
                ),
            ]);
        }
        frames.extend([
            ("int java.io.InputStreamReader.read(char[], int, int)", "[anon]"),
            ("void java.io.BufferedReader.fill()", "[anon]"),
            (
                "java.lang.String java.io.BufferedReader.readLine()",
                "[anon]",
            ),
            (handler, "[anon]"),
            ("void Leak.lambda$main$0(java.net.Socket)", "[anon]"),
            ("void Leak$$Lambda$14/0x0000000800c03000.run()", "[anon]"),
            (
                "void java.util.concurrent.ThreadPoolExecutor.runWorker(java.util.concurrent.ThreadPoolExecutor$Worker)",
                "[anon]",
            ),
            ("void java.lang.Thread.run()", "[anon]"),
            ("StubRoutines (1)", "[anon]"),
            (
                "JavaCalls::call_helper(JavaValue*, methodHandle const&, JavaCallArguments*, JavaThread*)",
                jvm.as_str(),
            ),
            ("start_thread (pthread_create.c:442)", LIBC),
        ]);
        test_stack(&frames, None)
    }

    #[test]
    fn java_stacks_that_differ_in_inlined_jdk_frames_are_one_code_path() {
        const HANDLER: &str = "void Leak.handleClient(java.net.Socket)";
        let compiled = java_read(false, HANDLER);
        let inlined = java_read(true, HANDLER);
        assert_eq!(compiled.frames.len(), inlined.frames.len() + 3);
        assert_eq!(compiled.group_key(), inlined.group_key());
        assert_eq!(
            compiled.group_key(),
            (
                vec![
                    HANDLER.to_owned(),
                    "void Leak.lambda$main$0(java.net.Socket)".to_owned(),
                    "void Leak$$Lambda$14/0x0000000800c03000.run()".to_owned(),
                ],
                false
            ),
            "the program's frames only"
        );
    }

    #[test]
    fn stacks_through_different_program_frames_are_two_code_paths() {
        let client = java_read(true, "void Leak.handleClient(java.net.Socket)");
        let admin = java_read(true, "void Leak.handleAdmin(java.net.Socket)");
        assert_ne!(client.group_key(), admin.group_key());
        let go = |handler: &'static str| {
            test_stack(
                &[
                    ("syscall.read", GO),
                    ("internal/poll.(*FD).Read", GO),
                    ("net.(*conn).Read", GO),
                    ("main.drain", GO),
                    (handler, GO),
                    ("runtime.goexit", GO),
                ],
                None,
            )
        };
        assert_ne!(
            go("main.handleLegacy").group_key(),
            go("main.handleUpload").group_key()
        );
        assert_eq!(
            go("main.handleLegacy").group_key().0,
            ["main.drain", "main.handleLegacy"]
        );
    }

    #[test]
    fn c_stacks_group_by_the_programs_frames_and_the_cut() {
        const SERVER: &str = "/srv/server";
        let c = |libc: &'static str, handler: &'static str, cut: Option<&str>| {
            test_stack(
                &[
                    (libc, LIBC),
                    (handler, SERVER),
                    ("serve_connection (server.c:88)", SERVER),
                    ("main (server.c:120)", SERVER),
                    ("__libc_start_main", LIBC),
                ],
                cut,
            )
        };
        let leaky = c("__libc_recv", "handler_leaky (server.c:42)", None);
        assert_eq!(
            leaky.group_key(),
            c("__libc_recv", "handler_leaky (server.c:42)", None).group_key()
        );
        assert_eq!(
            leaky.group_key(),
            c("__libc_read", "handler_leaky (server.c:42)", None).group_key(),
            "libc's entry point is folded in the text too"
        );
        assert_ne!(
            leaky.group_key(),
            c("__libc_recv", "handler_good (server.c:51)", None).group_key()
        );
        assert_ne!(
            leaky.group_key(),
            c(
                "__libc_recv",
                "handler_leaky (server.c:42)",
                Some("copy ended")
            )
            .group_key(),
            "a cut stack is its own path"
        );
    }

    #[test]
    fn stacks_without_program_frames_key_on_their_own_frames() {
        const PY: &str = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0";
        let python = |libc: &'static str, anon: &[&'static str]| {
            let mut pairs = vec![(libc, LIBC), ("_PyEval_EvalFrameDefault", PY)];
            pairs.extend(anon.iter().map(|a| (*a, "[anon]")));
            pairs.push(("Py_RunMain", PY));
            test_stack(&pairs, None)
        };
        let recv = python("__libc_recv", &["[anon]+0x86c10"]);
        assert_eq!(
            recv.group_key().0,
            [
                "__libc_recv",
                "_PyEval_EvalFrameDefault",
                "?[anon]",
                "Py_RunMain"
            ]
        );
        assert_eq!(
            recv.group_key(),
            python("__libc_recv", &["[anon]+0xc23d0", "[anon]+0x10"]).group_key()
        );
        assert_ne!(
            recv.group_key(),
            python("__libc_send", &["[anon]+0x86c10"]).group_key(),
            "a different place in the runtime"
        );
        assert_ne!(go_http_read(false).group_key(), go_http_dial().group_key());
    }

    /// Go 1.22, the first read of a client connection: its transport's
    /// reader goroutine, the file names as Go's DWARF writes them.
    fn go_http_read(tls: bool) -> Frames {
        let place = |symbol: &str, file: &str, line: u32| {
            format!("{symbol} (/usr/local/go/src/{file}:{line})")
        };
        let mut texts = vec![
            place(
                "runtime/internal/syscall.Syscall6",
                "runtime/internal/syscall/asm_linux_amd64.s",
                36,
            ),
            place("syscall.Syscall", "syscall/syscall_linux.go", 69),
            place("syscall.read", "syscall/zsyscall_linux_amd64.go", 721),
            place("syscall.Read", "syscall/syscall_unix.go", 181),
            place(
                "internal/poll.ignoringEINTRIO",
                "internal/poll/fd_unix.go",
                736,
            ),
            place("internal/poll.(*FD).Read", "internal/poll/fd_unix.go", 160),
            place("net.(*netFD).Read", "net/fd_posix.go", 55),
            place("net.(*conn).Read", "net/net.go", 179),
        ];
        if tls {
            texts.extend([
                place(
                    "crypto/tls.(*atLeastReader).Read",
                    "crypto/tls/conn.go",
                    809,
                ),
                place("bytes.(*Buffer).ReadFrom", "bytes/buffer.go", 211),
                place(
                    "crypto/tls.(*Conn).readFromUntil",
                    "crypto/tls/conn.go",
                    831,
                ),
                place(
                    "crypto/tls.(*Conn).readRecordOrCCS",
                    "crypto/tls/conn.go",
                    629,
                ),
                place(
                    "crypto/tls.(*Conn).readHandshake",
                    "crypto/tls/conn.go",
                    1076,
                ),
                place(
                    "crypto/tls.(*Conn).clientHandshake",
                    "crypto/tls/handshake_client.go",
                    263,
                ),
                place(
                    "crypto/tls.(*Conn).handshakeContext",
                    "crypto/tls/conn.go",
                    1552,
                ),
                place(
                    "crypto/tls.(*Conn).HandshakeContext",
                    "crypto/tls/conn.go",
                    1492,
                ),
                place(
                    "net/http.(*persistConn).addTLS.func2",
                    "net/http/transport.go",
                    1577,
                ),
            ]);
        } else {
            texts.extend([
                place(
                    "net/http.(*persistConn).Read",
                    "net/http/transport.go",
                    1954,
                ),
                place("bufio.(*Reader).fill", "bufio/bufio.go", 110),
                place("bufio.(*Reader).Peek", "bufio/bufio.go", 148),
                place(
                    "net/http.(*persistConn).readLoop",
                    "net/http/transport.go",
                    2118,
                ),
                place(
                    "net/http.(*Transport).dialConn.gowrap2",
                    "net/http/transport.go",
                    1775,
                ),
            ]);
        }
        texts.push(place("runtime.goexit", "runtime/asm_amd64.s", 1695));
        let pairs: Vec<(&str, &str)> = texts.iter().map(|t| (t.as_str(), GO)).collect();
        test_stack(&pairs, None)
    }

    /// The connect of a client connection: the transport's dialing goroutine.
    fn go_http_dial() -> Frames {
        test_stack(
            &[
                ("internal/runtime/syscall.Syscall6", GO),
                ("syscall.Syscall", GO),
                ("syscall.connect", GO),
                ("syscall.Connect", GO),
                ("net.(*netFD).connect", GO),
                ("net.(*netFD).dial", GO),
                ("net.socket", GO),
                ("net.internetSocket", GO),
                ("net.(*sysDialer).doDialTCPProto", GO),
                ("net.(*sysDialer).doDialTCP", GO),
                ("net.(*sysDialer).dialTCP", GO),
                ("net.(*sysDialer).dialSingle", GO),
                ("net.(*sysDialer).dialSerial", GO),
                ("net.(*sysDialer).dialParallel", GO),
                ("net.(*Dialer).DialContext", GO),
                ("net/http.(*Transport).dial", GO),
                ("net/http.(*Transport).dialConn", GO),
                ("net/http.(*Transport).dialConnFor", GO),
                ("net/http.(*Transport).queueForDial.gowrap1", GO),
                ("runtime.goexit", GO),
            ],
            None,
        )
    }

    #[test]
    fn go_http_client_transport_stacks_point_at_an_unclosed_body() {
        for stack in [go_http_read(false), go_http_read(true), go_http_dial()] {
            assert!(
                stack.frames.iter().all(|f| f.kind == FrameKind::Runtime),
                "{stack:#?}"
            );
            let note = stack.note.as_deref().unwrap_or_default();
            assert!(note.contains("resp.Body.Close()"), "{stack:#?}");
            assert!(note.contains("goroutines of its own"), "{note}");
        }
    }

    #[test]
    fn go_http_servers_and_callers_get_no_client_note() {
        let server = test_stack(
            &[
                ("syscall.read", GO),
                ("internal/poll.(*FD).Read", GO),
                ("net.(*conn).Read", GO),
                ("net/http.(*connReader).Read", GO),
                ("bufio.(*Reader).fill", GO),
                ("bufio.(*Reader).ReadSlice", GO),
                ("bufio.(*Reader).ReadLine", GO),
                ("net/textproto.(*Reader).readLineSlice", GO),
                ("net/textproto.(*Reader).ReadLine", GO),
                ("net/http.readRequest", GO),
                ("net/http.(*conn).readRequest", GO),
                ("net/http.(*conn).serve", GO),
                ("net/http.(*Server).Serve.gowrap3", GO),
                ("runtime.goexit", GO),
            ],
            None,
        );
        assert_eq!(server.note, None, "a server's stack");
        let caller = test_stack(
            &[
                ("net/http.(*persistConn).roundTrip", GO),
                ("net/http.(*Transport).roundTrip", GO),
                ("net/http.(*Transport).RoundTrip", GO),
                ("net/http.send", GO),
                ("net/http.(*Client).send", GO),
                ("net/http.(*Client).do", GO),
            ],
            Some("the 8 KiB stack copy ended before the outermost frame"),
        );
        assert_eq!(caller.note, None, "the caller's goroutine, cut");
        let named = test_stack(
            &[
                ("net/http.(*Transport).dialConn", GO),
                ("main.fetch", GO),
                ("runtime.goexit", GO),
            ],
            None,
        );
        assert_eq!(named.note, None, "the program is named");
    }

    #[test]
    fn a_cut_stack_says_so_as_its_last_line() {
        let stack = NamedStack::new(
            vec![frame("read_all", Some("server"), FrameKind::Program)],
            Some("the 8 KiB stack copy ended before the outermost frame".into()),
            1,
        );
        assert_eq!(
            stack.lines(),
            [
                "read_all",
                "(stack truncated: the 8 KiB stack copy ended before the outermost frame)"
            ]
        );
    }

    #[test]
    fn runtime_notes_say_what_would_name_the_frames() {
        let libc = frame("__libc_recv", Some("libc.so.6"), FrameKind::Runtime);
        let anon = frame("[anon]+0x10", Some("[anon]"), FrameKind::Unresolved);
        let py311 = vec![
            libc.clone(),
            frame(
                "_PyEval_EvalFrameDefault",
                Some("libpython3.11.so.1.0"),
                FrameKind::Runtime,
            ),
        ];
        assert!(runtime_note(&py311, 7).unwrap().contains("-X perf"));
        let py312_named = vec![
            libc.clone(),
            frame(
                "_PyEval_EvalFrameDefault",
                Some("python3.12"),
                FrameKind::Runtime,
            ),
            frame(
                "py::handle_request:/srv/app.py",
                Some("[anon]"),
                FrameKind::Jit,
            ),
        ];
        assert_eq!(runtime_note(&py312_named, 7), None, "the program is named");
        let java = vec![
            libc.clone(),
            anon.clone(),
            frame(
                "JavaCalls::call_helper",
                Some("libjvm.so"),
                FrameKind::Runtime,
            ),
        ];
        let note = runtime_note(&java, 4242).unwrap();
        assert!(note.contains("jcmd 4242 Compiler.perfmap"), "{note}");
        assert!(note.contains("-XX:+PreserveFramePointer"), "{note}");
        assert!(note.contains("interpreted methods stay unnamed"), "{note}");
        let node = vec![
            libc.clone(),
            frame("uv__read", Some("node"), FrameKind::Runtime),
            frame("uv__stream_io", Some("node"), FrameKind::Runtime),
        ];
        assert!(runtime_note(&node, 1).unwrap().contains("event loop"));
        let c = vec![libc, anon];
        assert_eq!(runtime_note(&c, 1), None, "no runtime: nothing to advise");
    }
}
