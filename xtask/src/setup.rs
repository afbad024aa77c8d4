//! Installs the eBPF toolchain, the Prometheus binaries and the language
//! runtimes the tests use, checking real artifacts (binaries that run, components rustup lists), never
//! marker files. Each step says what it finds and what it does; a second run
//! installs nothing.

use std::{
    ffi::OsStr,
    fs::DirBuilder,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{as_root, check, step};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM versions bpf-linker 0.13 has a feature for.
const BPF_LINKER_LLVM_MAJORS: [u32; 3] = [21, 22, 23];
const NIGHTLY: &str = "nightly";

/// What later tasks need to be told about (the toolchain is found on its own).
pub struct Installed {
    pub prometheus: Prometheus,
}

/// Everything: what building needs, then what the tests, the bench and
/// `dist` use.
pub fn run() -> Result<Installed> {
    build_tools()?;
    ensure_bpftrace()?;
    let prometheus = ensure_prometheus()?;
    ensure_go()?;
    ensure_mono()?;
    ensure_chromium()?;
    dist_tools()?;
    check_test_runtimes();
    Ok(Installed { prometheus })
}

/// Only what building and running tcptrace need (`cargo xtask run`): the
/// nightly's rust-src, LLVM's development files and bpf-linker. No test
/// runtime, browser or packaging tool.
pub fn build_tools() -> Result<()> {
    let llvm_major = nightly_llvm_major()?;
    if !BPF_LINKER_LLVM_MAJORS.contains(&llvm_major) {
        bail!(
            "the {NIGHTLY} toolchain uses LLVM {llvm_major}, but bpf-linker {BPF_LINKER_VERSION} \
             supports only LLVM {BPF_LINKER_LLVM_MAJORS:?}: install a nightly built with one of those"
        );
    }
    ensure_rust_src()?;
    ensure_llvm_dev(llvm_major)?;
    ensure_bpf_linker(llvm_major)
}

/// What `cargo xtask dist` makes its artifacts with and checks them with.
pub struct DistTools {
    pub cargo_deb: PathBuf,
    pub umoci: PathBuf,
    pub skopeo: PathBuf,
    pub lintian: PathBuf,
    pub zsh: PathBuf,
    pub fish: PathBuf,
}

const CARGO_DEB_VERSION: &str = "3.6.2";

/// Debian's packages that make and check the artifacts, each found by a
/// program that must run: (package, program, its version argument).
const DIST_PACKAGES: [(&str, &str, &str); 9] = [
    ("umoci", "/usr/bin/umoci", "--version"),
    ("skopeo", "/usr/bin/skopeo", "--version"),
    ("lintian", "/usr/bin/lintian", "--version"),
    ("zsh", "/usr/bin/zsh", "--version"),
    ("fish", "/usr/bin/fish", "--version"),
    ("man-db", "/usr/bin/man", "--version"),
    ("groff-base", "/usr/bin/groff", "--version"),
    // Static (the package the kernel matrix uses too; Debian's dynamic
    // `busybox` conflicts with it): the scratch root's /bin/sh for the
    // package's scripts, which run there with no libraries.
    ("busybox-static", "/bin/busybox", "--help"),
    // systemd-analyze verifies the packaged unit.
    ("systemd", "/usr/bin/systemd-analyze", "--version"),
];

pub fn dist_tools() -> Result<DistTools> {
    // Each program's first line, or None where it does not run.
    let probe = || {
        DIST_PACKAGES.map(|(_, program, arg)| {
            output(Command::new(program).arg(arg))
                .ok()
                .map(|said| said.lines().next().unwrap_or_default().trim().to_owned())
        })
    };
    let mut said = probe();
    let missing: Vec<&str> = DIST_PACKAGES
        .iter()
        .zip(&said)
        .filter(|(_, said)| said.is_none())
        .map(|((package, ..), _)| *package)
        .collect();
    if !missing.is_empty() {
        step(&format!(
            "setup: {}: missing, installing with apt-get (cargo xtask dist makes and checks the packages with them)",
            missing.join(", ")
        ));
        apt_install(&missing)?;
        said = probe();
    }
    for ((package, program, arg), said) in DIST_PACKAGES.iter().zip(said) {
        match said {
            Some(said) => step(&format!("setup: {package}: present ({said})")),
            None => bail!("{package} is installed but `{program} {arg}` fails"),
        }
    }
    let cargo_deb = cargo_bin_dir().join("cargo-deb");
    let version = || output(Command::new(&cargo_deb).arg("--version")).ok();
    match version() {
        Some(said) if said.contains(CARGO_DEB_VERSION) => {
            step(&format!("setup: cargo-deb: present ({})", said.trim()));
        }
        _ => {
            step(&format!(
                "setup: cargo-deb {CARGO_DEB_VERSION}: missing, installing with cargo install (cargo xtask dist makes the .deb with it)"
            ));
            let status = Command::new("cargo")
                .args(["install", "--locked", "--quiet", "cargo-deb", "--version"])
                .arg(format!("={CARGO_DEB_VERSION}"))
                .status()
                .context("starting cargo install cargo-deb")?;
            check(status, "cargo install cargo-deb")?;
            version().context("cargo-deb is installed but `cargo-deb --version` fails")?;
        }
    }
    Ok(DistTools {
        cargo_deb,
        umoci: PathBuf::from(DIST_PACKAGES[0].1),
        skopeo: PathBuf::from(DIST_PACKAGES[1].1),
        lintian: PathBuf::from(DIST_PACKAGES[2].1),
        zsh: PathBuf::from(DIST_PACKAGES[3].1),
        fish: PathBuf::from(DIST_PACKAGES[4].1),
    })
}

/// Runs `command` with its output on the terminal; a failure names it.
pub(crate) fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    check(status, &format!("{command:?}"))
}

