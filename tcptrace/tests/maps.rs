//! The probe's kernel maps under churn, read in-process with
//! `Probe::map_occupancy`: short connections, resets before the accept and
//! resets in CLOSE_WAIT must leave the maps as they found them once their
//! processes are gone, with no failed insert and every owner right. Plus the
//! bounds of the options that size kernel memory.

mod common;

use std::{
    collections::HashSet,
    process::{Command, Output},
    thread,
    time::Duration,
};

use common::{Churn, Peer, kernel_has_recv_tracepoint, require_root};
use tcptrace::{
    model::{
        tracker::SocketTracker,
        transition::{Record, StackCopyFailure, Transition},
    },
    probe::{
        loader::{Probe, ProbeOptions, StackLevel},
        records::decode,
    },
};
use tcptrace_common::{
    StackKind, TcpState,
    owner_counts::{PAIR_SLOTS, PAIRS},
};

/// Entries other TCP traffic on the host may add meanwhile (the probe sees
/// every process): far below what one entry per connection would add.
const SLACK: u64 = 64;
const CONNECTIONS: &str = "200";

/// The probe and what it delivered for this test's peers.
struct Traced {
    probe: Probe,
    ports: HashSet<u16>,
    pids: HashSet<u32>,
    /// Sockets seen on `ports`: a socket closed by a reset may show port 0.
    cookies: HashSet<u64>,
    /// As the agent sees them: a softirq transition carries the owner its
    /// socket showed at its last process-context one (`SocketTracker`).
    transitions: Vec<Transition>,
    tracker: SocketTracker,
    /// (tgid, cookie, kind, copied) of stacks taken in this test's peers.
    stacks: Vec<(u32, u64, StackKind, Result<(), StackCopyFailure>)>,
}

impl Traced {
    fn drain(&mut self) {
        let Self {
            probe,
            ports,
            pids,
            cookies,
            transitions,
            tracker,
            stacks,
        } = self;
        probe.drain(|bytes| match decode(bytes) {
            Ok(Record::Transition(t)) => {
                let t = tracker.observe(t).transition;
                if ports.contains(&t.local.port())
                    || ports.contains(&t.remote.port())
                    || cookies.contains(&t.cookie)
                {
                    cookies.insert(t.cookie);
                    transitions.push(t);
                }
            }
            Ok(Record::Stack(s)) if pids.contains(&s.tgid) => {
                stacks.push((s.tgid, s.cookie, s.kind, s.copied));
            }
            _ => {}
        });
    }

