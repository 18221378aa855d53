//! IPv6 networks and endpoints against the fake host: `--ipv6` with and
//! without a subnet (the host's ULA prefix, stable across a restart),
//! IPv6-only networks, `--ip6`, the refusals, `inspect` and published
//! ports on IPv6 addresses.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{args, connect, open, refused, snapshot, Dir, M};
use crate::control::{
    inspect::network_json,
    manager::NetworkError,
    model::{CreateArgs, Network},
};

fn v6_args(name: &str, subnets: &[&str]) -> CreateArgs {
    CreateArgs {
        name: name.into(),
        driver: "bridge".into(),
        subnet: subnets.iter().map(|s| (*s).to_owned()).collect(),
        ipv6: true,
        ..CreateArgs::default()
    }
}

async fn create6(m: &mut M, a: CreateArgs) -> Result<Network, NetworkError> {
    let req = a.parse()?;
    m.create(req).await
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// The bridge's IPv6 addresses on the fake host.
fn bridge_addrs6(m: &M, net: &Network) -> Vec<(Ipv6Addr, u8)> {
    let h = m.host().get();
    let Some(br) = h.by_name(&super::bridge_of(net)).map(|l| l.index) else {
        return Vec::new();
    };
    h.addrs6
        .iter()
        .filter(|(i, _, _)| *i == br)
        .map(|(_, a, p)| (*a, *p))
        .collect()
}

#[tokio::test]
async fn create_ipv6_with_a_subnet_puts_the_gateway_on_the_bridge() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    let net = create6(&mut m, v6_args("d1", &["10.30.0.0/24", "2001:db8:30::/64"]))
        .await
        .unwrap();
    assert!(net.enable_ipv6 && net.enable_ipv4);
    assert_eq!(net.subnet.unwrap().to_string(), "10.30.0.0/24");
    assert_eq!(net.subnet6.unwrap().to_string(), "2001:db8:30::/64");
    assert_eq!(net.gateway6, Some(ip6("2001:db8:30::1")));
    assert_eq!(bridge_addrs6(&m, &net), [(ip6("2001:db8:30::1"), 64)]);
    assert!(m.host().get().forwarding6, "IPv6 forwarding on");
    // A given gateway and range are kept.
    let mut a = v6_args("d2", &["2001:db8:31::/64"]);
    a.gateway = vec!["2001:db8:31::fe".into()];
    a.ip_range = vec!["2001:db8:31::100/120".into()];
    let net = create6(&mut m, a).await.unwrap();
    assert_eq!(net.gateway6, Some(ip6("2001:db8:31::fe")));
    assert_eq!(
        net.alloc_range6().unwrap().to_string(),
        "2001:db8:31::100/120"
    );
    // IPv4 comes from the default pools as before.
    assert_eq!(net.subnet.unwrap().to_string(), "172.18.0.0/16");
}

#[tokio::test]
async fn a_ula_prefix_is_made_once_and_kept_across_restarts() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    assert_eq!(m.state().ula_global_id, None, "made with the first use");
    let a = create6(&mut m, v6_args("u1", &[])).await.unwrap();
    let id = m.state().ula_global_id.expect("global id stored");
    let s1 = a.subnet6.unwrap();
    assert_eq!(
        s1,
        crate::control::ipam::v6::next_free_ula(id, &[]).unwrap()
    );
    assert_eq!(s1.prefix_len(), 64);
    assert_eq!(s1.addr().segments()[0] >> 8, 0xfd, "fd00::/8: {s1}");
    let b = create6(&mut m, v6_args("u2", &[])).await.unwrap();
    let s2 = b.subnet6.unwrap();
    assert_eq!(
        s2.addr().segments()[..3],
        s1.addr().segments()[..3],
        "one /48"
    );
    assert_eq!(
        s2.addr().segments()[3],
        s1.addr().segments()[3] + 1,
        "next /64"
    );
    drop(m);
    let mut m = open(&dir).await;
    assert_eq!(m.state().ula_global_id, Some(id), "stable across a restart");
    let c = create6(&mut m, v6_args("u3", &[])).await.unwrap();
    assert_eq!(
        c.subnet6.unwrap().addr().segments()[3],
        s1.addr().segments()[3] + 2
    );
    // A removed network's /64 is free again.
    m.remove(&["u1".into()], false).await.unwrap();
    let d = create6(&mut m, v6_args("u4", &[])).await.unwrap();
    assert_eq!(d.subnet6, Some(s1));
}

