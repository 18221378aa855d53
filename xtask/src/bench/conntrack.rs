//! `--workloads ct-1m` (issue 19): the dataplane with a conntrack table of
//! a million entries. The agent runs with `[maps] conntrack_tcp` raised to
//! [`TABLE`]; `in-crr` and `in-rr` are measured with the table nearly
//! empty, then [`FLOWS`] synthetic ESTABLISHED flows (both directions,
//! 1 000 000 entries, idle timeout hours away) are written straight into
//! the pinned TCP table with `bpf(2)`, and the same workloads run again,
//! and once more after the synthetic entries are deleted: the ratio of
//! filled to the mean of the two empty phases is the lookup cost at that
//! size, with the machine's drift over the run taken out. In between, the
//! agent's CPU (`/proc/PID/stat` utime+stime) is read over [`TICKS`] of its
//! ticks with the full table and no traffic: each tick walks the table for
//! its conntrack GC and counts it for the map-pressure warnings, so that is
//! the GC's cost. While the workloads run, the agent is stopped
//! (SIGSTOP, continued after): the datapath runs in the kernel without it,
//! and its GC walk (seconds of CPU at this size, at the lowest priority)
//! would otherwise take CPU from the load tool and the servers on a
//! two-core machine, so the ratio is the lookup cost alone. The
//! `dataplane_map_pressure` gauge for the table is read
//! from the agent's `/metrics` (inside the fake host).
//!
//! Not in the default workload set (it needs a large map and about two
//! minutes); IPv4 only.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use dataplane_common::{
    ct::{CtEntry, CtKey, CtState, FLAG_DNAT, ZONE_UPLINK},
    maps::CT_TCP,
    net::IPPROTO_TCP,
};

use super::{
    check_interrupt,
    family::Family,
    peers::{dataplane::Dataplane, Peer as _},
    report::{self, stat, Results, Stat},
    topology::{unique_name, Topology},
    workloads::{self, Dir, Durations, Kind, Servers, Workload},
    Plan,
};

/// The name `--workloads` takes.
pub const NAME: &str = "ct-1m";
/// `[maps] conntrack_tcp` of the measured agent: room for the 1 000 000
/// synthetic entries and for the `in-crr` runs' own flows (about 10 000
/// a second, two entries each, kept for the 10 s closing timeout and up
/// to a tick more), so the LRU does not evict the synthetic ones.
pub const TABLE: u32 = 1_500_000;
/// Synthetic flows written; two entries each.
pub const FLOWS: u32 = 500_000;
/// Ticks of the agent the CPU window spans.
pub const TICKS: u32 = 3;
/// The agent's `--interval` as the bench starts it ([`Dataplane`]).
const INTERVAL: Duration = Duration::from_secs(10);
/// The agent's default metrics address (inside the fake host).
const METRICS_URL: &str = "http://127.0.0.1:9641/metrics";
/// Runs of each workload per phase: one run is too noisy on a shared
/// machine for a 5 % target.
const MIN_RUNS: usize = 3;
/// Seconds per load-tool run.
const LOAD_SECS: f64 = 3.0;

/// Targets of issue 19.
const LOOKUP_TOLERANCE: f64 = 0.05;
const GC_CPU_MAX_PERCENT: f64 = 5.0;

/// One metric with the table nearly empty and filled.
#[derive(Clone, Debug)]
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub empty: Stat,
    pub filled: Stat,
    /// After the synthetic entries were deleted again: the empty table
    /// measured on both sides of the filled one tells the machine's drift
    /// from the table's effect.
    pub emptied: Stat,
}

/// The agent's CPU over a window of its ticks.
#[derive(Clone, Copy, Debug)]
pub struct CpuWindow {
    pub ticks: u32,
    pub wall: Duration,
    pub cpu: Duration,
}

impl CpuWindow {
    pub fn percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn per_tick(&self) -> Duration {
        self.cpu / self.ticks.max(1)
    }
}

/// The gauges `/metrics` gives for the TCP table.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub pressure: Option<f64>,
    pub entries: Option<f64>,
    pub max_entries: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct CtResult {
    pub written: u64,
    pub write_time: Duration,
    pub runs: usize,
    pub rows: Vec<Row>,
    /// The agent with the table nearly empty (one tick) and full.
    pub idle_cpu: CpuWindow,
    pub full_cpu: CpuWindow,
    pub gauges: std::result::Result<Gauges, String>,
}

