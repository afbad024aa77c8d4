//! The command line's promises: exit codes and one-line errors that say what to do.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Output},
};

fn tcptrace(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tcptrace"));
    command.args(args);
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
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
        (&["top", "--interval", "0s"], "zero"),
        (&["serve", "--listen", "nowhere"], "nowhere"),
        (&["serve", "--top-comms", "0"], "top-comms"),
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
    assert!(output.stdout.is_empty());
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
