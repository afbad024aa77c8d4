//! Shared by the root integration tests: the test peers as separate
//! processes (`peers`), and `tcptrace` itself run as a child process.
#![allow(dead_code)] // each test binary uses a different part

mod peers;
pub mod programs;

#[allow(unused_imports)] // as dead_code above
pub use peers::{
    Churn, Peer, ServedClients, addr, churn_client, serve_clients, sorted, testpeer_path,
};

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    thread,
    time::Duration,
};

pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The tcptrace the tests run: cargo's, or TCPTRACE_BIN's where set (the
/// kernel matrix's guests run the static dist binary).
pub fn tcptrace_binary() -> std::path::PathBuf {
    std::env::var_os("TCPTRACE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tcptrace").into())
}

/// Root tests fail without root rather than pass silently; set
/// TCPTRACE_SKIP_ROOT_TESTS=1 to skip them knowingly.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("TCPTRACE_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipped: needs root to load the eBPF probe (TCPTRACE_SKIP_ROOT_TESTS is set)");
        return false;
    }
    panic!("this test loads the eBPF probe and needs root: run `cargo xtask test`");
}

/// Whether the running kernel has `sock:sock_recv_length` (Linux 6.3+),
/// which the first-I/O and EOF stacks need. Read from the kernel's own BTF,
/// not from what tcptrace says, so a tcptrace that wrongly skips the hook
/// still fails.
pub fn kernel_has_recv_tracepoint() -> bool {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    let name = b"\0btf_trace_sock_recv_length\0";
    btf.windows(name.len()).any(|w| w == name)
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// Lines of a child's pipe, read on a thread so waits can time out.
fn line_channel(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `word key=value key=value` -> (word, map)
pub fn parse_step(line: &str) -> (String, HashMap<String, String>) {
    let mut parts = line.split_whitespace();
    let word = parts.next().unwrap_or_default().to_owned();
    let fields = parts
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (word, fields)
}

/// `tcptrace COMMAND --json ARGS` as a child process, killed on drop.
struct Agent {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    name: String,
}

impl Agent {
    /// Starts it and waits for its "attached" line on stderr (for `leaks`,
    /// also after the startup snapshot of the kernel table).
    fn start(command: &str, args: &[&str], ready_line: &str) -> Self {
        let mut full = vec![command, "--json"];
        full.extend_from_slice(args);
        Self::launch(&full, ready_line).0
    }

    /// `tcptrace ARGS`; waits for the line starting with `ready_line` (notices
    /// may come first) and returns it.
    fn launch(args: &[&str], ready_line: &str) -> (Self, String) {
        let mut child = Command::new(tcptrace_binary())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcptrace");
        let agent = Self {
            stdout: line_channel(child.stdout.take().unwrap()),
            stderr: line_channel(child.stderr.take().unwrap()),
            child,
            name: format!("tcptrace {}", args.join(" ")),
        };
        let mut said = Vec::new();
        loop {
            let line = agent
                .stderr
                .recv_timeout(STEP_TIMEOUT)
                .unwrap_or_else(|_| panic!("`{}` did not start; it said {said:?}", agent.name));
            if line.starts_with(ready_line) {
                return (agent, line);
            }
            if !line.starts_with("tcptrace: ") || said.len() >= 5 {
                // All of it: a verifier log says why only in its last lines.
                let mut rest = vec![line];
                while let Ok(more) = agent.stderr.recv_timeout(Duration::from_millis(500)) {
                    rest.push(more);
                }
                panic!(
                    "`{}` said {said:?}, then this before {ready_line:?}:\n{}",
                    agent.name,
                    rest.join("\n")
                );
            }
            said.push(line);
        }
    }

    /// Waits for a successful exit; returns stdout and stderr lines.
    fn finish(mut self) -> (Vec<String>, Vec<String>) {
        let status = self.child.wait().expect("wait tcptrace");
        // The reader threads end at EOF, so iterating waits for every line.
        let stderr: Vec<String> = self.stderr.iter().collect();
        assert!(
            status.success(),
            "`{}` exited with {status}: {stderr:?}",
            self.name
        );
        (self.stdout.iter().collect(), stderr)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Watcher(Agent);

#[derive(Debug)]
pub struct WatchResult {
    pub events: Vec<serde_json::Value>,
    pub summary: HashMap<String, String>,
    pub stderr: Vec<String>,
}

impl Watcher {
    /// Starts `tcptrace watch --json ARGS` and waits until it is attached.
    pub fn start(args: &[&str]) -> Self {
        Self(Agent::start(
            "watch",
            args,
            "tcptrace: watching TCP state transitions",
        ))
    }

    pub fn pid(&self) -> u32 {
        self.0.child.id()
    }

    /// Stops with `signal` and returns what it printed.
    pub fn stop(self, signal: libc::c_int) -> WatchResult {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        self.finish()
    }

    /// Waits for it to exit by itself (--duration) and returns what it printed.
    pub fn finish(self) -> WatchResult {
        let name = self.0.name.clone();
        let (stdout, stderr) = self.0.finish();
        let events = stdout
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
            })
            .collect();
        let summary_line = stderr
            .iter()
            .find(|line| line.starts_with("tcptrace: summary"))
            .unwrap_or_else(|| panic!("`{name}` printed no summary: {stderr:?}"));
        let summary = parse_step(summary_line.trim_start_matches("tcptrace: ")).1;
        WatchResult {
            events,
            summary,
            stderr,
        }
    }
}

/// `tcptrace leaks --json ARGS`.
pub struct LeakRun(Agent);

impl LeakRun {
    pub fn start(args: &[&str]) -> Self {
        Self(Agent::start(
            "leaks",
            args,
            "tcptrace: watching for TCP socket leaks",
        ))
    }

    /// Waits `wait`, stops it with SIGINT, and returns its final report:
    /// for tests whose timing depends on how fast the machine is (a guest
    /// under emulation is many times slower than the host).
    pub fn stop_after(self, wait: Duration) -> LeakReportView {
        thread::sleep(wait);
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.child.id() as libc::pid_t, libc::SIGINT) };
        self.report()
    }

    /// The next live report (without --duration), `None` if none comes
    /// within `timeout`.
    pub fn next_report(&self, timeout: Duration) -> Option<LeakReportView> {
        let line = self.0.stdout.recv_timeout(timeout).ok()?;
        Some(LeakReportView(
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}")),
        ))
    }

    /// Waits for the final report (run with --duration).
    pub fn report(self) -> LeakReportView {
        let (stdout, _) = self.0.finish();
        let last = stdout.last().expect("a report on stdout");
        LeakReportView(serde_json::from_str(last).expect("report is JSON"))
    }
}

