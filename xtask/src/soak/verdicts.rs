//! The soak's verdicts: memory growth, table occupancy, fds, leaks found,
//! /metrics under idle clients, series count, what was left behind.

use std::collections::BTreeMap;

use super::{
    METRICS_DEADLINE,
    outcomes::Outcomes,
    plan::{PHASES, PhaseKind, phase_index},
    sample::{MetricsFigures, Sample},
};

/// serve's defaults for --top-comms and --top-leaking-pids, which the soak keeps.
const TOP_COMMS: usize = 20;
const TOP_LEAKING_PIDS: usize = 10;
/// The bound on memory growth once warm.
const RSS_SLOPE_LIMIT_MIB_PER_10_MIN: f64 = 1.0;
const FD_SLACK: u64 = 4;
const FD_SLACK_UNDER_LOAD: u64 = 16;

pub(super) struct Verdict {
    pub(super) what: String,
    pub(super) measured: String,
    pub(super) passed: bool,
}

pub(super) fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// Least-squares slope shared by the groups, each with its own intercept
/// (the restart starts a new process, at a new level).
fn pooled_slope(groups: &[Vec<(f64, f64)>]) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for points in groups.iter().filter(|g| g.len() >= 2) {
        let n = points.len() as f64;
        let tm = points.iter().map(|p| p.0).sum::<f64>() / n;
        let ym = points.iter().map(|p| p.1).sum::<f64>() / n;
        for (t, y) in points {
            num += (t - tm) * (y - ym);
            den += (t - tm) * (t - tm);
        }
    }
    (den > 0.0).then(|| num / den)
}

pub(super) fn figures(sample: &Sample) -> Option<&MetricsFigures> {
    sample.metrics.as_ref().ok()
}

/// RSS under one phase's unchanging load: the sustained load alone, or
/// with serve starved of CPU. Its slope over the phase's samples, which
/// come from one serve (the restart is later).
fn rss_verdict(kind: PhaseKind, outcomes: &Outcomes) -> Verdict {
    let index = phase_index(kind);
    let name = PHASES[index].1;
    let points: Vec<(f64, f64)> = outcomes
        .samples
        .iter()
        .filter(|s| s.phase == index)
        .filter_map(|s| Some((s.t, s.rss_kib? as f64)))
        .collect();
    let what = format!(
        "RSS slope ≤ {RSS_SLOPE_LIMIT_MIB_PER_10_MIN} MiB per 10 min during \"{name}\" (least squares over its samples)"
    );
    let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
    match pooled_slope(std::slice::from_ref(&points)) {
        Some(kib_per_s) => {
            let per_10_min = mib(kib_per_s * 600.0);
            Verdict {
                what,
                measured: format!(
                    "{per_10_min:+.2} MiB per 10 min over {} samples (peak {:.1} MiB)",
                    points.len(),
                    mib(peak)
                ),
                passed: per_10_min <= RSS_SLOPE_LIMIT_MIB_PER_10_MIN,
            }
        }
        None => Verdict {
            what,
            measured: format!("too few samples ({})", points.len()),
            passed: false,
        },
    }
}

/// The one alert about lost owners stays quiet: the kernel never failed to
/// store a socket's owner, whatever the load.
fn storage_verdict(outcomes: &Outcomes) -> Verdict {
    let failures = outcomes
        .samples
        .iter()
        .filter_map(|s| figures(s)?.kernel_storage_failures)
        .fold(None, |worst: Option<f64>, f| {
            Some(worst.map_or(f, |w| w.max(f)))
        });
    Verdict {
        what:
            "no TcptraceKernelStorageFailures alert: tcptrace_kernel_storage_failures_total stays 0"
                .into(),
        measured: match failures {
            Some(n) => format!("{n:.0} at most"),
            None => "not exported by this serve".into(),
        },
        passed: failures == Some(0.0),
    }
}

