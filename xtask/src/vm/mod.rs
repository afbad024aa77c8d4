//! `cargo xtask vm-test`: the root integration tests inside QEMU guests that
//! boot Debian's kernels, so the probe is checked on kernels other than the
//! host's. Each guest boots straight into an initramfs made here (busybox, the
//! test binaries at their host paths with their libraries), runs the tests and
//! powers off. The serial console is the only way back: everything the host
//! learns, it parses from the serial log.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{check, setup, step};

mod boot;
mod initramfs;
mod kernels;
mod results;

use boot::{boot, print_tail};
use initramfs::make_initramfs;
use kernels::ensure_kernel;
use results::Outcome;

/// A kernel series the tests boot: the newest Debian package whose name
/// matches `pattern` (an `apt-cache search --names-only` regex).
struct Series {
    name: &'static str,
    pattern: &'static str,
}

const SERIES: [Series; 2] = [
    // Debian 12's own kernel: no `sock:sock_recv_length` (6.3+).
    Series {
        name: "6.1",
        pattern: r"^linux-image-6\.1\.[0-9]+-[0-9]+-amd64$",
    },
    // Debian 13's kernel built for Debian 12 (backports).
    Series {
        name: "6.12",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
    },
];

/// The integration tests of package `tcptrace` that run in the guests.
const TESTS: [&str; 4] = ["leaks", "watch", "kernel_table", "maps"];

/// Modules the tests need that Debian does not build in, loaded by /init
/// (nothing in the guest could load them on demand): tcp_diag (and
/// inet_diag) for the sock_diag dumps of the kernel's TCP table; veth for
/// the leaks test that joins two network namespaces.
const MODULES: [&str; 2] = ["tcp_diag", "veth"];

/// Busybox applets /init and the tests use, with who needs them.
const APPLETS: [(&str, &str); 8] = [
    ("sh", "/init, and the tests' `unshare --net sh -c ...`"),
    ("mount", "/init"),
    ("insmod", "/init (tcp_diag, veth)"),
    ("uname", "/init"),
    ("sleep", "/init"),
    ("poweroff", "/init"),
    (
        "unshare",
        "peers in a network namespace of their own (kernel_table, leaks)",
    ),
    ("cat", "/init"),
];

/// Lines /init prints around each test binary; the host parses them.
const MARK_START: &str = "TCPTRACE-VM-START ";
const MARK_EXIT: &str = "TCPTRACE-VM: ";
const MARK_DONE: &str = "TCPTRACE-VM-DONE";
const MARK_KERNEL: &str = "TCPTRACE-VM-KERNEL ";
const MARK_BINARY: &str = "TCPTRACE-VM-BINARY ";
/// Where the guest holds the dist binary, as the .deb installs it; the
/// tests find it through TCPTRACE_BIN.
const GUEST_TCPTRACE: &str = "/usr/bin/tcptrace";

/// The guest's `/lib/modules/<release>/<this>/` holds the modules /init
/// loads, numbered in load order.
const GUEST_MODULES: &str = "tcptrace-vm";

pub struct Options {
    /// Series names ("6.1", "6.12"); empty for all.
    pub kernels: Vec<String>,
    /// Passed to every test binary after `--test-threads=1` (a name filter).
    pub test_args: Vec<String>,
    /// For one guest, from boot to power-off.
    pub timeout: Duration,
    pub memory_mb: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kernels: Vec::new(),
            test_args: Vec::new(),
            timeout: Duration::from_secs(1200),
            memory_mb: 2048,
        }
    }
}

/// Boots each selected kernel with the tests, which run `tcptrace` (the
/// static dist binary), and prints one line per kernel. Returns whether
/// every kernel passed.
pub fn run(root: &Path, tcptrace: &Path, options: &Options) -> Result<bool> {
    let series = selected_series(&options.kernels)?;
    ensure_tools()?;
    let kernels = series
        .iter()
        .map(|series| ensure_kernel(series))
        .collect::<Result<Vec<_>>>()?;
    let binaries = build(tcptrace)?;
    let expected_binary = version_line(tcptrace)?;
    let work = root.join("target/vm");
    let initramfs = make_initramfs(&work, &binaries, &kernels, &options.test_args)?;
    let mut outcomes = Vec::new();
    for kernel in &kernels {
        let mut outcome = boot(&work, kernel, &initramfs, options)?;
        outcome.expected_binary = expected_binary.clone();
        if !outcome.passed() {
            print_tail(&outcome.log, 60);
        }
        outcomes.push(outcome);
    }
    for outcome in &outcomes {
        for line in outcome.summary() {
            step(&format!("vm-test: {line}"));
        }
    }
    Ok(outcomes.iter().all(Outcome::passed))
}

fn selected_series(names: &[String]) -> Result<Vec<&'static Series>> {
    if names.is_empty() {
        return Ok(SERIES.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            SERIES
                .iter()
                .find(|series| series.name == name)
                .with_context(|| {
                    let known: Vec<_> = SERIES.iter().map(|series| series.name).collect();
                    format!("no kernel `{name}`: choose from {}", known.join(", "))
                })
        })
        .collect()
}

// ---- tools on the host ----

/// A Debian package the harness needs, and whether what it brings works.
struct Tool {
    package: &'static str,
    why: &'static str,
    works: fn() -> bool,
}

