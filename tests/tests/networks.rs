//! Docker's network model through the `dataplane` CLI, inside a fake host:
//! the scenarios a Docker user would try, checked against the kernel with
//! `ip -j` inside the namespaces.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use dataplane_tests::{
    cli::Cli,
    netns::{add_addr, link_up, veth_pair, NetNs},
    topo::FakeHost,
    traffic::{http_get, http_server, ping},
    unique_ifname,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

fn setup(tag: &str) -> (FakeHost, Cli) {
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, tag).expect("cli");
    (fh, cli)
}

fn inspect(cli: &Cli, net: &str) -> Value {
    let v = cli.json(&["network", "inspect", net]).expect("inspect");
    v[0].clone()
}

/// (ifname, [addr/prefix]) of every link in `ns` from `ip -j addr`.
fn addrs(ns: &NetNs) -> Vec<(String, Vec<String>, bool, String)> {
    let v = ns.ip_json(&["addr", "show"]).expect("ip addr");
    v.as_array()
        .expect("array")
        .iter()
        .map(|l| {
            let name = l["ifname"].as_str().unwrap_or_default().to_owned();
            let a = l["addr_info"]
                .as_array()
                .map(|ai| {
                    ai.iter()
                        .filter(|a| a["family"] == "inet")
                        .map(|a| {
                            format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"])
                        })
                        .collect()
                })
                .unwrap_or_default();
            let up = l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP"));
            let mac = l["address"].as_str().unwrap_or_default().to_owned();
            (name, a, up, mac)
        })
        .collect()
}

fn default_gw(ns: &NetNs) -> Option<String> {
    let v = ns.ip_json(&["route", "show", "default"]).expect("ip route");
    v.as_array()?.first()?["gateway"]
        .as_str()
        .map(str::to_owned)
}

fn link_names(ns: &NetNs) -> Vec<String> {
    addrs(ns).into_iter().map(|(n, ..)| n).collect()
}

#[test]
fn predefined_networks_exist_from_the_start() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("predef");
    let ls = cli.run(&["network", "ls"]).expect("ls");
    for (name, driver) in [("bridge", "bridge"), ("host", "host"), ("none", "null")] {
        assert!(
            ls.lines().any(|l| l.split_whitespace().nth(1) == Some(name)
                && l.split_whitespace().nth(2) == Some(driver)),
            "{name}/{driver} in:\n{ls}"
        );
    }
    let b = inspect(&cli, "bridge");
    assert_eq!(b["Driver"], "bridge");
    assert_eq!(b["Scope"], "local");
    assert_eq!(b["IPAM"]["Config"][0]["Subnet"], "172.17.0.0/16");
    assert_eq!(b["IPAM"]["Config"][0]["Gateway"], "172.17.0.1");
    assert_eq!(b["Options"]["com.docker.network.bridge.name"], "dp0");
    assert_eq!(b["Id"].as_str().map(str::len), Some(64));
    // The bridge exists in the host with the gateway address, up.
    let dp0 = addrs(&fh.host)
        .into_iter()
        .find(|(n, ..)| n == "dp0")
        .expect("dp0 in host");
    assert_eq!(dp0.1, vec!["172.17.0.1/16"]);
    assert!(dp0.2, "dp0 up");
    let e = cli
        .fail(&["network", "rm", "bridge"])
        .expect("rm bridge refused");
    assert!(
        e.contains("network bridge: a pre-defined network cannot be removed"),
        "{e}"
    );
}

#[test]
fn none_then_bridge_by_hand_serves_http_to_the_host() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("byhand");
    let c = NetNs::new("c").expect("netns");
    cli.run(&["connect", "none", c.path().to_str().expect("utf8")])
        .expect("connect none");
    let links = addrs(&c);
    assert_eq!(links.len(), 1, "only lo: {links:?}");
    assert!(links[0].2, "lo up");

    cli.run(&["connect", "bridge", c.name(), "--ip", "172.17.0.10"])
        .expect("connect bridge");
    let eth0 = addrs(&c)
        .into_iter()
        .find(|(n, ..)| n == "eth0")
        .expect("eth0");
    assert_eq!(eth0.1, vec!["172.17.0.10/16"]);
    assert!(eth0.2, "eth0 up");
    assert_eq!(eth0.3, "02:42:ac:11:00:0a");
    assert_eq!(default_gw(&c).as_deref(), Some("172.17.0.1"));

    let srv =
        http_server(&c, SocketAddr::from(([172, 17, 0, 10], 80)), "hello from c").expect("server");
    let (status, body) = http_get(&fh.host, srv.local_addr(), "/", T).expect("GET from the host");
    assert_eq!((status, body.as_str()), (200, "hello from c"));
    assert!(srv
        .peers()
        .iter()
        .all(|p| p.ip() == Ipv4Addr::new(172, 17, 0, 1)));
}