/// Occupancy of one family of tables: never above its capacity where one
/// is exported; without one, back near where it was after warm-up once the
/// load is over (allowing for the leaks the leaker added since, which are
/// live sockets).
fn occupancy_verdict(
    outcomes: &Outcomes,
    what: &str,
    entries: fn(&MetricsFigures) -> &BTreeMap<String, f64>,
    capacity: fn(&MetricsFigures) -> &BTreeMap<String, f64>,
) -> Verdict {
    let exported: Vec<&MetricsFigures> = outcomes
        .samples
        .iter()
        .filter_map(figures)
        .filter(|f| !entries(f).is_empty())
        .collect();
    let what = format!(
        "{what} bounded (never above its exported capacity; without one, at the end of the cool-down ≤ after warm-up + max(64, 25 %) + 2 × leaks added since)"
    );
    let (Some(baseline), Some(last)) = (
        outcomes
            .samples
            .iter()
            .filter(|s| s.phase == 0)
            .filter_map(figures)
            .rfind(|f| !entries(f).is_empty()),
        exported.last(),
    ) else {
        return Verdict {
            what,
            measured: "not exported by this serve".into(),
            passed: false,
        };
    };
    let held = |i: usize| outcomes.checks.get(i).map_or(0, |c| c.held) as f64;
    let added = (held(outcomes.checks.len().saturating_sub(1)) - held(0)).max(0.0);
    let mut passed = true;
    let mut parts = Vec::new();
    for (name, end) in entries(last) {
        let start = entries(baseline).get(name).copied().unwrap_or(0.0);
        let peak = exported
            .iter()
            .filter_map(|f| entries(f).get(name))
            .fold(0.0f64, |a, b| a.max(*b));
        let cap = exported.iter().find_map(|f| capacity(f).get(name).copied());
        let ok_cap = cap.is_none_or(|c| peak <= c);
        let ok_end = cap.is_some() || *end <= start + (0.25 * start).max(64.0) + 2.0 * added;
        passed &= ok_cap && ok_end;
        parts.push(format!(
            "{name}: {start:.0} → peak {peak:.0}{} → {end:.0}{}",
            cap.map_or(" (no capacity exported)".into(), |c| format!(" of {c:.0}")),
            if ok_cap && ok_end { "" } else { " ✗" }
        ));
    }
    Verdict {
        what,
        measured: parts.join("; "),
        passed,
    }
}

fn fd_verdict(outcomes: &Outcomes) -> Verdict {
    let idle = PHASES
        .iter()
        .position(|p| p.0 == PhaseKind::IdleClients)
        .unwrap_or(usize::MAX);
    let with_fds = || outcomes.samples.iter().filter_map(|s| Some((s, s.fds?)));
    let baseline = with_fds().rfind(|(s, _)| s.phase == 0).map(|p| p.1);
    let last = with_fds().next_back().map(|p| p.1);
    let busiest = with_fds()
        .filter(|(s, _)| s.phase != idle)
        .map(|p| p.1)
        .max();
    let idle_peak = with_fds()
        .filter(|(s, _)| s.phase == idle)
        .map(|p| p.1)
        .max();
    let what = format!(
        "fds flat (at the end ≤ after warm-up + {FD_SLACK}; outside the idle-connection phase ≤ + {FD_SLACK_UNDER_LOAD})"
    );
    match (baseline, last, busiest) {
        (Some(baseline), Some(last), Some(busiest)) => Verdict {
            what,
            measured: format!(
                "{baseline} after warm-up, {busiest} at most outside the idle phase, {} during it, {last} at the end",
                idle_peak.map_or("–".into(), |p| p.to_string())
            ),
            passed: last <= baseline + FD_SLACK && busiest <= baseline + FD_SLACK_UNDER_LOAD,
        },
        _ => Verdict {
            what,
            measured: "no fd samples".into(),
            passed: false,
        },
    }
}

