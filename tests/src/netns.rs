//! Network namespaces owned by a test: creation, removal on drop (also on
//! panic), running commands and Rust closures inside them, and the small
//! link/address/route/sysctl/offload helpers every topology needs.
//!
//! Commands go through `nsenter --net=/run/netns/NAME` rather than
//! `ip netns exec`, because the latter remounts /sys and would hide bpffs.

use std::{
    fmt,
    fs::File,
    io,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{cmd, unique_name};

/// Where `ip netns add` puts the namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace, deleted (`ip netns del`) when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// Creates `dpt-<runid>-<n>-<tag>` with `lo` up and IPv6 disabled.
    ///
    /// IPv6 is off because a fresh link sends router solicitations, DAD and
    /// MLD packets at unpredictable times, which would make exact packet
    /// counts in dataplane tests flaky. A test that wants IPv6 sets
    /// `net.ipv6.conf.{all,default}.disable_ipv6=0` with [`NetNs::sysctl`]
    /// before creating links.
    pub fn new(tag: &str) -> Result<NetNs> {
        let name = unique_name(tag);
        cmd::run(&["ip", "netns", "add", &name])
            .with_context(|| format!("cannot create network namespace {name}"))?;
        // Built before the next fallible step so a failure still deletes it.
        let ns = NetNs {
            path: Path::new(NETNS_DIR).join(&name),
            name,
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])
            .with_context(|| format!("cannot bring lo up in {ns}"))?;
        // A kernel without IPv6 has nothing to silence.
        if Path::new("/proc/sys/net/ipv6").exists() {
            ns.exec(&[
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])
            .with_context(|| format!("cannot disable IPv6 in {ns}"))?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, usable with `nsenter --net=` and `setns`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn nsenter_argv<'a>(&'a self, net_arg: &'a str, argv: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["nsenter", net_arg, "--"];
        full.extend_from_slice(argv);
        full
    }

    /// Runs argv inside the namespace; returns stdout.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        self.exec_timeout(argv, cmd::DEFAULT_TIMEOUT)
    }

    pub fn exec_timeout(&self, argv: &[&str], timeout: Duration) -> Result<String> {
        let net_arg = format!("--net={}", self.path.display());
        cmd::run_timeout(&self.nsenter_argv(&net_arg, argv), timeout)
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Like [`exec_timeout`](Self::exec_timeout) but hands back the exit
    /// status and output instead of failing on a non-zero status.
    pub fn exec_output(&self, argv: &[&str], timeout: Duration) -> Result<cmd::Output> {
        let net_arg = format!("--net={}", self.path.display());
        cmd::output(&self.nsenter_argv(&net_arg, argv), timeout)
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// `ip -j <args>` inside the namespace, parsed. Empty output (some `ip`
    /// subcommands print nothing when there is nothing to list) is `[]`.
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut argv = vec!["ip", "-j"];
        argv.extend_from_slice(args);
        let out = self.exec(&argv)?;
        if out.trim().is_empty() {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        serde_json::from_str(&out).with_context(|| {
            format!(
                "cannot parse JSON from `{}` in {}: {}",
                cmd::display(&argv),
                self.name,
                out.trim()
            )
        })
    }

    /// Names of every link `ip` sees here, sorted.
    pub fn link_names(&self) -> Result<Vec<String>> {
        let out = self.ip_json(&["link", "show"])?;
        let mut names: Vec<String> = out
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Sets a sysctl inside this namespace only.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Reads a sysctl as seen inside this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        Ok(self.exec(&["sysctl", "-n", key])?.trim().to_string())
    }

    /// Runs `f` on a fresh thread that has joined this namespace (only that
    /// thread switches), and waits for it. Sockets created by `f` belong to
    /// the namespace for their whole life, even after being handed back.
    /// A panic in `f` is propagated to the caller.
    pub fn run_in<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path.as_path();
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(format!("in-{}", self.name))
                .spawn_scoped(s, move || -> Result<R> {
                    enter(path)?;
                    Ok(f())
                })
                .with_context(|| format!("cannot spawn a thread for {}", self.name))?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a thread inside this namespace and returns once the
    /// thread has joined it, so a setns failure is reported here rather than
    /// lost in the thread.
    pub fn spawn_in<F, R>(&self, f: F) -> Result<JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = self.path.clone();
        let (tx, rx) = mpsc::sync_channel::<Result<()>>(1);
        let handle = thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                match enter(&path) {
                    Ok(()) => {
                        let _ = tx.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        // There is no R to return; unwinding without the
                        // panic hook ends the (detached) thread quietly.
                        std::panic::resume_unwind(Box::new("setns failed"));
                    }
                }
                f()
            })
            .with_context(|| format!("cannot spawn a thread for {}", self.name))?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow!(
                "thread for {} did not report entering the namespace: {e}",
                self.name
            )),
        }
    }
}

