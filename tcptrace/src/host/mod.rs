//! Facts read from the host, each behind one reader.
//!
//! Takes in: requests for what to read (sockets, namespaces, pids). Gives out:
//! [`crate::model`] values: the kernel's socket table over sock_diag in every
//! network namespace, who holds which socket from one /proc walk, containers
//! and pods from cgroups, stacks unwound from the probe's copies and symbolized, the monotonic clock, and
//! `reader`, which does one host read off the drain thread. Those worker
//! threads run at a lower priority (`thread_priority`) than the drain thread.

pub(crate) mod clock;
pub(crate) mod container;
pub mod inet_diag_lookup;
pub(crate) mod inet_diag_walk;
pub(crate) mod perf_map;
pub(crate) mod process_memory;
pub(crate) mod python_names;
pub(crate) mod python_runtime;
pub(crate) mod python_watch;

pub mod procfs;
pub(crate) mod reader;
pub mod sockdiag;
pub(crate) mod symbolize;
pub(crate) mod sysctl;
pub(crate) mod thread_priority;
pub(crate) mod unwind;
pub(crate) mod worker_queue;
