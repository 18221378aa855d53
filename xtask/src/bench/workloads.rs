//! The workloads, each bounded in time, and the servers they talk to.
//!
//! Ingress: the external client (pinned to [`CLIENT_CPU`]) to the measured
//! container's published ports on the host (or to the container itself for
//! `none`), servers pinned to [`SERVER_CPU`]. Egress: the container to a
//! server in the client namespace, through the host's masquerade. TCP
//! throughput is iperf3 (1 and 4 streams); RR, CRR and UDP are the bench's
//! own load tool ([`super::load`]).
//!
//! Every workload exists per address family: the IPv6 ones run on an IPv6
//! topology and carry a `6` in their names (`in6-crr`, `eg6-rr-p99`), so
//! the report keeps both side by side.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{bail, Context as _, Result};

use super::{
    family::Family,
    load::parse_result,
    peers::{IPERF_PORT, TCP_PORT, UDP_PORT},
    topology::{NetNs, Proc, Topology},
};

/// The machine has two cores: clients on one, servers on the other.
pub const CLIENT_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Ingress,
    Egress,
    /// A process in the host to a published port ([`super::hostlocal`]).
    Host,
    /// A container to a published port of another container on its own
    /// network, through the host's address (hairpin): the idle container
    /// is the client.
    Hairpin,
    /// A container on another network to a published port through the
    /// host's address ([`super::topology::other_net`], IPv4).
    CrossNet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp1,
    Tcp4,
    Rr,
    Crr,
    Udp,
    /// 100 000 sequential connections (host-local only).
    Seq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub dir: Dir,
    pub kind: Kind,
    pub family: Family,
}

impl Workload {
    /// The family-neutral name `--workloads` takes (`in-crr`).
    pub fn base_name(&self) -> String {
        let d = match self.dir {
            Dir::Ingress => "in",
            Dir::Egress => "eg",
            Dir::Host => "hl",
            Dir::Hairpin => "hp",
            Dir::CrossNet => "xn",
        };
        let k = match self.kind {
            Kind::Tcp1 => "tcp1",
            Kind::Tcp4 => "tcp4",
            Kind::Rr => "rr",
            Kind::Crr => "crr",
            Kind::Udp => "udp",
            Kind::Seq => "seq",
        };
        format!("{d}-{k}")
    }

    /// The name in reports: `in-crr` for IPv4, `in6-crr` for IPv6.
    pub fn name(&self) -> String {
        let base = self.base_name();
        match base.split_once('-') {
            Some((d, k)) => format!("{d}{}-{k}", self.family.suffix()),
            None => base,
        }
    }

    /// The metrics one run of this workload yields.
    pub fn metrics(&self) -> Vec<Metric> {
        if self.dir == Dir::Host {
            return super::hostlocal::metrics(self.kind);
        }
        let base = self.name();
        match self.kind {
            Kind::Tcp1 | Kind::Tcp4 => vec![Metric::new(base, "Gbit/s", true)],
            Kind::Rr => vec![
                Metric::new(base.clone(), "trans/s", true),
                Metric::new(format!("{base}-p50"), "us", false),
                Metric::new(format!("{base}-p99"), "us", false),
            ],
            Kind::Crr => vec![Metric::new(base, "conn/s", true)],
            Kind::Udp | Kind::Seq => vec![Metric::new(base, "trans/s", true)],
        }
    }
}

/// Every workload of `family`.
pub fn all(family: Family) -> Vec<Workload> {
    let mut v = Vec::new();
    for dir in [Dir::Ingress, Dir::Egress] {
        for kind in [Kind::Tcp1, Kind::Tcp4, Kind::Rr, Kind::Crr, Kind::Udp] {
            v.push(Workload { dir, kind, family });
        }
    }
    // Hairpin: new connections and request/response only (a stream
    // measures the same bridge as in-tcp1).
    for kind in [Kind::Rr, Kind::Crr] {
        v.push(Workload {
            dir: Dir::Hairpin,
            kind,
            family,
        });
    }
    // Across networks: IPv4 (the second network has no IPv6 subnet).
    if family == Family::V4 {
        for kind in [Kind::Rr, Kind::Crr] {
            v.push(Workload {
                dir: Dir::CrossNet,
                kind,
                family,
            });
        }
    }
    // Host-local: IPv4 only (the clients and the docker-proxy peer's
    // reading are written for 127.0.0.1; the dataplane has both families).
    if family == Family::V4 {
        for kind in [Kind::Crr, Kind::Rr, Kind::Seq] {
            v.push(Workload {
                dir: Dir::Host,
                kind,
                family,
            });
        }
    }
    v
}

/// A measured quantity: its name, unit and direction.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

impl Metric {
    pub fn new(name: String, unit: &'static str, higher_is_better: bool) -> Metric {
        Metric {
            name,
            unit,
            higher_is_better,
        }
    }
}

/// The servers of one topology: iperf3 and the load tool's echo server in
/// the container (ingress) and in the client namespace (egress).
pub struct Servers {
    procs: Vec<Proc>,
}

impl Servers {
    pub fn start(topo: &Topology, load_bin: &Path) -> Result<Servers> {
        Servers::start_in(&[&topo.container, &topo.client], topo.family, load_bin)
    }

