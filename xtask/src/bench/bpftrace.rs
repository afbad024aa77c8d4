//! The peer rows: bpftrace one-liners a user would otherwise run on the
//! same tracepoint, started, stopped and measured beside tcptrace. Not
//! tcptrace: their numbers say what the alternative costs.

use std::{
    ffi::CString,
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::Receiver,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::harness::{STEP_TIMEOUT, line_channel};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Peer {
    /// Every transition printed with what a user would print, into /dev/null.
    Printf,
    /// Transitions counted in a kernel map, printed once at exit.
    Count,
}

pub(super) const PEERS: [Peer; 2] = [Peer::Printf, Peer::Count];

/// How its program is named in the document's kernel table.
pub(super) const PROGRAM: &str = "bpftrace: tracepoint:sock:inet_sock_set_state";
const TRACEFS: &str = "/sys/kernel/tracing";
/// How often SIGINT is repeated until bpftrace exits.
const RESIGNAL: Duration = Duration::from_millis(500);

impl Peer {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Printf => "bpftrace printf one-liner > /dev/null (peer, not tcptrace)",
            Self::Count => "bpftrace count-only one-liner (peer, not tcptrace)",
        }
    }

    pub(super) fn script(self) -> &'static str {
        match self {
            Self::Printf => {
                "tracepoint:sock:inet_sock_set_state { \
                 if (args->family == 2) { \
                 printf(\"%d %s %s:%d -> %s:%d %d -> %d\\n\", pid, comm, \
                 ntop(args->saddr), args->sport, ntop(args->daddr), args->dport, \
                 args->oldstate, args->newstate); \
                 } else { \
                 printf(\"%d %s %s:%d -> %s:%d %d -> %d\\n\", pid, comm, \
                 ntop(args->saddr_v6), args->sport, ntop(args->daddr_v6), args->dport, \
                 args->oldstate, args->newstate); \
                 } }"
            }
            Self::Count => {
                "tracepoint:sock:inet_sock_set_state { @[args->oldstate, args->newstate] = count(); }"
            }
        }
    }
}

/// Whether bpftrace runs here, and how.
#[derive(Clone, Debug)]
pub(super) enum Availability {
    /// It attached and counted a transition. `private_tracefs`: tracefs is
    /// not mounted on this host, so bpftrace runs in its own mount namespace
    /// with tracefs mounted there (the host's mounts stay as they were).
    Runs { private_tracefs: bool },
    /// Why not, from what bpftrace or the kernel said.
    Cannot(String),
}

/// What one bpftrace run cost and saw.
#[derive(Debug, Default)]
pub(super) struct PeerExit {
    pub(super) cpu: Duration,
    pub(super) peak_rss_kib: u64,
    /// The count-only map's total: every transition the program ran for.
    pub(super) transitions: Option<u64>,
    /// bpf_stats of its programs, read just before it was stopped:
    /// (program, runs, run ns); zero while bpf_stats is off.
    pub(super) programs: Vec<(String, u64, u64)>,
}

pub(super) struct Running {
    child: Child,
    stdout: Option<Receiver<String>>,
    stderr: Receiver<String>,
}

impl Running {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn tracefs_mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// One transition on loopback, so that a preflight run has one to count.
fn one_connection() -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    drop(client);
    drop(server);
    Ok(())
}

/// Starts the count-only one-liner, makes a connection, and checks that it
/// was counted: the attach is measured, not assumed.
pub(super) fn availability() -> Availability {
    let private_tracefs = !tracefs_mounted();
    let check = || -> Result<()> {
        let running = start(Peer::Count, private_tracefs)?;
        one_connection()?;
        // Past the perf buffer's and the map's update.
        thread::sleep(Duration::from_millis(200));
        let exit = running.stop()?;
        match exit.transitions {
            Some(n) if n > 0 => Ok(()),
            _ => bail!("bpftrace attached but counted no transition of a loopback connection"),
        }
    };
    match check() {
        Ok(()) => Availability::Runs { private_tracefs },
        Err(error) => Availability::Cannot(format!("{error:#}")),
    }
}

