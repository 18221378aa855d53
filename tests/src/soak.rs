//! The soak run (issue 18): the agent's operations in a loop — connects
//! and disconnects with published ports, ports published and withdrawn on
//! a live endpoint, filter rules added and removed, agent restarts — while
//! two long-lived TCP flows run through the datapath (one in through a
//! published port, one out through the masquerade). At the end the BPF
//! programs, maps, links and pins are back to their count after the first
//! cycle, the last agent's descriptors, netlink sockets and memory are
//! back to where they were after its own first cycle, the steady flows never
//! broke, and the counters agree with the traffic.
//!
//! `tests/tests/soak.rs` runs it for 2 minutes inside `cargo xtask test`,
//! `cargo xtask soak --minutes N` for longer.

use std::{
    collections::BTreeSet,
    fmt, fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Child,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::{
    cli::{stop_agent, Cli},
    cmd,
    netns::NetNs,
    topo::FakeHost,
    traffic::{http_get, http_server},
};

const T: Duration = Duration::from_secs(5);
/// The steady container's address (the first on the default network).
const STEADY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
/// Pause between two rounds of a steady flow.
const ROUND_GAP: Duration = Duration::from_millis(50);
/// Growth of the last agent's resident memory tolerated over a run (the
/// allocator keeps freed pages; a leak per cycle grows past it).
pub const RSS_SLACK_KIB: u64 = 8 * 1024;

/// How long, and how often the agent restarts in the first half (the
/// second half runs one agent, whose own resources are compared).
#[derive(Clone, Copy, Debug)]
pub struct SoakOptions {
    pub duration: Duration,
    pub restart_every: u32,
}

/// What the run's pins hold in the kernel, counted: pinned files, the
/// distinct maps and links behind them, the endpoint filters in the host
/// namespace (a filter holds its program without a pin), and the programs
/// those links and filters attach. (A program or link held by nothing is
/// freed by the kernel; one held by the agent alone shows in its
/// descriptors.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub pins: usize,
    pub maps: usize,
    pub links: usize,
    pub filters: usize,
    pub programs: usize,
}

/// The agent process's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentResources {
    pub fds: usize,
    pub netlink: usize,
    pub rss_kib: u64,
}

/// What a soak run did and measured.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub elapsed: Duration,
    pub cycles: u32,
    pub restarts: u32,
    pub publishes: u32,
    pub filter_changes: u32,
    pub requests: u32,
    pub steady_in_rounds: u64,
    pub steady_out_rounds: u64,
    pub steady_errors: Vec<String>,
    /// The steady flow's published port's packet counter at the end: as
    /// iptables' DNAT rule counts, the first packet of each connection, so
    /// one, however many restarts the counter lived through.
    pub published_packets: u64,
    /// Drops for reasons that mean the datapath failed (not policy).
    pub failure_drops: u64,
    pub start: Resources,
    pub end: Resources,
    pub agent_start: AgentResources,
    pub agent_end: AgentResources,
}