impl fmt::Display for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // iproute2's per-namespace resolv.conf, when a dataplane agent
        // running with its default `dns.netns_etc` wrote one (docs/dns.md):
        // an agent stopped before the endpoint went leaves it.
        let etc = Path::new("/etc/netns").join(&self.name);
        let file = etc.join("resolv.conf");
        if std::fs::read_to_string(&file)
            .is_ok_and(|t| t.starts_with("# Written by the dataplane agent"))
        {
            let _ = std::fs::remove_file(&file);
            let _ = std::fs::remove_dir(&etc);
            // The agent made /etc/netns for it, most likely: it goes when
            // nothing else is in it (iproute2 does not need it).
            let _ = std::fs::remove_dir("/etc/netns");
        }
        if let Err(e) = cmd::run(&["ip", "netns", "del", &self.name]) {
            eprintln!(
                "dataplane-tests: cannot delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> Result<()> {
    let file = File::open(path)
        .with_context(|| format!("cannot open network namespace {}", path.display()))?;
    // SAFETY: setns on a valid fd we own; CLONE_NEWNET only affects this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("setns into {} failed", path.display()));
    }
    Ok(())
}

/// Switches tx and rx checksum offload of `dev` inside `ns` on or off.
/// Off makes the kernel compute real checksums on every packet, so a program
/// that rewrites headers without fixing checksums cannot hide behind
/// CHECKSUM_PARTIAL.
pub fn set_offload(ns: &NetNs, dev: &str, on: bool) -> Result<()> {
    let state = if on { "on" } else { "off" };
    ns.exec(&["ethtool", "-K", dev, "tx", state, "rx", state])
        .with_context(|| format!("cannot switch checksum offload {state} on {dev}"))?;
    Ok(())
}

/// `(tx, rx)` checksum offload state of `dev` inside `ns`, per `ethtool -k`.
pub fn offload_state(ns: &NetNs, dev: &str) -> Result<(bool, bool)> {
    let out = ns.exec(&["ethtool", "-k", dev])?;
    let feature = |key: &str| -> Result<bool> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|rest| rest.trim().starts_with("on"))
            .ok_or_else(|| anyhow!("`ethtool -k {dev}` in {ns} has no {key} line"))
    };
    Ok((feature("tx-checksumming:")?, feature("rx-checksumming:")?))
}

/// Creates a veth pair `a_name` (in `a`) <-> `b_name` (in `b`) and brings
/// both ends up. The pair is created inside `a` with the peer placed straight
/// into `b`, so neither end ever exists in the root namespace.
pub fn veth_pair(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<()> {
    for n in [a_name, b_name] {
        if n.is_empty() || n.len() > crate::IFNAME_MAX {
            bail!(
                "interface name {n:?} must be 1..={} bytes",
                crate::IFNAME_MAX
            );
        }
    }
    a.exec(&[
        "ip",
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])
    .with_context(|| format!("cannot create veth {a_name} ({a}) <-> {b_name} ({b})"))?;
    link_up(a, a_name)?;
    link_up(b, b_name)?;
    Ok(())
}

pub fn link_up(ns: &NetNs, dev: &str) -> Result<()> {
    ns.exec(&["ip", "link", "set", dev, "up"])
        .with_context(|| format!("cannot bring {dev} up"))?;
    Ok(())
}

/// `ip addr add <cidr> dev <dev>` inside `ns`.
pub fn add_addr(ns: &NetNs, dev: &str, cidr: &str) -> Result<()> {
    ns.exec(&["ip", "addr", "add", cidr, "dev", dev])
        .with_context(|| format!("cannot add address {cidr} to {dev}"))?;
    Ok(())
}

/// `ip route add <dst> via <via>` inside `ns`.
pub fn add_route(ns: &NetNs, dst: &str, via: impl Into<IpAddr>) -> Result<()> {
    let via = via.into().to_string();
    ns.exec(&["ip", "route", "add", dst, "via", &via])
        .with_context(|| format!("cannot add route {dst} via {via}"))?;
    Ok(())
}

/// Default route via `via` inside `ns`.
pub fn default_route(ns: &NetNs, via: impl Into<IpAddr>) -> Result<()> {
    add_route(ns, "default", via)
}

/// A counter from /proc/net/snmp as seen inside `ns`, e.g.
/// `("Tcp", "InCsumErrors")` or `("Udp", "InCsumErrors")`.
pub fn snmp_counter(ns: &NetNs, proto: &str, field: &str) -> Result<u64> {
    let text = ns.exec(&["cat", "/proc/net/snmp"])?;
    parse_snmp(&text, proto, field).with_context(|| format!("reading /proc/net/snmp in {ns}"))
}

/// An IPv6 counter of `ns` (`/proc/net/snmp6`, one `name value` per line,
/// e.g. `Ip6OutForwDatagrams`).
pub fn snmp6_counter(ns: &NetNs, field: &str) -> Result<u64> {
    let text = ns.exec(&["cat", "/proc/net/snmp6"])?;
    let value = text
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(name, _)| *name == field)
        .map(|(_, v)| v.trim())
        .ok_or_else(|| anyhow!("no {field} in /proc/net/snmp6 in {ns}"))?;
    value
        .parse()
        .with_context(|| format!("{field} value {value:?} is not a counter"))
}

/// Finds `field` of `proto` in /proc/net/snmp text, where each protocol has a
/// header line of names followed by a line of values.
pub fn parse_snmp(text: &str, proto: &str, field: &str) -> Result<u64> {
    let tag = format!("{proto}:");
    let mut lines = text
        .lines()
        .filter_map(|l| l.strip_prefix(tag.as_str()).map(str::split_whitespace));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {proto} section");
    };
    let (_, value) = names
        .zip(values)
        .find(|(name, _)| *name == field)
        .ok_or_else(|| anyhow!("no {proto} field {field}"))?;
    value
        .parse()
        .with_context(|| format!("{proto} {field} value {value:?} is not a counter"))
}
