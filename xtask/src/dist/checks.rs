//! Each artifact opened and used as its user would: the binary run, the
//! .deb read, installed and purged, the unit verified, the image unpacked
//! and its entrypoint run, the man pages rendered, the bash completion
//! asked to complete. Any failure fails `dist` (and `cargo xtask test`).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{Dist, PACKAGED_BINARY, file_name};
use crate::{
    setup::{self, TempDir},
    shell_quote, step,
};

/// The subcommands, each with a man page of its own.
const SUBCOMMANDS: [&str; 4] = ["leaks", "watch", "top", "serve"];

pub(super) fn run(dist: &Dist, tools: &setup::DistTools) -> Result<()> {
    is_static(&dist.binary)?;
    says_its_version(&dist.binary, dist)?;
    sums_verify(&dist.dir, &[&dist.binary, &dist.deb, &dist.image])?;
    deb_fields(&dist.deb)?;
    deb_contents(&dist.deb)?;
    let scratch = TempDir::new("tcptrace-dist-check")?;
    deb_installs_and_purges(dist, scratch.path())?;
    unit_verifies(&dist.unit, &dist.binary, scratch.path())?;
    lintian_clean(&dist.deb, tools)?;
    image_runs(dist, tools, scratch.path())?;
    man_pages_render(dist)?;
    completions_complete(dist, tools)?;
    Ok(())
}

/// No interpreter, no shared library: `ldd` has nothing to list.
pub(super) fn is_static(binary: &Path) -> Result<()> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("starting ldd")?;
    let said = text(&out);
    ensure!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "{} is not static: ldd says {said:?}",
        binary.display()
    );
    step(&format!(
        "dist check: {} is static (ldd: {})",
        file_name(binary),
        said.trim()
    ));
    Ok(())
}

fn says_its_version(binary: &Path, dist: &Dist) -> Result<()> {
    let said = setup::output(Command::new(binary).arg("--version"))?;
    let lines: Vec<&str> = said.lines().collect();
    let expected_first = format!("tcptrace {}", dist.version);
    let expected_commit = format!("commit {}", dist.commit);
    ensure!(
        lines.first() == Some(&expected_first.as_str())
            && lines.get(1) == Some(&expected_commit.as_str()),
        "`{} --version` said {said:?}, not `{expected_first}` then `{expected_commit}`",
        binary.display()
    );
    let id = lines
        .get(2)
        .and_then(|line| line.strip_prefix("probe build id "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    ensure!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "`--version` names no probe build id: {said:?}"
    );
    step(&format!(
        "dist check: --version names {} and probe {id}",
        dist.commit
    ));
    Ok(())
}

fn sums_verify(dir: &Path, deliverables: &[&Path]) -> Result<()> {
    for file in deliverables {
        let sums = PathBuf::from(format!("{}.sha256", file.display()));
        ensure!(
            sums.is_file(),
            "{} has no .sha256 beside it",
            file.display()
        );
    }
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sha256") {
            setup::output(
                Command::new("sha256sum")
                    .current_dir(dir)
                    .arg("--check")
                    .arg("--strict")
                    .arg(file_name(&path)),
            )?;
        }
    }
    step(
        "dist check: the binary, the .deb and the image each have a .sha256, and every one verifies",
    );
    Ok(())
}

fn deb_fields(deb: &Path) -> Result<()> {
    let info = setup::output(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.trim_start().strip_prefix(&format!("{name}: ")))
            .map(str::trim)
    };
    ensure!(field("Package") == Some("tcptrace"), "Package: {info}");
    ensure!(
        field("Architecture") == Some("amd64"),
        "Architecture: {info}"
    );
    // Static: no library to depend on. systemd is not required (the unit
    // is there for hosts that have it).
    ensure!(
        field("Depends").is_none() && field("Pre-Depends").is_none(),
        "a static binary's package depends on nothing, but: {info}"
    );
    step("dist check: the .deb's control fields (no Depends: the binary is static)");
    Ok(())
}

