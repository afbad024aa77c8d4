//! docs/RELIABILITY.md: the verdicts, the phases, the leak checks and the
//! samples, and the plot beside it.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    SERVE_INTERVAL, SERVE_MIN_AGE,
    outcomes::Outcomes,
    plan::{PHASES, PhaseKind, Plan},
    sample::MetricsFigures,
    verdicts::{figures, mib, verdicts},
};
use crate::harness::machine;

pub const SVG_PATH: &str = "docs/reliability.svg";
fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The document, the plot, and whether every verdict passed.
pub fn render(plan: &Plan, commit: &str, outcomes: &Outcomes) -> (String, String, bool) {
    let verdicts = verdicts(outcomes);
    let passed = verdicts.iter().all(|v| v.passed);
    let mut out = String::new();
    let _ = writeln!(out, "# Reliability\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask soak --minutes {}` (as root) on commit {commit}, {}, {}. {}Every number below comes from that run; nothing here is asserted by a test.\n",
        plan.minutes,
        today(),
        machine(),
        if plan.minutes < 30 {
            "**A short run**: the phases are scaled down from the 30-minute soak, so slopes are noisy. "
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "The release `tcptrace serve --interval {}s --min-age {SERVE_MIN_AGE}` (its other options at their defaults) runs against separate tcptrace-testpeer processes on loopback; every {:.0} s the soak samples its RSS (`VmRSS`), its open fds, and its `/metrics` (occupancy of each kernel map and agent table, drops, the number of series). **Overall: {}.**\n",
        SERVE_INTERVAL.as_secs(),
        plan.sample_every.as_secs_f64(),
        if passed {
            "every verdict passed"
        } else {
            "at least one verdict FAILED"
        }
    );
    let _ = writeln!(out, "## Verdicts\n");
    let _ = writeln!(out, "| verdict | measured | |");
    let _ = writeln!(out, "|---|---|---|");
    for v in &verdicts {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            v.what,
            v.measured.replace('|', "\\|"),
            if v.passed { "PASS" } else { "**FAIL**" }
        );
    }
    render_phases(&mut out, plan, outcomes);
    let _ = writeln!(
        out,
        "\n## RSS and fds over time\n\n![serve's RSS and open fds over the soak, phases shaded, the restart marked](reliability.svg)\n"
    );
    render_checks(&mut out, outcomes);
    render_samples(&mut out, outcomes);
    (out, super::svg::plot(plan, outcomes), passed)
}

fn render_phases(out: &mut String, plan: &Plan, outcomes: &Outcomes) {
    let _ = writeln!(out, "\n## Phases\n");
    let _ = writeln!(out, "| phase | from | to | load |");
    let _ = writeln!(out, "|---|---|---|---|");
    let describe = |kind: PhaseKind| match kind {
        PhaseKind::WarmUp | PhaseKind::Steady => "the sustained load alone".to_owned(),
        PhaseKind::Starved => format!(
            "the sustained load, and {} CPU hogs beside serve (processes calling getppid() in a loop, one per core)",
            super::phases::hogs()
        ),
        PhaseKind::Bursts => format!(
            "{}; drops {}",
            outcomes.burst_reports.join("; "),
            match outcomes.burst_drops {
                (Some(a), Some(b)) => format!("{a:.0} → {b:.0} over the phase ({:+.0})", b - a),
                _ => "not exported".into(),
            }
        ),
        PhaseKind::Restart => "`kill -9` of serve, a new serve at once".to_owned(),
        PhaseKind::IdleClients => format!(
            "{} HTTP connections to serve, half idle, half sending one header byte every {} s: {}",
            super::phases::IDLE_CONNECTIONS,
            super::phases::SLOWLORIS_BYTE_EVERY_MS / 1000,
            outcomes.idle_report.as_deref().unwrap_or("no report")
        ),
        PhaseKind::CoolDown => {
            "the sustained load ends: nothing but the leaker's held leaks".to_owned()
        }
    };
    for ((kind, name, _), span) in PHASES.iter().zip(&outcomes.spans) {
        let _ = writeln!(
            out,
            "| {name} | {:.0} s | {:.0} s | {} |",
            span.start,
            span.end,
            describe(*kind)
        );
    }
    let _ = writeln!(
        out,
        "\n**The sustained load**, from the start until the cool-down: connection churn, {} client threads against a {}-thread server (connect, send, read the answer, close): {}; and process churn, {} short-lived processes named churn-0001…, forked evenly, 4 at a time, 3 connections each: {}.",
        super::CHURN_THREADS,
        super::CHURN_THREADS,
        outcomes.churn_report.as_deref().unwrap_or("no report"),
        plan.processes,
        outcomes
            .process_churn_report
            .as_deref()
            .unwrap_or("no report"),
    );
    let _ = writeln!(
        out,
        "\nThroughout (but the cool-down) a leaker process adds {} CLOSE_WAIT leaks every {:.0} s and closes its {} oldest every third time. serve logged {} leak lines on stderr; at the end it {}.",
        super::LEAKS_PER_STEP,
        plan.leak_step.as_secs_f64(),
        super::CLOSED_PER_THIRD_STEP,
        outcomes.leaks_logged,
        outcomes.serve_exit.as_deref().unwrap_or("was not running")
    );
}