fn measured() -> [Workload; 2] {
    [Kind::Rr, Kind::Crr].map(|kind| Workload {
        dir: Dir::Ingress,
        kind,
        family: Family::V4,
    })
}

/// The whole measurement on a topology and agent of its own.
pub fn measure(root: &Path, load_bin: &Path, plan: &Plan) -> Result<CtResult> {
    println!("bench: {NAME}: the dataplane with a {TABLE}-entry TCP conntrack table");
    let config = std::env::temp_dir().join(format!("{}.toml", unique_name("ct1m")));
    std::fs::write(&config, format!("[maps]\nconntrack_tcp = {TABLE}\n"))
        .with_context(|| format!("writing {}", config.display()))?;
    let _config_guard = RemoveOnDrop(config.clone());
    let topo = Topology::new("ct1m", Family::V4)?;
    let mut dp = Dataplane::new(root)?.with_config(&config);
    dp.setup(&topo, 0).context("setting up the dataplane")?;
    let mut servers = Servers::start(&topo, load_bin)?;
    let pid = dp.agent_pid().context("the agent is not running")?;
    let addr = dp.ingress_addr(&topo);
    let d = Durations {
        tcp_secs: plan.durations.tcp_secs,
        load_secs: plan.durations.load_secs.max(LOAD_SECS),
    };
    let runs = plan.rounds.max(MIN_RUNS);

    let idle_cpu = cpu_window(pid, 1)?;
    println!(
        "  agent, table nearly empty: {:.2} % of a core over {:.0} s",
        idle_cpu.percent(),
        idle_cpu.wall.as_secs_f64()
    );
    let empty = {
        let _paused = Paused::new(pid)?;
        run_phase(&mut servers, &topo, addr, load_bin, d, runs, "empty")?
    };

    let t = Instant::now();
    let written = fill(&dp.pins().join(CT_TCP), &topo, FLOWS)?;
    let write_time = t.elapsed();
    println!(
        "  wrote {written} entries in {:.1} s",
        write_time.as_secs_f64()
    );
    let gauges = scrape(&topo).map_err(|e| format!("{e:#}"));
    match &gauges {
        Ok(g) => println!(
            "  /metrics: {CT_TCP} pressure {:?}, entries {:?} of {:?}",
            g.pressure, g.entries, g.max_entries
        ),
        Err(e) => println!("  /metrics not read: {e}"),
    }
    check_interrupt()?;
    let full_cpu = cpu_window(pid, TICKS)?;
    println!(
        "  agent, table full: {:.2} % of a core over {:.0} s ({:.2} s CPU per tick)",
        full_cpu.percent(),
        full_cpu.wall.as_secs_f64(),
        full_cpu.per_tick().as_secs_f64()
    );
    let filled = {
        let _paused = Paused::new(pid)?;
        run_phase(&mut servers, &topo, addr, load_bin, d, runs, "filled")?
    };

    let t = Instant::now();
    let removed = unfill(&dp.pins().join(CT_TCP), &topo, FLOWS)?;
    println!(
        "  deleted {removed} synthetic entries in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let emptied = {
        let _paused = Paused::new(pid)?;
        run_phase(&mut servers, &topo, addr, load_bin, d, runs, "emptied")?
    };

    let rows = measured()
        .iter()
        .flat_map(|w| w.metrics())
        .zip(empty.into_iter().zip(filled).zip(emptied))
        .filter_map(|(m, ((e, f), a))| {
            Some(Row {
                metric: m.name,
                unit: m.unit,
                higher_is_better: m.higher_is_better,
                empty: stat(&e)?,
                filled: stat(&f)?,
                emptied: stat(&a)?,
            })
        })
        .collect();
    // The agent first (it holds the pins), then the servers, then the
    // namespaces.
    drop(dp);
    drop(servers);
    drop(topo);
    Ok(CtResult {
        written,
        write_time,
        runs,
        rows,
        idle_cpu,
        full_cpu,
        gauges,
    })
}

