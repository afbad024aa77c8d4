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

#[path = "../benches/shared/lifecycles.rs"]
mod lifecycles;

fn records() -> Vec<Vec<u8>> {
    lifecycles::lifecycle_records(EVENTS, EVENT_SPACING_NS)
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
        interval: None,
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
