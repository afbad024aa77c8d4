//! Root tests: the kernel's socket table (sock_diag) in every network
//! namespace, and the processes holding each socket.

mod common;

use std::{collections::HashSet, fs, os::unix::fs::MetadataExt, thread, time::Duration};

use common::{Peer, require_root};
use tcptrace::{
    host::inet_diag_lookup::SocketQuery,
    host::procfs::socket_holders,
    host::sockdiag::{dump_all_namespaces, dump_tcp, look_up_all_namespaces, own_net_namespace},
    model::kernel_socket::KernelSocket,
};
use tcptrace_common::TcpState;

#[test]
fn close_wait_sockets_are_found_with_cookie_inode_and_holder() {
    if !require_root() {
        return;
    }
    let mut leaker = Peer::spawn(&["self-leak", "--addr", "127.0.0.1:0", "--leak", "3"]);
    let holding = leaker.expect("holding");
    let cookies = Peer::held_cookies(&holding);
    assert_eq!(cookies.len(), 3);
    let own = own_net_namespace().unwrap();

    let table = dump_tcp(&[TcpState::CloseWait], own).expect("sock_diag dump");
    let found: Vec<_> = table
        .iter()
        .filter(|s| cookies.contains(&s.cookie))
        .collect();
    assert_eq!(found.len(), 3, "{table:#?}");
    for socket in &found {
        assert_eq!(socket.state, TcpState::CloseWait);
        assert_ne!(socket.inode, 0);
        assert_eq!(socket.local.ip().to_string(), "127.0.0.1");
        assert_eq!(socket.netns_inode, own);
    }
    let inodes: HashSet<u64> = found.iter().map(|s| s.inode).collect();
    let holders = socket_holders(&inodes).expect("a walk of /proc");
    for inode in &inodes {
        let pids: Vec<u32> = holders[inode].iter().map(|h| h.pid).collect();
        assert_eq!(pids, vec![leaker.pid()], "holder of inode {inode}");
        assert_eq!(holders[inode][0].comm, "tcptrace-testpe");
    }

    leaker.go();
    leaker.expect("released");
    leaker.wait_success();
    thread::sleep(Duration::from_millis(100));
    let after = dump_tcp(&[TcpState::CloseWait], own).expect("sock_diag dump");
    assert!(
        after.iter().all(|s| !cookies.contains(&s.cookie)),
        "closed sockets left the table"
    );
}

#[test]
fn sockets_in_another_network_namespace_are_found() {
    if !require_root() {
        return;
    }
    // A namespace of our own, alive as long as the peer: loopback only.
    let mut leaker =
        Peer::spawn_in_new_netns(&["self-leak", "--addr", "127.0.0.1:0", "--leak", "2"]);
    let holding = leaker.expect("holding");
    let cookies = Peer::held_cookies(&holding);
    let pid: u32 = holding["pid"].parse().unwrap();
    let their_ns = fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino();
    let own = own_net_namespace().unwrap();
    assert_ne!(their_ns, own, "the peer must run in its own namespace");

    let here = dump_tcp(&[TcpState::CloseWait], own).unwrap();
    assert!(
        here.iter().all(|s| !cookies.contains(&s.cookie)),
        "not visible from here"
    );

    let snapshot = dump_all_namespaces(&[TcpState::CloseWait]);
    let found: Vec<_> = snapshot
        .sockets
        .iter()
        .filter(|s| cookies.contains(&s.cookie))
        .collect();
    assert_eq!(found.len(), 2, "{snapshot:#?}");
    assert!(found.iter().all(|s| s.netns_inode == their_ns));
    let inodes: HashSet<u64> = found.iter().map(|s| s.inode).collect();
    let holders = socket_holders(&inodes).expect("a walk of /proc");
    assert!(
        inodes
            .iter()
            .all(|i| holders[i].iter().any(|h| h.pid == pid))
    );

    leaker.go();
    leaker.expect("released");
    leaker.wait_success();
}

fn query_of(socket: &KernelSocket) -> SocketQuery {
    SocketQuery {
        cookie: socket.cookie,
        local: socket.local,
        remote: socket.remote,
        netns_inode: socket.netns_inode,
    }
}

#[test]
fn close_wait_sockets_are_looked_up_one_by_one_in_their_own_namespaces() {
    if !require_root() {
        return;
    }
    let mut here = Peer::spawn(&["self-leak", "--addr", "127.0.0.1:0", "--leak", "3"]);
    let cookies_here = Peer::held_cookies(&here.expect("holding"));
    let mut there =
        Peer::spawn_in_new_netns(&["self-leak", "--addr", "127.0.0.1:0", "--leak", "2"]);
    let cookies_there = Peer::held_cookies(&there.expect("holding"));
    let mut expected: Vec<KernelSocket> = dump_all_namespaces(&[TcpState::CloseWait])
        .sockets
        .into_iter()
        .filter(|s| cookies_here.contains(&s.cookie) || cookies_there.contains(&s.cookie))
        .collect();
    assert_eq!(expected.len(), 5, "{expected:#?}");

    let mut queries: Vec<SocketQuery> = expected.iter().map(query_of).collect();
    // The same addresses with another cookie: a later socket, not this one.
    queries.push(SocketQuery {
        cookie: expected[0].cookie ^ 1,
        ..query_of(&expected[0])
    });
    // A namespace no process is in.
    queries.push(SocketQuery {
        netns_inode: 1,
        ..query_of(&expected[1])
    });
    let (table, missed) = look_up_all_namespaces(&queries);
    assert!(table.is_complete(), "{table:?}");
    assert_eq!(missed.len(), 2, "{missed:?}");
    assert!(missed.contains(&(expected[0].cookie ^ 1)), "{missed:?}");
    assert!(missed.contains(&expected[1].cookie), "{missed:?}");
    let mut found = table.sockets;
    found.sort_by_key(|s| s.cookie);
    expected.sort_by_key(|s| s.cookie);
    // Same sockets, same inodes and namespaces as the walk of every table.
    assert_eq!(found, expected);

    here.go();
    here.expect("released");
    here.wait_success();
    thread::sleep(Duration::from_millis(100));
    let (table, missed) = look_up_all_namespaces(&queries[..5]);
    assert_eq!(
        missed.len(),
        3,
        "the three closed sockets are gone: {table:?}"
    );
    assert!(
        missed.iter().all(|c| cookies_here.contains(c)),
        "{missed:?}"
    );
    assert!(
        table
            .sockets
            .iter()
            .all(|s| cookies_there.contains(&s.cookie))
    );
    there.go();
    there.expect("released");
    there.wait_success();
}