    /// The same servers in each of `nss` (the overlay workloads' container).
    pub fn start_in(nss: &[&NetNs], family: Family, load_bin: &Path) -> Result<Servers> {
        let bin = load_bin.to_string_lossy();
        // `[::]` takes both families (IPv4 as mapped addresses); an IPv4
        // topology keeps the IPv4 socket it always had.
        let any = match family {
            Family::V4 => "0.0.0.0",
            Family::V6 => "[::]",
        };
        let mut procs = Vec::new();
        for ns in nss {
            procs.push(ns.spawn(
                Some(SERVER_CPU),
                &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
            )?);
            procs.push(ns.spawn(
                Some(SERVER_CPU),
                &[
                    &bin,
                    "bench-load",
                    "serve",
                    "--tcp",
                    &format!("{any}:{TCP_PORT}"),
                    "--udp",
                    &format!("{any}:{UDP_PORT}"),
                ],
            )?);
        }
        // Bounded wait until every server listens (ss inside its namespace).
        for ns in nss {
            let mut tries = 0;
            loop {
                let out = ns.exec(&["ss", "-Hltn"])?;
                if out.contains(&format!(":{IPERF_PORT}")) && out.contains(&format!(":{TCP_PORT}"))
                {
                    break;
                }
                tries += 1;
                if tries > 100 {
                    bail!("servers in {} did not listen within 5 s", ns.name());
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        for p in &mut procs {
            p.check_alive()?;
        }
        Ok(Servers { procs })
    }

    pub fn check(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.check_alive()?;
        }
        Ok(())
    }
}

/// How long each run lasts.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    /// iperf3 `-t` (whole seconds).
    pub tcp_secs: u32,
    /// The load tool's `--secs`.
    pub load_secs: f64,
}

/// Runs `w` once on `topo` and returns one value per [`Workload::metrics`].
pub fn run(
    w: Workload,
    topo: &Topology,
    ingress_addr: IpAddr,
    load_bin: &Path,
    d: Durations,
) -> Result<Vec<f64>> {
    if w.family != topo.family {
        bail!("{} needs an {} topology", w.name(), w.family.label());
    }
    let (client, dst): (&NetNs, IpAddr) = match w.dir {
        Dir::Ingress => (&topo.client, ingress_addr),
        Dir::Egress => (&topo.container, topo.addrs().client),
        // The peer's published address, as for ingress: the host's
        // address, or the container's own for `none` (the floor: straight
        // across the bridge).
        Dir::Hairpin => (&topo.idle, ingress_addr),
        Dir::CrossNet => (&topo.other, ingress_addr),
        Dir::Host => bail!(
            "{}: host-local workloads run through hostlocal::run",
            w.name()
        ),
    };
    run_kind(w.kind, &w.name(), client, dst, load_bin, d)
}

/// One run of `kind` from `client` (pinned to [`CLIENT_CPU`]) to the
/// servers at `dst`, named `name` in errors; one value per metric of the
/// kind, in [`Workload::metrics`]' order.
pub fn run_kind(
    kind: Kind,
    name: &str,
    client: &NetNs,
    dst: IpAddr,
    load_bin: &Path,
    d: Durations,
) -> Result<Vec<f64>> {
    match kind {
        Kind::Tcp1 | Kind::Tcp4 => {
            let streams = if kind == Kind::Tcp1 { "1" } else { "4" };
            let limit = (d.tcp_secs + 15).to_string();
            let out = client
                .exec_pinned(
                    CLIENT_CPU,
                    &[
                        "timeout",
                        "-k",
                        "2",
                        &limit,
                        "iperf3",
                        "-c",
                        &dst.to_string(),
                        "-p",
                        &IPERF_PORT.to_string(),
                        "-t",
                        &d.tcp_secs.to_string(),
                        "-P",
                        streams,
                        "--connect-timeout",
                        "3000",
                        "-J",
                    ],
                )
                .with_context(|| format!("{name} to {dst}"))?;
            let v: serde_json::Value =
                serde_json::from_str(&out).context("iperf3 -J printed no JSON")?;
            let bps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .with_context(|| format!("iperf3 JSON has no end.sum_received: {}", v["error"]))?;
            Ok(vec![bps / 1e9])
        }
        Kind::Rr | Kind::Crr | Kind::Udp | Kind::Seq => {
            let (mode, port) = match kind {
                Kind::Rr => ("rr", TCP_PORT),
                Kind::Crr => ("crr", TCP_PORT),
                Kind::Seq => bail!("{name}: host-local only"),
                _ => ("udp", UDP_PORT),
            };
            let bin = load_bin.to_string_lossy();
            let limit = format!("{}", d.load_secs.ceil() as u64 + 15);
            let out = client
                .exec_pinned(
                    CLIENT_CPU,
                    &[
                        "timeout",
                        "-k",
                        "2",
                        &limit,
                        &bin,
                        "bench-load",
                        mode,
                        "--to",
                        &SocketAddr::new(dst, port).to_string(),
                        "--secs",
                        &d.load_secs.to_string(),
                    ],
                )
                .with_context(|| format!("{name} to {dst}:{port}"))?;
            let r = parse_result(out.trim())?;
            if kind == Kind::Rr {
                Ok(vec![r.rate, r.p50_us, r.p99_us])
            } else {
                Ok(vec![r.rate])
            }
        }
    }
}
