//! Builds the eBPF probe for the bpf target with the nightly toolchain and
//! bpf-linker, so the agent can embed it: one binary to ship.
use anyhow::{Context as _, anyhow};

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
    aya_build::build_ebpf(
        [aya_build::Package {
            name: probe.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
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
