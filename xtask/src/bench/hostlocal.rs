//! Host-local workloads (`hl-crr`, `hl-rr`, `hl-seq`): a process in the
//! fake host connecting to a published port on `127.0.0.1` and on the
//! host's own address, as a user's `curl localhost:8080` does. Each peer
//! brings its own way there ([`super::peers::Peer::host_local`]): the
//! dataplane's cgroup sock_addr hooks (the client runs in a cgroup of the
//! bench's own), Docker's default `docker-proxy` (one process per published
//! port; `127.0.0.1` goes through it, the host's address through the nat
//! OUTPUT DNAT), or iptables' DNAT in OUTPUT with `route_localnet` (Docker's
//! `--userland-proxy=false`). IPv4 only.
//!
//! `hl-seq` is the long check: 100 000 sequential connections to
//! `127.0.0.1:published` (bounded in time), p50/p99 per 10 000-connection
//! slice so a degradation shows, and the memory the per-port processes hold
//! afterwards (`load::seq` is the client, run as `xtask bench-load seq`).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    load::parse_result,
    peers::TCP_PORT,
    report::{check, Results},
    topology::{unique_name, Topology, PREFIX},
    workloads::{Durations, Kind, Metric, Workload, CLIENT_CPU},
};

/// Connections of `hl-seq`, its slices, and its time bound.
pub const SEQ_COUNT: u64 = 100_000;
pub const SEQ_SLICE: u64 = 10_000;
pub const SEQ_MAX_SECS: u64 = 60;

/// What a peer set up for host-local clients.
#[derive(Clone, Debug, Default)]
pub struct HostLocal {
    /// The cgroup the client must run in (the dataplane's hooks).
    pub cgroup: Option<PathBuf>,
    /// Per-port processes (docker-proxy), for memory per published port.
    pub proxies: Vec<u32>,
    /// Published ports those processes serve.
    pub ports: usize,
    pub note: String,
}

/// The metrics of a host-local workload: `127.0.0.1` first, then the
/// host's address (`-addr`).
pub fn metrics(kind: Kind) -> Vec<Metric> {
    let m = |n: &str, unit, hib| Metric::new(n.to_owned(), unit, hib);
    match kind {
        Kind::Crr => vec![
            m("hl-crr", "conn/s", true),
            m("hl-crr-addr", "conn/s", true),
        ],
        Kind::Rr => vec![
            m("hl-rr", "trans/s", true),
            m("hl-rr-p99", "us", false),
            m("hl-rr-addr", "trans/s", true),
            m("hl-rr-addr-p99", "us", false),
        ],
        _ => {
            let mut v = vec![
                m("hl-seq", "conn/s", true),
                m("hl-seq-done", "conn", true),
                m("hl-seq-errors", "conn", false),
                m("hl-seq-p99-drift", "x", false),
                m("hl-mem-per-port", "KiB", false),
                m("hl-procs", "procs", false),
            ];
            for i in 1..=SEQ_COUNT / SEQ_SLICE {
                v.push(m(&format!("hl-seq-s{i:02}-p50"), "us", false));
                v.push(m(&format!("hl-seq-s{i:02}-p99"), "us", false));
            }
            v
        }
    }
}

/// Sets the fake host up as a client machine (the clients run in it):
/// port reuse as the client namespace has, and a short conntrack TIME_WAIT
/// so 100 000 connections per run do not fill the machine-wide conntrack
/// table (its limit counts every namespace) between runs.
pub fn prepare_host(topo: &Topology) -> Result<()> {
    topo.host
        .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    topo.host.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    // Only where the peer uses conntrack (the key exists once it is loaded
    // for this namespace).
    let _ = topo
        .host
        .sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "5");
    Ok(())
}