fn leaks_verdict(outcomes: &Outcomes) -> Verdict {
    let matched = outcomes.checks.iter().filter(|c| c.matched()).count();
    let mismatched: Vec<String> = outcomes
        .checks
        .iter()
        .filter(|c| !c.matched())
        .map(|c| {
            format!(
                "after {}: /leaks {}, ss {}",
                c.after,
                match &c.leaks {
                    Ok(n) => n.to_string(),
                    Err(e) => e.clone(),
                },
                c.ss.map_or("failed".into(), |n| n.to_string())
            )
        })
        .collect();
    Verdict {
        what: "`/leaks` = `ss -tanp state close-wait` for the leaker after every phase and right after the restart".into(),
        measured: if mismatched.is_empty() {
            format!("{matched} of {} checks equal", outcomes.checks.len())
        } else {
            format!(
                "{matched} of {} equal; {}",
                outcomes.checks.len(),
                mismatched.join("; ")
            )
        },
        passed: !outcomes.checks.is_empty() && mismatched.is_empty(),
    }
}

fn metrics_verdict(outcomes: &Outcomes) -> Verdict {
    let times: Vec<String> = outcomes
        .metrics_under_idle
        .iter()
        .map(|(_, r)| match r {
            Ok(ms) => format!("{ms:.0} ms"),
            Err(e) => format!("failed: {e}"),
        })
        .collect();
    let limit_ms = METRICS_DEADLINE.as_secs_f64() * 1e3;
    Verdict {
        what: format!(
            "`/metrics` answers within {} s while the idle and slowloris connections are open",
            METRICS_DEADLINE.as_secs()
        ),
        measured: if times.is_empty() {
            "not timed".into()
        } else {
            times.join(", ")
        },
        passed: !times.is_empty()
            && outcomes
                .metrics_under_idle
                .iter()
                .all(|(_, r)| matches!(r, Ok(ms) if *ms <= limit_ms)),
    }
}

fn series_verdict(outcomes: &Outcomes) -> Verdict {
    let scraped: Vec<&MetricsFigures> = outcomes.samples.iter().filter_map(figures).collect();
    let baseline = outcomes
        .samples
        .iter()
        .filter(|s| s.phase == 0)
        .filter_map(figures)
        .next_back()
        .map(|f| f.series);
    let peak = scraped.iter().map(|f| f.series).max();
    let last = scraped.last().map(|f| f.series);
    let widest = |pick: fn(&MetricsFigures) -> &BTreeMap<String, usize>| {
        scraped
            .iter()
            .flat_map(|f| pick(f).iter())
            .max_by_key(|(_, n)| **n)
            .map(|(name, n)| (name.clone(), *n))
    };
    let holders = widest(|f| &f.holders);
    let pids = widest(|f| &f.pids);
    let labelled = scraped
        .iter()
        .map(|f| f.holders.len().max(f.pids.len()))
        .max()
        .unwrap_or(0);
    let what = format!(
        "series bounded (≤ {TOP_COMMS} comm/container values besides \"other\" and \"unknown\", and ≤ {TOP_LEAKING_PIDS} pids, per family; total ≤ after warm-up + {} per labelled family)",
        TOP_COMMS + 2 + TOP_LEAKING_PIDS
    );
    match (baseline, peak, last) {
        (Some(baseline), Some(peak), Some(last)) => {
            let allowance = labelled * (TOP_COMMS + 2 + TOP_LEAKING_PIDS);
            let holders_ok = holders.as_ref().is_none_or(|h| h.1 <= TOP_COMMS);
            let pids_ok = pids.as_ref().is_none_or(|p| p.1 <= TOP_LEAKING_PIDS);
            Verdict {
                what,
                measured: format!(
                    "{baseline} after warm-up, peak {peak}, {last} at the end (process churn made {} comms); widest: {}, {}",
                    outcomes
                        .process_churn_report
                        .as_deref()
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or("?"),
                    holders.map_or("no comm labels".into(), |(n, c)| format!(
                        "{c} comm/container values in {n}"
                    )),
                    pids.map_or("no pid labels".into(), |(n, c)| format!("{c} pids in {n}"))
                ),
                passed: holders_ok && pids_ok && peak <= baseline + allowance,
            }
        }
        _ => Verdict {
            what,
            measured: "no successful scrape".into(),
            passed: false,
        },
    }
}

