//! The .deb: cargo-deb, from `[package.metadata.deb]` in tcptrace's
//! Cargo.toml, whose assets are the files staged here.

use std::{fs, path::Path, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{PACKAGED_BINARY, TARGET};
use crate::{
    check,
    setup::{self, TempDir},
    step,
};

/// Stages what cargo-deb packages beside the binary (the assets in
/// `[package.metadata.deb]`), in `target/<target>/release/deb`: the
/// repository's unit with ExecStart at the packaged binary (the
/// unit-scripts directory), the man pages gzipped as Debian installs them,
/// and the completions. Returns the staged unit.
pub(super) fn stage(root: &Path, dist: &Path) -> Result<PathBuf> {
    let staging = root.join(format!("target/{TARGET}/release/deb"));
    let unit_dir = staging.join("systemd");
    let man_dir = staging.join("man");
    let completions_dir = staging.join("completions");
    for dir in [&unit_dir, &man_dir, &completions_dir] {
        super::fresh_dir(dir)?;
    }
    let source = root.join("deploy/systemd/tcptrace.service");
    let text =
        fs::read_to_string(&source).with_context(|| format!("reading {}", source.display()))?;
    let by_hand = "ExecStart=/usr/local/bin/tcptrace ";
    if !text.lines().any(|line| line.starts_with(by_hand)) {
        bail!(
            "{} has no `{by_hand}...` line to point at {PACKAGED_BINARY}",
            source.display()
        );
    }
    let packaged = text
        .lines()
        .map(|line| match line.strip_prefix(by_hand) {
            Some(args) => format!("ExecStart={PACKAGED_BINARY} {args}"),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let unit = unit_dir.join("tcptrace.service");
    fs::write(&unit, packaged + "\n").with_context(|| format!("writing {}", unit.display()))?;

    for page in entries(&dist.join("man"))? {
        let gz = man_dir.join(format!("{}.gz", super::file_name(&page)));
        // -n: no name or time stamp inside, so the same page gives the same bytes.
        let out = Command::new("gzip")
            .args(["-9", "-n", "-c"])
            .arg(&page)
            .output()
            .context("starting gzip")?;
        check(out.status, "gzip")?;
        fs::write(&gz, out.stdout).with_context(|| format!("writing {}", gz.display()))?;
    }
    for script in entries(&dist.join("completions"))? {
        let to = completions_dir.join(super::file_name(&script));
        fs::copy(&script, &to).with_context(|| format!("copying to {}", to.display()))?;
    }
    Ok(unit)
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        paths.push(entry?.path());
    }
    paths.sort();
    Ok(paths)
}

/// `dir/tcptrace_<version>_amd64.deb`, holding the binary cargo built for
/// the static target as it is (already stripped by the build, so
/// `--no-strip`): the very bytes of the download.
pub(super) fn deb(
    root: &Path,
    dir: &Path,
    version: &str,
    tools: &setup::DistTools,
) -> Result<PathBuf> {
    step("dist: the .deb (cargo-deb)");
    let deb = dir.join(format!("tcptrace_{version}_amd64.deb"));
    setup::run_checked(
        Command::new(&tools.cargo_deb)
            .current_dir(root)
            .args([
                "deb",
                "--package",
                "tcptrace",
                "--no-build",
                "--no-strip",
                "--target",
                TARGET,
                "--output",
            ])
            .arg(&deb),
    )?;
    drop_empty_depends(&deb)?;
    Ok(deb)
}

/// cargo-deb 3.6.2 writes `Depends:` with nothing after it when no
/// dependency was found (a static binary), which lintian reports as an
/// empty field: the package is unpacked, the line taken out, and the
/// package built again by dpkg-deb, owners root as before.
fn drop_empty_depends(deb: &Path) -> Result<()> {
    let unpacked = TempDir::new("tcptrace-dist-deb")?;
    let tree = unpacked.path().join("tree");
    setup::run_checked(
        Command::new("dpkg-deb")
            .arg("--raw-extract")
            .arg(deb)
            .arg(&tree),
    )?;
    let control_path = tree.join("DEBIAN/control");
    let control = fs::read_to_string(&control_path)
        .with_context(|| format!("reading {}", control_path.display()))?;
    if !control.lines().any(|line| line.trim_end() == "Depends:") {
        return Ok(());
    }
    let kept: String = control
        .lines()
        .filter(|line| line.trim_end() != "Depends:")
        .map(|line| format!("{line}\n"))
        .collect();
    fs::write(&control_path, kept)
        .with_context(|| format!("writing {}", control_path.display()))?;
    setup::run_checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&tree)
            .arg(deb)
            .stdout(std::process::Stdio::null()),
    )
}
