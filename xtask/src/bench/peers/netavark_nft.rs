//! `netavark-nft`: the layout netavark's nftables driver
//! (`src/firewall/nft.rs`) writes for one bridge network and its published
//! ports: table `inet netavark` with base chains `PREROUTING`/`OUTPUT`
//! (`fib daddr type local jump NETAVARK-HOSTPORT-DNAT`), `POSTROUTING`
//! (masquerade of marked packets, jump to the network's `nv_<id>_<subnet>`
//! chain), `FORWARD` (invalid drop, isolation, the subnet's accepts; policy
//! accept) and `INPUT` (DNS from the subnet); per published port one
//! `<proto> dport P jump nv_<id>_<subnet>_dnat` in
//! `NETAVARK-HOSTPORT-DNAT` and, in that per-network DNAT chain, the
//! port's two SETMARK jumps (from the subnet, hairpin; from 127.0.0.1, IPv4
//! only) and its `dnat` rule: linear lists, four rules per port. Our own
//! generator of that shape, loaded with one `nft -f`; netavark applies a
//! batch per container through libnftables' JSON, after listing the table.
//!
//! Podman has no DOCKER-USER either: the N sources are the same user table
//! as `docker-nft`'s ([`super::docker_nft::user_table`]).

use std::{fmt::Write as _, time::Duration};

use anyhow::{bail, Result};

use super::{
    all_mappings,
    docker_nft::{echoed_handles, user_table},
    nftables::install,
    one_more, Install, Mapping, Peer,
};
use crate::bench::{
    family::{ip_port, Family},
    topology::{Topology, BRIDGE},
    workloads::{Dir, Workload},
};

pub struct NetavarkNft;

const TABLE: &str = "netavark";
const DNAT: &str = "NETAVARK-HOSTPORT-DNAT";
const SETMARK: &str = "NETAVARK-HOSTPORT-SETMARK";
/// The first 8 hex digits of a network id, as netavark names its chains.
const NET_ID: &str = "2f259bab";

/// `nv_<id>_<subnet>` (and `..._dnat`): `.` -> `_`, `:` -> `-`, `/` -> `_nm`.
fn chain(family: Family, dnat: bool) -> String {
    let subnet = family
        .addrs()
        .subnet
        .replace('.', "_")
        .replace(':', "-")
        .replace('/', "_nm");
    format!("nv_{NET_ID}_{subnet}{}", if dnat { "_dnat" } else { "" })
}

/// One port's four rules: (chain, rule).
fn port_rules(m: &Mapping, family: Family) -> Vec<(String, String)> {
    let (f, subnet) = (family.nft(), family.addrs().subnet);
    let (p, hp) = (m.proto.as_str(), m.host_port);
    let dnat_chain = chain(family, true);
    let mut v = vec![
        (DNAT.to_owned(), format!("{p} dport {hp} jump {dnat_chain}")),
        (
            dnat_chain.clone(),
            format!("{f} saddr {subnet} {p} dport {hp} jump {SETMARK}"),
        ),
    ];
    if family == Family::V4 {
        v.push((
            dnat_chain.clone(),
            format!("ip saddr 127.0.0.1 {p} dport {hp} jump {SETMARK}"),
        ));
    }
    v.push((
        dnat_chain,
        format!("{p} dport {hp} dnat {f} to {}", ip_port(m.ip, m.port)),
    ));
    v
}

pub fn ruleset(n: usize, family: Family) -> String {
    let mappings = all_mappings(n, family);
    let (f, subnet) = (family.nft(), family.addrs().subnet);
    let multicast = match family {
        Family::V4 => "224.0.0.0/4",
        Family::V6 => "ff00::/8",
    };
    let (net, net_dnat) = (chain(family, false), chain(family, true));
    let rules: Vec<(String, String)> = mappings
        .iter()
        .flat_map(|m| port_rules(m, family))
        .collect();
    let mut s = String::with_capacity(80 * (4 * n + 20));
    let _ = writeln!(
        s,
        "table inet {TABLE} {{\n\
         chain {SETMARK} {{ meta mark set meta mark | 0x2000; }}\n\
         chain NETAVARK-ISOLATION-2 {{ oifname \"{BRIDGE}\" drop; }}\n\
         chain NETAVARK-ISOLATION-3 {{ jump NETAVARK-ISOLATION-2; }}\n\
         chain NETAVARK-ISOLATION-1 {{ iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\" jump NETAVARK-ISOLATION-2; }}\n\
         chain {net} {{ {f} daddr {subnet} accept; {f} daddr != {multicast} masquerade; }}"
    );
    for c in [&net_dnat, DNAT] {
        let _ = writeln!(s, "chain {c} {{");
        for (_, r) in rules.iter().filter(|(rc, _)| rc == c) {
            let _ = writeln!(s, "{r}");
        }
        s.push_str("}\n");
    }
    let _ = writeln!(
        s,
        "chain INPUT {{ type filter hook input priority filter; policy accept; \
         {f} saddr {subnet} meta l4proto {{ tcp, udp }} th dport 53 accept; }}\n\
         chain FORWARD {{ type filter hook forward priority filter; policy accept; \
         ct state invalid drop; jump NETAVARK-ISOLATION-1; \
         {f} daddr {subnet} ct state established,related accept; {f} saddr {subnet} accept; }}\n\
         chain POSTROUTING {{ type nat hook postrouting priority srcnat; policy accept; \
         meta mark & 0x2000 == 0x2000 masquerade; {f} saddr {subnet} jump {net}; }}\n\
         chain PREROUTING {{ type nat hook prerouting priority dstnat; policy accept; \
         fib daddr type local jump {DNAT}; }}\n\
         chain OUTPUT {{ type nat hook output priority -100; policy accept; \
         fib daddr type local jump {DNAT}; }}\n}}"
    );
    s.push_str(&user_table(n, family));
    s
}

