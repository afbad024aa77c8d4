//! The leak report's code paths as a flame graph (Brendan Gregg's folded
//! format, drawn by inferno): one folded line per code path, its count the
//! leaked sockets that took it, under a root per holder process. A frame's
//! width is leaked sockets, never samples.

use inferno::flamegraph::{
    self as inferno_flamegraph, Options,
    color::{Color, PaletteMap},
};
use thiserror::Error;

use crate::{
    model::{
        leak_report::{CodePath, LeakReport, ProcessLeaks},
        stack::{Frame, FrameKind, truncation_line},
        stack_gaps::OriginMoment,
    },
    view::terminal::sanitize,
};

#[derive(Debug, Error)]
pub enum FlamegraphError {
    #[error("cannot draw the flame graph: {0}")]
    Render(#[source] std::io::Error),
}

/// Which stack of each code path the graph draws. One per graph: drawing
/// both would count every socket twice, and a frame's width would no
/// longer be its leaked sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlamegraphKind {
    /// The read of EOF that close() never followed: the leaking code.
    #[default]
    Eof,
    /// connect(), or the first read of data (`--stacks full` only): whose
    /// connection it is.
    Origin,
}

impl FlamegraphKind {
    pub const NAMES: &'static str = "eof, origin";

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "eof" => Some(Self::Eof),
            "origin" => Some(Self::Origin),
            _ => None,
        }
    }
}

/// What a frame is, for its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shade {
    Process,
    /// `[connect]` / `[first read]`.
    Origin,
    Program,
    Runtime,
    Jit,
    Unnamed,
    /// Why there is no stack, or where it was cut.
    Reason,
}

impl Shade {
    fn color(self) -> Color {
        let (r, g, b) = match self {
            Self::Process => (110, 150, 215),
            Self::Origin => (175, 135, 215),
            Self::Program => (235, 110, 65),
            Self::Runtime => (225, 190, 80),
            Self::Jit => (120, 190, 95),
            Self::Unnamed => (175, 175, 175),
            Self::Reason => (215, 215, 215),
        };
        Color { r, g, b }
    }

    fn of(frame: &Frame) -> Self {
        match frame.kind {
            FrameKind::Program => Self::Program,
            FrameKind::Runtime => Self::Runtime,
            FrameKind::Jit => Self::Jit,
            FrameKind::Unresolved => Self::Unnamed,
        }
    }
}

/// One code path of one process: frames from the root in, and its sockets.
struct Path {
    frames: Vec<(String, Shade)>,
    sockets: usize,
}

/// The leaking code paths, [`FlamegraphKind::Eof`], as folded lines
/// (`frame;frame;… count`, outermost first, count = leaked sockets).
pub fn folded_lines(report: &LeakReport) -> Vec<String> {
    folded_lines_of(report, FlamegraphKind::Eof)
}

pub fn folded_lines_of(report: &LeakReport, kind: FlamegraphKind) -> Vec<String> {
    paths(report, kind)
        .iter()
        .map(|path| {
            let names: Vec<&str> = path.frames.iter().map(|(name, _)| name.as_str()).collect();
            format!("{} {}", names.join(";"), path.sockets)
        })
        .collect()
}

/// The leaking code paths, [`FlamegraphKind::Eof`], as an interactive SVG.
pub fn render_svg(report: &LeakReport) -> Result<Vec<u8>, FlamegraphError> {
    render_svg_of(report, FlamegraphKind::Eof)
}

pub fn render_svg_of(
    report: &LeakReport,
    kind: FlamegraphKind,
) -> Result<Vec<u8>, FlamegraphError> {
    let paths = paths(report, kind);
    let drawn: usize = paths.iter().map(|p| p.sockets).sum();
    if drawn == 0 {
        // inferno refuses a graph of nothing.
        return Ok(empty_svg(TITLE).into_bytes());
    }
    let mut palette = PaletteMap::default();
    for (name, shade) in paths.iter().flat_map(|p| &p.frames) {
        if palette.get(name).is_none() {
            palette.insert(name, shade.color());
        }
    }
    let mut options = Options::default();
    options.title = TITLE.to_owned();
    options.subtitle = Some(subtitle(report, kind, drawn));
    options.count_name = "sockets".to_owned();
    options.name_type = "Frame:".to_owned();
    // Every frame's colour is in the palette: nothing is left to chance.
    options.deterministic = true;
    options.palette_map = Some(&mut palette);
    // Every code path is drawn, however thin: one leaked socket matters.
    options.min_width = 0.0;
    let lines = folded_lines_of(report, kind);
    let mut svg = Vec::new();
    inferno_flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .map_err(FlamegraphError::Render)?;
    Ok(svg)
}

