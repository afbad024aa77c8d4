//! Peers whose connections the watch and tracking tests follow step by
//! step: a server and a client that wait for "go" between steps, a
//! bystander making connections to itself, a churn of short connections.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use socket2::{Domain, Socket, Type};

use crate::{cookie, read_to_eof, say, wait_for_go};

pub fn server(addr: SocketAddr) -> Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&addr.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .context("bound address is not IP")?;
    say(&format!(
        "bound pid={} port={} cookie={}",
        std::process::id(),
        bound.port(),
        cookie(&socket)?
    ));
    wait_for_go()?;
    socket.listen(16)?;
    let listener: TcpListener = socket.into();
    say("listening");
    let (mut conn, peer) = listener.accept()?;
    say(&format!("accepted cookie={} peer={peer}", cookie(&conn)?));
    let mut buf = [0u8; 256];
    while conn.read(&mut buf)? != 0 {}
    say("eof");
    drop(conn);
    drop(listener);
    say("closed");
    Ok(())
}

pub fn client(connect: SocketAddr) -> Result<()> {
    say(&format!("ready pid={}", std::process::id()));
    wait_for_go()?;
    let mut stream = TcpStream::connect(connect)?;
    say(&format!(
        "connected cookie={} local={}",
        cookie(&stream)?,
        stream.local_addr()?
    ));
    stream.write_all(b"hello")?;
    // Closing waits for the test: the server has accepted by then, so the
    // FIN reaches a socket whose owner the accept showed.
    wait_for_go()?;
    drop(stream);
    say("closed");
    Ok(())
}

fn one_connection(listener: &TcpListener) -> Result<()> {
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut accepted, _) = listener.accept()?;
    client.write_all(b"x")?;
    let mut byte = [0u8; 1];
    accepted.read_exact(&mut byte)?;
    client.shutdown(Shutdown::Write)?;
    let _ = accepted.read(&mut byte)?;
    Ok(())
}

pub fn bystander(addr: SocketAddr, connections: u32) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    say(&format!(
        "bystander pid={} port={}",
        std::process::id(),
        listener.local_addr()?.port()
    ));
    let pace = Duration::from_secs(1) / connections.max(1);
    for _ in 0..connections {
        one_connection(&listener)?;
        thread::sleep(pace);
    }
    say("done");
    Ok(())
}

pub fn churn(addr: SocketAddr, connections: u32, threads: u32) -> Result<()> {
    // A deep backlog and one acceptor per client: an overflowing backlog
    // drops SYNs, and each drop stalls a client for a 1 s retransmit.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    let listener: TcpListener = socket.into();
    let target = listener.local_addr()?;
    let started = Instant::now();
    let threads = threads.max(1);
    let share = |i: u32| connections / threads + u32::from(i < connections % threads);
    let mut workers = Vec::new();
    for i in 0..threads {
        let listener = listener.try_clone()?;
        let accepts = share(i);
        workers.push(thread::spawn(move || -> Result<()> {
            for _ in 0..accepts {
                let (mut conn, _) = listener.accept()?;
                // Read to the client's FIN, then close: no unread data, no RST.
                read_to_eof(&mut conn)?;
            }
            Ok(())
        }));
        let connects = share(i);
        workers.push(thread::spawn(move || -> Result<()> {
            for _ in 0..connects {
                let mut stream = TcpStream::connect(target)?;
                stream.write_all(b"ping")?;
            }
            Ok(())
        }));
    }
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
    }
    say(&format!(
        "done connections={connections} seconds={:.3}",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
