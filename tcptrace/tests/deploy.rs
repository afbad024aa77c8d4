//! The files under deploy/: the alerting rules pass promtool and use only
//! metrics `tcptrace serve` exports; the Grafana dashboard's queries parse
//! and use only metrics a live `tcptrace serve` exposes (that one needs
//! root); the DaemonSet and the systemd unit run `serve` and say why they
//! grant each capability.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use common::{STEP_TIMEOUT, ServeRun, require_root, serve_clients};

/// Where `cargo xtask setup` unpacks Debian's prometheus package.
const PROMETHEUS_CACHE: &str = "/var/cache/tcptrace";

/// What `tcptrace serve` exports (counters with their `_total`).
const EXPORTED_METRICS: [&str; 19] = [
    "tcptrace_leaking_sockets",
    "tcptrace_oldest_leak_age_seconds",
    "tcptrace_process_leaking_sockets",
    "tcptrace_sockets",
    "tcptrace_transitions_total",
    "tcptrace_findings",
    "tcptrace_events_total",
    "tcptrace_events_dropped_total",
    "tcptrace_decode_errors_total",
    "tcptrace_kernel_storage_failures_total",
    "tcptrace_agent_table_forgotten_total",
    "tcptrace_reconcile_corrections_total",
    "tcptrace_host_read_failures_total",
    "tcptrace_http_accept_errors_total",
    "tcptrace_host_read_age_seconds",
    "tcptrace_map_entries",
    "tcptrace_map_capacity",
    "tcptrace_agent_table_entries",
    "tcptrace_agent_table_capacity",
];

/// Both deployments grant these, and nothing else.
const CAPABILITIES: [&str; 6] = [
    "BPF",
    "PERFMON",
    "SYS_PTRACE",
    "SYS_ADMIN",
    "SYS_RESOURCE",
    "DAC_READ_SEARCH",
];

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tcptrace crate sits in the workspace")
}

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// `$TCPTRACE_PROMTOOL` (`cargo xtask test` sets it), else the one promtool
/// `cargo xtask setup` unpacked.
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("TCPTRACE_PROMTOOL").filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    let found: Vec<PathBuf> = fs::read_dir(PROMETHEUS_CACHE)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("prometheus-")
        })
        .map(|entry| entry.path().join("usr/bin/promtool"))
        .filter(|path| path.is_file())
        .collect();
    match found.as_slice() {
        [promtool] => promtool.clone(),
        _ => panic!(
            "TCPTRACE_PROMTOOL is not set and {PROMETHEUS_CACHE}/prometheus-*/usr/bin/promtool \
             is not exactly one file (found {found:?}): run the tests with `cargo xtask test`, \
             or run `cargo xtask setup` first"
        ),
    }
}

#[test]
fn alert_rules_pass_promtool() {
    let promtool = promtool();
    let rules = workspace_root().join("deploy/prometheus/alerts.yaml");
    let output = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "starting {}: {error} (`cargo xtask setup` unpacks it)",
                promtool.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} check rules {} failed ({}):\n{text}",
        promtool.display(),
        rules.display(),
        output.status
    );

    // promtool read every rule of the file.
    let yaml = read("deploy/prometheus/alerts.yaml");
    let alerts: Vec<&str> = yaml
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "promtool did not find the file's {} rules:\n{text}",
        alerts.len()
    );
    for name in [
        "TcpSocketLeak",
        "TcpSocketLeakGrowing",
        "TcpSocketLeakOld",
        "TcpTimeWaitPortExhaustion",
        "TcpFinWait2Stuck",
        "TcpEofSpin",
        "TcpConnectFailures",
        "TcpSynBacklog",
        "TcptraceDroppingEvents",
        "TcptraceMapNearlyFull",
        "TcptraceKernelStorageFailures",
        "TcptraceHostReadFailures",
        "TcptraceDown",
    ] {
        assert!(alerts.contains(&name), "no alert {name} in {alerts:?}");
    }

    // promtool cannot know which metrics exist: a misspelt name is a rule
    // that never fires.
    for (number, line) in yaml.lines().enumerate() {
        for (start, _) in line.match_indices("tcptrace_") {
            let name: String = line[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                EXPORTED_METRICS.contains(&name.as_str()),
                "alerts.yaml line {}: {name} is not a metric tcptrace serve exports",
                number + 1
            );
        }
    }
}

