//! serve's page at `/`, rendered by a real browser (Debian's headless
//! Chromium): two test peers hold leaks under hostile names, `<script>` and
//! `<img src=x>`; the DOM Chromium built shows each one's PID, name and
//! count as text, creates no element from either name, and embeds the flame
//! graph, which `/flamegraph.svg` serves as SVG. A screenshot is left in
//! target/ for a person to look at.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Peer, STEP_TIMEOUT, ServeRun, require_root, testpeer_path};
use scraper::{ElementRef, Html, Selector};

/// Where `cargo xtask setup` installs it (Debian's `chromium`).
const CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
const LEAKS_TIMEOUT: Duration = Duration::from_secs(60);

/// Would open a script element if the page wrote it as markup.
const SCRIPT_COMM: &str = "<script>";
/// Would make a second img element (and a request for /x).
const IMG_COMM: &str = "<img src=x>";

fn chromium() -> &'static str {
    let runs = Command::new(CHROMIUM)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        runs,
        "{CHROMIUM} is missing or does not run: this test renders serve's page in a real browser; run `cargo xtask setup` to install it"
    );
    CHROMIUM
}

/// target/, where the screenshot is left.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .to_owned()
}

/// Headless Chromium on `url` with `args`, killed if it hangs. Its profile
/// is a directory of its own, so runs never share one.
fn browse(profile: &Path, args: &[&str], url: &str) -> Output {
    let child = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            // Root cannot use Chromium's sandbox.
            "--no-sandbox",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(BROWSER_TIMEOUT) {
        Ok(output) => {
            let output = output.expect("chromium's output");
            assert!(
                output.status.success(),
                "chromium {args:?} {url}: {}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            output
        }
        Err(_) => {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("chromium {args:?} {url}: no answer after {BROWSER_TIMEOUT:?}");
        }
    }
}

/// A peer run from a copy of the test peer named `name`: its comm.
fn spawn_named(dir: &Path, name: &str, args: &[&str]) -> Peer {
    let path = dir.join(name);
    std::fs::copy(testpeer_path(), &path).expect("copy the test peer");
    let mut command = Command::new(&path);
    command.args(args);
    Peer::spawn_command(command, &format!("{} as {name:?}", args.join(" ")))
}

/// The head of a GET's answer, lower-cased names.
fn response_head(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to serve");
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let response = String::from_utf8_lossy(&response);
    let (head, _) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    head.lines()
        .map(|line| match line.split_once(':') {
            Some((name, value)) => format!("{}:{value}\n", name.to_ascii_lowercase()),
            None => format!("{line}\n"),
        })
        .collect()
}

/// Waits until /leaks lists every (pid, sockets), the first with a code
/// path (its EOF stack was taken).
fn wait_for_leaks(serve: &ServeRun, expected: &[(u32, u64)]) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (status, _, body) = serve.get("/leaks");
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).expect("/leaks is JSON");
        let process = |pid: u32| {
            page["processes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["pid"] == pid)
        };
        let all_there = expected.iter().all(|&(pid, sockets)| {
            process(pid).is_some_and(|p| p["close_wait"].as_u64() == Some(sockets))
        });
        let has_path = process(expected[0].0).is_some_and(|p| {
            p["code_paths"].as_array().is_some_and(|paths| {
                paths.iter().any(|path| {
                    path["eof_stack"]
                        .as_array()
                        .is_some_and(|stack| !stack.is_empty())
                })
            })
        });
        if all_there && has_path {
            return page;
        }
        assert!(
            start.elapsed() < LEAKS_TIMEOUT,
            "/leaks did not show {expected:?} with a code path after {LEAKS_TIMEOUT:?}:\n{page:#}"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

fn text(element: ElementRef) -> String {
    element.text().collect::<String>().trim().to_owned()
}

fn select<'a>(dom: &'a Html, selector: &str) -> Vec<ElementRef<'a>> {
    let selector = Selector::parse(selector).expect("a CSS selector");
    dom.select(&selector).collect()
}

/// The cells of the process table's row for `pid`.
fn process_row(dom: &Html, pid: u32) -> Vec<String> {
    let cell = Selector::parse("td").unwrap();
    select(dom, "#processes tbody tr")
        .into_iter()
        .map(|row| row.select(&cell).map(text).collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&pid.to_string()))
        .unwrap_or_else(|| panic!("no row for pid {pid} in the rendered page:\n{}", dom.html()))
}

