//! `tcptrace serve`'s HTTP side against hostile clients, on a real serve on
//! a loopback port: slow, idle and many connections are closed by the
//! server, oversized heads and other methods are refused and closed, and
//! `/leaks` is bounded. Each test holds only its own connections.

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use common::{Peer, STEP_TIMEOUT, ServeRun, require_root};

/// serve gives a request head 10 s; this much more is the liveness margin
/// of a test, not a bound on the server.
const CLOSED_WITHIN: Duration = Duration::from_secs(30);

fn connect(address: &str) -> TcpStream {
    TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"))
}

/// Reads until the server closes the connection (EOF or reset) and returns
/// what it sent; panics if it is still open after `limit`.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 << 10];
    loop {
        let left = limit
            .checked_sub(start.elapsed())
            .filter(|left| !left.is_zero())
            .unwrap_or_else(|| {
                panic!(
                    "the server left the connection open for {limit:?}; it sent {:?}",
                    String::from_utf8_lossy(&received)
                )
            });
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return received,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// Status code and lowercased head of a response.
fn status_and_head(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, head.to_ascii_lowercase())
}

/// Sends `request` and expects a refusal with `status` after which the
/// server closes the connection, although the client keeps its side open.
fn expect_refused_and_closed(address: &str, request: &[u8], status: u16) -> String {
    let mut stream = connect(address);
    stream.write_all(request).unwrap();
    let response = read_until_closed(&mut stream, STEP_TIMEOUT);
    let (got, head) = status_and_head(&response);
    assert_eq!(
        got,
        status,
        "{:?} -> {head}",
        String::from_utf8_lossy(&request[..request.len().min(40)])
    );
    head
}

/// One complete response on a kept-alive connection: (status, body).
fn keep_alive_request(stream: &mut TcpStream, request: &str, head_only: bool) -> (u16, Vec<u8>) {
    stream.write_all(request.as_bytes()).unwrap();
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 << 10];
    loop {
        let n = stream.read(&mut buffer).expect("a response");
        assert!(n > 0, "closed before the response ended");
        received.extend_from_slice(&buffer[..n]);
        let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let (status, head) = status_and_head(&received);
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a content-length");
        let body_len = if head_only { 0 } else { length };
        if received.len() >= end + 4 + body_len {
            assert_eq!(received.len(), end + 4 + body_len, "more than one response");
            return (status, received[end + 4..].to_vec());
        }
    }
}

#[test]
fn slow_and_idle_connections_are_closed_by_the_server() {
    if !require_root() {
        return;
    }
    let serve = ServeRun::start(&["--stacks", "off"]);
    let start = Instant::now();

    // Never sends a byte.
    let mut idle = connect(&serve.address);
    // One request, answered, then nothing: an idle keep-alive.
    let mut kept = connect(&serve.address);
    let (status, _) = keep_alive_request(
        &mut kept,
        &format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", serve.address),
        false,
    );
    assert_eq!(status, 200);

    // Slowloris: one header byte every 2 s, for as long as the server lets it.
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
        serve.address,
        "s".repeat(100)
    );
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let mut stream = connect(&serve.address);
            let request = request.clone().into_bytes();
            thread::spawn(move || {
                let mut sent = 0;
                let mut buffer = [0u8; 1024];
                loop {
                    assert!(
                        start.elapsed() < CLOSED_WITHIN,
                        "a slowloris client was still open after {CLOSED_WITHIN:?} ({sent} bytes sent)"
                    );
                    if stream.write_all(&request[sent..sent + 1]).is_err() {
                        return sent;
                    }
                    sent += 1;
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    match stream.read(&mut buffer) {
                        Ok(0) => return sent,
                        Ok(n) => panic!(
                            "answered an incomplete request: {:?}",
                            String::from_utf8_lossy(&buffer[..n])
                        ),
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => return sent,
                        Err(_) => {}
                    }
                }
            })
        })
        .collect();

    assert!(read_until_closed(&mut idle, CLOSED_WITHIN).is_empty());
    assert!(read_until_closed(&mut kept, CLOSED_WITHIN).is_empty());
    for client in slow {
        let sent = client.join().expect("slowloris client");
        assert!(
            sent > 1 && sent < request.len(),
            "closed mid-head, while still trickling: {sent} of {} bytes",
            request.len()
        );
    }
    // The server is still there for a well-behaved scrape.
    assert_eq!(serve.get("/metrics").0, 200);
    serve.stop();
}

