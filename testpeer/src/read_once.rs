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
};

use anyhow::Result;

use crate::{load::serve_until_told, read_to_eof, say};

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
    let handle = move |conn, number: u64| {
        if number <= leak_first || (leak_every > 0 && number.is_multiple_of(leak_every)) {
            serve_and_forget(conn)
        } else {
            serve_and_close(conn);
            None
        }
    };
    let kept = move |count: usize| {
        if count as u64 == leak_first {
            say(&format!("preleaked n={leak_first}"));
        }
    };
    serve_until_told(addr, threads, handle, kept)
}

// `inline(never)` keeps each handler a frame of its own, for the report to
// name.

/// The healthy handler: answers, then closes after the client's EOF.
#[inline(never)]
fn serve_and_close(mut conn: TcpStream) {
    if answer_request(&mut conn).is_ok() {
        let _ = read_to_eof(&mut conn);
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
