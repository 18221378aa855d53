//! `docker-proxy`: Docker's default for host-local clients (userland proxy
//! on): the `iptables` peer's rules (their nat OUTPUT rule leaves
//! `127.0.0.0/8` alone) plus one `docker-proxy` process per published port
//! (Debian's docker.io `/usr/sbin/docker-proxy`), started in the fake host
//! as dockerd starts it: `-proto tcp -host-ip 0.0.0.0 -host-port P
//! -container-ip C -container-port P`. A client's `127.0.0.1:P` goes
//! through the proxy, the host's own address through the OUTPUT DNAT.
//!
//! Only the host-local workloads run on it (the forwarded ones would
//! measure the `iptables` peer again). One process per port: above
//! [`MAX_PROXIED`] extra mappings the rest get rules but no process, and
//! the install note says so.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{
    all_mappings,
    iptables::{Backend, Iptables},
    Install, Peer,
};
use crate::bench::{
    family::Family,
    hostlocal::HostLocal,
    topology::{other_net, Proc, Topology},
    workloads::{Dir, Workload},
};

pub const BIN: &str = "/usr/sbin/docker-proxy";
/// Most extra mappings that get a proxy process of their own.
pub const MAX_PROXIED: usize = 100;
/// How long the proxies may take to listen.
const LISTEN: Duration = Duration::from_secs(10);

pub struct DockerProxy {
    rules: Iptables,
    proxies: Vec<Proc>,
}

impl DockerProxy {
    pub fn new() -> DockerProxy {
        DockerProxy {
            rules: Iptables::new(Backend::Nft),
            proxies: Vec::new(),
        }
    }
}

impl Peer for DockerProxy {
    fn name(&self) -> &'static str {
        "docker-proxy"
    }

    fn setup(&mut self, topo: &Topology, n: usize) -> Result<Install> {
        if !std::path::Path::new(BIN).is_file() {
            bail!("{BIN} not found (Debian's docker.io package ships it)");
        }
        let mut install = self.rules.setup(topo, n)?;
        if topo.family == Family::V4 {
            // The other network, as Docker 28+ adds each bridge of its own
            // (moby#49509): its containers' connections to the host's
            // addresses skip the DNAT and reach the proxy.
            topo.wire_other_bridge()?;
            topo.host.exec(&[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-I",
                "DOCKER",
                "-i",
                other_net::BRIDGE,
                "-j",
                "RETURN",
            ])?;
        }
        let all = all_mappings(n, topo.family);
        // The measured ports are last; the extras beyond MAX_PROXIED first.
        let skip = n.saturating_sub(MAX_PROXIED);
        // Docker's wildcard for the mapping's family.
        let any = match topo.family {
            Family::V4 => "0.0.0.0",
            Family::V6 => "::",
        };
        let t = Instant::now();
        for m in &all[skip..] {
            let (hp, ip, cp) = (
                m.host_port.to_string(),
                m.ip.to_string(),
                m.port.to_string(),
            );
            // dockerd hands the proxy a pipe as fd 3 for its "0\n" (ready);
            // without one, that fd is the proxy's listener, which it closes.
            self.proxies.push(topo.host.spawn(
                None,
                &[
                    "sh",
                    "-c",
                    "exec \"$0\" \"$@\" 3>/dev/null",
                    BIN,
                    "-proto",
                    m.proto.as_str(),
                    "-host-ip",
                    any,
                    "-host-port",
                    &hp,
                    "-container-ip",
                    &ip,
                    "-container-port",
                    &cp,
                ],
            )?);
        }
        // Bounded wait until every TCP proxy listens.
        let want = all[skip..]
            .iter()
            .filter(|m| m.proto == super::Proto::Tcp)
            .count();
        loop {
            let out = topo.host.exec(&["ss", "-Hltn"])?;
            if out.lines().count() >= want {
                break;
            }
            for p in &mut self.proxies {
                p.check_alive()?;
            }
            if t.elapsed() > LISTEN {
                bail!("{want} docker-proxy processes did not all listen within {LISTEN:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = t.elapsed();
        install.total += started;
        install.mappings += started;
        let mut note = format!(
            "iptables rules (one iptables-nft-restore) + {} docker-proxy processes ({:.0} ms to listen); \
             add/remove one: the rule only",
            self.proxies.len(),
            started.as_secs_f64() * 1e3
        );
        if skip > 0 {
            note.push_str(&format!(
                "; {skip} extra mappings have rules but no proxy process"
            ));
        }
        install.note = Some(note);
        Ok(install)
    }

    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        self.rules.add_remove(topo)
    }

    fn host_local(&mut self, _topo: &Topology) -> Result<Option<HostLocal>> {
        Ok(Some(HostLocal {
            cgroup: None,
            proxies: self.proxies.iter().map(Proc::id).collect(),
            ports: self.proxies.len(),
            note: "127.0.0.1 through docker-proxy, the host's address through the nat OUTPUT DNAT"
                .into(),
        }))
    }

    fn skips(&self, w: &Workload) -> Option<&'static str> {
        // Docker's path for these: 127.0.0.1 and a container's connection
        // to the host's address (hairpin, or from another network) go
        // through the proxy.
        (!matches!(w.dir, Dir::Host | Dir::Hairpin | Dir::CrossNet)).then_some(
            "docker-proxy runs only the host-local, hairpin and cross-network workloads \
             (forwarded traffic: see iptables)",
        )
    }
}
