//! The bench's results and what is made of them: medians with min-max,
//! ratios to `iptables` and to `none`, install and add/remove times, the
//! control-plane figures, pass/miss per target of project issue 6, written
//! as `target/bench/results.md` (also printed), `results.json` (every
//! sample and figure, for scripts) and one SVG per metric ([`super::plot`]).

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use super::{family::Family, peers::Install, plot, workloads::Metric, Plan};

#[derive(Clone, Debug)]
pub struct Sample {
    pub peer: String,
    pub n: usize,
    pub metric: String,
    pub value: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct AddRemove {
    pub add: Duration,
    pub remove: Duration,
}

#[derive(Clone, Debug)]
pub struct InstallResult {
    pub peer: String,
    pub family: Family,
    pub n: usize,
    pub install: Install,
    pub add_remove: Option<AddRemove>,
}

/// Endpoints already connected before the crowded connect measurement
/// (`control.rs`).
pub const CROWD: usize = 1000;
/// Published ports of each endpoint measured among them.
pub const CROWDED_PORTS: usize = 32;
/// The crowded measurement's row, which the targets look for.
pub const CROWDED_TOOL: &str = "dataplane (32 ports, 1000 endpoints)";

/// Connecting one endpoint with one tool: median and p99, or why not.
#[derive(Clone, Debug)]
pub struct ControlResult {
    pub tool: String,
    pub outcome: std::result::Result<(Duration, Duration, usize), String>,
    pub note: String,
}

pub struct Results {
    pub plan: Plan,
    pub samples: Vec<Sample>,
    pub installs: Vec<InstallResult>,
    pub control: Vec<ControlResult>,
    /// `ct-1m`, when it ran.
    pub conntrack: Option<super::conntrack::CtResult>,
    pub elapsed: Duration,
    /// What was left out of this run and why (peers, workloads).
    pub notes: Vec<String>,
}

/// Median, min and max of some values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stat(values: &[f64]) -> Option<Stat> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[v.len() - 1],
    })
}

impl Results {
    pub fn new(plan: Plan) -> Results {
        Results {
            plan,
            samples: Vec::new(),
            installs: Vec::new(),
            control: Vec::new(),
            conntrack: None,
            elapsed: Duration::ZERO,
            notes: Vec::new(),
        }
    }

    pub fn metrics(&self) -> Vec<Metric> {
        self.plan
            .workloads
            .iter()
            .flat_map(|w| w.metrics())
            .collect()
    }

    pub fn stat(&self, peer: &str, n: usize, metric: &str) -> Option<Stat> {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.peer == peer && s.n == n && s.metric == metric)
            .map(|s| s.value)
            .collect();
        stat(&v)
    }

    pub fn median(&self, peer: &str, n: usize, metric: &str) -> Option<f64> {
        self.stat(peer, n, metric).map(|s| s.median)
    }

    fn install(&self, peer: &str, family: Family, n: usize) -> Option<&InstallResult> {
        self.installs
            .iter()
            .find(|i| i.peer == peer && i.family == family && i.n == n)
    }
}

pub fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// `a / b` as "1.23x", or "-".
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// Peers whose ratios get columns (all of them would make the table
/// unreadable; every median is in it).
const RATIO_PEERS: &[&str] = &["nftables-sets", "dataplane"];

/// The real products' layouts and the flowtable peer: the dataplane's
/// ratio to each is a target row ([`targets`]).
const PRODUCT_PEERS: &[&str] = &["docker-nft", "netavark-nft", "nftables-sets-ft"];