/// Short enough to fit the graph's width; which stack is drawn is in the
/// subtitle.
const TITLE: &str = "Leaking sockets by code path (width = leaked sockets, not samples)";

fn subtitle(report: &LeakReport, kind: FlamegraphKind, drawn: usize) -> String {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let stack = match kind {
        FlamegraphKind::Eof => "the read of EOF never followed by close()",
        FlamegraphKind::Origin => "connect, accept, or the first read or write",
    };
    let mut text = format!(
        "stacks at {stack}; {} leaking socket{}",
        report.leaking_sockets,
        plural(report.leaking_sockets)
    );
    // A socket shared by a parent and its forked child leaks in both: it
    // is drawn under each, and the graph says so rather than hide either.
    if drawn > report.leaking_sockets {
        let extra = drawn - report.leaking_sockets;
        text.push_str(&format!(
            "; {extra} more drawn because sockets held by several processes appear under each"
        ));
    }
    let (with, of) = report.processes.iter().fold((0, 0), |(with, of), p| {
        (
            with + p.code_path_coverage.sockets_with_code_path,
            of + p.code_path_coverage.sockets,
        )
    });
    if with < of {
        text.push_str(&format!(
            "; code path of {with} of {of}{}",
            if report.stacks.is_sampled() {
                " (sampled)"
            } else {
                ""
            }
        ));
    }
    text
}

/// A valid SVG that says there is nothing to draw.
fn empty_svg(title: &str) -> String {
    // The title is ours, but escape it all the same: it is XML.
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    format!(
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            "\n",
            r#"<svg version="1.1" width="1200" height="90" viewBox="0 0 1200 90" xmlns="http://www.w3.org/2000/svg">"#,
            r##"<rect x="0" y="0" width="100%" height="100%" fill="#f8f8f8"/>"##,
            r#"<text x="600" y="30" text-anchor="middle" font-family="Verdana" font-size="16">{}</text>"#,
            r#"<text x="600" y="62" text-anchor="middle" font-family="Verdana" font-size="14">no leaking sockets</text>"#,
            "</svg>\n"
        ),
        escape(title)
    )
}

fn paths(report: &LeakReport, kind: FlamegraphKind) -> Vec<Path> {
    let mut paths = Vec::new();
    for process in &report.processes {
        let root = (process_frame(process), Shade::Process);
        for code_path in &process.code_paths {
            let mut frames = vec![root.clone()];
            frames.extend(code_path_frames(code_path, kind));
            paths.push(Path {
                frames,
                sockets: code_path.sockets,
            });
        }
    }
    paths
}

fn process_frame(process: &ProcessLeaks) -> String {
    match process.pid {
        Some(pid) => frame_name(&format!(
            "{} ({pid})",
            process.comm.as_deref().unwrap_or("?")
        )),
        None => "(no holder: not accepted)".to_owned(),
    }
}

/// The frames of one code path below its process, outermost first.
fn code_path_frames(path: &CodePath, kind: FlamegraphKind) -> Vec<(String, Shade)> {
    let (stack, truncated) = match kind {
        FlamegraphKind::Eof => (&path.eof_frames, path.eof_truncated.as_deref()),
        FlamegraphKind::Origin => (&path.origin_frames, path.origin_truncated.as_deref()),
    };
    let mut frames = Vec::new();
    if kind == FlamegraphKind::Origin {
        let origin = path.origin.map_or("origin", OriginMoment::label);
        frames.push((format!("[{origin}]"), Shade::Origin));
    }
    if stack.is_empty() && truncated.is_none() {
        frames.push((missing_reason(path, kind), Shade::Reason));
        return frames;
    }
    // The walk stopped short of the outermost frames: the cut is outermost.
    if let Some(reason) = truncated {
        frames.push((frame_name(&truncation_line(reason)), Shade::Reason));
    }
    for frame in stack.iter().rev() {
        let entry = if frame.kind == FrameKind::Unresolved {
            // An address names nothing and differs between runs: a run of
            // unnamed frames of one module is one frame, as in grouping.
            let module = frame.module.as_deref().unwrap_or("no module");
            (frame_name(&format!("(unnamed: {module})")), Shade::Unnamed)
        } else {
            (frame_name(&frame.text), Shade::of(frame))
        };
        if frames.last() != Some(&entry) || entry.1 != Shade::Unnamed {
            frames.push(entry);
        }
    }
    frames
}

