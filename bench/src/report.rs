//! `laminar-bench report`: `bench/RESULTS.md` and `bench/results/throughput.svg`, from
//! the raw JSON the benchmarks keep in `bench/results/`.
//!
//! Every number in RESULTS.md comes from a file in `bench/results/`; the hand-written
//! part (what changed in the engine and what it bought) lives in
//! `bench/results/engine-notes.md` and is copied in as it is.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::compare::{Comparison, Machine, Run, TOOLS};
use crate::limit::LimitReport;
use crate::scale::ScaleReport;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;
/// What a run's peak RSS may exceed its RAM tier by.
pub const RSS_SLACK_BYTES: u64 = 64 << 20;

/// Median and range of a series.
pub fn stats(values: &[f64]) -> (f64, f64, f64) {
    assert!(!values.is_empty());
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
    (median, v[0], v[v.len() - 1])
}

fn series(runs: &[Run], tool: &str, f: &dyn Fn(&Run) -> f64) -> Vec<f64> {
    runs.iter().filter(|r| r.tool == tool).map(f).collect()
}

fn median_of(runs: &[Run], tool: &str, f: &dyn Fn(&Run) -> f64) -> Option<f64> {
    let s = series(runs, tool, f);
    (!s.is_empty()).then(|| stats(&s).0)
}

/// A Markdown table of runs, one row per tool, in `tools` order; with the servers' CPU
/// time where the runs measured it.
pub fn runs_table(runs: &[Run], tools: &[&str], object_count: usize) -> String {
    let servers = runs.iter().any(|r| r.server_cpu_seconds.is_some());
    let mut out = String::from(
        "| tool | wall s (median, min–max) | MiB/s (median, min–max) | objects/s | CPU s (median) | CPU s per GiB | peak RSS MiB (max) |",
    );
    out.push_str(if servers {
        " servers' CPU s (median) |\n|---|---|---|---|---|---|---|---|\n"
    } else {
        "\n|---|---|---|---|---|---|---|\n"
    });
    for tool in tools {
        let wall = series(runs, tool, &|r| r.wall_seconds);
        if wall.is_empty() {
            continue;
        }
        let (w, wlo, whi) = stats(&wall);
        let (m, mlo, mhi) = stats(&series(runs, tool, &|r| r.throughput_bytes_per_second / MIB));
        let cpu = stats(&series(runs, tool, &|r| r.cpu_seconds)).0;
        let gib = stats(&series(runs, tool, &|r| r.throughput_bytes_per_second * r.wall_seconds / GIB)).0;
        let rss = series(runs, tool, &|r| r.max_rss_bytes as f64 / MIB).into_iter().fold(0.0, f64::max);
        out.push_str(&format!(
            "| {tool} | {w:.2} ({wlo:.2}–{whi:.2}) | {m:.0} ({mlo:.0}–{mhi:.0}) | {:.0} | {cpu:.2} | {:.3} | {rss:.0} |",
            object_count as f64 / w,
            if gib > 0.0 { cpu / gib } else { 0.0 },
        ));
        if servers {
            let s: Vec<f64> = runs.iter().filter(|r| r.tool == *tool).filter_map(|r| r.server_cpu_seconds).collect();
            out.push_str(&if s.is_empty() { " – |".to_string() } else { format!(" {:.2} |", stats(&s).0) });
        }
        out.push('\n');
    }
    out
}

