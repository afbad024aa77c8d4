//! The Debian kernels the guests boot, unpacked once, and the modules /init loads from them.

use std::{
    cmp::Ordering,
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    check,
    setup::{self, TempDir},
    step,
};

use super::{MODULES, Series};

pub(super) struct Kernel {
    /// `uname -r` in the guest, e.g. `6.1.0-56-amd64`.
    pub(super) release: String,
    pub(super) vmlinuz: PathBuf,
    /// Where the package is unpacked.
    dir: PathBuf,
}

/// The newest package of the series, unpacked once into
/// `/var/cache/tcptrace/kernels/<package>/` (shared by every checkout, like
/// Prometheus). Never installed: nothing on the host boots it.
pub(super) fn ensure_kernel(series: &Series) -> Result<Kernel> {
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
pub(super) fn kernel_modules(kernel: &Kernel) -> Result<Vec<(String, Vec<u8>)>> {
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
}
