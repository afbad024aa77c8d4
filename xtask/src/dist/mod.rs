//! `cargo xtask dist`: what operators install, in `target/dist/`.
//!
//! - `tcptrace-<version>-x86_64-linux`: the agent linked statically (glibc's
//!   `crt-static`, which keeps the allocator tuning `main` does), with its
//!   `.sha256`;
//! - `tcptrace_<version>_amd64.deb` (cargo-deb): that same binary, the
//!   systemd unit (not enabled), man pages, completions, the alert rules;
//! - `tcptrace-<version>-oci.tar`: an OCI archive of an image `FROM
//!   scratch` holding that binary (umoci, offline);
//! - `man/` and `completions/`, generated from the clap definitions by
//!   the `tcptrace-docs` binary.
//!
//! Every artifact is then checked (`checks.rs`): nothing is called built
//! that has not been opened and run.

mod checks;
mod image;
mod package;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, step};

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Static: glibc's crt-static. The eBPF probe is built for bpf by the
/// build script, whose own cargo this target's flags do not reach.
/// Stripped: the agent never reads its own symbols, and the .deb, the
/// image and the download are then the same bytes, as Debian expects.
const STATIC_RUSTFLAGS: (&str, &str) = (
    "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
    "-C target-feature=+crt-static -C strip=symbols",
);
/// Where the packaged unit finds the binary (the repository's unit names
/// /usr/local/bin, for a copy installed by hand).
const PACKAGED_BINARY: &str = "/usr/bin/tcptrace";

/// What `dist` made, for the checks and for the kernel matrix.
pub struct Dist {
    pub dir: PathBuf,
    pub version: String,
    /// The commit `--version` must name.
    pub commit: String,
    /// Where the image says it comes from: the clone's origin.
    pub source: String,
    pub binary: PathBuf,
    pub deb: PathBuf,
    pub image: PathBuf,
    pub man: PathBuf,
    pub completions: PathBuf,
    /// The unit as packaged (ExecStart at PACKAGED_BINARY).
    pub unit: PathBuf,
}

/// Builds everything into `target/dist` and checks it.
pub fn run(root: &Path) -> Result<Dist> {
    let tools = setup::dist_tools()?;
    let dist = build(root, &tools)?;
    checks::run(&dist, &tools)?;
    step(&format!(
        "dist: {} checked: {}, {}, {}",
        dist.dir.display(),
        file_name(&dist.binary),
        file_name(&dist.deb),
        file_name(&dist.image)
    ));
    Ok(dist)
}

/// Only the static binary (the kernel matrix runs it), checked to be static.
pub fn static_binary(root: &Path) -> Result<PathBuf> {
    let built = build_static(root)?;
    checks::is_static(&built)?;
    Ok(built)
}

fn build(root: &Path, tools: &setup::DistTools) -> Result<Dist> {
    let built = build_static(root)?;
    let dir = root.join("target/dist");
    fresh_dir(&dir)?;
    let version = version_of(&built)?;
    let commit = git_head(root)?;
    let source = git_source(root);

    let binary = dir.join(format!("tcptrace-{version}-x86_64-linux"));
    fs::copy(&built, &binary).with_context(|| format!("copying to {}", binary.display()))?;
    write_sha256(&binary)?;

    step("dist: man pages and completions from the clap definitions");
    setup::run_checked(
        Command::new(root.join(format!("target/{TARGET}/release/tcptrace-docs"))).arg(&dir),
    )?;
    let man = dir.join("man");
    let completions = dir.join("completions");

    let unit = package::stage(root, &dir)?;
    let deb = package::deb(root, &dir, &version, tools)?;
    write_sha256(&deb)?;
    let image = image::build(&dir, &binary, &version, &commit, &source, tools)?;
    Ok(Dist {
        dir,
        version,
        commit,
        source,
        binary,
        deb,
        image,
        man,
        completions,
        unit,
    })
}

/// `target/x86_64-unknown-linux-gnu/release/tcptrace`, linked statically,
/// beside `tcptrace-docs` (one build: the same features, one library).
fn build_static(root: &Path) -> Result<PathBuf> {
    step("dist: building tcptrace statically linked (release, crt-static)");
    setup::run_checked(
        Command::new("cargo")
            .current_dir(root)
            .args([
                "build",
                "--release",
                "--package",
                "tcptrace",
                "--features",
                "docs",
                "--bins",
                "--target",
                TARGET,
            ])
            .env(STATIC_RUSTFLAGS.0, STATIC_RUSTFLAGS.1),
    )?;
    Ok(root.join(format!("target/{TARGET}/release/tcptrace")))
}

/// The version `tcptrace -V` says: "tcptrace 0.1.0".
fn version_of(binary: &Path) -> Result<String> {
    let said = setup::output(Command::new(binary).arg("-V"))?;
    match said.trim().split_once(' ') {
        Some(("tcptrace", version)) if !version.is_empty() => Ok(version.to_owned()),
        _ => bail!(
            "{} -V said {said:?}, not `tcptrace VERSION`",
            binary.display()
        ),
    }
}

fn git_head(root: &Path) -> Result<String> {
    Ok(setup::output(
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["rev-parse", "HEAD"]),
    )?
    .trim()
    .to_owned())
}

/// The origin this clone was made from; a clone with none says so rather
/// than name a repository it may not be.
fn git_source(root: &Path) -> String {
    setup::output(Command::new("git").arg("-C").arg(root).args([
        "config",
        "--get",
        "remote.origin.url",
    ]))
    .map(|url| url.trim().to_owned())
    .ok()
    .filter(|url| !url.is_empty())
    .unwrap_or_else(|| "unknown (built from a clone with no origin)".to_owned())
}

/// `NAME.sha256`, in the format `sha256sum -c` reads, beside `path`.
fn write_sha256(path: &Path) -> Result<()> {
    let dir = path.parent().context("a file in a directory")?;
    let said = setup::output(
        Command::new("sha256sum")
            .current_dir(dir)
            .arg(file_name(path)),
    )?;
    let sums = PathBuf::from(format!("{}.sha256", path.display()));
    fs::write(&sums, said).with_context(|| format!("writing {}", sums.display()))
}

/// `dir`, emptied of what an earlier run left, or made.
fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}
