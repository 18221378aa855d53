//! IPv6 on bridge networks through the `dataplane` CLI inside a fake host:
//! a dual-stack network whose endpoints reach each other and the gateway
//! over IPv6 (ping and TCP), an IPv6-only network on the host's unique
//! local prefix, `inspect` showing the addresses, the kernel side (no DAD,
//! the default route via the gateway, forwarding in the host namespace)
//! and disconnect/rm removing it. The BPF programs pass IPv6 frames
//! untouched: this is the control side, the kernel forwards.

use std::{
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use dataplane_tests::{
    cli::{stop_agent, Cli},
    netns::NetNs,
    topo::FakeHost,
    traffic::{tcp_echo, tcp_echo_server},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

fn setup(tag: &str) -> (FakeHost, Cli) {
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, tag).expect("cli");
    (fh, cli)
}

fn inspect(cli: &Cli, net: &str) -> Value {
    cli.json(&["network", "inspect", net]).expect("inspect")[0].clone()
}

/// `ping -6` from `ns` to `dst`: whether every echo came back, bounded by
/// `T` (ping's own deadline, and the command's timeout).
fn ping6(ns: &NetNs, dst: Ipv6Addr) -> bool {
    let dst = dst.to_string();
    let secs = T.as_secs().to_string();
    let out = ns
        .exec_output(
            &[
                "ping", "-6", "-n", "-q", "-c", "2", "-i", "0.2", "-W", &secs, "-w", &secs, &dst,
            ],
            T + Duration::from_secs(5),
        )
        .expect("ping -6 runs");
    out.success()
}

/// The global IPv6 addresses of `dev` in `ns`, as `addr/len`, with their
/// DAD flags (`nodad`: added without it; `tentative`: still in it).
fn addrs6(ns: &NetNs, dev: &str) -> Vec<(String, Vec<String>)> {
    let v = ns
        .ip_json(&["-6", "addr", "show", "dev", dev, "scope", "global"])
        .unwrap_or(Value::Array(Vec::new()));
    let mut out = Vec::new();
    for link in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let infos = link["addr_info"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        // `ip -j` lists the link's other entries as objects without `local`.
        for a in infos.iter().filter(|a| a["local"].is_string()) {
            let flags = ["tentative", "dadfailed", "nodad"]
                .iter()
                .filter(|f| a[**f] == true)
                .map(|f| (*f).to_owned())
                .collect();
            out.push((
                format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]),
                flags,
            ));
        }
    }
    out
}

fn default6(ns: &NetNs) -> Option<String> {
    let v = ns.ip_json(&["-6", "route", "show", "default"]).ok()?;
    v.as_array()?.first()?["gateway"]
        .as_str()
        .map(str::to_owned)
}

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 address")
}

#[test]
fn dual_stack_endpoints_reach_each_other_and_the_gateway_over_ipv6() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("v6ds");
    cli.run(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.81.0.0/24",
        "--subnet",
        "fd00:81::/64",
        "ds",
    ])
    .expect("network create --ipv6");
    let c1 = NetNs::new("v6c1").expect("netns");
    let c2 = NetNs::new("v6c2").expect("netns");
    cli.run(&["connect", "ds", c1.name()]).expect("connect c1");
    cli.run(&["connect", "--ip6", "fd00:81::a", "ds", c2.name()])
        .expect("connect c2 --ip6");

    let v = inspect(&cli, "ds");
    assert_eq!(v["EnableIPv6"], true, "{v}");
    assert_eq!(v["EnableIPv4"], true, "{v}");
    assert_eq!(
        v["IPAM"]["Config"],
        serde_json::json!([
            {"Subnet": "10.81.0.0/24", "Gateway": "10.81.0.1"},
            {"Subnet": "fd00:81::/64", "Gateway": "fd00:81::1"}
        ])
    );
    let shown: Vec<(String, String)> = v["Containers"]
        .as_object()
        .expect("containers")
        .values()
        .map(|c| {
            (
                c["IPv4Address"].as_str().unwrap_or_default().to_owned(),
                c["IPv6Address"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        shown.contains(&("10.81.0.2/24".into(), "fd00:81::2/64".into()))
            && shown.contains(&("10.81.0.3/24".into(), "fd00:81::a/64".into())),
        "{shown:?}"
    );

    // The kernel side: the address usable at once, the default route via
    // the gateway, the gateway on the bridge, forwarding on in the host.
    assert_eq!(
        addrs6(&c1, "eth0"),
        [("fd00:81::2/64".to_owned(), vec!["nodad".to_owned()])]
    );
    assert_eq!(default6(&c1).as_deref(), Some("fd00:81::1"));
    assert_eq!(
        fh.host
            .sysctl_get("net.ipv6.conf.all.forwarding")
            .expect("sysctl"),
        "1"
    );

    assert!(ping6(&c1, ip("fd00:81::a")), "c1 -> c2 over IPv6");
    assert!(ping6(&c2, ip("fd00:81::2")), "c2 -> c1 over IPv6");
    assert!(ping6(&c1, ip("fd00:81::1")), "c1 -> the gateway");
    let server = SocketAddr::from((ip("fd00:81::a"), 7000));
    let _echo = tcp_echo_server(&c2, server).expect("echo server on [fd00:81::a]:7000");
    assert_eq!(
        tcp_echo(&c1, server, b"over v6", T).expect("tcp to [fd00:81::a]:7000"),
        b"over v6"
    );

    cli.run(&["disconnect", "ds", c1.name()])
        .expect("disconnect");
    assert!(!c1.link_names().expect("links").contains(&"eth0".to_owned()));
    assert_eq!(default6(&c1), None, "the route went with the link");
    let v = inspect(&cli, "ds");
    assert_eq!(v["Containers"].as_object().map(|c| c.len()), Some(1));
    cli.run(&["network", "rm", "--force", "ds"]).expect("rm");
    assert!(!c2.link_names().expect("links").contains(&"eth0".to_owned()));
}

#[test]
fn an_ipv6_only_network_on_the_hosts_ula_prefix_works() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (_fh, cli) = setup("v6only");
    cli.run(&["network", "create", "--ipv6", "--ipv4=false", "v6o"])
        .expect("network create --ipv6 --ipv4=false");
    let v = inspect(&cli, "v6o");
    assert_eq!(
        (v["EnableIPv4"].clone(), v["EnableIPv6"].clone()),
        (false.into(), true.into())
    );
    let config = v["IPAM"]["Config"].as_array().expect("config").clone();
    assert_eq!(config.len(), 1, "{config:?}");
    let subnet = config[0]["Subnet"].as_str().expect("subnet").to_owned();
    let (net, len) = subnet.split_once('/').expect("a CIDR");
    let net = ip(net);
    assert_eq!((len, net.octets()[0]), ("64", 0xfd), "a ULA /64: {subnet}");
    let gw = Ipv6Addr::from(u128::from(net) + 1);
    assert_eq!(config[0]["Gateway"], gw.to_string());

    let c1 = NetNs::new("v6o1").expect("netns");
    let c2 = NetNs::new("v6o2").expect("netns");
    cli.run(&["connect", "v6o", c1.name()]).expect("connect c1");
    cli.run(&["connect", "v6o", c2.name()]).expect("connect c2");
    let a2 = Ipv6Addr::from(u128::from(gw) + 2);
    let v4: Vec<Value> = c1
        .ip_json(&["-4", "addr", "show", "dev", "eth0"])
        .expect("ip -4 addr")
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        v4.iter()
            .all(|l| l["addr_info"].as_array().is_none_or(Vec::is_empty)),
        "no IPv4 on an IPv6-only network: {v4:?}"
    );
    assert_eq!(default6(&c2).as_deref(), Some(gw.to_string().as_str()));
    assert!(ping6(&c1, a2), "c1 -> c2 ({a2})");
    assert!(ping6(&c2, gw), "c2 -> the gateway ({gw})");
    let v = inspect(&cli, "v6o");
    let c = v["Containers"].as_object().expect("containers");
    assert!(c.values().all(|c| c["IPv4Address"] == ""), "{c:?}");
    assert!(
        c.values().any(|c| c["IPv6Address"] == format!("{a2}/64")),
        "{c:?}"
    );
    cli.run(&["disconnect", "v6o", c1.name()])
        .expect("disconnect");
    assert!(addrs6(&c1, "eth0").is_empty());
    cli.run(&["disconnect", "v6o", c2.name()])
        .expect("disconnect");
    cli.run(&["network", "rm", "v6o"]).expect("rm");
}

