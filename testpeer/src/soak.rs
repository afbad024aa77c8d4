//! Loads for `cargo xtask soak`: a leaker whose leaks grow and shrink on
//! command, short-lived processes with distinct comms, one-off bursts far
//! above what a ring buffer drains, and idle and slowloris HTTP clients.
//! Every loop is bounded in count and time; every address is loopback.

use std::{
    collections::VecDeque,
    ffi::CString,
    io::{BufRead, ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use crate::{load::raise_fd_limit, say, wait_for_go};

/// More than any soak asks for; a typo must not exhaust the host's fds.
const MAX_HELD_LEAKS: usize = 10_000;

fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Holds leaks made on command: `leak N` makes N connections to itself,
/// lets each client close and keeps the accepted end in CLOSE_WAIT;
/// `close N` closes the N oldest. Says how many it holds after each
/// command; stdin closing ends it.
pub fn growing_leaker(addr: SocketAddr) -> Result<()> {
    raise_fd_limit();
    let listener = TcpListener::bind(addr)?;
    let target = listener.local_addr()?;
    say(&format!(
        "listening pid={} port={}",
        std::process::id(),
        target.port()
    ));
    let mut held: VecDeque<TcpStream> = VecDeque::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (command, count) = line
            .split_once(' ')
            .with_context(|| format!("expected `leak N` or `close N`, got {line:?}"))?;
        let count: usize = count.trim().parse().context("a count")?;
        match command {
            "leak" => {
                if held.len() + count > MAX_HELD_LEAKS {
                    bail!("would hold more than {MAX_HELD_LEAKS} leaks");
                }
                for _ in 0..count {
                    let client = TcpStream::connect(target)?;
                    let (mut conn, _) = listener.accept()?;
                    drop(client);
                    let mut buf = [0u8; 64];
                    while conn.read(&mut buf)? != 0 {}
                    held.push_back(conn);
                }
            }
            "close" => {
                for _ in 0..count.min(held.len()) {
                    held.pop_front();
                }
            }
            other => bail!("unknown command {other:?}"),
        }
        say(&format!(
            "holding pid={} count={}",
            std::process::id(),
            held.len()
        ));
    }
    Ok(())
}

/// Forks `processes` short-lived children, `parallel` at a time, each named
/// `churn-0001`, `churn-0002`, … (its comm); each makes `connections`
/// request/answer connections to `connect` (a churn server) and exits.
/// Forks are spread evenly over `duration`. Must run before any thread is
/// started.
pub fn process_churn(
    connect: SocketAddr,
    processes: u32,
    parallel: u32,
    connections: u32,
    duration: Duration,
) -> Result<()> {
    let started = Instant::now();
    let parent = std::process::id() as libc::pid_t;
    let (mut forked, mut failed, mut running) = (0u32, 0u32, 0u32);
    // Spread evenly over `duration`: a steady turnover, not one spike.
    let pace = duration / processes.max(1);
    while forked < processes && started.elapsed() < duration {
        let next = started + pace * forked;
        thread::sleep(next.saturating_duration_since(Instant::now()));
        while running >= parallel.max(1) {
            failed += u32::from(!reap_one()?);
            running -= 1;
        }
        let name = CString::new(format!("churn-{:04}", forked + 1))?;
        // SAFETY: this process is single-threaded (no thread has been
        // started), so the child may run ordinary code until _exit.
        match unsafe { libc::fork() } {
            -1 => return Err(std::io::Error::last_os_error()).context("fork"),
            0 => {
                // SAFETY: prctl with valid arguments; the name outlives the call.
                unsafe {
                    // Not outliving the parent, even if it is killed.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                }
                let ok = (0..connections).all(|_| request(connect).is_ok());
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            _child => {
                forked += 1;
                running += 1;
            }
        }
    }
    while running > 0 {
        failed += u32::from(!reap_one()?);
        running -= 1;
    }
    say(&format!(
        "done processes={forked} failed={failed} seconds={:.3}",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Waits for any child; whether it exited 0.
fn reap_one() -> Result<bool> {
    let mut status = 0;
    // SAFETY: waiting for our own children with a valid status pointer.
    if unsafe { libc::wait(&mut status) } < 0 {
        return Err(std::io::Error::last_os_error()).context("wait");
    }
    Ok(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
}

fn request(connect: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&connect, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"ping")?;
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer)?;
    Ok(())
}

/// Opens `connections` connections to itself (sources spread over
/// 127.3.x.y), says `open`, waits for "go", then closes every client and
/// every accepted end at once from two threads: a burst of transitions in
/// a few milliseconds.
pub fn ring_burst(addr: SocketAddr, connections: u32) -> Result<()> {
    raise_fd_limit();
    let listener = listen(addr)?;
    let target = listener.local_addr()?;
    let acceptor = thread::spawn(move || -> Result<Vec<TcpStream>> {
        (0..connections).map(|_| Ok(listener.accept()?.0)).collect()
    });
    let mut clients = Vec::with_capacity(connections as usize);
    for i in 0..connections {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        let source = Ipv4Addr::new(127, 3, (i / 250 % 256) as u8, (i % 250 + 1) as u8);
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
        socket.connect(&target.into())?;
        clients.push(TcpStream::from(socket));
    }
    let accepted = acceptor
        .join()
        .map_err(|_| anyhow::anyhow!("acceptor panicked"))??;
    say(&format!(
        "open pid={} connections={}",
        std::process::id(),
        clients.len()
    ));
    wait_for_go()?;
    let started = Instant::now();
    let closer = thread::spawn(move || drop(accepted));
    drop(clients);
    closer
        .join()
        .map_err(|_| anyhow::anyhow!("closer panicked"))?;
    say(&format!(
        "done seconds={:.4}",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// What the start of each slowloris request looks like; after it, one `a`
/// at a time, never the blank line that would end the headers.
const SLOW_HEADER: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

struct HttpClient {
    stream: TcpStream,
    slow: bool,
    sent: usize,
    /// Seconds after all were opened when the server closed it.
    closed_at: Option<f64>,
}

/// Opens `connections` connections to an HTTP server: even ones send
/// nothing, odd ones send one header byte every `byte_every`. Watches for
/// the server closing them until `duration` is over, then reports.
pub fn idle_http(
    connect: SocketAddr,
    connections: u32,
    duration: Duration,
    byte_every: Duration,
) -> Result<()> {
    raise_fd_limit();
    let started = Instant::now();
    let mut clients = Vec::new();
    let mut failed = 0u32;
    let mut failed_in_a_row = 0;
    for i in 0..connections {
        // A server that stops accepting would otherwise cost a timeout per connection.
        if started.elapsed() >= duration || failed_in_a_row >= 5 {
            failed += connections - i;
            break;
        }
        match TcpStream::connect_timeout(&connect, Duration::from_secs(1)) {
            Ok(stream) => {
                failed_in_a_row = 0;
                stream.set_nonblocking(true)?;
                clients.push(HttpClient {
                    stream,
                    slow: i % 2 == 1,
                    sent: 0,
                    closed_at: None,
                });
            }
            Err(_) => {
                failed += 1;
                failed_in_a_row += 1;
            }
        }
    }
    say(&format!(
        "opened pid={} connected={} failed={failed}",
        std::process::id(),
        clients.len()
    ));
    let opened = Instant::now();
    let mut next_byte = opened;
    while started.elapsed() < duration {
        let send = Instant::now() >= next_byte;
        if send {
            next_byte += byte_every;
        }
        for client in clients.iter_mut().filter(|c| c.closed_at.is_none()) {
            let mut closed = false;
            if send && client.slow {
                let byte = SLOW_HEADER.get(client.sent).copied().unwrap_or(b'a');
                match client.stream.write(&[byte]) {
                    Ok(_) => client.sent += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => closed = true,
                }
            }
            if closed || server_closed(&mut client.stream) {
                client.closed_at = Some(opened.elapsed().as_secs_f64());
            }
        }
        thread::sleep(Duration::from_millis(250).min(duration.saturating_sub(started.elapsed())));
    }
    let closed = |slow: bool| {
        let times = || {
            clients
                .iter()
                .filter(move |c| c.slow == slow)
                .filter_map(|c| c.closed_at)
        };
        (times().count(), times().fold(0.0f64, f64::max))
    };
    let ((idle, idle_last), (slow, slow_last)) = (closed(false), closed(true));
    say(&format!(
        "done connected={} idle_closed={idle} idle_last_closed_s={idle_last:.1} slow_closed={slow} slow_last_closed_s={slow_last:.1} open={} seconds={:.1}",
        clients.len(),
        clients.iter().filter(|c| c.closed_at.is_none()).count(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Whether the server has closed or reset the connection (an answer such
/// as a 408 is read and skipped).
fn server_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    // Bounded: a server still sending counts as open until the next look.
    for _ in 0..64 {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
}