/// The Markdown section for one comparison: runs and ratios.
pub fn table(c: &Comparison) -> String {
    let mut out = format!(
        "### `{}` on {} endpoints: {} objects, {:.1} MiB, {} runs per tool\n\n",
        c.workload.name,
        c.endpoints,
        c.workload.object_count,
        c.workload.total_bytes as f64 / MIB,
        series(&c.runs, "laminar", &|r| r.wall_seconds).len()
    );
    out.push_str(&runs_table(&c.runs, &TOOLS, c.workload.object_count));
    let (Some(lam_wall), Some(lam_cpu)) =
        (median_of(&c.runs, "laminar", &|r| r.wall_seconds), median_of(&c.runs, "laminar", &|r| r.cpu_seconds))
    else {
        return out;
    };
    out.push_str("\nRatios, Laminar / rclone (medians; below 1 is better for Laminar; throughput is the inverse of wall time):\n\n");
    out.push_str("| vs | wall time | CPU time | throughput × |\n|---|---|---|---|\n");
    for tool in &TOOLS[1..] {
        let (Some(wall), Some(cpu)) =
            (median_of(&c.runs, tool, &|r| r.wall_seconds), median_of(&c.runs, tool, &|r| r.cpu_seconds))
        else {
            continue;
        };
        out.push_str(&format!("| {tool} | {:.2} | {:.2} | {:.2} |\n", lam_wall / wall, lam_cpu / cpu, wall / lam_wall));
    }
    out
}

/// The machine line for RESULTS.md.
pub fn machine_section(m: &Machine) -> String {
    format!(
        "Machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}. Versions: {}; {}; {}.\n",
        m.cpus,
        m.cpu_model,
        m.mem_total_bytes as f64 / GIB,
        m.kernel,
        m.laminar,
        m.rclone,
        m.servers
    )
}

fn limit_section(l: &LimitReport) -> String {
    let mut out = format!(
        "### `{}` on {} endpoints: {} objects, {:.1} MiB; bare relay with {} connection pairs\n\n",
        l.workload.name,
        l.endpoints,
        l.workload.object_count,
        l.workload.total_bytes as f64 / MIB,
        l.connections
    );
    out.push_str(&runs_table(&l.runs, &crate::limit::LIMIT_TOOLS, l.workload.object_count));
    let mbps = |tool| median_of(&l.runs, tool, &|r| r.throughput_bytes_per_second);
    if let (Some(lam), Some(bare)) = (mbps("laminar"), mbps("bare-relay")) {
        out.push_str(&format!(
            "\nLaminar runs at **{:.0}%** of the bare relay (median throughputs).\n",
            100.0 * lam / bare
        ));
    }
    let wall = |tool| median_of(&l.runs, tool, &|r| r.wall_seconds);
    let rclone_best = match (wall("rclone-default"), wall("rclone-tuned")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let (Some(best), Some(lam), Some(bare)) = (rclone_best, wall("laminar"), wall("bare-relay")) {
        out.push_str(&format!(
            "\nWall time against rclone's best (medians): Laminar **{:.2}×**, the bare relay **{:.2}×**. The bare \
             relay checks nothing and spends next to no CPU, so its ratio is about the least any relay reaches \
             with these servers on this machine.\n",
            lam / best,
            bare / best
        ));
    }
    out.push_str("\nCommands:\n\n");
    for c in &l.commands {
        out.push_str(&format!("    {c}\n"));
    }
    out
}

fn scale_section(s: &ScaleReport) -> String {
    let mut out = String::from(
        "| workload | workers | MiB/s | objects/s | CPU s | efficiency per worker |\n|---|---|---|---|---|---|\n",
    );
    for p in &s.points {
        let one = s.points.iter().find(|q| q.workload == p.workload && q.workers == 1);
        let eff =
            one.map(|o| p.run.throughput_bytes_per_second / (p.workers as f64 * o.run.throughput_bytes_per_second));
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} |\n",
            p.workload,
            p.workers,
            p.run.throughput_bytes_per_second / MIB,
            p.object_count as f64 / p.run.wall_seconds,
            p.run.cpu_seconds,
            eff.map_or("–".to_string(), |e| format!("{:.0}%", 100.0 * e))
        ));
    }
    out.push_str(&format!("\nCommand: `{}`\n", s.command));
    out
}

