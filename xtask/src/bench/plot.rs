//! Hand-written SVG line plots: one metric against N, one line per peer at
//! its medians, a vertical bar from min to max at each point. The N axis is
//! categorical (0, 100, 1000, 10000 evenly spaced), the value axis starts
//! at zero so ratios read off the picture.

use std::fmt::Write as _;

use super::{report::Results, workloads::Metric};

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: &[&str] = &[
    "#7f7f7f", "#d62728", "#ff7f0e", "#9467bd", "#2ca02c", "#1f77b4",
];

pub fn svg(r: &Results, m: &Metric) -> String {
    let ns = &r.plan.ns;
    let peers = &r.plan.peers;
    let mut ymax: f64 = 0.0;
    for p in peers {
        for &n in ns {
            if let Some(st) = r.stat(p, n, &m.name) {
                ymax = ymax.max(st.max);
            }
        }
    }
    if ymax <= 0.0 {
        ymax = 1.0;
    }
    ymax *= 1.1;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |i: usize| -> f64 {
        if ns.len() <= 1 {
            LEFT + pw / 2.0
        } else {
            LEFT + pw * i as f64 / (ns.len() - 1) as f64
        }
    };
    let y = |v: f64| -> f64 { TOP + ph * (1.0 - v / ymax) };

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    );
    let better = if m.higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    };
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"22\" font-size=\"15\">{} ({}, {better}) against N</text>",
        m.name, m.unit
    );
    // Axes, grid and ticks.
    for k in 0..=5 {
        let v = ymax * k as f64 / 5.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0,
            tick(v)
        );
    }
    for (i, n) in ns.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>",
            x(i),
            TOP + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">N (extra mappings and source rules)</text>\n\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\" stroke=\"black\"/>\n\
         <line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
        LEFT + pw / 2.0,
        H - 12.0,
        TOP + ph,
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    for (pi, p) in peers.iter().enumerate() {
        let colour = COLOURS[pi % COLOURS.len()];
        let mut points = Vec::new();
        for (i, &n) in ns.iter().enumerate() {
            if let Some(st) = r.stat(p, n, &m.name) {
                points.push(format!("{:.1},{:.1}", x(i), y(st.median)));
                let _ = writeln!(
                    s,
                    "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>\
                     <circle cx=\"{xx:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                    y(st.min),
                    y(st.max),
                    y(st.median),
                    xx = x(i) + (pi as f64 - peers.len() as f64 / 2.0) * 2.0
                );
            }
        }
        if points.len() > 1 {
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" ")
            );
        }
        let ly = TOP + 10.0 + 18.0 * pi as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{p}</text>",
            LEFT + pw + 15.0,
            ly - 10.0,
            LEFT + pw + 32.0,
            ly
        );
    }
    s.push_str("</svg>\n");
    s
}

fn tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
