//! Child processes for the benchmarks: load generators whose stdout is
//! read line by line, and tcptrace itself, killed when dropped.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process whose stdout is read line by line; killed on drop.
pub(crate) struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    name: String,
    reaped: bool,
}

/// The child gets SIGKILL when the thread that started it ends, so that no
/// load or tracer outlives a benchmark killed before its cleanup ran. Start
/// children from a thread that lives as long as they should.
fn dies_with_us(mut command: Command) -> Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

pub(crate) fn line_channel(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub(crate) fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Proc {
    pub(crate) fn spawn(program: &Path, args: &[&str]) -> Result<Self> {
        let mut child = dies_with_us(Command::new(program))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            stdin: child.stdin.take(),
            lines: line_channel(child.stdout.take().expect("piped")),
            child,
            name: args.first().copied().unwrap_or_default().to_owned(),
            reaped: false,
        })
    }

    pub(crate) fn expect(&self, word: &str) -> Result<HashMap<String, String>> {
        self.expect_within(word, STEP_TIMEOUT)
    }

    pub(crate) fn expect_within(
        &self,
        word: &str,
        timeout: Duration,
    ) -> Result<HashMap<String, String>> {
        let line = self
            .lines
            .recv_timeout(timeout)
            .with_context(|| format!("{} did not say {word}", self.name))?;
        if !line.starts_with(word) {
            bail!("{} said {line:?}, expected {word}", self.name);
        }
        Ok(fields(&line))
    }

    /// The next line of stdout, `None` past `timeout` or at its end.
    pub(crate) fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    pub(crate) fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// One line to the child's stdin.
    pub(crate) fn tell(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("telling {} {line:?}", self.name))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The body of a 200 answer to `GET path` over HTTP/1.0; `timeout` bounds
/// the connect and each read.
pub(crate) fn http_get(address: &str, path: &str, timeout: Duration) -> Result<String> {
    let socket_address = address
        .parse()
        .with_context(|| format!("{address} is not an address"))?;
    let mut stream = TcpStream::connect_timeout(&socket_address, timeout)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no HTTP body"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET {path}: {status}");
    }
    Ok(body.to_owned())
}

/// tcptrace under test, with its resource usage taken at exit.
pub(crate) struct Tracer {
    pub(crate) proc: Proc,
    pub(crate) stderr: Receiver<String>,
    /// `serve`'s HTTP address, from its ready line.
    pub(crate) address: Option<String>,
}

pub(crate) struct TracerExit {
    pub(crate) stdout: Vec<String>,
    pub(crate) stderr: Vec<String>,
    pub(crate) cpu: Duration,
    pub(crate) peak_rss_kib: u64,
}

impl Tracer {
    pub(crate) fn start(binary: &Path, args: &[String], keep_stdout: bool) -> Result<Self> {
        let mut child = dies_with_us(Command::new(binary))
            .args(args)
            .stdin(Stdio::null())
            .stdout(if keep_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcptrace")?;
        let lines = match child.stdout.take() {
            Some(stdout) => line_channel(stdout),
            None => channel().1,
        };
        let stderr = line_channel(child.stderr.take().expect("piped"));
        let tracer = Self {
            proc: Proc {
                child,
                stdin: None,
                lines,
                name: "tcptrace".into(),
                reaped: false,
            },
            stderr,
            address: None,
        };
        let mut tracer = tracer;
        // Notices about what this kernel cannot do may come first.
        for _ in 0..5 {
            let ready = tracer
                .stderr
                .recv_timeout(STEP_TIMEOUT)
                .context("tcptrace did not start")?;
            if let Some(rest) = ready.strip_prefix("tcptrace: serving http://") {
                tracer.address = rest.split('/').next().map(str::to_owned);
                return Ok(tracer);
            }
            // `watch` and `leaks` say "watching", `top` its refresh.
            if ready.starts_with("tcptrace: watching")
                || ready.starts_with("tcptrace: per-process TCP activity")
            {
                return Ok(tracer);
            }
            if !ready.starts_with("tcptrace: ") {
                bail!("tcptrace said {ready:?}");
            }
        }
        bail!("tcptrace did not say it was ready")
    }

    /// `serve`'s leak report, as a scrape would get it.
    pub(crate) fn leaks_over_http(&self) -> Result<serde_json::Value> {
        let address = self.address.as_deref().context("not serve")?;
        let body = http_get(address, "/leaks", STEP_TIMEOUT)?;
        Ok(serde_json::from_str(&body)?)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub(crate) fn terminate(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.proc.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    pub(crate) fn wait(mut self) -> Result<TracerExit> {
        let pid = self.proc.child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: all-zero is a valid rusage; wait4 fills it for our child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child with valid out pointers.
        if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
            bail!(
                "wait4 on tcptrace failed: {}",
                std::io::Error::last_os_error()
            );
        }
        self.proc.reaped = true;
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            let stderr: Vec<String> = self.stderr.try_iter().collect();
            bail!("tcptrace failed (status {status}): {stderr:?}");
        }
        let time = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Ok(TracerExit {
            stdout: self.proc.lines.iter().collect(),
            stderr: self.stderr.iter().collect(),
            cpu: time(usage.ru_utime) + time(usage.ru_stime),
            peak_rss_kib: usage.ru_maxrss as u64,
        })
    }
}

pub(crate) fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// What `git ARGS` printed in `root`, trimmed; an error if it failed.
pub(crate) fn git(root: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !output.status.success() {
        bail!("git {} failed ({})", args.join(" "), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