/// `runs` rounds of every [`measured`] workload; one value list per
/// metric, in [`Workload::metrics`] order.
fn run_phase(
    servers: &mut Servers,
    topo: &Topology,
    addr: IpAddr,
    load_bin: &Path,
    d: Durations,
    runs: usize,
    label: &str,
) -> Result<Vec<Vec<f64>>> {
    let ws = measured();
    let count: usize = ws.iter().map(|w| w.metrics().len()).sum();
    let mut out = vec![Vec::new(); count];
    for _ in 0..runs {
        let mut i = 0;
        for w in ws {
            check_interrupt()?;
            servers.check()?;
            // Retried once, as the other workloads are (`run_one`): a
            // server still finishing the previous run is not the table's
            // doing; a second failure is reported.
            let values = workloads::run(w, topo, addr, load_bin, d)
                .or_else(|first| {
                    eprintln!("bench: {} failed once, retrying: {first:#}", w.name());
                    std::thread::sleep(Duration::from_millis(500));
                    workloads::run(w, topo, addr, load_bin, d)
                })
                .with_context(|| format!("{} with the table {label}", w.name()))?;
            for v in values {
                out[i].push(v);
                i += 1;
            }
        }
    }
    println!("  {label}: {runs} runs of in-rr and in-crr done");
    Ok(out)
}

/// The agent stopped (SIGSTOP) until drop (SIGCONT), also on an error.
struct Paused(libc::pid_t);

impl Paused {
    fn new(pid: u32) -> Result<Paused> {
        let pid = pid as libc::pid_t;
        // SAFETY: kill has no memory preconditions; `pid` is our child.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            return Err(std::io::Error::last_os_error()).context("stopping the agent");
        }
        Ok(Paused(pid))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Removes a file on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: what `bpf_ktime_get_ns` returns, so
/// the entries look freshly used to the GC.
fn monotonic_ns() -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime");
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The synthetic flows: published-port DNAT flows from 198.18.0.0/15
/// (RFC 2544's benchmark range, which no bench namespace uses) to the
/// host, translated to the container: both directions, as the datapath
/// writes them, ESTABLISHED and just seen.
fn flows(host: Ipv4Addr, container: Ipv4Addr, count: u32, now: u64) -> Vec<(CtKey, CtEntry)> {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let mut out = Vec::with_capacity(2 * count as usize);
    for i in 0..count {
        let key = CtKey {
            saddr: (base + i / 1000).to_be_bytes(),
            daddr: host.octets(),
            sport: (10_000 + (i % 1000) as u16).to_be_bytes(),
            dport: 8443u16.to_be_bytes(),
            proto: IPPROTO_TCP,
            zone: ZONE_UPLINK,
            _pad: [0; 2],
        };
        let entry = CtEntry {
            state: CtState::Established as u8,
            flags: FLAG_DNAT,
            created_ns: now,
            last_seen_ns: now,
            ..CtEntry::default()
        }
        .with_dst(container.octets(), 443u16.to_be_bytes());
        out.push((key, entry));
        out.push((entry.peer_key(&key), entry.reply(&key)));
    }
    out
}

/// Writes [`flows`] into the pinned TCP table at `pin`; the entries
/// written.
fn fill(pin: &Path, topo: &Topology, count: u32) -> Result<u64> {
    let (IpAddr::V4(host), IpAddr::V4(container)) = (topo.addrs().host, topo.addrs().container)
    else {
        bail!("{NAME} runs on IPv4");
    };
    let fd = obj_get(pin).with_context(|| format!("opening the pinned map {}", pin.display()))?;
    let mut written = 0u64;
    for (k, v) in flows(host, container, count, monotonic_ns()?) {
        update(&fd, bytemuck::bytes_of(&k), bytemuck::bytes_of(&v))
            .with_context(|| format!("writing entry {written} into {}", pin.display()))?;
        written += 1;
        if written.is_multiple_of(100_000) {
            check_interrupt()?;
        }
    }
    Ok(written)
}

/// Deletes what [`fill`] wrote (those the datapath's LRU has not evicted
/// meanwhile); the entries deleted.
fn unfill(pin: &Path, topo: &Topology, count: u32) -> Result<u64> {
    let (IpAddr::V4(host), IpAddr::V4(container)) = (topo.addrs().host, topo.addrs().container)
    else {
        bail!("{NAME} runs on IPv4");
    };
    let fd = obj_get(pin).with_context(|| format!("opening the pinned map {}", pin.display()))?;
    let mut removed = 0u64;
    for (k, _) in flows(host, container, count, 0) {
        let mut attr = UpdateAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: bytemuck::bytes_of(&k).as_ptr() as u64,
            value: 0,
            flags: 0,
        };
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Ok(_) => removed += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting from {}", pin.display())),
        }
    }
    Ok(removed)
}

