//! The time-to-code-path server for `cargo xtask bench` and its test: the
//! textbook leak that never reads EOF. Each connection's request is read
//! once and answered; on the leaking path an "error" returns without
//! `close()`, so the socket's only stack is its first read's. The leaking
//! and the healthy handler share that read, and which one serves a
//! connection is decided before it, by the connection's number, so that
//! only the stack of the read itself can tell them apart.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use anyhow::Result;

use crate::{
    load::{listen, raise_fd_limit},
    say,
};

/// Serves with `threads` acceptors until a line on stdin, then says how
/// many it served and leaked. The first `leak_first` connections leak, then
/// every `leak_every`-th (0: none); it says `preleaked` once the first
/// `leak_first` are held, so that a tracer can start after them.
pub fn read_once_server(
    addr: SocketAddr,
    threads: u32,
    leak_every: u64,
    leak_first: u64,
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
        thread::spawn(move || {
            while let Ok((conn, _)) = listener.accept() {
                let number = served.fetch_add(1, Ordering::Relaxed) + 1;
                let leaks = number <= leak_first || (leak_every > 0 && number % leak_every == 0);
                if !leaks {
                    serve_and_close(conn);
                } else if let Some(kept) = serve_and_forget(conn) {
                    let mut leaked = leaked.lock().expect("leak list");
                    leaked.push(kept);
                    if leaked.len() as u64 == leak_first {
                        say(&format!("preleaked n={leak_first}"));
                    }
                }
            }
        });
    }
    // Any line, or stdin closing, ends the run.
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

// `inline(never)` keeps each handler a frame of its own, for the report to
// name.

/// The healthy handler: answers, then closes after the client's EOF.
#[inline(never)]
fn serve_and_close(mut conn: TcpStream) {
    if answer_request(&mut conn).is_ok() {
        let mut buf = [0u8; 64];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// The leaking handler: answers, then an error path returns the socket to
/// a list nobody closes. `None` where the client was already gone.
#[inline(never)]
fn serve_and_forget(mut conn: TcpStream) -> Option<TcpStream> {
    answer_request(&mut conn).ok()?;
    Some(conn)
}

/// The read both handlers share: the socket's first read of data.
#[inline(never)]
fn answer_request(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut request = [0u8; 16];
    let n = conn.read(&mut request)?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    conn.write_all(b"pong")
}
