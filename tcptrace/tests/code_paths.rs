//! Root tests (issue 12): a leak's code path names the handler that leaked,
//! and never another handler that shares its read path, in the languages
//! servers are written in. Where the runtime keeps the handler off the stack
//! or unnamed, the report says so instead of printing addresses.
//!
//! Each program in tests/programs is a separate process listening on
//! 127.0.0.1, with two handlers that read to EOF through the same helper
//! chain: one closes, the other keeps the socket. The runtimes are the ones
//! `cargo xtask setup` checks (and installs where Debian has them).

mod common;

use std::{net::TcpStream, process::Command, time::Duration};

use common::{
    LeakRun, LeakTextRun, kernel_has_recv_tracepoint,
    programs::{
        PYTHON_312, Scratch, Server, build_c, go_build, java_command, programs_dir, pyenv_python,
        run, tool, write_java_perf_map,
    },
    require_root,
};

/// The handler each client picks, by its first byte: good and leaky
/// interleaved, so a stack borrowed from the previous connection is wrong.
const REQUESTS: &[u8; 10] = b"GLGGLGLGGL";
const LEAKS: usize = 4;

/// After the last leak: past `--min-age` (1 s), and the 500 ms after which
/// the agent unwinds a leak's stack copy.
const SETTLE: Duration = Duration::from_millis(3000);

/// What the report must say about the leaking program's code paths.
#[derive(Clone, Copy)]
enum Expect {
    /// Every code path names `leaky`; none names `good`.
    Handler {
        leaky: &'static str,
        good: &'static str,
    },
    /// The runtime keeps the handler unnamed or off the stack: every code
    /// path carries a `note` that contains each of these words (and the text
    /// report shows it), and none is a list of bare addresses.
    Note(&'static [&'static str]),
}

/// What the report showed, for the test's output: the measurement issue 12
/// asks for, printed whether or not the asserts pass.
fn show(name: &str, entry: Option<&serde_json::Value>, text: &str) {
    eprintln!("==== {name}: JSON entry of the server ====");
    match entry {
        Some(entry) => eprintln!(
            "close_wait {} closed_held {}\ncode_paths {:#}",
            entry["close_wait"], entry["closed_held"], entry["code_paths"]
        ),
        None => eprintln!("(no entry)"),
    }
    eprintln!("==== {name}: text report ====\n{text}\n==== end {name} ====");
}

/// `0x1b431`, `[anon]+0x86c10`, `python3.11+0x2f3a`: an address with no name.
fn is_bare_address(frame: &str) -> bool {
    let hex = frame
        .rsplit_once('+')
        .map_or(frame, |(_, offset)| offset)
        .trim();
    hex.strip_prefix("0x")
        .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit()))
}

fn frames(path: &serde_json::Value) -> Vec<String> {
    ["eof_stack", "origin_stack"]
        .iter()
        .flat_map(|field| path[*field].as_array().cloned().unwrap_or_default())
        .map(|frame| frame.as_str().expect("a frame is a string").to_owned())
        .collect()
}

