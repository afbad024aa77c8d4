//! Root tests: with default stacks, every leak has a code path, also in the
//! textbook shapes that never read EOF and so have no EOF stack: a server
//! reads its request once and an error path skips the close; a client
//! pools connections the server hangs up on; a server accepts and holds. Each leak's code path is the stack of the socket's
//! origin (its connect, its accept where the kernel allows fexit, its first
//! read or write), which names the function that leaked it and never the
//! one beside it that shares its helpers and closes. Where no stack can
//! name it (a socket never read or written on a kernel that refuses fexit,
//! a connection only net/http's goroutines touch), the report says why
//! instead.
//!
//! Each program in tests/programs is a separate process on 127.0.0.1 with a
//! leaking and a healthy function that share their helpers. The servers
//! pick the function before accept(), from a pattern on their command line
//! the test's requests follow: a read of the request to pick it would be
//! the socket's first read, outside both.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    LeakRun, LeakTextRun, Peer, STEP_TIMEOUT, kernel_has_recv_tracepoint,
    programs::{
        PYTHON_312, Program, Scratch, Server, build_c, go_build, java_command, programs_dir,
        pyenv_python, tool, write_java_perf_map,
    },
    require_root,
};

/// Which function takes each connection: good and leaky interleaved, so a
/// stack borrowed from the previous connection is wrong.
const REQUESTS: &str = "GLGGLGLGGL";
const LEAKS: usize = 4;

/// After the last leak: past `--min-age` (1 s), the 500 ms after which the
/// agent unwinds a leak's stack copy, and the naming after it.
const SETTLE: Duration = Duration::from_millis(3500);

/// What the report must say about the leaking program's code paths.
#[derive(Clone, Copy)]
enum Expect {
    /// Every code path's origin stack, taken at one of `origins`, names
    /// `leaky`; the program never read EOF, so that is all it has.
    Origin {
        origins: &'static [&'static str],
        leaky: &'static str,
        /// All the leaks are one code path. Not for the JVM: a socket read
        /// while its reader still ran interpreted lacks that frame's name
        /// (the perf map names compiled code only), so it is a path of its
        /// own, naming the handler all the same.
        one_path: bool,
    },
    /// The sockets were only ever accepted: where the kernel allows fexit,
    /// the accept stack names `leaky`; elsewhere there is no origin, and
    /// the report says that accept() would need fexit.
    AcceptOrMissing { leaky: &'static str },
    /// No stack of the socket holds the program's frames: every code path
    /// has a note that contains each of these words.
    Note(&'static [&'static str]),
}

/// The text report's label of an origin.
fn label(origin: &str) -> &'static str {
    match origin {
        "connect" => "connect:",
        "accept" => "accept:",
        "first_read" => "first read:",
        "first_write" => "first write:",
        other => panic!("an origin the contract does not have: {other:?}"),
    }
}

/// What the report showed, printed whether or not the asserts pass.
fn show(name: &str, report: &serde_json::Value, entry: Option<&serde_json::Value>, text: &str) {
    eprintln!("==== {name}: stacks {:#} ====", report["stacks"]);
    eprintln!("==== {name}: JSON entry of the leaking process ====");
    match entry {
        Some(entry) => eprintln!(
            "close_wait {} closed_held {}\ncode_path_coverage {:#}\ncode_paths {:#}",
            entry["close_wait"],
            entry["closed_held"],
            entry["code_path_coverage"],
            entry["code_paths"]
        ),
        None => eprintln!("(no entry)"),
    }
    eprintln!("==== {name}: text report ====\n{text}\n==== end {name} ====");
}

/// `function` in `text` as a whole name: `py::query` is not in
/// `py::query_good:…`, but is in `py::query:/…/client_pool.py`.
fn names(text: &str, function: &str) -> bool {
    let part_of_name = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(function).any(|(at, _)| {
        !part_of_name(text[..at].chars().next_back())
            && !part_of_name(text[at + function.len()..].chars().next())
    })
}

