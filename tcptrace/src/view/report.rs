//! The leak report as text: one block per process, its code paths and
//! sockets, every host-supplied name made safe to print.

use std::fmt::Write as _;

use crate::{
    model::{
        leak_report::{CodePathCoverage, LeakReport},
        stack::{Frame, FrameKind, truncation_line},
        stack_gaps::{OriginMoment, StackMode},
    },
    view::terminal::sanitize,
};

/// `--stack-depth`'s default: the program's frames shown per stack.
pub const DEFAULT_STACK_DEPTH: usize = 8;

/// The lines of one stack in text: the program's frames in order,
/// innermost first, up to `depth` of them; runtime, library and unnamed
/// frames fold into a line before them and a line after them that say how
/// many and where, so the innermost libc and runtime frames never hide
/// the leaking function. JSON keeps every frame.
///
/// With no frame of the program named, the runtime's named frames are
/// shown instead, unless a note says which runtime hides the program:
/// then they fold too. Unnamed frames in anonymous memory always fold: an
/// address there names nothing.
pub fn stack_lines(
    frames: &[Frame],
    truncated: Option<&str>,
    depth: usize,
    noted: bool,
) -> Vec<String> {
    let any_program = frames.iter().any(Frame::is_program);
    let anonymous = |frame: &Frame| {
        frame.kind == FrameKind::Unresolved && frame.module.as_deref().is_none_or(|m| m == "[anon]")
    };
    let shown = |frame: &Frame| frame.is_program() || !(any_program || noted || anonymous(frame));
    let mut lines = Vec::new();
    // Runs not shown: before the first frame shown, between two shown, and
    // after the last one shown (with everything past `depth`).
    let mut leading: Vec<&Frame> = Vec::new();
    let mut between: Vec<&Frame> = Vec::new();
    let mut run: Vec<&Frame> = Vec::new();
    let mut count = 0;
    for (index, frame) in frames.iter().enumerate() {
        if !shown(frame) {
            run.push(frame);
            continue;
        }
        if count == depth {
            run.extend(&frames[index..]);
            break;
        }
        if count == 0 {
            leading.append(&mut run);
        } else {
            between.append(&mut run);
        }
        lines.push(sanitize(&frame.text).into_owned());
        count += 1;
    }
    if !leading.is_empty() {
        lines.insert(0, fold_line(&leading, ""));
    }
    // One line for the rest: a line per run between an interpreter's
    // frames would double the stack's height and say nothing new.
    if !run.is_empty() || !between.is_empty() {
        let more = if count == 0 { "" } else { " more" };
        let mut line = fold_line(&[between.as_slice(), run.as_slice()].concat(), more);
        if !between.is_empty() {
            line.push_str(&format!(
                " ({} of them between the frames above)",
                between.len()
            ));
        }
        lines.push(line);
    }
    if let Some(reason) = truncated {
        lines.push(sanitize(&truncation_line(reason)).into_owned());
    }
    lines
}

/// `… 5 frames in libc.so.6, Go net`: how many, and where (at most three
/// places named).
fn fold_line(frames: &[&Frame], more: &str) -> String {
    const PLACES: usize = 3;
    let mut areas: Vec<String> = Vec::new();
    for frame in frames {
        let area = frame.area();
        if !areas.contains(&area) {
            areas.push(area);
        }
    }
    let mut places = areas
        .iter()
        .take(PLACES)
        .map(|a| sanitize(a))
        .collect::<Vec<_>>()
        .join(", ");
    if areas.len() > PLACES {
        places.push_str(", …");
    }
    let n = frames.len();
    format!(
        "… {n}{more} frame{} in {places}",
        if n == 1 { "" } else { "s" }
    )
}

fn write_stack(
    out: &mut String,
    label: &str,
    frames: &[Frame],
    truncated: Option<&str>,
    depth: usize,
    noted: bool,
    missing: &str,
) {
    if frames.is_empty() && truncated.is_none() {
        let lead = format!("{label}:");
        let _ = writeln!(out, "      {lead:<12} ({missing})");
        return;
    }
    for (i, line) in stack_lines(frames, truncated, depth, noted)
        .iter()
        .enumerate()
    {
        let lead = if i == 0 {
            format!("{label}:")
        } else {
            String::new()
        };
        let _ = writeln!(out, "      {lead:<12} {line}");
    }
}

