//! Owners of the table's sockets that have neither a file nor a history:
//! TIME_WAIT entries, and FIN_WAIT2 or LAST_ACK orphans, where `top` and
//! `serve` count transitions in the kernel instead of recording them.
//! Inferred, as a listener's owner is for an accepted socket: a socket on a
//! port only one process listens on is that process's; one to a
//! destination only one process connected to is that process's. Anything
//! else stays unattributed. Pure.

use std::{collections::HashMap, net::SocketAddr};

use crate::model::{
    activity::Activity,
    kernel_socket::KernelSocket,
    tracker::SocketTracker,
    transition::{Comm, Process},
};

#[derive(Default)]
pub struct InferredOwners {
    /// Each destination's one connecting process, or `None` when several
    /// connected to it.
    connectors: HashMap<SocketAddr, Option<Process>>,
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

impl InferredOwners {
    /// From the connects `activity` counted since start (each destination's
    /// processes, while they live).
    pub fn new(activity: &Activity) -> Self {
        let mut connectors: HashMap<SocketAddr, Option<Process>> = HashMap::new();
        for (tgid, destination, counts) in activity.destinations() {
            if counts.attempted == 0 {
                continue;
            }
            let comm = activity
                .process(tgid)
                .map_or_else(|| Comm::from(""), |p| p.comm);
            connectors
                .entry(canonical(destination))
                .and_modify(|sole| {
                    if sole.as_ref().is_some_and(|p| p.tgid != tgid) {
                        *sole = None;
                    }
                })
                .or_insert(Some(Process { tgid, comm }));
        }
        Self { connectors }
    }

    /// The inferred owner of `socket`, a row with no file: the one process
    /// listening on its local port in its namespace, else the one process
    /// that connected to its remote end.
    pub fn owner_of(
        &self,
        socket: &KernelSocket,
        tracker: &SocketTracker,
    ) -> Option<(u32, String)> {
        if socket.inode != 0 {
            // A file holds it: the holder scan says who, or no one does.
            return None;
        }
        let netns = u32::try_from(socket.netns_inode).ok();
        if let Some(process) =
            tracker.listening_owner(netns, Some(socket.local.ip()), socket.local.port())
        {
            return Some((process.tgid, process.comm.to_string()));
        }
        let process = self.connectors.get(&canonical(socket.remote))?.as_ref()?;
        Some((process.tgid, process.comm.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_common::TcpState;

    fn row(state: TcpState, local: &str, remote: &str, inode: u64) -> KernelSocket {
        KernelSocket {
            cookie: 1,
            inode,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            recv_queue: 0,
            send_queue: 0,
            netns_inode: 4026531840,
        }
    }

    fn process(tgid: u32, comm: &str) -> Process {
        Process {
            tgid,
            comm: comm.into(),
        }
    }

    #[test]
    fn a_row_without_a_file_goes_to_its_listener_or_its_sole_connector() {
        let mut tracker = SocketTracker::new();
        tracker.seed_listener(
            9,
            Some(4026531840),
            "127.0.0.1:8080".parse().unwrap(),
            process(20, "server"),
        );
        let mut activity = Activity::new();
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let shared: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        activity.add(
            Some(&process(10, "client")),
            1,
            (TcpState::Close, TcpState::SynSent),
            1,
        );
        activity.count_connects(10, server, 3, 0);
        activity.count_connects(10, shared, 1, 0);
        activity.count_connects(11, shared, 1, 0);
        let inferred = InferredOwners::new(&activity);
        let owner = |socket: &KernelSocket| inferred.owner_of(socket, &tracker);

        // The server's end, closed first: its listener's port.
        let server_end = row(TcpState::TimeWait, "127.0.0.1:8080", "127.0.0.1:40000", 0);
        assert_eq!(owner(&server_end), Some((20, "server".into())));
        // The client's end: the one process that connected there.
        let client_end = row(TcpState::TimeWait, "127.0.0.1:40001", "127.0.0.1:8080", 0);
        assert_eq!(owner(&client_end), Some((10, "client".into())));
        // Two processes connected there: no owner is guessed.
        let shared_end = row(TcpState::TimeWait, "127.0.0.1:40002", "127.0.0.1:9090", 0);
        assert_eq!(owner(&shared_end), None);
        // A file holds it: only its holders may say.
        let held = row(
            TcpState::Established,
            "127.0.0.1:40003",
            "127.0.0.1:8080",
            77,
        );
        assert_eq!(owner(&held), None);
        // A client's port that happens to be a listener's, on another address.
        let same_port = row(TcpState::TimeWait, "127.1.0.9:8080", "127.0.0.1:8080", 0);
        assert_eq!(owner(&same_port), Some((10, "client".into())));
        // A v4-mapped row is the same destination.
        let mapped = row(
            TcpState::TimeWait,
            "[::ffff:127.0.0.1]:40004",
            "[::ffff:127.0.0.1]:8080",
            0,
        );
        assert_eq!(owner(&mapped), Some((10, "client".into())));
    }
}
