//! What was built, as the build script named it: shown by `--version` and
//! exported by `serve` as `tcptrace_build_info`, so that an agent running
//! on a node can be matched with its source and its probe.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// HEAD's commit when built, or "unknown (...)" outside a checkout.
pub const COMMIT: &str = env!("TCPTRACE_GIT_COMMIT");
/// The first 16 hex digits of the embedded eBPF object's SHA-256.
pub const PROBE_BUILD_ID: &str = env!("TCPTRACE_PROBE_BUILD_ID");