pub(crate) fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_llvm_major() -> Result<u32> {
    let version = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"])).context(
        "no usable nightly toolchain: the eBPF probe is built with the machine's nightly \
         (`rustup toolchain install nightly` on a machine without one)",
    )?;
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.trim().parse().ok())
        .context("`rustc +nightly -vV` does not say its LLVM version")?;
    step(&format!("setup: {NIGHTLY} toolchain uses LLVM {major}"));
    Ok(major)
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        step(&format!("setup: rust-src for {NIGHTLY}: present"));
        return Ok(());
    }
    step(&format!(
        "setup: rust-src for {NIGHTLY}: missing, installing (needed to build core for bpf)"
    ));
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
        .status()
        .context("starting rustup")?;
    check(status, "rustup component add rust-src")
}

fn llvm_prefix(major: u32) -> PathBuf {
    PathBuf::from(format!("/usr/lib/llvm-{major}"))
}

fn ensure_llvm_dev(major: u32) -> Result<()> {
    let package = format!("llvm-{major}-dev");
    let llvm_config = llvm_prefix(major).join("bin/llvm-config");
    let has_dev_files = |config: &Path| {
        Command::new(config)
            .arg("--version")
            .output()
            .is_ok_and(|out| {
                out.status.success()
                    && String::from_utf8_lossy(&out.stdout).starts_with(&format!("{major}."))
            })
            && llvm_prefix(major).join("include/llvm-c/Core.h").is_file()
    };
    if has_dev_files(&llvm_config) {
        step(&format!("setup: {package}: present"));
        return Ok(());
    }
    step(&format!(
        "setup: {package}: missing, installing with apt-get (bpf-linker links against it)"
    ));
    apt_install(&[&package])?;
    if !has_dev_files(&llvm_config) {
        bail!(
            "{package} is installed but {} does not work",
            llvm_config.display()
        );
    }
    Ok(())
}

/// The bench's peer rows: what a user would otherwise run (no test uses it).
fn ensure_bpftrace() -> Result<()> {
    let runs = || output(Command::new("bpftrace").arg("--version")).ok();
    if let Some(version) = runs() {
        step(&format!("setup: bpftrace: present ({})", version.trim()));
        return Ok(());
    }
    step("setup: bpftrace: missing, installing with apt-get (the bench's peer rows)");
    apt_install(&["bpftrace"])?;
    runs()
        .map(|_| ())
        .context("bpftrace is installed but `bpftrace --version` fails")
}

/// `apt-get install --no-install-recommends`, after `apt-get update` only if
/// the package lists do not offer one of them yet.
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if packages
        .iter()
        .any(|package| apt_candidate(package).is_none())
    {
        step(&format!(
            "apt-get update (the package lists do not offer all of {} yet)",
            packages.join(" ")
        ));
        apt_update()?;
    }
    let status = as_root("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .status()
        .context("starting apt-get install")?;
    check(status, &format!("apt-get install {}", packages.join(" ")))
}

pub(crate) fn apt_update() -> Result<()> {
    let status = as_root("apt-get")
        .args(["update", "-q"])
        .status()
        .context("starting apt-get update")?;
    check(status, "apt-get update")
}