/// Lets this test process hold many connections.
fn raise_own_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit use the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(wanted.max(limit.rlim_cur));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= wanted,
        "this test needs {wanted} open files; the hard limit is {}",
        limit.rlim_max
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("serve's fds")
        .count()
}

#[test]
fn many_idle_connections_neither_keep_a_scrape_out_nor_use_up_fds() {
    if !require_root() {
        return;
    }
    const HELD: usize = 1000;
    raise_own_fd_limit(HELD as u64 + 256);
    let serve = ServeRun::start(&["--stacks", "off"]);
    let before = open_fds(serve.pid());
    let mut held: Vec<TcpStream> = (0..HELD).map(|_| connect(&serve.address)).collect();

    let (status, content_type, body) = serve.get("/metrics");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(body.ends_with("# EOF\n"), "{body}");

    // serve holds at most its connection cap, whatever the clients hold.
    let during = open_fds(serve.pid());
    assert!(
        during < before + 300,
        "serve went from {before} to {during} fds with {HELD} connections held"
    );
    // The others were closed by the server (evicted), not left hanging.
    let mut closed = 0;
    for stream in &mut held {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => closed += 1,
            _ => {}
        }
    }
    assert!(
        closed >= HELD - 300,
        "{closed} of {HELD} idle connections closed by serve"
    );
    drop(held);
    serve.stop();
}

#[test]
fn oversized_heads_get_431_and_the_connection_closes() {
    if !require_root() {
        return;
    }
    let serve = ServeRun::start(&["--stacks", "off"]);
    let long = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(16 << 10)
    );
    expect_refused_and_closed(&serve.address, long.as_bytes(), 431);
    let many: String = (0..200).map(|i| format!("X-Header-{i}: 1\r\n")).collect();
    let many = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    expect_refused_and_closed(&serve.address, many.as_bytes(), 431);
    assert_eq!(serve.get("/metrics").0, 200);
    serve.stop();
}