fn stack(path: &serde_json::Value, field: &str) -> Vec<String> {
    path[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} array: {path:#}"))
        .iter()
        .map(|frame| frame.as_str().expect("a frame is a string").to_owned())
        .collect()
}

/// Starts the agent twice (JSON and text, default stacks), runs `drive`
/// (the connections, and whatever must follow them), and checks both
/// reports about process `pid`. Every socket the report lists on `port` (the
/// server's, or the one the client talks to) must be `pid`'s.
fn check<T>(
    name: &str,
    pid: u32,
    port: u16,
    expect: Expect,
    good: &str,
    drive: impl FnOnce() -> T,
) {
    let pid_arg = pid.to_string();
    let json = LeakRun::start(&["--min-age", "1s"]);
    let text = LeakTextRun::start(&["--min-age", "1s", "--pid", &pid_arg]);
    let connections = drive();
    let report = json.stop_after(SETTLE);
    let text = text.stop_after(Duration::ZERO);
    let entry = report.process(pid);
    show(name, &report.0, entry, &text);

    // Owner: exactly the leaky connections, held by the program and by no
    // one else.
    let entry = entry.unwrap_or_else(|| panic!("no entry for pid {pid}: {:#}", report.0));
    assert_eq!(entry["close_wait"], LEAKS, "{entry:#}");
    assert_eq!(
        entry["sockets"].as_array().unwrap().len(),
        LEAKS,
        "{entry:#}"
    );
    let port = format!(":{port}");
    for process in report.0["processes"].as_array().unwrap() {
        if process["pid"] == entry["pid"] {
            continue;
        }
        // Only the local end: the test's own client sockets, closed but
        // still held until it drops them, rightly show the server's port
        // as their remote end.
        for socket in process["sockets"].as_array().unwrap() {
            assert!(
                !socket["local"].as_str().unwrap().ends_with(&port),
                "the program's socket under another holder: {process:#}"
            );
        }
    }

    // What the agent says this kernel showed it: an origin at accept
    // needs fexit, which some kernels refuse (this host's among them).
    let accept_seen = report.0["stacks"]["accept_seen"].as_bool();
    let coverage = &entry["code_path_coverage"];
    assert_eq!(coverage["sockets"], LEAKS, "{coverage:#}");
    let paths = entry["code_paths"].as_array().unwrap();
    assert!(!paths.is_empty(), "no code path: {entry:#}");
    let mut labels = Vec::new();
    // Every socket has its code path (the "by default"), except
    // where the report says no stack could be taken.
    let mut every_socket_has_one = true;
    for path in paths {
        let origin_stack = stack(path, "origin_stack");
        let eof_stack = stack(path, "eof_stack");
        // A stack that is not there says why, in the report's own words.
        assert!(
            !origin_stack.is_empty() || path["origin_missing"].is_string(),
            "no origin stack and no reason: {path:#}"
        );
        assert!(
            !eof_stack.is_empty() || path["eof_missing"].is_string(),
            "no EOF stack and no reason: {path:#}"
        );
        assert!(
            !origin_stack
                .iter()
                .chain(&eof_stack)
                .any(|f| names(f, good)),
            "a leak's code path names {good}, which closes: {path:#}"
        );
        let origin = path["origin"].as_str();
        match expect {
            Expect::Origin { origins, leaky, .. } => {
                let origin = origin.unwrap_or_else(|| panic!("no origin: {path:#}"));
                assert!(
                    origins.contains(&origin),
                    "origin {origin:?}, not one of {origins:?}: {path:#}"
                );
                if accept_seen == Some(false) {
                    assert_ne!(origin, "accept", "an accept stack without fexit: {path:#}");
                }
                assert!(
                    origin_stack.iter().any(|f| names(f, leaky)),
                    "the {origin} stack does not name {leaky}: {path:#}"
                );
                // These programs never read EOF: the origin is all there is,
                // which is what makes these leaks the issue's.
                assert!(
                    eof_stack.is_empty(),
                    "an EOF stack of a program that never read EOF: {path:#}"
                );
                labels.push(label(origin));
            }
            Expect::AcceptOrMissing { leaky } => match origin {
                Some("accept") => {
                    assert_ne!(
                        accept_seen,
                        Some(false),
                        "an accept stack without fexit: {path:#}"
                    );
                    assert!(
                        origin_stack.iter().any(|f| names(f, leaky)),
                        "the accept stack does not name {leaky}: {path:#}"
                    );
                    labels.push("accept:");
                }
                None => {
                    assert_ne!(
                        accept_seen,
                        Some(true),
                        "fexit showed accept(), but the socket has no accept stack: {path:#}"
                    );
                    let why = path["origin_missing"]
                        .as_str()
                        .unwrap_or_default()
                        .to_lowercase();
                    for word in ["accept", "fexit"] {
                        assert!(
                            why.contains(word),
                            "origin_missing does not say {word:?}: {path:#}"
                        );
                    }
                    assert!(
                        text.to_lowercase().contains("fexit"),
                        "the text report does not say why there is no origin:\n{text}"
                    );
                    // Counted as a socket with a code path only with a stack.
                    assert_eq!(coverage["sockets_with_code_path"], 0, "{coverage:#}");
                    every_socket_has_one = false;
                }
                Some(other) => {
                    panic!("origin {other:?} for a socket that was never read or written: {path:#}")
                }
            },
            Expect::Note(words) => {
                let note = path["note"].as_str().unwrap_or_else(|| {
                    panic!("no note saying why the program is not named: {path:#}")
                });
                for word in words {
                    assert!(note.contains(word), "the note lacks {word:?}: {note:?}");
                    assert!(
                        text.contains(word),
                        "the text report does not say {word:?}:\n{text}"
                    );
                }
                labels.extend(origin.map(label));
            }
        }
    }
    if every_socket_has_one {
        assert_eq!(coverage["sockets_with_code_path"], LEAKS, "{coverage:#}");
    }
    if let Expect::Origin { leaky, .. } | Expect::AcceptOrMissing { leaky } = expect
        && every_socket_has_one
    {
        assert!(
            names(&text, leaky),
            "the text report does not show {leaky}:\n{text}"
        );
    }
    if matches!(expect, Expect::Origin { one_path: true, .. }) {
        // All four took the same path.
        assert_eq!(paths.len(), 1, "one code path for one bug: {paths:#?}");
    }
    for shown in labels {
        assert!(
            text.contains(shown),
            "the text report does not label the stack {shown:?}:\n{text}"
        );
    }
    assert!(!names(&text, good), "the text report shows {good}:\n{text}");
    drop(connections);
}

/// The first-read stack needs `sock:sock_recv_length` (Linux 6.3+).
fn require_reads() {
    assert!(
        kernel_has_recv_tracepoint(),
        "the first-read stack needs sock:sock_recv_length (Linux 6.3+)"
    );
}

/// Each request in `REQUESTS`, one at a time; the client ends stay open
/// (half-closed) until the test ends.
fn requests(server: &Server) -> Vec<TcpStream> {
    REQUESTS.bytes().map(|kind| server.request(kind)).collect()
}

/// Starts the server `command` (given `REQUESTS` as its last argument),
/// makes each request, and checks the reports.
fn check_server(name: &str, scratch: &Scratch, mut command: Command, expect: Expect, good: &str) {
    command.arg(REQUESTS);
    let server = Server::start(command, scratch.path("stderr"));
    check(name, server.pid(), server.port, expect, good, || {
        requests(&server)
    });
}

/// A server that reads its request once: the first read names the leaking
/// handler, or accept() where fexit shows it first.
fn read_once(leaky: &'static str) -> Expect {
    Expect::Origin {
        origins: &["first_read", "accept"],
        leaky,
        one_path: true,
    }
}

fn c_read_once(name: &str, frame_pointer: &str) {
    if !require_root() {
        return;
    }
    require_reads();
    let scratch = Scratch::new(name);
    let binary = scratch.path("read_once");
    // A helper with no locals sets %rbp only as a frame pointer (the
    // handlers use it as a register without one).
    build_c("read_once.c", frame_pointer, "read_request", &binary);
    check_server(
        name,
        &scratch,
        Command::new(&binary),
        read_once("handle_leaky"),
        "handle_good",
    );
}

#[test]
fn c_read_once_with_frame_pointers_names_the_handler_at_its_first_read() {
    c_read_once("origin-c-fp", "-fno-omit-frame-pointer");
}

/// How most distributions and release builds compile: the stack is unwound
/// from .eh_frame.
#[test]
fn c_read_once_without_frame_pointers_names_the_handler_at_its_first_read() {
    c_read_once("origin-c-nofp", "-fomit-frame-pointer");
}

/// A socket accepted and never read or written has one syscall, accept():
/// only where fexit works can a stack name who holds it.
#[test]
fn c_accept_and_hold_names_the_accepting_function_or_says_it_needs_fexit() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("origin-accept-hold");
    let binary = scratch.path("accept_hold");
    build_c(
        "accept_hold.c",
        "-fno-omit-frame-pointer",
        "accept_and_hold",
        &binary,
    );
    check_server(
        "accept and hold",
        &scratch,
        Command::new(&binary),
        Expect::AcceptOrMissing {
            leaky: "accept_and_hold",
        },
        "accept_and_serve",
    );
}

