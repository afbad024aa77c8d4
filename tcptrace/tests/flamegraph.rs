//! Root tests (issue 14): `leaks --flamegraph` draws a real leaky server's
//! two leaking handlers, each as wide as the sockets it leaked, and
//! `leaks --once` draws leaks made before tcptrace started under their
//! process, with the reason they have no stack.
//!
//! The server (tests/programs/two_leaks.c) is a separate process on
//! 127.0.0.1; each run filters on its pid, so other tests' sockets never
//! count.

mod common;

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
};

use common::{
    LeakRun, kernel_has_recv_tracepoint,
    programs::{Scratch, Server, programs_dir, run, tool},
    require_root,
};

/// Upload, good, download, upload, good, upload: three leaks through
/// handle_upload, one through handle_download, and two closed.
const REQUESTS: &[u8] = b"UGDUGU";

/// One frame of the drawn SVG.
#[derive(Debug)]
struct Drawn {
    /// As the title shows it, without the counts.
    name: String,
    sockets: usize,
    /// Of the graph's width, in percent.
    width: f64,
}

fn build(scratch: &Scratch) -> PathBuf {
    let binary = scratch.path("two_leaks");
    run(Command::new(tool("cc"))
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&binary)
        .arg(programs_dir().join("two_leaks.c")));
    binary
}

fn request(server: &Server, kind: u8) -> TcpStream {
    let answer = if kind == b'G' { "closed" } else { "leaked" };
    server.request_expecting(kind, answer)
}

/// Every frame of the SVG at `path`, which must parse as XML.
fn drawn(path: &Path) -> (String, Vec<Drawn>) {
    let svg = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no flame graph at {}: {e}", path.display()));
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&svg, options)
        .unwrap_or_else(|e| panic!("the flame graph is not XML: {e}\n{svg}"));
    let mut frames = Vec::new();
    for g in doc.descendants().filter(|n| n.has_tag_name("g")) {
        let child = |tag: &str| g.children().find(|n| n.has_tag_name(tag));
        let (Some(title), Some(rect)) = (child("title"), child("rect")) else {
            continue;
        };
        let title = title.text().unwrap_or_default();
        // `name (3 sockets, 75.00%)`
        let (name, counts) = title
            .rsplit_once(" (")
            .unwrap_or_else(|| panic!("a frame's title without counts: {title:?}"));
        let sockets = counts
            .split_whitespace()
            .next()
            .and_then(|n| n.replace(',', "").parse().ok())
            .unwrap_or_else(|| panic!("no socket count in {title:?}"));
        assert!(
            counts.contains("sockets"),
            "the count is not of sockets: {title:?}"
        );
        let width = rect
            .attribute("width")
            .and_then(|w| w.strip_suffix('%'))
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("a frame without a width: {title:?}"));
        frames.push(Drawn {
            name: name.to_owned(),
            sockets,
            width,
        });
    }
    (svg, frames)
}

/// The one frame whose name starts with `prefix`.
fn only<'a>(frames: &'a [Drawn], prefix: &str) -> &'a Drawn {
    let found: Vec<&Drawn> = frames
        .iter()
        .filter(|f| f.name.starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "frames named {prefix}: {frames:#?}");
    found[0]
}

fn assert_width(frame: &Drawn, of: &Drawn, sockets: usize, total: usize) {
    let expected = sockets as f64 / total as f64;
    let ratio = frame.width / of.width;
    assert!(
        (ratio - expected).abs() < 0.005,
        "{} is {ratio:.4} of {}'s width, not {sockets}/{total}",
        frame.name,
        of.name
    );
}

#[test]
fn each_leaking_handler_is_as_wide_as_its_leaked_sockets() {
    if !require_root() {
        return;
    }
    assert!(
        kernel_has_recv_tracepoint(),
        "the EOF stack needs sock:sock_recv_length (Linux 6.3+)"
    );
    let scratch = Scratch::new("flamegraph");
    let server = Server::start(Command::new(build(&scratch)), scratch.path("stderr"));
    let pid = server.pid().to_string();
    let svg_path = scratch.path("leaks.svg");
    let svg_arg = svg_path.to_str().unwrap();
    let agent = LeakRun::start(&[
        "--min-age",
        "1s",
        "--duration",
        "6s",
        "--pid",
        &pid,
        "--flamegraph",
        svg_arg,
    ]);
    let clients: Vec<TcpStream> = REQUESTS.iter().map(|&k| request(&server, k)).collect();
    let report = agent.report();

    // The report the graph is drawn from.
    let entry = report
        .process(server.pid())
        .unwrap_or_else(|| panic!("no entry for the server: {:#}", report.0));
    assert_eq!(entry["close_wait"], 4, "{entry:#}");
    let mut counts: Vec<u64> = entry["code_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sockets"].as_u64().unwrap())
        .collect();
    counts.sort();
    assert_eq!(counts, [1, 3], "{entry:#}");

    let (svg, frames) = drawn(&svg_path);
    assert!(
        svg.contains("width = leaked sockets, not samples"),
        "the title does not say what the width is"
    );
    let process = only(&frames, &format!("two_leaks ({pid})"));
    assert_eq!(process.sockets, 4, "{frames:#?}");
    let upload = only(&frames, "handle_upload");
    let download = only(&frames, "handle_download");
    assert_eq!((upload.sockets, download.sockets), (3, 1), "{frames:#?}");
    assert_width(upload, process, 3, 4);
    assert_width(download, process, 1, 4);
    assert_width(download, upload, 1, 3);
    assert!(
        !frames.iter().any(|f| f.name.contains("handle_good")),
        "the handler that closes is drawn: {frames:#?}"
    );
    // Both paths read EOF through the shared helper: drawn once under each.
    assert_eq!(
        frames
            .iter()
            .filter(|f| f.name.starts_with("drain"))
            .count(),
        2,
        "{frames:#?}"
    );
    drop(clients);
}

#[test]
fn once_draws_leaks_from_before_it_started_per_process_with_the_reason() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("flamegraph-once");
    let server = Server::start(Command::new(build(&scratch)), scratch.path("stderr"));
    // Leaked before tcptrace runs: no probe saw them, so no stack.
    let clients: Vec<TcpStream> = b"UUD".iter().map(|&k| request(&server, k)).collect();
    let pid = server.pid().to_string();
    let svg_path = scratch.path("once.svg");
    let out = Command::new(common::tcptrace_binary())
        .args(["leaks", "--once", "--pid", &pid, "--flamegraph"])
        .arg(&svg_path)
        .output()
        .expect("run tcptrace leaks --once");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcptrace leaks --once failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 leaking sockets"), "{stdout}");

    let (_, frames) = drawn(&svg_path);
    let process = only(&frames, &format!("two_leaks ({pid})"));
    assert_eq!(process.sockets, 3, "{frames:#?}");
    let reason = only(&frames, "(no stack: ");
    assert_eq!(
        reason.name,
        "(no stack: in CLOSE_WAIT before tcptrace started: a read of EOF then was not seen)",
        "{frames:#?}"
    );
    assert_eq!(reason.sockets, 3);
    assert_width(reason, process, 3, 3);
    drop(clients);
}