/// The version apt would install, if its package lists offer one.
fn apt_candidate(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|candidate| !candidate.is_empty() && *candidate != "(none)")
        .map(str::to_owned)
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// The installed bpf-linker, if it runs, is the pinned version, and links
/// the LLVM the nightly uses.
fn bpf_linker_matches(llvm_major: u32) -> Option<PathBuf> {
    let linker = cargo_bin_dir().join("bpf-linker");
    let version = output(Command::new(&linker).arg("--version")).ok()?;
    if version.trim() != format!("bpf-linker {BPF_LINKER_VERSION}") {
        step(&format!(
            "setup: bpf-linker: found `{}`, want {BPF_LINKER_VERSION}",
            version.trim()
        ));
        return None;
    }
    let libraries = output(Command::new("ldd").arg(&linker)).ok()?;
    if !libraries.contains(&format!("libLLVM.so.{llvm_major}"))
        && !libraries.contains(&format!("libLLVM-{llvm_major}"))
    {
        step(&format!(
            "setup: bpf-linker: not linked against LLVM {llvm_major}"
        ));
        return None;
    }
    Some(linker)
}

fn ensure_bpf_linker(llvm_major: u32) -> Result<()> {
    if let Some(linker) = bpf_linker_matches(llvm_major) {
        step(&format!(
            "setup: bpf-linker {BPF_LINKER_VERSION} (LLVM {llvm_major}): present at {}",
            linker.display()
        ));
        return Ok(());
    }
    step(&format!(
        "setup: bpf-linker {BPF_LINKER_VERSION}: installing with cargo, built against LLVM {llvm_major} (takes a few minutes)"
    ));
    let prefix = llvm_prefix(llvm_major);
    // The system llvm-config may be another LLVM: always name the prefix.
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            "--force",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env(format!("LLVM_SYS_{llvm_major}1_PREFIX"), &prefix)
        .status()
        .context("starting cargo install")?;
    check(status, "cargo install bpf-linker")?;
    bpf_linker_matches(llvm_major)
        .map(|_| ())
        .context("bpf-linker was installed but does not run or links the wrong LLVM")
}

/// Where tests/code_paths.rs finds Go: Debian's `golang-go`.
const GO: &str = "/usr/bin/go";

/// Go builds one of the leaky servers of tests/code_paths.rs.
fn ensure_go() -> Result<()> {
    let version = || output(Command::new(GO).arg("version")).ok();
    if let Some(version) = version() {
        step(&format!("setup: go: present ({})", version.trim()));
        return Ok(());
    }
    step(
        "setup: golang-go: missing, installing with apt-get (tests/code_paths.rs builds a Go server)",
    );
    apt_install(&["golang-go"])?;
    version()
        .map(|_| ())
        .with_context(|| format!("golang-go is installed but `{GO} version` fails"))
}

/// Where tests/code_paths.rs finds Mono: Debian's `mono-runtime` (`mono`
/// is `mono-sgen`), `mono-mcs` (the C# compiler) and `mono-runtime-dbg`
/// (the symbols that name Mono's own frames, a stripped binary's).
const MONO: &str = "/usr/bin/mono";
const MCS: &str = "/usr/bin/mcs";
const MONO_SYMBOLS: &str = "/usr/lib/debug/usr/bin/mono-sgen";

/// Mono runs tests/code_paths.rs's C# server.
fn ensure_mono() -> Result<()> {
    let version = || {
        let mono = output(Command::new(MONO).arg("--version")).ok()?;
        output(Command::new(MCS).arg("--version")).ok()?;
        Path::new(MONO_SYMBOLS).is_file().then_some(mono)
    };
    if let Some(version) = version() {
        step(&format!(
            "setup: mono: present ({})",
            version.lines().next().unwrap_or_default().trim()
        ));
        return Ok(());
    }
    step(
        "setup: mono-runtime, mono-mcs, mono-runtime-dbg: missing, installing with apt-get (tests/code_paths.rs runs a C# server)",
    );
    apt_install(&["mono-runtime", "mono-mcs", "mono-runtime-dbg"])?;
    version().map(|_| ()).with_context(|| {
        format!(
            "mono is installed but `{MONO} --version`, `{MCS} --version` or {MONO_SYMBOLS} fails"
        )
    })
}

/// Where tests/page.rs finds the browser: Debian's `chromium`.
const CHROMIUM: &str = "/usr/bin/chromium";

