//! The command line's promises: exit codes and one-line errors that say what to do.

mod common;

use std::{
    fs::File,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Command, Output, Stdio},
};

use common::{Peer, require_root};

fn tcptrace(args: &[&str]) -> Command {
    let mut command = Command::new(common::tcptrace_binary());
    command.args(args);
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `--version` names what was built: the commit (the checkout's HEAD,
/// asked of git here independently) and the build id of the embedded probe.
/// `-V` stays one line, for scripts.
#[test]
fn version_names_the_commit_and_the_probe_build_id() {
    let out = tcptrace(&["--version"]).output().expect("run tcptrace");
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 3, "{said}");
    assert_eq!(lines[0], format!("tcptrace {}", env!("CARGO_PKG_VERSION")));
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    match head {
        Some(head) => assert_eq!(lines[1], format!("commit {head}")),
        // Built outside a checkout: it must say so, not make one up.
        None => assert!(lines[1].starts_with("commit unknown"), "{said}"),
    }
    let id = lines[2]
        .strip_prefix("probe build id ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{said}"
    );

    let short = tcptrace(&["-V"]).output().expect("run tcptrace");
    assert_eq!(
        String::from_utf8_lossy(&short.stdout).trim(),
        format!("tcptrace {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    for (args, hint) in [
        (&["watch", "--port", "0"][..], "0"),
        (&["watch", "--state", "closewait"], "close_wait"),
        (&["watch", "--ring-buffer-size", "3M"], "power of two"),
        (&["watch", "--duration", "soon"], "duration"),
        (&["watch", "--ipv4", "--ipv6"], "cannot be used"),
        (&["frobnicate"], "unrecognized subcommand"),
        (&["top", "--sort", "bogus"], "connect-rate"),
        (&["top", "--interval", "0s"], "an interval of zero"),
        (&["serve", "--interval", "0"], "an interval of zero"),
        (&["watch", "--duration", "0s"], "a duration of zero"),
        (&["leaks", "--min-age", "soon"], "not a duration"),
        (&["serve", "--listen", "nowhere"], "nowhere"),
        (&["serve", "--top-comms", "0"], "top-comms"),
        (&["leaks", "--interval", "50ms"], "outside 100ms to 1h"),
        (&["leaks", "--interval", "2h"], "outside 100ms to 1h"),
        (&["leaks", "--interval", "1s", "-d", "5s"], "cannot be used"),
        (&["leaks", "--interval", "1s", "--once"], "cannot be used"),
        (
            &["leaks", "--min-age", "18446744073709552s"],
            "longer than a year",
        ),
        (&["leaks", "--duration", "400d"], "longer than a year"),
        (
            &["serve", "--interval", "99999999999999h"],
            "outside 100ms to 1h",
        ),
        (&["top", "--interval", "2h"], "outside 100ms to 1h"),
        (&["leaks", "--ring-buffer-size", "8G"], "at most 256M"),
        (&["leaks", "--ring-buffer-size", "512M"], "at most 256 MiB"),
        (&["leaks", "--pid", "-1"], "'-1'"),
        (&["leaks", "--stack-budget", "-5"], "from 1 to 1000000"),
        (&["top", "--rows", "-3"], "'-3'"),
        (&["top", "--rows", "99999999999"], "1..=100000"),
        (
            &["leaks", "--flamegraph", "/tmp/x.svg", "--stacks", "off"],
            "--stacks off",
        ),
        (
            &["leaks", "--flamegraph", "/nonexistent/x.svg"],
            "is not a directory",
        ),
    ] {
        let output = tcptrace(args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(hint),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn help_exits_0_and_shows_examples() {
    let output = tcptrace(&["watch", "--help"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("TIME_WAIT?"), "{help}");
}

#[test]
fn without_privileges_says_to_use_sudo_in_one_line() {
    let mut command = tcptrace(&["watch", "--duration", "1s"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::geteuid() == 0 {
                // nobody: no capabilities once the uid is not 0.
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("needs root"), "{message}");
    assert!(message.contains("sudo"), "{message}");
    assert_eq!(message.matches("tcptrace").count(), 1, "{message}");
    assert!(output.stdout.is_empty());
}

fn as_nobody(args: &[&str]) -> Output {
    let mut command = tcptrace(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::geteuid() == 0 && (libc::setgid(65534) != 0 || libc::setuid(65534) != 0) {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().unwrap()
}

#[test]
fn every_command_says_tcptrace_once_without_privileges() {
    for args in [
        &["leaks", "--once"][..],
        &["leaks", "-d", "1s"],
        &["top", "-d", "1s"],
        &["serve", "--listen", "127.0.0.1:0"],
    ] {
        let output = as_nobody(args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {message}");
        assert!(
            message.starts_with("tcptrace: needs root"),
            "{args:?}: {message}"
        );
        assert_eq!(
            message.matches("tcptrace").count(),
            1,
            "{args:?}: {message}"
        );
    }
}

/// A pipe whose reader has already gone: the first write fails with EPIPE.
fn pipe_without_reader() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new fds into the array; the reading one is
    // closed at once and the writing one handed over to the child.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        libc::close(fds[0]);
        Stdio::from(OwnedFd::from_raw_fd(fds[1]))
    }
}

/// A leaking peer, so that every report has lines to write.
fn leaking_peer() -> Peer {
    let peer = Peer::spawn(&["self-leak", "--addr", "127.0.0.1:0", "--leak", "2"]);
    peer.expect("holding");
    peer
}

/// Commands that write at once (watch's text header) or at their end,
/// whatever the host is doing.
const OUTPUT_COMMANDS: [&[&str]; 6] = [
    &["leaks", "--once"],
    &["leaks", "--once", "--json"],
    &["leaks", "--min-age", "0", "-d", "1s"],
    &["watch", "-d", "1s"],
    &["top", "-i", "500ms", "-d", "1s"],
    &["top", "--json", "-i", "500ms", "-d", "1s"],
];

#[test]
fn a_reader_that_leaves_ends_every_command_quietly_with_0() {
    if !require_root() {
        return;
    }
    let _peer = leaking_peer();
    for args in OUTPUT_COMMANDS {
        let output = tcptrace(args)
            .stdout(pipe_without_reader())
            .output()
            .unwrap();
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {message}");
        assert!(
            !message.contains("Broken pipe") && !message.contains("output failed"),
            "{args:?}: {message}"
        );
    }
}

#[test]
fn a_write_that_fails_is_an_error_and_exit_1() {
    if !require_root() {
        return;
    }
    let _peer = leaking_peer();
    for args in OUTPUT_COMMANDS {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let output = tcptrace(args).stdout(full).output().unwrap();
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {message}");
        assert!(
            message.contains("tcptrace: writing output failed: No space left on device"),
            "{args:?}: {message}"
        );
    }
}

#[test]
fn min_age_zero_reports_every_leak_at_once() {
    if !require_root() {
        return;
    }
    let peer = leaking_peer();
    let output = tcptrace(&["leaks", "--min-age", "0", "-d", "1s", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a report")).expect("JSON");
    assert_eq!(report["min_age_ms"], 0);
    let process = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == peer.pid())
        .unwrap_or_else(|| panic!("the peer's leaks are not reported at once: {report:#}"));
    assert_eq!(process["close_wait"], 2);
    for args in [
        &["leaks", "--once", "--min-age", "0"][..],
        &["top", "--min-age", "0", "-i", "500ms", "-d", "1s"],
    ] {
        let output = tcptrace(args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_pid_that_is_not_running_gets_the_same_notice_everywhere() {
    if !require_root() {
        return;
    }
    let pid = (999_999..)
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .unwrap()
        .to_string();
    let notice = |args: &[&str]| {
        let output = tcptrace(args).output().unwrap();
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {message}");
        message
            .lines()
            .find(|line| line.contains(&pid))
            .unwrap_or_else(|| panic!("{args:?} says nothing of pid {pid}: {message}"))
            .to_owned()
    };
    let watching = format!("tcptrace: no process {pid} is running now; watching for it anyway");
    assert_eq!(notice(&["watch", "--pid", &pid, "-d", "1s"]), watching);
    assert_eq!(notice(&["leaks", "--pid", &pid, "-d", "1s"]), watching);
    assert_eq!(
        notice(&["top", "--pid", &pid, "-i", "500ms", "-d", "1s"]),
        watching
    );
    assert_eq!(
        notice(&["leaks", "--once", "--pid", &pid]),
        format!("tcptrace: no process {pid} is running now")
    );
}

#[test]
fn serve_on_a_taken_port_says_so_in_one_line_and_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = tcptrace(&["serve", "--listen", &address]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains(&format!("cannot listen on {address}")),
        "{message}"
    );
}
