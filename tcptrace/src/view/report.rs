//! The leak report as text: one block per process, its code paths and
//! sockets, every host-supplied name made safe to print.

use std::fmt::Write as _;

use crate::{model::leak_report::LeakReport, view::terminal::sanitize};

/// Frames shown per stack in the text report (JSON has them all).
const TEXT_FRAMES: usize = 8;

fn write_stack(out: &mut String, label: &str, frames: &[String]) {
    if frames.is_empty() {
        let _ = writeln!(out, "      {label}: (no stack)");
        return;
    }
    for (i, frame) in frames.iter().take(TEXT_FRAMES).enumerate() {
        let lead = if i == 0 {
            format!("{label}:")
        } else {
            String::new()
        };
        let _ = writeln!(out, "      {lead:<10} {}", sanitize(frame));
    }
    if frames.len() > TEXT_FRAMES {
        let _ = writeln!(
            out,
            "      {:<10} ... {} more",
            "",
            frames.len() - TEXT_FRAMES
        );
    }
}

fn age_text(ms: u64, lower_bound: bool) -> String {
    let secs = ms as f64 / 1000.0;
    let text = if secs < 120.0 {
        format!("{secs:.1}s")
    } else if secs < 7200.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    };
    if lower_bound {
        format!(">={text}")
    } else {
        text
    }
}

