//! The soak's plot: serve's RSS and open fds over time, one panel each,
//! the phases shaded and the restart marked. Plain SVG, no tools needed.

use std::fmt::Write as _;

use super::{
    outcomes::Outcomes,
    plan::{PHASES, Plan},
    sample::Sample,
};

/// One panel's figure from a sample.
type Reading = Box<dyn Fn(&Sample) -> Option<f64>>;

const WIDTH: f64 = 900.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PANEL_HEIGHT: f64 = 170.0;
/// Top of each panel.
const PANELS: [f64; 2] = [40.0, 260.0];
const HEIGHT: f64 = 470.0;

fn nice_top(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|top| *top >= max * 1.05)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn plot(plan: &Plan, outcomes: &Outcomes) -> String {
    let end = outcomes
        .spans
        .last()
        .map_or(plan.total.as_secs_f64(), |s| s.end)
        .max(1.0);
    let x = |t: f64| LEFT + (t / end) * (WIDTH - LEFT - RIGHT);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    for (i, (span, (_, name, _))) in outcomes.spans.iter().zip(PHASES.iter()).enumerate() {
        let (x0, x1) = (x(span.start), x(span.end));
        for top in PANELS {
            let _ = writeln!(
                svg,
                r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{PANEL_HEIGHT}" fill="{}"/>"##,
                (x1 - x0).max(0.0),
                if i % 2 == 0 { "#f0f0f0" } else { "#e0e8f0" }
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="9" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            PANELS[0] - 6.0 - if i % 2 == 0 { 0.0 } else { 10.0 },
            escape(name)
        );
    }
    let series: [(&str, &str, Reading); 2] = [
        (
            "RSS (MiB)",
            "#1f5fbf",
            Box::new(|s| s.rss_kib.map(|k| k as f64 / 1024.0)),
        ),
        ("open fds", "#2f8f3f", Box::new(|s| s.fds.map(|n| n as f64))),
    ];
    for ((label, colour, value), top) in series.iter().zip(PANELS) {
        let max = outcomes
            .samples
            .iter()
            .filter_map(value)
            .fold(0.0f64, f64::max);
        let y_top = nice_top(max);
        let y = |v: f64| top + PANEL_HEIGHT - (v / y_top) * PANEL_HEIGHT;
        for tick in [0.0, 0.5, 1.0] {
            let v = y_top * tick;
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#bbbbbb" stroke-width="0.5"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
                WIDTH - RIGHT,
                y(v),
                y(v),
                LEFT - 6.0,
                y(v) + 4.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{label}</text>"#,
            top + PANEL_HEIGHT / 2.0,
            top + PANEL_HEIGHT / 2.0
        );
        // One line per serve: the restart is a new process.
        for instance in 0..2 {
            let points: Vec<String> = outcomes
                .samples
                .iter()
                .filter(|s| s.instance == instance)
                .filter_map(|s| Some(format!("{:.1},{:.1}", x(s.t), y(value(s)?))))
                .collect();
            if !points.is_empty() {
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                    points.join(" ")
                );
            }
        }
    }
    if let Some(restart) = outcomes.restart_at {
        let rx = x(restart);
        let _ = writeln!(
            svg,
            r##"<line x1="{rx:.1}" x2="{rx:.1}" y1="{}" y2="{}" stroke="#c02020" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="#c02020">kill -9, restart</text>"##,
            PANELS[0],
            PANELS[1] + PANEL_HEIGHT,
            rx + 4.0,
            PANELS[0] + 12.0
        );
    }
    let minutes = (end / 60.0).ceil() as u32;
    let step = if minutes > 10 { 5 } else { 1 };
    for minute in (0..=minutes).step_by(step) {
        let t = f64::from(minute) * 60.0;
        if t > end {
            break;
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{minute}</text>"#,
            x(t),
            PANELS[1] + PANEL_HEIGHT + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">minutes since the soak started</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 8.0
    );
    svg.push_str("</svg>\n");
    svg
}
