//! The test programs in tests/programs (leaky servers in several languages)
//! as separate processes: where their compilers are, a scratch directory
//! for builds, and the server each runs, driven one connection at a time.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Shutdown, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
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
             which of Python 3.8-3.13 (pyenv), Java 17 and Node 20 the image lacks"
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

pub const PYTHON_312: &str = "/root/.pyenv/versions/3.12.1/bin/python3.12";

/// Python 3.`minor` from the pyenv on the image (`cargo xtask setup`
/// says which are missing), whatever its patch release.
pub fn pyenv_python(minor: u8) -> PathBuf {
    let versions = Path::new("/root/.pyenv/versions");
    let found = std::fs::read_dir(versions).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path().join(format!("bin/python3.{minor}")))
            .filter(|path| {
                path.parent()
                    .and_then(Path::parent)
                    .and_then(Path::file_name)
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&format!("3.{minor}.")))
            })
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        tool(&format!(
            "{}/3.{minor}.x/bin/python3.{minor}",
            versions.display()
        ))
    })
}
pub const PYTHON_311: &str = "/root/.pyenv/versions/3.11.7/bin/python3.11";
pub const JAVA_17_BIN: &str = "/usr/lib/jvm/java-17-openjdk-amd64/bin";
pub const GO: &str = "/usr/bin/go";

/// `program` (a .go file in tests/programs) built into `scratch`,
/// module-less, cached where Go caches for root.
pub fn go_build(scratch: &Scratch, program: &str) -> PathBuf {
    let binary = scratch.path(program.trim_end_matches(".go"));
    run(Command::new(tool(GO))
        .args(["build", "-o"])
        .arg(&binary)
        .arg(programs_dir().join(program))
        .env("GO111MODULE", "off"));
    binary
}

/// `class` (a .java file in tests/programs) compiled into `scratch`, and
/// the command that runs it as a warmed-up server: every method compiled
/// before it runs, the program's own out of line as a real handler that
/// size would be, and frame pointers kept in JIT code.
pub fn java_command(scratch: &Scratch, class: &str) -> Command {
    let bin = Path::new(JAVA_17_BIN);
    run(Command::new(tool(&bin.join("javac").to_string_lossy()))
        .arg("-d")
        .arg(&scratch.0)
        .arg(programs_dir().join(format!("{class}.java"))));
    let mut command = Command::new(tool(&bin.join("java").to_string_lossy()));
    command
        .args([
            "-XX:+PreserveFramePointer",
            "-Xcomp",
            "-XX:CompileCommand=quiet",
            &format!("-XX:CompileCommand=dontinline,{class}::*"),
            "-cp",
        ])
        .arg(&scratch.0)
        .arg(class);
    command
}

/// Has the JVM `pid` write its perf map, which names its compiled methods.
pub fn write_java_perf_map(pid: u32) {
    let jcmd = tool(&Path::new(JAVA_17_BIN).join("jcmd").to_string_lossy());
    run(Command::new(&jcmd)
        .arg(pid.to_string())
        .arg("Compiler.perfmap"));
    let map = format!("/tmp/perf-{pid}.map");
    assert!(Path::new(&map).is_file(), "jcmd wrote no {map}");
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

/// A program from tests/programs as a separate process, killed on drop,
/// whose stdout is read line by line.
pub struct Program {
    child: Child,
    lines: Receiver<String>,
    stderr: PathBuf,
}

impl Program {
    /// Starts `command` with its stderr in the file `stderr`.
    pub fn start(command: &mut Command, stdin: Stdio, stderr: PathBuf) -> Self {
        let log = std::fs::File::create(&stderr).expect("create the program's stderr file");
        let mut child = command
            .stdin(stdin)
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
        Self {
            child,
            lines,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdin, where it was started with a pipe there.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn next_line(&self, timeout: Duration) -> String {
        self.lines.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!(
                "the program said nothing in {timeout:?}; its stderr: {}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            )
        })
    }

    /// The number after `prefix` in its next line (`listening PORT`).
    pub fn port_after(&self, prefix: &str, timeout: Duration) -> u16 {
        let line = self.next_line(timeout);
        line.strip_prefix(prefix)
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("expected `{prefix}PORT`, got {line:?}"))
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Written by Python's -X perf and by jcmd Compiler.perfmap.
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", self.child.id()));
    }
}

/// One leaky server from tests/programs. It says `listening PORT`, then
/// `leaked` or `closed` after each connection.
pub struct Server {
    program: Program,
    pub port: u16,
}

impl Server {
    /// Starts `command PORT` with port 0 and waits until it listens.
    pub fn start(mut command: Command, stderr: PathBuf) -> Self {
        let program = Program::start(command.arg("0"), Stdio::null(), stderr);
        let port = program.port_after("listening ", START_TIMEOUT);
        Self { program, port }
    }

    pub fn pid(&self) -> u32 {
        self.program.pid()
    }

    pub fn next_line(&self, timeout: Duration) -> String {
        self.program.next_line(timeout)
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
