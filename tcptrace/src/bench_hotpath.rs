//! A quick, criterion-free measure of the agent's per-event cost on one
//! core: what each command does with a ring-buffer record, on synthetic
//! connection lifecycles. Not a test of anything (ignored; numbers are
//! printed, never asserted):
//!
//! `cargo test -p tcptrace --release --lib bench_hotpath -- --ignored --nocapture --test-threads=1`
//!
//! `BENCH_HOTPATH_ONLY=json` runs only the rows whose name holds "json" (for a profiler).

use std::{
    hint::black_box,
    io,
    time::{Duration, Instant},
};

use tcptrace_common::{AF_INET, RecordKind, TASK_COMM_LEN, TcpState, TransitionRecord};

use crate::{
    commands::watch::Pipeline,
    engine::monitor::{LeaksOptions, Monitor},
    model::{
        activity::Activity, filter::Filter, leak_report::ReportFilter, leaks::LeakTracker,
        tracker::SocketTracker, transition::Record,
    },
    probe::{loader::ProbeOptions, records::decode},
    view::watch::Format,
};

const EVENTS: usize = 200_000;
const ROUNDS: usize = 7;
/// Events 5 µs apart: 200 k transitions/s, about a churning host's rate.
const EVENT_SPACING_NS: u64 = 5_000;

/// Client and server side of loopback connections, 10 transitions per
/// connection, as the probe writes them.
fn records() -> Vec<Vec<u8>> {
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
    let mut records = Vec::with_capacity(EVENTS);
    let mut connection: u64 = 0;
    while records.len() < EVENTS {
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
                    timestamp_ns: 1_000_000_000 + records.len() as u64 * EVENT_SPACING_NS,
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
    records.truncate(EVENTS);
    records
}

/// Best of `ROUNDS` runs of `run` over every record, in ns per event.
fn measure(name: &str, records: &[Vec<u8>], mut run: impl FnMut(&[Vec<u8>])) {
    if std::env::var("BENCH_HOTPATH_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        run(records);
        best = best.min(started.elapsed());
    }
    let ns = best.as_nanos() as f64 / records.len() as f64;
    println!("bench_hotpath {name:<22} {ns:>8.1} ns/event");
}

fn leaks_options() -> LeaksOptions {
    LeaksOptions {
        probe: ProbeOptions::default(),
        min_age: Duration::ZERO,
        duration: None,
        once: false,
        json: false,
        filter: ReportFilter::default(),
        stack_depth: 8,
    }
}

#[test]
#[ignore = "a measurement, not a test: run by hand"]
fn bench_hotpath() {
    let records = records();

    measure("decode", &records, |records| {
        for bytes in records {
            let _ = black_box(decode(black_box(bytes)));
        }
    });

    measure("decode+track", &records, |records| {
        let mut tracker = SocketTracker::new();
        for bytes in records {
            if let Ok(Record::Transition(t)) = decode(black_box(bytes)) {
                black_box(tracker.observe(t));
            }
        }
    });

    for (name, format) in [
        ("watch --json", Format::Json),
        ("watch (text)", Format::Text),
    ] {
        measure(name, &records, |records| {
            let out = io::BufWriter::with_capacity(1 << 16, io::sink());
            let mut pipeline = Pipeline::new(Filter::default(), format, out);
            for bytes in records {
                pipeline.handle(black_box(bytes));
            }
            pipeline.flush();
            black_box(pipeline);
        });
    }

    // What leaks does per event: the monitor's handling of each record.
    let mut monitor = Monitor::new(leaks_options()).unwrap();
    measure("leaks", &records, |records| {
        monitor.tracker = LeakTracker::new();
        for bytes in records {
            monitor.health.events += 1;
            match decode(black_box(bytes)) {
                Ok(record) => monitor.handle_record(record),
                Err(_) => monitor.health.decode_errors += 1,
            }
        }
    });

    // What serve and top do per event (engine::agent::HostAgent::handle).
    measure("serve", &records, |records| {
        monitor.tracker = LeakTracker::new();
        let mut tracker = SocketTracker::new();
        let mut activity = Activity::new();
        for bytes in records {
            monitor.health.events += 1;
            match decode(black_box(bytes)) {
                Ok(Record::Transition(transition)) => {
                    monitor.observe_transition(&transition);
                    let tracked = tracker.observe(transition);
                    activity.observe(&tracked);
                }
                Ok(record) => monitor.handle_record(record),
                Err(_) => monitor.health.decode_errors += 1,
            }
        }
        black_box(activity.occupancy());
    });
}