/// Starts `server`'s runtime under the probe, makes the ten connections,
/// runs `after_leaks` (e.g. writing a perf map), and checks both reports.
/// Returns the leak's code path.
fn check(
    name: &str,
    server: Server,
    expect: Expect,
    after_leaks: impl FnOnce(&Server),
) -> serde_json::Value {
    assert!(
        kernel_has_recv_tracepoint(),
        "the EOF stack needs sock:sock_recv_length (Linux 6.3+)"
    );
    let pid = server.pid().to_string();
    let json = LeakRun::start(&["--min-age", "1s"]);
    let text = LeakTextRun::start(&["--min-age", "1s", "--pid", &pid]);
    let clients: Vec<TcpStream> = REQUESTS.iter().map(|&kind| server.request(kind)).collect();
    after_leaks(&server);
    let report = json.stop_after(SETTLE);
    let text = text.stop_after(Duration::ZERO);
    let entry = report.process(server.pid());
    show(name, entry, &text);

    // Owner: exactly the leaky connections, held by the server and by no
    // one else.
    let entry = entry.unwrap_or_else(|| panic!("no entry for the server: {:#}", report.0));
    assert_eq!(entry["close_wait"], LEAKS, "{entry:#}");
    assert_eq!(entry["sockets"].as_array().unwrap().len(), LEAKS);
    let own_port = format!(":{}", server.port);
    for process in report.0["processes"].as_array().unwrap() {
        if process["pid"] == entry["pid"] {
            continue;
        }
        for socket in process["sockets"].as_array().unwrap() {
            assert!(
                !socket["local"].as_str().unwrap().ends_with(&own_port),
                "the server's socket under another holder: {process:#}"
            );
        }
    }

    let paths = entry["code_paths"].as_array().unwrap();
    assert!(!paths.is_empty(), "{entry:#}");
    for path in paths {
        let frames = frames(path);
        let named = frames
            .iter()
            .any(|f| !is_bare_address(f) && !f.starts_with("(stack truncated"));
        assert!(
            named || frames.is_empty(),
            "a code path of bare addresses: {path:#}"
        );
        match expect {
            Expect::Handler { leaky, good } => {
                assert!(
                    frames.iter().any(|f| f.contains(leaky)),
                    "the code path does not name {leaky}: {path:#}"
                );
                assert!(
                    !frames.iter().any(|f| f.contains(good)),
                    "a leak's code path names {good}, which closes: {path:#}"
                );
            }
            Expect::Note(words) => {
                let note = path["note"].as_str().unwrap_or_else(|| {
                    panic!("no note saying why the handler is not named: {path:#}")
                });
                for word in words {
                    assert!(note.contains(word), "the note lacks {word:?}: {note:?}");
                }
            }
        }
    }
    // These leaks are accepted sockets: the hint must point at the server,
    // not at a client pool.
    let hint = entry["peer_pattern"].as_str().unwrap_or_default();
    assert!(
        !hint.contains("pool"),
        "a server's leaks blamed on a pool: {hint}"
    );
    // All four took the same path: stacks that differ only in addresses
    // nothing names (two compiled copies of one Java method) are one path.
    assert_eq!(paths.len(), 1, "one code path for one bug: {paths:#?}");

    match expect {
        Expect::Handler { leaky, good } => {
            assert!(
                text.contains(leaky),
                "the text report does not show {leaky}:\n{text}"
            );
            assert!(
                !text.contains(good),
                "the text report shows {good}:\n{text}"
            );
        }
        Expect::Note(words) => {
            for word in words {
                assert!(
                    text.contains(word),
                    "the text report does not say {word:?}:\n{text}"
                );
            }
        }
    }
    drop(clients);
    paths[0].clone()
}

fn c_server(name: &str, frame_pointer: &str, mode: &[&str]) -> Option<serde_json::Value> {
    if !require_root() {
        return None;
    }
    let scratch = Scratch::new(name);
    let binary = scratch.path("leaky");
    build_c("leaky.c", frame_pointer, "handle_leaky", &binary);
    let mut command = Command::new(&binary);
    command.args(mode);
    let server = Server::start(command, scratch.path("stderr"));
    Some(check(
        name,
        server,
        Expect::Handler {
            leaky: "handle_leaky",
            good: "handle_good",
        },
        |_| {},
    ))
}

#[test]
fn c_with_frame_pointers_names_the_leaking_handler() {
    c_server("c-fp", "-fno-omit-frame-pointer", &[]);
}

/// How most distributions and release builds compile: the stack is unwound
/// from .eh_frame.
#[test]
fn c_without_frame_pointers_names_the_leaking_handler() {
    c_server("c-nofp", "-fomit-frame-pointer", &[]);
}

/// A thread's stack ends in glibc's TCB, where the probe's copy stops:
/// the walk still reaches the thread's outermost frame, with the 4 KiB
/// buffer of the read helper on the way.
#[test]
fn c_on_threads_names_the_handler_and_reaches_the_threads_first_frame() {
    let Some(path) = c_server("c-thread", "-fomit-frame-pointer", &["--thread"]) else {
        return;
    };
    let frames = frames(&path);
    assert!(
        frames.iter().any(|f| f.contains("start_thread")),
        "the walk did not reach the thread's start: {path:#}"
    );
    assert!(
        !frames.iter().any(|f| f.starts_with("(stack truncated")),
        "a thread's stack cut short: {path:#}"
    );
}

#[test]
fn go_names_the_leaking_handler() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("go");
    let binary = go_build(&scratch, "leaky.go");
    let server = Server::start(Command::new(&binary), scratch.path("stderr"));
    check(
        "go",
        server,
        Expect::Handler {
            leaky: "main.handleLegacy",
            good: "main.handleGood",
        },
        |_| {},
    );
}