/// tests/page.rs renders serve's page in a real browser. Run as root with
/// `--no-sandbox`, so `chromium-sandbox` is not needed; DejaVu so the
/// screenshot has text where an image has no other font.
fn ensure_chromium() -> Result<()> {
    let version = || output(Command::new(CHROMIUM).arg("--version")).ok();
    if let Some(version) = version() {
        step(&format!("setup: chromium: present ({})", version.trim()));
        return Ok(());
    }
    step("setup: chromium: missing, installing with apt-get (tests/page.rs renders serve's page)");
    apt_install(&["chromium", "fonts-dejavu-core"])?;
    version()
        .map(|_| ())
        .with_context(|| format!("chromium is installed but `{CHROMIUM} --version` fails"))
}

/// The runtimes tests/code_paths.rs and tests/origin_paths.rs run their
/// leaky programs in, at the paths they use (tests find a pyenv Python by
/// its minor version), with the version each must report. Python 3.8 is
/// the version whose frames tcptrace does not read, for its note. Debian
/// has none of these Pythons or Node 20 to install, and the image has all
/// of them, so a missing one is said, not installed, and only its tests
/// fail.
const TEST_RUNTIMES: [(&str, &[&str], &str); 9] = [
    (
        "/root/.pyenv/versions/3.8.18/bin/python3.8",
        &["--version"],
        "Python 3.8",
    ),
    (
        "/root/.pyenv/versions/3.9.18/bin/python3.9",
        &["--version"],
        "Python 3.9",
    ),
    (
        "/root/.pyenv/versions/3.10.13/bin/python3.10",
        &["--version"],
        "Python 3.10",
    ),
    (
        "/root/.pyenv/versions/3.11.7/bin/python3.11",
        &["--version"],
        "Python 3.11",
    ),
    (
        "/root/.pyenv/versions/3.12.1/bin/python3.12",
        &["--version"],
        "Python 3.12",
    ),
    (
        "/root/.pyenv/versions/3.13.0/bin/python3.13",
        &["--version"],
        "Python 3.13",
    ),
    (
        "/usr/lib/jvm/java-17-openjdk-amd64/bin/javac",
        &["-version"],
        "javac 17",
    ),
    (
        // -J passes -version to the JVM jcmd runs in: jcmd has no version
        // option of its own.
        "/usr/lib/jvm/java-17-openjdk-amd64/bin/jcmd",
        &["-J-version"],
        "version \"17.",
    ),
    ("node", &["--version"], "v20."),
];

fn check_test_runtimes() {
    for (program, args, version) in TEST_RUNTIMES {
        let said = Command::new(program).args(args).output().map(|out| {
            // javac and jcmd write their version and usage on stderr.
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            text
        });
        match said {
            Ok(text) if text.contains(version) => {
                // The line that says the version, not the pattern looked for.
                let line = text
                    .lines()
                    .find(|line| line.contains(version))
                    .unwrap_or_default();
                step(&format!("setup: {program}: present ({})", line.trim()));
            }
            Ok(text) => step(&format!(
                "setup: {program}: says {:?}, not {version}: tests/code_paths.rs will fail for it",
                text.lines().next().unwrap_or_default()
            )),
            Err(e) => step(&format!(
                "setup: {program} ({version}): missing ({e}): tests/code_paths.rs will fail for it; \
                 install it there (pyenv for Python, NodeSource for Node 20, openjdk-17-jdk-headless for Java)"
            )),
        }
    }
}

/// Outside the clone: every checkout shares one copy, and `cargo clean` or
/// `git clean` leaves it alone.
pub(crate) const CACHE: &str = "/var/cache/tcptrace";
const PROMETHEUS_PACKAGE: &str = "prometheus";

/// A private Prometheus server and promtool for the tests, unpacked from
/// Debian's package, which is never installed (no service, no user, no
/// maintainer scripts).
pub struct Prometheus {
    pub server: PathBuf,
    pub promtool: PathBuf,
}

impl Prometheus {
    fn in_dir(dir: &Path) -> Self {
        let bin = dir.join("usr/bin");
        Self {
            server: bin.join("prometheus"),
            promtool: bin.join("promtool"),
        }
    }

    fn runs(&self) -> bool {
        [&self.server, &self.promtool].into_iter().all(|binary| {
            Command::new(binary)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        })
    }
}

