//! serve's page at `/`: the leak report, the findings and the agent's
//! health as one self-contained HTML document that reloads itself. Every
//! value from the host (a comm, a symbol, an address) is attacker-chosen
//! text: it goes through [`escape`] and nothing else reaches the markup.

use std::{fmt::Write as _, time::Duration, time::SystemTime};

use crate::{
    model::diagnose::{Finding, Severity},
    model::leak_report::{LeakReport, PageLimits, ProcessLeaks},
    view::terminal::sanitize,
};

const TEMPLATE: &str = include_str!("page.html");

/// The page runs no script, loads only its own flame graph, and may not be
/// framed (so no click on it can be stolen).
/// Where serve puts, at request time, a warning that the page's figures
/// are older than they should be (the page itself is built once per read).
pub const STALE_MARKER: &str = "<!--tcptrace:stale-->";

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; img-src 'self'; \
     style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A page that reloads faster flickers, and serve's reads of the host are
/// spaced further apart on a busy host anyway.
const MIN_RELOAD_S: f64 = 2.0;

/// Processes listed at most, as in `/leaks`.
const MAX_PROCESSES: usize = PageLimits::SERVE.processes;

/// Under this many seconds before fds run out the estimate is shown red;
/// under a day, amber.
const FDS_CRITICAL_S: f64 = 3600.0;
const FDS_WARNING_S: f64 = 86_400.0;

pub struct PageInputs<'a> {
    pub host: &'a str,
    pub updated: SystemTime,
    /// How often serve refreshes: the page reloads as often (at most every
    /// [`MIN_RELOAD_S`]).
    pub refresh: Duration,
    pub report: &'a LeakReport,
    pub findings: &'a [Finding],
    /// `Ok` when `/flamegraph.svg` has a graph, else why there is none.
    pub flamegraph: Result<(), String>,
}

/// `text` safe as HTML text or as a quoted attribute value: unprintable
/// characters become '?' (as on a terminal: a bidi override must not
/// reorder what the page shows), then the five characters HTML gives a
/// meaning are written as entities.
pub fn escape(text: &str) -> String {
    let text = sanitize(text);
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

pub fn render(inputs: &PageInputs) -> String {
    let refresh_s = inputs
        .refresh
        .as_secs_f64()
        .ceil()
        .max(MIN_RELOAD_S)
        .to_string();
    let leaking = inputs.report.leaking_sockets;
    let title = if leaking == 0 {
        format!("tcptrace: {}", escape(inputs.host))
    } else {
        format!("({leaking}) tcptrace: {}", escape(inputs.host))
    };
    fill(TEMPLATE, |slot| match slot {
        "refresh_s" => refresh_s.clone(),
        "title" => title.clone(),
        "host" => escape(inputs.host),
        "updated" => escape(&humantime::format_rfc3339_seconds(inputs.updated).to_string()),
        "tiles" => tiles(inputs),
        "processes" => processes(inputs.report),
        "findings" => findings(inputs.findings),
        "health" => health(inputs.report),
        "flamegraph" if inputs.report.is_empty() => {
            r#"<p class="ok">No leaking socket: no code path to draw.</p>"#.to_owned()
        }
        "flamegraph" => flamegraph(&inputs.flamegraph),
        _ => String::new(),
    })
}

/// The template with each `<!--@name-->` replaced by `value(name)`, in one
/// pass: a value is never searched for slots, so a comm that reads
/// `<!--@host-->` stays that text.
fn fill(template: &str, mut value: impl FnMut(&str) -> String) -> String {
    const OPEN: &str = "<!--@";
    const CLOSE: &str = "-->";
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else {
            out.push_str(&rest[start..]);
            return out;
        };
        out.push_str(&value(&after[..end]));
        rest = &after[end + CLOSE.len()..];
    }
    out.push_str(rest);
    out
}