impl SoakReport {
    /// Everything a run must show; the first failure, with the report.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.steady_errors.is_empty(),
            "a steady flow broke: {:?}",
            self.steady_errors
        );
        ensure!(
            self.steady_in_rounds > 0 && self.steady_out_rounds > 0,
            "a steady flow never ran"
        );
        ensure!(
            self.start == self.end,
            "BPF objects or pins leaked: {:?} -> {:?}",
            self.start,
            self.end
        );
        ensure!(
            self.agent_end.fds <= self.agent_start.fds
                && self.agent_end.netlink <= self.agent_start.netlink,
            "the agent's descriptors grew: {:?} -> {:?}",
            self.agent_start,
            self.agent_end
        );
        ensure!(
            self.agent_end.rss_kib <= self.agent_start.rss_kib + RSS_SLACK_KIB,
            "the agent's memory grew by {} KiB",
            self.agent_end.rss_kib - self.agent_start.rss_kib
        );
        ensure!(
            self.published_packets == 1,
            "the steady flow's published port counted {} new connections, not its one",
            self.published_packets
        );
        ensure!(
            self.failure_drops == 0,
            "{} failure drops",
            self.failure_drops
        );
        Ok(())
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.start;
        let e = &self.end;
        let a = &self.agent_start;
        let b = &self.agent_end;
        writeln!(
            f,
            "soak: {:.0} s, {} cycles ({} connects and disconnects, {} requests, {} publish/unpublish, {} filter changes, {} agent restarts)",
            self.elapsed.as_secs_f64(),
            self.cycles,
            self.cycles,
            self.requests,
            self.publishes,
            self.filter_changes,
            self.restarts
        )?;
        writeln!(
            f,
            "steady flows: in {} rounds, out {} rounds, {} errors; published port counted {} packets; failure drops {}",
            self.steady_in_rounds,
            self.steady_out_rounds,
            self.steady_errors.len(),
            self.published_packets,
            self.failure_drops
        )?;
        writeln!(
            f,
            "pins {} -> {}, maps {} -> {}, links {} -> {}, endpoint filters {} -> {}, attached programs {} -> {}",
            s.pins, e.pins, s.maps, e.maps, s.links, e.links, s.filters, e.filters, s.programs, e.programs
        )?;
        write!(
            f,
            "last agent: fds {} -> {}, netlink sockets {} -> {}, RSS {} -> {} KiB",
            a.fds, b.fds, a.netlink, b.netlink, a.rss_kib, b.rss_kib
        )
    }
}

/// One long-lived TCP flow sending a numbered line every [`ROUND_GAP`] and
/// reading it back, until stopped.
struct Steady {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Steady {
    fn start(what: &'static str, mut conn: TcpStream) -> Result<Steady> {
        conn.set_read_timeout(Some(T))?;
        conn.set_write_timeout(Some(T))?;
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, r, e) = (stop.clone(), rounds.clone(), errors.clone());
        let thread = thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let line = format!("{what} {n:012}\n");
                let mut back = vec![0u8; line.len()];
                let result = conn
                    .write_all(line.as_bytes())
                    .and_then(|()| conn.read_exact(&mut back));
                match result {
                    Ok(()) if back == line.as_bytes() => {
                        n += 1;
                        r.store(n, Ordering::Relaxed);
                    }
                    Ok(()) => {
                        record(&e, format!("{what}: round {n} came back altered"));
                        return;
                    }
                    Err(err) => {
                        record(&e, format!("{what}: round {n}: {err}"));
                        return;
                    }
                }
                thread::sleep(ROUND_GAP);
            }
        });
        Ok(Steady {
            stop,
            rounds,
            errors,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (self.rounds.load(Ordering::Relaxed), errors)
    }
}

impl Drop for Steady {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record(errors: &Mutex<Vec<String>>, e: String) {
    errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(e);
}

/// An echo server for one connection at a time, in `ns`, until `stop`.
fn echo_server(ns: &NetNs, addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    let listener = ns
        .run_in(move || TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr} in {ns}"))?;
    listener.set_nonblocking(true)?;
    Ok(thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut conn, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        }
    }))
}

fn pinned_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            pinned_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// `bpftool -j KIND show pinned PATH`, None when the pin is of another kind.
fn show_pinned(kind: &str, path: &Path) -> Option<Value> {
    let path = path.to_str()?;
    let out = cmd::run(&["bpftool", "-j", kind, "show", "pinned", path]).ok()?;
    serde_json::from_str(&out).ok()
}

/// What the run's pins (under `pins`) hold, with the endpoint filters of
/// the namespace `host`.
pub fn resources(pins: &Path, host: &NetNs) -> Result<Resources> {
    let mut files = Vec::new();
    pinned_files(pins, &mut files);
    let (mut maps, mut links, mut programs) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for f in &files {
        if let Some(link) = show_pinned("link", f) {
            links.extend(link["id"].as_u64());
            programs.extend(link["prog_id"].as_u64());
        } else if let Some(map) = show_pinned("map", f) {
            maps.extend(map["id"].as_u64());
        }
    }
    let filters = host.run_in(dataplane_user::datapath::endpoints::endpoint_filters)??;
    programs.extend(filters.iter().map(|(_, _, f)| u64::from(f.prog_id)));
    Ok(Resources {
        pins: files.len(),
        maps: maps.len(),
        links: links.len(),
        filters: filters.len(),
        programs: programs.len(),
    })
}

