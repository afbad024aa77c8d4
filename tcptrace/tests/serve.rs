//! `tcptrace serve` scraped by a real, private Prometheus server: leaks made
//! by a test server must show up in Prometheus's own query API, then go.

mod common;

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Peer, ServeRun, http_get, require_root};
use serde_json::Value;

const TESTPEER_COMM: &str = "tcptrace-testpe";
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

fn prometheus_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TCPTRACE_PROMETHEUS") {
        return path.into();
    }
    let found: Vec<PathBuf> = std::fs::read_dir("/var/cache/tcptrace")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("usr/bin/prometheus"))
        .filter(|path| path.is_file())
        .collect();
    match found.as_slice() {
        [only] => only.clone(),
        _ => panic!(
            "no Prometheus binary: run `cargo xtask test` (or `cargo xtask setup`), or set TCPTRACE_PROMETHEUS"
        ),
    }
}

/// A Prometheus server of the test's own: own config, own data directory,
/// a loopback port, killed and removed on drop.
struct Prometheus {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tcptrace-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write the config");
        // Prometheus cannot report a port it picked: take a free one.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self {
            child,
            address,
            dir,
        };
        prometheus.wait_until(Duration::from_secs(30), "ready", |p| {
            std::net::TcpStream::connect(&p.address).is_ok()
                && http_get(&p.address, "/-/ready").0 == 200
        });
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector `query` evaluates to.
    fn query(&self, query: &str) -> Vec<Value> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, _, body) = http_get(&self.address, &format!("/api/v1/query?query={encoded}"));
        assert_eq!(status, 200, "query {query}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
        assert_eq!(answer["status"], "success", "{answer:#}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of a query whose result is one sample, or `None`
    /// when the result is empty.
    fn value(&self, query: &str) -> Option<f64> {
        let result = self.query(query);
        assert!(result.len() <= 1, "{query}: {result:?}");
        result.first().map(|sample| {
            sample["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("a sample value")
        })
    }

    fn wait_until(&self, timeout: Duration, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < timeout,
                "Prometheus: not {what} after {timeout:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_sees_leaks_appear_and_go() {
    if !require_root() {
        return;
    }
    const LEAKS: u64 = 4;
    let serve = ServeRun::start(&["--interval", "500ms", "--min-age", "1s"]);
    let prometheus = Prometheus::start(&serve.address);
    prometheus.wait_until(PROMETHEUS_TIMEOUT, "scraping tcptrace", |p| {
        p.value("up{job=\"tcptrace\"}") == Some(1.0)
    });

    let mut server = Peer::spawn(&[
        "leaky-server",
        "--addr",
        "127.0.0.1:0",
        "--connections",
        "6",
        "--leak",
        &LEAKS.to_string(),
    ]);
    let port = server.expect("listening")["port"].clone();
    let clients = Peer::spawn(&[
        "clients",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--count",
        "6",
    ]);
    let holding = server.expect("holding");
    clients.expect("done");
    let holder: u32 = holding["pid"].parse().unwrap();

    let leaking = format!("sum(tcptrace_leaking_sockets{{comm=\"{TESTPEER_COMM}\"}})");
    prometheus.wait_until(PROMETHEUS_TIMEOUT, "showing the leaks", |p| {
        p.value(&leaking) == Some(LEAKS as f64)
    });
    let by_pid = prometheus.query(&format!(
        "tcptrace_process_leaking_sockets{{pid=\"{holder}\"}}"
    ));
    assert_eq!(by_pid.len(), 1, "{by_pid:?}");
    assert_eq!(by_pid[0]["value"][1], LEAKS.to_string());
    assert_eq!(by_pid[0]["metric"]["comm"], TESTPEER_COMM);
    let oldest = prometheus
        .value(&format!(
            "max(tcptrace_oldest_leak_age_seconds{{comm=\"{TESTPEER_COMM}\"}})"
        ))
        .expect("an oldest-leak age");
    assert!(oldest >= 1.0, "older than --min-age: {oldest}");
    assert_eq!(
        prometheus.value("sum(tcptrace_findings{kind=\"socket_leak\"})"),
        Some(1.0)
    );

    // With leaks present every family exists: the alert rules use only those.
    let (_, _, metrics) = serve.get("/metrics");
    assert_alert_rules_use_exported_metrics(&metrics);

    // /leaks agrees with the metrics.
    let (status, content_type, body) = serve.get("/leaks");
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let report: Value = serde_json::from_str(&body).expect("JSON");
    let entry = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == holder)
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(entry["close_wait"], LEAKS);
    // The time of the host read it reflects, with the age the metrics give.
    let as_of = report["as_of"]
        .as_str()
        .unwrap_or_else(|| panic!("no as_of: {report:#}"));
    let as_of = humantime::parse_rfc3339(as_of).expect("as_of is RFC 3339");
    let age = std::time::SystemTime::now()
        .duration_since(as_of)
        .expect("as_of is in the past");
    assert!(age < Duration::from_secs(60), "{age:?}");
    let (_, _, metrics) = serve.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tcptrace_host_read_age_seconds ")),
        "{metrics}"
    );
    // The copies behind its code paths, as `leaks --json` says them.
    assert!(
        report["stacks"]["copies_taken"].as_u64() > Some(0),
        "{:#}",
        report["stacks"]
    );

    // The server closes them and exits: the series reads 0 or is gone.
    server.go();
    server.expect("released");
    prometheus.wait_until(PROMETHEUS_TIMEOUT, "showing the leaks gone", |p| {
        p.value(&leaking).is_none_or(|v| v == 0.0)
    });
    let stderr = serve.stop();
    let logged: Vec<Value> = stderr
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["event"] == "tcp_socket_leak" && line["pid"] == holder)
        .collect();
    assert_eq!(
        logged.len() as u64,
        LEAKS,
        "one log line per leak: {stderr:#?}"
    );
    assert!(
        stderr.iter().any(|line| line == "tcptrace: stopped"),
        "{stderr:?}"
    );
}