fn tile(out: &mut String, value: impl std::fmt::Display, label: &str, class: &str) {
    let _ = write!(
        out,
        r#"<div class="tile"><div class="n {class}">{value}</div><div class="l">{label}</div></div>"#
    );
}

fn tiles(inputs: &PageInputs) -> String {
    let report = inputs.report;
    let critical = inputs
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .count();
    let warning = inputs.findings.len() - critical;
    let alarm = |bad: bool, class| if bad { class } else { "ok" };
    let mut out = String::new();
    tile(
        &mut out,
        report.leaking_sockets,
        "leaking sockets",
        alarm(report.leaking_sockets > 0, "crit"),
    );
    tile(
        &mut out,
        report.processes.len(),
        "leaking processes",
        alarm(!report.processes.is_empty(), "crit"),
    );
    tile(
        &mut out,
        critical,
        "critical findings",
        alarm(critical > 0, "crit"),
    );
    tile(&mut out, warning, "warnings", alarm(warning > 0, "warn"));
    tile(
        &mut out,
        report.health.drops,
        "events dropped",
        alarm(report.health.drops > 0, "warn"),
    );
    out
}

/// "45s", "3m 12s", "2h 05m", "3d 04h": two units at most.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn process_row(out: &mut String, process: &ProcessLeaks) {
    let (pid, comm) = match process.pid {
        Some(pid) => (
            pid.to_string(),
            escape(process.comm.as_deref().unwrap_or("?")),
        ),
        None => (
            "&mdash;".to_owned(),
            r#"<span class="dim">held by no process (never accepted)</span>"#.to_owned(),
        ),
    };
    let oldest = format!(
        "{}{}",
        if process.oldest_age_is_lower_bound {
            "&ge; "
        } else {
            ""
        },
        age(process.oldest_age_ms)
    );
    let growth = match process.growth_per_minute {
        Some(rate) if rate > 0.0 => format!(r#"<span class="crit">+{rate:.1}</span>"#),
        Some(rate) => format!("{rate:.1}"),
        None => r#"<span class="dim">measuring</span>"#.to_owned(),
    };
    let fds = match (process.fds_open, process.fd_limit) {
        (Some(open), Some(limit)) if limit > 0 => {
            let used = (open as f64 / limit as f64).min(1.0);
            let class = if used >= 0.9 {
                "crit"
            } else if used >= 0.7 {
                "warn"
            } else {
                ""
            };
            format!(
                r#"{open} / {limit}<span class="bar"><i class="{class}" style="width:{:.0}%"></i></span>"#,
                used * 100.0
            )
        }
        (Some(open), _) => format!("{open} / no limit"),
        _ => r#"<span class="dim">unknown</span>"#.to_owned(),
    };
    let run_out = match process.fds_exhausted_in_s {
        Some(s) => {
            let class = if s < FDS_CRITICAL_S {
                "crit"
            } else if s < FDS_WARNING_S {
                "warn"
            } else {
                "dim"
            };
            format!(
                r#"<span class="{class}">in {}</span>"#,
                age((s * 1000.0) as u64)
            )
        }
        None => r#"<span class="dim">not growing</span>"#.to_owned(),
    };
    let coverage = process.code_path_coverage;
    let code_path = format!(
        r#"<span class="{}">{} of {}{}</span>"#,
        if coverage.sockets_with_code_path == coverage.sockets {
            ""
        } else {
            "warn"
        },
        coverage.sockets_with_code_path,
        coverage.sockets,
        if coverage.sampled { " (sampled)" } else { "" }
    );
    let _ = write!(
        out,
        r#"<tr><td class="num">{pid}</td><td class="comm">{comm}</td><td class="num crit">{}</td><td class="num">{}</td><td class="num">{oldest}</td><td class="num">{growth}</td><td class="num">{fds}</td><td class="num">{run_out}</td><td class="num">{code_path}</td></tr>"#,
        process.close_wait, process.closed_held
    );
}