/// The textbook Python leak: `data = conn.recv(1024)`, then
/// `process_data(data)` raises and `conn.close()` is skipped. With no flag:
/// the probe copies the Python frames of the reading thread.
fn python_read_once(minor: u8) {
    if !require_root() {
        return;
    }
    require_reads();
    let scratch = Scratch::new(&format!("origin-py3{minor}"));
    let mut command = Command::new(pyenv_python(minor));
    command.arg(programs_dir().join("read_once.py"));
    check_server(
        &format!("python3.{minor} read once"),
        &scratch,
        command,
        read_once("handle_leaky (read_once.py:61)"),
        "handle_good",
    );
}

#[test]
fn python_39_read_once_names_the_handler_at_its_first_read() {
    python_read_once(9);
}

#[test]
fn python_310_read_once_names_the_handler_at_its_first_read() {
    python_read_once(10);
}

#[test]
fn python_311_read_once_names_the_handler_at_its_first_read() {
    python_read_once(11);
}

#[test]
fn python_312_read_once_names_the_handler_at_its_first_read() {
    python_read_once(12);
}

#[test]
fn python_313_read_once_names_the_handler_at_its_first_read() {
    python_read_once(13);
}

/// With `-X perf` as well, the interpreter's frames name the handler.
#[test]
fn python_312_with_perf_support_read_once_names_the_handler_at_its_first_read() {
    if !require_root() {
        return;
    }
    require_reads();
    let scratch = Scratch::new("origin-py312-perf");
    let mut command = Command::new(tool(PYTHON_312));
    command
        .args(["-X", "perf"])
        .arg(programs_dir().join("read_once.py"));
    check_server(
        "python3.12 -X perf read once",
        &scratch,
        command,
        read_once("handle_leaky (read_once.py:61)"),
        "handle_good",
    );
}

