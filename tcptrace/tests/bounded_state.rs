//! `serve` is meant to run for months: what a churn of short-lived peers
//! leaves in its kernel maps and its own tables must be freed once the
//! sockets and processes are gone, and no owner may be lost to a full map.

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{Churn, Peer, ServeRun, churn_client, require_root};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries other TCP traffic on the host may add meanwhile.
const SLACK: u64 = 50;

/// The value of the series `name{label="value"}` in an exposition.
fn sample(text: &str, name: &str, label: &str, value: &str) -> Option<u64> {
    let prefix = format!("{name}{{{label}=\"{value}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn counter(text: &str, name: &str) -> u64 {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}")) as u64
}

fn metrics(serve: &ServeRun) -> String {
    let (status, _, body) = serve.get("/metrics");
    assert_eq!(status, 200);
    body
}

fn table(text: &str, name: &str) -> u64 {
    sample(text, "tcptrace_agent_table_entries", "table", name)
        .unwrap_or_else(|| panic!("no agent table {name} in\n{text}"))
}

fn map(text: &str, name: &str) -> u64 {
    sample(text, "tcptrace_map_entries", "map", name)
        .unwrap_or_else(|| panic!("no map {name} in\n{text}"))
}

/// Waits for the next refresh to be published, so a read reflects the
/// state after what the test just did.
fn after_refreshes(serve: &ServeRun, refreshes: u32) -> String {
    thread::sleep(Duration::from_millis(1100) * refreshes);
    metrics(serve)
}

#[test]
fn a_churn_of_short_lived_peers_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let serve = ServeRun::start(&["--interval", "1s", "--stacks", "default"]);
    let before = after_refreshes(&serve, 2);
    let socket_stacks_before = table(&before, "socket_stacks");
    let copies_before = map(&before, "stack_copies");
    let named_before = table(&before, "symbolized_stacks");

    // Healthy connections: each one's EOF stack is copied, and the copy
    // goes with its socket, never read, unwound or named.
    let churn = Churn::start(3);
    let (connections, done) = churn.done();
    assert!(connections > 1000, "{done:?}");
    let during = after_refreshes(&serve, 2);
    assert!(
        map(&during, "stack_copies") <= copies_before + SLACK,
        "copies of closed sockets kept\n{during}"
    );
    assert_eq!(
        table(&during, "symbolized_stacks"),
        named_before,
        "healthy sockets were unwound\n{during}"
    );
    churn.stop();

    // A leaking process: its stacks are read and named while it lives...
    let mut leaker = Peer::spawn(&["self-leak", "--addr", "127.0.0.1:0", "--leak", "3"]);
    leaker.expect("holding");
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while table(&after_refreshes(&serve, 1), "symbolized_stacks") <= named_before {
        assert!(
            Instant::now() < deadline,
            "the leak's stack was never named"
        );
    }
    leaker.go();
    leaker.expect("released");
    drop(leaker);

    // ...and, once it and the churn are gone, so is what was kept for them.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let after = loop {
        let now = after_refreshes(&serve, 1);
        let settled = table(&now, "socket_stacks") <= socket_stacks_before + SLACK
            && table(&now, "symbolized_stacks") <= named_before
            && map(&now, "stack_copies") <= copies_before + SLACK;
        if settled {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "state kept after {connections} connections of exited peers:\n{now}"
        );
    };
    // Many clients, each counted under its own pid, and a server whose
    // accepted sockets are counted under its port: the entries are there
    // while they live, and go once they have exited and their last counts
    // are read.
    let owners_before = map(&after, "owner_counts");
    const CLIENTS: u64 = 30;
    let server = Peer::spawn(&["churn-server", "--addr", "127.0.0.1:0", "--threads", "1"]);
    let target = format!("127.0.0.1:{}", server.expect("listening")["port"]);
    let clients: Vec<Peer> = (0..CLIENTS)
        .map(|_| {
            let client = churn_client(&target, "0.2", true);
            client.expect("done");
            client
        })
        .collect();
    // Each live client has its own (what was there before may have gone
    // meanwhile: the churn's processes exited). Refreshes are spaced out
    // while the churn's TIME_WAIT sockets make table reads long.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let during = after_refreshes(&serve, 1);
        if map(&during, "owner_counts") >= CLIENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the clients' counts are kept while they live\n{during}"
        );
    }
    for mut client in clients {
        client.go();
        client.wait_success();
    }
    let mut server = server;
    server.go();
    server.expect("served");
    drop(server);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let after = loop {
        let now = after_refreshes(&serve, 1);
        if map(&now, "owner_counts") <= owners_before + 5 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "per-owner entries kept for {CLIENTS} exited clients and their server:\n{now}"
        );
    };
    // Every socket had its owner recorded: no storage failed.
    assert_eq!(
        counter(&after, "tcptrace_kernel_storage_failures_total"),
        0,
        "{after}"
    );
    assert_eq!(
        counter(&after, "tcptrace_host_read_failures_total"),
        0,
        "{after}"
    );
    serve.stop();
}
