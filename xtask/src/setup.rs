//! Installs the eBPF toolchain, checking real artifacts (binaries that run,
//! components rustup lists), never marker files. Each step says what it finds
//! and what it does; a second run installs nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{as_root, check, step};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM versions bpf-linker 0.13 has a feature for.
const BPF_LINKER_LLVM_MAJORS: [u32; 3] = [21, 22, 23];
const NIGHTLY: &str = "nightly";

pub fn run() -> Result<()> {
    let llvm_major = nightly_llvm_major()?;
    if !BPF_LINKER_LLVM_MAJORS.contains(&llvm_major) {
        bail!(
            "the {NIGHTLY} toolchain uses LLVM {llvm_major}, but bpf-linker {BPF_LINKER_VERSION} \
             supports only LLVM {BPF_LINKER_LLVM_MAJORS:?}: install a nightly built with one of those"
        );
    }
    ensure_rust_src()?;
    ensure_llvm_dev(llvm_major)?;
    ensure_bpf_linker(llvm_major)?;
    Ok(())
}

fn output(command: &mut Command) -> Result<String> {
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
    if !apt_has_candidate(&package) {
        step("setup: apt-get update (the package lists do not offer it yet)");
        let status = as_root("apt-get")
            .args(["update", "-q"])
            .status()
            .context("starting apt-get update")?;
        check(status, "apt-get update")?;
    }
    let status = as_root("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends", &package])
        .status()
        .context("starting apt-get install")?;
    check(status, &format!("apt-get install {package}"))?;
    if !has_dev_files(&llvm_config) {
        bail!(
            "{package} is installed but {} does not work",
            llvm_config.display()
        );
    }
    Ok(())
}

fn apt_has_candidate(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .is_ok_and(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .find_map(|line| line.trim().strip_prefix("Candidate:"))
                .is_some_and(|candidate| candidate.trim() != "(none)")
        })
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
