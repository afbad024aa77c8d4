//! Boots one guest under QEMU and follows its serial log.

use std::{
    fs::{self, File},
    io::{Read as _, Seek as _, SeekFrom},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::step;

use super::initramfs::create_dir;
use super::kernels::Kernel;
use super::results::{Outcome, after};
use super::{MARK_EXIT, MARK_KERNEL, MARK_START, Options};

/// QEMU with TCG, always: this host's /dev/kvm cannot run stock kernels.
/// The serial console (stdout, with -nographic) goes to the log.
pub(super) fn boot(
    work: &Path,
    kernel: &Kernel,
    initramfs: &Path,
    options: &Options,
) -> Result<Outcome> {
    let dir = work.join(&kernel.release);
    create_dir(&dir)?;
    let log_path = dir.join("serial.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-m"])
        .arg(options.memory_mb.to_string())
        .args([
            "-smp",
            "2",
            "-nic",
            "none",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stderr(log.try_clone().context("duplicating the log file")?)
        .stdout(log);
    step(&format!(
        "vm-test: linux {}: booting (TCG, {} MiB, timeout {} s), serial log {}",
        kernel.release,
        options.memory_mb,
        options.timeout.as_secs(),
        log_path.display()
    ));
    let started = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let mut progress = Progress::new(&log_path, &kernel.release, started);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            break Some(status);
        }
        progress.show();
        if started.elapsed() >= options.timeout {
            // It may have exited just now: kill fails harmlessly then.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(500));
    };
    progress.show();
    let elapsed = started.elapsed();
    let text = fs::read(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let mut outcome = Outcome::parse(&String::from_utf8_lossy(&text));
    outcome.release = kernel.release.clone();
    outcome.log = log_path;
    outcome.elapsed = elapsed;
    outcome.qemu = status;
    outcome.timeout = options.timeout;
    Ok(outcome)
}

/// Echoes the marker lines of a running guest as they arrive: a run takes
/// minutes.
struct Progress<'a> {
    log: &'a Path,
    release: &'a str,
    started: Instant,
    offset: u64,
    partial: String,
}

impl<'a> Progress<'a> {
    fn new(log: &'a Path, release: &'a str, started: Instant) -> Self {
        Self {
            log,
            release,
            started,
            offset: 0,
            partial: String::new(),
        }
    }

    fn show(&mut self) {
        let mut bytes = Vec::new();
        let Ok(mut file) = File::open(self.log) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = line.trim_end();
            let shown = if let Some(release) = after(line, MARK_KERNEL) {
                Some(format!("booted {release}"))
            } else if let Some(name) = after(line, MARK_START) {
                Some(format!("running {name}"))
            } else if let Some(rest) = after(line, MARK_EXIT) {
                Some(rest.to_owned())
            } else if line.starts_with("test ") && line.ends_with("FAILED") {
                Some(line.to_owned())
            } else {
                None
            };
            if let Some(shown) = shown {
                step(&format!(
                    "vm-test: linux {}: {shown} ({} s)",
                    self.release,
                    self.started.elapsed().as_secs()
                ));
            }
        }
    }
}

/// The line without terminal control sequences: the firmware's `ESC c`
/// would reset the terminal the tail is printed on.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: `ESC [` parameters, then one final byte in @..~.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

pub(super) fn print_tail(log: &Path, lines: usize) {
    let Ok(text) = fs::read(log) else {
        return;
    };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    eprintln!(
        "xtask: vm-test: last {} lines of {}:",
        lines.min(all.len()),
        log.display()
    );
    for line in &all[all.len().saturating_sub(lines)..] {
        eprintln!("    {}", printable(line.trim_end()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_prints_no_terminal_controls() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2JTCPTRACE-VM-KERNEL 6.1\r"),
            "TCPTRACE-VM-KERNEL 6.1"
        );
    }
}