fn render_checks(out: &mut String, outcomes: &Outcomes) {
    let _ = writeln!(out, "## /leaks against ss\n");
    let _ = writeln!(
        out,
        "| after | at | leaker holds | `ss` CLOSE_WAIT | `/leaks` close_wait | waited |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for c in &outcomes.checks {
        let _ = writeln!(
            out,
            "| {} | {:.0} s | {} | {} | {} | {:.0} s |",
            c.after,
            c.t,
            c.held,
            c.ss.map_or("failed".into(), |n| n.to_string()),
            match &c.leaks {
                Ok(n) => n.to_string(),
                Err(e) => e.replace('|', "\\|"),
            },
            c.waited.as_secs_f64()
        );
    }
}

fn render_samples(out: &mut String, outcomes: &Outcomes) {
    let names = |pick: fn(&MetricsFigures) -> &BTreeMap<String, f64>| {
        let mut names: Vec<String> = outcomes
            .samples
            .iter()
            .filter_map(figures)
            .flat_map(|f| pick(f).keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let maps = names(|f| &f.maps);
    let tables = names(|f| &f.tables);
    let _ = writeln!(out, "\n## Samples\n");
    if maps.is_empty() {
        let _ = writeln!(
            out,
            "Kernel map occupancy (`tcptrace_map_entries`): not exported by this serve."
        );
    }
    if tables.is_empty() {
        let _ = writeln!(
            out,
            "Agent table occupancy (`tcptrace_agent_table_entries`): not exported by this serve."
        );
    }
    let mut header =
        "| t | phase | serve | RSS MiB | fds | series | drops | scrape ms |".to_owned();
    for m in &maps {
        let _ = write!(header, " map {m} |");
    }
    for t in &tables {
        let _ = write!(header, " table {t} |");
    }
    let _ = writeln!(out, "\n{header}");
    let _ = writeln!(out, "|{}", "---|".repeat(8 + maps.len() + tables.len()));
    let cell = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
    for s in &outcomes.samples {
        let f = figures(s);
        let mut row = format!(
            "| {:.0} s | {} | {} | {} | {} | {} | {} | {} |",
            s.t,
            PHASES.get(s.phase).map_or("?", |p| p.1),
            s.instance + 1,
            s.rss_kib
                .map_or("–".into(), |k| format!("{:.1}", mib(k as f64))),
            s.fds.map_or("–".into(), |n| n.to_string()),
            f.map_or("–".into(), |f| f.series.to_string()),
            cell(f.and_then(|f| f.drops)),
            match &s.metrics {
                Ok(_) => format!("{:.0}", s.scrape_ms),
                Err(e) => format!("failed: {}", e.replace('|', "\\|")),
            }
        );
        for m in &maps {
            let _ = write!(row, " {} |", cell(f.and_then(|f| f.maps.get(m).copied())));
        }
        for t in &tables {
            let _ = write!(row, " {} |", cell(f.and_then(|f| f.tables.get(t).copied())));
        }
        let _ = writeln!(out, "{row}");
    }
}
