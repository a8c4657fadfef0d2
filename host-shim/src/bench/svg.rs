//! A hand-written SVG bar chart of the report (SVG 1.1: `svg`, `g`, `rect`, `line`,
//! `text`), with no plotting crate: panels of grouped bars, one group per test and one
//! bar per path, each labelled with its value. Panels: block throughput and block
//! user-space exits per request, network throughput and network user-space exits per
//! operation (a panel without data is left out), the exits on a logarithmic scale
//! (they span 0.03 to 16,000 per request). Several reports (one per place) stack their
//! panels, each titled with its place.

use std::fmt::Write as _;

use serde_json::Value;

use super::report::{KINDS, cells, fmt_num, path_names, place_of};

/// Colours per path, in a fixed order so a path keeps its colour across panels.
const COLOURS: [(&str, &str); 6] = [
    ("xen", "#1f77b4"),
    ("ide-dma", "#ff7f0e"),
    ("ide-pio", "#d62728"),
    ("e1000", "#2ca02c"),
    ("virtio", "#9467bd"),
    ("host fio", "#7f7f7f"),
];

fn colour(series: &str) -> &'static str {
    COLOURS
        .iter()
        .find(|(n, _)| *n == series)
        .map_or("#8c564b", |(_, c)| c)
}

/// Escapes text for XML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Bars of one group: (series, value).
type Bars = Vec<(String, Option<f64>)>;

/// One panel: a title and groups of bars.
struct Panel {
    title: String,
    groups: Vec<(String, Bars)>,
    /// A logarithmic value axis.
    log: bool,
}

const BAR_W: f64 = 14.0;
const GROUP_GAP: f64 = 18.0;
const PLOT_H: f64 = 220.0;
const LEFT: f64 = 70.0;
const PANEL_H: f64 = PLOT_H + 150.0;

