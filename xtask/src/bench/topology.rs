//! The bench's own namespaces and the fake host topology every peer runs on:
//! an external client -> uplink -> host -> bridge -> container (and the
//! container back out through the host for egress), the same shape as the
//! tests' `FakeHost` (tests/src/topo.rs), built from scratch for each peer
//! so no peer sees another's rules.
//!
//! Everything is RAII: a [`NetNs`] is deleted on drop (also on panic, and on
//! Ctrl-C because the bench returns an error that unwinds normally), a
//! [`Proc`] is killed on drop and dies with the bench anyway (PDEATHSIG).
//! Names are `dpb-<pid>-<n>-<tag>`; a later run deletes those of a pid that
//! no longer lives ([`remove_stale`]), so even a SIGKILLed bench leaves
//! nothing behind for long. Nothing here touches the root namespace: links
//! are created inside a namespace with their peer placed straight into
//! another, and sysctls are set through `nsenter` inside ours.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::family::{Addrs, Family};

/// Prefix of every namespace, bpffs directory and state directory the bench
/// makes (the tests use `dpt`, so neither mistakes the other's for a leak).
pub const PREFIX: &str = "dpb";

/// Device names inside our namespaces (names are per namespace, and none of
/// these is ever in the root namespace).
pub const UPLINK: &str = "up0";
pub const BRIDGE: &str = "br0";
pub const INNER_DEV: &str = "eth0";

/// The second network of the cross-network workloads (`xn-`, IPv4 only):
/// a bridge of its own with one container, [`Topology::other`], which
/// reaches the measured container's published port through the host's
/// address, as a container of another Docker network does.
pub mod other_net {
    use std::net::{IpAddr, Ipv4Addr};

    pub const BRIDGE: &str = "br1";
    pub const SUBNET: &str = "172.19.0.0/16";
    pub const SUBNET_LEN: u8 = 16;
    pub const GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 19, 0, 1));
    pub const CONTAINER: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 19, 0, 2));
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `dpb-<pid>-<n>-<tag>`, unique on this machine while this process lives.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}-{}-{n}-{tag}", std::process::id())
}