#[test]
fn the_page_shows_leaks_as_text_and_embeds_the_flame_graph() {
    if !require_root() {
        return;
    }
    chromium();
    let dir = std::env::temp_dir().join(format!("tcptrace-page-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let profile = dir.join("chromium-profile");

    // serve first, so that the peers' reads of EOF are seen and their stacks taken.
    let serve = ServeRun::start(&["--interval", "1s", "--min-age", "1s"]);

    let script = spawn_named(
        &dir,
        SCRIPT_COMM,
        &[
            "leaky-service",
            "--addr",
            "127.0.0.1:0",
            "--connections",
            "5",
            "--leak",
            "3",
        ],
    );
    let port = script.expect("listening")["port"].clone();
    let clients = Peer::spawn(&[
        "clients",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--count",
        "5",
    ]);
    script.expect("holding");
    clients.expect("done");
    let img = spawn_named(
        &dir,
        IMG_COMM,
        &["self-leak", "--addr", "127.0.0.1:0", "--leak", "2"],
    );
    img.expect("holding");
    for (peer, name) in [(&script, SCRIPT_COMM), (&img, IMG_COMM)] {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", peer.pid())).unwrap();
        assert_eq!(
            comm,
            format!("{name}\n"),
            "the kernel took the name as it is"
        );
    }
    wait_for_leaks(&serve, &[(script.pid(), 3), (img.pid(), 2)]);

    let url = format!("http://{}/", serve.address);
    let head = response_head(&serve.address, "/");
    for header in [
        "content-type: text/html; charset=utf-8",
        "x-content-type-options: nosniff",
        "content-security-policy: default-src 'none'; img-src 'self';",
    ] {
        assert!(head.contains(header), "no {header:?} in\n{head}");
    }

    let dumped = browse(&profile, &["--dump-dom"], &url);
    let dom = Html::parse_document(&String::from_utf8_lossy(&dumped.stdout));

    // Each leaking process: its PID, its name as text, its count.
    for (peer, name, count) in [(&script, SCRIPT_COMM, "3"), (&img, IMG_COMM, "2")] {
        let cells = process_row(&dom, peer.pid());
        assert_eq!(cells[1], name, "row {cells:?}");
        assert_eq!(cells[2], count, "CLOSE_WAIT of {name}: row {cells:?}");
        let findings = select(&dom, "#findings")
            .into_iter()
            .map(text)
            .collect::<String>();
        assert!(
            findings.contains(&format!("pid {} ({name})", peer.pid())),
            "no finding about {name}:\n{findings}"
        );
    }
    // Neither name became an element: the page has no script of its own,
    // and its one image is the flame graph.
    assert_eq!(select(&dom, "script").len(), 0, "{}", dom.html());
    let images = select(&dom, "img");
    assert_eq!(images.len(), 1, "{}", dom.html());
    assert_eq!(images[0].value().attr("src"), Some("/flamegraph.svg"));
    assert!(
        select(&dom, "#flamegraph img").len() == 1,
        "the flame graph is embedded in its section"
    );

    // The graph it embeds: SVG, with the leaking process as a root frame.
    let (status, content_type, svg) = serve.get("/flamegraph.svg");
    assert_eq!(status, 200, "{svg}");
    assert_eq!(content_type, "image/svg+xml");
    // inferno's SVG opens with a DOCTYPE.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let svg = roxmltree::Document::parse_with_options(&svg, options)
        .unwrap_or_else(|e| panic!("/flamegraph.svg is not XML: {e}\n{svg}"));
    assert_eq!(svg.root_element().tag_name().name(), "svg");
    let root_frame = format!("{SCRIPT_COMM} ({})", script.pid());
    assert!(
        svg.descendants()
            .filter(|node| node.has_tag_name("title"))
            .any(|title| title.text().is_some_and(|t| t.starts_with(&root_frame))),
        "no frame {root_frame:?} in the flame graph"
    );

    let screenshot = target_dir().join("tcptrace-page.png");
    let _ = std::fs::remove_file(&screenshot);
    browse(
        &profile,
        &[
            &format!("--screenshot={}", screenshot.display()),
            // Tall enough for the whole flame graph of two test peers.
            "--window-size=1280,1200",
        ],
        &url,
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is a PNG",
        screenshot.display()
    );
    eprintln!("the page as Chromium drew it: {}", screenshot.display());

    serve.stop();
    for mut peer in [script, img] {
        peer.go();
        peer.expect("released");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