/// A pool that keeps connections the server hung up on: the leak is the
/// client's, and its code path is where it connected.
fn python_client_pool(minor: u8) {
    if !require_root() {
        return;
    }
    let port = hang_up_server(REQUESTS.len());
    let scratch = Scratch::new(&format!("origin-py3{minor}-pool"));
    let mut command = Command::new(pyenv_python(minor));
    command
        .arg(programs_dir().join("client_pool.py"))
        .arg(port.to_string());
    let mut client = Client::start(command, scratch.path("stderr"));
    assert_eq!(client.port, port, "the client talks to another server");
    check(
        &format!("python3.{minor} client pool"),
        client.pid(),
        port,
        Expect::Origin {
            origins: &["connect"],
            leaky: "query (client_pool.py:32)",
            one_path: true,
        },
        "query_good",
        || client.requests(),
    );
}

#[test]
fn python_39_client_pool_names_the_query_at_connect() {
    python_client_pool(9);
}

#[test]
fn python_313_client_pool_names_the_query_at_connect() {
    python_client_pool(13);
}

#[test]
fn go_read_once_names_the_handler_at_its_first_read() {
    if !require_root() {
        return;
    }
    require_reads();
    let scratch = Scratch::new("origin-go");
    let binary = go_build(&scratch, "read_once.go");
    check_server(
        "go read once",
        &scratch,
        Command::new(&binary),
        read_once("main.handleLeaky"),
        "main.handleGood",
    );
}

