//! The default of an earlier commit, built from git, so that a change's
//! cost is measured against what it replaces in the same alternated cycles
//! (the drift between two separate runs is larger than the difference).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{harness::git, step};

/// An earlier commit's release binary.
pub(super) struct Baseline {
    /// The commit, abbreviated as git does.
    pub(super) commit: String,
    pub(super) tcptrace: PathBuf,
}

/// Exports `revision`'s tree under target/bench-baseline and builds its
/// release tcptrace there (once: a later bench reuses the build).
pub(super) fn build(root: &Path, revision: &str) -> Result<Baseline> {
    let commit = git(
        root,
        &[
            "rev-parse",
            "--short",
            "--verify",
            &format!("{revision}^{{commit}}"),
        ],
    )
    .with_context(|| format!("--baseline {revision}: not a commit of this repository"))?;
    let dir = root.join("target/bench-baseline").join(&commit);
    let tcptrace = dir.join("target/release/tcptrace");
    if !dir.join("Cargo.toml").is_file() {
        step(&format!("bench: exporting {commit} into {}", dir.display()));
        fs::create_dir_all(&dir)?;
        let archive = Command::new("git")
            .args(["archive", "--format=tar", &commit])
            .current_dir(root)
            .stdout(Stdio::piped())
            .spawn()
            .context("running git archive")?;
        let status = Command::new("tar")
            .args(["-x", "-C"])
            .arg(&dir)
            .stdin(archive.stdout.context("git archive's output")?)
            .status()
            .context("running tar")?;
        if !status.success() {
            let _ = fs::remove_dir_all(&dir);
            bail!("unpacking {commit} into {} failed", dir.display());
        }
    }
    step(&format!(
        "bench: building {commit}'s release tcptrace (the baseline)"
    ));
    let status = Command::new("cargo")
        .args(["build", "--release", "--package", "tcptrace"])
        .current_dir(&dir)
        // Its own target directory: the baseline must not reuse this tree's build.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("running cargo build for the baseline")?;
    if !status.success() {
        bail!("building {commit}'s tcptrace failed ({status})");
    }
    Ok(Baseline { commit, tcptrace })
}