#[test]
fn two_namespaces_on_the_default_bridge() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (_fh, cli) = setup("pair");
    let a = NetNs::new("a").expect("netns");
    let b = NetNs::new("b").expect("netns");
    cli.run(&["connect", "bridge", a.name(), "--name", "web"])
        .expect("connect a");
    cli.run(&["connect", "bridge", b.name(), "--name", "db"])
        .expect("connect b");
    assert!(
        ping(&a, Ipv4Addr::new(172, 17, 0, 3), 2, T).expect("ping"),
        "a -> b"
    );
    assert!(
        ping(&b, Ipv4Addr::new(172, 17, 0, 2), 2, T).expect("ping"),
        "b -> a"
    );

    let net = inspect(&cli, "bridge");
    let containers = net["Containers"].as_object().expect("Containers");
    assert_eq!(containers.len(), 2, "{net}");
    let by_name = |n: &str| {
        containers
            .values()
            .find(|c| c["Name"] == n)
            .cloned()
            .expect("endpoint")
    };
    assert_eq!(by_name("web")["IPv4Address"], "172.17.0.2/16");
    assert_eq!(by_name("web")["MacAddress"], "02:42:ac:11:00:02");
    assert_eq!(by_name("db")["IPv4Address"], "172.17.0.3/16");
    assert_eq!(by_name("db")["MacAddress"], "02:42:ac:11:00:03");
    assert_eq!(
        by_name("web")["EndpointID"].as_str().map(str::len),
        Some(64)
    );
}

#[test]
fn user_network_takes_the_next_pool_and_keeps_its_own_routes() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("usernet");
    let id = cli.run(&["network", "create", "net1"]).expect("create");
    let net = inspect(&cli, "net1");
    assert_eq!(net["Id"].as_str(), Some(id.trim()));
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "172.18.0.0/16");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "172.18.0.1");
    let bridge = format!("br-{}", &id.trim()[..12]);
    assert_eq!(
        net["Options"]["com.docker.network.bridge.name"],
        bridge.as_str()
    );
    assert!(link_names(&fh.host).contains(&bridge));

    let x = NetNs::new("x").expect("netns");
    let y = NetNs::new("y").expect("netns");
    let z = NetNs::new("z").expect("netns");
    cli.run(&["connect", "net1", x.name()]).expect("x");
    cli.run(&["connect", "net1", y.name()]).expect("y");
    cli.run(&["connect", "bridge", z.name()]).expect("z");
    assert!(ping(&x, Ipv4Addr::new(172, 18, 0, 3), 2, T).expect("ping"));
    // Addresses and routes: each endpoint only has its own network's subnet
    // on-link; the other network is reached only via the gateway.
    let xr = x.ip_json(&["route", "show"]).expect("routes");
    let dsts: Vec<&str> = xr
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["dst"].as_str())
        .collect();
    assert!(
        dsts.contains(&"172.18.0.0/16") && dsts.contains(&"default"),
        "{xr}"
    );
    assert!(!dsts.contains(&"172.17.0.0/16"), "{xr}");
    assert_eq!(default_gw(&x).as_deref(), Some("172.18.0.1"));
    assert_eq!(default_gw(&z).as_deref(), Some("172.17.0.1"));

    // A second user network gets the pool after that, with a --subnet one
    // left alone; an explicit subnet that overlaps is refused.
    cli.run(&["network", "create", "--subnet", "10.30.0.0/24", "net2"])
        .expect("net2");
    cli.run(&["network", "create", "net3"]).expect("net3");
    assert_eq!(
        inspect(&cli, "net3")["IPAM"]["Config"][0]["Subnet"],
        "172.19.0.0/16"
    );
}

