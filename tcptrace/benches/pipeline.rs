//! The agent's hot path on one core: decode a ring-buffer record and track
//! its socket. `cargo xtask bench` reports it as events per second.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shared::lifecycles::lifecycle_records;
use tcptrace::{model::tracker::SocketTracker, model::transition::Record, probe::records::decode};

mod shared {
    pub mod lifecycles;
}

/// Read by `cargo xtask bench` to turn time per iteration into events/s.
const EVENTS_PER_ITERATION: usize = 10_000;

fn decode_and_track(c: &mut Criterion) {
    let records = lifecycle_records(EVENTS_PER_ITERATION, 1000);
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
