//! The demo's timeline as an SVG picture: one lane per worker, a bar per
//! tenure, ticks for accepted writes, crosses for refused ones, and a band
//! for each pause and network cut.

use std::fmt::Write;
use std::time::Duration;

use super::demo::{Moment, What};

const LANE: f64 = 56.0;
const LEFT: f64 = 110.0;
const WIDTH: f64 = 1000.0;
const TOP: f64 = 50.0;

fn colour(epoch: u64) -> &'static str {
    const PALETTE: [&str; 8] = [
        "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
    ];
    PALETTE[(epoch as usize) % PALETTE.len()]
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn timeline(moments: &[Moment], total: Duration) -> String {
    let mut lanes: Vec<&str> = Vec::new();
    for m in moments {
        if !lanes.contains(&m.who.as_str()) {
            lanes.push(&m.who);
        }
    }
    // worker-2 before worker-10.
    lanes.sort_by_key(|w| (w.len(), *w));
    let span = total.as_secs_f64().max(0.001);
    // When each epoch began, to show where a paused leader's belief outlived
    // its tenure.
    let mut began: Vec<(u64, Duration)> = moments
        .iter()
        .filter_map(|m| match m.what {
            What::Leads(e) => Some((e, m.at)),
            _ => None,
        })
        .collect();
    began.sort();
    let tenure_end = |epoch: u64, believed: Duration| -> Duration {
        began
            .iter()
            .find(|(e, _)| *e > epoch)
            .map_or(believed, |(_, at)| (*at).min(believed))
    };
    let x = |at: Duration| LEFT + at.as_secs_f64() / span * (WIDTH - LEFT - 20.0);
    let height = TOP + LANE * lanes.len() as f64 + 60.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="24" font-size="15">leasehold demo: tenures (bars, by epoch), accepted writes (ticks), writes refused by guards (red crosses), faults (bands)</text>"#
    );
    for (i, who) in lanes.iter().enumerate() {
        let y = TOP + LANE * i as f64;
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}">{}</text>"#,
            y + 24.0,
            escape(who)
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            y + 20.0,
            WIDTH - 20.0,
            y + 20.0
        );
        let mine: Vec<&Moment> = moments.iter().filter(|m| m.who == **who).collect();
        let mut open: Option<(Duration, u64)> = None;
        let mut paused: Option<Duration> = None;
        let mut cut: Option<Duration> = None;
        for m in &mine {
            match &m.what {
                What::Leads(e) => open = Some((m.at, *e)),
                What::StepsDown | What::Killed => {
                    if let Some((from, e)) = open.take() {
                        let end = tenure_end(e, m.at);
                        bar(&mut svg, x(from), x(end), y, e);
                        if end < m.at {
                            belief(&mut svg, x(end), x(m.at), y);
                        }
                    }
                    if m.what == What::Killed {
                        let _ = writeln!(
                            svg,
                            r#"<text x="{:.1}" y="{:.1}" fill="black" font-weight="bold">✕ SIGKILL</text>"#,
                            x(m.at) + 3.0,
                            y + 46.0
                        );
                    }
                }
                What::Paused(_) => paused = Some(m.at),
                What::Resumed => {
                    if let Some(from) = paused.take() {
                        let _ = writeln!(
                            svg,
                            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="32" fill="#999" fill-opacity="0.35"/><text x="{:.1}" y="{:.1}" fill="#555">SIGSTOP … SIGCONT</text>"##,
                            x(from),
                            y + 4.0,
                            (x(m.at) - x(from)).max(1.0),
                            x(from) + 3.0,
                            y + 50.0
                        );
                    }
                }
                What::Cut(_) => cut = Some(m.at),
                What::Healed => {
                    if let Some(from) = cut.take() {
                        let _ = writeln!(
                            svg,
                            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="32" fill="#e15759" fill-opacity="0.18" stroke="#e15759" stroke-dasharray="2 2"/><text x="{:.1}" y="{:.1}" fill="#b03a3c">✂ link cut … healed</text>"##,
                            x(from),
                            y + 4.0,
                            (x(m.at) - x(from)).max(1.0),
                            x(from) + 3.0,
                            y + 50.0
                        );
                    }
                }
                What::Wrote(e) => {
                    let _ = writeln!(
                        svg,
                        r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{3}" stroke-width="1"/>"#,
                        x(m.at),
                        y + 36.0,
                        y + 42.0,
                        colour(*e)
                    );
                }
                What::Refused(..) => {
                    let (cx, cy) = (x(m.at), y + 20.0);
                    let _ = writeln!(
                        svg,
                        r#"<path d="M{:.1},{:.1} l10,10 m0,-10 l-10,10" stroke="red" stroke-width="3"/><text x="{:.1}" y="{:.1}" fill="red">refused</text>"#,
                        cx - 5.0,
                        cy - 5.0,
                        cx + 8.0,
                        cy - 8.0
                    );
                }
                What::Joined | What::Replaces(_) => {}
            }
        }
        if let Some((from, e)) = open {
            bar(&mut svg, x(from), x(tenure_end(e, total)), y, e);
        }
    }
    let axis_y = TOP + LANE * lanes.len() as f64 + 10.0;
    let step = if span > 6.0 { 1.0 } else { 0.5 };
    let mut t = 0.0;
    while t <= span {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{axis_y:.1}" fill="#555">{t:.1}s</text>"##,
            x(Duration::from_secs_f64(t)) - 8.0
        );
        t += step;
    }
    svg.push_str("</svg>\n");
    svg
}

/// The stretch where a worker still believed it led, after its tenure
/// ended: an outline, not a bar.
fn belief(svg: &mut String, from: f64, to: f64, y: f64) {
    let _ = writeln!(
        svg,
        r##"<rect x="{from:.1}" y="{:.1}" width="{:.1}" height="24" rx="3" fill="none" stroke="#888" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#555">still believes it leads</text>"##,
        y + 8.0,
        (to - from).max(1.0),
        from + 4.0,
        y + 2.0
    );
}

fn bar(svg: &mut String, from: f64, to: f64, y: f64, epoch: u64) {
    let _ = writeln!(
        svg,
        r#"<rect x="{from:.1}" y="{:.1}" width="{:.1}" height="24" rx="3" fill="{}"/><text x="{:.1}" y="{:.1}" fill="white">epoch {epoch}</text>"#,
        y + 8.0,
        (to - from).max(1.0),
        colour(epoch),
        from + 4.0,
        y + 24.0
    );
}
