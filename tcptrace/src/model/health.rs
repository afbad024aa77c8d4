//! How full the probe's maps and the agent's tables are, and the agent's
//! running totals: what the metrics and the reports show of tcptrace itself.

/// How full one bounded table is: a map of the probe or a collection of
/// the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occupancy {
    /// A short, fixed name (`owners`, `stacks`, `suspects`, ...).
    pub name: &'static str,
    pub entries: u64,
    /// `None` where nothing but what it describes bounds it (storage freed
    /// with its socket or process, entries reconciled with the kernel's table).
    pub capacity: Option<u64>,
}

impl Occupancy {
    /// From the lengths collections give.
    pub fn new(name: &'static str, entries: usize, capacity: Option<usize>) -> Self {
        Occupancy {
            name,
            entries: entries as u64,
            capacity: capacity.map(|c| c as u64),
        }
    }
}

/// Agent-wide counts, running totals since start, and how full its tables are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentTotals {
    /// TCP transitions the probe saw, recorded or only counted.
    pub transitions: u64,
    pub events: u64,
    pub dropped: u64,
    pub decode_errors: u64,
    /// Sockets whose storage the kernel could not allocate: their owner is
    /// lost, and they count as of an unknown owner.
    pub kernel_storage_failures: u64,
    /// Per capped agent table: entries it did not keep, or forgot early,
    /// because it was full. Precision only: a destination's connects left
    /// out, an owner's counts the kernel's map evicted between two reads.
    pub forgotten_entries: Vec<(&'static str, u64)>,
    pub reconcile_corrections: u64,
    /// Reads of /proc or of the kernel's table that failed (fd exhaustion,
    /// an unreadable namespace): what was known before is kept meanwhile.
    pub host_read_failures: u64,
    /// accept() calls of serve's HTTP side that failed (out of fds, mostly).
    pub http_accept_errors: u64,
    /// The probe's maps.
    pub kernel_maps: Vec<Occupancy>,
    /// The agent's own collections.
    pub agent_tables: Vec<Occupancy>,
}