/// Path -> (mode, owner) of what the .deb holds.
fn deb_files(deb: &Path) -> Result<BTreeMap<String, (String, String)>> {
    let listing = setup::output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [mode, owner, _size, _date, _time, path, ..] = fields[..] {
            let path = path.trim_start_matches('.').to_owned();
            files.insert(path, (mode.to_owned(), owner.to_owned()));
        }
    }
    Ok(files)
}

/// The paths the package must hold, with their modes.
fn expected_files() -> Vec<(String, &'static str)> {
    let mut files = vec![
        (PACKAGED_BINARY.to_owned(), "-rwxr-xr-x"),
        (
            "/usr/share/bash-completion/completions/tcptrace".to_owned(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/zsh/vendor-completions/_tcptrace".to_owned(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/fish/vendor_completions.d/tcptrace.fish".to_owned(),
            "-rw-r--r--",
        ),
        ("/usr/share/tcptrace/alerts.yaml".to_owned(), "-rw-r--r--"),
        ("/usr/share/doc/tcptrace/copyright".to_owned(), "-rw-r--r--"),
        ("/usr/share/man/man1/tcptrace.1.gz".to_owned(), "-rw-r--r--"),
    ];
    for sub in SUBCOMMANDS {
        files.push((
            format!("/usr/share/man/man1/tcptrace-{sub}.1.gz"),
            "-rw-r--r--",
        ));
    }
    files
}

/// dpkg-deb shows names where the archive has them, else numbers.
fn is_root_owned(owner: &str) -> bool {
    owner == "root/root" || owner == "0/0"
}

/// Where the unit lands depends on cargo-deb's layout; either is where
/// systemd looks on Debian.
const UNIT_PATHS: [&str; 2] = [
    "/usr/lib/systemd/system/tcptrace.service",
    "/lib/systemd/system/tcptrace.service",
];

fn deb_contents(deb: &Path) -> Result<()> {
    let files = deb_files(deb)?;
    for (path, mode) in expected_files() {
        let Some((found, owner)) = files.get(&path) else {
            bail!("the .deb lacks {path}; it holds {:?}", files.keys());
        };
        ensure!(found == mode, "{path} is {found} in the .deb, not {mode}");
        ensure!(is_root_owned(owner), "{path} is owned by {owner}, not root");
    }
    let unit = UNIT_PATHS
        .iter()
        .find(|path| files.contains_key(**path))
        .with_context(|| format!("the .deb holds no unit at {UNIT_PATHS:?}"))?;
    ensure!(
        files[*unit].0 == "-rw-r--r--",
        "{unit} is {} in the .deb",
        files[*unit].0
    );
    for (path, (mode, owner)) in &files {
        ensure!(is_root_owned(owner), "{path} is owned by {owner}");
        let bits: Vec<char> = mode.chars().collect();
        ensure!(
            bits.len() == 10 && bits[5] != 'w' && bits[8] != 'w' && !mode.contains(['s', 'S']),
            "{path} is {mode}: writable by group or others, or setuid"
        );
    }
    step(&format!(
        "dist check: the .deb holds {} files, modes and owners as expected",
        files
            .values()
            .filter(|(mode, _)| mode.starts_with('-'))
            .count()
    ));
    Ok(())
}

/// `dpkg --root` into a scratch tree, holding only a shell for the
/// maintainer scripts (dpkg runs them chrooted there), then a purge that
/// must leave no file of the package behind.
fn deb_installs_and_purges(dist: &Dist, scratch: &Path) -> Result<()> {
    let root = scratch.join("dpkg-root");
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "bin",
        "tmp",
        "dev",
    ] {
        fs::create_dir_all(root.join(dir)).with_context(|| format!("creating {dir}"))?;
    }
    fs::write(root.join("var/lib/dpkg/status"), "").context("writing dpkg's status")?;
    // The scripts send output to /dev/null; a file does as well here.
    fs::write(root.join("dev/null"), "").context("writing the scratch /dev/null")?;
    // Static: it runs in the scratch root, which has no libraries.
    fs::copy(STATIC_BUSYBOX, root.join("bin/busybox"))
        .with_context(|| format!("copying {STATIC_BUSYBOX}"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).context("linking /bin/sh")?;
    let dpkg = |args: &[&str]| -> Result<String> {
        setup::output(
            Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                .arg("--log=/dev/null")
                // dpkg looks for ldconfig and start-stop-daemon, which a
                // scratch root has no need of.
                .arg("--force-bad-path")
                .args(args),
        )
    };
    dpkg(&["--install", &dist.deb.to_string_lossy()])?;
    let status = dpkg(&["--status", "tcptrace"])?;
    ensure!(
        status.contains("Status: install ok installed"),
        "after dpkg --install: {status}"
    );
    let installed = root.join(PACKAGED_BINARY.trim_start_matches('/'));
    ensure!(
        fs::read(&installed).context("reading the installed binary")?
            == fs::read(&dist.binary).context("reading the dist binary")?,
        "the .deb's {PACKAGED_BINARY} is not the dist binary"
    );
    let run = setup::output(Command::new(&installed).arg("--version"))?;
    ensure!(
        run.starts_with(&format!("tcptrace {}", dist.version)),
        "{run}"
    );
    dpkg(&["--purge", "tcptrace"])?;
    let left: Vec<String> = expected_files()
        .into_iter()
        .map(|(path, _)| path)
        .chain(UNIT_PATHS.iter().map(|p| p.to_string()))
        .filter(|path| root.join(path.trim_start_matches('/')).exists())
        .collect();
    ensure!(left.is_empty(), "dpkg --purge left {left:?}");
    let status = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--status", "tcptrace"])
        .output()
        .context("starting dpkg --status")?;
    ensure!(
        !text(&status).contains("Status: install"),
        "after the purge dpkg still knows tcptrace: {}",
        text(&status)
    );
    step(
        "dist check: dpkg --root installs the .deb (the binary is the dist's, and runs) and purges it clean",
    );
    Ok(())
}

/// Debian's busybox-static (setup installs it).
const STATIC_BUSYBOX: &str = "/bin/busybox";

/// Where Debian's systemd keeps its units.
const SYSTEMD_UNITS: &str = "/usr/lib/systemd/system";

/// systemd's own verifier, in a root of its own holding the binary where
/// the unit expects it and systemd's own units (the targets a service is
/// ordered after), so that the host's /usr/bin is not needed. Any line it
/// says about the unit (an unknown key, a missing binary) fails the check.
fn unit_verifies(unit: &Path, binary: &Path, scratch: &Path) -> Result<()> {
    let text_of_unit = fs::read_to_string(unit)?;
    ensure!(
        text_of_unit
            .lines()
            .any(|line| line == format!("ExecStart={PACKAGED_BINARY} serve")),
        "the packaged unit does not run {PACKAGED_BINARY} serve"
    );
    let root = scratch.join("unit-root");
    let bin = root.join(PACKAGED_BINARY.trim_start_matches('/'));
    fs::create_dir_all(bin.parent().context("a directory")?)?;
    fs::copy(binary, &bin)?;
    let units = root.join("etc/systemd/system");
    fs::create_dir_all(&units)?;
    let system = root.join("usr/lib/systemd");
    fs::create_dir_all(&system)?;
    setup::output(Command::new("cp").args(["-a", SYSTEMD_UNITS]).arg(&system))
        .context("copying systemd's own units")?;
    fs::copy(unit, units.join("tcptrace.service"))?;
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", root.display()))
        .args(["verify", "tcptrace.service"])
        .output()
        .context("starting systemd-analyze")?;
    let said = text(&out);
    ensure!(
        out.status.success() && !said.contains("tcptrace.service:"),
        "systemd-analyze verify: {said}"
    );
    step("dist check: systemd-analyze verify passes on the packaged unit");
    Ok(())
}

/// Lintian's findings on what applies to this package: its maintainer
/// scripts, its unit, its files' places and modes. A static binary and a
/// package made outside a Debian source tree draw other tags, listed in
/// NOT_APPLICABLE with the reason.
fn lintian_clean(deb: &Path, tools: &setup::DistTools) -> Result<()> {
    let out = Command::new(&tools.lintian)
        .args(["--no-cfg", "--display-level", ">=warning"])
        .arg(deb)
        .output()
        .context("starting lintian")?;
    let findings: Vec<String> = text(&out)
        .lines()
        .filter(|line| line.starts_with("E: ") || line.starts_with("W: "))
        .filter(|line| !NOT_APPLICABLE.iter().any(|(tag, _)| line.contains(tag)))
        .map(str::to_owned)
        .collect();
    ensure!(findings.is_empty(), "lintian: {findings:#?}");
    step("dist check: lintian finds nothing that applies");
    Ok(())
}

/// Lintian tags that do not apply to this package, each with why.
const NOT_APPLICABLE: [(&str, &str); 3] = [
    (
        "shared-library-lacks-prerequisites",
        "lintian reads a static-pie executable (ELF type DYN, no interpreter) as a shared \
         library; it is the executable, kept position-independent for ASLR",
    ),
    (
        "no-changelog",
        "no Debian source package: the changelog is the git history",
    ),
    (
        "malformed-contact",
        "the project publishes no mail address: set Maintainer in tcptrace/Cargo.toml before \
         uploading to an archive",
    ),
];

fn image_runs(dist: &Dist, tools: &setup::DistTools, scratch: &Path) -> Result<()> {
    let reference = format!("oci-archive:{}:{}", dist.image.display(), dist.version);
    let inspected = setup::output(Command::new(&tools.skopeo).args(["inspect", &reference]))?;
    let inspected: serde_json::Value =
        serde_json::from_str(&inspected).context("skopeo inspect's JSON")?;
    let labels = &inspected["Labels"];
    ensure!(
        labels["org.opencontainers.image.version"] == dist.version.as_str()
            && labels["org.opencontainers.image.revision"] == dist.commit.as_str()
            && labels["org.opencontainers.image.source"] == dist.source.as_str(),
        "the image's labels: {labels}"
    );
    ensure!(
        inspected["Layers"].as_array().map(Vec::len) == Some(1),
        "FROM scratch and one binary make one layer: {}",
        inspected["Layers"]
    );

    // The archive, not the layout it was made from, unpacked as a runtime would.
    let layout = scratch.join("image-layout");
    fs::create_dir_all(&layout)?;
    setup::output(
        Command::new("tar")
            .arg("--extract")
            .arg("--file")
            .arg(&dist.image)
            .arg("--directory")
            .arg(&layout),
    )?;
    let image = format!("{}:{}", layout.display(), dist.version);
    setup::output(Command::new(&tools.umoci).args(["stat", "--image", &image]))?;
    let bundle = scratch.join("image-bundle");
    setup::output(Command::new(&tools.umoci).args([
        "unpack",
        "--image",
        &image,
        &bundle.to_string_lossy(),
    ]))?;
    let config: serde_json::Value = serde_json::from_slice(
        &fs::read(bundle.join("config.json")).context("the unpacked bundle's config.json")?,
    )?;
    let args: Vec<&str> = config["process"]["args"]
        .as_array()
        .map(|args| args.iter().filter_map(|a| a.as_str()).collect())
        .unwrap_or_default();
    ensure!(
        args.first() == Some(&PACKAGED_BINARY) && args.get(1) == Some(&"serve"),
        "the image runs {args:?}, not {PACKAGED_BINARY} serve"
    );
    let rootfs = bundle.join("rootfs");
    let entries: Vec<PathBuf> = walk(&rootfs)?;
    ensure!(
        entries == vec![rootfs.join(PACKAGED_BINARY.trim_start_matches('/'))],
        "the image holds more than the binary: {entries:?}"
    );
    let said = setup::output(Command::new(&entries[0]).arg("--version"))?;
    ensure!(
        said.starts_with(&format!(
            "tcptrace {}\ncommit {}",
            dist.version, dist.commit
        )),
        "the image's entrypoint says {said:?}"
    );
    step("dist check: the OCI archive inspects, unpacks, and its entrypoint runs --version");
    Ok(())
}

/// Every file under `dir` (directories left out), sorted.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Each page renders without a warning from man or groff, and each
/// subcommand's page names every option its --help does.
fn man_pages_render(dist: &Dist) -> Result<()> {
    let render = |page: &Path| -> Result<String> {
        let out = Command::new("man")
            .args(["--warnings", "-E", "ascii", "-l"])
            .arg(page)
            // Wide: no option name broken across lines.
            .env("MANWIDTH", "250")
            .output()
            .context("starting man")?;
        let warnings = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && warnings.trim().is_empty(),
            "man -l {}: {warnings}",
            page.display()
        );
        // Overstrikes (bold, underline) out, should man keep them.
        let mut plain = String::new();
        for c in String::from_utf8_lossy(&out.stdout).chars() {
            if c == '\u{8}' {
                plain.pop();
            } else {
                plain.push(c);
            }
        }
        Ok(plain)
    };
    let top = render(&dist.man.join("tcptrace.1"))?;
    for sub in SUBCOMMANDS {
        ensure!(top.contains(sub), "tcptrace.1 does not name `{sub}`");
        let page = render(&dist.man.join(format!("tcptrace-{sub}.1")))?;
        let help = setup::output(Command::new(&dist.binary).args([sub, "--help"]))?;
        let options = long_options(&help);
        // An empty list would pass every page: --help lists --help at least.
        ensure!(
            options.iter().any(|o| o == "--help") && options.len() > 1,
            "read no options from `tcptrace {sub} --help`: {help}"
        );
        for option in options {
            ensure!(
                page.contains(&option),
                "tcptrace-{sub}.1 does not show {option}, which `tcptrace {sub} --help` lists"
            );
        }
    }
    step(&format!(
        "dist check: {} man pages render without warnings and show every option",
        SUBCOMMANDS.len() + 1
    ));
    Ok(())
}

