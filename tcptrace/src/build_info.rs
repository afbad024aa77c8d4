//! What was built, as the build script named it: shown by `--version` and
//! exported by `serve` as `tcptrace_build_info`, so that an agent running
//! on a node can be matched with its source and its probe.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// HEAD's commit when built, or "unknown (...)" outside a checkout.
pub const COMMIT: &str = env!("TCPTRACE_GIT_COMMIT");
/// The first 16 hex digits of the embedded eBPF object's SHA-256.
pub const PROBE_BUILD_ID: &str = env!("TCPTRACE_PROBE_BUILD_ID");

/// `--version`: what was built, to match a running agent with a commit and
/// with the probe it loads (`-V` prints the version alone). The values
/// above, named again: `concat!` takes literals, not constants.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit ",
    env!("TCPTRACE_GIT_COMMIT"),
    "\nprobe build id ",
    env!("TCPTRACE_PROBE_BUILD_ID"),
    " (SHA-256 of the embedded eBPF object, first 16 hex digits)"
);
