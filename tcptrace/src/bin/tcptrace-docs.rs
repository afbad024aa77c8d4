//! Writes tcptrace's man pages and shell completions from its clap
//! definitions, so that they cannot drift from `--help`. Run by
//! `cargo xtask dist`; not installed.
//!
//! Usage: tcptrace-docs DIR  (writes DIR/man/*.1 and DIR/completions/*)

use std::{fs, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::CommandFactory as _;
use clap_complete::Shell;
use tcptrace::cli::Cli;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tcptrace-docs: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        bail!("usage: tcptrace-docs DIR");
    };
    let dir = PathBuf::from(dir);
    let man = dir.join("man");
    let completions = dir.join("completions");
    for sub in [&man, &completions] {
        fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
    }
    // One page for tcptrace and one per subcommand (tcptrace-leaks.1, ...).
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "tcptrace", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
    }
    Ok(())
}