/// Makes sure `prometheus` and `promtool` run from
/// `/var/cache/tcptrace/prometheus-<Debian version>/usr/bin`, and returns their
/// paths. Any version unpacked there will do; only when none runs is apt asked
/// for the one it offers (`rm -rf /var/cache/tcptrace` to fetch a newer one).
pub fn ensure_prometheus() -> Result<Prometheus> {
    let cache = Path::new(CACHE);
    let prefix = format!("{PROMETHEUS_PACKAGE}-");
    // apt-cache alone takes most of a second where its cache is disabled (as
    // in container images): not asked when a copy is already there.
    if let Some(dir) = cached_prometheus(cache)
        .into_iter()
        .rev()
        .find(|dir| Prometheus::in_dir(dir).runs())
    {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        step(&format!(
            "setup: prometheus {}: present in {}",
            name.strip_prefix(&prefix).unwrap_or(&name),
            dir.display()
        ));
        return Ok(Prometheus::in_dir(&dir));
    }
    let version = match apt_candidate(PROMETHEUS_PACKAGE) {
        Some(version) => version,
        None => {
            step("setup: apt-get update (the package lists do not offer prometheus yet)");
            apt_update()?;
            apt_candidate(PROMETHEUS_PACKAGE).context(
                "apt offers no prometheus package even after apt-get update \
                 (Debian 12 has it in main)",
            )?
        }
    };
    let dir = cache.join(format!("{prefix}{version}"));
    let prometheus = Prometheus::in_dir(&dir);
    step(&format!(
        "setup: prometheus {version}: missing, unpacking Debian's package into {} \
         (the tests run their own server and promtool; the package is not installed)",
        dir.display()
    ));
    let download = TempDir::new("tcptrace-prometheus")?;
    let deb = apt_download(&format!("{PROMETHEUS_PACKAGE}={version}"), download.path())?;
    unpack_deb(&deb, &dir)?;
    if !prometheus.runs() {
        bail!(
            "unpacked {PROMETHEUS_PACKAGE} {version}, but `{} --version` or `{} --version` fails",
            prometheus.server.display(),
            prometheus.promtool.display()
        );
    }
    // One version in the cache: the tests find it by themselves when run
    // without xtask.
    for old in cached_prometheus(cache) {
        if old != dir {
            step(&format!(
                "setup: removing {}, which does not run",
                old.display()
            ));
            root_does("rm", [OsStr::new("-rf"), old.as_os_str()])?;
        }
    }
    Ok(prometheus)
}

/// `apt-get download PACKAGE[=VERSION]` into `dir`; returns the .deb.
pub(crate) fn apt_download(package: &str, dir: &Path) -> Result<PathBuf> {
    let status = Command::new("apt-get")
        .current_dir(dir)
        // As root, apt downloads as user _apt, who cannot write into a private
        // temporary directory; it would fall back to root with a warning.
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
        .status()
        .context("starting apt-get download")?;
    check(status, &format!("apt-get download {package}"))?;
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension() == Some(OsStr::new("deb")))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))
}

/// `dpkg -x` into `dir` (in the root-owned cache), replacing what was there.
/// Unpacked beside its final place, then renamed: a half-unpacked copy never
/// has the name its users look for.
pub(crate) fn unpack_deb(deb: &Path, dir: &Path) -> Result<()> {
    let parent = dir
        .parent()
        .with_context(|| format!("{} has no parent directory", dir.display()))?;
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no file name", dir.display()))?;
    let staging = parent.join(format!(".{}.partial", name.to_string_lossy()));
    root_does("mkdir", [OsStr::new("-p"), parent.as_os_str()])?;
    root_does(
        "rm",
        [OsStr::new("-rf"), staging.as_os_str(), dir.as_os_str()],
    )?;
    root_does(
        "dpkg",
        [OsStr::new("-x"), deb.as_os_str(), staging.as_os_str()],
    )?;
    root_does(
        "mv",
        [OsStr::new("-T"), staging.as_os_str(), dir.as_os_str()],
    )
}

/// The unpacked `prometheus-<version>` directories, sorted.
fn cached_prometheus(cache: &Path) -> Vec<PathBuf> {
    let prefix = format!("{PROMETHEUS_PACKAGE}-");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Runs a command that changes the cache, which belongs to root.
fn root_does<'a>(program: &str, args: impl IntoIterator<Item = &'a OsStr>) -> Result<()> {
    let mut command = as_root(program);
    command.args(args);
    let status = command.status().with_context(|| {
        format!("starting {command:?} ({CACHE} needs root: run as root or with sudo)")
    })?;
    check(status, &format!("{command:?}"))
}

/// A private directory under the temporary directory, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        // Left by an earlier process that had the same pid.
        let _ = std::fs::remove_dir_all(&path);
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
