//! `cargo xtask vm-test`: the root integration tests inside QEMU guests that
//! boot Debian's kernels, so the probe is checked on kernels other than the
//! host's. Each guest boots straight into an initramfs made here (busybox, the
//! test binaries at their host paths with their libraries), runs the tests and
//! powers off. The serial console is the only way back: everything the host
//! learns, it parses from the serial log.

use std::{
    cmp::Ordering,
    collections::{HashMap, HashSet},
    ffi::CString,
    fmt::Write as _,
    fs::{self, File},
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    check, is_root,
    setup::{self, TempDir},
    step,
};

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
const TESTS: [&str; 3] = ["leaks", "watch", "kernel_table"];

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

/// Boots each selected kernel with the tests and prints one line per kernel.
/// Returns whether every kernel passed.
pub fn run(root: &Path, options: &Options) -> Result<bool> {
    let series = selected_series(&options.kernels)?;
    ensure_tools()?;
    let kernels = series
        .iter()
        .map(|series| ensure_kernel(series))
        .collect::<Result<Vec<_>>>()?;
    let binaries = build()?;
    let work = root.join("target/vm");
    let initramfs = make_initramfs(&work, &binaries, &kernels, &options.test_args)?;
    let mut outcomes = Vec::new();
    for kernel in &kernels {
        let outcome = boot(&work, kernel, &initramfs, options)?;
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

// ---- kernels ----

struct Kernel {
    /// `uname -r` in the guest, e.g. `6.1.0-56-amd64`.
    release: String,
    vmlinuz: PathBuf,
    /// Where the package is unpacked.
    dir: PathBuf,
}

/// The newest package of the series, unpacked once into
/// `/var/cache/tcptrace/kernels/<package>/` (shared by every checkout, like
/// Prometheus). Never installed: nothing on the host boots it.
fn ensure_kernel(series: &Series) -> Result<Kernel> {
    let package = newest_package(series)?;
    let dir = Path::new(setup::CACHE).join("kernels").join(&package);
    if let Some(kernel) = unpacked_kernel(&dir) {
        step(&format!(
            "vm-test: kernel {package}: present in {}",
            dir.display()
        ));
        return Ok(kernel);
    }
    step(&format!(
        "vm-test: kernel {package}: missing, unpacking Debian's package into {}",
        dir.display()
    ));
    let download = TempDir::new("tcptrace-kernel")?;
    let deb = setup::apt_download(&package, download.path())?;
    setup::unpack_deb(&deb, &dir)?;
    unpacked_kernel(&dir).with_context(|| {
        format!(
            "{package} unpacked, but {} has no boot/vmlinuz-*",
            dir.display()
        )
    })
}

fn unpacked_kernel(dir: &Path) -> Option<Kernel> {
    let vmlinuz = fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(|entry| entry.ok())
        .find(|entry| entry.file_name().to_string_lossy().starts_with("vmlinuz-"))?
        .path();
    let release = vmlinuz
        .file_name()?
        .to_string_lossy()
        .strip_prefix("vmlinuz-")?
        .to_owned();
    Some(Kernel {
        release,
        vmlinuz,
        dir: dir.to_owned(),
    })
}

fn newest_package(series: &Series) -> Result<String> {
    let mut names = apt_search(series.pattern)?;
    if names.is_empty() {
        step(&format!(
            "vm-test: apt-get update (the package lists offer no {} kernel yet)",
            series.name
        ));
        setup::apt_update()?;
        names = apt_search(series.pattern)?;
    }
    names
        .into_iter()
        .max_by(|a, b| version_cmp(a, b))
        .with_context(|| {
            format!(
                "apt offers no package matching {} even after apt-get update",
                series.pattern
            )
        })
}

fn apt_search(pattern: &str) -> Result<Vec<String>> {
    let out = setup::output(Command::new("apt-cache").args(["search", "--names-only", pattern]))?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Compares as `sort -V` does for package names: runs of digits by their
/// number, everything else byte by byte.
fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut rest = s;
        while let Some(first) = rest.chars().next() {
            let digits = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            out.push(&rest[..end]);
            rest = &rest[end..];
        }
        out
    }
    let (a, b) = (chunks(a), chunks(b));
    for (x, y) in a.iter().zip(&b) {
        let order = if x.starts_with(|c: char| c.is_ascii_digit())
            && y.starts_with(|c: char| c.is_ascii_digit())
        {
            // By length first once leading zeros are gone: no overflow.
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.cmp(y)
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

/// The `MODULES` of the kernel and what they depend on, uncompressed (busybox
/// insmod reads plain .ko files), in load order.
fn kernel_modules(kernel: &Kernel) -> Result<Vec<(String, Vec<u8>)>> {
    let base = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| kernel.dir.join(dir).join(&kernel.release))
        .find(|dir| dir.is_dir())
        .with_context(|| {
            format!(
                "{} has no lib/modules/{}",
                kernel.dir.display(),
                kernel.release
            )
        })?;
    let mut files = HashMap::new();
    index_modules(&base, &mut files)?;
    let mut ordered = Vec::new();
    // Built-in ones need no loading: as if loaded already.
    let mut seen: HashSet<String> = fs::read_to_string(base.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| module_name(Path::new(line)))
        .collect();
    for name in MODULES {
        add_module(name, &files, &mut seen, &mut ordered)?;
    }
    Ok(ordered)
}

/// Module name -> file, for every module under `dir`.
fn index_modules(dir: &Path, files: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        // Not followed: `build` and `source` link to the headers, elsewhere.
        if entry.file_type()?.is_dir() {
            index_modules(&entry.path(), files)?;
        } else if let Some(name) = module_name(&entry.path()) {
            files.insert(name, entry.path());
        }
    }
    Ok(())
}

/// `net/ipv4/tcp_diag.ko.xz` -> `tcp_diag` (with `_` for `-`, as the kernel
/// spells it).
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    [".ko", ".ko.xz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .map(|stem| stem.replace('-', "_"))
}

fn add_module(
    name: &str,
    files: &HashMap<String, PathBuf>,
    seen: &mut HashSet<String>,
    ordered: &mut Vec<(String, Vec<u8>)>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if !seen.insert(name.clone()) {
        return Ok(());
    }
    let path = files
        .get(&name)
        .with_context(|| format!("the kernel package has no module {name}"))?;
    let image = read_module(path)?;
    for dependency in module_depends(&image) {
        add_module(&dependency, files, seen, ordered)?;
    }
    ordered.push((name, image));
    Ok(())
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        return fs::read(path).with_context(|| format!("reading {name}"));
    }
    if !name.ends_with(".ko.xz") {
        bail!("{name}: only plain and xz-compressed modules are supported");
    }
    let out = Command::new("xz")
        .args(["-dc", "--"])
        .arg(path)
        .output()
        .context("starting xz")?;
    check(out.status, &format!("xz -dc {name}"))?;
    Ok(out.stdout)
}

/// The `depends=` entry of a module's .modinfo section.
fn module_depends(image: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = image.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let value = &image[at + key.len()..];
    let value = value.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(value)
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
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
    /// Found by the tests through the compile-time CARGO_BIN_EXE_tcptrace.
    tcptrace: PathBuf,
    testpeer: PathBuf,
}

fn build() -> Result<Binaries> {
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
    let tcptrace = artifacts
        .iter()
        .find(|a| a.name == "tcptrace" && !a.test)
        .context("cargo built no tcptrace executable with the tests")?
        .path
        .clone();
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
        tcptrace,
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

// ---- the initramfs ----

/// Builds `work/initramfs-root` and packs it into `work/initramfs.cpio`
/// (uncompressed: the guest unpacks it faster than it could gunzip it under
/// emulation). One archive serves every kernel: each kernel's modules are
/// under its own release.
fn make_initramfs(
    work: &Path,
    binaries: &Binaries,
    kernels: &[Kernel],
    test_args: &[String],
) -> Result<PathBuf> {
    let tree = work.join("initramfs-root");
    step(&format!(
        "vm-test: making the initramfs in {}",
        tree.display()
    ));
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    mirror_top_level_links(&tree)?;
    for dir in ["proc", "sys", "dev", "tmp", "run", "root", "etc", "var"] {
        create_dir(&tree.join(dir))?;
    }
    // iproute2 keeps named network namespaces in /var/run/netns.
    symlink("/run", &tree.join("var/run"))?;
    let ip = find_program("ip").context("no `ip` (iproute2) on the host")?;
    let mut programs = vec![&binaries.tcptrace, &binaries.testpeer, &ip];
    programs.extend(binaries.tests.iter().map(|test| &test.path));
    for program in programs {
        copy_with_libraries(&tree, program)?;
    }
    // After the programs: busybox's applets fill only the names left free.
    install_busybox(&tree)?;
    for test in &binaries.tests {
        create_dir(&in_tree(&tree, &test.dir))?;
    }
    for kernel in kernels {
        let dir = tree
            .join("lib/modules")
            .join(&kernel.release)
            .join(GUEST_MODULES);
        create_dir(&dir)?;
        // Numbered: the shell's glob gives them back in load order.
        for (index, (name, image)) in kernel_modules(kernel)?.iter().enumerate() {
            let file = dir.join(format!("{index:02}-{name}.ko"));
            fs::write(&file, image).with_context(|| format!("writing {}", file.display()))?;
        }
    }
    make_console(&tree)?;
    write_file(
        &tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    write_file(&tree.join("etc/group"), "root:x:0:\n", 0o644)?;
    write_file(&tree.join("init"), &init_script(binaries, test_args), 0o755)?;
    let archive = work.join("initramfs.cpio");
    pack(&tree, &archive)?;
    let size = fs::metadata(&archive)
        .with_context(|| format!("reading {}", archive.display()))?
        .len();
    step(&format!(
        "vm-test: initramfs {} is {} MiB",
        archive.display(),
        size >> 20
    ));
    Ok(archive)
}

fn in_tree(tree: &Path, path: &Path) -> PathBuf {
    tree.join(path.strip_prefix("/").unwrap_or(path))
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {target}", link.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The host's merged-/usr links (`/lib -> usr/lib`, ...), so a file copied to
/// the path `ldd` names lands where the loader looks for it in the guest.
fn mirror_top_level_links(tree: &Path) -> Result<()> {
    for name in ["bin", "sbin", "lib", "lib64"] {
        let host = Path::new("/").join(name);
        match fs::read_link(&host) {
            Ok(target) => {
                // Relative, so that it points into the tree on the host too.
                let target = target.strip_prefix("/").unwrap_or(&target);
                create_dir(&tree.join(target))?;
                symlink(&target.to_string_lossy(), &tree.join(name))?;
            }
            Err(_) => create_dir(&tree.join(name))?,
        }
    }
    Ok(())
}

/// /bin/busybox and a link per applet, where no copied program has the name
/// already (the real `ip` wins over busybox's). The links are absolute, for
/// the guest: on the host they point out of the tree, so nothing is ever
/// written through them (see `copy_file`).
fn install_busybox(tree: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    copy_file(tree, busybox, busybox)?;
    let list = setup::output(Command::new(busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|line| !line.is_empty()) {
        // The list names busybox itself: linking it would replace the binary
        // with a link to itself.
        if Path::new(applet).file_name() == Some("busybox".as_ref()) {
            continue;
        }
        let link = tree.join(applet);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            create_dir(parent)?;
        }
        symlink("/bin/busybox", &link)?;
    }
    Ok(())
}

/// `program` on PATH or in the sbin directories (not on a user's PATH).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Copies `program` to the same absolute path in the tree, and, unless it
/// is static, the libraries `ldd` resolves for it and its loader.
fn copy_with_libraries(tree: &Path, program: &Path) -> Result<()> {
    copy_file(tree, program, program)?;
    if elf_interpreter(program)?.is_none() {
        return Ok(());
    }
    let libraries = setup::output(Command::new("ldd").arg(program))?;
    for library in libraries.lines().filter_map(ldd_path) {
        if in_tree(tree, &library).symlink_metadata().is_err() {
            copy_file(tree, &library, &library)?;
        }
    }
    Ok(())
}

/// The file one line of `ldd` output names: `libc.so.6 => /lib/.../libc.so.6
/// (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`; none for the vDSO.
fn ldd_path(line: &str) -> Option<PathBuf> {
    let line = line.trim();
    let path = match line.split_once("=>") {
        Some((_, resolved)) => resolved.split_whitespace().next()?,
        None => line.split_whitespace().next()?,
    };
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Copies the host's `from` to `guest_path` in the tree. The destination's
/// directory must resolve inside the tree and the destination must not be a
/// link: a copy through one of the guest's absolute links would overwrite the
/// host's own file.
fn copy_file(tree: &Path, from: &Path, guest_path: &Path) -> Result<()> {
    let to = in_tree(tree, guest_path);
    let parent = to
        .parent()
        .with_context(|| format!("{} has no parent", to.display()))?;
    create_dir(parent)?;
    let real_tree = tree
        .canonicalize()
        .with_context(|| format!("resolving {}", tree.display()))?;
    let real_parent = parent
        .canonicalize()
        .with_context(|| format!("resolving {}", parent.display()))?;
    if !real_parent.starts_with(&real_tree) {
        bail!(
            "{} resolves to {}, outside {}",
            parent.display(),
            real_parent.display(),
            tree.display()
        );
    }
    if to.symlink_metadata().is_ok_and(|meta| meta.is_symlink()) {
        fs::remove_file(&to).with_context(|| format!("removing {}", to.display()))?;
    }
    fs::copy(from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The console /init writes to before devtmpfs is mounted. Only root can
/// make device nodes; without it the kernel's built-in initramfs, which
/// has /dev/console, still provides one.
fn make_console(tree: &Path) -> Result<()> {
    if !is_root() {
        step("vm-test: not root: /dev/console comes from the kernel's built-in initramfs");
        return Ok(());
    }
    let path = tree.join("dev/console");
    let name = CString::new(path.as_os_str().as_bytes()).context("path with a NUL byte")?;
    // SAFETY: `name` is a valid NUL-terminated path; mknod has no other
    // preconditions.
    let result = unsafe { libc::mknod(name.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(5, 1)) };
    if result != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mknod {} c 5 1", path.display()));
    }
    Ok(())
}

/// A word for the guest's shell, quoted whatever it holds.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// /init: mounts what the probe and the tests use, loads the modules, runs
/// each test binary between marker lines, and powers off.
fn init_script(binaries: &Binaries, test_args: &[String]) -> String {
    let testpeer = shell_quote(&binaries.testpeer.to_string_lossy());
    let mut script = format!(
        r#"#!/bin/sh
# Made by `cargo xtask vm-test` (xtask/src/vm.rs). The host reads the results
# from the serial console.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
export TCPTRACE_TESTPEER={testpeer}
# Debian's kernels allow fexit: the tests then require the accept hook.
export TCPTRACE_EXPECT_FEXIT=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# No tmpfs over /tmp or /run: the initramfs root is already writable memory,
# and the binaries sit at their host paths, which may be under /tmp (a CI
# clone there was hidden by a tmpfs mount).
ip link set lo up
for module in /lib/modules/"$(uname -r)"/{GUEST_MODULES}/*.ko; do
    [ -e "$module" ] && insmod "$module"
done
echo "{MARK_KERNEL}$(uname -r)"
"#
    );
    let args: String = test_args
        .iter()
        .map(|arg| format!(" {}", shell_quote(arg)))
        .collect();
    for test in &binaries.tests {
        let _ = write!(
            script,
            "cd {dir}\necho '{MARK_START}{name}'\n{path} --test-threads=1{args}\necho \"{MARK_EXIT}{name} exit=$?\"\n",
            dir = shell_quote(&test.dir.to_string_lossy()),
            name = test.name,
            path = shell_quote(&test.path.to_string_lossy()),
        );
    }
    // The pause lets the serial port drain before the machine goes away; if
    // poweroff fails, the kernel panics when init exits and QEMU
    // (-no-reboot) stops all the same.
    let _ = write!(
        script,
        "echo {MARK_DONE}\nsleep 1\npoweroff -f\necho o > /proc/sysrq-trigger\n"
    );
    script
}

/// `find . | cpio -o -H newc` in the tree, every file owned by root.
fn pack(tree: &Path, archive: &Path) -> Result<()> {
    let out = File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let mut find = Command::new("find")
        .arg(".")
        .current_dir(tree)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting find")?;
    let files = find.stdout.take().context("find has no stdout")?;
    let cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(tree)
        .stdin(files)
        .stdout(out)
        .status()
        .context("starting cpio")?;
    check(find.wait().context("waiting for find")?, "find")?;
    check(cpio, "cpio -o")
}

// ---- the guest ----

/// QEMU with TCG, always: this host's /dev/kvm cannot run stock kernels.
/// The serial console (stdout, with -nographic) goes to the log.
fn boot(work: &Path, kernel: &Kernel, initramfs: &Path, options: &Options) -> Result<Outcome> {
    let dir = work.join(&kernel.release);
    create_dir(&dir)?;
    let log_path = dir.join("serial.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-m"])
        .arg(options.memory_mb.to_string())
        .args([
            "-smp",
            "2",
            "-nic",
            "none",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stderr(log.try_clone().context("duplicating the log file")?)
        .stdout(log);
    step(&format!(
        "vm-test: linux {}: booting (TCG, {} MiB, timeout {} s), serial log {}",
        kernel.release,
        options.memory_mb,
        options.timeout.as_secs(),
        log_path.display()
    ));
    let started = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let mut progress = Progress::new(&log_path, &kernel.release, started);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            break Some(status);
        }
        progress.show();
        if started.elapsed() >= options.timeout {
            // It may have exited just now: kill fails harmlessly then.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(500));
    };
    progress.show();
    let elapsed = started.elapsed();
    let text = fs::read(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let mut outcome = Outcome::parse(&String::from_utf8_lossy(&text));
    outcome.release = kernel.release.clone();
    outcome.log = log_path;
    outcome.elapsed = elapsed;
    outcome.qemu = status;
    outcome.timeout = options.timeout;
    Ok(outcome)
}

/// Echoes the marker lines of a running guest as they arrive: a run takes
/// minutes.
struct Progress<'a> {
    log: &'a Path,
    release: &'a str,
    started: Instant,
    offset: u64,
    partial: String,
}

impl<'a> Progress<'a> {
    fn new(log: &'a Path, release: &'a str, started: Instant) -> Self {
        Self {
            log,
            release,
            started,
            offset: 0,
            partial: String::new(),
        }
    }

    fn show(&mut self) {
        let mut bytes = Vec::new();
        let Ok(mut file) = File::open(self.log) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = line.trim_end();
            let shown = if let Some(release) = after(line, MARK_KERNEL) {
                Some(format!("booted {release}"))
            } else if let Some(name) = after(line, MARK_START) {
                Some(format!("running {name}"))
            } else if let Some(rest) = after(line, MARK_EXIT) {
                Some(rest.to_owned())
            } else if line.starts_with("test ") && line.ends_with("FAILED") {
                Some(line.to_owned())
            } else {
                None
            };
            if let Some(shown) = shown {
                step(&format!(
                    "vm-test: linux {}: {shown} ({} s)",
                    self.release,
                    self.started.elapsed().as_secs()
                ));
            }
        }
    }
}

/// What follows `mark` in a serial line. Not only at the start: the
/// firmware's and the console's escape sequences can come first.
fn after<'a>(line: &'a str, mark: &str) -> Option<&'a str> {
    line.find(mark).map(|at| &line[at + mark.len()..])
}

/// The line without terminal control sequences: the firmware's `ESC c`
/// would reset the terminal the tail is printed on.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: `ESC [` parameters, then one final byte in @..~.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

fn print_tail(log: &Path, lines: usize) {
    let Ok(text) = fs::read(log) else {
        return;
    };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    eprintln!(
        "xtask: vm-test: last {} lines of {}:",
        lines.min(all.len()),
        log.display()
    );
    for line in &all[all.len().saturating_sub(lines)..] {
        eprintln!("    {}", printable(line.trim_end()));
    }
}

// ---- results ----

#[derive(Default)]
struct BinaryResult {
    name: String,
    exit: Option<i32>,
    passed: u32,
    failed: u32,
    summary_seen: bool,
    failures: Vec<Failure>,
}

#[derive(Default)]
struct Failure {
    test: String,
    /// `file:line:col` of the panic.
    location: Option<String>,
    /// The panic message, without the backtrace.
    message: Vec<String>,
}

impl Failure {
    /// The message's first line and its `left:`/`right:` lines (assertions
    /// often print a whole report between the two), cut short.
    fn brief(&self) -> String {
        let cut = |line: &str| line.trim().chars().take(300).collect::<String>();
        let mut parts: Vec<String> = self.location.iter().map(|at| format!("at {at}")).collect();
        parts.extend(self.message.first().map(|line| cut(line)));
        let rest = self.message.iter().skip(1);
        let sides: Vec<String> = rest
            .clone()
            .filter(|line| {
                let line = line.trim_start();
                line.starts_with("left:") || line.starts_with("right:")
            })
            .map(|line| cut(line))
            .collect();
        if sides.is_empty() {
            parts.extend(rest.take(2).map(|line| cut(line)));
        } else {
            parts.extend(sides);
        }
        parts.join(" | ")
    }
}

#[derive(Default)]
struct Outcome {
    release: String,
    log: PathBuf,
    elapsed: Duration,
    timeout: Duration,
    /// None when it was killed at the timeout.
    qemu: Option<ExitStatus>,
    booted: bool,
    done: bool,
    finished: Vec<BinaryResult>,
    /// Started but never reported its exit.
    running: Option<BinaryResult>,
}

impl Outcome {
    /// Reads what /init and libtest printed on the serial console.
    fn parse(log: &str) -> Self {
        let mut outcome = Self::default();
        // The test whose `---- name stdout ----` block is being read, and
        // whether its panic message has started / ended.
        let mut block: Option<(String, bool, bool)> = None;
        for line in log.lines().map(|line| line.trim_end_matches('\r')) {
            if after(line, MARK_KERNEL).is_some() {
                outcome.booted = true;
            } else if let Some(name) = after(line, MARK_START) {
                outcome.running = Some(BinaryResult {
                    name: name.trim().to_owned(),
                    ..BinaryResult::default()
                });
                block = None;
            } else if let Some(rest) = after(line, MARK_EXIT) {
                if let Some(mut binary) = outcome.running.take() {
                    binary.exit = rest
                        .rsplit_once("exit=")
                        .and_then(|(_, code)| code.trim().parse().ok());
                    outcome.finished.push(binary);
                }
                block = None;
            } else if line.contains(MARK_DONE) {
                outcome.done = true;
            } else if let Some(binary) = outcome.running.as_mut() {
                parse_test_line(binary, line, &mut block);
            }
        }
        outcome
    }

    fn passed(&self) -> bool {
        self.done
            && self.qemu.is_some()
            && self.running.is_none()
            && self.finished.len() == TESTS.len()
            && self.finished.iter().all(|binary| binary.exit == Some(0))
    }

    /// One line for the kernel, then one per failing test.
    fn summary(&self) -> Vec<String> {
        let counts: Vec<String> = self
            .finished
            .iter()
            .chain(&self.running)
            .map(|binary| {
                if binary.summary_seen {
                    format!(
                        "{} {}/{}",
                        binary.name,
                        binary.passed,
                        binary.passed + binary.failed
                    )
                } else if let Some(code) = binary.exit {
                    format!("{} exit {code} without a test summary", binary.name)
                } else {
                    format!("{} unfinished", binary.name)
                }
            })
            .collect();
        let verdict = if self.passed() {
            "passed".to_owned()
        } else if self.qemu.is_none() {
            match &self.running {
                Some(binary) => format!(
                    "TIMED OUT after {} s while running {}",
                    self.timeout.as_secs(),
                    binary.name
                ),
                None => format!("TIMED OUT after {} s", self.timeout.as_secs()),
            }
        } else if !self.booted {
            "FAILED: the guest never reached /init's first line".to_owned()
        } else if !self.done {
            "FAILED: the guest stopped before the end of the tests".to_owned()
        } else {
            "FAILED".to_owned()
        };
        let mut lines = vec![format!(
            "linux {}: {verdict} ({}) in {} s",
            self.release,
            counts.join(", "),
            self.elapsed.as_secs()
        )];
        for binary in self.finished.iter().chain(&self.running) {
            for failure in &binary.failures {
                lines.push(format!(
                    "    {}::{}: {}",
                    binary.name,
                    failure.test,
                    failure.brief()
                ));
            }
        }
        if !self.passed() {
            lines.push(format!("    serial log: {}", self.log.display()));
        }
        lines
    }
}

/// Takes from libtest's output: the summary counts, the failing tests, and
/// the panic message in each failure's captured output.
fn parse_test_line(
    binary: &mut BinaryResult,
    line: &str,
    block: &mut Option<(String, bool, bool)>,
) {
    if let Some(counts) = line.strip_prefix("test result: ") {
        binary.summary_seen = true;
        for part in counts.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(word), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u32>() else {
                continue;
            };
            match word {
                "passed" => binary.passed = number,
                "failed" => binary.failed = number,
                _ => {}
            }
        }
        *block = None;
        return;
    }
    if let Some(test) = line
        .strip_prefix("test ")
        .and_then(|rest| rest.strip_suffix(" ... FAILED"))
    {
        if !binary.failures.iter().any(|failure| failure.test == test) {
            binary.failures.push(Failure {
                test: test.to_owned(),
                ..Failure::default()
            });
        }
        return;
    }
    if let Some(test) = line
        .strip_prefix("---- ")
        .and_then(|rest| rest.strip_suffix(" stdout ----"))
    {
        *block = Some((test.to_owned(), false, false));
        return;
    }
    let Some((test, started, ended)) = block.as_mut() else {
        return;
    };
    if *ended {
        return;
    }
    if !*started {
        // `thread 'name' (tid) panicked at file:line:col:` then the message.
        if line.contains("panicked at") {
            *started = true;
            let location = line.split("panicked at").nth(1).unwrap_or_default();
            failure_mut(binary, test).location =
                Some(location.trim().trim_end_matches(':').to_owned());
        }
        return;
    }
    if line.is_empty()
        || line.starts_with("stack backtrace:")
        || line.starts_with("note: ")
        || line == "failures:"
    {
        *ended = true;
        return;
    }
    // Bounded: a message can be a whole pretty-printed report.
    let message = &mut failure_mut(binary, test).message;
    if message.len() < 400 {
        message.push(line.to_owned());
    }
}

fn failure_mut<'a>(binary: &'a mut BinaryResult, test: &str) -> &'a mut Failure {
    let index = match binary
        .failures
        .iter()
        .position(|failure| failure.test == test)
    {
        Some(index) => index,
        None => {
            binary.failures.push(Failure {
                test: test.to_owned(),
                ..Failure::default()
            });
            binary.failures.len() - 1
        }
    };
    &mut binary.failures[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        let mut names = [
            "linux-image-6.12.99+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.100+deb12-amd64",
        ];
        names.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(names[2], "linux-image-6.12.117+deb12-amd64");
        assert_eq!(
            version_cmp("linux-image-6.1.0-9-amd64", "linux-image-6.1.0-56-amd64"),
            Ordering::Less
        );
        assert_eq!(version_cmp("a-010", "a-10"), Ordering::Equal);
    }

    #[test]
    fn the_serial_log_gives_counts_failures_and_messages() {
        let log = "\
\x1bc\x1b[2JTCPTRACE-VM-KERNEL 6.1.0-56-amd64\r
TCPTRACE-VM-START leaks\r
test a ... ok\r
test b ... FAILED\r
failures:\r
\r
---- b stdout ----\r
some output\r
thread 'b' (77) panicked at tcptrace/tests/leaks.rs:10:5:\r
assertion `left == right` failed: {\r
  \"health\": 3\r
}\r
  left: 1\r
 right: 2\r
stack backtrace:\r
   0: foo\r
\r
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\r
TCPTRACE-VM: leaks exit=101\r
TCPTRACE-VM-START watch\r
test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\r
TCPTRACE-VM: watch exit=0\r
TCPTRACE-VM-START kernel_table\r
";
        let outcome = Outcome::parse(log);
        assert!(outcome.booted && !outcome.done);
        assert_eq!(outcome.finished.len(), 2);
        let leaks = &outcome.finished[0];
        assert_eq!((leaks.exit, leaks.passed, leaks.failed), (Some(101), 1, 1));
        assert_eq!(leaks.failures.len(), 1);
        assert_eq!(
            leaks.failures[0].brief(),
            "at tcptrace/tests/leaks.rs:10:5 | assertion `left == right` failed: { | left: 1 | right: 2"
        );
        assert_eq!(outcome.finished[1].passed, 9);
        assert_eq!(outcome.running.as_ref().unwrap().name, "kernel_table");
        assert!(!outcome.passed());
    }

    #[test]
    fn ldd_lines_name_files() {
        assert_eq!(
            ldd_path("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)"),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(
            ldd_path("\t/lib64/ld-linux-x86-64.so.2 (0x00007f)"),
            Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2"))
        );
        assert_eq!(ldd_path("\tlinux-vdso.so.1 (0x00007ffd)"), None);
    }

    #[test]
    fn copies_never_go_through_the_guests_links() {
        let dir = TempDir::new("tcptrace-vm-copy-test").unwrap();
        let (tree, outside) = (dir.path().join("tree"), dir.path().join("outside"));
        fs::create_dir_all(tree.join("bin")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let (source, host_file) = (dir.path().join("source"), outside.join("file"));
        fs::write(&source, "new").unwrap();
        fs::write(&host_file, "host's").unwrap();
        // An applet-style absolute link, and a directory link out of the tree.
        std::os::unix::fs::symlink(&host_file, tree.join("bin/tool")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("escape")).unwrap();

        copy_file(&tree, &source, Path::new("/bin/tool")).unwrap();
        assert_eq!(fs::read_to_string(&host_file).unwrap(), "host's");
        assert_eq!(fs::read_to_string(tree.join("bin/tool")).unwrap(), "new");
        assert!(copy_file(&tree, &source, Path::new("/escape/file")).is_err());
        assert_eq!(fs::read_to_string(&host_file).unwrap(), "host's");
    }

    #[test]
    fn the_tail_prints_no_terminal_controls() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2JTCPTRACE-VM-KERNEL 6.1\r"),
            "TCPTRACE-VM-KERNEL 6.1"
        );
    }

    #[test]
    fn shell_words_survive_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
