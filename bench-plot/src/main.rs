//! `bench-plot CSV [SVG]`: reads the per-run figures `scripts/bench-switch.sh`
//! writes, prints the summary tables (median, min–max, ratio to valed; where
//! the two cores' time went) as Markdown, and draws grouped bars with min–max
//! error bars into SVG.
//!
//! CSV columns used (by name, any order): `size` (frame bytes without CRC),
//! `switch`, `run`, `secs`, `bursts`, `mpps` (per direction), and the
//! optional per-core shares `cpuN_usr`, `cpuN_sys`, `cpuN_irq`, `cpuN_idle`
//! and `other` (time neither the switch nor the VM side used, in percent of
//! one core)
//! (percent of the measured interval, from /proc/stat), and the optional
//! `c2c_before`, `c2c_after`: the two cores' distance in ns around the run
//! (`core-probe`). With those, a third table compares runs of the same
//! placement only: cores sharing a cache (both probes under
//! [`NEAR_NS`]), or not (both at or above it); a run during which the
//! hypervisor moved a vCPU across that line is left out of it.
//!
//! The SVG backend writes text as `<text>` elements and sizes it by an
//! estimate: no font file and no fontconfig are needed to draw.

use std::collections::BTreeSet;
use std::error::Error;
use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

type Res<T> = Result<T, Box<dyn Error>>;

/// A cache line's round trip between the two cores below which they share
/// a cache. This host measures 43–70 ns when they do, and 265–285 or
/// 370–460 ns (two placements) when they do not.
const NEAR_NS: f64 = 200.0;

/// Where the two cores were during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Sharing a cache, before and after.
    Near,
    /// Not sharing one, before and after.
    Far,
    /// Moved during the run.
    Moved,
}

impl Placement {
    fn of(before: f64, after: f64) -> Placement {
        match (before < NEAR_NS, after < NEAR_NS) {
            (true, true) => Placement::Near,
            (false, false) => Placement::Far,
            _ => Placement::Moved,
        }
    }
}

/// One run: a row of the CSV.
#[derive(Debug, Clone)]
struct Row {
    size: u32,
    switch: String,
    mpps: f64,
    secs: String,
    bursts: String,
    /// (usr, sys, irq, idle) percent for core 0 and core 1, when present.
    cpu: Option<[[f64; 4]; 2]>,
    /// Other tenants' usr + sys time, percent of one core.
    other: Option<f64>,
    /// The cores' placement, when the CSV has both probes of the run.
    placement: Option<Placement>,
}

/// Median, min and max of a non-empty set.
#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn stat(values: &[f64]) -> Option<Stat> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

fn parse(text: &str) -> Res<Vec<Row>> {
    let mut lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'));
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty CSV")?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let need = |name: &str| col(name).ok_or_else(|| format!("CSV has no column {name:?}"));
    let (c_size, c_switch, c_mpps) = (need("size")?, need("switch")?, need("mpps")?);
    let (c_secs, c_bursts, c_other) = (col("secs"), col("bursts"), col("other"));
    let c_c2c = col("c2c_before").zip(col("c2c_after"));
    let cpu_cols: Option<Vec<usize>> = [
        "cpu0_usr",
        "cpu0_sys",
        "cpu0_irq",
        "cpu0_idle",
        "cpu1_usr",
        "cpu1_sys",
        "cpu1_irq",
        "cpu1_idle",
    ]
    .iter()
    .map(|n| col(n))
    .collect();
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |c: usize| {
            f.get(c)
                .copied()
                .ok_or_else(|| format!("CSV line {}: too few fields", i + 2))
        };
        let mpps = get(c_mpps)?;
        if mpps.is_empty() || mpps == "-" {
            continue; // a run that produced no figure
        }
        let num = |s: &str| {
            s.parse::<f64>()
                .map_err(|e| format!("CSV line {}: {s:?}: {e}", i + 2))
        };
        let cpu = match &cpu_cols {
            Some(c) => {
                let mut a = [[0.0; 4]; 2];
                for (k, &ci) in c.iter().enumerate() {
                    a[k / 4][k % 4] = num(get(ci)?)?;
                }
                Some(a)
            }
            None => None,
        };
        let other = match c_other {
            Some(c) => Some(num(get(c)?)?),
            None => None,
        };
        // A probe that failed ("-") leaves the run unplaced.
        let placement =
            c_c2c.and_then(
                |(b, a)| match (f.get(b)?.parse::<f64>(), f.get(a)?.parse::<f64>()) {
                    (Ok(b), Ok(a)) => Some(Placement::of(b, a)),
                    _ => None,
                },
            );
        rows.push(Row {
            size: get(c_size)?
                .parse()
                .map_err(|e| format!("CSV line {}: size: {e}", i + 2))?,
            switch: get(c_switch)?.to_string(),
            mpps: num(mpps)?,
            secs: c_secs.and_then(|c| f.get(c)).unwrap_or(&"?").to_string(),
            bursts: c_bursts.and_then(|c| f.get(c)).unwrap_or(&"?").to_string(),
            cpu,
            other,
            placement,
        });
    }
    if rows.is_empty() {
        return Err("CSV has no runs with a figure".into());
    }
    Ok(rows)
}