/// One line per target of the benchmark issue: what was measured and whether it holds.
fn targets(comparisons: &[Comparison], limits: &[LimitReport]) -> String {
    let mut out = String::from("| target | measured | holds |\n|---|---|---|\n");
    let mut row = |target: String, measured: String, ok: bool| {
        out.push_str(&format!("| {target} | {measured} | {} |\n", if ok { "yes" } else { "**no**" }));
    };
    let find = |e: &str, w: &str| comparisons.iter().find(|c| c.endpoints == e && c.workload.name == w);
    let best_rclone = |c: &Comparison, f: &dyn Fn(&Run) -> f64, pick_max: bool| -> Option<f64> {
        let a = median_of(&c.runs, "rclone-default", f);
        let b = median_of(&c.runs, "rclone-tuned", f);
        match (a, b) {
            (Some(a), Some(b)) => Some(if pick_max { a.max(b) } else { a.min(b) }),
            (a, b) => a.or(b),
        }
    };
    for w in ["large", "mixed"] {
        let Some(c) = find("synthetic", w) else { continue };
        let tput = |r: &Run| r.throughput_bytes_per_second;
        if let (Some(l), Some(r)) = (median_of(&c.runs, "laminar", &tput), best_rclone(c, &tput, true)) {
            row(format!("synthetic `{w}`: throughput ≥ 5× rclone's best"), format!("{:.1}×", l / r), l >= 5.0 * r);
        }
        let cpu_gib = |r: &Run| r.cpu_seconds / (r.throughput_bytes_per_second * r.wall_seconds / GIB);
        if let (Some(l), Some(r)) = (median_of(&c.runs, "laminar", &cpu_gib), best_rclone(c, &cpu_gib, false)) {
            row(format!("synthetic `{w}`: CPU s per GiB ≤ 0.2× rclone's"), format!("{:.2}×", l / r), l <= 0.2 * r);
        }
    }
    for l in limits.iter().filter(|l| l.endpoints == "synthetic") {
        let tput = |r: &Run| r.throughput_bytes_per_second;
        if let (Some(lam), Some(bare)) = (median_of(&l.runs, "laminar", &tput), median_of(&l.runs, "bare-relay", &tput))
        {
            row(
                format!("synthetic `{}`: ≥ 50% of the bare relay", l.workload.name),
                format!("{:.0}%", 100.0 * lam / bare),
                lam >= 0.5 * bare,
            );
        }
    }
    // On SeaweedFS, what the bare relay reached beside rclone in a `limit` run: the
    // bound any relay has there.
    let floor = |e: &str, w: &str, inverse: bool| -> String {
        let wall = |r: &Run| r.wall_seconds;
        let Some(l) = limits.iter().find(|l| l.endpoints == e && l.workload.name == w) else { return String::new() };
        let best = match (median_of(&l.runs, "rclone-default", &wall), median_of(&l.runs, "rclone-tuned", &wall)) {
            (Some(a), Some(b)) => a.min(b),
            _ => return String::new(),
        };
        let ratio = |tool| median_of(&l.runs, tool, &wall).map(|t| if inverse { best / t } else { t / best });
        match (ratio("laminar"), ratio("bare-relay")) {
            (Some(lam), Some(bare)) => {
                format!("; in the `limit` run, Laminar {lam:.2}× and the bare relay {bare:.2}×")
            }
            _ => String::new(),
        }
    };
    if let Some(c) = find("weed", "mixed") {
        let wall = |r: &Run| r.wall_seconds;
        if let (Some(l), Some(r)) = (median_of(&c.runs, "laminar", &wall), best_rclone(c, &wall, false)) {
            row(
                "SeaweedFS `mixed`: wall ≤ 0.7× rclone's best".into(),
                format!("{:.2}×{}", l / r, floor("weed", "mixed", false)),
                l <= 0.7 * r,
            );
        }
    }
    for c in comparisons.iter().filter(|c| c.workload.name == "small") {
        let wall = |r: &Run| r.wall_seconds;
        if let (Some(l), Some(r)) = (median_of(&c.runs, "laminar", &wall), best_rclone(c, &wall, false)) {
            row(
                format!("{} `small`: objects/s ≥ 2× rclone's best", c.endpoints),
                format!("{:.1}×{}", r / l, floor(&c.endpoints, "small", true)),
                r >= 2.0 * l,
            );
        }
    }
    let laminar_runs = comparisons
        .iter()
        .flat_map(|c| c.runs.iter())
        .chain(limits.iter().flat_map(|l| l.runs.iter()))
        .filter(|r| r.tool == "laminar" && r.ram_buffer_bytes.is_some());
    let (mut n, mut worst, mut worst_run) = (0, i64::MIN, None);
    for r in laminar_runs {
        n += 1;
        let over = r.max_rss_bytes as i64 - r.ram_buffer_bytes.unwrap_or(0) as i64;
        if over > worst {
            worst = over;
            worst_run = Some(r);
        }
    }
    if let Some(r) = worst_run {
        row(
            "peak RSS ≤ RAM buffer + 64 MiB in every Laminar run".into(),
            format!(
                "{n} runs; closest: {:.0} MiB peak RSS with a {:.0} MiB buffer",
                r.max_rss_bytes as f64 / MIB,
                r.ram_buffer_bytes.unwrap_or(0) as f64 / MIB
            ),
            worst <= RSS_SLACK_BYTES as i64,
        );
    }
    out
}