/// With `-X perf` as well, the interpreter's own frames are what names
/// the code (with its lines); the perf map's trampolines are not shown.
#[test]
fn python_312_with_perf_support_names_the_leaking_function_from_its_own_frames() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("py312");
    let mut command = Command::new(tool(PYTHON_312));
    command
        .args(["-X", "perf"])
        .arg(programs_dir().join("leaky.py"));
    let server = Server::start(command, scratch.path("stderr"));
    let path = check(
        "python3.12 -X perf",
        server,
        Expect::Handler {
            leaky: "handle_leaky (leaky.py:39)",
            good: "handle_good",
        },
        |_| {},
    );
    assert!(
        !frames(&path).iter().any(|f| f.starts_with("py::")),
        "a trampoline shown beside the interpreter's frames: {path:#}"
    );
}

/// `program` (in tests/programs) under Python 3.`minor` with no flag, and
/// the scratch directory its stderr goes to, which must outlive it.
fn python_server(minor: u8, program: &str) -> (Scratch, Server) {
    let scratch = Scratch::new(&format!("py3{minor}-{}", program.trim_end_matches(".py")));
    let mut command = Command::new(pyenv_python(minor));
    command.arg(programs_dir().join(program));
    let server = Server::start(command, scratch.path("stderr"));
    (scratch, server)
}

/// Python with no flag: the probe copies the reading thread's Python frames
/// beside its stack, and the leak names its handler, file and line, in
/// its place among the native frames.
fn python_reads_to_eof(minor: u8) {
    if !require_root() {
        return;
    }
    let (_scratch, server) = python_server(minor, "leaky.py");
    let path = check(
        &format!("python3.{minor}"),
        server,
        Expect::Handler {
            leaky: "handle_leaky (leaky.py:39)",
            good: "handle_good",
        },
        |_| {},
    );
    let eof = path["eof_stack"].as_array().expect("an EOF stack");
    let at = |text: &str| {
        eof.iter()
            .position(|f| f.as_str().unwrap_or_default().starts_with(text))
            .unwrap_or_else(|| panic!("no {text} in {path:#}"))
    };
    // Innermost first: the C read, then the Python frames that called it.
    assert!(at("read_helper_4 (leaky.py:20)") < at("handle_leaky (leaky.py:39)"));
    assert!(at("__libc_recv") < at("read_helper_4 (leaky.py:20)"));
    assert!(path["note"].is_null(), "{path:#}");
}

#[test]
fn python_39_names_the_leaking_function_with_no_flag() {
    python_reads_to_eof(9);
}

#[test]
fn python_310_names_the_leaking_function_with_no_flag() {
    python_reads_to_eof(10);
}

#[test]
fn python_311_names_the_leaking_function_with_no_flag() {
    python_reads_to_eof(11);
}

#[test]
fn python_312_names_the_leaking_function_with_no_flag() {
    python_reads_to_eof(12);
}

#[test]
fn python_313_names_the_leaking_function_with_no_flag() {
    python_reads_to_eof(13);
}

/// A container's Python: its files exist only in its own mount namespace
/// (here the pyenv install bound over an empty directory in a namespace
/// of the test's own), so the agent reads them through /proc/PID/map_files.
#[test]
fn python_in_another_mount_namespace_names_the_leaking_function() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("py311-mntns");
    let python = pyenv_python(11);
    let install = python.parent().and_then(|bin| bin.parent()).unwrap();
    let root = scratch.path("container-python");
    std::fs::create_dir_all(&root).unwrap();
    let mut command = Command::new(tool("unshare"));
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {install} {root} && LD_LIBRARY_PATH={root}/lib exec {root}/bin/python3.11 {program} \"$1\"",
            install = install.display(),
            root = root.display(),
            program = programs_dir().join("leaky.py").display(),
        ))
        .arg("sh");
    let server = Server::start(command, scratch.path("stderr"));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    assert!(
        maps.contains(&format!("{}/lib/libpython3.11.so", root.display())),
        "the server does not run the namespace's libpython:\n{maps}"
    );
    assert!(
        std::fs::read_dir(&root).unwrap().next().is_none(),
        "the namespace's files are visible outside it"
    );
    check(
        "python3.11 in a mount namespace",
        server,
        Expect::Handler {
            leaky: "handle_leaky (leaky.py:39)",
            good: "handle_good",
        },
        |_| {},
    );
}