pub struct LeakReportView(pub serde_json::Value);

impl LeakReportView {
    /// The report's entry for one holder process.
    pub fn process(&self, pid: u32) -> Option<&serde_json::Value> {
        self.0["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
    }

    /// Cookies reported for `pid`, sorted.
    pub fn cookies(&self, pid: u32) -> Vec<u64> {
        let mut cookies: Vec<u64> = self.process(pid).map(socket_cookies).unwrap_or_default();
        cookies.sort();
        cookies
    }

    /// Every cookie the report names, under any holder.
    pub fn all_cookies(&self) -> Vec<u64> {
        self.0["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .flat_map(socket_cookies)
            .collect()
    }
}

fn socket_cookies(process: &serde_json::Value) -> Vec<u64> {
    process["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .map(|s| s["cookie"].as_u64().expect("cookie"))
        .collect()
}

/// `tcptrace top --json ARGS`.
pub struct TopRun(Agent);

impl TopRun {
    pub fn start(args: &[&str]) -> Self {
        Self(Agent::start(
            "top",
            args,
            "tcptrace: per-process TCP activity",
        ))
    }

    /// The next snapshot it prints.
    pub fn next_snapshot(&self) -> serde_json::Value {
        let line = self
            .0
            .stdout
            .recv_timeout(STEP_TIMEOUT)
            .unwrap_or_else(|_| panic!("`{}` printed no snapshot", self.0.name));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }
}

/// The row of process `pid` in a top snapshot.
pub fn top_row(snapshot: &serde_json::Value, pid: u32) -> Option<&serde_json::Value> {
    snapshot["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|row| row["pid"].as_u64() == Some(u64::from(pid)))
}

/// `tcptrace serve ARGS` on a loopback port of its choosing.
pub struct ServeRun {
    agent: Agent,
    pub address: String,
}

impl ServeRun {
    pub fn start(args: &[&str]) -> Self {
        let mut full = vec!["serve", "--listen", "127.0.0.1:0"];
        full.extend_from_slice(args);
        let (agent, ready) = Agent::launch(&full, "tcptrace: serving http://");
        let address = ready
            .trim_start_matches("tcptrace: serving http://")
            .split('/')
            .next()
            .expect("an address in the ready line")
            .to_owned();
        Self { agent, address }
    }

    pub fn get(&self, path: &str) -> (u16, String, String) {
        http_get(&self.address, path)
    }

    pub fn pid(&self) -> u32 {
        self.agent.child.id()
    }

    /// Stops it with SIGTERM; returns its stderr lines after a clean exit.
    pub fn stop(self) -> Vec<String> {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.agent.child.id() as libc::pid_t, libc::SIGTERM) };
        self.agent.finish().1
    }
}

/// A plain HTTP/1.0 GET: status, content type, body. Tests only talk to
/// loopback servers they started.
pub fn http_get(address: &str, path: &str) -> (u16, String, String) {
    use std::net::TcpStream;
    let mut stream =
        TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Waits, snapshot by snapshot, for a finding of `kind` about `subject`
/// (a substring); panics after `snapshots` snapshots without one.
pub fn wait_for_finding(
    top: &TopRun,
    kind: &str,
    subject: &str,
    snapshots: usize,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..snapshots {
        last = top.next_snapshot();
        let found = last["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .find(|f| {
                f["kind"] == kind && f["subject"].as_str().is_some_and(|s| s.contains(subject))
            })
            .cloned();
        if let Some(finding) = found {
            return finding;
        }
    }
    panic!("no {kind} finding about {subject:?} in {snapshots} snapshots; the last:\n{last:#}");
}

/// A cgroup v2 directory named the way docker names its containers'
/// scopes, removed on drop. Only the name matters to tcptrace.
pub struct FakeContainer {
    dir: std::path::PathBuf,
    pub id: String,
}

impl FakeContainer {
    pub fn new() -> Self {
        Self::numbered(0)
    }

    /// One of several in a test: `index` and the test's pid lead the id, so
    /// the 12-digit short id tcptrace shows is this container's alone.
    pub fn numbered(index: u16) -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
        let root = mounts
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| fields[1].to_owned())
            })
            .expect("a cgroup2 mount");
        let id: String = format!(
            "{index:04x}{:08x}{:052x}",
            std::process::id(),
            0x7463_7074_7261_6365u64
        );
        let dir = std::path::Path::new(&root).join(format!("system.slice/docker-{id}.scope"));
        std::fs::create_dir_all(&dir).expect("create the cgroup");
        Self { dir, id }
    }

    /// `program ARGS` started inside the container, so that nothing ever
    /// sees it outside.
    pub fn command(&self, program: &std::path::Path, args: &[&str]) -> Command {
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "sh"])
            .arg(self.dir.join("cgroup.procs"))
            .arg(program)
            .args(args);
        command
    }

    pub fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .expect("move into the cgroup");
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        // The process leaves it when it exits; rmdir fails until then.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// `tcptrace leaks ARGS` as text, for what a person reads (tests that check
/// the JSON run this beside a `LeakRun`).
pub struct LeakTextRun(Agent);

impl LeakTextRun {
    pub fn start(args: &[&str]) -> Self {
        let mut full = vec!["leaks"];
        full.extend_from_slice(args);
        Self(Agent::launch(&full, "tcptrace: watching for TCP socket leaks").0)
    }

    /// Waits `wait`, stops it with SIGINT, and returns its final report (the
    /// reports before it, one per interval, are left out).
    pub fn stop_after(self, wait: Duration) -> String {
        thread::sleep(wait);
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.child.id() as libc::pid_t, libc::SIGINT) };
        let (stdout, _) = self.0.finish();
        let last = stdout
            .iter()
            .rposition(|line| line.starts_with("tcptrace leaks:"))
            .unwrap_or_else(|| panic!("no report in {stdout:?}"));
        stdout[last..].join("\n")
    }
}