/// The data set: switches in order of first appearance, sizes ascending.
#[derive(Debug)]
struct Data {
    rows: Vec<Row>,
    switches: Vec<String>,
    sizes: Vec<u32>,
}

impl Data {
    fn new(rows: Vec<Row>) -> Self {
        let mut switches: Vec<String> = Vec::new();
        for r in &rows {
            if !switches.contains(&r.switch) {
                switches.push(r.switch.clone());
            }
        }
        let sizes: BTreeSet<u32> = rows.iter().map(|r| r.size).collect();
        Data {
            rows,
            switches,
            sizes: sizes.into_iter().collect(),
        }
    }

    fn runs<'a>(&'a self, sw: &'a str, size: u32) -> impl Iterator<Item = &'a Row> + 'a {
        self.rows
            .iter()
            .filter(move |r| r.switch == sw && r.size == size)
    }

    fn stat(&self, sw: &str, size: u32) -> Option<Stat> {
        stat(&self.runs(sw, size).map(|r| r.mpps).collect::<Vec<_>>())
    }

    /// "a" when every run agrees, else "a/b".
    fn meta(&self, f: impl Fn(&Row) -> &str) -> String {
        let set: BTreeSet<&str> = self.rows.iter().map(f).collect();
        set.into_iter().collect::<Vec<_>>().join("/")
    }
}

fn table(d: &Data) -> String {
    let mut s = String::new();
    let base = d.switches.iter().find(|s| s.as_str() == "valed").cloned();
    let _ = writeln!(
        s,
        "| frame (with CRC; testpmd sends it without) | switch | runs | Mpps per direction, median | min–max | Gbit/s per direction (median, without CRC) | ÷ valed |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for &size in &d.sizes {
        let b = base.as_deref().and_then(|b| d.stat(b, size));
        for sw in &d.switches {
            let Some(st) = d.stat(sw, size) else { continue };
            let ratio = match b {
                Some(b) if b.median > 0.0 => format!("{:.2}", st.median / b.median),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {} B ({size}) | {sw} | {} | {:.3} | {:.3}–{:.3} | {:.2} | {ratio} |",
                size + 4,
                st.n,
                st.median,
                st.min,
                st.max,
                st.median * f64::from(size) * 8.0 / 1000.0,
            );
        }
    }
    s
}

/// The runs of each placement side by side, each ratio against valed in
/// the same placement; None when no run was placed.
fn placement_table(d: &Data) -> Option<String> {
    if d.rows.iter().all(|r| r.placement.is_none()) {
        return None;
    }
    let moved = d
        .rows
        .iter()
        .filter(|r| r.placement == Some(Placement::Moved))
        .count();
    let unprobed = d.rows.iter().filter(|r| r.placement.is_none()).count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| frame | switch | cores sharing a cache: runs, median Mpps (min–max) | ÷ valed | cores apart: runs, median Mpps (min–max) | ÷ valed |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let cell = |sw: &str, size: u32, p: Placement| {
        let v: Vec<f64> = d
            .runs(sw, size)
            .filter(|r| r.placement == Some(p))
            .map(|r| r.mpps)
            .collect();
        stat(&v)
    };
    for &size in &d.sizes {
        for sw in &d.switches {
            let mut cells = Vec::new();
            for p in [Placement::Near, Placement::Far] {
                let st = cell(sw, size, p);
                let b = cell("valed", size, p);
                cells.push(st.map_or("0".into(), |st| {
                    format!("{}, {:.3} ({:.3}–{:.3})", st.n, st.median, st.min, st.max)
                }));
                cells.push(match (st, b) {
                    (Some(st), Some(b)) if b.median > 0.0 => {
                        format!("{:.2}", st.median / b.median)
                    }
                    _ => "-".into(),
                });
            }
            if d.runs(sw, size).next().is_some() {
                let _ = writeln!(s, "| {} B | {sw} | {} |", size + 4, cells.join(" | "));
            }
        }
    }
    if moved > 0 {
        let _ = writeln!(
            s,
            "\n{moved} run(s) left out: the cores' placement changed during the run."
        );
    }
    if unprobed > 0 {
        let _ = writeln!(
            s,
            "\n{unprobed} run(s) left out: no probe figure (`core-probe` failed)."
        );
    }
    Some(s)
}