#[test]
fn macvlan_endpoints_reach_a_host_beyond_the_parent() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("mvlan");
    // A LAN segment behind a parent link of the host.
    let lan = NetNs::new("lan").expect("netns");
    let parent = unique_ifname("par");
    veth_pair(&fh.host, &parent, &lan, "eth0").expect("parent veth");
    link_up(&fh.host, &parent).expect("parent up");
    add_addr(&lan, "eth0", "10.50.0.254/24").expect("lan addr");

    cli.run(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.50.0.0/24",
        "--gateway",
        "10.50.0.254",
        "-o",
        &format!("parent={parent}"),
        "mv",
    ])
    .expect("create macvlan");
    let c1 = NetNs::new("m1").expect("netns");
    let c2 = NetNs::new("m2").expect("netns");
    cli.run(&["connect", "mv", c1.name()]).expect("c1");
    cli.run(&["connect", "mv", c2.name(), "--ip", "10.50.0.77"])
        .expect("c2");
    let eth0 = addrs(&c1)
        .into_iter()
        .find(|(n, ..)| n == "eth0")
        .expect("eth0");
    assert_eq!(eth0.1, vec!["10.50.0.1/24"]);
    let kind = c1
        .ip_json(&["-d", "link", "show", "eth0"])
        .expect("ip -d link");
    assert_eq!(kind[0]["linkinfo"]["info_kind"], "macvlan", "{kind}");
    assert_eq!(default_gw(&c1).as_deref(), Some("10.50.0.254"));
    assert!(
        ping(&c1, Ipv4Addr::new(10, 50, 0, 254), 2, T).expect("ping"),
        "to the LAN host"
    );
    assert!(
        ping(&lan, Ipv4Addr::new(10, 50, 0, 77), 2, T).expect("ping"),
        "from the LAN host"
    );
    assert!(
        ping(&c1, Ipv4Addr::new(10, 50, 0, 77), 2, T).expect("ping"),
        "bridge mode: siblings talk"
    );
    assert_eq!(inspect(&cli, "mv")["Options"]["parent"], parent.as_str());

    cli.run(&["disconnect", "mv", c1.name()])
        .expect("disconnect");
    assert_eq!(link_names(&c1), vec!["lo"]);
    let e = cli
        .fail(&[
            "network",
            "create",
            "-d",
            "macvlan",
            "-o",
            "parent=dptnoparent",
            "mv2",
        ])
        .expect("missing parent refused");
    assert!(
        e.contains("macvlan parent dptnoparent of network mv2 does not exist"),
        "{e}"
    );
}

#[test]
fn agent_restart_keeps_allocations_and_restores_bridges() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("restart");
    let c1 = NetNs::new("r1").expect("netns");
    let c2 = NetNs::new("r2").expect("netns");
    cli.run(&["network", "create", "--subnet", "10.60.0.0/24", "rnet"])
        .expect("create");
    cli.run(&["connect", "rnet", c1.name()]).expect("c1");
    let bridge = inspect(&cli, "rnet")["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .expect("bridge")
        .to_owned();

    // Reboot-like loss of the bridge, then an agent start reconciles it.
    fh.host
        .exec(&["ip", "link", "del", &bridge])
        .expect("delete bridge");
    let (agent, log) = cli.start_agent(&fh.uplink).expect("agent");
    assert!(log.contains("agent running"), "agent log:\n{log}");
    assert!(
        log.contains(&format!("created bridge {bridge}")),
        "agent log:\n{log}"
    );
    assert!(
        link_names(&fh.host).contains(&bridge),
        "agent restored the bridge"
    );
    // SIGTERM: the agent stops cleanly.
    let status = dataplane_tests::cli::stop_agent(agent, libc::SIGTERM).expect("stop");
    assert!(status.success(), "agent exit: {status}");

    assert!(
        ping(&c1, Ipv4Addr::new(10, 60, 0, 1), 2, T).expect("ping"),
        "c1 back on its bridge"
    );
    cli.run(&["connect", "rnet", c2.name()]).expect("c2");
    let net = inspect(&cli, "rnet");
    let ips: Vec<&str> = net["Containers"]
        .as_object()
        .expect("containers")
        .values()
        .filter_map(|c| c["IPv4Address"].as_str())
        .collect();
    assert_eq!(ips.len(), 2);
    assert!(
        ips.contains(&"10.60.0.2/24") && ips.contains(&"10.60.0.3/24"),
        "{ips:?}"
    );
}

