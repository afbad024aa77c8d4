//! `tcptrace top` against real processes: a churn client and a churn server
//! in separate processes, their counts checked against what the load
//! generator itself reports.

mod common;

use common::{FakeContainer, Peer, TopRun, churn_client, require_root, top_row};
use serde_json::Value;

fn count(row: &Value, field: &str) -> u64 {
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {row:#}"))
}

fn transitions(row: &Value, name: &str) -> u64 {
    row["transitions"][name].as_u64().unwrap_or(0)
}

#[test]
fn churn_counts_match_the_generator_per_process() {
    if !require_root() {
        return;
    }
    // Exact counts need every event: a ring that holds the whole run, so a
    // debug-build agent that falls behind a table read under churn (seen in
    // CI, with the earlier tests' sockets in the table) still loses none.
    let top = TopRun::start(&[
        "--interval",
        "500ms",
        "--min-age",
        "30s",
        "--ring-buffer-size",
        "64M",
    ]);
    let mut server = Peer::spawn(&["churn-server", "--addr", "127.0.0.1:0", "--threads", "1"]);
    let listening = server.expect("listening");
    let target = format!("127.0.0.1:{}", listening["port"]);
    let mut client = churn_client(&target, "1", true);
    let done = client.expect("done");
    let made: u64 = done["connections"].parse().unwrap();
    assert_eq!(done["failed"], "0", "the generator itself failed: {done:?}");
    assert!(made > 10, "the generator made only {made} connections");
    // Each connection the client completed was answered: the server served
    // as many (it says so when released, at the end).
    let served = made;

    // Every connection has ended on both sides; the next snapshots after
    // this point have had time to drain them all.
    let mut snapshot = top.next_snapshot();
    for _ in 0..3 {
        snapshot = top.next_snapshot();
    }
    let client_row =
        top_row(&snapshot, client.pid()).unwrap_or_else(|| panic!("client in {snapshot:#}"));
    let server_row =
        top_row(&snapshot, server.pid()).unwrap_or_else(|| panic!("server in {snapshot:#}"));
    assert_eq!(
        snapshot["health"]["drops"], 0,
        "a drop would explain a mismatch"
    );

    assert_eq!(client_row["comm"], "tcptrace-testpe");
    assert_eq!(count(client_row, "connects"), made, "{client_row:#}");
    assert_eq!(count(client_row, "accepts"), 0);
    assert_eq!(count(client_row, "failed_connects"), 0);
    assert_eq!(count(client_row, "resets"), 0);
    for name in [
        "CLOSE->SYN_SENT",
        "SYN_SENT->ESTABLISHED",
        "ESTABLISHED->FIN_WAIT1",
        "FIN_WAIT1->FIN_WAIT2",
        "FIN_WAIT2->CLOSE",
    ] {
        assert_eq!(
            transitions(client_row, name),
            made,
            "client {name}: {client_row:#}"
        );
    }
    assert_eq!(
        client_row["transitions"].as_object().unwrap().len(),
        5,
        "no other transitions for the client: {client_row:#}"
    );
    // The client closed first: its sockets wait in TIME_WAIT (60 s), which
    // the kernel's table shows under the cookies it had.
    assert_eq!(client_row["sockets"]["TIME_WAIT"], made, "{client_row:#}");

    assert_eq!(count(server_row, "accepts"), served, "{server_row:#}");
    assert_eq!(count(server_row, "connects"), 0);
    assert_eq!(count(server_row, "resets"), 0);
    for name in [
        "LISTEN->SYN_RECV",
        "SYN_RECV->ESTABLISHED",
        "ESTABLISHED->CLOSE_WAIT",
        "CLOSE_WAIT->LAST_ACK",
        "LAST_ACK->CLOSE",
    ] {
        assert_eq!(
            transitions(server_row, name),
            served,
            "server {name}: {server_row:#}"
        );
    }
    assert_eq!(transitions(server_row, "CLOSE->LISTEN"), 1);
    assert_eq!(server_row["sockets"]["LISTEN"], 1);
    assert_eq!(
        server_row["sockets"].get("TIME_WAIT"),
        None,
        "{server_row:#}"
    );
    assert_eq!(count(server_row, "leaking"), 0);

    server.go();
    let said: u64 = server.expect("served")["connections"].parse().unwrap();
    assert_eq!(said, made);
    client.go();
    client.wait_success();
    server.wait_success();
}

#[test]
fn sockets_from_before_start_are_attributed_and_filters_apply() {
    if !require_root() {
        return;
    }
    // A second command name: the same program under another file name.
    let dir = std::env::temp_dir().join(format!("tcptrace-top-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let other_path = dir.join("tt-other-peer");
    std::fs::copy(common::testpeer_path(), &other_path).expect("copy the test peer");
    let args = ["self-leak", "--addr", "127.0.0.1:0", "--leak", "2"];
    let mine = Peer::spawn(&args);
    mine.expect("holding");
    let mut command = std::process::Command::new(&other_path);
    command.args(args);
    let other = Peer::spawn_command(command, "self-leak (renamed)");
    other.expect("holding");
    let _ = std::fs::remove_dir_all(&dir);

    // Both made their sockets before tcptrace started: owners come from
    // the holder scan, not from history.
    let by_comm = TopRun::start(&["--interval", "500ms", "--comm", "tcptrace-testpe"]);
    let snapshot = by_comm.next_snapshot();
    let rows = snapshot["processes"].as_array().unwrap();
    assert!(
        rows.iter().all(|row| row["comm"] == "tcptrace-testpe"),
        "{snapshot:#}"
    );
    let row = top_row(&snapshot, mine.pid()).unwrap_or_else(|| panic!("{snapshot:#}"));
    assert_eq!(row["sockets"]["CLOSE_WAIT"], 2, "{row:#}");
    assert_eq!(row["sockets"]["LISTEN"], 1, "{row:#}");
    assert!(top_row(&snapshot, other.pid()).is_none());
    drop(by_comm);

    let by_pid = TopRun::start(&["--interval", "500ms", "--pid", &other.pid().to_string()]);
    let snapshot = by_pid.next_snapshot();
    let rows = snapshot["processes"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{snapshot:#}");
    assert_eq!(rows[0]["comm"], "tt-other-peer");
    assert_eq!(rows[0]["sockets"]["CLOSE_WAIT"], 2, "{snapshot:#}");
}

#[test]
fn closed_ends_waiting_in_the_kernel_keep_their_owner() {
    if !require_root() {
        return;
    }
    let top = TopRun::start(&["--interval", "500ms"]);
    // Two connections to itself; the client ends are closed at once and
    // become minisocks (FIN_WAIT2, no file) while the server ends wait in
    // CLOSE_WAIT.
    let mut peer = Peer::spawn(&["self-leak", "--addr", "127.0.0.1:0", "--leak", "2"]);
    peer.expect("holding");
    let mut snapshot = top.next_snapshot();
    for _ in 0..2 {
        snapshot = top.next_snapshot();
    }
    let row = top_row(&snapshot, peer.pid()).unwrap_or_else(|| panic!("{snapshot:#}"));
    assert_eq!(row["sockets"]["CLOSE_WAIT"], 2, "{row:#}");
    assert_eq!(row["sockets"]["LISTEN"], 1, "{row:#}");
    assert_eq!(
        row["sockets"]["FIN_WAIT2"], 2,
        "the minisocks carry the cookies of the sockets they replaced: {row:#}"
    );
    peer.go();
}

#[test]
fn processes_show_their_container_and_network_namespace() {
    if !require_root() {
        return;
    }
    let container = FakeContainer::new();
    let mut peer = Peer::spawn_in_new_netns(&["self-leak", "--addr", "127.0.0.1:0", "--leak", "1"]);
    peer.expect("holding");
    container.enter(peer.pid());
    let netns = std::fs::metadata(format!("/proc/{}/ns/net", peer.pid()))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let host_netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_ne!(netns, host_netns);

    let top = TopRun::start(&["--interval", "500ms", "--pid", &peer.pid().to_string()]);
    let snapshot = top.next_snapshot();
    let row = top_row(&snapshot, peer.pid()).unwrap_or_else(|| panic!("{snapshot:#}"));
    assert_eq!(row["container"], container.id[..12], "{row:#}");
    assert_eq!(row["netns"], netns, "{row:#}");
    assert_eq!(row["sockets"]["CLOSE_WAIT"], 1, "{row:#}");
    peer.go();
    peer.wait_success();
}