/// `http.Get` without `resp.Body.Close()`: the transport dials and reads on
/// goroutines of its own, so no stack of the socket holds the caller. The
/// report says what the frames suggest instead of naming a wrong function.
#[test]
fn go_http_client_without_body_close_says_so() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("origin-go-http");
    let binary = go_build(&scratch, "http_body.go");
    let mut client = Client::start(Command::new(&binary), scratch.path("stderr"));
    check(
        "go net/http client",
        client.pid(),
        client.port,
        Expect::Note(&["resp.Body.Close"]),
        "main.getGood",
        || client.requests(),
    );
}

/// A handler that throws after its first read, skipping the close: JIT
/// code, named by the perf map `jcmd` writes after the leaks.
#[test]
fn java_17_read_once_names_the_handler_at_its_first_read() {
    if !require_root() {
        return;
    }
    require_reads();
    let scratch = Scratch::new("origin-java");
    let mut command = java_command(&scratch, "ReadOnce");
    command.arg(REQUESTS);
    let server = Server::start(command, scratch.path("stderr"));
    check(
        "java 17 read once",
        server.pid(),
        server.port,
        Expect::Origin {
            origins: &["first_read", "accept"],
            leaky: "handleLeaky",
            one_path: false,
        },
        "handleGood",
        || {
            let clients = requests(&server);
            write_java_perf_map(server.pid());
            clients
        },
    );
}

/// A server on 127.0.0.1 that answers each of `connections` requests once
/// and hangs up, as one with a short keep-alive does: what leaves a pooled
/// client socket in CLOSE_WAIT. Its thread ends after the last.
fn hang_up_server(connections: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
            let mut request = [0; 64];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"ok\n");
        }
    });
    port
}

/// A client program from tests/programs. It says `ready PORT` (the server
/// it talks to), then makes one request per line on its stdin (`L`: the
/// leaky function) and says `leaked` or `closed`.
struct Client {
    program: Program,
    stdin: ChildStdin,
    port: u16,
}

impl Client {
    fn start(mut command: Command, stderr: PathBuf) -> Self {
        let mut program = Program::start(&mut command, Stdio::piped(), stderr);
        let stdin = program.take_stdin().expect("the client's stdin is a pipe");
        let port = program.port_after("ready ", STEP_TIMEOUT);
        Self {
            program,
            stdin,
            port,
        }
    }

    fn pid(&self) -> u32 {
        self.program.pid()
    }

    /// Each request in `REQUESTS`, one at a time.
    fn requests(&mut self) {
        for kind in REQUESTS.chars() {
            writeln!(self.stdin, "{kind}").expect("write to the client");
            self.stdin.flush().expect("write to the client");
            let line = self.program.next_line(STEP_TIMEOUT);
            let answer = if kind == 'L' { "leaked" } else { "closed" };
            assert_eq!(line, answer, "the client's answer to {kind:?}");
        }
    }
}