/// The markdown report; also writes it and the SVGs under `dir`.
pub fn write(r: &Results, dir: &Path) -> Result<String> {
    let md = markdown(r);
    let path = dir.join("results.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("results.json");
    let text = serde_json::to_vec_pretty(&json(r)).context("results as JSON")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    for m in r.metrics() {
        let svg = plot::svg(r, &m);
        let path = dir.join(format!("{}.svg", m.name));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(md)
}

/// Every sample and figure of the run, with its plan, as JSON: medians
/// and min-max per (peer, N, metric), the raw samples, installs, add/remove
/// and control-plane times in milliseconds.
pub fn json(r: &Results) -> serde_json::Value {
    use serde_json::json;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut stats = Vec::new();
    for m in r.metrics() {
        for peer in &r.plan.peers {
            for &n in &r.plan.ns {
                if let Some(s) = r.stat(peer, n, &m.name) {
                    stats.push(
                        json!({"peer": peer, "n": n, "metric": m.name, "unit": m.unit,
                        "median": s.median, "min": s.min, "max": s.max}),
                    );
                }
            }
        }
    }
    json!({
        "plan": {
            "families": r.plan.families.iter().map(|f| f.label()).collect::<Vec<_>>(),
            "peers": r.plan.peers,
            "workloads": r.plan.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
            "n": r.plan.ns,
            "rounds": r.plan.rounds,
            "quick": r.plan.quick,
        },
        "elapsed_s": r.elapsed.as_secs_f64(),
        "notes": r.notes,
        "stats": stats,
        "overlay": super::overlay::json(r),
        "conntrack": super::conntrack::json(r),
        "samples": r.samples.iter().map(|s| json!({"peer": s.peer, "n": s.n, "metric": s.metric, "value": s.value})).collect::<Vec<_>>(),
        "installs": r.installs.iter().map(|i| json!({
            "peer": i.peer, "family": i.family.label(), "n": i.n,
            "total_ms": ms(i.install.total), "mappings_ms": ms(i.install.mappings),
            "note": i.install.note,
            "cli_mappings_ms": i.install.cli_mappings.map(ms),
            "cli_rules_ms": i.install.cli_rules.map(ms),
            "add_one_ms": i.add_remove.map(|a| ms(a.add)),
            "remove_one_ms": i.add_remove.map(|a| ms(a.remove)),
        })).collect::<Vec<_>>(),
        "control": r.control.iter().map(|c| match &c.outcome {
            Ok((median, p99, count)) => json!({"tool": c.tool, "median_ms": ms(*median), "p99_ms": ms(*p99), "count": count, "note": c.note}),
            Err(e) => json!({"tool": c.tool, "error": e, "note": c.note}),
        }).collect::<Vec<_>>(),
    })
}

pub fn markdown(r: &Results) -> String {
    if r.plan.workloads.is_empty() && r.control.is_empty() {
        // Only the cross-host overlay or ct-1m ran: no per-N tables or
        // targets.
        return format!(
            "## Results\n\n{}{}",
            super::overlay::markdown(r),
            super::conntrack::markdown(r)
        );
    }
    let mut s = String::new();
    let peers = &r.plan.peers;
    let _ = writeln!(
        s,
        "## Results\n\nN = extra published ports and extra DOCKER-USER-style source rules. \
         Medians over {} rounds, min-max in brackets; ratios are of medians \
         (IPv6 rows, `in6-`/`eg6-`, against the same peers' IPv6 rules). \
         Higher is better except latency (us).\n",
        r.plan.rounds
    );
    for &n in &r.plan.ns {
        let _ = writeln!(s, "### N = {n}\n");
        let mut head = "| metric | unit |".to_owned();
        let mut rule = "|---|---|".to_owned();
        for p in peers {
            let _ = write!(head, " {p} |");
            rule.push_str("---|");
        }
        for p in peers.iter().filter(|p| RATIO_PEERS.contains(&p.as_str())) {
            let _ = write!(head, " {p} / iptables | {p} / none |");
            rule.push_str("---|---|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for m in r.metrics() {
            let mut line = format!("| {} | {} |", m.name, m.unit);
            for p in peers {
                match r.stat(p, n, &m.name) {
                    Some(st) => {
                        let _ = write!(
                            line,
                            " {} ({}-{}) |",
                            fmt_value(st.median),
                            fmt_value(st.min),
                            fmt_value(st.max)
                        );
                    }
                    None => line.push_str(" - |"),
                }
            }
            for p in peers.iter().filter(|p| RATIO_PEERS.contains(&p.as_str())) {
                let v = r.median(p, n, &m.name);
                let _ = write!(
                    line,
                    " {} | {} |",
                    ratio(v, r.median("iptables", n, &m.name)),
                    ratio(v, r.median("none", n, &m.name))
                );
            }
            let _ = writeln!(s, "{line}");
        }
        s.push('\n');
    }

    let _ = writeln!(
        s,
        "### Installing N mappings and N rules; one more mapping at size N\n\n\
         | peer | family | N | install all (ms) | of which mappings (ms) | add one (ms) | remove one (ms) | how |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for i in &r.installs {
        if i.peer == "none" {
            continue;
        }
        let (add, rm) = i
            .add_remove
            .map(|a| (ms(a.add), ms(a.remove)))
            .unwrap_or(("-".into(), "-".into()));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {add} | {rm} | {} |",
            i.peer,
            i.family.label(),
            i.n,
            ms(i.install.total),
            ms(i.install.mappings),
            i.install.note.as_deref().unwrap_or("")
        );
    }
    s.push('\n');

    if !r.control.is_empty() {
        let _ = writeln!(
            s,
            "### Control plane: connecting one endpoint\n\n\
             | tool | median (ms) | p99 (ms) | endpoints | how |\n|---|---|---|---|---|"
        );
        for c in &r.control {
            match &c.outcome {
                Ok((med, p99, count)) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {count} | {} |",
                        c.tool,
                        ms(*med),
                        ms(*p99),
                        c.note
                    );
                }
                Err(why) => {
                    let _ = writeln!(s, "| {} | - | - | 0 | did not run: {why} |", c.tool);
                }
            }
        }
        s.push('\n');
    }

    s.push_str(&super::overlay::markdown(r));
    s.push_str(&super::conntrack::markdown(r));
    if !r.notes.is_empty() {
        let _ = writeln!(s, "### Notes\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push('\n');
    }

    let _ = writeln!(s, "### Targets\n");
    for t in targets(r) {
        let _ = writeln!(s, "- {t}");
    }
    s
}

/// One target of the issue, evaluated: "PASS ...", "MISS ..." or
/// "n/a ... (not measured)".
pub fn check(what: &str, value: Option<f64>, ok: impl Fn(f64) -> bool, shown: &str) -> String {
    match value {
        Some(v) if ok(v) => format!("PASS {what}: {shown}"),
        Some(_) => format!("MISS {what}: {shown}"),
        None => format!("n/a  {what}: not measured in this run"),
    }
}

pub fn targets(r: &Results) -> Vec<String> {
    let dp = "dataplane";
    let mut out = Vec::new();
    let rel = |metric: &str, n: usize, other: &str| -> Option<f64> {
        Some(r.median(dp, n, metric)? / r.median(other, n, metric)?)
    };
    let show = |v: Option<f64>| v.map(|v| format!("{v:.2}x")).unwrap_or_default();
    // The same targets for every family measured: `in`/`eg` and `in6`/`eg6`.
    let dirs: Vec<String> = r
        .plan
        .families
        .iter()
        .flat_map(|f| ["in", "eg"].map(|d| format!("{d}{}", f.suffix())))
        .collect();
    for dir in &dirs {
        for (metric, label) in [("crr", "new conn/s"), ("rr", "RR rate")] {
            let m = format!("{dir}-{metric}");
            let v = rel(&m, 0, "nftables-sets");
            out.push(check(
                &format!("N=0 {m} ({label}) >= 1.2x nftables-sets"),
                v,
                |x| x >= 1.2,
                &show(v),
            ));
            let v = rel(&m, 0, "iptables");
            out.push(check(
                &format!("N=0 {m} ({label}) >= 1.3x iptables"),
                v,
                |x| x >= 1.3,
                &show(v),
            ));
        }
        let m = format!("{dir}-rr-p99");
        let v = rel(&m, 0, "nftables-sets");
        out.push(check(
            &format!("N=0 {m} latency <= 0.8x nftables-sets"),
            v,
            |x| x <= 0.8,
            &show(v),
        ));
        let m = format!("{dir}-tcp1");
        let v = rel(&m, 0, "none");
        out.push(check(
            &format!("N=0 {m} single-stream throughput >= none"),
            v,
            |x| x >= 1.0,
            &show(v),
        ));
    }
    // The flatness and scale targets at N = 10 000 (always listed) and at
    // N = 100 000 (issue 19) when the run has it.
    let bigs = [10_000, 100_000]
        .into_iter()
        .filter(|&b| b == 10_000 || r.plan.ns.contains(&b));
    for big in bigs {
        for m in r.metrics() {
            let v = match (r.median(dp, big, &m.name), r.median(dp, 0, &m.name)) {
                (Some(a), Some(b)) if b != 0.0 => Some(a / b),
                _ => None,
            };
            let ok = |x: f64| {
                if m.higher_is_better {
                    x >= 0.95
                } else {
                    x <= 1.05
                }
            };
            out.push(check(
                &format!("N={big} {} within 5% of dataplane's N=0", m.name),
                v,
                ok,
                &show(v),
            ));
        }
        for dir in &dirs {
            let m = format!("{dir}-crr");
            let v = rel(&m, big, "nftables-sets");
            out.push(check(
                &format!("N={big} {m} conn/s >= 1.2x nftables-sets"),
                v,
                |x| x >= 1.2,
                &show(v),
            ));
            let v = rel(&m, big, "iptables");
            out.push(check(
                &format!("N={big} {m} conn/s >= 20x iptables"),
                v,
                |x| x >= 20.0,
                &show(v),
            ));
        }
    }
    for dir in &dirs {
        for &n in &r.plan.ns {
            for peer in PRODUCT_PEERS
                .iter()
                .filter(|p| r.plan.peers.iter().any(|q| q == *p))
            {
                let m = format!("{dir}-crr");
                let v = rel(&m, n, peer);
                out.push(check(
                    &format!("N={n} {m} conn/s >= 1.2x {peer}"),
                    v,
                    |x| x >= 1.2,
                    &show(v),
                ));
            }
        }
    }
    out.extend(super::hostlocal::targets(r));
    // Hairpin: more than Docker's default path there (docker-proxy); the
    // floor (`none`: straight across the bridge) is in the tables.
    // Across networks (IPv4): the same, Docker's path there being the
    // proxy too.
    let across = ["xn-crr".to_owned()];
    for m in r
        .plan
        .families
        .iter()
        .map(|f| format!("hp{}-crr", f.suffix()))
        .chain(across)
    {
        let v = rel(&m, 0, "docker-proxy");
        out.push(check(
            &format!("N=0 {m} (new conn/s) >= 1.2x docker-proxy"),
            v,
            |x| x >= 1.2,
            &show(v),
        ));
    }
    // The install targets on the first family measured (IPv4 unless only
    // IPv6 ran).
    let family = r.plan.families.first().copied().unwrap_or(Family::V4);
    // Issue 19: 10 000 mappings and 10 000 rules, each in one request.
    let inst = r.install(dp, family, 10_000);
    let v = inst.map(|i| i.install.total.as_secs_f64());
    out.push(check(
        &format!(
            "installing 10000 mappings + 10000 rules < 0.1 s (API, {})",
            family.label()
        ),
        v,
        |x| x < 0.1,
        &v.map(|x| format!("{:.0} ms", x * 1e3)).unwrap_or_default(),
    ));
    // Through the CLI: one `publish add` process for the mappings, one
    // `filter add --from-file` process for the rules, each under 0.1 s.
    let cli = inst.and_then(|i| Some((i.install.cli_mappings?, i.install.cli_rules?)));
    let v = cli.map(|(m, r)| m.max(r).as_secs_f64());
    out.push(check(
        &format!(
            "installing 10000 mappings, 10000 rules < 0.1 s each (CLI, one process each, {})",
            family.label()
        ),
        v,
        |x| x < 0.1,
        &cli.map(|(m, r)| format!("mappings {} ms, rules {} ms", ms(m), ms(r)))
            .unwrap_or_default(),
    ));
    // At N = 10 000 and (issue 19) 100 000.
    for n in [10_000, 100_000] {
        let inst = r.install(dp, family, n);
        let v = inst.map(|i| i.install.mappings.as_secs_f64());
        out.push(check(
            &format!("installing {n} mappings < 1 s ({})", family.label()),
            v,
            |x| x < 1.0,
            &v.map(|x| format!("{:.0} ms", x * 1e3)).unwrap_or_default(),
        ));
        let ar = inst.and_then(|i| i.add_remove);
        let v = ar.map(|a| a.add.max(a.remove).as_secs_f64());
        out.push(check(
            &format!("one add/remove at N={n} < 1 ms (API, {})", family.label()),
            v,
            |x| x < 1e-3,
            &ar.map(|a| format!("add {} ms, remove {} ms", ms(a.add), ms(a.remove)))
                .unwrap_or_default(),
        ));
    }
    let crowded = r
        .control
        .iter()
        .find(|c| c.tool == CROWDED_TOOL)
        .and_then(|c| c.outcome.as_ref().ok());
    let v = crowded.map(|(med, _, _)| med.as_secs_f64());
    out.push(check(
        &format!(
            "endpoint connect with {} published ports among {} endpoints < 50 ms (API, median)",
            CROWDED_PORTS, CROWD
        ),
        v,
        |x| x < 0.050,
        &crowded
            .map(|(med, max, n)| {
                format!(
                    "{:.2} ms (worst {:.2} ms, {n} endpoints)",
                    med.as_secs_f64() * 1e3,
                    max.as_secs_f64() * 1e3
                )
            })
            .unwrap_or_default(),
    ));
    let conn = r
        .control
        .iter()
        .find(|c| c.tool == dp)
        .and_then(|c| c.outcome.as_ref().ok());
    let v = conn.map(|(med, _, _)| med.as_secs_f64());
    out.push(check(
        "endpoint connect median < 10 ms (API)",
        v,
        |x| x < 0.010,
        &v.map(|x| format!("{:.2} ms", x * 1e3)).unwrap_or_default(),
    ));
    let v = conn.map(|(_, p99, _)| p99.as_secs_f64());
    out.push(check(
        "endpoint connect p99 < 20 ms (API)",
        v,
        |x| x < 0.020,
        &v.map(|x| format!("{:.2} ms", x * 1e3)).unwrap_or_default(),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::stat;

    #[test]
    fn median_min_max() {
        let s = stat(&[3.0, 1.0, 2.0]).expect("stat");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(stat(&[1.0, 4.0]).expect("stat").median, 2.5);
        assert!(stat(&[]).is_none());
    }
}