/// The label of the bar group centred at `x` (group `i` spans `i..i + 1`), and none
/// between groups.
pub(crate) fn group_label(labels: &[String], x: f64) -> String {
    let i = x.floor() as usize;
    if (x - i as f64 - 0.5).abs() < 0.01 {
        labels.get(i).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// Draws median throughput per workload and tool as grouped bars.
pub fn chart(comparisons: &[Comparison], path: &Path) -> Result<()> {
    let groups: Vec<(String, Vec<(&str, f64)>)> = comparisons
        .iter()
        .map(|c| {
            let bars = TOOLS
                .iter()
                .filter_map(|t| median_of(&c.runs, t, &|r| r.throughput_bytes_per_second / MIB).map(|v| (*t, v)))
                .collect();
            (format!("{} {}", c.endpoints, c.workload.name), bars)
        })
        .collect();
    let y_max = groups.iter().flat_map(|g| g.1.iter().map(|b| b.1)).fold(1.0, f64::max) * 1.15;
    let width = 160 + 150 * groups.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Median throughput, MiB/s (higher is better)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..groups.len().max(1) as f64, 0f64..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let labels: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_max_light_lines(0)
        .x_labels(groups.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| group_label(&labels, *x))
        .y_desc("MiB/s")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let colors = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(148, 103, 189)];
    for (t, tool) in TOOLS.iter().enumerate() {
        let color = colors[t];
        let bars: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(g, (_, bars))| {
                let v = bars.iter().find(|b| b.0 == *tool)?.1;
                let x0 = g as f64 + 0.1 + 0.8 * t as f64 / TOOLS.len() as f64;
                Some(Rectangle::new([(x0, 0.0), (x0 + 0.8 / TOOLS.len() as f64 - 0.02, v)], color.filled()))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(*tool)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Rewrites `RESULTS.md` (next to `out`) and `out/throughput.svg` from the JSON in `out`.
pub fn write(out: &Path) -> Result<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    let mut comparisons: Vec<Comparison> = Vec::new();
    let mut limits: Vec<LimitReport> = Vec::new();
    let mut scale: Option<ScaleReport> = None;
    let mut micro: Option<String> = None;
    let mut stage: Option<crate::stage::StageReport> = None;
    let mut clouds: Vec<crate::cloud::compare::CloudComparison> = Vec::new();
    let mut chaos: Option<crate::chaos::ChaosReport> = None;
    for p in &paths {
        let n = name(p);
        if n.starts_with("compare-") {
            comparisons.push(read_json(p)?);
        } else if n.starts_with("cloud-") {
            clouds.push(read_json(p)?);
        } else if n.starts_with("limit-") {
            limits.push(read_json(p)?);
        } else if n == "scale.json" {
            scale = Some(read_json(p)?);
        } else if n == "chaos.json" {
            chaos = Some(read_json(p)?);
        } else if n == "stage.json" {
            stage = Some(read_json(p)?);
        } else if n == "micro.json" {
            micro = Some(crate::micro::table(&read_json::<Vec<crate::micro::MicroResult>>(p)?));
        }
    }
    // SeaweedFS first, then synthetic; workloads in a fixed order.
    let order = |w: &str| ["small", "mixed", "large", "pareto", "tiny"].iter().position(|x| *x == w).unwrap_or(9);
    comparisons.sort_by_key(|c| (c.endpoints != "weed", order(&c.workload.name)));
    let mut md = String::from(
        "# Benchmark results\n\nGenerated by `laminar-bench report` from the raw JSON in `bench/results/`; \
         regenerate with `cargo run --release -p laminar-bench -- report`. Every table is one run of one \
         `laminar-bench` command, with the tools alternating (A B C A B C ...) on the same endpoints, each run into \
         a fresh destination prefix and each destination checked: on SeaweedFS, object count, bytes and a \
         downloaded sample; on the synthetic endpoints, every key, size and CRC32C. Wall and CPU time are the \
         relay process's own (CPU is user + system from `wait4`); the servers run on the same cores, so every \
         CPU-second a relay spends is taken from them. `rclone-tuned` uses the flags rclone's docs suggest for the \
         workload; on a small host its extra streams can overload the servers, which is why it can be slower than \
         the defaults.\n\n",
    );
    if let Some(m) = comparisons.first().map(|c| &c.machine).or(limits.first().map(|l| &l.machine)) {
        md.push_str(&machine_section(m));
        md.push('\n');
    }
    md.push_str("![Median throughput per workload and tool](results/throughput.svg)\n\n");
    md.push_str("## Targets\n\n");
    md.push_str(&targets(&comparisons, &limits));
    md.push_str("\n## Laminar and rclone\n\n");
    for c in &comparisons {
        md.push_str(&table(c));
        md.push_str("\nCommands:\n\n");
        for cmd in &c.commands {
            md.push_str(&format!("    {cmd}\n"));
        }
        md.push('\n');
    }
    if !limits.is_empty() {
        md.push_str(
            "## The limit\n\n`laminar-bench limit` runs a bare relay (`bench/src/limit.rs`: blocking sockets, one \
             thread per connection pair, a GET copied into a PUT through one buffer, no checksums, no listing) \
             beside Laminar on the synthetic endpoints, and on SeaweedFS (signing its requests) beside Laminar and \
             rclone; and the endpoints' own ceilings with the same program: \
             `bare-get` reads every object from the source and drops it, `bare-put` writes generated bytes to the \
             destination. (s5cmd was tried for the GET ceiling: `s5cmd cat` to /dev/null reads at 150–170 MiB/s \
             with a CPU-second per 6 MiB here, so it measures s5cmd, not the endpoint.)\n\n",
        );
        for l in &limits {
            md.push_str(&limit_section(l));
            md.push('\n');
        }
    }
    if !clouds.is_empty() {
        md.push_str(&crate::cloud::compare::cloud_section(&clouds));
        crate::cloud::chart::chart(&clouds, &out.join("cloud.svg"))?;
        md.push_str("![Laminar's median throughput over rclone's best, per cloud comparison](results/cloud.svg)\n\n");
        let notes = out.join("cloud-notes.md");
        if notes.is_file() {
            md.push_str(&std::fs::read_to_string(&notes)?);
            md.push('\n');
        }
    }
    if let Some(s) = &scale {
        md.push_str("## Scaling with workers\n\n");
        md.push_str(&machine_section(&s.machine));
        md.push('\n');
        md.push_str(&scale_section(s));
        md.push('\n');
    }
    if let Some(c) = &chaos {
        md.push_str(&crate::chaos::section(c));
    }
    if let Some(s) = &stage {
        md.push_str("## The stage beside fio\n\n");
        md.push_str(&crate::stage::section(s));
        md.push('\n');
    }
    if let Some(m) = &micro {
        md.push_str("## Micro-benchmarks\n\n`cargo bench -p laminar-bench --bench micro -- --write`\n\n");
        md.push_str(m);
        md.push('\n');
    }
    let notes = out.join("engine-notes.md");
    if notes.is_file() {
        md.push_str(&std::fs::read_to_string(&notes)?);
    }
    chart(&comparisons, &out.join("throughput.svg"))?;
    let path = out.parent().unwrap_or(Path::new(".")).join("RESULTS.md");
    std::fs::write(&path, md)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