fn processes(report: &LeakReport) -> String {
    if report.processes.is_empty() {
        return format!(
            r#"<p class="ok">No socket has leaked for longer than {}.</p>"#,
            age(report.min_age_ms)
        );
    }
    let mut out = String::from(
        r#"<table><thead><tr><th class="num">PID</th><th>Process</th><th class="num">CLOSE_WAIT</th><th class="num">Closed, held</th><th class="num">Oldest</th><th class="num">Growth /min</th><th class="num">fds open / limit</th><th class="num">fds run out</th><th class="num">Code path</th></tr></thead><tbody>"#,
    );
    for process in report.processes.iter().take(MAX_PROCESSES) {
        process_row(&mut out, process);
    }
    out.push_str("</tbody></table>");
    if let Some(hidden) = report.processes.get(MAX_PROCESSES..)
        && !hidden.is_empty()
    {
        let sockets: usize = hidden.iter().map(|p| p.close_wait + p.closed_held).sum();
        let _ = write!(
            out,
            r#"<p class="note">{} more processes with {sockets} leaking sockets not shown: see <a href="/leaks">/leaks</a> or <code>tcptrace leaks</code>.</p>"#,
            hidden.len()
        );
    }
    out
}

fn findings(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return r#"<p class="ok">No findings.</p>"#.to_owned();
    }
    let mut out = String::new();
    for finding in findings {
        let severity = finding.severity.name();
        let _ = write!(
            out,
            r#"<div class="finding"><span class="sev {severity}">{}</span><span class="what">{}: {}</span><span class="evidence">{}</span><span class="advice">{}</span></div>"#,
            severity.to_uppercase(),
            finding.kind.name().replace('_', " "),
            escape(&finding.subject),
            escape(&finding.evidence),
            escape(finding.advice),
        );
    }
    out
}

fn health(report: &LeakReport) -> String {
    let health = &report.health;
    let sampling = &report.stacks;
    let rows: [(&str, u64, &str); 10] = [
        (
            "transitions",
            health.transitions,
            "seen by the probe, recorded or counted",
        ),
        ("records", health.events, ""),
        (
            "dropped",
            health.drops,
            "the ring buffer overflowed: counts may be low",
        ),
        (
            "corrections",
            health.corrections,
            "transitions fixed from the kernel's table",
        ),
        ("decode errors", health.decode_errors, ""),
        (
            "host read failures",
            health.host_read_failures,
            "the report may be out of date",
        ),
        ("stack errors", health.stack_errors, ""),
        ("stack copies", sampling.copies_taken, ""),
        (
            "stack copies refused",
            sampling.copies_refused,
            "the copy budget was spent: code paths are a sample",
        ),
        (
            "unreadable namespaces",
            health.unreadable_namespaces as u64,
            "their sockets are not seen",
        ),
    ];
    let mut out = String::from("<table><tbody>");
    for (label, value, meaning) in rows {
        // Only events are expected to be non-zero.
        let class = if label == "events" || label == "stack copies" || value == 0 {
            ""
        } else {
            "warn"
        };
        let meaning = if value == 0 { "" } else { meaning };
        let _ = write!(
            out,
            r#"<tr><td>{label}</td><td class="num {class}">{value}</td><td class="dim">{meaning}</td></tr>"#
        );
    }
    out.push_str("</tbody></table>");
    out
}