#[test]
fn metrics_are_openmetrics_and_cover_the_alert_rules() {
    if !require_root() {
        return;
    }
    let serve = ServeRun::start(&["--interval", "500ms"]);
    let (status, content_type, metrics) = serve.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    for line in metrics.lines().filter(|l| l.starts_with("# HELP ")) {
        let help = line.splitn(4, ' ').nth(3).unwrap_or_default();
        assert!(!help.is_empty(), "help text for {line}");
    }

    // Every kind and severity has a series, 0 when nothing is found, so
    // alerts and dashboards never depend on a series appearing.
    assert!(
        metrics
            .contains("tcptrace_findings{kind=\"time_wait_exhaustion\",severity=\"critical\"} 0"),
        "{metrics}"
    );

    // The build, as `--version` of the same binary names it.
    let version = std::process::Command::new(common::tcptrace_binary())
        .arg("--version")
        .output()
        .expect("tcptrace --version");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let lines: Vec<&str> = version.lines().collect();
    let field = |line: Option<&&str>, prefix: &str| {
        line.and_then(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.split(" (").next())
            .unwrap_or_default()
            .to_owned()
    };
    let expected = format!(
        "tcptrace_build_info{{version=\"{}\",commit=\"{}\",probe_build_id=\"{}\"}} 1",
        field(lines.first(), "tcptrace "),
        field(lines.get(1), "commit "),
        field(lines.get(2), "probe build id "),
    );
    assert!(
        metrics.lines().any(|line| line == expected),
        "{expected} not in:\n{metrics}"
    );

    assert_eq!(serve.get("/nope").0, 404);
    serve.stop();
}

fn assert_alert_rules_use_exported_metrics(metrics: &str) {
    let rules_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yaml");
    let rules = std::fs::read_to_string(&rules_path).expect("the alert rules");
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("tcptrace_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(!names.is_empty());
    for name in names {
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "the alert rules use {name}, which /metrics does not export:\n{metrics}"
        );
    }
}
