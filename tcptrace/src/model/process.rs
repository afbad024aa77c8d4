//! What the host tells about a process beyond its name: where it runs and how
//! many fds it has against its limit.

/// Open fds and the soft RLIMIT_NOFILE of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdUsage {
    pub open: u64,
    pub limit: Option<u64>,
}

/// Where a process runs, as far as the host can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Short container id; empty for host processes.
    pub container: String,
    pub pod_uid: Option<String>,
    pub netns: Option<u64>,
}
