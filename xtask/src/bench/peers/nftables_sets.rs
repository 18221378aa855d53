//! `nftables-sets`: the same layout with O(1) lookups, the way netavark's
//! nftables driver and a careful admin write it: DNAT through a verdict-free
//! map keyed by the destination port (`dnat ip to tcp dport map @...`), the
//! per-mapping forward accepts as one `ip daddr . port` set, and the
//! DOCKER-USER sources in one interval set. This is the peer to beat: its
//! per-packet cost does not grow with N either. IPv6: the same in an `ip6`
//! table (`ipv6_addr` keys, `dnat ip6 to ... map`).

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;

use super::{
    all_mappings, extra_sources,
    nftables::{install, skeleton, TABLE},
    one_more, Install, Mapping, Peer, Proto,
};
use crate::bench::{
    family::Family,
    topology::{Topology, BRIDGE},
};

pub struct NftablesSets;

fn elements(ms: &[&Mapping], f: impl Fn(&Mapping) -> String) -> String {
    ms.iter().map(|m| f(m)).collect::<Vec<_>>().join(", ")
}

pub fn ruleset(n: usize, family: Family) -> String {
    let mappings = all_mappings(n, family);
    let (f, addr) = (family.nft(), family.nft_addr_type());
    let mut s = String::with_capacity(60 * (2 * n + 10));
    let _ = writeln!(s, "table {f} {TABLE} {{");
    for proto in [Proto::Tcp, Proto::Udp] {
        let p = proto.as_str();
        let of: Vec<&Mapping> = mappings.iter().filter(|m| m.proto == proto).collect();
        let _ = writeln!(
            s,
            "map dnat_{p} {{ type inet_service : {addr} . inet_service; elements = {{ {} }} }}",
            elements(&of, |m| format!("{} : {} . {}", m.host_port, m.ip, m.port))
        );
        let _ = writeln!(
            s,
            "set published_{p} {{ type {addr} . inet_service; elements = {{ {} }} }}",
            elements(&of, |m| format!("{} . {}", m.ip, m.port))
        );
    }
    let sources = extra_sources(n, family);
    if sources.is_empty() {
        let _ = writeln!(s, "set user_src {{ type {addr}; flags interval; }}");
    } else {
        let list: Vec<String> = sources.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "set user_src {{ type {addr}; flags interval; elements = {{ {} }} }}",
            list.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "chain docker_nat {{ iifname \"{BRIDGE}\" return; \
         iifname != \"{BRIDGE}\" dnat {f} to tcp dport map @dnat_tcp; \
         iifname != \"{BRIDGE}\" dnat {f} to udp dport map @dnat_udp; }}\n\
         chain docker_filter {{ iifname != \"{BRIDGE}\" {f} daddr . tcp dport @published_tcp accept; \
         iifname != \"{BRIDGE}\" {f} daddr . udp dport @published_udp accept; }}\n\
         chain docker_user {{ {f} saddr @user_src drop; }}\n}}"
    );
    s.push_str(&skeleton(family));
    s
}

impl Peer for NftablesSets {
    fn name(&self) -> &'static str {
        "nftables-sets"
    }

    fn setup(&mut self, topo: &Topology, n: usize) -> Result<Install> {
        install(topo, &ruleset(n, topo.family), |_| {
            "one nft -f (maps and sets)".into()
        })
    }

    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        // One `nft` call per direction carrying both elements of the mapping
        // (the DNAT map entry and the forward accept), as one transaction.
        let m = one_more(topo.family);
        let f = topo.family.nft();
        let cmd = |verb: &str| {
            format!(
                "{verb} element {f} {TABLE} dnat_tcp {{ {} : {} . {} }}; \
                 {verb} element {f} {TABLE} published_tcp {{ {} . {} }}",
                m.host_port, m.ip, m.port, m.ip, m.port
            )
        };
        let add = topo.host.timed(&["nft", &cmd("add")])?;
        let del = topo.host.timed(&["nft", &cmd("delete")])?;
        Ok(Some((add, del)))
    }
}

#[cfg(test)]
mod tests {
    use crate::bench::family::Family;

    #[test]
    fn ipv6_ruleset_is_an_ip6_table_with_ipv6_maps_and_sets() {
        let r = super::ruleset(2, Family::V6);
        assert!(r.contains("table ip6 docker_bench {"));
        assert!(r.contains("type inet_service : ipv6_addr . inet_service"));
        assert!(r.contains("7000 : fd00:b0::2 . 7000"));
        assert!(r.contains("dnat ip6 to tcp dport map @dnat_tcp"));
        assert!(r.contains("ip6 saddr fd00:b0::/64 oifname != \"br0\" masquerade"));
        assert!(r.contains("elements = { fd10::1, fd10::2 }"));
        assert!(!r.contains("ip daddr") && !r.contains("ipv4_addr"));
    }
}
