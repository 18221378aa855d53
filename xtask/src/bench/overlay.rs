//! The cross-host overlay workloads (`ov-crr`, `ov-rr`, `ov-tcp1`): a
//! container on fake host A to a container on fake host B across a 1500-byte
//! underlay, for two peers side by side (docs/overlay.md):
//!
//! - `dataplane`: a real etcd in its own namespace on the underlay, one agent
//!   per host (the release binary, `cluster_store`/`cluster_advertise`),
//!   `network create -d overlay` on A and one container connected on each
//!   host through the agents;
//! - `linux-vxlan`: the same hosts and underlay made by hand, flannel's way:
//!   a VXLAN device per host (VNI 4096, port 4789, MTU underlay - 50,
//!   `nolearning proxy`), a Linux bridge, a veth into the container, static
//!   forwarding entries (all-zeros and the remote container's MAC -> remote
//!   VTEP) and a permanent neighbour entry; no NAT, no BPF.
//!
//! Each peer gets its own namespaces ([`OvTopo`]); the load tool's servers
//! run in B's container, the clients in A's, through the same functions
//! as the other workloads ([`workloads::run_kind`]); rounds rotate the
//! peers' order. Everything is removed on drop, as the rest of the bench.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{
    check_interrupt,
    family::Family,
    report::{fmt_value, Results, Sample},
    topology::{unique_name, veth, NetNs, Proc},
    workloads::{self, Dir, Kind, Metric, Servers, Workload},
    Plan,
};

/// The peers of the overlay workloads, always both.
pub const PEERS: [&str; 2] = ["dataplane", "linux-vxlan"];
/// The hosts' underlay addresses (their VTEPs) and etcd's, in a /24.
const HOSTS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 79, 0, 1), Ipv4Addr::new(10, 79, 0, 2)];
const ETCD: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 10);
const UNDERLAY_MTU: u32 = 1500;
/// Outer Ethernet, IPv4, UDP and VXLAN headers.
const VXLAN_OVERHEAD: u32 = 50;
const SUBNET: &str = "10.0.9.0/24";
const NETWORK: &str = "benchov";
/// The hand-made peer's containers: the addresses and MACs the agent gives
/// the first two endpoints (02:42 and the address), the agent's first VNI.
const CONTAINERS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 9, 2), Ipv4Addr::new(10, 0, 9, 3)];
const VNI: &str = "4096";
const VXLAN_PORT: &str = "4789";
/// Bound on each wait for a process or the cluster to be ready.
const READY: Duration = Duration::from_secs(30);

/// One overlay workload: `ov-` and the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OvWorkload(pub Kind);

impl OvWorkload {
    pub const ALL: [OvWorkload; 3] = [
        OvWorkload(Kind::Tcp1),
        OvWorkload(Kind::Rr),
        OvWorkload(Kind::Crr),
    ];

    /// The same kind as an ingress workload, whose names and units are
    /// reused with `ov-` in front.
    fn base(self) -> Workload {
        Workload {
            dir: Dir::Ingress,
            kind: self.0,
            family: Family::V4,
        }
    }

    pub fn name(self) -> String {
        self.base().name().replacen("in-", "ov-", 1)
    }

    pub fn parse(name: &str) -> Option<OvWorkload> {
        OvWorkload::ALL.into_iter().find(|w| w.name() == name)
    }

    pub fn metrics(self) -> Vec<Metric> {
        self.base()
            .metrics()
            .into_iter()
            .map(|m| Metric {
                name: m.name.replacen("in-", "ov-", 1),
                ..m
            })
            .collect()
    }
}

/// Every metric of the plan's overlay workloads.
fn metrics(plan: &Plan) -> Vec<Metric> {
    plan.overlay.iter().flat_map(|w| w.metrics()).collect()
}