fn leftovers_verdict(outcomes: &Outcomes) -> Verdict {
    let (programs, maps) = &outcomes.bpf_held;
    let (programs_left, maps_left) = &outcomes.bpf_left;
    let seen = !programs.is_empty();
    Verdict {
        what: "no process or BPF program left behind (children marked by an environment variable; serve's programs and maps by the ids in its fdinfo, against BPF_PROG/MAP_GET_NEXT_ID at the end)".into(),
        measured: format!(
            "processes left: {}; serve held {} programs and {} maps, left {:.1} s after the last serve exited: programs {}, maps {} (host total before {} programs / {} maps, after {} / {})",
            if outcomes.processes_left.is_empty() {
                "none".into()
            } else {
                outcomes
                    .processes_left
                    .iter()
                    .map(|(pid, comm)| format!("{pid} {comm}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            programs.len(),
            maps.len(),
            outcomes.bpf_wait.as_secs_f64(),
            ids(programs_left),
            ids(maps_left),
            outcomes.bpf_before.0,
            outcomes.bpf_before.1,
            outcomes.bpf_after.0,
            outcomes.bpf_after.1,
        ),
        passed: seen
            && outcomes.processes_left.is_empty()
            && programs_left.is_empty()
            && maps_left.is_empty(),
    }
}

fn ids(ids: &[u32]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        format!("{ids:?}")
    }
}

pub(super) fn verdicts(outcomes: &Outcomes) -> Vec<Verdict> {
    vec![
        rss_verdict(PhaseKind::Steady, outcomes),
        rss_verdict(PhaseKind::Starved, outcomes),
        storage_verdict(outcomes),
        occupancy_verdict(
            outcomes,
            "kernel map occupancy",
            |f| &f.maps,
            |f| &f.map_capacity,
        ),
        occupancy_verdict(
            outcomes,
            "agent table occupancy",
            |f| &f.tables,
            |f| &f.table_capacity,
        ),
        fd_verdict(outcomes),
        leaks_verdict(outcomes),
        metrics_verdict(outcomes),
        series_verdict(outcomes),
        leftovers_verdict(outcomes),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::outcomes::LeakCheck;

    fn sample(t: f64, phase: usize, maps: &[(&str, f64)], capacity: &[(&str, f64)]) -> Sample {
        let map = |pairs: &[(&str, f64)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        Sample {
            t,
            phase,
            instance: 0,
            rss_kib: Some(1000),
            fds: Some(30),
            metrics: Ok(MetricsFigures {
                maps: map(maps),
                map_capacity: map(capacity),
                ..MetricsFigures::default()
            }),
            scrape_ms: 1.0,
        }
    }

    fn check(held: u64) -> LeakCheck {
        LeakCheck {
            after: "x".into(),
            t: 0.0,
            held,
            ss: Some(held),
            leaks: Ok(held),
            waited: std::time::Duration::ZERO,
        }
    }

    fn occupancy(samples: Vec<Sample>, held: [u64; 2]) -> Verdict {
        let outcomes = Outcomes {
            samples,
            checks: vec![check(held[0]), check(held[1])],
            ..Outcomes::default()
        };
        occupancy_verdict(&outcomes, "maps", |f| &f.maps, |f| &f.map_capacity)
    }

    #[test]
    fn occupancy_bounded_when_back_down_and_under_capacity() {
        let v = occupancy(
            vec![
                sample(0.0, 0, &[("owners", 500.0)], &[("owners", 1000.0)]),
                sample(10.0, 3, &[("owners", 990.0)], &[("owners", 1000.0)]),
                sample(20.0, 6, &[("owners", 560.0)], &[("owners", 1000.0)]),
            ],
            [10, 40],
        );
        assert!(v.passed, "{}", v.measured);
        assert!(v.measured.contains("owners: 500 → peak 990 of 1000 → 560"));
    }

    #[test]
    fn occupancy_under_capacity_may_stay_up() {
        // An LRU map stays full; its capacity is its bound.
        let v = occupancy(
            vec![
                sample(0.0, 0, &[("eof", 100.0)], &[("eof", 1000.0)]),
                sample(20.0, 6, &[("eof", 1000.0)], &[("eof", 1000.0)]),
            ],
            [10, 10],
        );
        assert!(v.passed, "{}", v.measured);
    }

    #[test]
    fn occupancy_fails_above_capacity_or_still_grown() {
        let over = occupancy(
            vec![
                sample(0.0, 0, &[("owners", 10.0)], &[("owners", 100.0)]),
                sample(10.0, 3, &[("owners", 101.0)], &[("owners", 100.0)]),
                sample(20.0, 6, &[("owners", 10.0)], &[("owners", 100.0)]),
            ],
            [10, 10],
        );
        assert!(!over.passed, "{}", over.measured);
        // 1000 + 250 + 2 × 30 leaks added = 1310 allowed.
        let grown = occupancy(
            vec![
                sample(0.0, 0, &[("stacks", 1000.0)], &[]),
                sample(20.0, 6, &[("stacks", 1311.0)], &[]),
            ],
            [10, 40],
        );
        assert!(!grown.passed, "{}", grown.measured);
        let not_exported = occupancy(vec![sample(0.0, 0, &[], &[])], [0, 0]);
        assert!(!not_exported.passed);
        assert_eq!(not_exported.measured, "not exported by this serve");
    }

    fn rss_samples(phase: usize, mib_at: &[(f64, f64)]) -> Outcomes {
        Outcomes {
            samples: mib_at
                .iter()
                .map(|(t, mib)| Sample {
                    rss_kib: Some((mib * 1024.0) as u64),
                    ..sample(*t, phase, &[], &[])
                })
                .collect(),
            ..Outcomes::default()
        }
    }

    #[test]
    fn rss_is_judged_within_each_loaded_phase_alone() {
        let starved = phase_index(PhaseKind::Starved);
        // Flat around 60 MiB with noise, in the starved phase.
        let flat = rss_samples(
            starved,
            &[(0.0, 60.0), (60.0, 62.0), (120.0, 59.0), (180.0, 60.5)],
        );
        let verdict = rss_verdict(PhaseKind::Starved, &flat);
        assert!(verdict.passed, "{}", verdict.measured);
        assert!(verdict.what.contains("steady load, serve starved"));
        // 3 MiB a minute is 30 per 10 minutes.
        let growing = rss_samples(starved, &[(0.0, 60.0), (60.0, 63.0), (120.0, 66.0)]);
        let verdict = rss_verdict(PhaseKind::Starved, &growing);
        assert!(!verdict.passed);
        assert!(
            verdict.measured.starts_with("+30.00 MiB per 10 min"),
            "{}",
            verdict.measured
        );
        // The steady phase had no samples of its own: no verdict to pass.
        assert!(!rss_verdict(PhaseKind::Steady, &growing).passed);
    }

    #[test]
    fn a_single_storage_failure_fails_the_alert_verdict() {
        let with = |failures: Option<f64>| Outcomes {
            samples: vec![Sample {
                metrics: Ok(MetricsFigures {
                    kernel_storage_failures: failures,
                    ..MetricsFigures::default()
                }),
                ..sample(0.0, 1, &[], &[])
            }],
            ..Outcomes::default()
        };
        assert!(storage_verdict(&with(Some(0.0))).passed);
        assert!(!storage_verdict(&with(Some(1.0))).passed);
        assert!(!storage_verdict(&with(None)).passed);
    }

    #[test]
    fn slope_ignores_the_step_between_instances() {
        // Two flat processes at different levels: no growth.
        let groups = vec![
            vec![(0.0, 100.0), (10.0, 100.0), (20.0, 100.0)],
            vec![(30.0, 50.0), (40.0, 50.0)],
        ];
        assert_eq!(pooled_slope(&groups), Some(0.0));
        let growing = vec![
            vec![(0.0, 0.0), (10.0, 20.0)],
            vec![(20.0, 5.0), (30.0, 25.0)],
        ];
        assert_eq!(pooled_slope(&growing), Some(2.0));
        assert_eq!(pooled_slope(&[vec![(1.0, 1.0)]]), None);
    }
}