#[test]
fn rm_and_disconnect_leave_no_link_behind() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("rm");
    let host_links_before = link_names(&fh.host);
    cli.run(&["network", "create", "gone"]).expect("create");
    let c = NetNs::new("g").expect("netns");
    cli.run(&["connect", "gone", c.name()]).expect("connect");
    cli.run(&["connect", "bridge", c.name()])
        .expect("second network");
    assert_eq!(link_names(&c), vec!["lo", "eth0", "eth1"]);
    // eth1 does not take the default route from eth0.
    assert_eq!(default_gw(&c).as_deref(), Some("172.18.0.1"));

    let e = cli.fail(&["network", "rm", "gone"]).expect("rm refused");
    assert!(e.contains("network gone: 1 endpoint(s) attached"), "{e}");
    cli.run(&["disconnect", "bridge", c.name()])
        .expect("disconnect");
    assert_eq!(link_names(&c), vec!["lo", "eth0"]);
    cli.run(&["network", "rm", "--force", "gone"])
        .expect("rm --force");
    assert_eq!(link_names(&c), vec!["lo"]);
    // Only dp0 (made at first use) is new in the host.
    let mut after = link_names(&fh.host);
    after.retain(|l| !host_links_before.contains(l));
    assert_eq!(after, vec!["dp0"]);
    let e = cli
        .fail(&["disconnect", "bridge", c.name()])
        .expect("second disconnect");
    assert!(e.contains("network bridge: no endpoint"), "{e}");

    cli.run(&["cleanup"]).expect("cleanup");
    let mut after = link_names(&fh.host);
    after.retain(|l| !host_links_before.contains(l));
    assert!(after.is_empty(), "cleanup removed dp0: {after:?}");
}

#[test]
fn bad_input_changes_nothing() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("badnet");
    cli.run(&["network", "create", "--subnet", "10.70.0.0/24", "taken"])
        .expect("create");
    let c = NetNs::new("b").expect("netns");
    cli.run(&["connect", "taken", c.name(), "--ip", "10.70.0.5"])
        .expect("connect");
    // A foreign link with the name a network would like for its bridge.
    fh.host
        .exec(&[
            "ip",
            "link",
            "add",
            "dptforeign",
            "type",
            "veth",
            "peer",
            "name",
            "dptforeignp",
        ])
        .expect("foreign veth");

    let state_before = cli
        .json(&["network", "ls", "--format", "json"])
        .expect("ls");
    let host_before = link_names(&fh.host);
    let ns_before = addrs(&c);
    let d = NetNs::new("d").expect("netns");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["network", "create", "--subnet", "10.70.0.128/25", "x"],
            "overlaps network taken (10.70.0.0/24)",
        ),
        (
            vec!["network", "create", "--subnet", "10.70.0.0/33", "x"],
            "--subnet 10.70.0.0/33: not a CIDR",
        ),
        (
            vec!["network", "create", "--subnet", "10.80.0.7/24", "x"],
            "has host bits set",
        ),
        (
            vec![
                "network",
                "create",
                "--subnet",
                "10.80.0.0/24",
                "--gateway",
                "10.81.0.1",
                "x",
            ],
            "--gateway 10.81.0.1",
        ),
        (
            vec!["network", "create", "taken"],
            "network taken: a network with this name already exists",
        ),
        (
            vec![
                "network",
                "create",
                "-o",
                "com.docker.network.bridge.name=dptforeign",
                "x",
            ],
            "bridge name dptforeign is in use",
        ),
        (
            vec!["network", "create", "-o", "bogus=1", "x"],
            "-o bogus: unknown option",
        ),
        (
            vec!["network", "create", "--mtu", "99999", "x"],
            "--mtu 99999",
        ),
        (
            vec!["connect", "taken", d.name(), "--ip", "10.70.0.5"],
            "--ip 10.70.0.5: already in use by endpoint",
        ),
        (
            vec!["connect", "taken", d.name(), "--ip", "10.71.0.5"],
            "--ip 10.71.0.5: not a usable address of subnet 10.70.0.0/24",
        ),
        (
            vec!["connect", "taken", d.name(), "--ip", "10.70.0.1"],
            "already in use by the gateway",
        ),
        (
            vec!["connect", "taken", d.name(), "--mac", "zz:zz"],
            "--mac zz:zz",
        ),
        (
            vec!["connect", "nosuchnet", d.name()],
            "network nosuchnet: no such network",
        ),
        (
            vec!["connect", "taken", "dpt-no-such-ns"],
            "netns dpt-no-such-ns: no such network namespace",
        ),
        (
            vec!["connect", "taken", c.name()],
            "is already connected as endpoint",
        ),
        (
            vec!["connect", "taken", d.name(), "--ifname", "lo"],
            "--ifname lo",
        ),
        (
            vec!["connect", "none", d.name(), "--ip", "10.70.0.9"],
            "--ip does not apply to the null driver",
        ),
        (
            vec!["network", "rm", "nosuchnet"],
            "network nosuchnet: no such network",
        ),
        (
            vec!["disconnect", "taken", "nobody"],
            "network taken: no endpoint nobody",
        ),
    ];
    for (args, needle) in &cases {
        let e = cli.fail(args).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            e.contains(needle),
            "dataplane {args:?}: {e:?} should contain {needle:?}"
        );
    }
    assert_eq!(
        cli.json(&["network", "ls", "--format", "json"])
            .expect("ls"),
        state_before
    );
    assert_eq!(
        link_names(&fh.host),
        host_before,
        "no link created or lost in the host"
    );
    assert_eq!(addrs(&c), ns_before, "the connected namespace is untouched");
    assert_eq!(
        link_names(&d),
        vec!["lo"],
        "refused connects left nothing in d"
    );
}

