use std::{io, process::ExitCode};

use clap::{CommandFactory, Parser, error::ErrorKind};
use tcptrace::{
    cli::{Cli, Command},
    commands::leaks,
    commands::serve,
    commands::top,
    commands::watch,
};

/// Exit status for a failure at run time (usage errors exit 2, through clap).
const RUNTIME_ERROR: u8 = 1;
/// `leaks --fail-on-leak` found leaks.
const LEAKS_FOUND: u8 = 3;

/// Raises the soft limit on open files to the hard one: serve keeps many
/// connections open, and every command walks /proc and opens a socket per
/// network namespace; the usual soft 1024 runs out on a busy host.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur >= limit.rlim_max
    {
        return;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0
        // An unlimited hard limit is more than the kernel allows (fs.nr_open):
        // the soft limit stays, as it would have anyway.
        && limit.rlim_max != libc::RLIM_INFINITY
    {
        eprintln!(
            "tcptrace: cannot raise the open-file limit to {}: {}",
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
    }
}

/// glibc's allocator, set for an agent that runs for weeks while other work
/// takes the CPU. By default each thread that allocates while another holds
/// the lock gets an arena of its own, and the threshold above which a block
/// is mmapped rises to the largest block freed so far (up to 32 MiB), so
/// each read of a big socket table lands in some arena's heap and leaves it
/// fragmented. Measured by hand: release serve beside testpeer's 4-thread
/// churn-server and churn-client (about 15k connections/s) and two shell
/// busy loops, VmRSS read every 10 s for 5 minutes: RSS climbed 47 → 83 MiB
/// with glibc's defaults, and stayed at 33–44 MiB with one arena and a
/// fixed 128 KiB threshold (large blocks mmapped, and unmapped when freed).
/// `cargo xtask soak` checks the result. Before any thread starts, so that
/// none has an arena yet.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets the allocator's parameters; no other
    // thread exists yet to allocate meanwhile.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// A process filter naming no process is most likely a typo: say so.
fn tell_if_no_process(pid: Option<u32>, watching: bool) {
    let Some(pid) = pid else { return };
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return;
    }
    if watching {
        eprintln!("tcptrace: no process {pid} is running now; watching for it anyway");
    } else {
        eprintln!("tcptrace: no process {pid} is running now");
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    raise_fd_limit();
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
        Command::Leaks(mut args) => {
            tell_if_no_process(args.pid, !args.once);
            let fail_on_leak = args.fail_on_leak;
            let flamegraph = args.take_flamegraph();
            if let Some(flamegraph) = &flamegraph
                && let Err(error) = flamegraph.check(args.stacks)
            {
                // A usage error, said before observing for minutes.
                Cli::command()
                    .error(ErrorKind::ValueValidation, error)
                    .exit();
            }
            let options = args.into_options();
            match runtime.block_on(leaks::run(options, flamegraph, io::stdout().lock())) {
                Ok(outcome) if fail_on_leak && outcome.leaks_found => ExitCode::from(LEAKS_FOUND),
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tcptrace: {error}");
                    ExitCode::from(RUNTIME_ERROR)
                }
            }
        }
        Command::Top(args) => {
            tell_if_no_process(args.pid, true);
            let out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
            match runtime.block_on(top::run(args.into_options(), out)) {
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
            tell_if_no_process(args.pid, true);
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