#[tokio::test]
async fn an_ipv6_only_network_has_no_ipv4_anywhere() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("c1");
    let mut a = v6_args("v6only", &["fd00:40::/64"]);
    a.ipv4 = Some(false);
    let net = create6(&mut m, a).await.unwrap();
    assert!(!net.enable_ipv4 && net.enable_ipv6);
    assert_eq!((net.subnet, net.gateway), (None, None));
    let ep = connect(&mut m, args("v6only", "c1")).await;
    assert_eq!(ep.ipv4, None);
    assert_eq!(ep.ipv6, Some(ip6("fd00:40::2")));
    assert_eq!(
        ep.mac.map(|m| m.to_string()).as_deref(),
        Some("02:42:00:00:00:02")
    );
    let ns = m.host().get().netns[&ep.netns].clone();
    assert!(ns.addrs.is_empty() && ns.routes.is_empty(), "no IPv4");
    assert_eq!(ns.addrs6.len(), 1);
    assert_eq!((ns.addrs6[0].1, ns.addrs6[0].2), (ip6("fd00:40::2"), 64));
    assert_eq!(ns.routes6.len(), 1);
    assert_eq!(ns.routes6[0].gateway, Some(ip6("fd00:40::1")));
    assert_eq!(ns.routes6[0].prefix_len, 0);
    // --ip on it names the missing family.
    m.host().add_netns("c2");
    let mut a = args("v6only", "c2");
    a.ip = Some("10.0.0.5".into());
    let before = snapshot(&m);
    let r = m.connect(&a).await;
    refused(
        &m,
        &before,
        r,
        &["--ip 10.0.0.5", "network v6only has no IPv4"],
    );
    // Disconnect removes the addresses and the route.
    m.disconnect("v6only", "c1").await.unwrap();
    let h = m.host().get();
    let ns = &h.netns[&ep.netns];
    assert!(ns.addrs6.is_empty() && ns.routes6.is_empty());
}

#[tokio::test]
async fn dual_stack_endpoints_get_both_addresses_and_ip6_is_checked() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    for ns in ["c1", "c2", "c3"] {
        m.host().add_netns(ns);
    }
    let mut a = v6_args("d", &["10.31.0.0/24", "2001:db8:41::/64"]);
    a.ip_range = vec!["2001:db8:41::100/120".into()];
    create6(&mut m, a).await.unwrap();
    let ep = connect(&mut m, args("d", "c1")).await;
    assert_eq!(ep.ipv4, Some(Ipv4Addr::new(10, 31, 0, 2)));
    assert_eq!(ep.ipv6, Some(ip6("2001:db8:41::101")), "from the range");
    assert_eq!(
        ep.mac.map(|m| m.to_string()).as_deref(),
        Some("02:42:0a:1f:00:02"),
        "the IPv4 MAC as before"
    );
    let mut a = args("d", "c2");
    a.ip6 = Some("2001:db8:41::1a0".into());
    let ep2 = connect(&mut m, a).await;
    assert_eq!(ep2.ipv6, Some(ip6("2001:db8:41::1a0")));
    let before = snapshot(&m);
    for (ip6, words) in [
        (
            "2001:db8:41::1a0",
            &["--ip6 2001:db8:41::1a0", "in use by endpoint c2"][..],
        ),
        (
            "2001:db8:41::1",
            &["--ip6 2001:db8:41::1", "in use by the gateway"][..],
        ),
        (
            "2001:db8:99::5",
            &["--ip6 2001:db8:99::5", "not a usable address"][..],
        ),
        (
            "2001:db8:41::5",
            &["--ip6 2001:db8:41::5", "2001:db8:41::100/120"][..],
        ),
    ] {
        let mut a = args("d", "c3");
        a.ip6 = Some(ip6.into());
        let r = m.connect(&a).await;
        refused(&m, &before, r, words);
    }
    let mut a = args("d", "c3");
    a.ip6 = Some("not-an-address".into());
    let r = m.connect(&a).await;
    refused(
        &m,
        &before,
        r,
        &["--ip6 not-an-address", "not an IPv6 address"],
    );
    // On an IPv4-only network --ip6 names the missing family.
    super::create(&mut m, "v4", Some("10.32.0.0/24"))
        .await
        .unwrap();
    let before = snapshot(&m);
    let mut a = args("v4", "c3");
    a.ip6 = Some("fd00::5".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["--ip6 fd00::5", "network v4 has no IPv6"]);
}

