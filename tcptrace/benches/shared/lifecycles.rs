//! Synthetic loopback connections as the probe writes them: the client and
//! the server side, 5 transitions each. Shared by the criterion bench
//! (`benches/pipeline.rs`) and the agent's ignored micro benchmark
//! (`src/bench_hotpath.rs`, which includes this file by path).

use tcptrace_common::{AF_INET, RecordKind, TASK_COMM_LEN, TcpState, TransitionRecord};

/// `events` records, one every `spacing_ns`, from connection 1 on.
pub fn lifecycle_records(events: usize, spacing_ns: u64) -> Vec<Vec<u8>> {
    use TcpState::*;
    let client = [
        (Close, SynSent),
        (SynSent, Established),
        (Established, FinWait1),
        (FinWait1, FinWait2),
        (FinWait2, Close),
    ];
    let server = [
        (Listen, SynRecv),
        (SynRecv, Established),
        (Established, CloseWait),
        (CloseWait, LastAck),
        (LastAck, Close),
    ];
    let mut records = Vec::with_capacity(events);
    let mut connection: u64 = 0;
    while records.len() < events {
        connection += 1;
        for (side, steps) in [client, server].iter().enumerate() {
            for (old, new) in steps {
                let mut comm = [0u8; TASK_COMM_LEN];
                let name: &[u8] = if side == 0 { b"client" } else { b"server" };
                comm[..name.len()].copy_from_slice(name);
                let mut local = [0u8; 16];
                local[..4].copy_from_slice(&[127, 0, 0, 1]);
                let record = TransitionRecord {
                    kind: RecordKind::Transition as u32,
                    owner_tgid: 1000 + side as u32,
                    timestamp_ns: 1_000_000_000 + records.len() as u64 * spacing_ns,
                    cookie: connection * 2 + side as u64,
                    skaddr: 0xffff_8880_0000_0000 + connection * 4096,
                    socket_inode: 0,
                    local_addr: local,
                    remote_addr: local,
                    owner_comm: comm,
                    netns_inode: 0,
                    local_port: 40000 + (connection % 20000) as u16,
                    remote_port: 8080,
                    family: AF_INET,
                    old_state: *old as u8,
                    new_state: *new as u8,
                    _reserved: 0,
                };
                records.push(record.to_bytes().to_vec());
            }
        }
    }
    records.truncate(events);
    records
}
