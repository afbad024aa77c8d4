//! Builds the eBPF probe for the bpf target with the nightly toolchain and
//! bpf-linker, so the agent can embed it: one binary to ship. Also names
//! what was built, for `tcptrace --version`: the commit, and the probe
//! object's build id (the first 16 hex digits of its SHA-256).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};
use sha2::{Digest as _, Sha256};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let probe = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == "tcptrace-ebpf")
        .ok_or_else(|| anyhow!("tcptrace-ebpf is not in the workspace"))?;
    let root_dir = probe
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", probe.manifest_path))?;
    which_or_hint("bpf-linker")?;
    // aya-build forwards every line the inner cargo writes on stderr as a
    // build warning: its progress ("Compiling core ...") would read as 35
    // warnings on a clean build. Quiet, the inner cargo writes only what
    // needs reading (an error); the probe's own compiler warnings come
    // through its JSON messages and are still shown.
    // SAFETY: the build script has started no thread yet.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: probe.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    let object = out_dir.join("tcptrace");
    let bytes = std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let digest = Sha256::digest(&bytes);
    let build_id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=TCPTRACE_PROBE_BUILD_ID={build_id}");
    println!(
        "cargo:rustc-env=TCPTRACE_GIT_COMMIT={}",
        git_commit(metadata.workspace_root.as_std_path())
    );
    Ok(())
}

/// HEAD's commit, or why there is none (a source tarball, no git). The
/// build script reruns when HEAD or the branch it names moves; it cannot
/// tell edits not yet committed, so it never claims a clean tree.
fn git_commit(workspace: &Path) -> String {
    println!("cargo:rerun-if-env-changed=TCPTRACE_GIT_COMMIT");
    if let Some(commit) = std::env::var_os("TCPTRACE_GIT_COMMIT") {
        return commit.to_string_lossy().into_owned();
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return "unknown (not built from a git checkout)".to_owned();
    };
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = PathBuf::from(dir);
        let mut watched = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(dir.join(branch));
        }
        // A path that does not exist would make cargo rerun this script
        // (and the probe's build) every time.
        for path in watched.iter().filter(|path| path.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    commit
}

fn which_or_hint(tool: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(anyhow!(
            "{tool} is not installed: run `cargo xtask setup` (installs the eBPF toolchain)"
        ))
    }
}
