//! The agent's hot path on one core: decode a ring-buffer record and track
//! its socket. `cargo xtask bench` reports it as events per second.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tcptrace::{model::tracker::SocketTracker, model::transition::Record, probe::records::decode};
use tcptrace_common::{AF_INET, RecordKind, TcpState, TransitionRecord};

/// Read by `cargo xtask bench` to turn time per iteration into events/s.
const EVENTS_PER_ITERATION: usize = 10_000;

/// Client and server-side lifecycles of loopback connections, as the probe
/// would deliver them, 10 transitions per connection.
fn lifecycles() -> Vec<Vec<u8>> {
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
    let mut records = Vec::with_capacity(EVENTS_PER_ITERATION);
    let mut connection: u64 = 0;
    while records.len() < EVENTS_PER_ITERATION {
        connection += 1;
        for (side, steps) in [client, server].iter().enumerate() {
            for (i, (old, new)) in steps.iter().enumerate() {
                let mut comm = [0u8; 16];
                comm[..6].copy_from_slice(b"server");
                let mut local = [0u8; 16];
                local[..4].copy_from_slice(&[127, 0, 0, 1]);
                let record = TransitionRecord {
                    kind: RecordKind::Transition as u32,
                    owner_tgid: 1000 + side as u32,
                    timestamp_ns: connection * 1_000_000 + i as u64 * 1000,
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
    records.truncate(EVENTS_PER_ITERATION);
    records
}

fn decode_and_track(c: &mut Criterion) {
    let records = lifecycles();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(EVENTS_PER_ITERATION as u64));
    group.bench_function("decode_and_track", |b| {
        b.iter(|| {
            let mut tracker = SocketTracker::new();
            for bytes in &records {
                if let Ok(Record::Transition(t)) = decode(black_box(bytes)) {
                    black_box(tracker.observe(t));
                }
            }
            tracker.tracked_sockets()
        })
    });
    group.finish();
}

criterion_group!(benches, decode_and_track);
criterion_main!(benches);
