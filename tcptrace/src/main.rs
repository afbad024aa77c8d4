use std::{io, process::ExitCode};

use clap::Parser;
use tcptrace::{
    cli::{Cli, Command},
    leakwatch, serve, topwatch, watch,
};

/// Exit status for a failure at run time (usage errors exit 2, through clap).
const RUNTIME_ERROR: u8 = 1;
/// `leaks --fail-on-leak` found leaks.
const LEAKS_FOUND: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tcptrace: cannot start the async runtime: {error}");
            return ExitCode::from(RUNTIME_ERROR);
        }
    };
    match cli.into_command() {
        Command::Leaks(args) => {
            let fail_on_leak = args.fail_on_leak;
            match runtime.block_on(leakwatch::run(args.into_options(), io::stdout().lock())) {
                Ok(outcome) if fail_on_leak && outcome.leaks_found => ExitCode::from(LEAKS_FOUND),
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tcptrace: {error}");
                    ExitCode::from(RUNTIME_ERROR)
                }
            }
        }
        Command::Top(args) => {
            let out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
            match runtime.block_on(topwatch::run(args.into_options(), out)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tcptrace: {error}");
                    ExitCode::from(RUNTIME_ERROR)
                }
            }
        }
        Command::Serve(args) => match runtime.block_on(serve::run(args.into_options())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tcptrace: {error:#}");
                ExitCode::from(RUNTIME_ERROR)
            }
        },
        Command::Watch(args) => {
            if let Some(pid) = args.pid
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!("tcptrace: no process {pid} is running now; watching for it anyway");
            }
            let options = args.into_options();
            // Stdout is line-buffered even into a pipe or file: one write(2)
            // per event. Buffer instead; watch flushes after every drain.
            let out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
            match runtime.block_on(watch::run(options, out)) {
                Ok(summary) => {
                    eprintln!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("tcptrace: {error}");
                    ExitCode::from(RUNTIME_ERROR)
                }
            }
        }
    }
}