/// `union bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` for BPF_MAP_UPDATE_ELEM.
#[repr(C)]
struct UpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a bpf_attr prefix of the command's layout, valid
    // for the call; the kernel zero-extends the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

fn obj_get(pin: &Path) -> std::io::Result<OwnedFd> {
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn update(fd: &OwnedFd, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    let mut attr = UpdateAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: 0, // BPF_ANY
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// utime + stime of process `pid`, all its threads.
fn cpu_of(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu(&text, clock_ticks()).with_context(|| format!("parsing {path}: {text:?}"))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime and stime (fields 14 and 15) of a `/proc/PID/stat` line; the
/// command name, which may hold spaces, ends at the last `)`.
fn parse_cpu(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(
        ticks * 1_000_000_000 / ticks_per_sec.max(1),
    ))
}

/// The agent's CPU over `ticks` of its intervals (no traffic meanwhile).
fn cpu_window(pid: u32, ticks: u32) -> Result<CpuWindow> {
    let start = cpu_of(pid)?;
    let t = Instant::now();
    let wall = INTERVAL * ticks;
    while t.elapsed() < wall {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(200).min(wall.saturating_sub(t.elapsed())));
    }
    let cpu = cpu_of(pid)?.saturating_sub(start);
    Ok(CpuWindow {
        ticks,
        wall: t.elapsed(),
        cpu,
    })
}

/// The TCP table's gauges from the agent's `/metrics`.
fn scrape(topo: &Topology) -> Result<Gauges> {
    let text = topo
        .host
        .exec(&["curl", "-sS", "--max-time", "60", METRICS_URL])
        .context("curl /metrics in the fake host")?;
    Ok(parse_gauges(&text))
}

fn parse_gauges(text: &str) -> Gauges {
    let label = format!("{{map=\"{CT_TCP}\"}}");
    let value = |name: &str| {
        let prefix = format!("{name}{label} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    Gauges {
        pressure: value("dataplane_map_pressure"),
        entries: value("dataplane_map_entries"),
        max_entries: value("dataplane_map_max_entries"),
    }
}

/// filled / empty of the medians, the empty table being the mean of its
/// medians before the fill and after the removal.
fn ratio(r: &Row) -> f64 {
    r.filled.median / ((r.empty.median + r.emptied.median) / 2.0).max(1e-9)
}

/// The report's section (empty when `ct-1m` did not run).
pub fn markdown(r: &Results) -> String {
    let Some(c) = &r.conntrack else {
        return String::new();
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Conntrack at 1 000 000 entries\n\n\
         `[maps] conntrack_tcp = {TABLE}`; {} synthetic ESTABLISHED entries ({FLOWS} flows, both \
         directions) written into the pinned TCP table in {:.1} s. Medians of {} runs per phase \
         ({LOAD_SECS:.0} s each), min-max in brackets; the agent is stopped (SIGSTOP) while the \
         workloads run, so the ratio is the datapath's lookup cost without the GC's CPU; \
         filled / empty is against the mean of the two empty-table medians.\n\n\
         | metric | unit | table nearly empty | table filled | entries deleted again | filled / empty |\n\
         |---|---|---|---|---|---|",
        c.written,
        c.write_time.as_secs_f64(),
        c.runs
    );
    let f = |st: &Stat| {
        format!(
            "{} ({}-{})",
            report::fmt_value(st.median),
            report::fmt_value(st.min),
            report::fmt_value(st.max)
        )
    };
    for row in &c.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.3} |",
            row.metric,
            row.unit,
            f(&row.empty),
            f(&row.filled),
            f(&row.emptied),
            ratio(row)
        );
    }
    let _ = writeln!(
        s,
        "\nAgent CPU (utime+stime, all threads): {:.2} % of one core with the table nearly empty \
         ({:.0} s); {:.2} % over {} ticks ({:.0} s) with it full, {:.2} s of CPU per tick (the \
         GC walk and the map-fill count; the agent does not log the walk's time).\n",
        c.idle_cpu.percent(),
        c.idle_cpu.wall.as_secs_f64(),
        c.full_cpu.percent(),
        c.full_cpu.ticks,
        c.full_cpu.wall.as_secs_f64(),
        c.full_cpu.per_tick().as_secs_f64()
    );
    match &c.gauges {
        Ok(g) => {
            let show = |v: Option<f64>, places: usize| {
                v.map_or("-".to_owned(), |v| format!("{v:.places$}"))
            };
            let _ = writeln!(
                s,
                "`/metrics` after the fill: `dataplane_map_pressure{{map=\"{CT_TCP}\"}}` {}, \
                 entries {} of {}.\n",
                show(g.pressure, 4),
                show(g.entries, 0),
                show(g.max_entries, 0)
            );
        }
        Err(e) => {
            let _ = writeln!(s, "`/metrics` could not be read: {e}\n");
        }
    }
    for t in targets(c) {
        let _ = writeln!(s, "- {t}");
    }
    s.push('\n');
    s
}

