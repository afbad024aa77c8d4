//! Who holds a socket: a process and its fd, as one walk of /proc found them.

use std::collections::{HashMap, HashSet};

/// A process holding a socket, and through which fd.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub fd: u32,
}

/// One walk of `/proc`: the processes alive, and who holds the sockets asked about.
#[derive(Debug, Default)]
pub struct ProcScan {
    pub pids: HashSet<u32>,
    pub holders: HashMap<u64, Vec<Holder>>,
}