fn panels(report: &Value, prefix: &str) -> Vec<Panel> {
    let paths = &report["paths"];
    let names = path_names(paths);
    let mut out = Vec::new();
    for kind in KINDS {
        let (tp_key, tp_title, op) = if kind == "block" {
            ("throughput_mib_s", "Block throughput (MiB/s)", "request")
        } else {
            (
                "throughput_mbit_s",
                "Network throughput (Mbit/s)",
                "operation",
            )
        };
        let cols: Vec<&String> = names
            .iter()
            .filter(|p| !cells(paths, p, kind).is_empty())
            .collect();
        let mut rows: Vec<String> = Vec::new();
        for p in &cols {
            for c in cells(paths, p, kind) {
                if let Some(n) = c["name"].as_str()
                    && !rows.iter().any(|r| r == n)
                {
                    rows.push(n.to_owned());
                }
            }
        }
        let series = |row: &str, pointer: &str, fio: Option<&str>| {
            let mut bars: Vec<(String, Option<f64>)> = cols
                .iter()
                .map(|p| {
                    let v = cells(paths, p, kind)
                        .iter()
                        .find(|c| c["name"] == row)
                        .and_then(|c| c.pointer(pointer))
                        .and_then(Value::as_f64);
                    ((*p).clone(), v)
                })
                .collect();
            if let Some(key) = fio {
                let v = cols.iter().find_map(|p| {
                    cells(paths, p, kind)
                        .iter()
                        .find(|c| c["name"] == row)
                        .and_then(|c| c["metrics"][key].as_f64())
                });
                bars.push(("host fio".into(), v));
            }
            bars
        };
        // A series with no value in any group (no host fio run) is left out.
        let drop_empty = |groups: Vec<(String, Bars)>| {
            let keep: Vec<String> = groups
                .iter()
                .flat_map(|(_, b)| {
                    b.iter()
                        .filter(|(_, v)| v.is_some())
                        .map(|(n, _)| n.clone())
                })
                .collect();
            groups
                .into_iter()
                .map(|(l, b)| {
                    (
                        l,
                        b.into_iter()
                            .filter(|(n, _)| keep.contains(n))
                            .collect::<Bars>(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let fio = (kind == "block").then_some("host_fio_mib_s");
        let tp: Vec<_> = rows
            .iter()
            .map(|r| (r.clone(), series(r, &format!("/metrics/{tp_key}"), fio)))
            .filter(|(_, b)| b.iter().any(|(_, v)| v.is_some()))
            .collect();
        let tp = drop_empty(tp);
        let ex: Vec<_> = rows
            .iter()
            .map(|r| (r.clone(), series(r, "/costs/per_op/user_exits", None)))
            .filter(|(_, b)| b.iter().any(|(_, v)| v.is_some()))
            .collect();
        if !tp.is_empty() {
            // The host fio baseline and PIO are thousands of times apart: a wide
            // spread is drawn on a logarithmic axis too.
            let (min_pos, max) = value_range(&tp);
            let log = min_pos.is_finite() && max / min_pos > 100.0;
            out.push(Panel {
                title: format!(
                    "{prefix}{tp_title}{}",
                    if log { " (log scale)" } else { "" }
                ),
                groups: tp,
                log,
            });
        }
        if !ex.is_empty() {
            out.push(Panel {
                title: format!(
                    "{prefix}{} user-space exits per {op} (log scale)",
                    if kind == "block" { "Block" } else { "Network" }
                ),
                groups: ex,
                log: true,
            });
        }
    }
    out
}

fn group_width(bars: usize) -> f64 {
    bars as f64 * BAR_W + GROUP_GAP
}

/// The chart of one report as an SVG document.
pub fn svg(report: &Value) -> String {
    svg_places(std::slice::from_ref(report))
}

/// The smallest positive value (infinity if none) and the largest value (0 if none)
/// of a panel's bars.
fn value_range(groups: &[(String, Bars)]) -> (f64, f64) {
    groups
        .iter()
        .flat_map(|(_, b)| b.iter().filter_map(|(_, v)| *v))
        .fold((f64::INFINITY, 0.0), |(lo, hi), v| {
            (if v > 0.0 { lo.min(v) } else { lo }, hi.max(v))
        })
}

/// The value axis of a panel: bar height for a value, and the labelled ticks.
struct Axis {
    log: bool,
    /// Linear: the largest value. Log: the decades spanned, from `lo` to `hi`.
    max: f64,
    lo: f64,
    hi: f64,
}

impl Axis {
    /// Height available to bars (room above the tallest for its rotated label).
    const SPAN: f64 = PLOT_H - 40.0;

    fn new(p: &Panel) -> Self {
        let (min_pos, max) = value_range(&p.groups);
        if p.log && max > 0.0 {
            let lo = min_pos.log10().floor();
            let hi = max.log10().ceil().max(lo + 1.0);
            Axis {
                log: true,
                max,
                lo,
                hi,
            }
        } else {
            Axis {
                log: false,
                max,
                lo: 0.0,
                hi: 0.0,
            }
        }
    }

    fn height(&self, v: f64) -> f64 {
        let h = if self.log {
            if v > 0.0 {
                (v.log10() - self.lo) / (self.hi - self.lo) * Self::SPAN
            } else {
                0.0
            }
        } else if self.max > 0.0 {
            v / self.max * Self::SPAN
        } else {
            0.0
        };
        h.max(0.5)
    }

    /// (height, label) of each tick.
    fn ticks(&self) -> Vec<(f64, String)> {
        if self.log {
            let mut t = Vec::new();
            let mut e = self.lo;
            while e <= self.hi {
                let v = 10f64.powf(e);
                // 0.01, 0.1, 1, 10, ...: as many decimals as the decade needs.
                let label = format!("{v:.*}", (-e).max(0.0) as usize);
                t.push((self.height(v), label));
                e += 1.0;
            }
            t
        } else {
            vec![(0.0, "0".into()), (Self::SPAN, fmt_num(self.max))]
        }
    }
}

/// The charts of several reports (one per place) as one SVG document.
pub fn svg_places(reports: &[Value]) -> String {
    let many = reports.len() > 1;
    let panels: Vec<Panel> = reports
        .iter()
        .flat_map(|r| {
            let prefix = if many {
                format!("{}: ", place_of(r))
            } else {
                String::new()
            };
            panels(r, &prefix)
        })
        .collect();
    let width = panels
        .iter()
        .map(|p| {
            LEFT + p
                .groups
                .iter()
                .map(|(_, b)| group_width(b.len()))
                .sum::<f64>()
                + 160.0
        })
        .fold(640.0, f64::max);
    let height = 60.0 + PANEL_H * panels.len().max(1) as f64;
    let dates: Vec<&str> = reports.iter().filter_map(|r| r["date"].as_str()).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="24" font-size="16" font-weight="bold">host-shim bench: PV against emulated I/O ({})</text>"#,
        escape(&dates.join(", "))
    );
    if panels.is_empty() {
        let _ = writeln!(s, r#"<text x="10" y="60">No measurements.</text>"#);
    }
    for (i, p) in panels.iter().enumerate() {
        let top = 50.0 + i as f64 * PANEL_H;
        let base = top + 30.0 + PLOT_H;
        let axis = Axis::new(p);
        let _ = writeln!(s, r#"<g>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
            top + 16.0,
            escape(&p.title)
        );
        let right = LEFT
            + p.groups
                .iter()
                .map(|(_, b)| group_width(b.len()))
                .sum::<f64>();
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{base:.1}" x2="{right:.1}" y2="{base:.1}" stroke="#333"/>"##
        );
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{:.1}" x2="{LEFT}" y2="{base:.1}" stroke="#333"/>"##,
            base - PLOT_H
        );
        for (h, label) in axis.ticks() {
            let y = base - h;
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT,
                LEFT - 4.0,
                y + 4.0,
                escape(&label)
            );
        }
        let mut x = LEFT + GROUP_GAP / 2.0;
        let mut legend: Vec<String> = Vec::new();
        for (label, bars) in &p.groups {
            let gx = x;
            for (series, v) in bars {
                if !legend.contains(series) {
                    legend.push(series.clone());
                }
                match v {
                    Some(v) => {
                        let h = axis.height(*v);
                        let _ = writeln!(
                            s,
                            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                            base - h,
                            BAR_W - 2.0,
                            colour(series),
                            escape(&format!("{series} {label}")),
                            escape(&fmt_num(*v))
                        );
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" font-size="8" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
                            x + BAR_W / 2.0 + 2.0,
                            base - h - 3.0,
                            x + BAR_W / 2.0 + 2.0,
                            base - h - 3.0,
                            escape(&fmt_num(*v))
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" font-size="8" fill="{}">-</text>"#,
                            x + 3.0,
                            base - 3.0,
                            colour(series)
                        );
                    }
                }
                x += BAR_W;
            }
            let cx = (gx + x) / 2.0;
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="end" transform="rotate(-45 {cx:.1} {:.1})">{}</text>"#,
                base + 14.0,
                base + 14.0,
                escape(label)
            );
            x += GROUP_GAP;
        }
        for (j, series) in legend.iter().enumerate() {
            let ly = top + 30.0 + j as f64 * 16.0;
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                right + 20.0,
                ly,
                colour(series),
                right + 34.0,
                ly + 9.0,
                escape(series)
            );
        }
        let _ = writeln!(s, "</g>");
    }
    s.push_str("</svg>\n");
    s
}