fn targets(c: &CtResult) -> Vec<String> {
    let mut out = Vec::new();
    for row in c.rows.iter().filter(|r| r.higher_is_better) {
        let q = ratio(row);
        out.push(report::check(
            &format!(
                "{} at 1M entries within {:.0} % of the empty table",
                row.metric,
                LOOKUP_TOLERANCE * 100.0
            ),
            Some(q),
            |v| (v - 1.0).abs() <= LOOKUP_TOLERANCE,
            &format!("filled / empty {q:.3}"),
        ));
    }
    let p = c.full_cpu.percent();
    out.push(report::check(
        &format!("agent CPU with 1M entries <= {GC_CPU_MAX_PERCENT:.0} % of one core"),
        Some(p),
        |v| v <= GC_CPU_MAX_PERCENT,
        &format!(
            "{p:.2} % ({:.2} s CPU per {:.0} s tick)",
            c.full_cpu.per_tick().as_secs_f64(),
            INTERVAL.as_secs_f64()
        ),
    ));
    let pressure = c.gauges.as_ref().ok().and_then(|g| g.pressure);
    out.push(report::check(
        &format!("map pressure gauge for {CT_TCP} in /metrics"),
        pressure,
        |_| true,
        &pressure.map_or(String::new(), |v| format!("{v:.4}")),
    ));
    out
}

/// The section's figures for `results.json`.
pub fn json(r: &Results) -> serde_json::Value {
    use serde_json::json;
    let Some(c) = &r.conntrack else {
        return serde_json::Value::Null;
    };
    let cpu = |w: &CpuWindow| {
        json!({"ticks": w.ticks, "wall_s": w.wall.as_secs_f64(), "cpu_s": w.cpu.as_secs_f64(),
               "percent": w.percent()})
    };
    json!({
        "table": TABLE,
        "written": c.written,
        "write_s": c.write_time.as_secs_f64(),
        "runs": c.runs,
        "rows": c.rows.iter().map(|r| json!({
            "metric": r.metric, "unit": r.unit,
            "empty": r.empty.median, "filled": r.filled.median,
            "emptied": r.emptied.median, "ratio": ratio(r),
        })).collect::<Vec<_>>(),
        "idle_cpu": cpu(&c.idle_cpu),
        "full_cpu": cpu(&c.full_cpu),
        "gauges": match &c.gauges {
            Ok(g) => json!({"pressure": g.pressure, "entries": g.entries, "max_entries": g.max_entries}),
            Err(e) => json!({"error": e}),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_fields_after_the_command_name() {
        let line = "42 (dataplane agent) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu(line, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_cpu("garbage", 100), None);
    }

    #[test]
    fn gauges_of_the_tcp_table_only() {
        let text = "dataplane_map_pressure{map=\"DP_CT_OTHER\"} 0.5\n\
                    dataplane_map_pressure{map=\"DP_CT_TCP\"} 0.95\n\
                    dataplane_map_entries{map=\"DP_CT_TCP\"} 1000000\n";
        let g = parse_gauges(text);
        assert_eq!(g.pressure, Some(0.95));
        assert_eq!(g.entries, Some(1e6));
        assert_eq!(g.max_entries, None);
    }

    #[test]
    fn flows_are_distinct_pairs() {
        let (host, container) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(172, 16, 0, 2));
        let all = flows(host, container, 3000, 7);
        assert_eq!(all.len(), 6000);
        let keys: std::collections::HashSet<CtKey> = all.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), 6000);
        // Each entry's peer key is the other direction's key, as the GC
        // pairs them (no entry counted unpaired).
        for (k, e) in &all {
            assert!(keys.contains(&e.peer_key(k)));
            assert_eq!(e.last_seen_ns, 7);
        }
    }
}