/// Runs argv; stdout on success, an error with status and stderr otherwise.
pub fn run(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}`: {}: {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs argv and returns how long it took (the process start included: that
/// is what a user or a daemon calling the tool pays).
pub fn timed(argv: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    run(argv)?;
    Ok(t.elapsed())
}

/// Like [`run`] with `input` on stdin.
pub fn run_stdin(argv: &[&str], input: &[u8]) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    // Written from a thread so a child that answers before reading all of
    // its input cannot deadlock us.
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("waiting")?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "`{}`: {}: {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace of ours, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `dpb-...-<tag>` with lo up and IPv6 off (no router
    /// solicitations or DAD traffic in the measurements).
    pub fn new(tag: &str) -> Result<NetNs> {
        let name = unique_name(tag);
        run(&["ip", "netns", "add", &name])?;
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        if Path::new("/proc/sys/net/ipv6").exists() {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `nsenter --net=<ns> -- argv...` (not `ip netns exec`, which remounts
    /// /sys and would hide bpffs from the dataplane).
    pub fn argv<'a>(&self, net_arg: &'a str, argv: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["nsenter", net_arg, "--"];
        full.extend_from_slice(argv);
        full
    }

    pub fn net_arg(&self) -> String {
        format!("--net={}", self.path().display())
    }

    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let net = self.net_arg();
        run(&self.argv(&net, argv)).with_context(|| format!("in {}", self.name))
    }

    pub fn exec_stdin(&self, argv: &[&str], input: &[u8]) -> Result<String> {
        let net = self.net_arg();
        run_stdin(&self.argv(&net, argv), input).with_context(|| format!("in {}", self.name))
    }

    pub fn timed(&self, argv: &[&str]) -> Result<Duration> {
        let net = self.net_arg();
        timed(&self.argv(&net, argv)).with_context(|| format!("in {}", self.name))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Starts a long-running process inside the namespace, pinned to `cpu`.
    pub fn spawn(&self, cpu: Option<usize>, argv: &[&str]) -> Result<Proc> {
        let net = self.net_arg();
        let cpu_s = cpu.map(|c| c.to_string());
        let mut full = vec!["nsenter", net.as_str(), "--"];
        if let Some(c) = &cpu_s {
            full.extend(["taskset", "-c", c.as_str()]);
        }
        full.extend_from_slice(argv);
        Proc::spawn(&full)
    }

    /// Runs argv inside the namespace pinned to `cpu` and returns stdout.
    pub fn exec_pinned(&self, cpu: usize, argv: &[&str]) -> Result<String> {
        let c = cpu.to_string();
        let mut full = vec!["taskset", "-c", c.as_str()];
        full.extend_from_slice(argv);
        self.exec(&full)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            eprintln!(
                "bench: cannot delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// A child process killed (and reaped) on drop, and by the kernel when the
/// bench itself dies (PDEATHSIG).
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    pub fn spawn(argv: &[&str]) -> Result<Proc> {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and affects only the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        Ok(Proc {
            child,
            what: argv.join(" "),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (a server that could not
    /// bind, say).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.what);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes namespaces, bpffs directories and state directories named
/// `dpb-<pid>-...` whose pid no longer runs: what a SIGKILLed bench left.
pub fn remove_stale() {
    let stale = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            return false;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            return false;
        };
        pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    let list = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| stale(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in list(Path::new("/run/netns")) {
        eprintln!("bench: removing stale namespace {name}");
        let _ = run(&["ip", "netns", "del", &name]);
    }
    for dir in [Path::new("/sys/fs/bpf").to_owned(), std::env::temp_dir()] {
        for name in list(&dir) {
            eprintln!("bench: removing stale {}", dir.join(&name).display());
            let _ = std::fs::remove_dir_all(dir.join(&name));
            let _ = std::fs::remove_file(dir.join(&name));
        }
    }
}

/// Creates a veth pair `a_dev` (in `a`) <-> `b_dev` (in `b`), both up.
pub fn veth(a: &NetNs, a_dev: &str, b: &NetNs, b_dev: &str) -> Result<()> {
    a.exec(&[
        "ip",
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])?;
    a.exec(&["ip", "link", "set", a_dev, "up"])?;
    b.exec(&["ip", "link", "set", b_dev, "up"])?;
    Ok(())
}

/// One peer's world: fake host, external client, the measured container and
/// an idle one (the target of the extra mappings). Built by [`Topology::new`]
/// up to the host; the bridge and containers are wired by
/// [`Topology::wire_bridge`] (every peer but `dataplane`, which wires them
/// itself through `dataplane connect`). An IPv6 topology is dual-stack (the
/// IPv4 addresses too, as a Docker network with IPv6 is), with IPv6 turned
/// on only on the devices that carry it and addresses added without DAD.
pub struct Topology {
    pub family: Family,
    pub host: NetNs,
    pub client: NetNs,
    pub container: NetNs,
    pub idle: NetNs,
    /// The container on the second network ([`other_net`]).
    pub other: NetNs,
}

/// The IPv4 addresses every topology has.
fn v4() -> &'static Addrs {
    Family::V4.addrs()
}

/// Turns IPv6 on for `dev` in `ns` (our namespaces start with it off) and
/// adds `addr/len` without duplicate address detection, so it is usable at
/// once. DAD is off for the device's link-local address too: while that
/// is tentative the kernel sends no neighbour solicitation, so the first
/// forwarded packets to a new neighbour waited a retransmit interval (1 s)
/// and a workload run started within a second of the topology lost them.
fn add6(ns: &NetNs, dev: &str, addr: IpAddr, len: u8) -> Result<()> {
    ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0")?;
    ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0")?;
    ns.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{addr}/{len}"),
        "dev",
        dev,
        "nodad",
    ])?;
    Ok(())
}

impl Topology {
    pub fn new(tag: &str, family: Family) -> Result<Topology> {
        let t = Topology {
            family,
            host: NetNs::new(&format!("{tag}-h"))?,
            client: NetNs::new(&format!("{tag}-c"))?,
            container: NetNs::new(&format!("{tag}-k"))?,
            idle: NetNs::new(&format!("{tag}-i"))?,
            other: NetNs::new(&format!("{tag}-o"))?,
        };
        veth(&t.host, UPLINK, &t.client, INNER_DEV)?;
        let a = v4();
        t.host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/{}", a.host, a.uplink_len),
            "dev",
            UPLINK,
        ])?;
        t.client.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/{}", a.client, a.uplink_len),
            "dev",
            INNER_DEV,
        ])?;
        t.host.sysctl("net.ipv4.ip_forward", "1")?;
        if family == Family::V6 {
            let a6 = Family::V6.addrs();
            add6(&t.host, UPLINK, a6.host, a6.uplink_len)?;
            add6(&t.client, INNER_DEV, a6.client, a6.uplink_len)?;
            t.host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        // The CRR workload opens tens of thousands of connections a second:
        // let the client reuse ports (its namespace's own sysctls, which
        // cover TCP over IPv6 too).
        t.client
            .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        t.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        t.container
            .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        t.container.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        // The idle container is the hairpin workloads' client, the other
        // network's the cross-network workloads'.
        for ns in [&t.idle, &t.other] {
            ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        }
        Ok(t)
    }

    /// The addresses of this topology's family.
    pub fn addrs(&self) -> &'static Addrs {
        self.family.addrs()
    }

    /// A Linux bridge `br0` with the gateway address, and both containers on
    /// it through veth pairs, default route via the gateway: what Docker's
    /// bridge driver builds.
    pub fn wire_bridge(&self) -> Result<()> {
        let a = v4();
        self.host
            .exec(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        self.host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/{}", a.gateway, a.subnet_len),
            "dev",
            BRIDGE,
        ])?;
        self.host.exec(&["ip", "link", "set", BRIDGE, "up"])?;
        let a6 = Family::V6.addrs();
        let v6 = self.family == Family::V6;
        if v6 {
            add6(&self.host, BRIDGE, a6.gateway, a6.subnet_len)?;
        }
        for (ns, dev, ip, ip6) in [
            (&self.container, "vk0", a.container, a6.container),
            (&self.idle, "vi0", a.idle, a6.idle),
        ] {
            veth(&self.host, dev, ns, INNER_DEV)?;
            self.host
                .exec(&["ip", "link", "set", dev, "master", BRIDGE])?;
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{ip}/{}", a.subnet_len),
                "dev",
                INNER_DEV,
            ])?;
            ns.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &a.gateway.to_string(),
            ])?;
            if v6 {
                add6(ns, INNER_DEV, ip6, a6.subnet_len)?;
                ns.exec(&[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &a6.gateway.to_string(),
                ])?;
            }
        }
        Ok(())
    }

    /// The second network by hand, as Docker's bridge driver builds one:
    /// bridge `br1` with its gateway, the `other` container on it, default
    /// route via the gateway (IPv4).
    pub fn wire_other_bridge(&self) -> Result<()> {
        let (br, gw) = (other_net::BRIDGE, other_net::GATEWAY);
        self.host
            .exec(&["ip", "link", "add", br, "type", "bridge"])?;
        self.host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{gw}/{}", other_net::SUBNET_LEN),
            "dev",
            br,
        ])?;
        self.host.exec(&["ip", "link", "set", br, "up"])?;
        veth(&self.host, "vo0", &self.other, INNER_DEV)?;
        self.host
            .exec(&["ip", "link", "set", "vo0", "master", br])?;
        self.other.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/{}", other_net::CONTAINER, other_net::SUBNET_LEN),
            "dev",
            INNER_DEV,
        ])?;
        self.other
            .exec(&["ip", "route", "add", "default", "via", &gw.to_string()])?;
        Ok(())
    }

    /// Lets the client reach the bridge subnet directly (the `none` peer).
    pub fn client_route_to_subnet(&self) -> Result<()> {
        let a = self.addrs();
        self.client
            .exec(&["ip", "route", "add", a.subnet, "via", &a.host.to_string()])?;
        Ok(())
    }
}
