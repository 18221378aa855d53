//! `docker-nft`: the layout Docker 29 writes with `--firewall-backend
//! nftables` (moby's `nftabler`, as its generated `nftablesdoc` pages show
//! it for a user network with published ports, userland proxy on, the
//! default): table `ip docker-bridges` (`ip6` for IPv6) with base chains
//! that dispatch through verdict maps keyed by the bridge name
//! (`oifname vmap @filter-forward-in-jumps`, ...) to per-bridge chains
//! (`filter-forward-in__br0`, ...), one `dnat` rule per published port in
//! `nat-prerouting-and-output` (a linear list, the newest container's
//! last), one `accept` per published port in `filter-forward-in__br0`
//! before its "UNPUBLISHED PORT DROP", and one "DROP DIRECT ACCESS" rule per
//! container in `raw-PREROUTING`. Every rule carries a `counter`, as
//! Docker's do. Our own generator of that shape, loaded with one `nft -f`.
//!
//! Docker's nftables backend has no DOCKER-USER chain: its documentation
//! tells users to write their own table with a forward base chain. The N
//! source rules are that table ([`user_table`]), one interval set (the best
//! a user can write; a linear list would cost every forwarded packet N rule
//! evaluations whatever the product's layout).

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result};

use super::{all_mappings, extra_sources, nftables::load, one_more, Install, Mapping, Peer};
use crate::bench::{
    family::{ip_port, Family},
    topology::{Topology, BRIDGE},
};

pub struct DockerNft {
    /// Handle of the "UNPUBLISHED PORT DROP" rule: a new port's accept is
    /// inserted before it, as Docker keeps it last.
    drop_handle: Option<String>,
}

impl DockerNft {
    pub fn new() -> DockerNft {
        DockerNft { drop_handle: None }
    }
}

const TABLE: &str = "docker-bridges";
const FWD_IN: &str = "filter-forward-in__br0";

/// The user's own filter table in place of DOCKER-USER (also used by
/// `netavark-nft`): a forward base chain just before the products'
/// (`priority filter - 1`) dropping the N sources, held in one interval set.
pub fn user_table(n: usize, family: Family) -> String {
    let (f, addr) = (family.nft(), family.nft_addr_type());
    let sources: Vec<String> = extra_sources(n, family)
        .iter()
        .map(|a| a.to_string())
        .collect();
    let elements = if sources.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }}", sources.join(", "))
    };
    format!(
        "table {f} bench-user {{\n\
         set user_src {{ type {addr}; flags interval;{elements} }}\n\
         chain forward {{ type filter hook forward priority filter - 1; policy accept; {f} saddr @user_src counter drop; }}\n\
         }}\n"
    )
}

fn dnat_rule(m: &Mapping) -> String {
    format!(
        "iifname != \"{BRIDGE}\" {p} dport {hp} counter dnat to {to} comment \"DNAT\"",
        p = m.proto.as_str(),
        hp = m.host_port,
        to = ip_port(m.ip, m.port),
    )
}

fn accept_rule(m: &Mapping, family: Family) -> String {
    format!(
        "{f} daddr {ip} {p} dport {cp} counter accept",
        f = family.nft(),
        ip = m.ip,
        p = m.proto.as_str(),
        cp = m.port
    )
}

pub fn ruleset(n: usize, family: Family) -> String {
    let mappings = all_mappings(n, family);
    let (f, lo, subnet) = (family.nft(), family.loopback(), family.addrs().subnet);
    let mut s = String::with_capacity(120 * (2 * n + 20));
    let _ = writeln!(s, "table {f} {TABLE} {{");
    // Chains before the maps and rules that jump to them.
    let _ = writeln!(
        s,
        "chain {FWD_IN} {{\nct state established,related counter accept\n\
         iifname \"{BRIDGE}\" counter accept comment \"ICC\""
    );
    for m in &mappings {
        let _ = writeln!(s, "{}", accept_rule(m, family));
    }
    let _ = writeln!(
        s,
        "counter drop comment \"UNPUBLISHED PORT DROP\"\n}}\n\
         chain filter-forward-out__br0 {{ ct state established,related counter accept; counter accept comment \"OUTGOING\"; }}\n\
         chain nat-postrouting-in__br0 {{ }}\n\
         chain nat-postrouting-out__br0 {{ oifname != \"{BRIDGE}\" {f} saddr {subnet} counter masquerade comment \"MASQUERADE\"; }}\n\
         chain nat-prerouting-and-output {{"
    );
    for m in &mappings {
        let _ = writeln!(s, "{}", dnat_rule(m));
    }
    s.push_str("}\n");
    for (map, chain) in [
        ("filter-forward-in-jumps", "filter-forward-in"),
        ("filter-forward-out-jumps", "filter-forward-out"),
        ("nat-postrouting-in-jumps", "nat-postrouting-in"),
        ("nat-postrouting-out-jumps", "nat-postrouting-out"),
    ] {
        let _ = writeln!(
            s,
            "map {map} {{ type ifname : verdict; elements = {{ \"{BRIDGE}\" : jump {chain}__{BRIDGE} }} }}"
        );
    }
    let a = family.addrs();
    let _ = writeln!(
        s,
        "chain filter-FORWARD {{ type filter hook forward priority filter; policy accept; \
         oifname vmap @filter-forward-in-jumps; iifname vmap @filter-forward-out-jumps; }}\n\
         chain nat-OUTPUT {{ type nat hook output priority -100; policy accept; \
         {f} daddr != {lo} fib daddr type local counter jump nat-prerouting-and-output; }}\n\
         chain nat-POSTROUTING {{ type nat hook postrouting priority srcnat; policy accept; \
         iifname vmap @nat-postrouting-out-jumps; oifname vmap @nat-postrouting-in-jumps; }}\n\
         chain nat-PREROUTING {{ type nat hook prerouting priority dstnat; policy accept; \
         fib daddr type local counter jump nat-prerouting-and-output; }}\n\
         chain raw-PREROUTING {{ type filter hook prerouting priority raw; policy accept;\n\
         {f} daddr {c} iifname != \"{BRIDGE}\" counter drop comment \"DROP DIRECT ACCESS\"\n\
         {f} daddr {i} iifname != \"{BRIDGE}\" counter drop comment \"DROP DIRECT ACCESS\"\n}}\n}}",
        c = a.container,
        i = a.idle,
    );
    s.push_str(&user_table(n, family));
    s
}