/// Inodes of the netlink sockets in a `/proc/net/netlink` table.
fn netlink_inodes(table: &str) -> BTreeSet<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect()
}

/// The agent's descriptors, its netlink sockets (in the root namespace and
/// in the fake host's, where it works) and its resident memory.
pub fn agent_resources(pid: u32, host: &NetNs) -> Result<AgentResources> {
    let mut netlink = netlink_inodes(&fs::read_to_string("/proc/net/netlink")?);
    netlink.extend(netlink_inodes(&host.exec(&["cat", "/proc/net/netlink"])?));
    let mut fds = 0;
    let mut nl = 0;
    for e in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        fds += 1;
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(inode) = t
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            if netlink.contains(&inode) {
                nl += 1;
            }
        }
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok(AgentResources {
        fds,
        netlink: nl,
        rss_kib,
    })
}

/// The run's fake host, CLI and agent; the agent is restarted in place.
struct Rig {
    fh: FakeHost,
    cli: Cli,
    agent: Option<Child>,
}

impl Rig {
    fn start_agent(&mut self) -> Result<()> {
        let (agent, _) = self.cli.start_agent(&self.fh.uplink)?;
        self.agent = Some(agent);
        Ok(())
    }

    fn restart(&mut self) -> Result<()> {
        if let Some(agent) = self.agent.take() {
            let status = stop_agent(agent, libc::SIGTERM)?;
            ensure!(status.success(), "agent exit: {status}");
        }
        self.start_agent()
    }

    fn pid(&self) -> Result<u32> {
        Ok(self.agent.as_ref().context("no agent")?.id())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            let _ = stop_agent(agent, libc::SIGTERM);
        }
    }
}

/// One cycle: a container connected with a published port, a request to
/// it, a port published and withdrawn on it, a filter rule swapped, the
/// container disconnected and its namespace removed.
fn cycle(rig: &Rig, i: u32, report: &mut SoakReport, rule: &mut Option<String>) -> Result<()> {
    let c = NetNs::new("soakc")?;
    let port = 20000 + (i % 100) as u16;
    let spec = format!("{port}:80");
    rig.cli
        .run(&["connect", "bridge", c.name(), "--name", "soak", "-p", &spec])
        .with_context(|| format!("cycle {i}: connect"))?;
    let addr: Ipv4Addr = {
        let v = c.ip_json(&["-4", "addr", "show", "dev", "eth0"])?;
        v[0]["addr_info"][0]["local"]
            .as_str()
            .context("the container's address")?
            .parse()?
    };
    let _http = http_server(&c, SocketAddr::from((addr, 80)), "soak")?;
    let (status, body) = http_get(
        &rig.fh.client,
        SocketAddr::from((rig.fh.host_ip, port)),
        "/",
        T,
    )
    .with_context(|| format!("cycle {i}: GET through {port}"))?;
    ensure!(
        (status, body.as_str()) == (200, "soak"),
        "cycle {i}: {status} {body}"
    );
    report.requests += 1;
    let extra = format!("{}:81", port + 1000);
    rig.cli
        .run(&["publish", "add", "bridge", "soak", &extra])
        .with_context(|| format!("cycle {i}: publish add"))?;
    rig.cli
        .run(&["publish", "rm", "bridge", "soak", &extra])
        .with_context(|| format!("cycle {i}: publish rm"))?;
    report.publishes += 1;
    let src = format!("198.51.100.{}/32", i % 250);
    let id = rig
        .cli
        .run(&["filter", "add", "--src", &src, "--action", "drop"])
        .with_context(|| format!("cycle {i}: filter add"))?;
    let id = id.trim().to_owned();
    if let Some(old) = rule.replace(id) {
        rig.cli
            .run(&["filter", "rm", &old])
            .with_context(|| format!("cycle {i}: filter rm {old}"))?;
    }
    report.filter_changes += 1;
    rig.cli
        .run(&["disconnect", "bridge", c.name()])
        .with_context(|| format!("cycle {i}: disconnect"))?;
    report.cycles += 1;
    Ok(())
}