#[test]
fn daemonset_and_unit_name_the_serve_command() {
    let daemonset = read("deploy/kubernetes/daemonset.yaml");
    for expected in [
        "kind: DaemonSet",
        "namespace: tcptrace",
        "kind: ServiceAccount",
        r#"args: ["serve", "--listen", "0.0.0.0:9464"]"#,
        "containerPort: 9464",
        r#"prometheus.io/scrape: "true""#,
        r#"prometheus.io/port: "9464""#,
        r#"prometheus.io/path: "/metrics""#,
        "hostPID: true",
        "privileged: false",
        "path: /metrics",
        "terminationGracePeriodSeconds: 10",
        "path: /sys/kernel/btf",
    ] {
        assert!(
            daemonset.contains(expected),
            "daemonset.yaml lacks `{expected}`"
        );
    }
    let granted = yaml_capabilities(&daemonset);
    for (capability, commented) in &granted {
        assert!(
            commented,
            "daemonset.yaml adds {capability} without a comment saying why"
        );
    }
    assert_eq!(
        granted
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(CAPABILITIES),
        "daemonset.yaml capabilities"
    );

    let unit = read("deploy/systemd/tcptrace.service");
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    for expected in [
        // Loopback by default (no --listen): 127.0.0.1:9464.
        "ExecStart=/usr/local/bin/tcptrace serve",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=10",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        // serve's connections and namespace sockets need more than 1024.
        "LimitNOFILE=65536",
    ] {
        assert!(
            settings.contains(&expected),
            "tcptrace.service lacks `{expected}`"
        );
    }
    assert!(unit.contains("9464"), "tcptrace.service names no port");
    for hiding in ["PrivateNetwork=", "ProtectProc=", "RestrictNamespaces="] {
        assert!(
            !settings.iter().any(|line| line.starts_with(hiding)),
            "tcptrace.service sets {hiding}, which hides what tcptrace reads"
        );
    }
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    let mut ambient = BTreeSet::new();
    let mut bounding = BTreeSet::new();
    for (index, line) in lines.iter().enumerate() {
        let Some((set, capability)) = unit_capability(line) else {
            continue;
        };
        match set {
            "AmbientCapabilities" => ambient.insert(capability),
            _ => bounding.insert(capability),
        };
        // Up past the other set's line for the same capability, to its comment.
        let above = lines[..index]
            .iter()
            .rev()
            .find(|line| unit_capability(line).is_none_or(|(_, other)| other != capability));
        assert!(
            above.is_some_and(|line| line.starts_with('#')),
            "tcptrace.service grants {capability} without a comment above saying why"
        );
    }
    let expected: BTreeSet<String> = CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(ambient, expected, "tcptrace.service AmbientCapabilities");
    assert_eq!(bounding, expected, "tcptrace.service CapabilityBoundingSet");
}

#[test]
fn network_policy_admits_only_prometheus_to_the_metrics_port() {
    let policy = read("deploy/kubernetes/networkpolicy.yaml");
    let lines: Vec<&str> = policy
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .collect();
    for expected in [
        "apiVersion: networking.k8s.io/v1",
        "kind: NetworkPolicy",
        "  namespace: tcptrace",
        // The DaemonSet's pods, by the label the DaemonSet gives them.
        "      app.kubernetes.io/name: tcptrace",
        "    - Ingress",
        "            matchLabels:",
        "              kubernetes.io/metadata.name: monitoring",
        "        - protocol: TCP",
        "          port: 9464",
    ] {
        assert!(
            lines.contains(&expected),
            "networkpolicy.yaml lacks `{expected}`"
        );
    }
    // One source, and it is a namespace: no ipBlock, no bare podSelector
    // that would admit more.
    let from: Vec<&&str> = lines
        .iter()
        .filter(|line| line.trim_start().starts_with("- ") && line.contains("Selector:"))
        .collect();
    assert_eq!(from, [&"        - namespaceSelector:"], "sources admitted");
    assert!(
        !policy.contains("ipBlock"),
        "networkpolicy.yaml admits an ipBlock"
    );
    assert!(
        read("deploy/kubernetes/daemonset.yaml").contains("app.kubernetes.io/name: tcptrace"),
        "the policy selects the DaemonSet's pods by their label"
    );
    // Indentation is YAML's structure: a tab would make the file invalid.
    assert!(!policy.contains('\t'), "networkpolicy.yaml has a tab");
}

/// The items of the `add:` list, each with whether a comment is on its line
/// or the line above.
fn yaml_capabilities(yaml: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    let start = lines
        .iter()
        .position(|line| *line == "add:")
        .expect("daemonset.yaml has a capabilities `add:` list");
    let mut capabilities = Vec::new();
    for (index, line) in lines.iter().enumerate().skip(start + 1) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(item) = line.strip_prefix("- ") else {
            break;
        };
        let (name, same_line) = match item.split_once('#') {
            Some((name, _)) => (name, true),
            None => (item, false),
        };
        let name = name.trim().trim_matches('"').to_owned();
        capabilities.push((name, same_line || lines[index - 1].starts_with('#')));
    }
    capabilities
}

/// `AmbientCapabilities=CAP_BPF` -> ("AmbientCapabilities", "CAP_BPF"). One
/// capability a line, so that each has its comment.
fn unit_capability(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once('=')?;
    if key != "AmbientCapabilities" && key != "CapabilityBoundingSet" {
        return None;
    }
    let mut names = value.split_whitespace();
    let name = names
        .next()
        .unwrap_or_else(|| panic!("tcptrace.service: `{line}` names no capability"));
    assert!(
        names.next().is_none(),
        "tcptrace.service: `{line}` names several capabilities: one a line, each with its comment"
    );
    Some((key, name))
}

