//! Root test: with a deliberately tiny ring buffer, every run of the probe is
//! either delivered or counted — checked against the kernel's own run count.

mod common;

use std::{thread, time::Duration};

use aya::sys::{Stats, enable_stats};
use common::{Peer, require_root};
use tcptrace::{
    probe::loader::{PAGE_SIZE, Probe, ProbeOptions},
    probe::records::decode,
};

#[test]
fn every_run_is_delivered_or_counted_when_the_ring_overflows() {
    if !require_root() {
        return;
    }
    // Scoped: bpf_stats is switched off again when this fd closes.
    let _stats = enable_stats(Stats::RunTime).expect("enable bpf_stats");
    let mut probe = Probe::load(&ProbeOptions {
        ring_buffer_bytes: PAGE_SIZE,
        ..ProbeOptions::default()
    })
    .expect("load probe");

    // Nothing drains while the churn runs: the ring must overflow.
    let churn = Peer::spawn(&["churn", "--addr", "127.0.0.1:0", "--connections", "2000"]);
    churn.expect("done");
    churn.wait_success();

    let mut delivered = 0u64;
    let mut undecodable = 0u64;
    for _ in 0..100 {
        let runs_before = probe.program_stats().expect("stats").run_count;
        delivered += probe.drain(|bytes| {
            if decode(bytes).is_err() {
                undecodable += 1;
            }
        });
        let counters = probe.counters().expect("counters");
        let stats = probe.program_stats().expect("stats");
        // 2000 connections of 10 transitions each, and the listener's 2.
        let churn_done = stats.run_count + stats.recursion_misses >= 20_002;
        if stats.run_count != runs_before || !churn_done {
            // The last closes are still in flight, or other TCP traffic on
            // the host ran the probe meanwhile: look again.
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        eprintln!(
            "kernel runs {}, delivered {delivered}, counted {counters:?}, recursion misses {}",
            stats.run_count, stats.recursion_misses
        );
        let accounted =
            delivered + counters.dropped() + counters.not_tcp + counters.filtered_in_kernel;
        assert_eq!(
            accounted, stats.run_count,
            "delivered {delivered} + counted {counters:?} != kernel run count"
        );
        assert!(
            counters.ring_reserve_failed > 0,
            "a one-page ring never overflowed: the test proved nothing ({counters:?})"
        );
        assert!(delivered > 0, "nothing delivered at all");
        assert_eq!(undecodable, 0);
        return;
    }
    panic!("the host never went quiet long enough to compare counts");
}
