//! Root tests: the kernel's socket table (sock_diag) in every network
//! namespace, and the processes holding each socket.

mod common;

use std::{collections::HashSet, fs, os::unix::fs::MetadataExt, thread, time::Duration};

use common::{Peer, require_root};
use tcptrace::{
    host::procfs::socket_holders,
    host::sockdiag::{dump_all_namespaces, dump_tcp, own_net_namespace},
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