#[tokio::test]
async fn ipv6_create_refusals_name_the_field_and_value() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    create6(&mut m, v6_args("d", &["2001:db8:50::/64"]))
        .await
        .unwrap();
    let before = snapshot(&m);
    let mut no_v6 = v6_args("x", &["fd00:1::/64"]);
    no_v6.ipv6 = false;
    let mut v4_off = v6_args("x", &["10.9.0.0/24"]);
    v4_off.ipv4 = Some(false);
    let mut none = v6_args("x", &[]);
    none.ipv6 = false;
    none.ipv4 = Some(false);
    let mut gw = v6_args("x", &["fd00:2::/64"]);
    gw.gateway = vec!["fd00:3::1".into()];
    let mut gw_alone = v6_args("x", &[]);
    gw_alone.gateway = vec!["fd00:3::1".into()];
    let mut twice = v6_args("x", &["fd00:4::/64", "fd00:5::/64"]);
    twice.ip_range = Vec::new();
    let cases: Vec<(CreateArgs, &[&str])> = vec![
        (
            v6_args("x", &["2001:db8:50:0:1::/80"]),
            &["--subnet 2001:db8:50:0:1::/80 overlaps network d (2001:db8:50::/64)"],
        ),
        (
            v6_args("x", &["fd00::/33"]),
            &["--subnet fd00::/33", "between 48 and 120"],
        ),
        (
            v6_args("x", &["fd00::zz/64"]),
            &["--subnet fd00::zz/64", "not an IPv6 CIDR"],
        ),
        (
            v6_args("x", &["fd00::1/64"]),
            &["--subnet fd00::1/64", "host bits"],
        ),
        (no_v6, &["--subnet fd00:1::/64", "needs --ipv6"]),
        (v4_off, &["--subnet 10.9.0.0/24", "--ipv4=false"]),
        (none, &["--ipv4=false needs --ipv6"]),
        (gw, &["--gateway fd00:3::1", "fd00:2::/64"]),
        (gw_alone, &["--gateway fd00:3::1", "needs an IPv6 --subnet"]),
        (
            twice,
            &[
                "--subnet: given twice for IPv6",
                "fd00:4::/64 and fd00:5::/64",
            ],
        ),
    ];
    for (a, words) in cases {
        let r = create6(&mut m, a).await;
        refused(&m, &before, r, words);
    }
}

