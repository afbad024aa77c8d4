//! The test programs in tests/programs (leaky servers in several languages)
//! as separate processes: where their compilers are, a scratch directory
//! for builds, and the server each runs, driven one connection at a time.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Shutdown, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    thread,
    time::Duration,
};

use super::STEP_TIMEOUT;

/// The JVM compiles every method before its first run (`-Xcomp`), which
/// takes several seconds on a busy 2-core host before it listens.
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")
}

/// A runtime or compiler at `path` (or on PATH for a bare name), or a
/// failure naming the setup that provides it: these tests never skip.
pub fn tool(path: &str) -> PathBuf {
    let found = if path.contains('/') {
        Path::new(path).is_file().then(|| PathBuf::from(path))
    } else {
        std::env::var_os("PATH").and_then(|dirs| {
            std::env::split_paths(&dirs)
                .map(|dir| dir.join(path))
                .find(|candidate| candidate.is_file())
        })
    };
    found.unwrap_or_else(|| {
        panic!(
            "{path} is missing: run `cargo xtask setup`, which installs golang-go and says \
             which of Python 3.12/3.11 (pyenv), Java 17 and Node 20 the image lacks"
        )
    })
}

/// `program ARGS` succeeded, or a failure with what it said.
pub fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds `source` from tests/programs with `cc -O2 -g` and
/// `frame_pointer` (-fno-omit-frame-pointer or -fomit-frame-pointer) into
/// `binary`, and checks the build is what the test says it is: with frame
/// pointers `function` sets %rbp, without it does not (pick one that uses
/// no %rbp as a plain register).
pub fn build_c(source: &str, frame_pointer: &str, function: &str, binary: &Path) {
    run(Command::new(tool("cc"))
        .args(["-O2", "-g", frame_pointer, "-o"])
        .arg(binary)
        .arg(programs_dir().join(source)));
    let listing = Command::new(tool("objdump"))
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--disassemble={function}"))
        .arg(binary)
        .output()
        .expect("objdump");
    let sets_frame_pointer = String::from_utf8_lossy(&listing.stdout).contains("mov    %rsp,%rbp");
    assert_eq!(
        sets_frame_pointer,
        frame_pointer == "-fno-omit-frame-pointer",
        "{frame_pointer} build of {source}"
    );
}

/// A private directory for one test's builds, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-code-paths-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One leaky server from tests/programs, killed on drop. It says
/// `listening PORT`, then `leaked` or `closed` after each connection.
pub struct Server {
    child: Child,
    lines: Receiver<String>,
    stderr: PathBuf,
    pub port: u16,
}

impl Server {
    /// Starts `command PORT` with port 0 and waits until it listens.
    pub fn start(mut command: Command, stderr: PathBuf) -> Self {
        let log = std::fs::File::create(&stderr).expect("create the server's stderr file");
        let mut child = command
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            lines,
            stderr,
            port: 0,
        };
        let line = server.next_line(START_TIMEOUT);
        server.port = line
            .strip_prefix("listening ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("expected `listening PORT`, got {line:?}"));
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn next_line(&self, timeout: Duration) -> String {
        self.lines.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!(
                "the server said nothing in {timeout:?}; its stderr: {}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            )
        })
    }

    /// One connection: the handler's letter, then EOF; returns once the
    /// server has read the EOF and leaked or closed. The client keeps its
    /// end open (half-closed) until the test ends.
    pub fn request(&self, kind: u8) -> TcpStream {
        self.request_expecting(kind, if kind == b'L' { "leaked" } else { "closed" })
    }

    /// As [`Server::request`], for a program whose answer to `kind` is
    /// `answer`.
    pub fn request_expecting(&self, kind: u8, answer: &str) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{}: {e}", self.port));
        stream
            .write_all(&[kind])
            .expect("send the handler's letter");
        stream.shutdown(Shutdown::Write).expect("half-close");
        let line = self.next_line(STEP_TIMEOUT);
        assert_eq!(line, answer, "the server's answer to {:?}", kind as char);
        stream
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Written by Python's -X perf and by jcmd Compiler.perfmap.
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", self.child.id()));
    }
}