const DASHBOARD: &str = "deploy/grafana/tcptrace.json";

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|error| panic!("{DASHBOARD} is not JSON: {error}"))
}

/// Every query of the dashboard: the panels' `expr`s and the variables'
/// queries, wherever they are nested (rows may hold panels).
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", serde_json::Value::String(query)) => {
                        out.push(query.clone())
                    }
                    _ => dashboard_queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_queries(item, out);
            }
        }
        _ => {}
    }
}

/// The `tcptrace_*` names a query uses, as series names (`_total` and all).
fn metric_names(query: &str) -> BTreeSet<&str> {
    query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("tcptrace_"))
        .collect()
}

/// A query as Prometheus would get it from Grafana, for promtool.
fn substitute_variables(query: &str) -> String {
    query
        .replace("$__rate_interval", "5m")
        .replace("$instance", ".*")
}

#[test]
fn dashboard_has_its_variables_and_its_queries_parse() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{DASHBOARD}: schemaVersion {}",
        dashboard["schemaVersion"]
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{DASHBOARD} has no ${name} variable"))
    };
    let datasource = variable("datasource");
    assert_eq!(
        (&datasource["type"], &datasource["query"]),
        (&"datasource".into(), &"prometheus".into())
    );
    let instance = variable("instance");
    assert!(
        instance["definition"]
            .as_str()
            .is_some_and(|q| q.starts_with("label_values(") && q.ends_with(", instance)")),
        "$instance is not the values of the instance label: {instance:#}"
    );

    let panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    let mut titles = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            !title.is_empty() && titles.insert(title),
            "panel title {title:?}"
        );
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} does not use the datasource variable"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            assert!(
                expr.contains(r#"instance=~"$instance""#),
                "panel {title:?} ignores the instance variable: {expr}"
            );
        }
    }
    let all = serde_json::to_string(&dashboard).unwrap();
    for (needed, what) in [
        ("tcptrace_leaking_sockets", "leaking sockets"),
        ("tcptrace_oldest_leak_age_seconds", "the oldest leak age"),
        ("tcptrace_transitions_total", "transitions"),
        ("time_wait_exhaustion", "TIME_WAIT and port exhaustion"),
        ("tcptrace_events_dropped_total", "drops"),
        ("tcptrace_reconcile_corrections_total", "corrections"),
        ("comm, container", "leaks by comm and container"),
    ] {
        assert!(all.contains(needed), "{DASHBOARD} shows no {what}");
    }

    // promtool parses PromQL in rules: each panel query, as Grafana sends it,
    // becomes a recording rule for it to check.
    let mut queries = Vec::new();
    dashboard_queries(&dashboard["panels"], &mut queries);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, query) in queries.iter().enumerate() {
        let query = serde_json::to_string(&substitute_variables(query)).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{index}\n        expr: {query}\n"
        ));
    }
    let file = std::env::temp_dir().join(format!("tcptrace-dashboard-{}.yaml", std::process::id()));
    fs::write(&file, &rules).expect("write the rules");
    let promtool = promtool();
    let output = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|error| panic!("starting {}: {error}", promtool.display()));
    let _ = fs::remove_file(&file);
    assert!(
        output.status.success(),
        "a dashboard query does not parse:\n{}{}\n{rules}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every series name an exposition can have: the samples' names, and for
/// each `# TYPE` its family's names (a family with no series yet, like
/// leaks on a host that has none, shows only there).
fn exposed_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                "stateset" | "gauge" | "unknown" => &[""],
                other => panic!("/metrics declares {family} of an unknown type {other}"),
            };
            names.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

#[test]
fn dashboard_queries_only_metrics_a_live_serve_exposes() {
    if !require_root() {
        return;
    }
    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    let used: BTreeSet<&str> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(used.len() >= 8, "{DASHBOARD} queries only {used:?}");

    // A family shows in /metrics only once it has a series: with a leak
    // held by a live process, every family the dashboard reads has one.
    let serve = ServeRun::start(&["--interval", "500ms", "--min-age", "1s"]);
    // Held (and the leak kept) until the end of the test.
    let served = serve_clients("127.0.0.1", "leaky-server", "2", &["--leak", "1"], &[]);
    let holder = served.holder;
    let by_pid = format!("tcptrace_process_leaking_sockets{{pid=\"{holder}\"");
    let started = std::time::Instant::now();
    let metrics = loop {
        let (status, _, metrics) = serve.get("/metrics");
        assert_eq!(status, 200, "{metrics}");
        if metrics.contains(&by_pid) {
            break metrics;
        }
        assert!(
            started.elapsed() < STEP_TIMEOUT,
            "the leak of pid {holder} never showed in /metrics:\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    serve.stop();
    let exposed = exposed_names(&metrics);
    assert!(
        exposed.contains("tcptrace_events_total"),
        "{exposed:?} from\n{metrics}"
    );
    for name in used {
        assert!(
            exposed.contains(name),
            "{DASHBOARD} queries {name}, which /metrics does not expose:\n{metrics}"
        );
    }
}