fn cpu_table(d: &Data) -> Option<String> {
    if d.rows.iter().any(|r| r.cpu.is_none()) {
        return None;
    }
    let other = d.rows.iter().all(|r| r.other.is_some());
    let mut s = String::new();
    let _ = write!(
        s,
        "| frame | switch | core 0 usr / sys / irq+softirq / idle % | core 1 usr / sys / irq+softirq / idle % |"
    );
    let _ = writeln!(
        s,
        "{}",
        if other {
            " other tenants, % of a core |"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "|---|---|---|---|{}", if other { "---|" } else { "" });
    for &size in &d.sizes {
        for sw in &d.switches {
            let runs: Vec<&Row> = d.runs(sw, size).collect();
            if runs.is_empty() {
                continue;
            }
            let mut cells = Vec::new();
            for core in 0..2 {
                let parts: Vec<String> = (0..4)
                    .map(|k| {
                        let v: Vec<f64> = runs
                            .iter()
                            .filter_map(|r| r.cpu.map(|c| c[core][k]))
                            .collect();
                        stat(&v).map_or("-".into(), |st| format!("{:.0}", st.median))
                    })
                    .collect();
                cells.push(parts.join(" / "));
            }
            if other {
                let v: Vec<f64> = runs.iter().filter_map(|r| r.other).collect();
                let st = stat(&v).map_or("-".into(), |st| {
                    format!("{:.0} ({:.0}–{:.0})", st.median, st.min, st.max)
                });
                cells.push(st);
            }
            let _ = writeln!(s, "| {} B | {sw} | {} |", size + 4, cells.join(" | "));
        }
    }
    Some(s)
}

fn colour(i: usize, name: &str) -> RGBColor {
    match name {
        "valed" => RGBColor(31, 119, 180),
        "testpmd" => RGBColor(255, 127, 14),
        "bridge" => RGBColor(44, 160, 44),
        _ => [
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(127, 127, 127),
        ][i % 4],
    }
}

fn plot(d: &Data, path: &str) -> Res<()> {
    let n = d.sizes.len();
    let k = d.switches.len();
    let ymax = d
        .switches
        .iter()
        .flat_map(|sw| d.sizes.iter().filter_map(move |&sz| d.stat(sw, sz)))
        .map(|s| s.max)
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.2;
    let runs = d
        .switches
        .iter()
        .flat_map(|sw| d.sizes.iter().filter_map(move |&sz| d.stat(sw, sz)))
        .map(|s| s.n)
        .max()
        .unwrap_or(0);
    let title = format!(
        "Switch loopback, no VM: core 0 testpmd (2 ports, io fwd), core 1 the switch; {}×32 frames in flight per port",
        d.meta(|r| &r.bursts)
    );
    let subtitle = format!(
        "median of {runs} interleaved runs × {} s, bars min–max",
        d.meta(|r| &r.secs)
    );

    let root = SVGBackend::new(path, (980, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(52);
    top.draw(&Text::new(
        title,
        (490, 8),
        ("sans-serif", 17)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    top.draw(&Text::new(
        subtitle,
        (490, 32),
        ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;

    let sizes = d.sizes.clone();
    let xfmt = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 || i as usize >= sizes.len() {
            return String::new();
        }
        let s = sizes[i as usize];
        format!("{} B ({s} without CRC)", s + 4)
    };
    let mut chart = ChartBuilder::on(&body)
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_max_light_lines(1)
        .x_labels(n)
        .x_label_formatter(&xfmt)
        .x_label_style(("sans-serif", 14))
        .y_label_style(("sans-serif", 13))
        .x_desc("frame size")
        .y_desc("Mpps per direction")
        .axis_desc_style(("sans-serif", 14))
        .draw()?;

    let group = 0.8;
    let w = group / k as f64;
    for (j, sw) in d.switches.iter().enumerate() {
        let c = colour(j, sw);
        let stats: Vec<(f64, Stat)> = d
            .sizes
            .iter()
            .enumerate()
            .filter_map(|(i, &sz)| {
                d.stat(sw, sz)
                    .map(|s| (i as f64 - group / 2.0 + (j as f64 + 0.5) * w, s))
            })
            .collect();
        chart
            .draw_series(stats.iter().map(|&(xc, s)| {
                Rectangle::new(
                    [(xc - 0.42 * w, 0.0), (xc + 0.42 * w, s.median)],
                    c.filled(),
                )
            }))?
            .label(sw.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        // Whiskers min–max: a vertical line with caps.
        let cap = 0.18 * w;
        chart.draw_series(stats.iter().flat_map(|&(xc, s)| {
            [
                PathElement::new(vec![(xc, s.min), (xc, s.max)], BLACK.stroke_width(1)),
                PathElement::new(
                    vec![(xc - cap, s.min), (xc + cap, s.min)],
                    BLACK.stroke_width(1),
                ),
                PathElement::new(
                    vec![(xc - cap, s.max), (xc + cap, s.max)],
                    BLACK.stroke_width(1),
                ),
            ]
        }))?;
        chart.draw_series(stats.iter().map(|&(xc, s)| {
            Text::new(
                if s.median < 0.1 {
                    format!("{:.3}", s.median)
                } else {
                    format!("{:.2}", s.median)
                },
                (xc, s.max + ymax * 0.012),
                ("sans-serif", 12)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 || args.len() > 3 || args[1].starts_with('-') {
        eprintln!("usage: bench-plot CSV [SVG]\n  prints the summary tables of scripts/bench-switch.sh's CSV; with SVG, draws the bars");
        std::process::exit(2);
    }
    let text = std::fs::read_to_string(&args[1]).map_err(|e| format!("{}: {e}", args[1]))?;
    let d = Data::new(parse(&text)?);
    print!("{}", table(&d));
    if let Some(t) = cpu_table(&d) {
        println!();
        print!("{t}");
    }
    if let Some(t) = placement_table(&d) {
        println!();
        print!("{t}");
    }
    if let Some(svg) = args.get(2) {
        plot(&d, svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "size,run,switch,secs,bursts,mpps\n60,1,valed,10,4,3.0\n60,1,testpmd,10,4,6.0\n60,2,valed,10,4,5.0\n60,2,testpmd,10,4,-\n60,3,valed,10,4,4.0\n1514,1,valed,10,4,2.0\n";

    #[test]
    fn medians_ranges_and_ratio() {
        let d = Data::new(parse(CSV).unwrap());
        assert_eq!(d.switches, ["valed", "testpmd"]);
        assert_eq!(d.sizes, [60, 1514]);
        let s = d.stat("valed", 60).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (4.0, 3.0, 5.0, 3));
        assert_eq!(
            d.stat("testpmd", 60).unwrap().n,
            1,
            "a run without a figure is skipped"
        );
        let t = table(&d);
        assert!(
            t.contains("| 64 B (60) | testpmd | 1 | 6.000 | 6.000–6.000 | 2.88 | 1.50 |"),
            "{t}"
        );
        assert!(cpu_table(&d).is_none());
        assert_eq!(stat(&[1.0, 4.0]).unwrap().median, 2.5);
    }

    #[test]
    fn cpu_and_other_load() {
        let csv = "size,run,switch,secs,bursts,mpps,cpu0_usr,cpu0_sys,cpu0_irq,cpu0_idle,cpu1_usr,cpu1_sys,cpu1_irq,cpu1_idle,other\n\
                   60,1,bridge,10,4,0.05,3,91,6,0,1,2,57,40,4\n\
                   60,2,bridge,10,4,0.04,5,89,6,0,3,2,60,35,10\n";
        let d = Data::new(parse(csv).unwrap());
        let t = cpu_table(&d).unwrap();
        assert!(
            t.contains("| 64 B | bridge | 4 / 90 / 6 / 0 | 2 / 2 / 58 / 38 | 7 (4–10) |"),
            "{t}"
        );
    }

    #[test]
    fn runs_compared_within_one_placement() {
        let csv = "size,run,switch,secs,bursts,mpps,c2c_before,c2c_after\n\
                   60,1,valed,10,4,10.0,90,95\n\
                   60,1,testpmd,10,4,6.0,88,91\n\
                   60,2,valed,10,4,5.0,380,390\n\
                   60,2,testpmd,10,4,4.0,370,400\n\
                   60,3,valed,10,4,7.0,90,380\n\
                   60,3,testpmd,10,4,1.0,-,-\n";
        let d = Data::new(parse(csv).unwrap());
        let t = placement_table(&d).unwrap();
        assert!(
            t.contains("| 64 B | valed | 1, 10.000 (10.000–10.000) | 1.00 | 1, 5.000 (5.000–5.000) | 1.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| 64 B | testpmd | 1, 6.000 (6.000–6.000) | 0.60 | 1, 4.000 (4.000–4.000) | 0.80 |"),
            "{t}"
        );
        assert!(
            t.contains("1 run(s) left out: the cores' placement changed"),
            "{t}"
        );
        assert!(t.contains("1 run(s) left out: no probe figure"), "{t}");
        assert!(placement_table(&Data::new(parse(CSV).unwrap())).is_none());
    }

    #[test]
    fn draws_svg_with_text() {
        let d = Data::new(parse(CSV).unwrap());
        let path = std::env::temp_dir().join(format!("bench-plot-test-{}.svg", std::process::id()));
        plot(&d, path.to_str().unwrap()).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            svg.contains("<text")
                && svg.contains("Mpps per direction")
                && svg.contains("64 B (60 without CRC)")
        );
    }
}