/// Runs host-local workload `w` once and returns one value per
/// [`metrics`] (fewer for `hl-seq` when its time bound cut it short).
pub fn run(
    w: Workload,
    topo: &Topology,
    hl: &HostLocal,
    load_bin: &Path,
    d: Durations,
) -> Result<Vec<f64>> {
    let lo = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), TCP_PORT);
    let addr = SocketAddr::new(topo.addrs().host, TCP_PORT);
    let secs = d.load_secs.to_string();
    match w.kind {
        Kind::Crr | Kind::Rr => {
            let mode = if w.kind == Kind::Crr { "crr" } else { "rr" };
            let mut out = Vec::new();
            for to in [lo, addr] {
                let line = client(
                    topo,
                    hl,
                    load_bin,
                    &[mode, "--secs", &secs],
                    to,
                    d.load_secs,
                )?;
                let r = parse_result(line.trim())?;
                out.push(r.rate);
                if w.kind == Kind::Rr {
                    out.push(r.p99_us);
                }
            }
            Ok(out)
        }
        _ => {
            let line = client(
                topo,
                hl,
                load_bin,
                &[
                    "seq",
                    "--count",
                    &SEQ_COUNT.to_string(),
                    "--slice",
                    &SEQ_SLICE.to_string(),
                    "--max-secs",
                    &SEQ_MAX_SECS.to_string(),
                ],
                lo,
                SEQ_MAX_SECS as f64,
            )?;
            let r = parse_result(line.trim())?;
            if r.errors > 0 {
                println!("  hl-seq: {} failed connections: {}", r.errors, line.trim());
            }
            let slices = parse_slices(&line)?;
            let p99s: Vec<f64> = slices.iter().map(|s| s.1).collect();
            let drift = match (p99s.first(), p99s.last()) {
                (Some(&first), Some(&last)) if first > 0.0 => last / first,
                _ => 0.0,
            };
            let done = slices.len() as f64 * SEQ_SLICE as f64;
            let rss = hl
                .proxies
                .iter()
                .map(|pid| rss_kib(*pid))
                .sum::<Result<u64>>()?;
            let per_port = if hl.ports == 0 {
                0.0
            } else {
                rss as f64 / hl.ports as f64
            };
            let mut out = vec![
                r.rate,
                done,
                r.errors as f64,
                drift,
                per_port,
                hl.proxies.len() as f64,
            ];
            for (p50, p99) in slices {
                out.extend([p50, p99]);
            }
            Ok(out)
        }
    }
}

/// `xtask bench-load ARGS --to TO` in the fake host, pinned, in the
/// peer's cgroup if it has one; its one result line.
fn client(
    topo: &Topology,
    hl: &HostLocal,
    load_bin: &Path,
    args: &[&str],
    to: SocketAddr,
    secs: f64,
) -> Result<String> {
    let bin = load_bin.to_string_lossy();
    let (cpu, limit, to_s) = (
        CLIENT_CPU.to_string(),
        format!("{}", secs.ceil() as u64 + 15),
        to.to_string(),
    );
    let cg = hl.cgroup.as_ref().map(|p| p.to_string_lossy().into_owned());
    let mut argv: Vec<&str> = Vec::new();
    if let Some(cg) = &cg {
        // Into the cgroup first, then exec the client: only its sockets are
        // translated.
        argv.extend([
            "sh",
            "-c",
            "echo $$ > \"$0/cgroup.procs\" && exec \"$@\"",
            cg,
        ]);
    }
    argv.extend([
        "timeout",
        "-k",
        "2",
        &limit,
        "taskset",
        "-c",
        &cpu,
        &bin,
        "bench-load",
    ]);
    argv.extend_from_slice(args);
    argv.extend(["--to", &to_s]);
    topo.host
        .exec(&argv)
        .with_context(|| format!("{} to {to}", args[0]))
}

/// `slices=p50/p99,p50/p99,...` of a `seq` line.
fn parse_slices(line: &str) -> Result<Vec<(f64, f64)>> {
    let Some(list) = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("slices="))
    else {
        bail!("bench-load seq printed no slices: {line:?}");
    };
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (a, b) = s
                .split_once('/')
                .with_context(|| format!("slice {s:?}: not p50/p99"))?;
            Ok((
                a.parse().with_context(|| format!("slice p50 {a:?}"))?,
                b.parse().with_context(|| format!("slice p99 {b:?}"))?,
            ))
        })
        .collect()
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{path}: no VmRSS"))
}