/// A thread per connection, each still alive with frames of its own: the
/// frames shown are those of the thread that read, never another's.
fn python_thread_per_connection(minor: u8) {
    if !require_root() {
        return;
    }
    let (_scratch, server) = python_server(minor, "threaded.py");
    check(
        &format!("python3.{minor} threads"),
        server,
        Expect::Handler {
            leaky: "handle_leaky (threaded.py:35)",
            good: "handle_good",
        },
        |_| {},
    );
}

#[test]
fn python_39_thread_per_connection_shows_the_reading_threads_frames() {
    python_thread_per_connection(9);
}

#[test]
fn python_311_thread_per_connection_shows_the_reading_threads_frames() {
    python_thread_per_connection(11);
}

#[test]
fn python_313_thread_per_connection_shows_the_reading_threads_frames() {
    python_thread_per_connection(13);
}

/// asyncio reads in its event loop: the report says so, as for Node,
/// rather than offer the loop as the leak's code path.
#[test]
fn python_asyncio_says_the_read_is_in_the_event_loop() {
    if !require_root() {
        return;
    }
    for minor in [9, 13] {
        let (_scratch, server) = python_server(minor, "leaky_asyncio.py");
        let path = check(
            &format!("python3.{minor} asyncio"),
            server,
            Expect::Note(&["asyncio", "event loop", "writer.close()"]),
            |_| {},
        );
        assert!(
            frames(&path)
                .iter()
                .any(|f| f.contains("_run_once (base_events.py:")),
            "the event loop's frames are shown: {path:#}"
        );
    }
}

/// A Python whose frames tcptrace does not read keeps the honest note,
/// naming the version.
#[test]
fn python_38_says_its_frames_are_not_read_and_names_its_version() {
    if !require_root() {
        return;
    }
    let (_scratch, server) = python_server(8, "leaky.py");
    check(
        "python3.8",
        server,
        Expect::Note(&["Python 3.8 frames are not read", "3.9 to 3.13"]),
        |_| {},
    );
}

/// JIT-compiled Java methods, named by the perf map `jcmd` writes after the
/// leaks: frames unresolved when the stack was taken are named at report
/// time.
#[test]
fn java_17_with_a_perf_map_names_the_leaking_method() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("java");
    let command = java_command(&scratch, "Leak");
    let server = Server::start(command, scratch.path("stderr"));
    check(
        "java 17",
        server,
        Expect::Handler {
            leaky: "handleLeaky",
            good: "handleGood",
        },
        |server| write_java_perf_map(server.pid()),
    );
}

/// C# on Mono, the classic CLOSE_WAIT demo: Mono's JIT code keeps frame
/// pointers with MONO_DEBUG=disable_omit_fp, and `--jitmap` names its
/// methods; mono-runtime-dbg names Mono's own frames.
#[test]
fn csharp_on_mono_names_the_leaking_method() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("mono");
    let exe = scratch.path("Leaky.exe");
    run(Command::new(tool("mcs"))
        .arg(format!("-out:{}", exe.display()))
        .arg(programs_dir().join("Leaky.cs")));
    let mut command = Command::new(tool("mono"));
    command
        .env("MONO_DEBUG", "disable_omit_fp")
        .arg("--jitmap")
        .arg(&exe);
    let server = Server::start(command, scratch.path("stderr"));
    let path = check(
        "c# on mono",
        server,
        Expect::Handler {
            leaky: "Program:HandleLegacy",
            good: "Program:HandleGood",
        },
        |_| {},
    );
    let eof = frames(&path);
    assert!(
        eof.iter().any(|f| f.starts_with("mono_w32socket_recv")),
        "Mono's own frames are named: {path:#}"
    );
}

/// Node reads in libuv's event loop and calls the handler later, from
/// another stack: no stack taken at the read can name it, and the report
/// must say so rather than show the loop as the leak's code path.
#[test]
fn node_20_says_the_read_is_in_the_event_loop() {
    if !require_root() {
        return;
    }
    let node = tool("node");
    let version = Command::new(&node)
        .arg("--version")
        .output()
        .expect("node --version");
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.starts_with("v20."),
        "node is {version}, not Node 20: run `cargo xtask setup` to see what is missing"
    );
    let scratch = Scratch::new("node");
    let mut command = Command::new(node);
    command.arg(programs_dir().join("leaky.js"));
    let server = Server::start(command, scratch.path("stderr"));
    check("node 20", server, Expect::Note(&["event loop"]), |_| {});
}