#[test]
fn only_get_and_head_and_a_refusal_closes_the_connection() {
    if !require_root() {
        return;
    }
    let serve = ServeRun::start(&["--stacks", "off"]);
    for request in [
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_owned(),
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_owned(),
        "DELETE /leaks HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_owned(),
        "PUT /flamegraph.svg HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_owned(),
    ] {
        let head = expect_refused_and_closed(&serve.address, request.as_bytes(), 405);
        assert!(head.contains("connection: close"), "{head}");
        assert!(head.contains("allow: get, head"), "{head}");
    }
    // A GET with a body: the body is not read.
    let head = expect_refused_and_closed(
        &serve.address,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        413,
    );
    assert!(head.contains("connection: close"), "{head}");

    // HEAD and GET share a kept-alive connection.
    let mut stream = connect(&serve.address);
    let (status, body) = keep_alive_request(
        &mut stream,
        "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        true,
    );
    assert_eq!((status, body.len()), (200, 0));
    let (status, body) = keep_alive_request(
        &mut stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
    );
    assert_eq!(status, 200);
    assert!(body.ends_with(b"# EOF\n"));
    let (status, body) =
        keep_alive_request(&mut stream, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", true);
    assert_eq!((status, body.len()), (200, 0));
    let (status, _) =
        keep_alive_request(&mut stream, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!(status, 404);
    serve.stop();
}

#[test]
fn leaks_is_bounded_with_totals_and_truncated() {
    if !require_root() {
        return;
    }
    const LEAKED: u64 = 60;
    // Started first: each new leak is a log line, not a line before ready.
    let serve = ServeRun::start(&["--stacks", "off", "--min-age", "0", "--interval", "1s"]);
    let mut peer = Peer::spawn(&[
        "self-leak",
        "--addr",
        "127.0.0.1:0",
        "--leak",
        &LEAKED.to_string(),
    ]);
    peer.expect("holding");
    let start = Instant::now();
    let page = loop {
        let (status, content_type, body) = serve.get("/leaks");
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        let page: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let found = page["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .any(|p| p["pid"] == peer.pid() && p["close_wait"] == LEAKED);
        if found {
            break page;
        }
        assert!(
            start.elapsed() < STEP_TIMEOUT,
            "the peer's {LEAKED} leaks never showed: {page:#}"
        );
        thread::sleep(Duration::from_millis(250));
    };
    let limit = page["limits"]["sockets_per_process"]
        .as_u64()
        .expect("limits");
    assert!(limit < LEAKED, "{page:#}");
    assert_eq!(page["truncated"], true);
    assert!(page["leaking_sockets"].as_u64().unwrap() >= LEAKED);
    assert!(page["leaking_processes"].as_u64().unwrap() >= 1);
    let mine = page["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == peer.pid())
        .unwrap();
    assert_eq!(mine["sockets"].as_array().unwrap().len() as u64, limit);
    assert!(
        page["processes"].as_array().unwrap().len() as u64
            <= page["limits"]["processes"].as_u64().unwrap()
    );
    peer.go();
    peer.expect("released");
    serve.stop();
}

/// Sets `pid`'s soft limit on open files; returns the limit it had.
fn set_soft_fd_limit(pid: u32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads `new` and writes `old`, both valid for the call.
    unsafe {
        assert_eq!(
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                std::ptr::null(),
                &mut old
            ),
            0
        );
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &new,
                std::ptr::null_mut()
            ),
            0
        );
    }
    old
}

fn lowest_free_fd(pid: u32) -> u64 {
    let used: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("serve's fds")
        .filter_map(|fd| fd.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !used.contains(fd)).unwrap()
}

/// Local ports of the sockets `/leaks` lists.
fn leaked_local_ports(leaks: &str) -> Vec<u16> {
    let report: serde_json::Value = serde_json::from_str(leaks).expect("/leaks is JSON");
    report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .flat_map(|p| p["sockets"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["local"].as_str()?.rsplit(':').next()?.parse().ok())
        .collect()
}

/// serve out of fds (its soft limit lowered below what it holds, as a tight
/// LimitNOFILE or a leak of its own would): scrapes are still answered,
/// through fds it keeps in reserve; the failed accepts are counted and said
/// once; the connections waiting in its accept queue, closed by their
/// clients, are never listed as leaks; and once the limit is back, it says
/// so and reads the host again.
#[test]
fn out_of_fds_scrapes_are_answered_counted_and_never_listed_as_leaks() {
    if !require_root() {
        return;
    }
    let serve = ServeRun::start(&["--stacks", "off", "--interval", "1s", "--min-age", "0"]);
    let pid = serve.pid();
    let port: u16 = serve.address.rsplit(':').next().unwrap().parse().unwrap();
    // At the lowest free fd number, no new fd can be opened.
    let old = set_soft_fd_limit(pid, lowest_free_fd(pid));

    for _ in 0..8 {
        let (status, _, body) = serve.get("/metrics");
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (status, _, leaks) = serve.get("/leaks");
        assert_eq!(status, 200, "{leaks}");
        assert!(
            !leaked_local_ports(&leaks).contains(&port),
            "serve's own queued connections listed as leaks: {leaks}"
        );
        thread::sleep(Duration::from_millis(300));
    }
    // Past a refresh, whose metrics count the failures so far.
    thread::sleep(Duration::from_millis(1500));
    let (_, _, metrics) = serve.get("/metrics");
    let accept_errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tcptrace_http_accept_errors_total "))
        .unwrap_or_else(|| panic!("no accept error counter: {metrics}"))
        .parse()
        .unwrap();
    assert!(accept_errors > 0, "{metrics}");

    // Idle clients take the reserve's fds until serve closes them (10 s),
    // and clients that hang up at once then wait, closed, in the accept
    // queue of a serve that cannot accept them: in CLOSE_WAIT with no
    // holder, which the probe sees.
    let idle: Vec<TcpStream> = (0..8).map(|_| connect(&serve.address)).collect();
    thread::sleep(Duration::from_millis(500));
    let quitters: Vec<TcpStream> = (0..40).map(|_| connect(&serve.address)).collect();
    drop(quitters);
    thread::sleep(Duration::from_secs(3));
    drop(idle);

    set_soft_fd_limit(pid, old.rlim_cur);
    // A few refreshes with fds again: the table and /proc are read anew.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let (status, _, leaks) = serve.get("/leaks");
        assert_eq!(status, 200);
        assert!(!leaked_local_ports(&leaks).contains(&port), "{leaks}");
        thread::sleep(Duration::from_millis(500));
    }
    let stderr = serve.stop();
    // Nor were they logged as leaks while they waited.
    let own_logged: Vec<&String> = stderr
        .iter()
        .filter(|line| line.contains("tcp_socket_leak"))
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|leak| {
                leak["local"]
                    .as_str()
                    .is_some_and(|local| local.ends_with(&format!(":{port}")))
            })
        })
        .collect();
    assert!(own_logged.is_empty(), "{own_logged:#?}");
    let said = |words: &str| stderr.iter().filter(|l| l.contains(words)).count();
    assert_eq!(said("cannot accept HTTP connections"), 1, "{stderr:#?}");
    assert_eq!(said("accepting HTTP connections again"), 1, "{stderr:#?}");
}