/// A cgroup v2 directory of the bench's own (`dpb-<pid>-<n>-cg`), removed
/// on drop once its clients have exited.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Result<Cgroup> {
        let path = cgroup2_mount()?.join(unique_name("cg"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Cgroup { path })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A reaped client leaves the cgroup's count a moment later.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = std::fs::remove_dir(&self.path) {
            if e.kind() == std::io::ErrorKind::NotFound {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("bench: removing {}: {e}", self.path.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` or, on a hybrid layout,
/// `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup v2 mount (the dataplane's host-local hooks need one)")
}

/// Removes empty `dpb-<pid>-...` cgroups whose bench no longer runs.
pub fn remove_stale_cgroups() {
    let Ok(mount) = cgroup2_mount() else { return };
    let Ok(rd) = std::fs::read_dir(&mount) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&format!("{PREFIX}-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: removing stale cgroup {}", e.path().display());
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// The host-local targets of issue 19, at N = 0.
pub fn targets(r: &Results) -> Vec<String> {
    let dp = "dataplane";
    let mut out = Vec::new();
    // 127.0.0.1 is where Docker runs the proxy. The host's own address
    // never reaches it: Docker's nat OUTPUT rule DNATs it in the kernel
    // (`--dst-type LOCAL ! -d 127.0.0.0/8`), so there the peer is that
    // DNAT, and the target the one the forwarded paths have against a
    // kernel NAT.
    for (m, path, want) in [
        ("hl-crr", "through docker-proxy", 3.0),
        ("hl-crr-addr", "Docker's OUTPUT DNAT", 1.2),
    ] {
        let v = r
            .median(dp, 0, m)
            .zip(r.median("docker-proxy", 0, m))
            .map(|(a, b)| a / b);
        out.push(check(
            &format!("N=0 {m} (new conn/s, host-local; {path}) >= {want}x docker-proxy peer"),
            v,
            |x| x >= want,
            &v.map(|x| format!("{x:.2}x")).unwrap_or_default(),
        ));
    }
    let done = r.median(dp, 0, "hl-seq-done");
    let errors = r.median(dp, 0, "hl-seq-errors");
    let drift = r.median(dp, 0, "hl-seq-p99-drift");
    // Every connection done, none failed, and a flat p99.
    let all_ok = done
        .zip(errors)
        .map(|(d, e)| d >= SEQ_COUNT as f64 && e == 0.0);
    let v = all_ok
        .zip(drift)
        .map(|(ok, x)| if ok { x } else { f64::INFINITY });
    out.push(check(
        "100000 sequential host-local connections, none failed, p99 of the last 10000 <= 1.2x the first",
        v,
        |x| x <= 1.2,
        &format!(
            "{} done, {} failed, drift {}",
            done.map_or("-".into(), |d| format!("{d:.0}")),
            errors.map_or("-".into(), |e| format!("{e:.0}")),
            drift.map_or("-".into(), |x| format!("{x:.2}x"))
        ),
    ));
    let v = r.median(dp, 0, "hl-procs");
    out.push(check(
        "no process (and no memory) per published port",
        v,
        |x| x == 0.0,
        &v.map(|x| format!("{x:.0} extra processes"))
            .unwrap_or_default(),
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_slices() {
        let s =
            super::parse_slices("ops=2 rate=1.0 slices=10.50/20.25,11.00/30.00").expect("slices");
        assert_eq!(s, [(10.5, 20.25), (11.0, 30.0)]);
        assert!(super::parse_slices("ops=0 rate=0").is_err());
        assert!(super::parse_slices("slices=").expect("empty").is_empty());
    }

    #[test]
    fn seq_metrics_have_a_p50_and_p99_per_slice() {
        let m = super::metrics(super::Kind::Seq);
        assert_eq!(m.len(), 6 + 20);
        assert_eq!(m[6].name, "hl-seq-s01-p50");
        assert_eq!(m[25].name, "hl-seq-s10-p99");
    }
}