#[tokio::test]
async fn inspect_shows_both_families_as_docker_does() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("c1");
    let net = create6(&mut m, v6_args("d", &["10.33.0.0/24", "2001:db8:60::/64"]))
        .await
        .unwrap();
    connect(&mut m, args("d", "c1")).await;
    let v = network_json(m.state(), &net);
    assert_eq!(v["EnableIPv6"], true);
    assert_eq!(v["EnableIPv4"], true);
    assert_eq!(
        v["IPAM"]["Config"],
        serde_json::json!([
            {"Subnet": "10.33.0.0/24", "Gateway": "10.33.0.1"},
            {"Subnet": "2001:db8:60::/64", "Gateway": "2001:db8:60::1"}
        ])
    );
    let c = &v["Containers"]["/var/run/netns/c1"];
    assert_eq!(c["IPv4Address"], "10.33.0.2/24");
    assert_eq!(c["IPv6Address"], "2001:db8:60::2/64");
    // An IPv4-only network shows what it did before.
    let bridge = m.network("bridge").unwrap().clone();
    let v = network_json(m.state(), &bridge);
    assert_eq!(
        (v["EnableIPv6"].clone(), v["EnableIPv4"].clone()),
        (false.into(), true.into())
    );
    assert_eq!(v["IPAM"]["Config"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn ports_on_ipv6_addresses_need_a_network_with_ipv6() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("c1");
    m.host().add_netns("c2");
    super::create(&mut m, "v4", Some("10.34.0.0/24"))
        .await
        .unwrap();
    let before = snapshot(&m);
    let mut a = args("v4", "c1");
    a.publish = vec!["[::1]:8080:80".parse().unwrap()];
    let r = m.connect(&a).await;
    refused(
        &m,
        &before,
        r,
        &["--publish [::1]:8080->80/tcp", "network v4 has no IPv6"],
    );
    create6(&mut m, v6_args("d", &["2001:db8:70::/64"]))
        .await
        .unwrap();
    let mut a = args("d", "c2");
    a.publish = vec![
        "[2001:db8::1]:8080:80/udp".parse().unwrap(),
        "8081:81".parse().unwrap(),
    ];
    let ep = connect(&mut m, a).await;
    let shown: Vec<String> = ep.published.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["[2001:db8::1]:8080->80/udp", "0.0.0.0:8081->81/tcp"]
    );
    // Stored and read back as they were.
    drop(m);
    let m = open(&dir).await;
    assert_eq!(m.state().endpoints[&ep.id].published, ep.published);
}

#[tokio::test]
async fn docker_endpoints_take_their_ipv6_address_and_join_with_the_gateway() {
    use std::path::PathBuf;

    use super::{docker_network_name, EID, NID};
    let dir = Dir::new();
    let mut m = open(&dir).await;
    let mut a = v6_args(&docker_network_name(NID), &["10.99.0.0/24", "fd00:99::/64"]);
    a.gateway = vec!["10.99.0.1".into(), "fd00:99::1".into()];
    m.docker_create_network(NID, a.parse().unwrap())
        .await
        .unwrap();
    let taken = m
        .docker_create_endpoint(NID, EID, (None, Some(ip6("fd00:99::1"))), None)
        .await;
    assert!(taken
        .expect_err("the gateway")
        .to_string()
        .contains("--ip6 fd00:99::1: already in use by the gateway"));
    let ep = m
        .docker_create_endpoint(
            NID,
            EID,
            (Some(Ipv4Addr::new(10, 99, 0, 2)), Some(ip6("fd00:99::2"))),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ep.ipv6, Some(ip6("fd00:99::2")));
    m.host().add_netns("sb");
    let join = m
        .docker_join(NID, EID, &PathBuf::from("/var/run/netns/sb"))
        .await
        .unwrap();
    assert_eq!(join.gateway, Some(Ipv4Addr::new(10, 99, 0, 1)));
    assert_eq!(join.gateway6, Some(ip6("fd00:99::1")));
}

#[tokio::test]
async fn cni_add_on_a_dual_stack_network_reports_both_addresses() {
    use crate::control::cni::NetworkSpec;
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("p1");
    let mut add = super::cni_add("0123456789abcdef", "p1");
    add.create = Some(NetworkSpec {
        subnet: Some("10.89.0.0/24".into()),
        subnet6: Some("fd00:89::/64".into()),
        ipv6: true,
        ..NetworkSpec::default()
    });
    add.ip6 = Some("fd00:89::9".into());
    add.publish = vec!["[::1]:8089:80".into()];
    let r = m.cni_add(&add).await.unwrap();
    assert_eq!(r.ipv4, Ipv4Addr::new(10, 89, 0, 2));
    assert_eq!(r.ipv6, Some((ip6("fd00:89::9"), 64)));
    assert_eq!(r.gateway6, Some(ip6("fd00:89::1")));
    assert!(r.default_route && r.default_route6);
    let ep = &m.state().endpoints.values().next().unwrap().clone();
    assert_eq!(ep.published[0].to_string(), "[::1]:8089->80/tcp");
    // IPv6 only: a network made from the IPv6 range alone.
    m.host().add_netns("p2");
    let mut add = super::cni_add("fedcba9876543210", "p2");
    add.network = "cni6".into();
    add.create = Some(NetworkSpec {
        subnet6: Some("fd00:90::/64".into()),
        ipv6: true,
        ..NetworkSpec::default()
    });
    add.publish = Vec::new();
    let r = m.cni_add(&add).await.unwrap();
    assert_eq!(r.ipv4, Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.gateway, None);
    assert_eq!(r.ipv6, Some((ip6("fd00:90::2"), 64)));
    assert!(!m.network("cni6").unwrap().enable_ipv4);
}

