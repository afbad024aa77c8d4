//! Process names are chosen by any local user. Test peers whose comm is a
//! newline and a fake row, or an escape sequence and a bell, hold leaks:
//! the text of `watch`, `leaks --once` and `top` carries no raw control
//! character and no forged row; JSON keeps the exact name, and OpenMetrics
//! escapes it.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::channel,
    thread,
};

use common::{Peer, STEP_TIMEOUT, ServeRun, Watcher, require_root, testpeer_path};

/// A newline, then what a row of `leaks`/`top` would start with.
const FORGER: &str = "\n99999 FAKE  9";
/// Colours the terminal red and rings its bell.
const BELL: &str = "\x1b[31mX\x07";

/// The comm a process gets from the file it executes: the peer, copied
/// under each hostile name, run as a separate process.
fn spawn_named(dir: &Path, name: &str) -> Peer {
    let path = dir.join(name);
    std::fs::copy(testpeer_path(), &path).expect("copy the test peer");
    let mut command = Command::new(&path);
    command.args(["self-leak", "--addr", "127.0.0.1:0", "--leak", "2"]);
    let peer = Peer::spawn_command(command, &format!("self-leak as {name:?}"));
    peer.expect("holding");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", peer.pid())).unwrap();
    assert_eq!(
        comm,
        format!("{name}\n"),
        "the kernel took the name as it is"
    );
    peer
}

/// What `text` holds that a terminal would act on.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| c.is_control() && c != '\n')
        .collect()
}

/// `text` shows each peer once per `expected` line, under its safe name, and
/// no line was forged.
fn assert_safe_text(what: &str, text: &str, peers: &[(&Peer, &str)]) {
    assert_eq!(raw_controls(text), Vec::<char>::new(), "{what}:\n{text}");
    assert!(
        !text
            .lines()
            .any(|line| line.trim_start().starts_with("99999")),
        "{what} has a forged row:\n{text}"
    );
    for (peer, shown) in peers {
        let pid = peer.pid().to_string();
        assert!(
            text.lines()
                .any(|line| line.contains(&pid) && line.contains(shown)),
            "{what}: no line with pid {pid} and {shown:?}:\n{text}"
        );
    }
}

#[test]
fn hostile_comms_stay_text_in_every_view() {
    if !require_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tcptrace-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");

    // Watchers first, so that the peers' own connects are shown with their comm.
    let json_watch = Watcher::start(&[]);
    let mut text_watch = Command::new(common::tcptrace_binary())
        .arg("watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcptrace watch");
    let stderr = text_watch.stderr.take().unwrap();
    let (ready, attached) = channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("tcptrace: watching") {
                let _ = ready.send(());
            }
        }
    });
    attached
        .recv_timeout(STEP_TIMEOUT)
        .expect("tcptrace watch attached");

    let forger = spawn_named(&dir, FORGER);
    let bell = spawn_named(&dir, BELL);
    let peers = [(&forger, "?99999 FAKE  9"), (&bell, "?[31mX?")];

    // watch: stopped by SIGINT, after which it prints what it had.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(text_watch.id() as libc::pid_t, libc::SIGINT) };
    let output = text_watch.wait_with_output().expect("watch output");
    assert!(output.status.success(), "watch: {}", output.status);
    assert_safe_text("watch", &String::from_utf8_lossy(&output.stdout), &peers);
    let watched = json_watch.stop(libc::SIGINT);
    for (peer, name) in [(&forger, FORGER), (&bell, BELL)] {
        let events: Vec<_> = watched
            .events
            .iter()
            .filter(|e| e["pid"] == peer.pid())
            .collect();
        assert!(
            !events.is_empty(),
            "watch --json showed nothing of {name:?}"
        );
        assert!(events.iter().all(|e| e["comm"] == name), "{events:#?}");
    }

    // leaks --once, text and JSON.
    let leaks = |json: bool| {
        let mut command = Command::new(common::tcptrace_binary());
        command.args(["leaks", "--once"]);
        if json {
            command.arg("--json");
        }
        let output = command.output().expect("run leaks --once");
        assert!(output.status.success(), "leaks --once: {}", output.status);
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    assert_safe_text("leaks --once", &leaks(false), &peers);
    let report: serde_json::Value = serde_json::from_str(&leaks(true)).expect("a JSON report");
    for (peer, name) in [(&forger, FORGER), (&bell, BELL)] {
        let process = report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == peer.pid())
            .unwrap_or_else(|| panic!("no entry for {name:?}: {report:#}"));
        assert_eq!(process["comm"], name);
    }

    // top: the table on a pipe (no terminal), every process, leaks at once.
    let output = Command::new(common::tcptrace_binary())
        .args([
            "top",
            "--sort",
            "leaking",
            "--rows",
            "1000",
            "--min-age",
            "0",
            "--interval",
            "500ms",
            "--duration",
            "1s",
        ])
        .output()
        .expect("run top");
    assert!(output.status.success(), "top: {}", output.status);
    assert_safe_text("top", &String::from_utf8_lossy(&output.stdout), &peers);

    // serve: prometheus-client escapes a label value's backslash, quote and
    // newline, which is all OpenMetrics requires; ESC and BEL are valid
    // there as they are.
    let serve = ServeRun::start(&["--stacks", "off", "--top-comms", "1000"]);
    let (status, _, metrics) = serve.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        !metrics.lines().any(|line| line.starts_with("99999")),
        "a forged series line:\n{metrics}"
    );
    for label in [r#"comm="\n99999 FAKE  9""#, "comm=\"\x1b[31mX\x07\""] {
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with("tcptrace_sockets{") && line.contains(label)),
            "no tcptrace_sockets series with {label:?}:\n{metrics}"
        );
    }
    serve.stop();

    for mut peer in [forger, bell] {
        peer.go();
        peer.expect("released");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