/// Why a code path has no stack of `kind`, as the text report says it.
fn missing_reason(path: &CodePath, kind: FlamegraphKind) -> String {
    let why = match kind {
        FlamegraphKind::Origin => path.origin_missing,
        FlamegraphKind::Eof => path.eof_missing,
    };
    frame_name(&format!("(no stack: {})", why.unwrap_or("not taken")))
}

/// A name from the host (a comm, a symbol) as one folded frame: nothing in
/// it may split the frame (`;`), end the line (a newline), or read as the
/// line's count (` 12` at its end).
fn frame_name(text: &str) -> String {
    let mut name = sanitize(text).replace(';', "\u{FF1B}").trim().to_owned();
    if name.is_empty() {
        name.push('?');
    }
    // inferno takes the text after a line's last space as its count, and a
    // second number before it as a differential: a frame must not end in one.
    if let Some((head, tail)) = name.rsplit_once(' ')
        && !tail.is_empty()
        && tail.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        name = format!("{head}\u{A0}{tail}");
    }
    // inferno drops a `_[k]`-style suffix (its annotations) from what it
    // shows: keep the name whole.
    if let [.., b'_', b'[', _, b']'] = name.as_bytes() {
        name.push('\u{A0}');
    }
    name
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::{
        holder::Holder,
        leak_report::{
            SocketStacks,
            test_support::{holder, report_at_10s, report_at_10s_with, suspect},
        },
        leaks::{LeakKind, Provenance, Suspect},
        stack::{Frames, test_stack},
        stack_gaps::StackSampling,
    };

    const SERVER: &str = "/srv/server";
    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    fn eof(names: &[&str]) -> Frames {
        // Innermost first: libc's read, then the program's frames.
        let mut pairs = vec![("__libc_recv", LIBC)];
        pairs.extend(names.iter().map(|n| (*n, SERVER)));
        test_stack(&pairs, None)
    }

    /// `(pid, stack)` per socket; a socket with no stack has `None`.
    fn report(sockets: &[(u32, Option<Frames>)]) -> LeakReport {
        let leaks: Vec<Suspect> = (1..=sockets.len() as u64)
            .map(|c| suspect(c, 10 + c, "10.0.0.1:1", 0, LeakKind::CloseWait))
            .collect();
        let refs: Vec<&Suspect> = leaks.iter().collect();
        let holders: HashMap<u64, Vec<Holder>> = sockets
            .iter()
            .enumerate()
            .map(|(i, (pid, _))| (11 + i as u64, vec![holder(*pid, i as u32 + 3)]))
            .collect();
        let stacks = sockets
            .iter()
            .enumerate()
            .filter_map(|(i, (_, stack))| {
                Some((
                    i as u64 + 1,
                    SocketStacks {
                        eof: Some(stack.clone()?),
                        ..SocketStacks::default()
                    },
                ))
            })
            .collect();
        report_at_10s(&refs, &holders, &stacks)
    }

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        roxmltree::Document::parse_with_options(svg, options).expect("the SVG is XML")
    }

    fn count(line: &str) -> usize {
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    #[test]
    fn one_line_per_code_path_from_the_process_in() {
        let a = eof(&["drain", "handle_a", "main"]);
        let b = eof(&["drain", "handle_b", "main"]);
        let report = report(&[
            (7, Some(a.clone())),
            (7, Some(a.clone())),
            (7, Some(a)),
            (7, Some(b)),
            (7, None),
        ]);
        let mut lines = folded_lines(&report);
        lines.sort();
        assert_eq!(
            lines,
            [
                "proc7 (7);(no stack: the process did not read EOF after the peer closed: it stopped reading before) 1",
                "proc7 (7);main;handle_a;drain;__libc_recv 3",
                "proc7 (7);main;handle_b;drain;__libc_recv 1",
            ]
        );
        let total: usize = lines.iter().map(|l| count(l)).sum();
        assert_eq!(total, report.leaking_sockets);
    }

    #[test]
    fn reasons_follow_what_was_seen() {
        let report = report(&[(7, None)]);
        assert_eq!(
            folded_lines_of(&report, FlamegraphKind::Origin),
            [
                "proc7 (7);[origin];(no stack: made before tcptrace started, so its connect, accept or first read was not seen) 1"
            ]
        );
        let leak = [suspect(1, 11, "10.0.0.1:1", 0, LeakKind::CloseWait)];
        let refs: Vec<&Suspect> = leak.iter().collect();
        let holders = HashMap::from([(11, vec![holder(7, 1)])]);
        let off = report_at_10s_with(&refs, &holders, &HashMap::new(), &StackSampling::default());
        assert_eq!(folded_lines(&off), ["proc7 (7);(no stack: stacks off) 1"]);
        // What `--once` reports: sockets leaking before tcptrace started.
        let mut pre = leak[0].clone();
        pre.provenance = Provenance::PreExisting;
        let once = report_at_10s(&[&pre], &holders, &HashMap::new());
        assert_eq!(
            folded_lines(&once),
            [
                "proc7 (7);(no stack: in CLOSE_WAIT before tcptrace started: a read of EOF then was not seen) 1"
            ]
        );
        assert!(
            folded_lines_of(&once, FlamegraphKind::Origin)[0]
                .contains("this process's next leak will carry one"),
        );
    }

    #[test]
    fn unheld_sockets_and_shared_ones_are_explicit() {
        let mut report = report(&[(7, None)]);
        report.processes[0].pid = None;
        report.processes[0].comm = None;
        assert_eq!(
            folded_lines(&report)[0],
            "(no holder: not accepted);(no stack: the process did not read EOF after the peer closed: it stopped reading before) 1"
        );
        // The same socket held by a forked child too: drawn under each.
        let mut shared = report.clone();
        let mut child = shared.processes[0].clone();
        child.pid = Some(8);
        child.comm = Some("child".into());
        shared.processes.push(child);
        assert_eq!(folded_lines(&shared).len(), 2);
        let svg = String::from_utf8(render_svg(&shared).unwrap()).unwrap();
        assert!(svg.contains("1 leaking socket; 1 more drawn"), "{svg}");
    }

    #[test]
    fn truncated_stacks_and_unnamed_runs() {
        let stack = test_stack(
            &[
                ("read", LIBC),
                ("0x7f0000001000", "[anon]"),
                ("0x7f0000002000", "[anon]"),
                ("handle", SERVER),
            ],
            Some("no frame pointer"),
        );
        let report = report(&[(7, Some(stack))]);
        assert_eq!(
            folded_lines(&report),
            ["proc7 (7);(stack truncated: no frame pointer);handle;(unnamed: [anon]);read 1"]
        );
    }

    #[test]
    fn hostile_names_cannot_break_the_format_or_the_svg() {
        let stack = eof(&["evil;injected\nline 99", "h_[k]"]);
        let mut report = report(&[(7, Some(stack))]);
        report.processes[0].comm = Some("<script>alert(1)</script> 5".into());
        let lines = folded_lines(&report);
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert!(!line.contains('\n'));
        assert_eq!(line.matches(';').count(), 3, "{line}");
        assert_eq!(count(line), 1);
        let frames: Vec<&str> = line.rsplit_once(' ').unwrap().0.split(';').collect();
        assert_eq!(frames[1], "h_[k]\u{A0}");
        assert_eq!(frames[2], "evil\u{FF1B}injected?line\u{A0}99");

        let svg = String::from_utf8(render_svg(&report).unwrap()).unwrap();
        let doc = parse(&svg);
        assert!(
            doc.descendants().any(|n| n.has_tag_name("title")
                && n.text() == Some("<script>alert(1)</script> 5 (7) (1 sockets, 100.00%)")),
            "the comm is a title's text"
        );
        assert!(!svg.contains("<script>alert"), "a comm became markup");
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(svg.contains("evil\u{FF1B}injected?line\u{A0}99 (1 sockets, 100.00%)"));
    }

    #[test]
    fn widths_are_sockets_and_the_title_says_so() {
        let report = report(&[
            (7, Some(eof(&["handle_a"]))),
            (7, Some(eof(&["handle_a"]))),
            (7, Some(eof(&["handle_b"]))),
        ]);
        let svg = String::from_utf8(render_svg(&report).unwrap()).unwrap();
        assert!(svg.contains("width = leaked sockets, not samples"));
        assert!(svg.contains("handle_a (2 sockets, 66.67%)"), "{svg}");
        assert!(svg.contains("handle_b (1 sockets, 33.33%)"), "{svg}");
        assert!(svg.contains("proc7 (7) (3 sockets, 100.00%)"), "{svg}");
    }

    #[test]
    fn an_empty_report_is_a_valid_svg_that_says_so() {
        let report = report(&[]);
        assert!(folded_lines(&report).is_empty());
        let svg = String::from_utf8(render_svg(&report).unwrap()).unwrap();
        parse(&svg);
        assert!(svg.contains("no leaking sockets"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