pub fn render_text(report: &LeakReport) -> String {
    let mut out = String::new();
    let h = &report.health;
    let _ = writeln!(
        out,
        "tcptrace leaks: {} leaking socket{} (in CLOSE_WAIT or closed but held for >= {}), {} process{}   [events {}, drops {}, corrections {}{}]",
        report.leaking_sockets,
        if report.leaking_sockets == 1 { "" } else { "s" },
        age_text(report.min_age_ms, false),
        report.processes.iter().filter(|p| p.pid.is_some()).count(),
        if report.processes.len() == 1 {
            ""
        } else {
            "es"
        },
        h.events,
        h.drops,
        h.corrections,
        if h.unreadable_namespaces > 0 {
            format!(", {} namespaces unreadable", h.unreadable_namespaces)
        } else {
            String::new()
        },
    );
    if report.processes.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<8} {:<16} {:>10} {:>11} {:>9} {:>10} {:>13} {:>13}",
        "PID", "COMM", "CLOSE_WAIT", "CLOSED_HELD", "OLDEST", "GROWTH/MIN", "FDS", "FDS_RUN_OUT"
    );
    for p in &report.processes {
        let fds = match (p.fds_open, p.fd_limit) {
            (Some(open), Some(limit)) => format!("{open}/{limit}"),
            (Some(open), None) => open.to_string(),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<8} {:<16} {:>10} {:>11} {:>9} {:>10} {:>13} {:>13}",
            p.pid.map_or("-".into(), |pid| pid.to_string()),
            p.comm
                .as_deref()
                .map_or("(no fd: not accepted)".into(), sanitize),
            p.close_wait,
            p.closed_held,
            age_text(p.oldest_age_ms, p.oldest_age_is_lower_bound),
            p.growth_per_minute
                .map_or("-".into(), |g| format!("{g:+.1}")),
            fds,
            p.fds_exhausted_in_s
                .map_or("-".into(), |s| age_text((s * 1000.0) as u64, false)),
        );
        let peers: Vec<String> = p
            .peers
            .iter()
            .map(|peer| format!("{} x{}", peer.address, peer.sockets))
            .collect();
        let _ = writeln!(out, "    peers: {}", peers.join(", "));
        if let Some(pattern) = p.peer_pattern {
            let _ = writeln!(out, "    ({pattern})");
        }
        for path in &p.code_paths {
            let _ = writeln!(
                out,
                "    code path of {} socket{}:",
                path.sockets,
                if path.sockets == 1 { "" } else { "s" }
            );
            let origin = match path.origin {
                Some("connect") => "connect",
                _ => "first I/O",
            };
            write_stack(&mut out, origin, &path.origin_stack);
            write_stack(&mut out, "EOF", &path.eof_stack);
        }
        for s in &p.sockets {
            let _ = writeln!(
                out,
                "    {:<11} {} <- {}  age {}  fd {}  cookie {}",
                s.kind,
                s.local,
                s.remote,
                age_text(s.age_ms, s.age_is_lower_bound),
                s.fd.map_or("-".into(), |fd| fd.to_string()),
                s.cookie
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;
    use crate::model::{
        holder::Holder,
        leak_report::{
            GrowthHistory, ReportFilter, SocketStacks, build_report,
            test_support::{S, holder, report_at_10s, suspect},
        },
        leaks::{LeakKind, Provenance, Suspect},
        stack::Frames,
    };

    #[test]
    fn sockets_sharing_stacks_share_a_code_path() {
        let frames = |names: &[&str]| -> Frames {
            std::sync::Arc::new(names.iter().map(|n| n.to_string()).collect())
        };
        let serve = frames(&["read_request", "serve_connection"]);
        let eof = frames(&["drain_until_eof", "serve_connection"]);
        let leaks: Vec<Suspect> = (1..=4)
            .map(|c| suspect(c, 10 + c, "10.0.0.1:1", 0, LeakKind::CloseWait))
            .collect();
        let refs: Vec<&Suspect> = leaks.iter().collect();
        let holders: HashMap<u64, Vec<Holder>> = (1..=4)
            .map(|c| (10 + c, vec![holder(7, c as u32)]))
            .collect();
        let mut stacks = HashMap::new();
        for cookie in 1..=3 {
            stacks.insert(
                cookie,
                SocketStacks {
                    connect: None,
                    first_io: Some(serve.clone()),
                    eof: Some(eof.clone()),
                },
            );
        }
        let report = report_at_10s(&refs, &holders, &stacks);
        let paths = &report.processes[0].code_paths;
        assert_eq!(paths.len(), 2, "{paths:#?}");
        assert_eq!(paths[0].sockets, 3);
        assert_eq!(paths[0].origin, Some("first_io"));
        assert_eq!(paths[0].eof_stack, eof.to_vec());
        assert_eq!(
            (paths[1].sockets, paths[1].origin),
            (1, None),
            "no stack taken"
        );
        let text = render_text(&report);
        assert!(text.contains("code path of 3 sockets"), "{text}");
        assert!(text.contains("first I/O: read_request"), "{text}");
        assert!(text.contains("EOF:       drain_until_eof"), "{text}");
    }

    #[test]
    fn text_shows_bounds_and_unknowns() {
        let mut pre = suspect(1, 11, "[::ffff:10.0.0.1]:1000", 0, LeakKind::CloseWait);
        pre.provenance = Provenance::PreExisting;
        let refs = vec![&pre];
        let holders = HashMap::from([(11, vec![holder(10, 3)])]);
        let report = build_report(
            &refs,
            &holders,
            &HashMap::new(),
            45 * S,
            Duration::from_secs(30),
            &ReportFilter::default(),
            |_| None,
            &mut GrowthHistory::default(),
        );
        let text = render_text(&report);
        assert!(text.contains("1 leaking socket "), "{text}");
        assert!(text.contains(">=45.0s"), "{text}");
        assert!(
            text.contains("10.0.0.1:1000"),
            "v4-mapped shown as IPv4: {text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["processes"][0]["sockets"][0]["provenance"],
            "pre_existing"
        );
        assert_eq!(json["processes"][0]["fds_open"], serde_json::Value::Null);
    }

    #[test]
    fn a_hostile_comm_or_symbol_cannot_forge_a_row() {
        let leaks = [suspect(1, 11, "10.0.0.1:1000", 0, LeakKind::CloseWait)];
        let refs: Vec<&Suspect> = leaks.iter().collect();
        let mut hostile = holder(10, 3);
        hostile.comm = "\n99999 FAKE  9".into();
        let holders = HashMap::from([(11, vec![hostile])]);
        let frames: Frames = std::sync::Arc::new(vec!["main\x1b]0;owned\x07".to_string()]);
        let stacks = HashMap::from([(
            1,
            SocketStacks {
                connect: Some(frames),
                first_io: None,
                eof: None,
            },
        )]);
        let report = report_at_10s(&refs, &holders, &stacks);
        let text = render_text(&report);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            !text.lines().any(|line| line.starts_with("99999")),
            "{text}"
        );
        assert!(text.contains("?99999 FAKE  9"), "{text}");
        assert!(text.contains("main?]0;owned?"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["processes"][0]["comm"], "\n99999 FAKE  9");
    }
}