/// bpftrace running `peer`, attached (it said so on stderr) when this returns.
pub(super) fn start(peer: Peer, private_tracefs: bool) -> Result<Running> {
    let mut command = Command::new("bpftrace");
    // -v: it names each probe on stderr as it attaches it, the only sign of
    // readiness that does not go into the output, which is /dev/null.
    command.arg("-v");
    if peer == Peer::Printf {
        command.args(["-o", "/dev/null"]);
    }
    command
        .args(["-e", peer.script()])
        .stdin(Stdio::null())
        .stdout(match peer {
            Peer::Printf => Stdio::null(),
            Peer::Count => Stdio::piped(),
        })
        .stderr(Stdio::piped());
    let tracefs = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    let root = CString::new("/").expect("no NUL");
    // SAFETY: only async-signal-safe system calls between fork and exec, on
    // strings allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            // No bpftrace outlives a benchmark killed before its cleanup.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let failed = private_tracefs
                && (libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        fstype.as_ptr(),
                        tracefs.as_ptr(),
                        fstype.as_ptr(),
                        0,
                        std::ptr::null(),
                    ) != 0);
            if failed {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().with_context(|| {
        if private_tracefs {
            format!(
                "starting bpftrace with tracefs mounted at {TRACEFS} in its own mount namespace"
            )
        } else {
            "starting bpftrace".to_owned()
        }
    })?;
    let stdout = child.stdout.take().map(line_channel);
    let stderr = line_channel(child.stderr.take().expect("piped"));
    let mut running = Running {
        child,
        stdout,
        stderr,
    };
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match running.stderr.recv_timeout(left) {
            Ok(line) if line.starts_with("Attaching tracepoint:") => break,
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = running.child.kill();
                let _ = running.child.wait();
                said.extend(running.stderr.try_iter());
                bail!("bpftrace did not attach: {}", errors(&said));
            }
        }
    }
    // It prints the line just before the attach system calls.
    thread::sleep(Duration::from_millis(200));
    Ok(running)
}

/// What bpftrace said that matters: its errors, less the warning that it
/// could not raise RLIMIT_MEMLOCK (kernels since 5.11 do not use it).
fn errors(said: &[String]) -> String {
    let errors: Vec<&str> = said
        .iter()
        .map(String::as_str)
        .filter(|line| line.contains("ERROR") && !line.contains("RLIMIT_MEMLOCK"))
        .collect();
    if errors.is_empty() {
        format!(
            "it exited without saying why ({} lines on stderr)",
            said.len()
        )
    } else {
        errors.join("; ")
    }
}

/// bpf_stats of the programs `pid` holds, from /proc/PID/fdinfo.
fn program_stats(pid: u32) -> Vec<(String, u64, u64)> {
    let mut programs: Vec<(String, u64, u64)> = Vec::new();
    // Two fds may hold one program.
    let mut seen: Vec<String> = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return programs;
    };
    for fd in fds.filter_map(|entry| entry.ok()) {
        let is_program = fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_program {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim_start_matches(':').trim().to_owned())
        };
        let (Some(id), Some(runs), Some(ns)) = (
            field("prog_id"),
            field("run_cnt").and_then(|v| v.parse().ok()),
            field("run_time_ns").and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        if !seen.contains(&id) {
            seen.push(id);
            programs.push((PROGRAM.to_owned(), runs, ns));
        }
    }
    programs
}

/// The count-only map's total, from lines like `@[1, 8]: 1234`.
pub(super) fn map_total(stdout: &[String]) -> Option<u64> {
    let counts: Vec<u64> = stdout
        .iter()
        .filter(|line| line.starts_with("@["))
        .filter_map(|line| line.rsplit_once(": ")?.1.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

impl Running {
    /// SIGINT, as a user stops it (the count-only one prints its map then),
    /// and its resource usage at exit.
    pub(super) fn stop(mut self) -> Result<PeerExit> {
        let pid = self.child.id() as libc::pid_t;
        let programs = program_stats(self.child.id());
        let mut status = 0;
        // SAFETY: all-zero is a valid rusage; wait4 fills it for our child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut signalled = Instant::now() - RESIGNAL;
        loop {
            // bpftrace 0.17 notices SIGINT only when it interrupts its
            // epoll_wait: one that arrives elsewhere in its loop is lost, so
            // it is sent again until bpftrace exits.
            if signalled.elapsed() >= RESIGNAL {
                // SAFETY: signalling our own child process, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGINT) };
                signalled = Instant::now();
            }
            // SAFETY: waiting for our own child with valid out pointers.
            match unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) } {
                0 if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                0 => {
                    let _ = self.child.kill();
                    bail!("bpftrace did not exit within {STEP_TIMEOUT:?} of SIGINT");
                }
                reaped if reaped == pid => break,
                _ => {
                    let error = std::io::Error::last_os_error();
                    let _ = self.child.kill();
                    bail!("wait4 on bpftrace failed: {error}");
                }
            }
        }
        let stdout: Vec<String> = self
            .stdout
            .take()
            .map_or_else(Vec::new, |s| s.iter().collect());
        let stderr: Vec<String> = self.stderr.iter().collect();
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("bpftrace failed (status {status}): {}", errors(&stderr));
        }
        let time = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Ok(PeerExit {
            cpu: time(usage.ru_utime) + time(usage.ru_stime),
            peak_rss_kib: usage.ru_maxrss as u64,
            transitions: map_total(&stdout),
            programs,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Reaped in `stop`; otherwise (an error between start and stop) not
        // left running. After a reap the pid is gone and kill fails harmlessly.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_map_is_summed_and_the_rest_ignored() {
        let stdout: Vec<String> = [
            "Attaching 1 probe...",
            "",
            "@[7, 2]: 2",
            "@[1, 8]: 40",
            "x: 3",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(map_total(&stdout), Some(42));
        assert_eq!(map_total(&["Attaching 1 probe...".to_owned()]), None);
    }
}