/// The published port's packets, from `nat ls`.
fn published_packets(cli: &Cli, host: &str) -> Result<u64> {
    let nat = cli.json(&["nat", "ls", "--format", "json"])?;
    nat["dnat"]
        .as_array()
        .context("dnat rows")?
        .iter()
        .find(|r| r["host"] == host)
        .and_then(|r| r["packets"].as_u64())
        .with_context(|| format!("no {host} in {nat}"))
}

/// Runs the soak; the report says what happened (see [`SoakReport::check`]).
pub fn run(opts: SoakOptions) -> Result<SoakReport> {
    if opts.restart_every == 0 {
        bail!("restart_every must be at least 1");
    }
    let began = Instant::now();
    let (fh, cli) = Cli::uplinked("soak", None)?;
    let mut rig = Rig {
        fh,
        cli,
        agent: None,
    };
    rig.start_agent()?;
    let steady_ns = NetNs::new("soaks")?;
    rig.cli.run(&[
        "connect",
        "bridge",
        steady_ns.name(),
        "--name",
        "steady",
        "-p",
        "8080:7000",
    ])?;
    let stop = Arc::new(AtomicBool::new(false));
    let in_server = echo_server(&steady_ns, SocketAddr::from((STEADY, 7000)), stop.clone())?;
    let out_server = echo_server(
        &rig.fh.client,
        SocketAddr::from((rig.fh.client_ip, 9000)),
        stop.clone(),
    )?;
    let published = SocketAddr::from((rig.fh.host_ip, 8080));
    let inbound = rig
        .fh
        .client
        .run_in(move || TcpStream::connect_timeout(&published, T))??;
    let outside = SocketAddr::from((rig.fh.client_ip, 9000));
    let outbound = steady_ns.run_in(move || TcpStream::connect_timeout(&outside, T))??;
    let steady_in = Steady::start("in", inbound)?;
    let steady_out = Steady::start("out", outbound)?;

    let mut report = SoakReport::default();
    let mut rule = None;
    let half = began + opts.duration / 2;
    let end = began + opts.duration;
    cycle(&rig, 0, &mut report, &mut rule)?;
    report.start = resources(rig.cli.pins.path(), &rig.fh.host)?;
    let mut agent_start = None;
    let mut i = 1;
    while Instant::now() < end {
        if Instant::now() < half && i % opts.restart_every == 0 {
            rig.restart()?;
            report.restarts += 1;
        }
        cycle(&rig, i, &mut report, &mut rule)?;
        if Instant::now() >= half && agent_start.is_none() {
            // The last agent, after one cycle of its own.
            agent_start = Some(agent_resources(rig.pid()?, &rig.fh.host)?);
        }
        i += 1;
    }
    if let Some(old) = rule.take() {
        rig.cli.run(&["filter", "rm", &old])?;
    }
    report.end = resources(rig.cli.pins.path(), &rig.fh.host)?;
    report.agent_end = agent_resources(rig.pid()?, &rig.fh.host)?;
    report.agent_start = agent_start.unwrap_or(report.agent_end);
    (report.steady_in_rounds, report.steady_errors) = steady_in.finish();
    let (out_rounds, out_errors) = steady_out.finish();
    report.steady_out_rounds = out_rounds;
    report.steady_errors.extend(out_errors);
    stop.store(true, Ordering::Relaxed);
    let _ = in_server.join();
    let _ = out_server.join();
    report.published_packets = published_packets(&rig.cli, "0.0.0.0:8080")?;
    for reason in [
        "rewrite-failed",
        "conntrack-insert-failed",
        "truncated",
        "snat-ports-exhausted",
    ] {
        report.failure_drops += rig.cli.drops(reason);
    }
    report.elapsed = began.elapsed();
    Ok(report)
}
