//! Peers that misbehave the way `tcptrace top` diagnoses: spinning on EOF,
//! failing connects, a listener that never accepts, ports used up by
//! TIME_WAIT, a half-closed connection the peer never finishes. Each
//! reports what it did, then stays alive until "go" so the test can look.

use std::{
    io::Read,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use socket2::{Domain, Socket, Type};

use crate::{say, wait_for_go};

/// Accepts one connection from itself, lets the client close, then reads
/// the EOF over and over for `duration` instead of closing.
pub fn eof_spinner(addr: SocketAddr, duration: Duration) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (mut conn, _) = listener.accept()?;
    drop(client);
    say(&format!("spinning pid={}", std::process::id()));
    let started = Instant::now();
    let mut reads: u64 = 0;
    let mut buf = [0u8; 64];
    while started.elapsed() < duration {
        if conn.read(&mut buf)? == 0 {
            reads += 1;
        }
    }
    say(&format!("spun reads={reads}"));
    wait_for_go()?;
    drop(conn);
    Ok(())
}

/// `count` connects to `connect`, each given up after `timeout`; keeps the
/// ones that succeed.
pub fn connect_attempts(connect: SocketAddr, count: u32, timeout: Duration) -> Result<()> {
    let mut connected = Vec::new();
    let mut failed = 0;
    for _ in 0..count {
        match TcpStream::connect_timeout(&connect, timeout) {
            Ok(stream) => connected.push(stream),
            Err(_) => failed += 1,
        }
    }
    say(&format!(
        "done pid={} connected={} failed={failed}",
        std::process::id(),
        connected.len()
    ));
    wait_for_go()?;
    drop(connected);
    Ok(())
}

/// Listens with a `backlog`, never accepts, and connects to itself
/// `connects` times (each given up after `timeout`) to fill the queue.
pub fn stalled_listener(
    addr: SocketAddr,
    backlog: i32,
    connects: u32,
    timeout: Duration,
) -> Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    let listener: TcpListener = socket.into();
    let target = listener.local_addr()?;
    let (mut queued, mut failed) = (Vec::new(), 0);
    for _ in 0..connects {
        match TcpStream::connect_timeout(&target, timeout) {
            Ok(stream) => queued.push(stream),
            Err(_) => failed += 1,
        }
    }
    say(&format!(
        "stalled pid={} port={} queued={} failed={failed}",
        std::process::id(),
        target.port(),
        queued.len()
    ));
    wait_for_go()?;
    drop((queued, listener));
    Ok(())
}

/// Connects to its own server as fast as it can for `duration`, closing
/// first each time, so every connection leaves a TIME_WAIT socket; all from
/// the one source address, so the ephemeral range is what limits it.
pub fn time_wait_churn(addr: SocketAddr, duration: Duration) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    let target = listener.local_addr()?;
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 16];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let started = Instant::now();
    let (mut made, mut failed) = (0u64, 0u64);
    while started.elapsed() < duration {
        match TcpStream::connect(target) {
            Ok(stream) => {
                made += 1;
                drop(stream);
            }
            Err(_) => {
                failed += 1;
                // Out of ports: nothing frees one for a while.
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    say(&format!(
        "done pid={} port={} connections={made} failed={failed}",
        std::process::id(),
        target.port()
    ));
    wait_for_go()?;
    Ok(())
}

/// A connection to itself that the client half-closes (FIN_WAIT2, file
/// still open) and the server never closes (CLOSE_WAIT).
pub fn half_closed(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (mut conn, _) = listener.accept()?;
    client.shutdown(Shutdown::Write)?;
    let mut buf = [0u8; 16];
    while conn.read(&mut buf)? != 0 {}
    say(&format!(
        "half-closed pid={} port={}",
        std::process::id(),
        client.local_addr()?.port()
    ));
    wait_for_go()?;
    drop((client, conn, listener));
    Ok(())
}