/// The `# handle N` numbers `nft --echo --handle` printed, in order.
pub fn echoed_handles(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.trim().to_owned()))
        .collect()
}

impl Peer for DockerNft {
    fn name(&self) -> &'static str {
        "docker-nft"
    }

    fn setup(&mut self, topo: &Topology, n: usize) -> Result<Install> {
        topo.wire_bridge()?;
        let text = ruleset(n, topo.family);
        let total = load(topo, &text)?;
        // Not timed: Docker keeps its rules' handles in memory.
        let listed = topo.host.exec(&[
            "nft",
            "-a",
            "list",
            "chain",
            topo.family.nft(),
            TABLE,
            FWD_IN,
        ])?;
        self.drop_handle = listed
            .lines()
            .find(|l| l.contains("UNPUBLISHED PORT DROP"))
            .and_then(|l| l.rsplit_once("# handle "))
            .map(|(_, h)| h.trim().to_owned());
        Ok(Install {
            total,
            mappings: total,
            note: Some(format!(
                "Docker 29 nftables layout (per-port dnat and accept rules, verdict maps per bridge), \
                 N user sources in an own table's interval set; one nft -f ({} lines)",
                text.lines().count()
            )),
            cli_mappings: None,
            cli_rules: None,
        })
    }

    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        // One transaction per direction with both of the port's rules, as
        // Docker applies a port's rules together.
        let m = one_more(topo.family);
        let f = topo.family.nft();
        let drop = self
            .drop_handle
            .as_deref()
            .context("docker-nft: no UNPUBLISHED PORT DROP rule found after setup")?;
        let add = format!(
            "add rule {f} {TABLE} nat-prerouting-and-output {}\n\
             insert rule {f} {TABLE} {FWD_IN} position {drop} {}\n",
            dnat_rule(&m),
            accept_rule(&m, topo.family)
        );
        let t = std::time::Instant::now();
        let out = topo
            .host
            .exec_stdin(&["nft", "--echo", "--handle", "-f", "-"], add.as_bytes())?;
        let add_time = t.elapsed();
        let handles = echoed_handles(&out);
        let [dnat, accept] = handles.as_slice() else {
            anyhow::bail!(
                "nft --echo --handle printed {} handles, not 2: {out}",
                handles.len()
            );
        };
        let del = format!(
            "delete rule {f} {TABLE} nat-prerouting-and-output handle {dnat}\n\
             delete rule {f} {TABLE} {FWD_IN} handle {accept}\n"
        );
        let t = std::time::Instant::now();
        topo.host.exec_stdin(&["nft", "-f", "-"], del.as_bytes())?;
        Ok(Some((add_time, t.elapsed())))
    }
}

#[cfg(test)]
mod tests {
    use crate::bench::family::Family;

    #[test]
    fn one_dnat_and_one_accept_per_mapping_in_docker_chains() {
        let r = super::ruleset(4, Family::V4);
        assert!(r.contains("table ip docker-bridges {"));
        assert_eq!(r.matches("comment \"DNAT\"").count(), 7);
        assert_eq!(
            r.matches("ip daddr 172.18.0.3 tcp dport 80 counter accept")
                .count(),
            4
        );
        assert!(r.contains("\"br0\" : jump filter-forward-in__br0"));
        assert!(r.contains("udp dport 7001 counter dnat to 172.18.0.2:7001"));
        assert!(r.contains("elements = { 10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4 }"));
        // The DNAT chain and the per-bridge chains precede what uses them.
        assert!(
            r.find("chain nat-prerouting-and-output").unwrap()
                < r.find("chain nat-OUTPUT").unwrap()
        );
    }

    #[test]
    fn ipv6_is_an_ip6_docker_bridges_table() {
        let r = super::ruleset(1, Family::V6);
        assert!(r.contains("table ip6 docker-bridges {"));
        assert!(r.contains("dnat to [fd00:b0::2]:7000 comment"));
        assert!(r.contains("ip6 daddr != ::1/128 fib daddr type local"));
        assert!(!r.contains("ip daddr") && !r.contains("ip saddr"));
    }

    #[test]
    fn handles_are_read_from_the_echo() {
        let out = "add rule ip t c tcp dport 1 accept # handle 12\ninsert rule ip t d accept # handle 13\n";
        assert_eq!(super::echoed_handles(out), ["12", "13"]);
    }
}