#[tokio::test]
async fn the_default_bridge_gets_ipv6_once_and_keeps_it() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("c1");
    let changed = m
        .default_bridge_ipv6(Some("fd00:b::/64".parse().unwrap()))
        .await
        .unwrap();
    assert!(
        changed[0].contains("IPv6 on, subnet fd00:b::/64"),
        "{changed:?}"
    );
    let bridge = m.network("bridge").unwrap().clone();
    assert!(bridge.enable_ipv6 && bridge.enable_ipv4);
    assert_eq!(bridge.gateway6, Some(ip6("fd00:b::1")));
    assert_eq!(bridge_addrs6(&m, &bridge), [(ip6("fd00:b::1"), 64)]);
    let ep = connect(&mut m, args("bridge", "c1")).await;
    assert_eq!(ep.ipv6, Some(ip6("fd00:b::2")));
    // Again (every agent start): nothing changes; another subnet is
    // reported, not applied.
    assert!(m.default_bridge_ipv6(None).await.unwrap().is_empty());
    let kept = m
        .default_bridge_ipv6(Some("fd00:c::/64".parse().unwrap()))
        .await
        .unwrap();
    assert!(kept[0].contains("kept on fd00:b::/64"), "{kept:?}");
    assert_eq!(m.network("bridge").unwrap().subnet6, bridge.subnet6);
    // A bad subnet is refused by name.
    let dir2 = Dir::new();
    let mut m2 = open(&dir2).await;
    let e = m2
        .default_bridge_ipv6(Some("fe80::/64".parse().unwrap()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("link-local"), "{e}");
    // Without a subnet: the host's ULA prefix.
    let changed = m2.default_bridge_ipv6(None).await.unwrap();
    assert!(m2.state().ula_global_id.is_some(), "{changed:?}");
}

#[tokio::test]
async fn a_cni_range_that_differs_from_the_existing_network_is_refused() {
    use crate::control::cni::NetworkSpec;
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("p1");
    m.host().add_netns("p2");
    let mut add = super::cni_add("0123456789abcdef", "p1");
    add.create = Some(NetworkSpec {
        subnet: Some("10.88.0.0/16".into()),
        subnet6: Some("fd00:88::/64".into()),
        ipv6: true,
        ..NetworkSpec::default()
    });
    add.publish = Vec::new();
    m.cni_add(&add).await.unwrap();
    let mut other = super::cni_add("fedcba9876543210", "p2");
    other.create = Some(NetworkSpec {
        subnet: Some("10.88.0.0/16".into()),
        subnet6: Some("fd00:99::/64".into()),
        ipv6: true,
        ..NetworkSpec::default()
    });
    other.publish = Vec::new();
    let e = m.cni_add(&other).await.unwrap_err().to_string();
    assert!(
        e.contains("ipam.ranges") && e.contains("fd00:99::/64") && e.contains("fd00:88::/64"),
        "{e}"
    );
}

#[tokio::test]
async fn a_restart_brings_back_the_ipv6_side_of_a_lost_bridge_and_endpoint() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("c1");
    let net = create6(&mut m, v6_args("d", &["10.35.0.0/24", "fd00:35::/64"]))
        .await
        .unwrap();
    let ep = connect(&mut m, args("d", "c1")).await;
    let br = super::bridge_of(&net);
    let (_, host) = m.into_parts();
    {
        let mut h = host.get();
        let index = h.by_name(&br).map(|l| l.index);
        h.links
            .retain(|_, l| Some(l.index) != index && l.master != index);
        h.addrs6.clear();
        h.forwarding6 = false;
        let ns = h.netns.get_mut(&ep.netns).unwrap();
        ns.links.retain(|l| l.name != "eth0");
        ns.addrs6.clear();
        ns.routes6.clear();
    }
    let mut m = super::open_on(&dir, host).await;
    let changed = m.reconcile().await.unwrap();
    assert!(
        changed
            .iter()
            .any(|c| c == &format!("added fd00:35::1/64 to {br}")),
        "{changed:?}"
    );
    assert!(m.host().get().forwarding6);
    let ns = m.host().get().netns[&ep.netns].clone();
    assert_eq!(ns.addrs6.len(), 1);
    assert_eq!(ns.addrs6[0].1, ip6("fd00:35::2"));
    assert_eq!(ns.routes6[0].gateway, Some(ip6("fd00:35::1")));
}