fn flamegraph(state: &Result<(), String>) -> String {
    match state {
        Ok(()) => concat!(
            r#"<a href="/flamegraph.svg"><img src="/flamegraph.svg" alt="flame graph of the code paths of leaking sockets"></a>"#,
            r#"<p class="note">A frame's width is the number of leaking sockets whose stack passes through it. Open it for the interactive graph.</p>"#
        )
        .to_owned(),
        Err(why) => format!(r#"<p class="dim">{}</p>"#, escape(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        diagnose::FindingKind, leak_report::ProbeHealth, stack_gaps::StackSampling,
    };

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(escape("a&b"), "a&amp;b");
        assert_eq!(escape("&amp;"), "&amp;amp;");
        assert_eq!(escape(r#"" onerror='x'"#), "&quot; onerror=&#39;x&#39;");
        assert_eq!(escape("nginx: worker"), "nginx: worker");
    }

    #[test]
    fn escape_shows_controls_and_bidi_overrides_as_question_marks() {
        assert_eq!(escape("a\nb\x1b[31m\u{202E}c"), "a?b?[31m?c");
    }

    fn report(comm: &str) -> LeakReport {
        LeakReport {
            min_age_ms: 30_000,
            leaking_sockets: 3,
            processes: vec![ProcessLeaks {
                pid: Some(4242),
                comm: Some(comm.to_owned()),
                close_wait: 3,
                oldest_age_ms: 192_000,
                growth_per_minute: Some(2.0),
                fds_open: Some(900),
                fd_limit: Some(1024),
                fds_exhausted_in_s: Some(3720.0),
                ..ProcessLeaks::default()
            }],
            health: ProbeHealth {
                events: 17,
                drops: 2,
                ..ProbeHealth::default()
            },
            stacks: StackSampling::default(),
        }
    }

    fn page(report: &LeakReport, host: &str) -> String {
        render(&PageInputs {
            host,
            updated: SystemTime::UNIX_EPOCH,
            refresh: Duration::from_millis(4500),
            report,
            findings: &[],
            flamegraph: Err("no code paths".into()),
        })
    }

    #[test]
    fn a_slot_written_by_the_host_is_text_not_a_slot() {
        let report = report("<!--@host-->");
        let html = page(&report, "box<1>");
        assert!(html.contains("&lt;!--@host--&gt;"), "{html}");
        assert!(html.contains("tcptrace <span>box&lt;1&gt;</span>"));
        assert!(!html.contains("<!--@"), "an unfilled slot:\n{html}");
    }

    #[test]
    fn a_row_shows_the_numbers_an_operator_acts_on() {
        let report = report("<script>");
        let html = page(&report, "h");
        assert!(html.contains(r#"<td class="comm">&lt;script&gt;</td>"#));
        assert!(!html.contains("<script>"));
        for shown in [
            ">4242<",
            "3m 12s",
            "+2.0",
            "900 / 1024",
            r#"<span class="warn">in 1h 02m</span>"#,
        ] {
            assert!(html.contains(shown), "no {shown:?} in\n{html}");
        }
        // Reloads as often as serve refreshes, rounded up.
        assert!(html.contains(r#"content="5""#));
    }

    #[test]
    fn a_quiet_host_shows_no_graph_and_a_finding_its_severity() {
        let quiet = LeakReport {
            leaking_sockets: 0,
            processes: Vec::new(),
            ..report("x")
        };
        let finding = Finding {
            kind: FindingKind::TimeWaitExhaustion,
            severity: Severity::Critical,
            subject: "<b>10.0.0.1:5432</b>".to_owned(),
            evidence: "27000 of 28232 ports in TIME_WAIT".to_owned(),
            advice: "Reuse connections.",
        };
        let html = render(&PageInputs {
            host: "h",
            updated: SystemTime::UNIX_EPOCH,
            refresh: Duration::from_millis(100),
            report: &quiet,
            findings: std::slice::from_ref(&finding),
            flamegraph: Ok(()),
        });
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("No socket has leaked for longer than 30s."));
        assert!(html.contains(
            r#"<span class="sev critical">CRITICAL</span><span class="what">time wait exhaustion: &lt;b&gt;10.0.0.1:5432&lt;/b&gt;</span>"#
        ), "{html}");
        // Never faster than every 2s.
        assert!(html.contains(r#"content="2""#));
    }

    #[test]
    fn ages_read_in_two_units() {
        assert_eq!(age(999), "0s");
        assert_eq!(age(59_000), "59s");
        assert_eq!(age(61_000), "1m 01s");
        assert_eq!(age(7_260_000), "2h 01m");
        assert_eq!(age(90_000_000), "1d 01h");
    }
}
