//! Load generators for `cargo xtask bench`: the ground truth the benchmark
//! compares tcptrace against. Servers and clients run as separate
//! processes; every loop ends after a fixed duration; every address is
//! loopback.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use socket2::{Domain, Socket, Type};

use crate::say;

/// Lets a load process open as many sockets as the system allows.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // Deep: an overflowing backlog drops SYNs, each a 1 s client stall.
    socket.listen(4096)?;
    Ok(socket.into())
}

fn read_to_eof(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    while conn.read(&mut buf)? != 0 {}
    Ok(())
}

/// Churn server: per connection read the request, answer, then close after
/// the client (or first, with `close_first`). Every `leak_every`-th socket
/// is kept open after EOF instead. Runs until "go" on stdin, then reports.
pub fn churn_server(
    addr: SocketAddr,
    threads: u32,
    close_first: bool,
    leak_every: u64,
) -> Result<()> {
    let handle = move |mut conn: TcpStream, number: u64| {
        let mut request = [0u8; 16];
        if conn.read(&mut request).is_err() || conn.write_all(b"pong").is_err() || close_first {
            return None;
        }
        read_to_eof(&mut conn).ok()?;
        (leak_every > 0 && number.is_multiple_of(leak_every)).then_some(conn)
    };
    serve_until_told(addr, threads, handle, |_| {})
}

/// Serves each accepted connection with `handle` (given its number, from 1)
/// on `threads` threads, keeps the sockets it returns (the leaks), telling
/// `kept` how many there are each time, and on any line on stdin (or its
/// end) says how many it served and kept.
pub(crate) fn serve_until_told(
    addr: SocketAddr,
    threads: u32,
    handle: impl Fn(TcpStream, u64) -> Option<TcpStream> + Clone + Send + 'static,
    kept: impl Fn(usize) + Clone + Send + 'static,
) -> Result<()> {
    raise_fd_limit();
    let listener = listen(addr)?;
    say(&format!(
        "listening pid={} port={}",
        std::process::id(),
        listener.local_addr()?.port()
    ));
    let served = Arc::new(AtomicU64::new(0));
    let leaked = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let (served, leaked) = (served.clone(), leaked.clone());
        let (handle, kept) = (handle.clone(), kept.clone());
        thread::spawn(move || {
            while let Ok((conn, _)) = listener.accept() {
                let number = served.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(conn) = handle(conn, number) {
                    let mut leaked = leaked.lock().expect("leak list");
                    leaked.push(conn);
                    kept(leaked.len());
                }
            }
        });
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let leaked = leaked.lock().expect("leak list");
    say(&format!(
        "served connections={} leaked={}",
        served.load(Ordering::Relaxed),
        leaked.len()
    ));
    Ok(())
}

/// Churn clients: connect, send, read the answer, close — as fast as
/// `threads` threads can for `duration`, or at most `per_second` in all.
/// IPv4 connections come from a spread of 127.x source addresses so
/// TIME_WAIT does not run out of ports.
pub fn churn_client(
    connect: SocketAddr,
    threads: u32,
    duration: Duration,
    per_second: Option<f64>,
) -> Result<()> {
    raise_fd_limit();
    let threads = threads.max(1);
    // Each thread keeps its own schedule: connection n starts no sooner
    // than n gaps after the start, so a slow one is caught up, not skipped.
    let gap = per_second
        .filter(|rate| *rate > 0.0)
        .map(|rate| Duration::from_secs_f64(f64::from(threads) / rate));
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|thread_index| {
            let (stop, made, failed) = (stop.clone(), made.clone(), failed.clone());
            thread::spawn(move || {
                let mut n: u32 = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(gap) = gap {
                        let due = started + gap * n;
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        }
                    }
                    n = n.wrapping_add(1);
                    match one_churn(connect, thread_index, n) {
                        Ok(()) => made.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    let made = made.load(Ordering::Relaxed);
    say(&format!(
        "done connections={made} failed={} seconds={seconds:.3} per_second={:.0}",
        failed.load(Ordering::Relaxed),
        made as f64 / seconds
    ));
    Ok(())
}

fn one_churn(connect: SocketAddr, thread_index: u32, n: u32) -> Result<()> {
    let socket = Socket::new(Domain::for_address(connect), Type::STREAM, None)?;
    if connect.is_ipv4() {
        // 127.1.<thread>.<n>: 256 source addresses per thread.
        let source = Ipv4Addr::new(127, 1, thread_index as u8, (n % 254 + 1) as u8);
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    }
    socket.connect(&connect.into())?;
    let mut stream: TcpStream = socket.into();
    stream.write_all(b"ping")?;
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer)?;
    Ok(())
}

/// Bulk receiver: `connections` senders, each read with `recv_size` recvs
/// until the sender closes; reports bytes and recv calls per second.
pub fn bulk_server(addr: SocketAddr, connections: u32, recv_size: usize) -> Result<()> {
    let listener = listen(addr)?;
    say(&format!(
        "listening pid={} port={}",
        std::process::id(),
        listener.local_addr()?.port()
    ));
    let bytes = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut first = None;
    for _ in 0..connections {
        let (mut conn, _) = listener.accept()?;
        first.get_or_insert_with(Instant::now);
        let (bytes, calls) = (bytes.clone(), calls.clone());
        readers.push(thread::spawn(move || {
            let mut buf = vec![0u8; recv_size];
            while let Ok(n) = conn.read(&mut buf) {
                calls.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    break;
                }
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    for reader in readers {
        let _ = reader.join();
    }
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64()).max(1e-9);
    say(&format!(
        "done bytes_per_second={:.0} recvs_per_second={:.0}",
        bytes.load(Ordering::Relaxed) as f64 / seconds,
        calls.load(Ordering::Relaxed) as f64 / seconds
    ));
    Ok(())
}

/// Bulk senders: `connections` streams written as fast as possible for `duration`.
pub fn bulk_client(connect: SocketAddr, connections: u32, duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    let senders: Vec<_> = (0..connections)
        .map(|_| {
            let mut stream = TcpStream::connect(connect).context("bulk connect")?;
            Ok(thread::spawn(move || {
                let chunk = vec![0x5au8; 64 * 1024];
                while Instant::now() < deadline {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }))
        })
        .collect::<Result<_>>()?;
    for sender in senders {
        let _ = sender.join();
    }
    say("done");
    Ok(())
}

/// A syscall that touches no socket, to see whether tracing taxes others.
pub fn syscall_loop(duration: Duration) -> Result<()> {
    let started = Instant::now();
    let mut calls: u64 = 0;
    while started.elapsed() < duration {
        for _ in 0..1000 {
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() };
        }
        calls += 1000;
    }
    say(&format!(
        "done calls_per_second={:.0}",
        calls as f64 / started.elapsed().as_secs_f64()
    ));
    Ok(())
}