/// `--name` words at the start of --help's option lines.
fn long_options(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line
                .strip_prefix('-')
                .filter(|rest| !rest.starts_with('-'))
                .map(|rest| rest.get(3..).unwrap_or_default().trim_start())
                .unwrap_or(line);
            let name = line.strip_prefix("--")?;
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            Some(format!("--{}", &name[..end]))
        })
        .collect()
}

/// bash, with the generated completion loaded, completes `tcptrace le`
/// to `leaks`; zsh and fish parse theirs (where installed).
fn completions_complete(dist: &Dist, tools: &setup::DistTools) -> Result<()> {
    let bash = dist.completions.join("tcptrace.bash");
    let script = format!(
        "source {}\n\
         COMP_WORDS=(tcptrace le); COMP_CWORD=1; COMP_LINE='tcptrace le'; COMP_POINT=${{#COMP_LINE}}\n\
         _tcptrace tcptrace le tcptrace\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        shell_quote(&bash.to_string_lossy())
    );
    let said = setup::output(Command::new("bash").args(["--norc", "--noprofile", "-c", &script]))?;
    let words: Vec<&str> = said.split_whitespace().collect();
    ensure!(
        words == ["leaks"],
        "bash completes `tcptrace le` to {words:?}, not [\"leaks\"]"
    );
    setup::output(
        Command::new(&tools.zsh)
            .arg("-n")
            .arg(dist.completions.join("_tcptrace")),
    )?;
    setup::output(
        Command::new(&tools.fish)
            .arg("--no-execute")
            .arg(dist.completions.join("tcptrace.fish")),
    )?;
    step("dist check: bash completes `tcptrace le` to `leaks`; zsh and fish parse theirs");
    Ok(())
}

fn text(out: &Output) -> String {
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_options_are_read_from_help_lines() {
        let help = "Options:\n      --json          One JSON\n  -d, --duration <D>  Stop\n  -h, --help  Print help\nExamples:\n  tcptrace watch --state x\n";
        assert_eq!(long_options(help), ["--json", "--duration", "--help"]);
    }
}
