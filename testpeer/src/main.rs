//! Loopback TCP peers for tcptrace's tests, each run as its own process so
//! that ownership (which PID holds which socket) is real.
//!
//! Every role prints one line per step on stdout (`word key=value ...`) and,
//! where the test must control timing, waits for a line on stdin first.
//! Every loop is bounded; every address is given by the caller and meant to
//! be loopback.
//!
//! Here: the roles and the helpers they share. The peers, by role:
//! `lifecycle` (step-by-step connections for watch and tracking tests),
//! `leaky` (the leaks the leak tests find), `trouble` (what `top`
//! diagnoses), `load` (the benchmark's load), `read_once` (the leak whose
//! code path the benchmark times), `soak` (the soak's loads).

use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

mod leaky;
mod lifecycle;
mod load;
mod read_once;
mod soak;
mod trouble;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Bind, wait for "go", listen, accept one connection, read to EOF, close it, close the listener.
    Server {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Wait for "go", connect, send a few bytes, wait for another "go", close first.
    Client {
        #[arg(long)]
        connect: SocketAddr,
    },
    /// Make `connections` complete connections to itself, paced over about a second.
    Bystander {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 20)]
        connections: u32,
    },
    /// Accept `connections`, read each to EOF, close all but the first `leak`,
    /// say which it holds, and hold them until "go".
    LeakyServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: u32,
        #[arg(long)]
        leak: u32,
        /// Close the others with SO_LINGER 0 (a RST straight from CLOSE_WAIT).
        #[arg(long)]
        rst_others: bool,
        /// Hold the leaked ones right after accept, without reading.
        #[arg(long)]
        no_read: bool,
        /// Fork after accepting: the child holds the sockets, the parent exits.
        #[arg(long)]
        fork_holder: bool,
    },
    /// Connect `count` times, send a few bytes, close first each time.
    Clients {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        count: u32,
        /// Close with SO_LINGER 0: the server receives a RST instead of a FIN.
        #[arg(long)]
        rst: bool,
    },
    /// Like leaky-server, with each step in a function of its own so tests
    /// can check the stacks: accept_connections, serve_request (first read),
    /// wait_for_hangup (reads EOF), keep_forgotten_sockets (holds `leak`).
    LeakyService {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: u32,
        #[arg(long)]
        leak: u32,
    },
    /// Accept `connections` and close each at once (the server closes first).
    ClosingServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: u32,
    },
    /// Listen, and accept only after "go": `connections` are accepted
    /// (the clients may have reset them meanwhile), read to EOF or the
    /// reset, and closed; says how many were reset.
    LateAcceptor {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: u32,
    },
    /// Connect `count` times, read to the server's EOF, and hold the sockets until "go".
    LeakyClient {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        count: u32,
    },
    /// Make `leak` connections to itself, close the client ends, read EOF on
    /// the accepted ends and hold them in CLOSE_WAIT until "go".
    SelfLeak {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        leak: u32,
    },
    /// Benchmark churn server: answer, then close after the client (or
    /// first); keep every Nth socket open after EOF; report on "go".
    ChurnServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 2)]
        threads: u32,
        #[arg(long)]
        close_first: bool,
        /// Keep every Nth socket (0: none).
        #[arg(long, default_value_t = 0)]
        leak_every: u64,
    },
    /// Time-to-code-path server: read each request once and answer; the
    /// first `leak_first` and every `leak_every`-th connection are kept
    /// unread after that (serve_and_forget), the rest closed after EOF
    /// (serve_and_close); report on any line.
    ReadOnceServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 2)]
        threads: u32,
        /// Keep every Nth connection (0: none).
        #[arg(long, default_value_t = 0)]
        leak_every: u64,
        /// Keep the first N connections, and say `preleaked` when they are held.
        #[arg(long, default_value_t = 0)]
        leak_first: u64,
    },
    /// Benchmark churn clients: connect, send, read, close, for `seconds`.
    ChurnClient {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 2)]
        threads: u32,
        #[arg(long)]
        seconds: f64,
        /// At most this many connections a second in all (default: as many as it can).
        #[arg(long)]
        per_second: Option<f64>,
        /// After reporting, stay alive until "go" (tests read the process's counts).
        #[arg(long)]
        hold: bool,
    },
    /// Benchmark bulk receiver: `recv_size` recvs until each sender closes.
    BulkServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 2)]
        connections: u32,
        #[arg(long, default_value_t = 16384)]
        recv_size: usize,
    },
    /// Benchmark bulk senders, for `seconds`.
    BulkClient {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 2)]
        connections: u32,
        #[arg(long)]
        seconds: f64,
    },
    /// getppid() in a loop for `seconds`: a syscall no socket hook should tax.
    SyscallLoop {
        #[arg(long)]
        seconds: f64,
    },
    /// Read EOF in a loop for `seconds` instead of closing, then hold until "go".
    EofSpinner {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        seconds: f64,
    },
    /// `count` connects with a timeout each, failures counted; hold until "go".
    ConnectAttempts {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 200)]
        timeout_ms: u64,
    },
    /// Listen with `backlog`, never accept, connect to itself `connects`
    /// times to fill the accept queue; hold until "go".
    StalledListener {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        backlog: i32,
        #[arg(long, default_value_t = 4)]
        connects: u32,
        #[arg(long, default_value_t = 200)]
        timeout_ms: u64,
    },
    /// Churn connections to itself from one source address for `seconds`
    /// (TIME_WAIT on the client side); hold until "go".
    TimeWaitChurn {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        seconds: f64,
    },
    /// A connection to itself, half-closed by the client, never closed by the server.
    HalfClosed {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Make `connections` connections to itself as fast as possible from `threads` clients.
    Churn {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: u32,
        #[arg(long, default_value_t = 2)]
        threads: u32,
    },
    /// Soak: on `leak N` make N CLOSE_WAIT leaks to itself, on `close N`
    /// close the N oldest; say how many it holds; stdin closing ends it.
    GrowingLeaker {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Soak: fork `processes` children named churn-0001.., `parallel` at a
    /// time, each making `connections` connections to a churn server; the
    /// forks are spread evenly over `seconds`.
    ProcessChurn {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 300)]
        processes: u32,
        #[arg(long, default_value_t = 4)]
        parallel: u32,
        #[arg(long, default_value_t = 3)]
        connections: u32,
        #[arg(long)]
        seconds: f64,
    },
    /// Soak: open `connections` connections to itself, wait for "go", close all at once.
    RingBurst {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: u32,
    },
    /// Soak: `connections` to an HTTP server for `seconds`, half idle, half
    /// sending one header byte every `byte_every_ms` (slowloris).
    IdleHttp {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        connections: u32,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 3000)]
        byte_every_ms: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().role {
        Role::Server { addr } => lifecycle::server(addr),
        Role::Client { connect } => lifecycle::client(connect),
        Role::Bystander { addr, connections } => lifecycle::bystander(addr, connections),
        Role::LeakyServer {
            addr,
            connections,
            leak,
            rst_others,
            no_read,
            fork_holder,
        } => leaky::leaky_server(
            addr,
            connections,
            leak,
            leaky::LeakyServerStyle {
                rst_others,
                no_read,
                fork_holder,
            },
        ),
        Role::Clients {
            connect,
            count,
            rst,
        } => leaky::clients(connect, count, rst),
        Role::LeakyService {
            addr,
            connections,
            leak,
        } => leaky::leaky_service(addr, connections, leak),
        Role::ClosingServer { addr, connections } => leaky::closing_server(addr, connections),
        Role::LateAcceptor { addr, connections } => leaky::late_acceptor(addr, connections),
        Role::LeakyClient { connect, count } => leaky::leaky_client(connect, count),
        Role::SelfLeak { addr, leak } => leaky::self_leak(addr, leak),
        Role::ChurnServer {
            addr,
            threads,
            close_first,
            leak_every,
        } => load::churn_server(addr, threads, close_first, leak_every),
        Role::ReadOnceServer {
            addr,
            threads,
            leak_every,
            leak_first,
        } => read_once::read_once_server(addr, threads, leak_every, leak_first),
        Role::ChurnClient {
            connect,
            threads,
            seconds,
            per_second,
            hold,
        } => {
            load::churn_client(
                connect,
                threads,
                Duration::from_secs_f64(seconds),
                per_second,
            )?;
            if hold {
                // Any line, or stdin closing, ends it.
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
            }
            Ok(())
        }
        Role::BulkServer {
            addr,
            connections,
            recv_size,
        } => load::bulk_server(addr, connections, recv_size),
        Role::BulkClient {
            connect,
            connections,
            seconds,
        } => load::bulk_client(connect, connections, Duration::from_secs_f64(seconds)),
        Role::SyscallLoop { seconds } => load::syscall_loop(Duration::from_secs_f64(seconds)),
        Role::Churn {
            addr,
            connections,
            threads,
        } => lifecycle::churn(addr, connections, threads),
        Role::EofSpinner { addr, seconds } => {
            trouble::eof_spinner(addr, Duration::from_secs_f64(seconds))
        }
        Role::ConnectAttempts {
            connect,
            count,
            timeout_ms,
        } => trouble::connect_attempts(connect, count, Duration::from_millis(timeout_ms)),
        Role::StalledListener {
            addr,
            backlog,
            connects,
            timeout_ms,
        } => trouble::stalled_listener(addr, backlog, connects, Duration::from_millis(timeout_ms)),
        Role::TimeWaitChurn { addr, seconds } => {
            trouble::time_wait_churn(addr, Duration::from_secs_f64(seconds))
        }
        Role::HalfClosed { addr } => trouble::half_closed(addr),
        Role::GrowingLeaker { addr } => soak::growing_leaker(addr),
        Role::ProcessChurn {
            connect,
            processes,
            parallel,
            connections,
            seconds,
        } => soak::process_churn(
            connect,
            processes,
            parallel,
            connections,
            Duration::from_secs_f64(seconds),
        ),
        Role::RingBurst { addr, connections } => soak::ring_burst(addr, connections),
        Role::IdleHttp {
            connect,
            connections,
            seconds,
            byte_every_ms,
        } => soak::idle_http(
            connect,
            connections,
            Duration::from_secs_f64(seconds),
            Duration::from_millis(byte_every_ms),
        ),
    }
}

pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The test reads line by line: flush each step.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub(crate) fn wait_for_go() -> Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        bail!("expected 'go' on stdin, got {line:?}");
    }
    Ok(())
}

/// The kernel's socket cookie (SO_COOKIE), the identity tcptrace reports.
pub(crate) fn cookie(fd: &impl AsRawFd) -> Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket fd and an out buffer of the stated length.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_COOKIE)");
    }
    Ok(value)
}

pub(crate) fn read_to_eof(conn: &mut TcpStream) -> Result<()> {
    let mut buf = [0u8; 256];
    while conn.read(&mut buf)? != 0 {}
    Ok(())
}
