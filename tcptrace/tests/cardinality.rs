//! `tcptrace serve` keeps its series bounded against real processes: leaking
//! peers each in a docker-style cgroup of its own, and a burst of busy
//! short-lived comms, with a small --top-comms. Other tests may run at the
//! same time: only bounds and this test's own processes are checked.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{FakeContainer, Peer, ServeRun, require_root, testpeer_path};

const LIMIT: usize = 3;
const LEAKERS: u16 = 30;
const BUSY_COMMS: usize = 50;
const BUSY_ROUNDS: usize = 4;
const SERVICE: &str = "tt-leaky-svc";
const SERVICE_LEAKS: u64 = 3;
const TESTPEER_COMM: &str = "tcptrace-testpe";

/// One sample: labels and value.
#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// `name{labels} value` lines of one family, label values unescaped.
fn samples(text: &str, family: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(family)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => {
                    let end = rest.rfind("} ")?;
                    (parse_labels(&rest[..end]), &rest[end + 2..])
                }
                None => (BTreeMap::new(), rest.strip_prefix(' ')?),
            };
            Some(Sample {
                labels,
                value: value.trim().parse().ok()?,
            })
        })
        .collect()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if name.is_empty() {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "a quoted value in {text}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// Symlinks to the test peer under other names: each name is a comm.
struct NamedPeers {
    dir: PathBuf,
}

impl NamedPeers {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tcptrace-cardinality-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        Self { dir }
    }

    fn named(&self, comm: &str) -> PathBuf {
        let path = self.dir.join(comm);
        std::os::unix::fs::symlink(testpeer_path(), &path).expect("a symlink to the test peer");
        path
    }
}

