//! The control plane: the time to connect one endpoint (veth pair, netns,
//! addresses, routes, programs or rules, one published port), median and
//! p99 over K endpoints, for the dataplane (`dataplane connect` with the
//! agent running) beside netavark's `setup` (Debian `netavark`) and the CNI
//! `bridge` + `portmap` plugins (Debian `containernetworking-plugins`), each
//! run inside a fresh fake host of its own so their rules and sysctls land
//! there. A tool that cannot run here is reported with the reason. Then a
//! crowded host: one endpoint with 32 published ports connected among
//! 1 000 existing ones (moby#53466: Docker 29 with nftables takes seconds).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use super::{
    check_interrupt,
    family::Family,
    peers::dataplane::Dataplane,
    report::{ControlResult, CROWD, CROWDED_PORTS, CROWDED_TOOL},
    topology::{unique_name, NetNs, Topology},
};

const NETAVARK: &str = "/usr/lib/podman/netavark";
const CNI_DIR: &str = "/usr/lib/cni";
/// The control plane is measured on IPv4 (what the other tools set up).
const SUBNET: &str = Family::V4.addrs().subnet;
const GATEWAY: std::net::IpAddr = Family::V4.addrs().gateway;
/// First host port the connected endpoints publish.
const PORT_BASE: u16 = 30000;
/// Endpoints with [`CROWDED_PORTS`] ports connected (and timed) among them.
const CROWDED_SAMPLES: usize = 5;

/// `crowded`: the 32 ports among 1 000 endpoints too (about 45 s: left
/// out of `--quick`, which stays under 5 minutes).
pub fn measure(root: &Path, count: usize, crowded: bool) -> Result<Vec<ControlResult>> {
    println!("bench: control plane, {count} endpoints per tool");
    let mut out = Vec::new();
    out.push(outcome(
        "dataplane",
        "one `connect` request on the agent's API socket with one `-p PORT:80` (what an engine's driver sends)",
        dataplane(root, count, Via::Api),
    ));
    check_interrupt()?;
    out.push(outcome(
        "dataplane (CLI)",
        "`dataplane connect NET NETNS -p PORT:80` (the CLI's process start included)",
        dataplane(root, count, Via::Cli),
    ));
    check_interrupt()?;
    out.push(outcome(
        "netavark",
        "`netavark setup` (bridge, iptables driver, one port mapping, DNS off)",
        netavark(count),
    ));
    check_interrupt()?;
    out.push(outcome(
        "cni bridge+portmap",
        "`bridge` (host-local IPAM, ipMasq) then `portmap`, one port mapping",
        cni(count),
    ));
    if crowded {
        check_interrupt()?;
        out.push(outcome(
        CROWDED_TOOL,
        "one `connect` request with 32 `-p PORT:PORT` on the agent's API socket, 1 000 endpoints (one port each) connected before; 5 such endpoints",
        self::crowded(root),
    ));
    }
    for c in &out {
        match &c.outcome {
            Ok((med, p99, n)) => println!(
                "  {:<20} median {:>7.2} ms  p99 {:>7.2} ms  ({n})",
                c.tool,
                med.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            ),
            Err(e) => println!("  {:<20} did not run: {e}", c.tool),
        }
    }
    Ok(out)
}

fn outcome(tool: &str, note: &str, r: Result<Vec<Duration>>) -> ControlResult {
    ControlResult {
        tool: tool.into(),
        outcome: r
            .and_then(|mut v| {
                if v.is_empty() {
                    bail!("no endpoint connected");
                }
                v.sort();
                let p99 = v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1];
                Ok((v[v.len() / 2], p99, v.len()))
            })
            .map_err(|e| format!("{e:#}")),
        note: note.into(),
    }
}

/// How the dataplane's connects are sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Api,
    Cli,
}

fn dataplane(root: &Path, count: usize, via: Via) -> Result<Vec<Duration>> {
    let topo = Topology::new("cpdp", Family::V4)?;
    let mut dp = Dataplane::new(root)?;
    dp.prepare_network(&topo)?;
    dp.start_agent()?;
    let mut nss = Vec::new();
    let mut times = Vec::new();
    for i in 0..count {
        check_interrupt()?;
        let ns = NetNs::new("cpdp")?;
        let port = format!("{}:80", PORT_BASE + i as u16);
        let netns = ns.path().to_string_lossy().into_owned();
        let t = Instant::now();
        match via {
            Via::Api => {
                dp.api(&json!({"op": "connect", "args": {
                    "network": "benchnet", "netns": netns, "publish": [port],
                }}))?;
            }
            Via::Cli => {
                dp.cli(&["connect", "benchnet", &netns, "-p", &port])?;
            }
        }
        times.push(t.elapsed());
        nss.push(ns);
    }
    // The dataplane cleans up before its namespaces go.
    drop(dp);
    drop(nss);
    Ok(times)
}

