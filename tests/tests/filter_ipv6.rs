//! IPv6 filter rules end to end through the CLI, in a fake host whose
//! uplink has an IPv6 address and a dual-stack network with a published
//! port: a /128 rule drops the client over IPv6 while IPv4 keeps working,
//! its counter shows in `filter ls`; a `--not-src` of the client's /64 lets
//! it through; a /64 `--src` rule inserted first drops it again.

use std::{
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use dataplane_tests::{
    cli::Cli,
    family::add6,
    netns::NetNs,
    traffic::{tcp_echo, tcp_echo_server},
};

const T: Duration = Duration::from_secs(3);
const HOST6: &str = "2001:db8:1::1";
const CLIENT6: &str = "2001:db8:1::2";

/// Packets counted per rule, in `filter ls` order.
fn counted(cli: &Cli) -> Vec<(String, u64)> {
    let v = cli
        .json(&["filter", "ls", "--format", "json"])
        .expect("filter ls");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().expect("rule").to_owned(),
                r["packets"].as_u64().expect("packets"),
            )
        })
        .collect()
}

#[test]
fn ipv6_rules_filter_a_published_port_over_ipv6_only() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = Cli::uplinked("flt6", None).expect("fake host with its uplink");
    add6(&fh.host, &fh.uplink, &format!("{HOST6}/64"));
    add6(&fh.client, &fh.client_dev, &format!("{CLIENT6}/64"));
    cli.run(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.84.0.0/24",
        "--subnet",
        "fd00:84::/64",
        "f6",
    ])
    .expect("network create --ipv6");
    let c1 = NetNs::new("flt6c1").expect("netns");
    cli.run(&["connect", "-p", "8080:80", "f6", c1.name()])
        .expect("connect -p 8080:80");
    let _echo = tcp_echo_server(&c1, "[::]:80".parse().expect("addr")).expect("echo server");
    let v6 = SocketAddr::from((HOST6.parse::<Ipv6Addr>().expect("addr"), 8080));
    let v4 = SocketAddr::from((fh.host_ip, 8080));
    let works = |dst: SocketAddr| tcp_echo(&fh.client, dst, b"hi", T).is_ok_and(|r| r == b"hi");
    assert!(works(v6), "over IPv6 before any rule");
    assert!(works(v4), "over IPv4 before any rule");

    cli.run(&["filter", "add", "--src", CLIENT6, "--action", "drop"])
        .expect("filter add");
    assert!(!works(v6), "the /128 rule drops the client over IPv6");
    assert!(works(v4), "and leaves its IPv4 alone");
    let c = counted(&cli);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].0, format!("--src {CLIENT6}/128 --action drop"));
    assert!(c[0].1 >= 1, "the drops are counted on the rule: {c:?}");

    cli.run(&["filter", "rm", "1"]).expect("filter rm");
    cli.run(&[
        "filter",
        "add",
        "--not-src",
        "2001:db8:1::/64",
        "--action",
        "drop",
    ])
    .expect("filter add");
    assert!(works(v6), "inside the --not-src /64: through");
    assert!(works(v4), "an IPv6 --not-src does not catch IPv4");

    cli.run(&[
        "filter",
        "add",
        "--first",
        "--src",
        "2001:db8:1::/64",
        "--action",
        "drop",
    ])
    .expect("filter add --first");
    assert!(!works(v6), "the /64 rule first drops it");
    assert!(works(v4), "IPv4 still through");
    let c = counted(&cli);
    assert_eq!(c[0].0, "--src 2001:db8:1::/64 --action drop");
    assert!(c[0].1 >= 1, "{c:?}");
}