/// "code paths of 37 of 120 sockets (sampled: …)", or `None` when every
/// socket has one and nothing was sampled out.
pub(crate) fn coverage_line(coverage: &CodePathCoverage, mode: StackMode) -> Option<String> {
    if mode == StackMode::Off {
        return None;
    }
    let CodePathCoverage {
        sockets_with_code_path: with,
        sockets,
        sampled,
    } = *coverage;
    if with == sockets {
        return None;
    }
    Some(format!(
        "code path of {with} of {sockets} socket{}{}",
        if sockets == 1 { "" } else { "s" },
        if sampled {
            " (sampled: the copy budget was spent; a process that leaks without a code path gets a budget of its own for its new sockets)"
        } else {
            ""
        }
    ))
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

/// `stack_depth`: the program's frames shown per stack.
pub fn render_text(report: &LeakReport, stack_depth: usize) -> String {
    let mut out = String::new();
    let h = &report.health;
    let _ = writeln!(
        out,
        "tcptrace leaks: {} leaking socket{} (in CLOSE_WAIT or closed but held for >= {}), {} process{}   [transitions {}, records {}, drops {}, corrections {}{}]",
        report.leaking_sockets,
        if report.leaking_sockets == 1 { "" } else { "s" },
        age_text(report.min_age_ms, false),
        report.processes.iter().filter(|p| p.pid.is_some()).count(),
        if report.processes.len() == 1 {
            ""
        } else {
            "es"
        },
        h.transitions,
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
        if let Some(line) = coverage_line(&p.code_path_coverage, report.stacks.mode) {
            let _ = writeln!(out, "    ({line})");
        }
        for path in &p.code_paths {
            let _ = writeln!(
                out,
                "    code path of {} socket{}:",
                path.sockets,
                if path.sockets == 1 { "" } else { "s" }
            );
            let origin = path.origin.map_or("origin", OriginMoment::label);
            let noted = path.note.is_some();
            let missing = |why: &Option<&str>| {
                why.map_or_else(|| "no stack".to_owned(), |why| format!("no stack: {why}"))
            };
            write_stack(
                &mut out,
                origin,
                &path.origin_frames,
                path.origin_truncated.as_deref(),
                stack_depth,
                noted,
                &missing(&path.origin_missing),
            );
            write_stack(
                &mut out,
                "EOF",
                &path.eof_frames,
                path.eof_truncated.as_deref(),
                stack_depth,
                noted,
                &missing(&path.eof_missing),
            );
            if let Some(note) = &path.note {
                let _ = writeln!(out, "      {:<12} {}", "note:", sanitize(note));
            }
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
        stack::{Frames, test_stack},
    };

    const SERVER: &str = "/srv/server";
    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    fn frames(names: &[&str]) -> Frames {
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, SERVER)).collect();
        test_stack(&pairs, None)
    }

    /// One process (pid 7) holding one socket per EOF stack.
    fn report_of(eof_stacks: &[Frames]) -> LeakReport {
        let leaks: Vec<Suspect> = (1..=eof_stacks.len() as u64)
            .map(|c| suspect(c, 10 + c, "10.0.0.1:1", 0, LeakKind::CloseWait))
            .collect();
        let refs: Vec<&Suspect> = leaks.iter().collect();
        let holders: HashMap<u64, Vec<Holder>> = (1..=eof_stacks.len() as u64)
            .map(|c| (10 + c, vec![holder(7, c as u32)]))
            .collect();
        let stacks = eof_stacks
            .iter()
            .enumerate()
            .map(|(i, eof)| {
                (
                    i as u64 + 1,
                    SocketStacks {
                        origin: None,
                        eof: Some(eof.clone()),
                    },
                )
            })
            .collect();
        report_at_10s(&refs, &holders, &stacks)
    }

    #[test]
    fn sockets_sharing_stacks_share_a_code_path() {
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
                    origin: Some((OriginMoment::FirstRead, serve.clone())),
                    eof: Some(eof.clone()),
                },
            );
        }
        let report = report_at_10s(&refs, &holders, &stacks);
        let paths = &report.processes[0].code_paths;
        assert_eq!(paths.len(), 2, "{paths:#?}");
        assert_eq!(paths[0].sockets, 3);
        assert_eq!(paths[0].origin, Some(OriginMoment::FirstRead));
        assert_eq!(paths[0].eof_stack, eof.lines());
        assert_eq!(
            (paths[1].sockets, paths[1].origin),
            (1, None),
            "no stack taken"
        );
        let text = render_text(&report, DEFAULT_STACK_DEPTH);
        assert!(text.contains("code path of 3 sockets"), "{text}");
        assert!(text.contains("first read:  read_request"), "{text}");
        assert!(text.contains("EOF:         drain_until_eof"), "{text}");
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
            &crate::model::stack_gaps::StackSampling::default(),
            45 * S,
            Duration::from_secs(30),
            &ReportFilter::default(),
            |_| None,
            &mut GrowthHistory::default(),
        );
        let text = render_text(&report, DEFAULT_STACK_DEPTH);
        assert!(text.contains("1 leaking socket "), "{text}");
        assert!(text.contains(">=45.0s"), "{text}");
        // A code path without stacks says why: this socket is older than
        // tcptrace.
        assert!(
            text.contains("origin:      (no stack: made before tcptrace started"),
            "{text}"
        );
        assert!(
            text.contains("EOF:         (no stack: in CLOSE_WAIT before tcptrace started"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        let path = &json["processes"][0]["code_paths"][0];
        assert!(
            path["origin_missing"]
                .as_str()
                .unwrap()
                .starts_with("made before tcptrace started"),
            "the JSON carries the reason too: {path}"
        );
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
        let frames = frames(&["main\x1b]0;owned\x07"]);
        let stacks = HashMap::from([(
            1,
            SocketStacks {
                origin: Some((OriginMoment::Connect, frames)),
                eof: None,
            },
        )]);
        let report = report_at_10s(&refs, &holders, &stacks);
        let text = render_text(&report, DEFAULT_STACK_DEPTH);
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

    /// Go 1.19: six frames of the standard library before the handler; the
    /// old view stopped at 8 frames inside net.(*conn).Read.
    #[test]
    fn the_programs_frames_come_before_the_runtimes() {
        const GO: &str = "/srv/goserver";
        let go = test_stack(
            &[
                ("syscall.Syscall", GO),
                ("syscall.read", GO),
                ("internal/poll.ignoringEINTRIO", GO),
                ("internal/poll.(*FD).Read", GO),
                ("net.(*netFD).Read", GO),
                ("net.(*conn).Read", GO),
                ("main.drain", GO),
                ("main.handleLegacy", GO),
                ("runtime.goexit", GO),
            ],
            None,
        );
        let text = render_text(&report_of(std::slice::from_ref(&go)), DEFAULT_STACK_DEPTH);
        let stack: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("EOF:"))
            .take_while(|l| !l.contains("cookie"))
            .collect();
        assert_eq!(
            stack,
            [
                "      EOF:         … 6 frames in Go syscall, Go internal/poll, Go net",
                "                   main.drain",
                "                   main.handleLegacy",
                "                   … 1 more frame in Go runtime",
            ],
            "{text}"
        );
        // JSON keeps every frame, innermost first, with what it is.
        let json = serde_json::to_value(report_of(&[go])).unwrap();
        let path = &json["processes"][0]["code_paths"][0];
        assert_eq!(path["eof_stack"].as_array().unwrap().len(), 9);
        assert_eq!(path["eof_stack"][0], "syscall.Syscall");
        assert_eq!(path["eof_frames"][0]["kind"], "runtime");
        assert_eq!(path["eof_frames"][7]["kind"], "program");
        assert_eq!(path["eof_frames"][7]["module"], "goserver");
        assert_eq!(path["note"], serde_json::Value::Null);
    }

    #[test]
    fn stack_depth_counts_the_programs_frames() {
        let deep: Vec<String> = (0..12).map(|i| format!("level_{i}")).collect();
        let mut pairs = vec![("__libc_recv", LIBC), ("__libc_recv2", LIBC)];
        pairs.extend(deep.iter().map(|n| (n.as_str(), SERVER)));
        pairs.push(("__libc_start_main", LIBC));
        let stack = test_stack(
            &pairs,
            Some("the 8 KiB stack copy ended before the outermost frame"),
        );
        let lines = stack_lines(&stack.frames, stack.truncated.as_deref(), 3, false);
        assert_eq!(
            lines,
            [
                "… 2 frames in libc.so.6",
                "level_0",
                "level_1",
                "level_2",
                "… 10 more frames in server, libc.so.6",
                "(stack truncated: the 8 KiB stack copy ended before the outermost frame)",
            ]
        );
        let all = stack_lines(&stack.frames, None, 128, false);
        assert_eq!(all.len(), 1 + 12 + 1);
    }

    /// Python 3.11: one bug was three code paths of `[anon]+0x…` frames.
    #[test]
    fn unnamed_addresses_are_one_code_path_and_the_note_replaces_them() {
        const PY: &str = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0";
        let python = |anon: &[&'static str]| {
            let mut pairs = vec![
                ("__libc_recv", LIBC),
                ("sock_recv_guts", PY),
                ("_PyEval_EvalFrameDefault", PY),
            ];
            pairs.extend(anon.iter().map(|a| (*a, "[anon]")));
            pairs.push(("Py_RunMain", PY));
            test_stack(&pairs, None)
        };
        let report = report_of(&[
            python(&["[anon]+0x86c10"]),
            python(&["[anon]+0xc23d0", "[anon]+0x10"]),
            python(&[]),
        ]);
        let paths = &report.processes[0].code_paths;
        assert_eq!(paths.len(), 2, "{paths:#?}");
        assert_eq!(paths[0].sockets, 2);
        let note = paths[0].note.as_deref().unwrap();
        assert!(note.contains("-X perf"), "{note}");
        let text = render_text(&report, DEFAULT_STACK_DEPTH);
        assert!(!text.contains("[anon]+0x"), "no bare addresses:\n{text}");
        assert!(
            text.contains("EOF:         … 5 frames in libc.so.6, libpython3.11.so.1.0, [anon]"),
            "{text}"
        );
        assert!(
            text.contains("note:        Python interpreter frames: run Python 3.12+ with -X perf"),
            "{text}"
        );
    }

    /// Python 3.12 with -X perf: the perf map's names are the program's.
    #[test]
    fn perf_map_names_are_shown_as_the_programs_code() {
        const PY: &str = "/root/.pyenv/versions/3.12.1/bin/python3.12";
        let stack = test_stack(
            &[
                ("__libc_recv", LIBC),
                ("sock_recv_impl", PY),
                ("_PyEval_EvalFrameDefault", PY),
                (
                    "py::recv_into:/root/.pyenv/versions/3.12.1/lib/python3.12/socket.py",
                    "[anon]",
                ),
                ("_PyEval_EvalFrameDefault", PY),
                ("py::process_data:/srv/app.py", "[anon]"),
                ("_PyEval_EvalFrameDefault", PY),
                ("py::handle_request:/srv/app.py", "[anon]"),
                ("Py_RunMain", PY),
            ],
            None,
        );
        let lines = stack_lines(
            &stack.frames,
            None,
            DEFAULT_STACK_DEPTH,
            stack.note.is_some(),
        );
        assert_eq!(
            lines,
            [
                "… 5 frames in libc.so.6, python3.12, Python stdlib",
                "py::process_data:/srv/app.py",
                "py::handle_request:/srv/app.py",
                "… 2 more frames in python3.12 (1 of them between the frames above)",
            ]
        );
        assert_eq!(stack.note, None);
    }

    #[test]
    fn without_a_runtime_or_a_program_frame_the_library_frames_show() {
        let stack = test_stack(
            &[
                ("__libc_recv", LIBC),
                ("server+0x1234", SERVER),
                ("[anon]+0x10", "[anon]"),
            ],
            Some("a frame pointed outside the stack (0x10)"),
        );
        let lines = stack_lines(&stack.frames, stack.truncated.as_deref(), 8, false);
        assert_eq!(
            lines,
            [
                "__libc_recv",
                "server+0x1234",
                "… 1 more frame in [anon]",
                "(stack truncated: a frame pointed outside the stack (0x10))",
            ]
        );
        let cut_only = stack_lines(
            &[],
            Some("the process exited before its stack was unwound"),
            8,
            false,
        );
        assert_eq!(
            cut_only,
            ["(stack truncated: the process exited before its stack was unwound)"]
        );
    }

    /// Java 17, -XX:+PreserveFramePointer, named by `jcmd PID
    /// Compiler.perfmap` after the leak: the stack as tcptrace saw it.
    #[test]
    fn compiled_java_methods_show_between_the_jdk_and_the_jvm() {
        const JDK: &str = "/usr/lib/jvm/java-17-openjdk-amd64/lib";
        let nio = format!("{JDK}/libnio.so");
        let jvm = format!("{JDK}/server/libjvm.so");
        let jli = format!("{JDK}/libjli.so");
        let stack = test_stack(
            &[
                ("__GI___libc_read (read.c:26) [inlined]", LIBC),
                ("__GI___libc_read (read.c:24)", LIBC),
                ("Java_sun_nio_ch_SocketDispatcher_read0", &nio),
                (
                    "int sun.nio.ch.SocketDispatcher.read0(java.io.FileDescriptor, long, int)",
                    "[anon]",
                ),
                ("int java.io.InputStream.read(byte[])", "[anon]"),
                ("int Leak.drain(java.net.Socket)", "[anon]"),
                ("void Leak.main(java.lang.String[])", "[anon]"),
                ("StubRoutines (1)", "[anon]"),
                (
                    "JavaCalls::call_helper(JavaValue*, methodHandle const&, JavaCallArguments*, JavaThread*)",
                    &jvm,
                ),
                ("jni_CallStaticVoidMethod", &jvm),
                ("JavaMain", &jli),
                ("start_thread (pthread_create.c:442)", LIBC),
            ],
            None,
        );
        assert_eq!(stack.note, None, "the program's methods are named");
        assert_eq!(
            stack_lines(&stack.frames, None, DEFAULT_STACK_DEPTH, false),
            [
                "… 5 frames in libc.so.6, libnio.so, JDK",
                "int Leak.drain(java.net.Socket)",
                "void Leak.main(java.lang.String[])",
                "… 5 more frames in JVM stubs, libjvm.so, libjli.so, …",
            ]
        );
    }
}