/// [`CROWDED_SAMPLES`] connects of an endpoint with [`CROWDED_PORTS`]
/// published ports each, on an agent already holding [`CROWD`] endpoints
/// (connected through the API, untimed).
fn crowded(root: &Path) -> Result<Vec<Duration>> {
    let topo = Topology::new("cpcr", Family::V4)?;
    let mut dp = Dataplane::new(root)?;
    dp.prepare_network(&topo)?;
    dp.start_agent()?;
    let mut nss = Vec::new();
    let started = Instant::now();
    for i in 0..CROWD {
        check_interrupt()?;
        let ns = NetNs::new("cpcr")?;
        let netns = ns.path().to_string_lossy().into_owned();
        dp.api(&json!({"op": "connect", "args": {
            "network": "benchnet", "netns": netns, "publish": [format!("{}:80", PORT_BASE + i as u16)],
        }}))?;
        nss.push(ns);
    }
    println!(
        "  {CROWD} endpoints connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for s in 0..CROWDED_SAMPLES {
        check_interrupt()?;
        let ns = NetNs::new("cpcr")?;
        let netns = ns.path().to_string_lossy().into_owned();
        let first = 40000 + (s * CROWDED_PORTS) as u16;
        let publish: Vec<String> = (first..first + CROWDED_PORTS as u16)
            .map(|p| format!("{p}:{p}"))
            .collect();
        let request = json!({"op": "connect", "args": {
            "network": "benchnet", "netns": netns, "publish": publish,
        }});
        let t = Instant::now();
        dp.api(&request)?;
        times.push(t.elapsed());
        nss.push(ns);
    }
    // The dataplane cleans up before its namespaces go.
    drop(dp);
    drop(nss);
    Ok(times)
}

/// 64 hex characters, as podman's ids are.
fn hex_id(i: usize) -> String {
    format!("{:064x}", 0xbe7c_0000_u64 + i as u64)
}

fn netavark(count: usize) -> Result<Vec<Duration>> {
    if !Path::new(NETAVARK).is_file() {
        bail!("{NETAVARK} not installed (Debian package netavark)");
    }
    let topo = Topology::new("cpnv", Family::V4)?;
    let dir = TempDir::new("netavark")?;
    let mut nss = Vec::new();
    let mut times = Vec::new();
    for i in 0..count {
        check_interrupt()?;
        let ns = NetNs::new("cpnv")?;
        let std::net::IpAddr::V4(gateway) = GATEWAY else {
            bail!("the control-plane measurement runs on IPv4");
        };
        let ip = std::net::Ipv4Addr::from(u32::from(gateway) + 1 + i as u32);
        let config = json!({
            "container_id": hex_id(i),
            "container_name": format!("c{i}"),
            "port_mappings": [{"host_ip": "", "container_port": 80, "host_port": PORT_BASE + i as u16, "range": 1, "protocol": "tcp"}],
            "networks": {"bench": {"static_ips": [ip.to_string()], "interface_name": "eth0"}},
            "network_info": {"bench": {
                "name": "bench", "id": hex_id(99_999), "driver": "bridge",
                "network_interface": "nvbr0",
                "subnets": [{"subnet": SUBNET, "gateway": GATEWAY.to_string()}],
                "ipv6_enabled": false, "internal": false, "dns_enabled": false,
            }},
        });
        let file = dir.path.join(format!("c{i}.json"));
        std::fs::write(&file, config.to_string())?;
        let config_dir = dir.path.to_string_lossy().into_owned();
        let file = file.to_string_lossy().into_owned();
        let netns = ns.path().to_string_lossy().into_owned();
        let t = Instant::now();
        topo.host.exec(&[
            NETAVARK,
            "--config",
            &config_dir,
            "-f",
            &file,
            "setup",
            &netns,
        ])?;
        times.push(t.elapsed());
        nss.push(ns);
    }
    Ok(times)
}

fn cni(count: usize) -> Result<Vec<Duration>> {
    for plugin in ["bridge", "portmap", "host-local"] {
        if !Path::new(CNI_DIR).join(plugin).is_file() {
            bail!("{CNI_DIR}/{plugin} not installed (Debian package containernetworking-plugins)");
        }
    }
    let topo = Topology::new("cpcni", Family::V4)?;
    let dir = TempDir::new("cni")?;
    let mut nss = Vec::new();
    let mut times = Vec::new();
    for i in 0..count {
        check_interrupt()?;
        let ns = NetNs::new("cpcni")?;
        let bridge = json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cnibr0",
            "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "dataDir": dir.path.join("ipam"),
                     "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY.to_string()}]]},
        });
        let id = hex_id(i);
        let t = Instant::now();
        let result = cni_call(&topo.host, "bridge", &id, &ns, &bridge.to_string())?;
        let prev: serde_json::Value =
            serde_json::from_str(&result).context("the bridge plugin's result")?;
        let portmap = json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [{"hostPort": PORT_BASE + i as u16, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": prev,
        });
        cni_call(&topo.host, "portmap", &id, &ns, &portmap.to_string())?;
        times.push(t.elapsed());
        nss.push(ns);
    }
    Ok(times)
}

/// One CNI ADD of `plugin` run inside `host`, the config on stdin.
fn cni_call(host: &NetNs, plugin: &str, id: &str, ns: &NetNs, config: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("nsenter")
        .arg(host.net_arg())
        .arg("--")
        .arg(Path::new(CNI_DIR).join(plugin))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the CNI {plugin} plugin"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(config.as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "CNI {plugin} ADD: {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// A directory of ours under the temp dir, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(tag: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
