//! Project tasks. `cargo xtask setup` installs the eBPF toolchain and the
//! Prometheus binaries the tests use; `run` and `test` install whatever is
//! missing first.

mod bench;
mod dist;
mod harness;
mod setup;
mod soak;
mod vm;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tcptrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF probe and running the tests need (idempotent).
    Setup,
    /// Install only what building needs, build tcptrace (release) and run it as root with these arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, run every test (root tests included), make and check
    /// the dist artifacts, then the root tests under QEMU on Debian 6.1 and 6.12 with the dist binary.
    Test,
    /// Make what operators install, in target/dist: the static binary, the .deb, the OCI image
    /// archive, man pages and completions, each with its checks (installed, run, rendered).
    Dist,
    /// Formatting and clippy, for the host crates and the eBPF crate separately.
    Lint,
    /// Measure what tracing costs, beside bpftrace peers (as root, about 10 minutes after the builds; TCPTRACE_BENCH_SCALE=0.25 shortens the loads for a smoke run); writes docs/PERFORMANCE.md.
    Bench {
        /// Alternation cycles: rounds per configuration, each paired with the untraced round of its cycle.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Also run the default `leaks` and `serve` of this earlier commit in the same cycles
        /// (built once under target/bench-baseline), to compare a change with what it replaces.
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
    },
    /// Run the release `serve` for --minutes against churn, process churn, a
    /// growing leaker, ring bursts, a kill -9 and restart and 2,000 idle
    /// HTTP clients (as root); writes docs/RELIABILITY.md, fails on a failed verdict.
    Soak {
        /// Length of the run; the phases scale with it.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1440))]
        minutes: u32,
    },
    /// Set up, then run the root integration tests (leaks, watch, kernel_table, maps) in QEMU
    /// guests booting Debian's 6.1 and 6.12 kernels; arguments after `--` go to the test
    /// binaries (e.g. a test name filter).
    VmTest {
        /// Only this kernel series (6.1 or 6.12); may be repeated.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Seconds one guest may take from boot to power-off before it is killed.
        #[arg(long, default_value_t = vm::Options::default().timeout.as_secs())]
        timeout: u64,
        /// Guest memory in MiB (the initramfs holds the debug binaries).
        #[arg(long, default_value_t = vm::Options::default().memory_mb)]
        memory: u32,
        /// Passed to each test binary after `--test-threads=1`, e.g. a test name filter.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup => setup::run().map(|_| ExitCode::SUCCESS),
        Task::Run { args } => {
            setup::build_tools()?;
            cargo(&["build", "--release", "--package", "tcptrace"])?;
            let binary = workspace_root()?.join("target/release/tcptrace");
            let status = as_root(&binary)
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", binary.display()))?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        Task::Test => {
            let installed = setup::run()?;
            lint()?;
            // The tests start these peers as separate processes.
            cargo(&["build", "--package", "tcptrace-testpeer"])?;
            let mut test = Command::new("cargo");
            test.args([
                "test",
                "--workspace",
                "--exclude",
                "tcptrace-ebpf",
                "--",
                "--test-threads=1",
            ]);
            // Inherited through the `sudo -E` runner too.
            test.env("TCPTRACE_PROMETHEUS", &installed.prometheus.server)
                .env("TCPTRACE_PROMTOOL", &installed.prometheus.promtool);
            if !is_root() {
                // The integration tests load the eBPF probe.
                test.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
            }
            step("running all tests (the integration tests load the probe as root)");
            check(test.status().context("starting cargo test")?, "cargo test")?;
            // The same root tests on the kernels people run (this host's
            // kernel has just run them natively).
            if !is_root() {
                bail!(
                    "the kernel matrix needs root (apt, mknod for the guests' /dev/console): run sudo -E cargo xtask test"
                );
            }
            step("dist: the artifacts operators install, made and checked");
            let root = workspace_root()?;
            let made = dist::run(&root)?;
            step(
                "kernel matrix: the root tests under QEMU on Debian's 6.1 and 6.12 kernels, with the dist binary",
            );
            if vm::run(&root, &made.binary, &vm::Options::default())? {
                Ok(ExitCode::SUCCESS)
            } else {
                bail!("the tests failed on at least one kernel (the lines above say which)")
            }
        }
        Task::Dist => {
            setup::build_tools()?;
            dist::run(&workspace_root()?).map(|_| ExitCode::SUCCESS)
        }
        Task::Lint => {
            setup::build_tools()?;
            lint().map(|_| ExitCode::SUCCESS)
        }
        Task::Bench { rounds, baseline } => {
            release_build_for("bench")?;
            bench::run(&workspace_root()?, rounds, baseline.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Soak { minutes } => {
            release_build_for("soak")?;
            soak::run(&workspace_root()?, minutes)
        }
        Task::VmTest {
            kernels,
            timeout,
            memory,
            test_args,
        } => {
            setup::build_tools()?;
            let root = workspace_root()?;
            let binary = dist::static_binary(&root)?;
            let options = vm::Options {
                kernels,
                test_args,
                timeout: Duration::from_secs(timeout),
                memory_mb: memory,
            };
            Ok(if vm::run(&root, &binary, &options)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Setup, root, and the release tcptrace and load peers that `bench` and `soak` run.
fn release_build_for(task: &str) -> Result<()> {
    setup::run()?;
    if !is_root() {
        bail!("{task} loads the eBPF probe: run it as root (sudo -E cargo xtask {task})");
    }
    cargo(&[
        "build",
        "--release",
        "--package",
        "tcptrace",
        "--package",
        "tcptrace-testpeer",
    ])
}

fn lint() -> Result<()> {
    step("checking formatting");
    cargo(&["fmt", "--all", "--", "--check"])?;
    step("clippy: host crates");
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "tcptrace-ebpf",
        "--all-targets",
        // The man page and completion generator builds only with it.
        "--features",
        "tcptrace/docs",
        "--",
        "--deny",
        "warnings",
    ])?;
    // Separately: features unify across a workspace, and the probe is
    // no_std with its own panic handler.
    step("clippy: eBPF crate");
    let status = Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--package",
            "tcptrace-ebpf",
            "--all-targets",
            "--",
            "--deny",
            "warnings",
            "-C",
            "panic=abort",
            "-Zpanic_abort_tests",
        ])
        .status()
        .context("starting cargo +nightly clippy")?;
    check(status, "clippy on the eBPF crate")
}

pub(crate) fn step(what: &str) {
    eprintln!("xtask: {what}");
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .args(args)
        .status()
        .with_context(|| format!("starting cargo {}", args.join(" ")))?;
    check(status, &format!("cargo {}", args.join(" ")))
}

pub(crate) fn check(status: std::process::ExitStatus, what: &str) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("{what} failed ({status})")
    }
}

/// A word for a shell, quoted whatever it holds.
pub(crate) fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `sudo` in front unless already root.
pub(crate) fn as_root(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg("-E").arg(program);
        command
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_survive_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
