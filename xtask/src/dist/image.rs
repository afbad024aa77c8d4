//! The OCI image: `FROM scratch`, the static binary, labels; built offline
//! with umoci (no daemon, no registry) into an OCI archive that `podman
//! load` and `docker load` take.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{PACKAGED_BINARY, file_name};
use crate::{
    setup::{self, TempDir},
    step,
};

/// `dir/tcptrace-<version>-oci.tar`, tagged `<version>`.
pub(super) fn build(
    dir: &Path,
    binary: &Path,
    version: &str,
    commit: &str,
    source: &str,
    tools: &setup::DistTools,
) -> Result<PathBuf> {
    step("dist: the OCI image (umoci, FROM scratch)");
    let work = TempDir::new("tcptrace-dist-image")?;
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let image = format!("{}:{version}", layout.display());
    let umoci = |args: &[&str]| setup::run_checked(Command::new(&tools.umoci).args(args));
    let layout_arg = layout.to_string_lossy().into_owned();
    let bundle_arg = bundle.to_string_lossy().into_owned();
    umoci(&["init", "--layout", &layout_arg])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, &bundle_arg])?;
    let in_image = bundle
        .join("rootfs")
        .join(PACKAGED_BINARY.trim_start_matches('/'));
    fs::create_dir_all(in_image.parent().context("a binary in a directory")?)
        .context("creating the image's /usr/bin")?;
    fs::copy(binary, &in_image).with_context(|| format!("copying to {}", in_image.display()))?;
    umoci(&["repack", "--image", &image, &bundle_arg])?;
    let labels = [
        format!("org.opencontainers.image.version={version}"),
        format!("org.opencontainers.image.source={source}"),
        format!("org.opencontainers.image.revision={commit}"),
        "org.opencontainers.image.title=tcptrace".to_owned(),
        "org.opencontainers.image.licenses=MIT OR Apache-2.0".to_owned(),
    ];
    let mut config = vec![
        "config".to_owned(),
        "--image".to_owned(),
        image.clone(),
        "--os".to_owned(),
        "linux".to_owned(),
        "--architecture".to_owned(),
        "amd64".to_owned(),
        format!("--config.entrypoint={PACKAGED_BINARY}"),
        // In a pod the default loopback address is unreachable from
        // Prometheus; the DaemonSet says the same in its args.
        "--config.cmd=serve".to_owned(),
        "--config.cmd=--listen".to_owned(),
        "--config.cmd=0.0.0.0:9464".to_owned(),
        "--config.exposedports=9464/tcp".to_owned(),
    ];
    for label in &labels {
        config.push(format!("--config.label={label}"));
        // Also on the manifest, where registries show them.
        config.push(format!("--manifest.annotation={label}"));
    }
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    umoci(&config)?;
    // Unreferenced blobs (the empty image's) out, so the archive holds one layer.
    umoci(&["gc", "--layout", &layout_arg])?;

    // An OCI archive is the layout directory as a tar.
    let archive = dir.join(format!("tcptrace-{version}-oci.tar"));
    setup::run_checked(
        Command::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(&archive)
            .arg("--directory")
            .arg(&layout)
            .args(["--owner=0", "--group=0", "--numeric-owner", "."]),
    )?;
    super::write_sha256(&archive)?;
    step(&format!("dist: {} tagged {version}", file_name(&archive)));
    Ok(archive)
}