#[test]
fn container_mode_shares_an_endpoints_namespace() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("shared");
    let web = NetNs::new("web").expect("netns");
    cli.run(&["connect", "bridge", web.name(), "--name", "web"])
        .expect("web");
    let links_before = link_names(&fh.host);
    cli.run(&["connect", "container:web", "--name", "sidecar"])
        .expect("sidecar");
    // Nothing new in the kernel: the sidecar is the same namespace.
    assert_eq!(link_names(&fh.host), links_before);
    assert_eq!(link_names(&web), vec!["lo", "eth0"]);
    let net = inspect(&cli, "bridge");
    let eps: Vec<&Value> = net["Containers"]
        .as_object()
        .expect("containers")
        .values()
        .collect();
    // Containers are keyed by namespace, as Docker keys them by container:
    // the sidecar is web's namespace, so one entry (the first endpoint).
    assert_eq!(eps.len(), 1, "{net}");
    let e = cli
        .fail(&["connect", "container:web", "--name", "sidecar"])
        .expect("duplicate name refused");
    assert!(
        e.contains("network bridge: an endpoint named sidecar already exists"),
        "{e}"
    );
    let e = cli
        .fail(&["connect", "container:nobody"])
        .expect("unknown refused");
    assert!(
        e.contains("container:nobody: no endpoint of that name"),
        "{e}"
    );
    let other = NetNs::new("other").expect("netns");
    let e = cli
        .fail(&["connect", "container:web", other.name(), "--name", "x"])
        .expect("another namespace refused");
    assert!(e.contains("a different namespace"), "{e}");

    // Removing the owner takes its sharers with it.
    cli.run(&["disconnect", "bridge", "web"])
        .expect("disconnect web");
    let net = inspect(&cli, "bridge");
    assert!(
        net["Containers"]
            .as_object()
            .expect("containers")
            .is_empty(),
        "{net}"
    );
    let e = cli
        .fail(&["disconnect", "bridge", "sidecar"])
        .expect("sidecar gone");
    assert!(e.contains("no endpoint sidecar"), "{e}");
}

#[test]
fn host_mode_creates_nothing_and_endpoint_names_are_unique() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("hostmode");
    let before = link_names(&fh.host);
    let c = NetNs::new("h").expect("netns");
    let d = NetNs::new("h2").expect("netns");
    cli.run(&["connect", "host", c.name(), "--name", "svc"])
        .expect("host mode");
    assert_eq!(link_names(&c), vec!["lo"]);
    let e = cli
        .fail(&["connect", "host", d.name(), "--name", "svc"])
        .expect("duplicate endpoint name");
    assert!(e.contains("an endpoint named svc already exists"), "{e}");
    cli.run(&["disconnect", "host", "svc"]).expect("disconnect");
    let mut after = link_names(&fh.host);
    after.retain(|l| !before.contains(l));
    assert!(after.iter().all(|l| l == "dp0"), "{after:?}");
}
