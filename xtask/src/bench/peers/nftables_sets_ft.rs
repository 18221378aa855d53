//! `nftables-sets-ft`: `nftables-sets` plus a flowtable, netfilter's
//! strongest software fast path: established flows are added to
//! `flowtable ft` (on the uplink and the bridge) by `flow add @ft` in a
//! forward chain after the accepting one, and later packets of the flow skip
//! the forward path from the ingress hook. Needs `CONFIG_NF_FLOW_TABLE`
//! (and `CONFIG_NFT_FLOW_OFFLOAD`); [`available`] probes for it in a
//! throwaway namespace, and the bench leaves the peer out, saying so, where
//! the kernel lacks it.

use std::time::Duration;

use anyhow::Result;

use super::{
    nftables::{install, TABLE},
    nftables_sets::{self, NftablesSets},
    Install, Peer,
};
use crate::bench::{
    family::Family,
    topology::{NetNs, Topology, BRIDGE, UPLINK},
};

pub struct NftablesSetsFt;

/// What the report says where the kernel has no flowtables.
pub const UNAVAILABLE: &str =
    "nftables flowtable: not available on this kernel (CONFIG_NF_FLOW_TABLE off)";

/// Whether this kernel takes a flowtable: one is created on `lo` of a
/// throwaway namespace (deleted with it).
pub fn available() -> Result<bool> {
    let ns = NetNs::new("ftprobe")?;
    let probe =
        "table inet probe {\nflowtable ft {\nhook ingress priority 0\ndevices = { lo }\n}\n}\n";
    Ok(ns.exec_stdin(&["nft", "-f", "-"], probe.as_bytes()).is_ok())
}

pub fn ruleset(n: usize, family: Family) -> String {
    let f = family.nft();
    let mut s = nftables_sets::ruleset(n, family);
    s.push_str(&format!(
        "table {f} {TABLE} {{\n\
         flowtable ft {{\nhook ingress priority 0\ndevices = {{ {UPLINK}, {BRIDGE} }}\n}}\n\
         chain offload {{ type filter hook forward priority filter + 10; policy accept; \
         meta l4proto {{ tcp, udp }} flow add @ft; }}\n}}\n"
    ));
    s
}

impl Peer for NftablesSetsFt {
    fn name(&self) -> &'static str {
        "nftables-sets-ft"
    }

    fn setup(&mut self, topo: &Topology, n: usize) -> Result<Install> {
        install(topo, &ruleset(n, topo.family), |_| {
            "one nft -f (maps and sets, flowtable ft on up0 and br0)".into()
        })
    }

    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        // The same maps and sets as nftables-sets.
        NftablesSets.add_remove(topo)
    }
}

#[cfg(test)]
mod tests {
    use crate::bench::family::Family;

    #[test]
    fn adds_a_flowtable_to_the_sets_ruleset() {
        let r = super::ruleset(1, Family::V4);
        assert!(r.contains("dnat ip to tcp dport map @dnat_tcp"));
        assert!(r.contains("devices = { up0, br0 }"));
        assert!(r.contains("flow add @ft"));
    }
}