/// `argv` (in `ns` when given) with its stderr appended to `log`, as a
/// [`Proc`] (killed on drop, and with the bench).
fn spawn_logged(ns: Option<&NetNs>, log: &Path, argv: &[&str]) -> Result<Proc> {
    let script = format!("exec \"$0\" \"$@\" 2>>'{}' >/dev/null", log.display());
    let mut full = vec!["sh", "-c", script.as_str()];
    full.extend_from_slice(argv);
    match ns {
        Some(ns) => ns.spawn(None, &full),
        None => Proc::spawn(&full),
    }
}

/// The last lines of a log, for an error.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Polls `f` every 100 ms until it is true or [`READY`] passes.
fn wait_for(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + READY;
    loop {
        check_interrupt()?;
        let last = match f() {
            Ok(true) => return Ok(()),
            Ok(false) => String::new(),
            Err(e) => format!(": {e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what}: not within {READY:?}{last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One peer's namespaces: an underlay bridge, two hosts on it (`eth0`),
/// one container per host. Field order is drop order.
struct OvTopo {
    containers: [NetNs; 2],
    hosts: [NetNs; 2],
    underlay: NetNs,
}

impl OvTopo {
    fn new(tag: &str) -> Result<OvTopo> {
        let underlay = NetNs::new(&format!("{tag}-u"))?;
        underlay.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        underlay.exec(&["ip", "link", "set", "br0", "up"])?;
        let t = OvTopo {
            hosts: [
                NetNs::new(&format!("{tag}-a"))?,
                NetNs::new(&format!("{tag}-b"))?,
            ],
            containers: [
                NetNs::new(&format!("{tag}-ka"))?,
                NetNs::new(&format!("{tag}-kb"))?,
            ],
            underlay,
        };
        for (i, (h, ip)) in t.hosts.iter().zip(HOSTS).enumerate() {
            t.attach(h, &format!("ul{i}"), ip)?;
        }
        for k in &t.containers {
            // CRR's tens of thousands of connections a second.
            k.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
            k.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        }
        Ok(t)
    }

    /// `ns` on the underlay: its `eth0` at `ip`/24, the peer `port` a port
    /// of the bridge.
    fn attach(&self, ns: &NetNs, port: &str, ip: Ipv4Addr) -> Result<()> {
        veth(&self.underlay, port, ns, "eth0")?;
        self.underlay
            .exec(&["ip", "link", "set", port, "master", "br0"])?;
        ns.exec(&[
            "ip",
            "link",
            "set",
            "eth0",
            "mtu",
            &UNDERLAY_MTU.to_string(),
        ])?;
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        Ok(())
    }

    /// Bounded wait until container A pings `dst` (the path is programmed).
    fn wait_reachable(&self, dst: IpAddr) -> Result<()> {
        let d = dst.to_string();
        wait_for(&format!("ping from container A to {d}"), || {
            Ok(self.containers[0]
                .exec(&["ping", "-c", "1", "-W", "1", &d])
                .is_ok())
        })
    }
}

/// etcd in its own namespace on the underlay, killed and its data removed
/// on drop.
struct Etcd {
    proc: Option<Proc>,
    data: PathBuf,
    log: PathBuf,
    ns: NetNs,
}

impl Etcd {
    fn start(topo: &OvTopo) -> Result<Etcd> {
        let ns = NetNs::new("ov-etcd")?;
        topo.attach(&ns, "ul9", ETCD)?;
        let data = std::env::temp_dir().join(unique_name("etcd"));
        let mut etcd = Etcd {
            proc: None,
            log: data.with_extension("log"),
            data,
            ns,
        };
        let client = format!("http://{ETCD}:2379");
        let peer = "http://127.0.0.1:2380";
        let data = etcd.data.to_string_lossy().into_owned();
        etcd.proc = Some(spawn_logged(
            Some(&etcd.ns),
            &etcd.log,
            &[
                "etcd",
                "--name",
                "dpb",
                "--data-dir",
                &data,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                &format!("dpb={peer}"),
            ],
        )?);
        wait_for("etcd listening on 2379", || {
            if let Some(p) = etcd.proc.as_mut() {
                p.check_alive()
                    .with_context(|| format!("etcd: {}", tail(&etcd.log)))?;
            }
            Ok(etcd.ns.exec(&["ss", "-Hltn"])?.contains(":2379"))
        })?;
        Ok(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.proc = None;
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One host's agent with its own state, pins, socket and config, on the
/// cluster store: stopped, cleaned up and its files removed on drop.
struct Agent {
    bin: PathBuf,
    host: PathBuf,
    state: PathBuf,
    pins: PathBuf,
    proc: Option<Proc>,
}

impl Agent {
    fn path(&self, ext: &str) -> PathBuf {
        self.state.with_extension(ext)
    }

    fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![self.bin.to_string_lossy().into_owned()];
        for (flag, p) in [
            ("--netns", self.host.clone()),
            ("--state-dir", self.state.clone()),
            ("--bpffs-root", self.pins.clone()),
            ("--socket", self.path("sock")),
            ("--config", self.path("toml")),
        ] {
            v.push(flag.into());
            v.push(p.to_string_lossy().into_owned());
        }
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    }

    /// `dataplane ARGS` (bounded), stdout on success.
    fn cli(&self, args: &[&str]) -> Result<String> {
        let argv = self.argv(args);
        let out = Command::new("timeout")
            .args(["-k", "2", "30"])
            .args(&argv)
            .output();
        super::peers::dataplane::stdout_of(args, out)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let out = self.cli(args)?;
        serde_json::from_str(&out)
            .with_context(|| format!("dataplane {} printed no JSON: {out}", args.join(" ")))
    }

    /// Starts the agent of `host` (advertising its `eth0`) on `store`.
    fn start(root: &Path, host: &NetNs, store: &str) -> Result<Agent> {
        let bin = root.join("target/release/dataplane");
        if !bin.is_file() {
            bail!("{} not found (cargo xtask bench builds it)", bin.display());
        }
        let mut agent = Agent {
            bin,
            host: host.path(),
            state: std::env::temp_dir().join(unique_name("ovstate")),
            pins: Path::new("/sys/fs/bpf").join(unique_name("ovpins")),
            proc: None,
        };
        let config = format!(
            "cluster_store = \"{store}\"\ncluster_advertise = \"eth0\"\n\
             metrics_address = \"off\"\ndocker_socket = \"off\"\n"
        );
        let path = agent.path("toml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let argv = agent.argv(&[
            "agent",
            "--iface",
            "eth0",
            "--interval",
            "10",
            "--host-cgroup",
            "off",
        ]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        // The agent enters the host itself (--netns); its log for errors.
        let log = agent.path("log");
        agent.proc = Some(spawn_logged(None, &log, &argv)?);
        wait_for("the agent's cluster store reachable", || {
            if let Some(p) = agent.proc.as_mut() {
                p.check_alive()
                    .with_context(|| format!("agent: {}", tail(&log)))?;
            }
            if !agent.path("sock").exists() {
                return Ok(false);
            }
            let v = agent.json(&["cluster", "status", "--format", "json"])?;
            Ok(v["reachable"] == true)
        })?;
        Ok(agent)
    }

    /// The address of this host's endpoint `name` on [`NETWORK`].
    fn endpoint_ip(&self, name: &str) -> Result<IpAddr> {
        let v = self.json(&["network", "inspect", NETWORK])?;
        let found = v[0]["Containers"].as_object().and_then(|cs| {
            cs.values()
                .find(|c| c["Name"] == name)
                .and_then(|c| c["IPv4Address"].as_str())
        });
        let cidr = found.with_context(|| format!("no endpoint {name} in {v}"))?;
        let ip = cidr.split('/').next().unwrap_or(cidr);
        ip.parse()
            .with_context(|| format!("endpoint {name}: address {cidr:?}"))
    }

    /// Remote endpoints programmed on this host.
    fn programmed(&self) -> Result<u64> {
        let v = self.json(&["cluster", "status", "--format", "json"])?;
        Ok(v["programmed"].as_u64().unwrap_or(0))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The agent first (it holds the state lock), then what it made.
        self.proc = None;
        if let Err(e) = self.cli(&["cleanup"]) {
            eprintln!("bench: overlay agent cleanup: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(&self.pins);
        for ext in ["sock", "toml", "log"] {
            let _ = std::fs::remove_file(self.path(ext));
        }
    }
}

/// One peer, ready to measure. Field order is drop order: servers, agents
/// (which clean up through the store), etcd, then the namespaces.
struct OvInstance {
    peer: &'static str,
    /// Container B's overlay address.
    dst: IpAddr,
    servers: Servers,
    _agents: Vec<Agent>,
    _etcd: Option<Etcd>,
    topo: OvTopo,
}

/// The `dataplane` peer: etcd, two agents, the network, two endpoints.
fn build_dataplane(root: &Path, load_bin: &Path) -> Result<OvInstance> {
    let topo = OvTopo::new("ovdp")?;
    let etcd = Etcd::start(&topo)?;
    let store = format!("etcd://{ETCD}:2379");
    let agents = vec![
        Agent::start(root, &topo.hosts[0], &store)?,
        Agent::start(root, &topo.hosts[1], &store)?,
    ];
    agents[0].cli(&[
        "network", "create", "-d", "overlay", "--subnet", SUBNET, NETWORK,
    ])?;
    wait_for("the overlay network listed on host B", || {
        let v = agents[1].json(&["network", "ls", "--format", "json"])?;
        Ok(v.as_array()
            .is_some_and(|ns| ns.iter().any(|n| n["Name"] == NETWORK)))
    })?;
    for (agent, (k, name)) in agents.iter().zip(topo.containers.iter().zip(["ka", "kb"])) {
        let path = k.path().to_string_lossy().into_owned();
        agent.cli(&["connect", NETWORK, &path, "--name", name])?;
    }
    let dst = agents[1].endpoint_ip("kb")?;
    for (agent, h) in agents.iter().zip(["A", "B"]) {
        wait_for(
            &format!("host {h} programming the other's endpoint"),
            || Ok(agent.programmed()? >= 1),
        )?;
    }
    topo.wait_reachable(dst)?;
    let servers = Servers::start_in(&[&topo.containers[1]], Family::V4, load_bin)?;
    Ok(OvInstance {
        peer: PEERS[0],
        dst,
        servers,
        _agents: agents,
        _etcd: Some(etcd),
        topo,
    })
}

fn mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The `linux-vxlan` peer, by hand (see the module's documentation).
fn build_vxlan(load_bin: &Path) -> Result<OvInstance> {
    let topo = OvTopo::new("ovvx")?;
    let mtu = (UNDERLAY_MTU - VXLAN_OVERHEAD).to_string();
    for i in 0..2 {
        let (h, k) = (&topo.hosts[i], &topo.containers[i]);
        let (local, remote) = (HOSTS[i].to_string(), HOSTS[1 - i].to_string());
        let (rip, rmac) = (CONTAINERS[1 - i].to_string(), mac(CONTAINERS[1 - i]));
        let own = mac(CONTAINERS[i]);
        let addr = format!("{}/24", CONTAINERS[i]);
        #[rustfmt::skip]
        let host: [&[&str]; 7] = [
            &["ip", "link", "add", "br0", "mtu", &mtu, "type", "bridge"],
            &["ip", "link", "add", "vx0", "mtu", &mtu, "type", "vxlan", "id", VNI,
              "dstport", VXLAN_PORT, "local", &local, "nolearning", "proxy"],
            &["ip", "link", "set", "vx0", "master", "br0", "up"],
            &["ip", "link", "set", "br0", "up"],
            &["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0",
              "dst", &remote, "self", "permanent"],
            &["bridge", "fdb", "append", &rmac, "dev", "vx0", "dst", &remote,
              "self", "permanent"],
            &["ip", "neigh", "replace", &rip, "lladdr", &rmac, "dev", "vx0",
              "nud", "permanent"],
        ];
        for step in host {
            h.exec(step)?;
        }
        veth(h, "vk0", k, "eth0")?;
        h.exec(&["ip", "link", "set", "vk0", "mtu", &mtu, "master", "br0"])?;
        k.exec(&["ip", "link", "set", "eth0", "mtu", &mtu, "address", &own])?;
        k.exec(&["ip", "addr", "add", &addr, "dev", "eth0"])?;
    }
    let dst = IpAddr::V4(CONTAINERS[1]);
    topo.wait_reachable(dst)?;
    let servers = Servers::start_in(&[&topo.containers[1]], Family::V4, load_bin)?;
    Ok(OvInstance {
        peer: PEERS[1],
        dst,
        servers,
        _agents: Vec::new(),
        _etcd: None,
        topo,
    })
}

/// One run, retried once as the other workloads are.
fn run_one(inst: &mut OvInstance, w: OvWorkload, load_bin: &Path, plan: &Plan) -> Result<Vec<f64>> {
    inst.servers.check()?;
    let client = &inst.topo.containers[0];
    let name = w.name();
    let once = || workloads::run_kind(w.0, &name, client, inst.dst, load_bin, plan.durations);
    once().or_else(|first| {
        eprintln!(
            "bench: {name} on {} failed once, retrying: {first:#}",
            inst.peer
        );
        std::thread::sleep(Duration::from_millis(500));
        check_interrupt()?;
        once()
    })
}

/// Builds both peers and runs the plan's overlay workloads on them, round
/// after round, the peers' order rotating; samples at N = 0.
pub fn measure(root: &Path, load_bin: &Path, plan: &Plan, results: &mut Results) -> Result<()> {
    println!(
        "bench: cross-host overlay: building {}",
        PEERS.join(" and ")
    );
    let mut insts = Vec::new();
    for peer in PEERS {
        check_interrupt()?;
        let t = Instant::now();
        let inst = if peer == PEERS[0] {
            build_dataplane(root, load_bin)
        } else {
            build_vxlan(load_bin)
        }
        .with_context(|| format!("setting up the overlay peer {peer}"))?;
        println!(
            "  {peer:<16} ready in {:>7.0} ms (container B at {})",
            t.elapsed().as_secs_f64() * 1e3,
            inst.dst
        );
        insts.push(inst);
    }
    for round in 0..plan.rounds {
        for &w in &plan.overlay {
            let count = insts.len();
            for i in 0..count {
                check_interrupt()?;
                let inst = &mut insts[(i + round) % count];
                let values = run_one(inst, w, load_bin, plan).with_context(|| {
                    format!("{} on {}, round {}", w.name(), inst.peer, round + 1)
                })?;
                for (m, v) in w.metrics().into_iter().zip(values) {
                    results.samples.push(Sample {
                        peer: inst.peer.to_owned(),
                        n: 0,
                        metric: m.name,
                        value: v,
                    });
                }
            }
        }
        println!("  overlay round {}/{} done", round + 1, plan.rounds);
    }
    Ok(())
}

/// Medians of one metric for both peers and their ratio.
fn row(r: &Results, m: &Metric) -> Option<(f64, f64, Option<f64>)> {
    let dp = r.stat(PEERS[0], 0, &m.name)?.median;
    let vx = r.stat(PEERS[1], 0, &m.name)?.median;
    Some((dp, vx, (vx != 0.0).then(|| dp / vx)))
}

/// The report's "Cross-host overlay" section (empty when none ran).
pub fn markdown(r: &Results) -> String {
    let ms = metrics(&r.plan);
    if !ms.iter().any(|m| r.stat(PEERS[0], 0, &m.name).is_some()) {
        return String::new();
    }
    let mut s = format!(
        "### Cross-host overlay\n\n\
         Container on host A to container on host B over a {UNDERLAY_MTU}-byte underlay \
         (inner MTU {}): `dataplane` (etcd, an agent per host, `network create -d overlay`) \
         against `linux-vxlan` (a VXLAN device, bridge and static FDB and neighbour entries \
         by hand). Medians over {} rounds, min-max in brackets.\n\n\
         | metric | unit | dataplane | linux-vxlan | dataplane / linux-vxlan |\n\
         |---|---|---|---|---|\n",
        UNDERLAY_MTU - VXLAN_OVERHEAD,
        r.plan.rounds
    );
    for m in &ms {
        let cell = |peer: &str| match r.stat(peer, 0, &m.name) {
            Some(st) => format!(
                "{} ({}-{})",
                fmt_value(st.median),
                fmt_value(st.min),
                fmt_value(st.max)
            ),
            None => "-".into(),
        };
        let ratio = row(r, m)
            .and_then(|(_, _, q)| q)
            .map_or("-".into(), |q| format!("{q:.2}x"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {ratio} |",
            m.name,
            m.unit,
            cell(PEERS[0]),
            cell(PEERS[1])
        );
    }
    s.push('\n');
    s
}

/// The overlay medians and ratios for results.json.
pub fn json(r: &Results) -> Value {
    let rows: Vec<Value> = metrics(&r.plan)
        .iter()
        .filter_map(|m| {
            let (dp, vx, q) = row(r, m)?;
            Some(serde_json::json!({"metric": m.name, "unit": m.unit,
                "dataplane": dp, "linux-vxlan": vx, "ratio": q}))
        })
        .collect();
    Value::Array(rows)
}

#[cfg(test)]
mod tests {
    use super::{markdown, OvWorkload, PEERS};
    use crate::bench::{
        family::Family,
        report::{Results, Sample},
        workloads::{Durations, Kind},
        Plan,
    };

    #[test]
    fn names_and_metrics_are_the_ingress_ones_with_ov() {
        let names: Vec<String> = OvWorkload::ALL.iter().map(|w| w.name()).collect();
        assert_eq!(names, ["ov-tcp1", "ov-rr", "ov-crr"]);
        assert_eq!(OvWorkload::parse("ov-rr"), Some(OvWorkload(Kind::Rr)));
        assert_eq!(OvWorkload::parse("in-rr"), None);
        let rr: Vec<String> = OvWorkload(Kind::Rr)
            .metrics()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(rr, ["ov-rr", "ov-rr-p50", "ov-rr-p99"]);
    }

    #[test]
    fn the_section_has_medians_and_the_ratio() {
        let plan = Plan {
            families: vec![Family::V4],
            peers: Vec::new(),
            workloads: Vec::new(),
            overlay: vec![OvWorkload(Kind::Crr)],
            ct1m: false,
            ns: vec![0],
            rounds: 2,
            durations: Durations {
                tcp_secs: 1,
                load_secs: 0.5,
            },
            connects: 0,
            quick: false,
        };
        let mut r = Results::new(plan);
        assert_eq!(markdown(&r), "");
        for (peer, v) in [(PEERS[0], 900.0), (PEERS[0], 1100.0), (PEERS[1], 2000.0)] {
            r.samples.push(Sample {
                peer: peer.into(),
                n: 0,
                metric: "ov-crr".into(),
                value: v,
            });
        }
        let md = markdown(&r);
        assert!(
            md.contains("| ov-crr | conn/s | 1000 (900.0-1100) | 2000 (2000-2000) | 0.50x |"),
            "{md}"
        );
    }
}