impl Peer for NetavarkNft {
    fn name(&self) -> &'static str {
        "netavark-nft"
    }

    fn setup(&mut self, topo: &Topology, n: usize) -> Result<Install> {
        install(topo, &ruleset(n, topo.family), |lines| {
            format!(
                "netavark nftables layout (HOSTPORT-DNAT jump + per-network DNAT chain, 4 rules per port), \
                 N user sources in an own table's interval set; one nft -f ({lines} lines)"
            )
        })
    }

    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        // As netavark does per container: list the table (it matches the
        // existing rules before adding or deleting), then one batch.
        let rules = port_rules(&one_more(topo.family), topo.family);
        let add: String = rules
            .iter()
            .map(|(c, r)| format!("add rule inet {TABLE} {c} {r}\n"))
            .collect();
        let t = std::time::Instant::now();
        topo.host
            .exec(&["nft", "-j", "list", "table", "inet", TABLE])?;
        let out = topo
            .host
            .exec_stdin(&["nft", "--echo", "--handle", "-f", "-"], add.as_bytes())?;
        let add_time = t.elapsed();
        let handles = echoed_handles(&out);
        if handles.len() != rules.len() {
            bail!(
                "nft --echo --handle printed {} handles, not {}: {out}",
                handles.len(),
                rules.len()
            );
        }
        let del: String = rules
            .iter()
            .zip(&handles)
            .map(|((c, _), h)| format!("delete rule inet {TABLE} {c} handle {h}\n"))
            .collect();
        let t = std::time::Instant::now();
        topo.host
            .exec(&["nft", "-j", "list", "table", "inet", TABLE])?;
        topo.host.exec_stdin(&["nft", "-f", "-"], del.as_bytes())?;
        Ok(Some((add_time, t.elapsed())))
    }

    /// Hairpin: netavark DNATs traffic from its own bridge too and marks
    /// it from the subnet for masquerade (`NETAVARK-HOSTPORT-SETMARK`), so
    /// the answer comes back through the host. Across networks its
    /// isolation drops the DNATed connection (netavark#709; the fix,
    /// netavark#1483, is newer than the layout reproduced here).
    fn skips(&self, w: &Workload) -> Option<&'static str> {
        (w.dir == Dir::CrossNet).then_some(
            "netavark's isolation drops another network's connection to a published port (netavark#709)",
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::bench::family::Family;

    #[test]
    fn four_rules_per_port_in_netavark_chains() {
        let r = super::ruleset(2, Family::V4);
        assert!(r.contains("table inet netavark {"));
        assert_eq!(
            r.matches("jump nv_2f259bab_172_18_0_0_nm16_dnat").count(),
            5
        );
        assert_eq!(r.matches("jump NETAVARK-HOSTPORT-SETMARK").count(), 10);
        assert!(r.contains("tcp dport 20001 dnat ip to 172.18.0.3:80"));
        assert!(r.contains("ip saddr 127.0.0.1 udp dport 7001 jump"));
    }

    #[test]
    fn ipv6_has_no_localhost_rule() {
        let r = super::ruleset(1, Family::V6);
        assert!(r.contains("chain nv_2f259bab_fd00-b0--_nm64_dnat {"));
        assert!(r.contains("dnat ip6 to [fd00:b0::2]:7000"));
        assert!(!r.contains("127.0.0.1") && !r.contains("ip saddr"));
    }
}