#[tokio::test]
async fn publish_refuses_an_ipv6_port_a_host_process_listens_on() {
    use crate::control::ports::Proto;
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("c1");
    create6(&mut m, v6_args("d", &["2001:db8:71::/64"]))
        .await
        .unwrap();
    m.host().hold_port(
        Proto::Tcp,
        Some(Ipv6Addr::LOCALHOST.into()),
        8080,
        "nginx (pid 42)",
    );
    m.host().hold_port(
        Proto::Udp,
        Some(ip6("2001:db8::1").into()),
        5353,
        "avahi-daemon (pid 44)",
    );
    m.host().hold_port(
        Proto::Tcp,
        Some(Ipv4Addr::LOCALHOST.into()),
        9090,
        "python3 (pid 43)",
    );
    let mut a = args("d", "c1");
    a.publish = vec!["[::1]:8080:80".parse().unwrap()];
    let before = snapshot(&m);
    let r = m.connect(&a).await;
    refused(
        &m,
        &before,
        r,
        &[
            "--publish [::1]:8080->80/tcp",
            "[::1]:8080/tcp is in use on the host by nginx (pid 42)",
        ],
    );
    connect(&mut m, args("d", "c1")).await;
    for (spec, words) in [
        // Every address: both families are asked.
        ("8080:80", ["[::1]:8080/tcp", "nginx"]),
        (
            "[2001:db8::1]:5353:53/udp",
            ["[2001:db8::1]:5353/udp", "avahi-daemon"],
        ),
    ] {
        let before = snapshot(&m);
        let r = m.publish_add("d", "c1", &[spec.into()]).await;
        refused(&m, &before, r, &words);
    }
    // Another address, another family, another protocol: free.
    let added = m
        .publish_add(
            "d",
            "c1",
            &[
                "[2001:db8::2]:8080:80".into(),
                "[::1]:9090:90".into(),
                "[::1]:8080:80/udp".into(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(added.len(), 3);
}

#[tokio::test]
async fn a_network_may_not_take_an_uplinks_ipv6_prefix() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    {
        let mut h = m.host().get();
        let eth0 = h.by_name("eth0").expect("fake uplink").index;
        h.addrs6.push((eth0, ip6("2001:db8:99::2"), 64));
        h.addrs6.push((eth0, ip6("fe80::2"), 64));
    }
    let before = snapshot(&m);
    for subnet in [
        "2001:db8:99::/64",
        "2001:db8:99:0:8000::/80",
        "2001:db8:99::/48",
    ] {
        let r = create6(&mut m, v6_args("x", &[subnet])).await;
        refused(
            &m,
            &before,
            r,
            &[
                &format!("--subnet {subnet}"),
                "overlaps uplink eth0's IPv6 prefix 2001:db8:99::/64",
                "the host's address 2001:db8:99::2",
            ],
        );
    }
    create6(&mut m, v6_args("ok", &["2001:db8:98::/64"]))
        .await
        .unwrap();
    // A unique local /64 is never one an uplink has: the next one is
    // taken instead.
    let first = create6(&mut m, v6_args("u1", &[])).await.unwrap();
    let taken = first.subnet6.expect("ULA subnet");
    m.remove(&["u1".into()], false).await.unwrap();
    {
        let mut h = m.host().get();
        let eth0 = h.by_name("eth0").expect("fake uplink").index;
        h.addrs6.push((eth0, taken.network(), 64));
    }
    let next = create6(&mut m, v6_args("u2", &[])).await.unwrap();
    assert_ne!(next.subnet6, Some(taken), "the uplink's prefix is skipped");
}