#[test]
fn ipv6_input_is_refused_naming_the_flag() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (_fh, cli) = setup("v6bad");
    for (args, needle) in [
        (
            &["network", "create", "--subnet", "fd00:83::/64", "x"][..],
            "--subnet fd00:83::/64: an IPv6 value needs --ipv6",
        ),
        (
            &[
                "network",
                "create",
                "--ipv6",
                "--subnet",
                "fd00:83::/40",
                "x",
            ][..],
            "IPv6 prefix length must be between 48 and 120",
        ),
        (
            &["network", "create", "--ipv4=false", "x"][..],
            "--ipv4=false needs --ipv6",
        ),
    ] {
        let err = cli.fail(args).expect("refused");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    cli.run(&["network", "create", "--subnet", "10.84.0.0/24", "v4"])
        .expect("create v4");
    let c = NetNs::new("v6bad").expect("netns");
    let err = cli
        .fail(&["connect", "--ip6", "fd00::5", "v4", c.name()])
        .expect("refused");
    assert!(
        err.contains("--ip6 fd00::5: network v4 has no IPv6"),
        "{err}"
    );
    let err = cli
        .fail(&["connect", "-p", "[::1]:8080:80", "v4", c.name()])
        .expect("refused");
    assert!(err.contains("network v4 has no IPv6"), "{err}");
    assert!(!c.link_names().expect("links").contains(&"eth0".to_owned()));
}

#[test]
fn the_agent_gives_the_default_bridge_ipv6_when_configured() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = Cli::uplinked(
        "v6dflt",
        Some("default_bridge_ipv6 = true\ndefault_bridge_subnet6 = \"fd00:85::/64\"\n"),
    )
    .expect("fake host with its uplink");
    let (agent, log) = cli.start_agent(&fh.uplink).expect("agent");
    let stop = || stop_agent(agent, libc::SIGTERM);
    let v = inspect(&cli, "bridge");
    assert_eq!(v["EnableIPv6"], true, "{v}\n{log}");
    assert_eq!(v["IPAM"]["Config"][1]["Subnet"], "fd00:85::/64", "{v}");
    let c1 = NetNs::new("v6d1").expect("netns");
    let c2 = NetNs::new("v6d2").expect("netns");
    cli.run(&["connect", "bridge", c1.name()])
        .expect("connect c1");
    cli.run(&["connect", "bridge", c2.name()])
        .expect("connect c2");
    assert!(ping6(&c1, ip("fd00:85::3")), "c1 -> c2");
    assert!(ping6(&c2, ip("fd00:85::1")), "c2 -> the gateway");
    cli.run(&["disconnect", "bridge", c1.name()])
        .expect("disconnect");
    cli.run(&["disconnect", "bridge", c2.name()])
        .expect("disconnect");
    stop().expect("stop agent");
    cli.run(&["cleanup"]).expect("cleanup");
}
