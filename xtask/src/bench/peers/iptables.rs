//! `iptables` and `iptables-legacy`: the rules Docker's bridge driver writes
//! for one bridge and its published ports, generated as one
//! `iptables-restore` file and loaded into the fake host's namespace only
//! (iptables state is per network namespace), with Debian's default
//! `iptables-nft-restore` or with `iptables-legacy-restore`.
//!
//! Layout (as `iptables-save` shows it on a Docker host): nat PREROUTING and
//! OUTPUT jump to DOCKER for local destinations (ADDRTYPE LOCAL), DOCKER
//! returns for traffic from the bridge and DNATs `! -i br0` per mapping,
//! POSTROUTING masquerades the subnet leaving `! -o br0` (plus Docker's
//! per-mapping hairpin MASQUERADE); filter FORWARD -> DOCKER-USER ->
//! DOCKER-ISOLATION-STAGE-1/2 -> conntrack RELATED,ESTABLISHED accept ->
//! DOCKER (one ACCEPT per mapping) -> the bridge's own accepts, policy DROP.
//! The N extra source rules sit in DOCKER-USER, traversed by every
//! forwarded packet. On an IPv6 topology the same layout goes through
//! `ip6tables-restore`, as Docker writes it with `ip6tables` enabled
//! (DNAT to the ULA container, MASQUERADE of the ULA subnet).

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;

use super::{all_mappings, extra_sources, one_more, Install, Mapping, Peer};
use crate::bench::{
    family::{ip_port, Family},
    hostlocal::HostLocal,
    topology::{Topology, BRIDGE},
};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// Debian's default `iptables` (nf_tables kernel backend).
    Nft,
    /// The x_tables kernel backend.
    Legacy,
}

impl Backend {
    fn cmd(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Nft, Family::V4) => "iptables-nft",
            (Backend::Legacy, Family::V4) => "iptables-legacy",
            (Backend::Nft, Family::V6) => "ip6tables-nft",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy",
        }
    }

    fn restore(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Nft, Family::V4) => "iptables-nft-restore",
            (Backend::Legacy, Family::V4) => "iptables-legacy-restore",
            (Backend::Nft, Family::V6) => "ip6tables-nft-restore",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy-restore",
        }
    }
}

pub struct Iptables {
    backend: Backend,
}

impl Iptables {
    pub fn new(backend: Backend) -> Iptables {
        Iptables { backend }
    }
}

/// The DNAT rule of one mapping (DOCKER chain of the nat table).
fn dnat_rule(m: &Mapping) -> String {
    format!(
        "! -i {BRIDGE} -p {p} -m {p} --dport {hp} -j DNAT --to-destination {to}",
        p = m.proto.as_str(),
        hp = m.host_port,
        to = ip_port(m.ip, m.port),
    )
}

/// Docker's whole ruleset for the bridge with `n` extra mappings and `n`
/// extra DOCKER-USER source rules, in `iptables-restore` format (the
/// `ip6tables-restore` one for IPv6).
pub fn ruleset(n: usize, family: Family) -> String {
    let mappings = all_mappings(n, family);
    let host = family.host_len();
    let mut s = String::with_capacity(200 * (n + 10));
    s.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n",
    );
    let _ = writeln!(
        s,
        "-A OUTPUT ! -d {} -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A POSTROUTING -s {} ! -o {BRIDGE} -j MASQUERADE",
        family.loopback(),
        family.addrs().subnet
    );
    for m in &mappings {
        let _ = writeln!(
            s,
            "-A POSTROUTING -s {ip}/{host} -d {ip}/{host} -p {p} -m {p} --dport {cp} -j MASQUERADE",
            ip = m.ip,
            p = m.proto.as_str(),
            cp = m.port
        );
    }
    let _ = writeln!(s, "-A DOCKER -i {BRIDGE} -j RETURN");
    for m in &mappings {
        let _ = writeln!(s, "-A DOCKER {}", dnat_rule(m));
    }
    s.push_str(
        "COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1 - [0:0]\n\
         :DOCKER-ISOLATION-STAGE-2 - [0:0]\n:DOCKER-USER - [0:0]\n\
         -A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n",
    );
    let _ = writeln!(
        s,
        "-A FORWARD -o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A FORWARD -o {BRIDGE} -j DOCKER\n\
         -A FORWARD -i {BRIDGE} ! -o {BRIDGE} -j ACCEPT\n\
         -A FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT"
    );
    for m in &mappings {
        let _ = writeln!(
            s,
            "-A DOCKER -d {ip}/{host} ! -i {BRIDGE} -o {BRIDGE} -p {p} -m {p} --dport {cp} -j ACCEPT",
            ip = m.ip,
            p = m.proto.as_str(),
            cp = m.port
        );
    }
    let _ = writeln!(
        s,
        "-A DOCKER-ISOLATION-STAGE-1 -i {BRIDGE} ! -o {BRIDGE} -j DOCKER-ISOLATION-STAGE-2\n\
         -A DOCKER-ISOLATION-STAGE-1 -j RETURN\n\
         -A DOCKER-ISOLATION-STAGE-2 -o {BRIDGE} -j DROP\n\
         -A DOCKER-ISOLATION-STAGE-2 -j RETURN"
    );
    for src in extra_sources(n, family) {
        let _ = writeln!(s, "-A DOCKER-USER -s {src}/{host} -j DROP");
    }
    s.push_str("-A DOCKER-USER -j RETURN\nCOMMIT\n");
    s
}