const TOOLS: [Tool; 5] = [
    Tool {
        package: "qemu-system-x86",
        why: "boots the kernels",
        works: || runs("qemu-system-x86_64", &["--version"]),
    },
    Tool {
        package: "busybox-static",
        why: "the guests' shell and tools",
        // Static, so the guest needs no libraries for it.
        works: || {
            runs("/bin/busybox", &["--list"])
                && elf_interpreter(Path::new("/bin/busybox")).is_ok_and(|i| i.is_none())
        },
    },
    Tool {
        package: "cpio",
        why: "packs the initramfs",
        works: || runs("cpio", &["--version"]),
    },
    Tool {
        package: "xz-utils",
        why: "unpacks the 6.12 kernel's compressed modules",
        works: || runs("xz", &["--version"]),
    },
    Tool {
        package: "iproute2",
        why: "`ip netns` for the leaks test with two namespaces (busybox's ip has no netns)",
        works: || runs("ip", &["-V"]),
    },
];

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn ensure_tools() -> Result<()> {
    let mut missing = Vec::new();
    for tool in &TOOLS {
        if (tool.works)() {
            step(&format!("vm-test: {}: present", tool.package));
        } else {
            step(&format!(
                "vm-test: {}: missing, installing with apt-get ({})",
                tool.package, tool.why
            ));
            missing.push(tool.package);
        }
    }
    if !missing.is_empty() {
        setup::apt_install(&missing)?;
        for tool in TOOLS.iter().filter(|tool| missing.contains(&tool.package)) {
            if !(tool.works)() {
                bail!("{} is installed but does not work", tool.package);
            }
        }
    }
    check_applets()
}

/// Fails early, naming who needs it, if busybox lacks an applet.
fn check_applets() -> Result<()> {
    let list = setup::output(Command::new("/bin/busybox").arg("--list"))?;
    let have: HashSet<&str> = list.lines().map(str::trim).collect();
    let missing: Vec<String> = APPLETS
        .iter()
        .filter(|(applet, _)| !have.contains(applet))
        .map(|(applet, who)| format!("{applet} (needed by {who})"))
        .collect();
    if !missing.is_empty() {
        bail!("/bin/busybox has no applet for: {}", missing.join("; "));
    }
    Ok(())
}

/// The program interpreter (dynamic loader) an ELF file names, if any: none
/// means it is static.
fn elf_interpreter(path: &Path) -> Result<Option<PathBuf>> {
    const PT_INTERP: u32 = 3;
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let field = |at: usize, len: usize| -> Result<u64> {
        let bytes = at
            .checked_add(len)
            .and_then(|end| data.get(at..end))
            .with_context(|| format!("{} is not a 64-bit ELF file", path.display()))?;
        let mut buf = [0u8; 8];
        buf[..len].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(buf))
    };
    if !data.starts_with(b"\x7fELF\x02\x01") {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let (phoff, phentsize, phnum) = (field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?);
    for index in 0..phnum {
        let header = usize::try_from(phoff + index * phentsize)?;
        if field(header, 4)? == u64::from(PT_INTERP) {
            let (offset, size) = (
                field(header + 8, 8)? as usize,
                field(header + 32, 8)? as usize,
            );
            let name = offset
                .checked_add(size)
                .and_then(|end| data.get(offset..end))
                .with_context(|| format!("{}: bad PT_INTERP", path.display()))?;
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(PathBuf::from(String::from_utf8_lossy(name).as_ref())));
        }
    }
    Ok(None)
}

// ---- what runs in the guest ----

struct TestBinary {
    name: String,
    path: PathBuf,
    /// The package's directory: cargo runs tests from there.
    dir: PathBuf,
}

struct Binaries {
    tests: Vec<TestBinary>,
    /// The dist binary, at GUEST_TCPTRACE in the guest.
    tcptrace: PathBuf,
    testpeer: PathBuf,
}

/// `tcptrace --version`'s lines joined by " | ", as the guest prints them.
fn version_line(tcptrace: &Path) -> Result<String> {
    let said = setup::output(Command::new(tcptrace).arg("--version"))?;
    Ok(said.lines().map(str::trim).collect::<Vec<_>>().join(" | "))
}

fn build(tcptrace: &Path) -> Result<Binaries> {
    step("vm-test: building tcptrace-testpeer and the integration tests");
    let peer = cargo_artifacts(&["build", "--package", "tcptrace-testpeer"])?;
    let testpeer = peer
        .iter()
        .find(|a| a.name == "tcptrace-testpeer" && !a.test)
        .context("cargo built no tcptrace-testpeer executable")?
        .path
        .clone();
    let mut args = vec!["test", "--package", "tcptrace", "--no-run"];
    for test in TESTS {
        args.extend(["--test", test]);
    }
    let artifacts = cargo_artifacts(&args)?;
    let tests = TESTS
        .iter()
        .map(|test| {
            let artifact = artifacts
                .iter()
                .find(|a| a.name == *test && a.test)
                .with_context(|| format!("cargo built no test executable `{test}`"))?;
            Ok(TestBinary {
                name: (*test).to_owned(),
                path: artifact.path.clone(),
                dir: artifact.dir.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Binaries {
        tests,
        tcptrace: tcptrace.to_owned(),
        testpeer,
    })
}

struct Artifact {
    name: String,
    test: bool,
    path: PathBuf,
    dir: PathBuf,
}

/// The executables a cargo command builds, from its JSON messages.
fn cargo_artifacts(args: &[&str]) -> Result<Vec<Artifact>> {
    let out = Command::new("cargo")
        .args(args)
        .arg("--message-format=json")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting cargo {}", args.join(" ")))?;
    check(out.status, &format!("cargo {}", args.join(" ")))?;
    let artifacts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter_map(|message| {
            let path = message["executable"].as_str()?;
            let manifest = Path::new(message["manifest_path"].as_str()?);
            Some(Artifact {
                name: message["target"]["name"].as_str()?.to_owned(),
                test: message["profile"]["test"] == true,
                path: PathBuf::from(path),
                dir: manifest.parent()?.to_owned(),
            })
        })
        .collect();
    Ok(artifacts)
}
