//! Peers that leak sockets the way the leak tests expect to find them:
//! servers and clients that keep connections in CLOSE_WAIT until "go",
//! with named steps for the code paths, and the peers around them.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use socket2::{Domain, Socket, Type};

use crate::{cookie, read_to_eof, say, wait_for_go};

fn cookie_list(held: &[TcpStream]) -> Result<String> {
    let cookies: Result<Vec<String>> = held.iter().map(|c| Ok(cookie(c)?.to_string())).collect();
    Ok(cookies?.join(","))
}

/// Holds `held` open, in CLOSE_WAIT, until the test says "go".
fn hold(held: Vec<TcpStream>) -> Result<()> {
    say(&format!(
        "holding pid={} count={} cookies={}",
        std::process::id(),
        held.len(),
        cookie_list(&held)?
    ));
    wait_for_go()?;
    drop(held);
    say("released");
    Ok(())
}

pub struct LeakyServerStyle {
    pub rst_others: bool,
    pub no_read: bool,
    pub fork_holder: bool,
}

pub fn leaky_server(
    addr: SocketAddr,
    connections: u32,
    leak: u32,
    style: LeakyServerStyle,
) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    say(&format!(
        "listening pid={} port={}",
        std::process::id(),
        listener.local_addr()?.port()
    ));
    let mut held = Vec::new();
    for i in 0..connections {
        let (mut conn, _) = listener.accept()?;
        if i < leak && style.no_read {
            held.push(conn);
            continue;
        }
        read_to_eof(&mut conn)?;
        if i < leak {
            held.push(conn);
        } else if style.rst_others {
            Socket::from(conn).set_linger(Some(Duration::ZERO))?;
        }
    }
    drop(listener);
    if style.fork_holder {
        // SAFETY: single-threaded here; the child only continues this code.
        match unsafe { libc::fork() } {
            -1 => return Err(std::io::Error::last_os_error()).context("fork"),
            0 => {}
            _parent => {
                drop(held);
                return Ok(());
            }
        }
    }
    hold(held)
}

pub fn clients(connect: SocketAddr, count: u32, rst: bool) -> Result<()> {
    let mut kept = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(connect)?;
        stream.write_all(b"request")?;
        if rst {
            // Give the server time to accept before the RST arrives.
            kept.push(stream);
        }
    }
    if rst {
        thread::sleep(Duration::from_millis(200));
        for stream in kept {
            Socket::from(stream).set_linger(Some(Duration::ZERO))?;
        }
    }
    say("done");
    Ok(())
}

// The named steps of leaky-service. `inline(never)` keeps each a frame of
// its own; the stacks name the function that calls the read helper, since
// the libc wrapper itself keeps no frame pointer.
#[inline(never)]
pub fn leaky_service(addr: SocketAddr, connections: u32, leak: u32) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    say(&format!(
        "listening pid={} port={}",
        std::process::id(),
        listener.local_addr()?.port()
    ));
    let accepted = accept_connections(&listener, connections)?;
    drop(listener);
    let mut kept = Vec::new();
    for (i, mut conn) in accepted.into_iter().enumerate() {
        serve_request(&mut conn)?;
        wait_for_hangup(&mut conn)?;
        if (i as u32) < leak {
            kept.push(conn);
        }
    }
    keep_forgotten_sockets(kept)
}

#[inline(never)]
fn accept_connections(listener: &TcpListener, count: u32) -> Result<Vec<TcpStream>> {
    (0..count).map(|_| Ok(listener.accept()?.0)).collect()
}

#[inline(never)]
fn serve_request(conn: &mut TcpStream) -> Result<()> {
    let mut request = [0u8; 7];
    read_some(conn, &mut request)?;
    Ok(())
}

#[inline(never)]
fn wait_for_hangup(conn: &mut TcpStream) -> Result<()> {
    read_to_eof(conn)
}

#[inline(never)]
fn read_some(conn: &mut TcpStream, buf: &mut [u8]) -> Result<usize> {
    Ok(conn.read(buf)?)
}

#[inline(never)]
fn keep_forgotten_sockets(kept: Vec<TcpStream>) -> Result<()> {
    hold(kept)
}

pub fn closing_server(addr: SocketAddr, connections: u32) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    say(&format!(
        "listening pid={} port={}",
        std::process::id(),
        listener.local_addr()?.port()
    ));
    for _ in 0..connections {
        let (conn, _) = listener.accept()?;
        drop(conn);
    }
    say("done");
    Ok(())
}

pub fn late_acceptor(addr: SocketAddr, connections: u32) -> Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&addr.into())?;
    // Room for every connection: none may wait for a SYN retransmit.
    socket.listen(connections.clamp(1, 4096) as i32)?;
    let listener: TcpListener = socket.into();
    say(&format!(
        "listening pid={} port={}",
        std::process::id(),
        listener.local_addr()?.port()
    ));
    wait_for_go()?;
    let mut reset = 0;
    for _ in 0..connections {
        let (mut conn, _) = listener.accept()?;
        // Data queued before a RST is read first; the reset comes after.
        if read_to_eof(&mut conn).is_err() {
            reset += 1;
        }
    }
    say(&format!("accepted connections={connections} reset={reset}"));
    Ok(())
}

pub fn leaky_client(connect: SocketAddr, count: u32) -> Result<()> {
    let mut held = Vec::new();
    for _ in 0..count {
        let mut stream = open_upstream_connection(connect)?;
        read_to_eof(&mut stream)?;
        held.push(stream);
    }
    hold(held)
}

#[inline(never)]
fn open_upstream_connection(connect: SocketAddr) -> Result<TcpStream> {
    Ok(TcpStream::connect(connect)?)
}

pub fn self_leak(addr: SocketAddr, leak: u32) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    let mut held = Vec::new();
    for _ in 0..leak {
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (mut conn, _) = listener.accept()?;
        drop(client);
        read_to_eof(&mut conn)?;
        held.push(conn);
    }
    hold(held)
}