impl Peer for Iptables {
    fn name(&self) -> &'static str {
        match self.backend {
            Backend::Nft => "iptables",
            Backend::Legacy => "iptables-legacy",
        }
    }

    fn setup(&mut self, topo: &Topology, n: usize) -> Result<Install> {
        topo.wire_bridge()?;
        let rules = ruleset(n, topo.family);
        let restore = self.backend.restore(topo.family);
        let t = std::time::Instant::now();
        topo.host.exec_stdin(&[restore], rules.as_bytes())?;
        let total = t.elapsed();
        Ok(Install {
            total,
            mappings: total,
            note: Some(format!(
                "one {restore} of the whole ruleset ({} lines)",
                rules.lines().count()
            )),
            cli_mappings: None,
            cli_rules: None,
        })
    }

    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        let rule = dnat_rule(&one_more(topo.family));
        let args: Vec<&str> = rule.split_whitespace().collect();
        let cmd = self.backend.cmd(topo.family);
        let mut add = vec![cmd, "-w", "-t", "nat", "-A", "DOCKER"];
        add.extend(&args);
        let mut del = vec![cmd, "-w", "-t", "nat", "-D", "DOCKER"];
        del.extend(&args);
        Ok(Some((topo.host.timed(&add)?, topo.host.timed(&del)?)))
    }

    /// Docker's `--userland-proxy=false` for host-local clients: the nat
    /// OUTPUT jump also for `127.0.0.0/8`, `route_localnet` on the bridge,
    /// and masquerade of local sources leaving through it (IPv4 only).
    fn host_local(&mut self, topo: &Topology) -> Result<Option<HostLocal>> {
        if topo.family != Family::V4 {
            return Ok(None);
        }
        let cmd = self.backend.cmd(topo.family);
        let nat = [cmd, "-w", "-t", "nat", "-A"];
        topo.host.exec(
            &[
                &nat[..],
                &[
                    "OUTPUT",
                    "-d",
                    "127.0.0.0/8",
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                ],
                &["-j", "DOCKER"],
            ]
            .concat(),
        )?;
        topo.host.exec(
            &[
                &nat[..],
                &[
                    "POSTROUTING",
                    "-o",
                    BRIDGE,
                    "-m",
                    "addrtype",
                    "--src-type",
                    "LOCAL",
                ],
                &["-j", "MASQUERADE"],
            ]
            .concat(),
        )?;
        topo.host
            .sysctl(&format!("net.ipv4.conf.{BRIDGE}.route_localnet"), "1")?;
        Ok(Some(HostLocal {
            note: "nat OUTPUT DNAT also for 127.0.0.0/8 + route_localnet + masquerade of local \
                   sources (Docker's --userland-proxy=false)"
                .into(),
            ..HostLocal::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::bench::family::Family;

    #[test]
    fn ipv6_ruleset_is_docker_ip6tables_layout() {
        let r = super::ruleset(2, Family::V6);
        assert_eq!(r.matches("-j DNAT").count(), 5);
        assert!(r.contains("--to-destination [fd00:b0::2]:7000"));
        assert!(r.contains("-A POSTROUTING -s fd00:b0::/64 ! -o br0 -j MASQUERADE"));
        assert!(r.contains("-A OUTPUT ! -d ::1/128 "));
        assert_eq!(r.matches("-A DOCKER-USER -s fd10::").count(), 2);
        assert!(!r.contains("/32"));
    }

    #[test]
    fn ruleset_has_one_dnat_and_accept_per_mapping_and_the_user_rules() {
        let r = super::ruleset(10, Family::V4);
        assert_eq!(r.matches("-j DNAT").count(), 13);
        assert_eq!(r.matches("--dport 80 -j ACCEPT").count(), 10);
        assert_eq!(r.matches("-A DOCKER-USER -s 10.").count(), 10);
        assert_eq!(r.matches("COMMIT").count(), 2);
    }
}
