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
//! forwarded packet.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;

use super::{extra_sources, extras, measured, Install, Mapping, Peer, ONE_MORE};
use crate::bench::topology::{Topology, BRIDGE, SUBNET};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// Debian's default `iptables` (nf_tables kernel backend).
    Nft,
    /// The x_tables kernel backend.
    Legacy,
}

impl Backend {
    fn cmd(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
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
        "! -i {BRIDGE} -p {p} -m {p} --dport {hp} -j DNAT --to-destination {ip}:{cp}",
        p = m.proto.as_str(),
        hp = m.host_port,
        ip = m.ip,
        cp = m.port
    )
}

/// Docker's whole ruleset for the bridge with `n` extra mappings and `n`
/// extra DOCKER-USER source rules, in `iptables-restore` format.
pub fn ruleset(n: usize) -> String {
    let mappings: Vec<Mapping> = extras(n).into_iter().chain(measured()).collect();
    let mut s = String::with_capacity(200 * (n + 10));
    s.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n",
    );
    let _ = writeln!(s, "-A POSTROUTING -s {SUBNET} ! -o {BRIDGE} -j MASQUERADE");
    for m in &mappings {
        let _ = writeln!(
            s,
            "-A POSTROUTING -s {ip}/32 -d {ip}/32 -p {p} -m {p} --dport {cp} -j MASQUERADE",
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
            "-A DOCKER -d {ip}/32 ! -i {BRIDGE} -o {BRIDGE} -p {p} -m {p} --dport {cp} -j ACCEPT",
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
    for src in extra_sources(n) {
        let _ = writeln!(s, "-A DOCKER-USER -s {src}/32 -j DROP");
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
        let rules = ruleset(n);
        let t = std::time::Instant::now();
        topo.host
            .exec_stdin(&[self.backend.restore()], rules.as_bytes())?;
        let total = t.elapsed();
        Ok(Install {
            total,
            mappings: total,
            note: Some(format!(
                "one {} of the whole ruleset ({} lines)",
                self.backend.restore(),
                rules.lines().count()
            )),
        })
    }

    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        let rule = dnat_rule(&ONE_MORE);
        let args: Vec<&str> = rule.split_whitespace().collect();
        let mut add = vec![self.backend.cmd(), "-w", "-t", "nat", "-A", "DOCKER"];
        add.extend(&args);
        let mut del = vec![self.backend.cmd(), "-w", "-t", "nat", "-D", "DOCKER"];
        del.extend(&args);
        Ok(Some((topo.host.timed(&add)?, topo.host.timed(&del)?)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ruleset_has_one_dnat_and_accept_per_mapping_and_the_user_rules() {
        let r = super::ruleset(10);
        assert_eq!(r.matches("-j DNAT").count(), 13);
        assert_eq!(r.matches("--dport 80 -j ACCEPT").count(), 10);
        assert_eq!(r.matches("-A DOCKER-USER -s 10.").count(), 10);
        assert_eq!(r.matches("COMMIT").count(), 2);
    }
}
