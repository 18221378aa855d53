//! `nftables`: Docker's iptables layout written as plain nftables rules in
//! one table of the fake host, one rule per mapping and per source rule
//! (linear lists, like the iptables peers but without the xtables
//! compatibility layer), loaded with one `nft -f`. On an IPv6 topology the
//! table is an `ip6` one (`ip6 daddr`, `dnat ip6 to [addr]:port`).

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result};

use super::{all_mappings, extra_sources, one_more, Install, Mapping, Peer};
use crate::bench::{
    family::{ip_port, Family},
    topology::{Topology, BRIDGE},
};

pub struct Nftables;

/// The table every nft peer uses inside its fake host.
pub const TABLE: &str = "docker_bench";

fn dnat_rule(m: &Mapping, family: Family) -> String {
    format!(
        "iifname != \"{BRIDGE}\" {p} dport {hp} dnat {f} to {to}",
        p = m.proto.as_str(),
        hp = m.host_port,
        f = family.nft(),
        to = ip_port(m.ip, m.port),
    )
}

/// The chains both nft peers share: hooks, masquerade, forward policy,
/// isolation, conntrack accept. `docker_nat`, `docker_filter` and
/// `docker_user` hold what differs and must be defined before it.
pub fn skeleton(family: Family) -> String {
    let (f, lo, subnet) = (family.nft(), family.loopback(), family.addrs().subnet);
    format!(
        "table {f} {TABLE} {{\n\
         chain prerouting {{ type nat hook prerouting priority dstnat; fib daddr type local jump docker_nat; }}\n\
         chain output {{ type nat hook output priority -100; {f} daddr != {lo} fib daddr type local jump docker_nat; }}\n\
         chain postrouting {{ type nat hook postrouting priority srcnat; {f} saddr {subnet} oifname != \"{BRIDGE}\" masquerade; }}\n\
         chain forward {{ type filter hook forward priority filter; policy drop;\n\
           jump docker_user; jump isolation1;\n\
           oifname \"{BRIDGE}\" ct state related,established accept;\n\
           oifname \"{BRIDGE}\" jump docker_filter;\n\
           iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\" accept;\n\
           iifname \"{BRIDGE}\" oifname \"{BRIDGE}\" accept; }}\n\
         chain isolation1 {{ iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\" jump isolation2; }}\n\
         chain isolation2 {{ oifname \"{BRIDGE}\" drop; }}\n\
         }}\n"
    )
}

pub fn ruleset(n: usize, family: Family) -> String {
    let mappings = all_mappings(n, family);
    let f = family.nft();
    // The chains jumped to come first: nft resolves a jump when it reads it.
    let mut s = String::with_capacity(100 * (n + 10));
    let _ = writeln!(
        s,
        "table {f} {TABLE} {{\nchain docker_nat {{\niifname \"{BRIDGE}\" return"
    );
    for m in &mappings {
        let _ = writeln!(s, "{}", dnat_rule(m, family));
    }
    s.push_str("}\nchain docker_filter {\n");
    for m in &mappings {
        let _ = writeln!(
            s,
            "{f} daddr {ip} iifname != \"{BRIDGE}\" oifname \"{BRIDGE}\" {p} dport {cp} accept",
            ip = m.ip,
            p = m.proto.as_str(),
            cp = m.port
        );
    }
    s.push_str("}\nchain docker_user {\n");
    for src in extra_sources(n, family) {
        let _ = writeln!(s, "{f} saddr {src} drop");
    }
    s.push_str("}\n}\n");
    s.push_str(&skeleton(family));
    s
}

/// `nft -f -` of `text` in the host, timed.
/// The install of an nftables-layout peer: the bridge wired, then `text`
/// in one timed `nft -f`; `note` gets the ruleset's line count.
pub fn install(topo: &Topology, text: &str, note: impl FnOnce(usize) -> String) -> Result<Install> {
    topo.wire_bridge()?;
    let total = load(topo, text)?;
    Ok(Install {
        total,
        mappings: total,
        note: Some(note(text.lines().count())),
        cli_mappings: None,
        cli_rules: None,
    })
}

pub fn load(topo: &Topology, text: &str) -> Result<Duration> {
    let t = std::time::Instant::now();
    topo.host.exec_stdin(&["nft", "-f", "-"], text.as_bytes())?;
    Ok(t.elapsed())
}

impl Peer for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn setup(&mut self, topo: &Topology, n: usize) -> Result<Install> {
        install(topo, &ruleset(n, topo.family), |lines| {
            format!("one nft -f ({lines} lines)")
        })
    }

    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        // `--echo --handle` prints the new rule's handle, which `delete`
        // needs; the printing is part of what a tool doing this pays.
        let f = topo.family.nft();
        let rule = dnat_rule(&one_more(topo.family), topo.family);
        let mut add = vec![
            "nft",
            "--echo",
            "--handle",
            "add",
            "rule",
            f,
            TABLE,
            "docker_nat",
        ];
        add.extend(rule.split_whitespace());
        // The quotes are for a shell; nft's own parser takes the bare name.
        let add: Vec<String> = add.iter().map(|a| a.replace('"', "")).collect();
        let add: Vec<&str> = add.iter().map(String::as_str).collect();
        let t = std::time::Instant::now();
        let out = topo.host.exec(&add)?;
        let add_time = t.elapsed();
        let handle = out
            .split_whitespace()
            .skip_while(|w| *w != "handle")
            .nth(1)
            .with_context(|| format!("nft --echo --handle printed no handle: {out}"))?
            .to_owned();
        let del = topo.host.timed(&[
            "nft",
            "delete",
            "rule",
            f,
            TABLE,
            "docker_nat",
            "handle",
            &handle,
        ])?;
        Ok(Some((add_time, del)))
    }
}

#[cfg(test)]
mod tests {
    use crate::bench::family::Family;

    #[test]
    fn ipv6_ruleset_has_one_ip6_rule_per_mapping_and_source() {
        let r = super::ruleset(3, Family::V6);
        assert!(r.contains("table ip6 docker_bench {"));
        assert_eq!(r.matches(" dnat ip6 to [fd00:b0::3]:80").count(), 3);
        assert!(r.contains("udp dport 7001 dnat ip6 to [fd00:b0::2]:7001"));
        assert_eq!(r.matches("ip6 saddr fd10::").count(), 3);
        assert!(r.contains("ip6 daddr != ::1/128 fib daddr type local"));
        assert!(!r.contains("ip daddr"));
    }
}