impl Drop for NamedPeers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `BUSY_COMMS` short-lived processes, each under a comm of its own
/// and making 300 connections, one every 100 ms, on a thread; `running`
/// turns false after the last has exited.
/// The burst goes round its comms again while `more` is set (at most
/// `BUSY_ROUNDS` times), so a slow host still scrapes during it.
fn busy_burst(
    peers: &NamedPeers,
    running: Arc<AtomicBool>,
    more: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let programs: Vec<PathBuf> = (0..BUSY_COMMS)
        .map(|n| peers.named(&format!("tt-busy-{n:02}")))
        .collect();
    thread::spawn(move || {
        let mut children = Vec::new();
        let rounds =
            (0..BUSY_ROUNDS).take_while(|&round| round == 0 || more.load(Ordering::SeqCst));
        for program in rounds.flat_map(|_| programs.iter()) {
            let child = Command::new(program)
                .args([
                    "churn",
                    "--addr",
                    "127.0.0.1:0",
                    "--connections",
                    "300",
                    "--threads",
                    "1",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start a busy peer");
            children.push(child);
            thread::sleep(Duration::from_millis(100));
        }
        for mut child in children {
            let status = child.wait().expect("wait a busy peer");
            assert!(status.success(), "a busy peer failed: {status}");
        }
        running.store(false, Ordering::SeqCst);
    })
}

/// What every scrape must show.
fn check_bounds(metrics: &str, leakers: &[u32]) {
    // Per leak family and kind: at most LIMIT holders of their own and
    // `other`, besides sockets no process holds.
    let leaking = samples(metrics, "tcptrace_leaking_sockets");
    for kind in ["close_wait", "closed_held"] {
        let series: Vec<&Sample> = leaking
            .iter()
            .filter(|s| s.label("kind") == kind && s.label("comm") != "unknown")
            .collect();
        assert!(series.len() <= LIMIT + 1, "{kind}: {series:#?}");
    }
    let oldest = samples(metrics, "tcptrace_oldest_leak_age_seconds");
    assert!(
        oldest
            .iter()
            .filter(|s| s.label("comm") != "unknown")
            .count()
            <= LIMIT + 1,
        "{oldest:#?}"
    );
    for family in ["tcptrace_transitions_total", "tcptrace_sockets"] {
        let comms: BTreeSet<String> = samples(metrics, family)
            .iter()
            .map(|s| s.label("comm").to_owned())
            .collect();
        assert!(comms.len() <= LIMIT + 2, "{family}: {comms:?}");
    }

    // The folded series still sum to every leak: the pid-labelled family,
    // with a place for every leaking process, says how many there are.
    let folded: f64 = leaking
        .iter()
        .filter(|s| s.label("comm") != "unknown")
        .map(|s| s.value)
        .sum();
    let by_pid = samples(metrics, "tcptrace_process_leaking_sockets");
    let per_process: f64 = by_pid.iter().map(|s| s.value).sum();
    assert_eq!(folded, per_process, "{leaking:#?}\n{by_pid:#?}");
    let pid_value = |pid: u32| {
        by_pid
            .iter()
            .find(|s| s.label("pid") == pid.to_string())
            .map(|s| s.value)
    };
    for &pid in leakers {
        assert_eq!(pid_value(pid), Some(1.0), "leaker {pid}: {by_pid:#?}");
    }
    // Most of this test's holders are in the fold.
    let other = leaking
        .iter()
        .find(|s| {
            s.label("comm") == "other"
                && s.label("container") == "other"
                && s.label("kind") == "close_wait"
        })
        .unwrap_or_else(|| panic!("no folded series: {leaking:#?}"));
    assert!(
        other.value >= (leakers.len() - LIMIT) as f64,
        "{leaking:#?}"
    );
}

/// The service's own series: its leaks, its sockets under its comm, and
/// its pid.
fn service_has_its_series(metrics: &str, service: u32) -> bool {
    let by_pid = samples(metrics, "tcptrace_process_leaking_sockets")
        .into_iter()
        .any(|s| s.label("pid") == service.to_string() && s.value == SERVICE_LEAKS as f64);
    let leaks = samples(metrics, "tcptrace_leaking_sockets")
        .into_iter()
        .any(|s| {
            s.label("comm") == SERVICE
                && s.label("kind") == "close_wait"
                && s.value == SERVICE_LEAKS as f64
        });
    let sockets = samples(metrics, "tcptrace_sockets").into_iter().any(|s| {
        s.label("comm") == SERVICE
            && s.label("state") == "CLOSE_WAIT"
            && s.value == SERVICE_LEAKS as f64
    });
    by_pid && leaks && sockets
}

#[test]
fn series_stay_bounded_and_a_leaking_service_keeps_its_own_through_a_burst() {
    if !require_root() {
        return;
    }
    let serve = ServeRun::start(&[
        "--interval",
        "500ms",
        "--min-age",
        "1s",
        "--stacks",
        "off",
        "--top-comms",
        &LIMIT.to_string(),
        "--top-leaking-pids",
        "1000",
    ]);
    let peers = NamedPeers::new();
    let containers: Vec<FakeContainer> = (1..=LEAKERS).map(FakeContainer::numbered).collect();
    let mut leakers: Vec<Peer> = containers
        .iter()
        .map(|container| {
            let command = container.command(
                &testpeer_path(),
                &["self-leak", "--addr", "127.0.0.1:0", "--leak", "1"],
            );
            Peer::spawn_command(command, "self-leak in a container")
        })
        .collect();
    for leaker in &leakers {
        leaker.expect("holding");
    }
    let leaker_pids: Vec<u32> = leakers.iter().map(Peer::pid).collect();
    let short_ids: BTreeSet<&str> = containers.iter().map(|c| &c.id[..12]).collect();

    // The leakers' series, one per container, fold.
    let start = Instant::now();
    let mut metrics = String::new();
    while start.elapsed() < common::STEP_TIMEOUT {
        metrics = serve.get("/metrics").2;
        let by_pid = samples(&metrics, "tcptrace_process_leaking_sockets");
        if leaker_pids
            .iter()
            .all(|pid| by_pid.iter().any(|s| s.label("pid") == pid.to_string()))
        {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    check_bounds(&metrics, &leaker_pids);
    let leaking = samples(&metrics, "tcptrace_leaking_sockets");
    assert!(
        leaking
            .iter()
            .any(|s| s.label("comm") == TESTPEER_COMM && short_ids.contains(s.label("container"))),
        "a leaker's container is a label: {leaking:#?}"
    );

    // Busy comms take the free places first; the service starts leaking
    // while they keep coming.
    let running = Arc::new(AtomicBool::new(true));
    let more = Arc::new(AtomicBool::new(true));
    let burst = busy_burst(&peers, running.clone(), more.clone());
    thread::sleep(Duration::from_millis(1500));
    let service_path = peers.named(SERVICE);
    let mut service_command = Command::new(&service_path);
    service_command.args([
        "self-leak",
        "--addr",
        "127.0.0.1:0",
        "--leak",
        &SERVICE_LEAKS.to_string(),
    ]);
    let mut service = Peer::spawn_command(service_command, SERVICE);
    service.expect("holding");

    let mut scrapes_with_service = 0;
    let mut seen = false;
    while running.load(Ordering::SeqCst) {
        let metrics = serve.get("/metrics").2;
        check_bounds(&metrics, &leaker_pids);
        if service_has_its_series(&metrics, service.pid()) {
            seen = true;
        }
        if seen {
            assert!(
                service_has_its_series(&metrics, service.pid()),
                "the leaking service lost its series to the busy comms:\n{metrics}"
            );
            scrapes_with_service += 1;
            if scrapes_with_service >= 5 {
                more.store(false, Ordering::SeqCst);
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    burst.join().expect("the busy burst");
    assert!(
        scrapes_with_service >= 3,
        "the service never had its own series during the burst ({scrapes_with_service} scrapes)"
    );
    let metrics = serve.get("/metrics").2;
    check_bounds(&metrics, &leaker_pids);
    assert!(service_has_its_series(&metrics, service.pid()), "{metrics}");

    service.go();
    service.expect("released");
    for leaker in &mut leakers {
        leaker.go();
    }
    for leaker in leakers {
        leaker.expect("released");
        leaker.wait_success();
    }
    drop(containers);
    serve.stop();
}
