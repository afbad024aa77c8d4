//! The diagnoses of `tcptrace top`, each provoked for real by a peer in a
//! network namespace of its own (with that namespace's own sysctls where the
//! diagnosis depends on them), and found by the agent running outside it.

mod common;

use common::{Peer, TopRun, kernel_has_recv_tracepoint, require_root, wait_for_finding};

/// Snapshots (500 ms apart) to wait for a finding.
const SNAPSHOTS: usize = 20;

fn top() -> TopRun {
    TopRun::start(&["--interval", "500ms"])
}

fn pid_subject(peer: &Peer) -> String {
    format!("pid {} (", peer.pid())
}

#[test]
fn a_process_reading_eof_in_a_loop_is_spinning() {
    if !require_root() {
        return;
    }
    let top = top();
    let mut spinner =
        Peer::spawn_in_new_netns(&["eof-spinner", "--addr", "127.0.0.1:0", "--seconds", "4"]);
    spinner.expect("spinning");
    if !kernel_has_recv_tracepoint() {
        // EOF reads are counted by the per-recv hook (Linux 6.3+): without
        // it there is nothing to count, and no finding may be guessed.
        let mut snapshot = top.next_snapshot();
        for _ in 0..4 {
            snapshot = top.next_snapshot();
        }
        assert!(
            !snapshot["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["kind"] == "eof_spin"),
            "{snapshot:#}"
        );
        spinner.expect("spun");
        spinner.go();
        return;
    }
    let finding = wait_for_finding(&top, "eof_spin", &pid_subject(&spinner), SNAPSHOTS);
    // A tight read loop makes far more than 10 000 reads a second.
    assert_eq!(finding["severity"], "critical", "{finding:#}");
    let reads: u64 = spinner.expect("spun")["reads"].parse().unwrap();
    assert!(reads > 10_000, "the spinner read EOF only {reads} times");
    spinner.go();
}

#[test]
fn refused_connects_are_connect_failures() {
    if !require_root() {
        return;
    }
    let top = top();
    // Nothing listens on port 1 in the fresh namespace: each connect is refused.
    let mut client = Peer::spawn_in_new_netns(&[
        "connect-attempts",
        "--connect",
        "127.0.0.1:1",
        "--count",
        "30",
    ]);
    let done = client.expect("done");
    assert_eq!(done["failed"], "30");
    let finding = wait_for_finding(&top, "connect_failures", &pid_subject(&client), SNAPSHOTS);
    assert_eq!(finding["severity"], "critical", "{finding:#}");
    assert!(
        finding["subject"].as_str().unwrap().contains("127.0.0.1:1"),
        "{finding:#}"
    );
    client.go();
}

#[test]
fn a_listener_that_never_accepts_has_a_full_accept_queue() {
    if !require_root() {
        return;
    }
    let top = top();
    let mut listener = Peer::spawn_in_new_netns(&[
        "stalled-listener",
        "--addr",
        "127.0.0.1:0",
        "--backlog",
        "1",
        "--connects",
        "4",
    ]);
    let stalled = listener.expect("stalled");
    assert_ne!(
        stalled["failed"], "0",
        "the queue should have overflowed: {stalled:?}"
    );
    let subject = format!("127.0.0.1:{}", stalled["port"]);
    let finding = wait_for_finding(&top, "syn_backlog", &subject, SNAPSHOTS);
    assert_eq!(finding["severity"], "critical", "{finding:#}");
    assert!(
        finding["subject"]
            .as_str()
            .unwrap()
            .contains(&pid_subject(&listener)),
        "the listener's owner comes from its file: {finding:#}"
    );
    listener.go();
}

#[test]
fn time_wait_using_up_the_ephemeral_ports_is_exhaustion() {
    if !require_root() {
        return;
    }
    let top = top();
    // 100 ephemeral ports and no TIME_WAIT reuse, in this namespace only.
    let mut churn = Peer::spawn_in_new_netns_with(
        &[
            ("ip_local_port_range", "40000 40099"),
            ("tcp_tw_reuse", "0"),
        ],
        &["time-wait-churn", "--addr", "127.0.0.1:0", "--seconds", "1"],
    );
    let done = churn.expect("done");
    assert_ne!(
        done["failed"], "0",
        "the ports should have run out: {done:?}"
    );
    let destination = format!("127.0.0.1:{}", done["port"]);
    let finding = wait_for_finding(&top, "time_wait_exhaustion", &destination, SNAPSHOTS);
    assert_eq!(finding["severity"], "critical", "{finding:#}");
    churn.go();
}

#[test]
fn a_half_closed_socket_the_peer_never_finishes_is_stuck_in_fin_wait2() {
    if !require_root() {
        return;
    }
    let top = top();
    // The namespace's own FIN timeout: 1 s, so the test need not wait 60.
    let mut peer = Peer::spawn_in_new_netns_with(
        &[("tcp_fin_timeout", "1")],
        &["half-closed", "--addr", "127.0.0.1:0"],
    );
    peer.expect("half-closed");
    let finding = wait_for_finding(&top, "fin_wait2_stuck", &pid_subject(&peer), SNAPSHOTS);
    assert_eq!(finding["severity"], "warning", "{finding:#}");
    peer.go();
}

#[test]
fn healthy_traffic_has_no_findings_about_it() {
    if !require_root() {
        return;
    }
    let top = top();
    let mut peer = Peer::spawn_in_new_netns(&["self-leak", "--addr", "127.0.0.1:0", "--leak", "0"]);
    peer.expect("holding");
    for _ in 0..4 {
        let snapshot = top.next_snapshot();
        let about_peer: Vec<_> = snapshot["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                f["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains(&pid_subject(&peer)))
            })
            .collect();
        assert!(about_peer.is_empty(), "{about_peer:#?}");
    }
    peer.go();
}
