//! The initramfs every guest boots into: busybox, the test binaries with their libraries, the modules and /init.

use std::{
    ffi::CString,
    fmt::Write as _,
    fs::{self, File},
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{check, is_root, setup, shell_quote, step};

use super::kernels::{Kernel, kernel_modules};
use super::{
    Binaries, GUEST_MODULES, GUEST_TCPTRACE, MARK_BINARY, MARK_DONE, MARK_EXIT, MARK_KERNEL,
    MARK_START, elf_interpreter,
};

/// Builds `work/initramfs-root` and packs it into `work/initramfs.cpio`
/// (uncompressed: the guest unpacks it faster than it could gunzip it under
/// emulation). One archive serves every kernel: each kernel's modules are
/// under its own release.
pub(super) fn make_initramfs(
    work: &Path,
    binaries: &Binaries,
    kernels: &[Kernel],
    test_args: &[String],
) -> Result<PathBuf> {
    let tree = work.join("initramfs-root");
    step(&format!(
        "vm-test: making the initramfs in {}",
        tree.display()
    ));
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    mirror_top_level_links(&tree)?;
    for dir in ["proc", "sys", "dev", "tmp", "run", "root", "etc", "var"] {
        create_dir(&tree.join(dir))?;
    }
    // iproute2 keeps named network namespaces in /var/run/netns.
    symlink("/run", &tree.join("var/run"))?;
    let ip = find_program("ip").context("no `ip` (iproute2) on the host")?;
    // Static: nothing to bring with it.
    let guest_tcptrace = tree.join(GUEST_TCPTRACE.trim_start_matches('/'));
    create_dir(guest_tcptrace.parent().context("a binary in a directory")?)?;
    fs::copy(&binaries.tcptrace, &guest_tcptrace)
        .with_context(|| format!("copying {}", binaries.tcptrace.display()))?;
    let mut programs = vec![&binaries.testpeer, &ip];
    programs.extend(binaries.tests.iter().map(|test| &test.path));
    for program in programs {
        copy_with_libraries(&tree, program)?;
    }
    // After the programs: busybox's applets fill only the names left free.
    install_busybox(&tree)?;
    for test in &binaries.tests {
        create_dir(&in_tree(&tree, &test.dir))?;
    }
    for kernel in kernels {
        let dir = tree
            .join("lib/modules")
            .join(&kernel.release)
            .join(GUEST_MODULES);
        create_dir(&dir)?;
        // Numbered: the shell's glob gives them back in load order.
        for (index, (name, image)) in kernel_modules(kernel)?.iter().enumerate() {
            let file = dir.join(format!("{index:02}-{name}.ko"));
            fs::write(&file, image).with_context(|| format!("writing {}", file.display()))?;
        }
    }
    make_console(&tree)?;
    write_file(
        &tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    write_file(&tree.join("etc/group"), "root:x:0:\n", 0o644)?;
    write_file(&tree.join("init"), &init_script(binaries, test_args), 0o755)?;
    let archive = work.join("initramfs.cpio");
    pack(&tree, &archive)?;
    let size = fs::metadata(&archive)
        .with_context(|| format!("reading {}", archive.display()))?
        .len();
    step(&format!(
        "vm-test: initramfs {} is {} MiB",
        archive.display(),
        size >> 20
    ));
    Ok(archive)
}

fn in_tree(tree: &Path, path: &Path) -> PathBuf {
    tree.join(path.strip_prefix("/").unwrap_or(path))
}

pub(super) fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {target}", link.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The host's merged-/usr links (`/lib -> usr/lib`, ...), so a file copied to
/// the path `ldd` names lands where the loader looks for it in the guest.
fn mirror_top_level_links(tree: &Path) -> Result<()> {
    for name in ["bin", "sbin", "lib", "lib64"] {
        let host = Path::new("/").join(name);
        match fs::read_link(&host) {
            Ok(target) => {
                // Relative, so that it points into the tree on the host too.
                let target = target.strip_prefix("/").unwrap_or(&target);
                create_dir(&tree.join(target))?;
                symlink(&target.to_string_lossy(), &tree.join(name))?;
            }
            Err(_) => create_dir(&tree.join(name))?,
        }
    }
    Ok(())
}

/// /bin/busybox and a link per applet, where no copied program has the name
/// already (the real `ip` wins over busybox's). The links are absolute, for
/// the guest: on the host they point out of the tree, so nothing is ever
/// written through them (see `copy_file`).
fn install_busybox(tree: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    copy_file(tree, busybox, busybox)?;
    let list = setup::output(Command::new(busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|line| !line.is_empty()) {
        // The list names busybox itself: linking it would replace the binary
        // with a link to itself.
        if Path::new(applet).file_name() == Some("busybox".as_ref()) {
            continue;
        }
        let link = tree.join(applet);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            create_dir(parent)?;
        }
        symlink("/bin/busybox", &link)?;
    }
    Ok(())
}

/// `program` on PATH or in the sbin directories (not on a user's PATH).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Copies `program` to the same absolute path in the tree, and, unless it
/// is static, the libraries `ldd` resolves for it and its loader.
fn copy_with_libraries(tree: &Path, program: &Path) -> Result<()> {
    copy_file(tree, program, program)?;
    if elf_interpreter(program)?.is_none() {
        return Ok(());
    }
    let libraries = setup::output(Command::new("ldd").arg(program))?;
    for library in libraries.lines().filter_map(ldd_path) {
        if in_tree(tree, &library).symlink_metadata().is_err() {
            copy_file(tree, &library, &library)?;
        }
    }
    Ok(())
}

/// The file one line of `ldd` output names: `libc.so.6 => /lib/.../libc.so.6
/// (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`; none for the vDSO.
fn ldd_path(line: &str) -> Option<PathBuf> {
    let line = line.trim();
    let path = match line.split_once("=>") {
        Some((_, resolved)) => resolved.split_whitespace().next()?,
        None => line.split_whitespace().next()?,
    };
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Copies the host's `from` to `guest_path` in the tree. The destination's
/// directory must resolve inside the tree and the destination must not be a
/// link: a copy through one of the guest's absolute links would overwrite the
/// host's own file.
fn copy_file(tree: &Path, from: &Path, guest_path: &Path) -> Result<()> {
    let to = in_tree(tree, guest_path);
    let parent = to
        .parent()
        .with_context(|| format!("{} has no parent", to.display()))?;
    create_dir(parent)?;
    let real_tree = tree
        .canonicalize()
        .with_context(|| format!("resolving {}", tree.display()))?;
    let real_parent = parent
        .canonicalize()
        .with_context(|| format!("resolving {}", parent.display()))?;
    if !real_parent.starts_with(&real_tree) {
        bail!(
            "{} resolves to {}, outside {}",
            parent.display(),
            real_parent.display(),
            tree.display()
        );
    }
    if to.symlink_metadata().is_ok_and(|meta| meta.is_symlink()) {
        fs::remove_file(&to).with_context(|| format!("removing {}", to.display()))?;
    }
    fs::copy(from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The console /init writes to before devtmpfs is mounted. Only root can
/// make device nodes; without it the kernel's built-in initramfs, which
/// has /dev/console, still provides one.
fn make_console(tree: &Path) -> Result<()> {
    if !is_root() {
        step("vm-test: not root: /dev/console comes from the kernel's built-in initramfs");
        return Ok(());
    }
    let path = tree.join("dev/console");
    let name = CString::new(path.as_os_str().as_bytes()).context("path with a NUL byte")?;
    // SAFETY: `name` is a valid NUL-terminated path; mknod has no other
    // preconditions.
    let result = unsafe { libc::mknod(name.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(5, 1)) };
    if result != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mknod {} c 5 1", path.display()));
    }
    Ok(())
}

/// /init: mounts what the probe and the tests use, loads the modules, runs
/// each test binary between marker lines, and powers off.
fn init_script(binaries: &Binaries, test_args: &[String]) -> String {
    let testpeer = shell_quote(&binaries.testpeer.to_string_lossy());
    let mut script = format!(
        r#"#!/bin/sh
# Made by `cargo xtask vm-test` (xtask/src/vm.rs). The host reads the results
# from the serial console.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
export TCPTRACE_TESTPEER={testpeer}
# The tests run the dist binary, not the one cargo built beside them.
export TCPTRACE_BIN={GUEST_TCPTRACE}
# Debian's kernels allow fexit: the tests then require the accept hook.
export TCPTRACE_EXPECT_FEXIT=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# No tmpfs over /tmp or /run: the initramfs root is already writable memory,
# and the binaries sit at their host paths, which may be under /tmp (a CI
# clone there was hidden by a tmpfs mount).
ip link set lo up
for module in /lib/modules/"$(uname -r)"/{GUEST_MODULES}/*.ko; do
    [ -e "$module" ] && insmod "$module"
done
echo "{MARK_KERNEL}$(uname -r)"
# Which binary the tests run: its --version on one line, as the host joins it.
echo "{MARK_BINARY}$({GUEST_TCPTRACE} --version | {{ v=; while IFS= read -r l; do v="${{v:+$v | }}$l"; done; printf %s "$v"; }})"
"#
    );
    let args: String = test_args
        .iter()
        .map(|arg| format!(" {}", shell_quote(arg)))
        .collect();
    for test in &binaries.tests {
        let _ = write!(
            script,
            "cd {dir}\necho '{MARK_START}{name}'\n{path} --test-threads=1{args}\necho \"{MARK_EXIT}{name} exit=$?\"\n",
            dir = shell_quote(&test.dir.to_string_lossy()),
            name = test.name,
            path = shell_quote(&test.path.to_string_lossy()),
        );
    }
    // The pause lets the serial port drain before the machine goes away; if
    // poweroff fails, the kernel panics when init exits and QEMU
    // (-no-reboot) stops all the same.
    let _ = write!(
        script,
        "echo {MARK_DONE}\nsleep 1\npoweroff -f\necho o > /proc/sysrq-trigger\n"
    );
    script
}

/// `find . | cpio -o -H newc` in the tree, every file owned by root.
fn pack(tree: &Path, archive: &Path) -> Result<()> {
    let out = File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let mut find = Command::new("find")
        .arg(".")
        .current_dir(tree)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting find")?;
    let files = find.stdout.take().context("find has no stdout")?;
    let cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(tree)
        .stdin(files)
        .stdout(out)
        .status()
        .context("starting cpio")?;
    check(find.wait().context("waiting for find")?, "find")?;
    check(cpio, "cpio -o")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::TempDir;

    #[test]
    fn ldd_lines_name_files() {
        assert_eq!(
            ldd_path("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)"),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(
            ldd_path("\t/lib64/ld-linux-x86-64.so.2 (0x00007f)"),
            Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2"))
        );
        assert_eq!(ldd_path("\tlinux-vdso.so.1 (0x00007ffd)"), None);
    }

    #[test]
    fn copies_never_go_through_the_guests_links() {
        let dir = TempDir::new("tcptrace-vm-copy-test").unwrap();
        let (tree, outside) = (dir.path().join("tree"), dir.path().join("outside"));
        fs::create_dir_all(tree.join("bin")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let (source, host_file) = (dir.path().join("source"), outside.join("file"));
        fs::write(&source, "new").unwrap();
        fs::write(&host_file, "host's").unwrap();
        // An applet-style absolute link, and a directory link out of the tree.
        std::os::unix::fs::symlink(&host_file, tree.join("bin/tool")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("escape")).unwrap();

        copy_file(&tree, &source, Path::new("/bin/tool")).unwrap();
        assert_eq!(fs::read_to_string(&host_file).unwrap(), "host's");
        assert_eq!(fs::read_to_string(tree.join("bin/tool")).unwrap(), "new");
        assert!(copy_file(&tree, &source, Path::new("/escape/file")).is_err());
        assert_eq!(fs::read_to_string(&host_file).unwrap(), "host's");
    }
}
