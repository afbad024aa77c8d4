//! The test peers (tcptrace-testpeer) as separate processes, driven step
//! by step over their stdin and stdout.

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::Receiver,
};

use super::{STEP_TIMEOUT, line_channel, parse_step};

pub fn testpeer_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TCPTRACE_TESTPEER") {
        return path.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/tcptrace-testpeer
    let exe = std::env::current_exe().expect("current_exe");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps")
        .join("tcptrace-testpeer");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p tcptrace-testpeer` (cargo xtask test does)",
        path.display()
    );
    path
}

pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    role: String,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Self {
        let mut command = Command::new(testpeer_path());
        command.args(args);
        Self::spawn_command(command, &args.join(" "))
    }

    /// A peer started through a wrapper (e.g. `unshare --net`).
    pub fn spawn_command(mut command: Command, role: &str) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tcptrace-testpeer");
        let lines = line_channel(child.stdout.take().unwrap());
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            role: role.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the step `word` and returns its fields.
    pub fn expect(&self, word: &str) -> HashMap<String, String> {
        let line = self
            .lines
            .recv_timeout(STEP_TIMEOUT)
            .unwrap_or_else(|_| panic!("peer `{}` did not say `{word}`", self.role));
        let (said, fields) = parse_step(&line);
        assert_eq!(said, word, "peer `{}` said {line:?}", self.role);
        fields
    }

    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write go");
        stdin.flush().unwrap();
    }

    /// A peer in a network namespace of its own (alive as long as the peer,
    /// loopback only).
    pub fn spawn_in_new_netns(args: &[&str]) -> Self {
        Self::spawn_in_new_netns_with(&[], args)
    }

    /// The same, with the namespace's sysctls set first: (name under
    /// /proc/sys/net/ipv4, value). They are the namespace's own: the host's
    /// stay as they are.
    pub fn spawn_in_new_netns_with(sysctls: &[(&str, &str)], args: &[&str]) -> Self {
        let mut script = String::from("ip link set lo up");
        for (name, value) in sysctls {
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && value.chars().all(|c| c.is_ascii_digit() || c == ' '),
                "a sysctl name and numbers only: {name}={value}"
            );
            script.push_str(&format!(" && echo '{value}' > /proc/sys/net/ipv4/{name}"));
        }
        script.push_str(" && exec \"$0\" \"$@\"");
        let mut command = Command::new("unshare");
        command.args(["--net", "sh", "-c", &script]);
        command.arg(testpeer_path());
        command.args(args);
        Self::spawn_command(command, &format!("{} (own netns)", args.join(" ")))
    }

    /// The cookies a `hold` step listed.
    pub fn held_cookies(fields: &HashMap<String, String>) -> Vec<u64> {
        fields["cookies"]
            .split(',')
            .filter(|c| !c.is_empty())
            .map(|c| c.parse().expect("cookie"))
            .collect()
    }

    pub fn wait_success(mut self) {
        let status = self.child.wait().expect("wait peer");
        assert!(
            status.success(),
            "peer `{}` exited with {status}",
            self.role
        );
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A churn-server and a churn-client (2 threads each) on loopback: the
/// client connects, sends, reads the answer and closes for `seconds`, then
/// holds, both peers alive and every connection closed, until `stop`.
pub struct Churn {
    pub server: Peer,
    pub client: Peer,
    pub port: String,
}

/// A churn client on one thread against `target` for `seconds`; with
/// `hold`, it stays after saying "done" until "go".
pub fn churn_client(target: &str, seconds: &str, hold: bool) -> Peer {
    let mut args = vec![
        "churn-client",
        "--connect",
        target,
        "--threads",
        "1",
        "--seconds",
        seconds,
    ];
    if hold {
        args.push("--hold");
    }
    Peer::spawn(&args)
}

impl Churn {
    pub fn start(seconds: u32) -> Self {
        let server = Peer::spawn(&["churn-server", "--addr", "127.0.0.1:0", "--threads", "2"]);
        let port = server.expect("listening")["port"].clone();
        let client = Peer::spawn(&[
            "churn-client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--threads",
            "2",
            "--seconds",
            &seconds.to_string(),
            "--hold",
        ]);
        Self {
            server,
            client,
            port,
        }
    }

    /// Waits for the client to finish churning: how many connections it
    /// made, and all it said.
    pub fn done(&self) -> (u64, HashMap<String, String>) {
        let done = self.client.expect("done");
        let connections = done["connections"].parse().expect("connections");
        (connections, done)
    }

    /// Lets both peers exit, and checks they exited cleanly.
    pub fn stop(self) {
        let Self {
            mut server,
            mut client,
            ..
        } = self;
        server.go();
        server.expect("served");
        client.go();
        server.wait_success();
        client.wait_success();
    }
}

pub fn sorted(mut cookies: Vec<u64>) -> Vec<u64> {
    cookies.sort();
    cookies
}

pub fn addr(ip: &str, port: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// A leaking server (`role` plus `server_args`, serving `count` connections
/// on `ip`) and its clients, another process closing first (`client_args`
/// appended). Returns once the server holds its leaks.
pub struct ServedClients {
    pub server: Peer,
    pub clients: Peer,
    /// Who holds the leaks: the server, or the child it forked.
    pub holder: u32,
    pub held: Vec<u64>,
    /// The server's listening port.
    pub port: String,
}

pub fn serve_clients(
    ip: &str,
    role: &str,
    count: &str,
    server_args: &[&str],
    client_args: &[&str],
) -> ServedClients {
    let mut args = vec![
        role,
        "--addr",
        if ip.contains(':') {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        },
    ];
    args.extend_from_slice(&["--connections", count]);
    args.extend_from_slice(server_args);
    let server = Peer::spawn(&args);
    let port = server.expect("listening")["port"].clone();
    let target = addr(ip, &port);
    let mut client_command = vec!["clients", "--connect", &target, "--count", count];
    client_command.extend_from_slice(client_args);
    let clients = Peer::spawn(&client_command);
    let holding = server.expect("holding");
    clients.expect("done");
    ServedClients {
        holder: holding["pid"].parse().unwrap(),
        held: sorted(Peer::held_cookies(&holding)),
        port,
        server,
        clients,
    }
}

impl ServedClients {
    pub fn release(mut self) {
        self.server.go();
        self.server.expect("released");
    }
}