    /// Drains for a second: the last closes of a load arrive after it exits.
    fn settle(&mut self) {
        for _ in 0..10 {
            self.drain();
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn watch(&mut self, peer: &Peer, port: Option<&str>) {
        self.pids.insert(peer.pid());
        if let Some(port) = port {
            self.ports.insert(port.parse().expect("port"));
        }
    }

    fn entries(&self, map: &str) -> u64 {
        entries(&self.probe, map)
    }

    /// Transitions of the connections to the listener on `port`, each with
    /// whether it is the server's end. Either end is known by how it opened:
    /// another socket may have had the same port as its own.
    fn on_port(&self, port: u16) -> Vec<(bool, &Transition)> {
        let opened = |old: TcpState, new: TcpState, server: bool| -> HashSet<u64> {
            self.transitions
                .iter()
                .filter(|t| t.old_state == old && t.new_state == new)
                .filter(|t| {
                    if server {
                        t.local.port() == port
                    } else {
                        t.remote.port() == port
                    }
                })
                .map(|t| t.cookie)
                .collect()
        };
        let servers = opened(TcpState::SynRecv, TcpState::Established, true);
        let clients = opened(TcpState::Close, TcpState::SynSent, false);
        self.transitions
            .iter()
            .filter_map(|t| {
                if servers.contains(&t.cookie) {
                    Some((true, t))
                } else {
                    clients.contains(&t.cookie).then_some((false, t))
                }
            })
            .collect()
    }
}

fn entries(probe: &Probe, map: &str) -> u64 {
    probe
        .map_occupancy()
        .into_iter()
        .find(|o| o.name == map)
        .unwrap_or_else(|| panic!("no occupancy for {map}"))
        .entries
}

fn owner(t: &Transition) -> Option<u32> {
    t.owner.as_ref().map(|o| o.tgid)
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// What `top` and `serve` load: every transition counted per owner in the
/// kernel, a connect()ing socket's under its own process even in softirq,
/// an accepted one's under its process where accept() is hooked and under
/// its port otherwise; every connect counted per destination.
#[test]
fn top_and_serve_count_each_owner_and_destination_in_the_kernel() {
    if !require_root() {
        return;
    }
    let mut probe = Probe::load(&ProbeOptions {
        ring_buffer_bytes: 64 << 20,
        stacks: StackLevel::Sampled,
        track_closed_held: true,
        verdicts_only: true,
        count_owners: true,
        ..ProbeOptions::default()
    })
    .expect("load probe");
    let churn = Churn::start(1);
    let (connections, done) = churn.done();
    assert!(connections > 10, "{done:?}");
    // The client closed first; its last moves and the server's closes come
    // in softirq a moment later.
    thread::sleep(Duration::from_millis(1500));
    probe.drain(|_| {});
    let port: u16 = churn.port.parse().unwrap();
    let (client, server) = (churn.client.pid(), churn.server.pid());
    let owners = probe.owner_counts().expect("read the per-owner counts");
    let counted = |pick: &dyn Fn(&tcptrace_common::owner_counts::OwnerKey) -> bool| {
        let mut total = [0u64; PAIR_SLOTS];
        for (_, cpus) in owners.iter().filter(|(key, _)| pick(key)) {
            for cpu in cpus {
                for (slot, n) in cpu.pairs.iter().enumerate() {
                    total[slot] += u64::from(*n);
                }
            }
        }
        total
    };
    let slot = |old: TcpState, new: TcpState| PAIRS.iter().position(|p| *p == (old, new)).unwrap();
    let of_client = counted(&|key| key.tgid == client);
    use TcpState::*;
    for (old, new) in [
        (Close, SynSent),
        (SynSent, Established),
        (Established, FinWait1),
        (FinWait1, FinWait2),
        (FinWait2, Close),
    ] {
        assert_eq!(
            of_client[slot(old, new)],
            connections,
            "client {old:?} -> {new:?}"
        );
    }
    // The server's accepted sockets: under its pid once accept() stored it
    // there, under the listener's port before or without that.
    let of_server = counted(&|key| key.tgid == server || (key.tgid == 0 && key.local_port == port));
    for (old, new) in [
        (SynRecv, Established),
        (Established, CloseWait),
        (CloseWait, LastAck),
        (LastAck, Close),
    ] {
        assert_eq!(
            of_server[slot(old, new)],
            connections,
            "server {old:?} -> {new:?}"
        );
    }
    assert_eq!(of_server[slot(Close, Listen)], 1);
    let destinations = probe.destination_counts().expect("read the destinations");
    let to_server: Vec<(u64, u64)> = destinations
        .iter()
        .filter(|(key, _)| key.tgid == client)
        .map(|(key, cpus)| {
            assert_eq!(key.port, port, "{key:?}");
            assert_eq!(&key.address[..4], &[127, 0, 0, 1], "{key:?}");
            cpus.iter().fold((0, 0), |(a, f), c| {
                (a + u64::from(c.attempted), f + u64::from(c.failed))
            })
        })
        .collect();
    assert_eq!(to_server, vec![(connections, 0)]);
    churn.stop();
}

#[test]
fn churn_and_resets_leave_the_maps_as_they_were_with_owners_right() {
    if !require_root() {
        return;
    }
    let probe = Probe::load(&ProbeOptions {
        ring_buffer_bytes: 64 << 20,
        stacks: StackLevel::Sampled,
        track_closed_held: true,
        ..ProbeOptions::default()
    })
    .expect("load probe");
    let mut traced = Traced {
        probe,
        ports: HashSet::new(),
        pids: HashSet::new(),
        cookies: HashSet::new(),
        transitions: Vec::new(),
        tracker: SocketTracker::new(),
        stacks: Vec::new(),
    };
    let recv_hook = kernel_has_recv_tracepoint();
    traced.settle();
    let baseline = traced.probe.map_occupancy();
    let at_start = |map: &str| {
        baseline
            .iter()
            .find(|o| o.name == map)
            .map_or(0, |o| o.entries)
    };
    eprintln!("baseline {baseline:?}");

    // 1. Churn, the client closing first: each server socket reads EOF
    // once, as a correct server does, which must cost no map entry.
    let churn = Churn::start(3);
    traced.watch(&churn.server, Some(&churn.port));
    traced.watch(&churn.client, None);
    let (connections, done) = churn.done();
    // Few under emulation (a hundred or two a second), but still more
    // than the slack.
    assert!(connections > 2 * SLACK, "{done:?}");
    traced.settle();
    if recv_hook {
        assert!(
            traced.entries("eof_reads") <= at_start("eof_reads") + SLACK,
            "{connections} connections read at EOF once each: {:?}",
            traced.probe.map_occupancy()
        );
    }
    churn.stop();

    // 2. Resets before the accept: the clients reset connections the
    // server accepts only later, already closed (with an accept hook, the
    // path that left an owner behind in the old global map).
    let mut late = Peer::spawn(&[
        "late-acceptor",
        "--addr",
        "127.0.0.1:0",
        "--connections",
        CONNECTIONS,
    ]);
    let late_port = late.expect("listening")["port"].clone();
    traced.watch(&late, Some(&late_port));
    let resetting = Peer::spawn(&[
        "clients",
        "--connect",
        &format!("127.0.0.1:{late_port}"),
        "--count",
        CONNECTIONS,
        "--rst",
    ]);
    let resetting_pid = resetting.pid();
    traced.watch(&resetting, None);
    resetting.expect("done");
    resetting.wait_success();
    traced.settle();
    let accepting_from = monotonic_ns();
    late.go();
    let accepted = late.expect("accepted");
    let late_pid = late.pid();
    late.wait_success();
    traced.settle();
    let late_port: u16 = late_port.parse().unwrap();
    let late_connections = traced.on_port(late_port);
    let reset_before_accept = late_connections
        .iter()
        .filter(|(server, t)| {
            *server && t.new_state == TcpState::Close && t.timestamp_ns < accepting_from
        })
        .count();
    assert_eq!(
        reset_before_accept.to_string(),
        CONNECTIONS,
        "every connection reset before its accept ({accepted:?})"
    );
    for (server, t) in late_connections {
        let expected = if server { late_pid } else { resetting_pid };
        assert!(
            owner(t).is_none_or(|tgid| tgid == expected),
            "owner {:?} for {t:?}",
            t.owner
        );
    }

    // 3. Resets in CLOSE_WAIT: the server reads EOF, then closes with
    // SO_LINGER 0; five it keeps, leaked, until "go".
    let mut leaky = Peer::spawn(&[
        "leaky-server",
        "--addr",
        "127.0.0.1:0",
        "--connections",
        CONNECTIONS,
        "--leak",
        "5",
        "--rst-others",
    ]);
    let leaky_port = leaky.expect("listening")["port"].clone();
    traced.watch(&leaky, Some(&leaky_port));
    let closing = Peer::spawn(&[
        "clients",
        "--connect",
        &format!("127.0.0.1:{leaky_port}"),
        "--count",
        CONNECTIONS,
    ]);
    let closing_pid = closing.pid();
    traced.watch(&closing, None);
    closing.expect("done");
    closing.wait_success();
    let holding = leaky.expect("holding");
    let held = Peer::held_cookies(&holding);
    assert_eq!(held.len(), 5, "{holding:?}");
    leaky.go();
    leaky.expect("released");
    let leaky_pid = leaky.pid();
    leaky.wait_success();
    traced.settle();
    let leaky_port: u16 = leaky_port.parse().unwrap();
    let leaky_connections = traced.on_port(leaky_port);
    let reset_in_close_wait = leaky_connections
        .iter()
        .filter(|(server, t)| {
            *server && t.old_state == TcpState::CloseWait && t.new_state == TcpState::Close
        })
        .count();
    assert_eq!(reset_in_close_wait, 200 - 5);
    for &(server, t) in &leaky_connections {
        if !server {
            assert!(owner(t).is_none_or(|tgid| tgid == closing_pid), "{t:?}");
            continue;
        }
        // The server's sockets: never the client that ran in softirq. A
        // client's FIN may arrive before the accept, so ESTABLISHED ->
        // CLOSE_WAIT may have no owner yet, even with an accept hook.
        assert!(owner(t).is_none_or(|tgid| tgid == leaky_pid), "{t:?}");
    }
    for cookie in &held {
        let closing = |old: TcpState, new: TcpState| {
            leaky_connections
                .iter()
                .find(|(_, t)| t.cookie == *cookie && t.old_state == old && t.new_state == new)
                .map(|(_, t)| owner(t))
        };
        // Its close, in the server's syscall; then the last ACK, in softirq
        // on behalf of whatever ran: the owner its close showed, carried by
        // the tracker (never the task on the CPU).
        assert_eq!(
            closing(TcpState::CloseWait, TcpState::LastAck),
            Some(Some(leaky_pid)),
            "the leak {cookie} closed by its server"
        );
        assert_eq!(
            closing(TcpState::LastAck, TcpState::Close),
            Some(Some(leaky_pid)),
            "the leak {cookie} ended under its server"
        );
    }

    // 4. A socket read at EOF over and over has its count, and loses it
    // when it leaves CLOSE_WAIT.
    if recv_hook {
        let mut spinner = Peer::spawn(&["eof-spinner", "--addr", "127.0.0.1:0", "--seconds", "1"]);
        traced.watch(&spinner, None);
        spinner.expect("spinning");
        let spun: u64 = spinner.expect("spun")["reads"].parse().unwrap();
        traced.settle();
        let spinner_pid = spinner.pid();
        let cookie = traced
            .stacks
            .iter()
            .find(|s| s.0 == spinner_pid && s.2 == StackKind::Eof)
            .map(|s| s.1)
            .expect("the spinner's EOF stack");
        let counted = traced.probe.eof_reads(cookie).expect("an EOF count");
        assert!(
            counted > 1 && counted <= spun,
            "{counted} of {spun} EOF reads"
        );
        spinner.go();
        spinner.wait_success();
        traced.settle();
        assert_eq!(
            traced.probe.eof_reads(cookie),
            None,
            "count kept after close"
        );
    }

    // 5. The peers are gone: every stack copy was taken, and the copies
    // went with their sockets (destroyed, or read here), so the copy map is
    // back where it was. The default copies every connect(), with or
    // without the recv hook (Linux 6.3+).
    assert!(
        !traced.stacks.is_empty(),
        "stacks taken: {}, recv hook: {recv_hook}",
        traced.stacks.len()
    );
    assert!(
        traced.stacks.iter().all(|s| s.3.is_ok()),
        "{:?}",
        traced
            .stacks
            .iter()
            .filter(|s| s.3.is_err())
            .collect::<Vec<_>>()
    );
    let after = traced.probe.map_occupancy();
    eprintln!("after {after:?}");
    for map in ["stack_copies", "eof_reads"] {
        if after.iter().any(|o| o.name == map) {
            assert!(
                traced.entries(map) <= at_start(map) + SLACK,
                "{map}: {after:?} after {baseline:?}"
            );
        }
    }
    let counters = traced.probe.counters().expect("counters");
    assert_eq!(counters.owner_insert_failed, 0, "{counters:?}");
    assert_eq!(counters.map_insert_failed, 0, "{counters:?}");
}

fn tcptrace(args: &[&str]) -> Output {
    Command::new(common::tcptrace_binary())
        .args(args)
        .output()
        .expect("run tcptrace")
}

#[test]
fn kernel_memory_options_are_bounded_and_say_how_much_was_asked() {
    for (args, hints) in [
        (
            &["serve", "--max-sockets", "100000000"][..],
            &[
                "--max-sockets 100000000",
                "about 7629 MiB",
                "at most 4194304",
            ][..],
        ),
        (&["leaks", "--max-sockets", "0"], &["at least 1"]),
        (&["watch", "--max-sockets", "lots"], &["not a number"]),
        (
            &["top", "--ring-buffer-size", "1G"],
            &["1024 MiB", "at most 256 MiB"],
        ),
        (&["leaks", "--ring-buffer-size", "8G"], &["at most 256M"]),
    ] {
        let output = tcptrace(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        for hint in hints {
            assert!(stderr.contains(hint), "{args:?}: {stderr}");
        }
    }
}