/// The leaking and the healthy handler of testpeer's read-once-server.
const READ_ONCE_LEAKY: &str = "serve_and_forget";
const READ_ONCE_HEALTHY: &str = "serve_and_close";

/// A code path's frames, origin and EOF, one per line.
fn frames_text(path: &serde_json::Value) -> String {
    let mut frames = stack(path, "origin_stack");
    frames.extend(stack(path, "eof_stack"));
    frames.join("\n")
}

/// The time-to-code-path check of `cargo xtask bench`, at a modest rate and
/// untimed (the bench times it at full rate): a server under churn reads
/// each request once and leaks one connection in 50 through
/// `serve_and_forget`, which never reads again, and already held 20 such
/// leaks when tcptrace started. While the load runs, a live report names
/// `serve_and_forget` at the socket's first read and never
/// `serve_and_close`; the leaks older than tcptrace say that they are.
#[test]
fn a_leak_under_churn_gets_its_code_path_while_tcptrace_runs_and_older_ones_say_why_not() {
    if !require_root() {
        return;
    }
    require_reads();
    let mut server = Peer::spawn(&[
        "read-once-server",
        "--addr",
        "127.0.0.1:0",
        "--leak-every",
        "50",
        "--leak-first",
        "20",
    ]);
    let port = server.expect("listening")["port"].clone();
    let connect = format!("127.0.0.1:{port}");
    let seed = Peer::spawn(&[
        "churn-client",
        "--connect",
        &connect,
        "--threads",
        "1",
        "--seconds",
        "0.5",
        "--per-second",
        "100",
    ]);
    seed.expect("done");
    server.expect("preleaked");

    let pid = server.pid();
    let leaks = LeakRun::start(&[
        "--min-age",
        "1s",
        "--interval",
        "500ms",
        "--pid",
        &pid.to_string(),
    ]);
    const LOAD_SECONDS: u64 = 30;
    let load = Peer::spawn(&[
        "churn-client",
        "--connect",
        &connect,
        "--threads",
        "1",
        "--seconds",
        &LOAD_SECONDS.to_string(),
        "--per-second",
        "200",
    ]);
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECONDS);
    let mut named = None;
    let mut reports = 0;
    while named.is_none() && Instant::now() < deadline {
        let Some(report) = leaks.next_report(STEP_TIMEOUT) else {
            break;
        };
        reports += 1;
        let Some(entry) = report.process(pid) else {
            continue;
        };
        let paths = entry["code_paths"].as_array().expect("code_paths");
        for path in paths {
            let frames = frames_text(path);
            assert!(
                !names(&frames, READ_ONCE_HEALTHY),
                "a leak's code path names the healthy handler: {path:#}"
            );
        }
        if paths
            .iter()
            .any(|path| names(&frames_text(path), READ_ONCE_LEAKY))
        {
            named = Some(entry.clone());
        }
    }
    drop(load);
    let entry = named.unwrap_or_else(|| {
        panic!(
            "no report in the load's {LOAD_SECONDS} s ({reports} reports) named {READ_ONCE_LEAKY}"
        )
    });
    eprintln!("the report that named it: {entry:#}");
    let paths = entry["code_paths"].as_array().unwrap();
    let leaky = paths
        .iter()
        .find(|path| names(&frames_text(path), READ_ONCE_LEAKY))
        .unwrap();
    assert_eq!(leaky["origin"], "first_read", "{leaky:#}");
    assert!(
        paths.iter().any(|path| path["origin_missing"]
            .as_str()
            .is_some_and(|why| why.contains("made before tcptrace started"))),
        "no code path says its leaks are older than tcptrace: {:#}",
        entry["code_paths"]
    );
    let coverage = &entry["code_path_coverage"];
    let with = coverage["sockets_with_code_path"].as_u64().unwrap();
    let sockets = coverage["sockets"].as_u64().unwrap();
    assert!(
        with >= 1 && with + 20 <= sockets,
        "the 20 older leaks cannot have a code path: {coverage}"
    );
    server.go();
}
