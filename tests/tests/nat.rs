//! The NAT dataplane end to end, through the CLI in a fake host with the
//! uplink's checksum offload off: published ports reached by an external
//! client, masquerade for containers' egress, conntrack, and what a user
//! checks (`nat ls`, `conntrack ls`, empty iptables/nftables rulesets).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use dataplane_tests::{
    cli::Cli,
    netns::{snmp_counter, NetNs},
    topo::FakeHost,
    traffic::{
        bound_connect, count_sink, http_get, http_server, ping, tcp_echo, tcp_echo_server,
        udp_echo_server, udp_request,
    },
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

struct Setup {
    fh: FakeHost,
    cli: Cli,
}

/// A fake host whose uplink is managed by the dataplane.
fn setup(tag: &str) -> Setup {
    let (fh, cli) = Cli::uplinked(tag, None).expect("fake host with its uplink");
    Setup { fh, cli }
}

fn host_addr(s: &Setup, port: u16) -> SocketAddr {
    SocketAddr::from((s.fh.host_ip, port))
}

fn no_firewall_rules(ns: &NetNs) {
    let ipt = ns.exec(&["iptables-save"]).unwrap_or_default();
    assert!(
        !ipt.lines().any(|l| l.starts_with("-A")),
        "iptables rules in the host:\n{ipt}"
    );
    let nft = ns.exec(&["nft", "list", "ruleset"]).unwrap_or_default();
    assert!(nft.trim().is_empty(), "nftables rules in the host:\n{nft}");
}

fn no_csum_errors(nss: &[&NetNs]) {
    for ns in nss {
        assert_eq!(
            snmp_counter(ns, "Tcp", "InCsumErrors").expect("snmp"),
            0,
            "{}",
            ns.name()
        );
        assert_eq!(
            snmp_counter(ns, "Udp", "InCsumErrors").expect("snmp"),
            0,
            "{}",
            ns.name()
        );
    }
}

#[test]
fn published_ports_reach_containers_with_the_clients_address() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("pub");
    let c = NetNs::new("web").expect("netns");
    s.cli
        .run(&[
            "connect",
            "bridge",
            c.name(),
            "--name",
            "web",
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
            "-p",
            "9000-9002:7000-7002",
        ])
        .expect("connect with ports");
    let ip = Ipv4Addr::new(172, 17, 0, 2);
    let http = http_server(&c, SocketAddr::from((ip, 80)), "published").expect("http");
    let udp = udp_echo_server(&c, SocketAddr::from((ip, 53))).expect("udp");
    let ranged = tcp_echo_server(&c, SocketAddr::from((ip, 7001))).expect("tcp");

    // The client has no route to 172.17/16: only DNAT can get it there.
    let (status, body) =
        http_get(&s.fh.client, host_addr(&s, 8080), "/", T).expect("GET host:8080");
    assert_eq!((status, body.as_str()), (200, "published"));
    assert_eq!(
        udp_request(&s.fh.client, host_addr(&s, 5353), b"dns?", T).expect("udp"),
        b"dns?"
    );
    let big = vec![7u8; 300_000];
    assert_eq!(
        tcp_echo(&s.fh.client, host_addr(&s, 9001), &big, T).expect("range"),
        big
    );
    // The servers saw the client's own address, not the host's.
    for peers in [http.peers(), udp.peers(), ranged.peers()] {
        assert!(
            !peers.is_empty() && peers.iter().all(|p| p.ip() == s.fh.client_ip),
            "{peers:?}"
        );
    }
    // An unpublished port is the host's own (nothing listens: refused).
    assert!(http_get(&s.fh.client, host_addr(&s, 8081), "/", T).is_err());

    // What a user checks: nat ls counts the new flows; conntrack shows them.
    let nat = s
        .cli
        .json(&["nat", "ls", "--format", "json"])
        .expect("nat ls");
    let row = |host: &str| -> Value {
        nat["dnat"]
            .as_array()
            .expect("dnat")
            .iter()
            .find(|r| r["host"] == host)
            .cloned()
            .expect(host)
    };
    assert_eq!(row("0.0.0.0:8080")["container"], "172.17.0.2:80");
    assert!(row("0.0.0.0:8080")["packets"].as_u64() >= Some(1));
    assert!(row("0.0.0.0:5353")["packets"].as_u64() >= Some(1));
    assert!(row("0.0.0.0:9001")["packets"].as_u64() >= Some(1));
    assert_eq!(row("0.0.0.0:9000")["packets"].as_u64(), Some(0));
    let ct = s
        .cli
        .json(&["conntrack", "ls", "--format", "json"])
        .expect("conntrack ls");
    let flows = ct.as_array().expect("flows");
    assert!(
        flows.iter().any(|f| f["proto"] == "udp"
            && f["dport"] == 5353
            && f["nat"] == "DNAT dst -> 172.17.0.2:53"),
        "{ct}"
    );
    no_csum_errors(&[&s.fh.client, &c, &s.fh.host]);
    no_firewall_rules(&s.fh.host);
}

#[test]
fn host_ip_bound_ports_and_duplicates() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("bind");
    let a = NetNs::new("a").expect("netns");
    let b = NetNs::new("b").expect("netns");
    s.cli
        .run(&[
            "connect",
            "bridge",
            a.name(),
            "--name",
            "a",
            "-p",
            "127.0.0.1:8081:80",
        ])
        .expect("a");
    let _srv =
        http_server(&a, SocketAddr::from(([172, 17, 0, 2], 80)), "local only").expect("http");
    // Bound to 127.0.0.1: never reachable from another host.
    assert!(http_get(
        &s.fh.client,
        host_addr(&s, 8081),
        "/",
        Duration::from_secs(2)
    )
    .is_err());

    // Duplicate bindings are refused and change nothing.
    let before = s.cli.json(&["nat", "ls", "--format", "json"]).expect("nat");
    let e = s
        .cli
        .fail(&["connect", "bridge", b.name(), "-p", "8081:80"])
        .expect("wildcard over 127.0.0.1");
    assert!(e.contains("--publish 0.0.0.0:8081->80/tcp: endpoint a on network bridge already publishes 127.0.0.1:8081->80/tcp"), "{e}");
    let e = s
        .cli
        .fail(&[
            "connect",
            "bridge",
            b.name(),
            "-p",
            "8082:80",
            "-p",
            "8082:81",
        ])
        .expect("twice in one command");
    assert!(e.contains("this command already publishes"), "{e}");
    let e = s
        .cli
        .fail(&["connect", "bridge", b.name(), "-p", ":80"])
        .expect("malformed");
    assert!(e.contains("--publish :80: expected"), "{e}");
    assert_eq!(
        s.cli.json(&["nat", "ls", "--format", "json"]).expect("nat"),
        before
    );
    assert_eq!(
        b.ip_json(&["link", "show"])
            .expect("links")
            .as_array()
            .map(Vec::len),
        Some(1),
        "b untouched"
    );

    // Publishing on a live endpoint, and removing it again.
    s.cli
        .run(&["publish", "add", "bridge", "a", "8083:80"])
        .expect("publish add");
    let (st, body) = http_get(&s.fh.client, host_addr(&s, 8083), "/", T).expect("GET 8083");
    assert_eq!((st, body.as_str()), (200, "local only"));
    s.cli
        .run(&["publish", "rm", "bridge", "a", "8083:80"])
        .expect("publish rm");
    assert!(http_get(
        &s.fh.client,
        host_addr(&s, 8083),
        "/",
        Duration::from_secs(2)
    )
    .is_err());
    let e = s
        .cli
        .fail(&["publish", "rm", "bridge", "a", "8083:80"])
        .expect("not published");
    assert!(e.contains("endpoint a does not publish it"), "{e}");
}

#[test]
fn masquerade_gives_two_containers_200_distinct_flows() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("masq");
    let c1 = NetNs::new("m1").expect("netns");
    let c2 = NetNs::new("m2").expect("netns");
    s.cli.run(&["connect", "bridge", c1.name()]).expect("c1");
    s.cli.run(&["connect", "bridge", c2.name()]).expect("c2");
    let ext = SocketAddr::from((s.fh.client_ip, 9000));
    let srv = tcp_echo_server(&s.fh.client, ext).expect("external server");

    // 100 connections held open at once from each container, both using the
    // same 100 source ports: after masquerade they would collide on the
    // uplink's address, so the allocator must move the second set. The
    // ports lie in the masquerade range (default 32768-60999): only those
    // are kept.
    let mut streams: Vec<TcpStream> = Vec::new();
    for c in [&c1, &c2] {
        let mut batch = c
            .run_in(move || {
                (0..100u16)
                    .map(|i| bound_connect(40_000 + i, ext, T))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .expect("run_in")
            .expect("100 connections");
        streams.append(&mut batch);
    }
    for (i, st) in streams.iter_mut().enumerate() {
        st.set_read_timeout(Some(T)).expect("timeout");
        let msg = format!("conn {i}\n");
        st.write_all(msg.as_bytes()).expect("write");
        let mut buf = vec![0u8; msg.len()];
        st.read_exact(&mut buf).expect("echo");
        assert_eq!(buf, msg.as_bytes());
    }
    let peers = srv.peers();
    assert_eq!(peers.len(), 200);
    assert!(
        peers.iter().all(|p| p.ip() == s.fh.host_ip),
        "the outside sees only the host"
    );
    let ports: BTreeSet<u16> = peers.iter().map(SocketAddr::port).collect();
    assert_eq!(ports.len(), 200, "distinct source ports");
    // The first container kept its own ports; the second was moved.
    assert_eq!(ports.range(40_000..40_100).count(), 100, "{ports:?}");
    drop(streams);

    let u = udp_echo_server(&s.fh.client, SocketAddr::from((s.fh.client_ip, 5300))).expect("udp");
    assert_eq!(
        udp_request(&c1, u.local_addr(), b"out", T).expect("udp"),
        b"out"
    );
    assert!(u.peers().iter().all(|p| p.ip() == s.fh.host_ip));
    assert!(
        ping(&c2, s.fh.client_ip, 2, T).expect("ping"),
        "ping out and back"
    );
    no_csum_errors(&[&s.fh.client, &c1, &c2]);
    no_firewall_rules(&s.fh.host);
}

#[test]
fn internal_and_unmasqueraded_networks() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("policy");
    s.cli
        .run(&[
            "network",
            "create",
            "--internal",
            "--subnet",
            "10.90.0.0/24",
            "inside",
        ])
        .expect("internal");
    s.cli
        .run(&[
            "network",
            "create",
            "--subnet",
            "10.91.0.0/24",
            "-o",
            "com.docker.network.bridge.enable_ip_masquerade=false",
            "routed",
        ])
        .expect("no masquerade");
    let i = NetNs::new("i").expect("netns");
    let r = NetNs::new("r").expect("netns");
    s.cli.run(&["connect", "inside", i.name()]).expect("i");
    s.cli.run(&["connect", "routed", r.name()]).expect("r");
    let srv =
        tcp_echo_server(&s.fh.client, SocketAddr::from((s.fh.client_ip, 9100))).expect("server");

    // Internal: no default route, and even with one added by hand nothing
    // leaves through the uplink.
    assert!(tcp_echo(&i, srv.local_addr(), b"x", Duration::from_secs(1)).is_err());
    i.exec(&["ip", "route", "add", "default", "via", "10.90.0.1"])
        .expect("route by hand");
    assert!(tcp_echo(&i, srv.local_addr(), b"x", Duration::from_secs(1)).is_err());
    let stats = s
        .cli
        .json(&["stats", "show", "--format", "json"])
        .expect("stats");
    assert!(
        stats["drops"]["internal-network-egress"]["packets"].as_u64() >= Some(1),
        "{stats}"
    );

    // Masquerade off: the outside sees the container's own address (the
    // client is given a route back, as a routed network would have).
    s.fh.client_route("10.91.0.0/24").expect("route back");
    assert_eq!(
        tcp_echo(&r, srv.local_addr(), b"y", T).expect("routed"),
        b"y"
    );
    assert!(
        srv.peers()
            .iter()
            .any(|p| p.ip() == Ipv4Addr::new(10, 91, 0, 2)),
        "{:?}",
        srv.peers()
    );
}

#[test]
fn conntrack_entries_close_and_expire() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("ct");
    let c = NetNs::new("c").expect("netns");
    s.cli
        .run(&["connect", "bridge", c.name(), "-p", "8080:80"])
        .expect("connect");
    let srv = tcp_echo_server(&c, SocketAddr::from(([172, 17, 0, 2], 80))).expect("server");
    let mut st = s
        .fh
        .client
        .run_in(move || TcpStream::connect_timeout(&SocketAddr::from(([192, 0, 2, 1], 8080)), T))
        .expect("ns")
        .expect("connect");
    st.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    st.set_read_timeout(Some(T)).expect("timeout");
    st.read_exact(&mut buf).expect("read");
    let live = s.cli.flows();
    let ours: Vec<&Value> = live.iter().filter(|f| f["proto"] == "tcp").collect();
    assert_eq!(ours.len(), 2, "an entry per direction: {live:?}");
    assert!(ours.iter().all(|f| f["state"] == "ESTABLISHED"), "{live:?}");

    // A GC with the default timeouts keeps a live flow.
    let out = s.cli.run(&["conntrack", "gc"]).expect("gc");
    assert!(out.contains("removed 0"), "{out}");
    drop(st);
    std::thread::sleep(Duration::from_millis(300));
    let closed = s.cli.flows();
    assert!(
        closed
            .iter()
            .filter(|f| f["proto"] == "tcp")
            .all(|f| f["state"] == "CLOSING"),
        "{closed:?}"
    );
    // The closing timeout (here 1 s) removes both entries; nothing else does.
    std::thread::sleep(Duration::from_millis(1500));
    let out = s
        .cli
        .run(&["conntrack", "gc", "--ct-tcp-closing", "1"])
        .expect("gc");
    assert!(out.contains("removed 2"), "{out}");
    assert!(s.cli.flows().iter().all(|f| f["proto"] != "tcp"));
    drop(srv);
}

#[test]
fn uplink_bad_input() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("upbad");
    let e = s.cli.fail(&["uplink", "add", &s.fh.uplink]).expect("twice");
    assert!(e.contains("already added"), "{e}");
    let e = s
        .cli
        .fail(&["uplink", "add", "dptnosuch0"])
        .expect("missing");
    assert!(e.contains("uplink dptnosuch0: no such interface"), "{e}");
    let e = s.cli.fail(&["uplink", "rm", "lo"]).expect("not an uplink");
    assert!(e.contains("uplink lo: not an uplink"), "{e}");
    s.cli.run(&["uplink", "rm", &s.fh.uplink]).expect("rm");
    assert_eq!(s.cli.run(&["uplink", "ls"]).expect("ls").trim(), "");
    let links = std::fs::read_dir(s.cli.pins.path().join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(links, 0, "uplink rm detached both programs");
}

#[test]
fn hairpin_from_containers_on_any_network() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("hairpin");
    s.cli.run(&["network", "create", "net1"]).expect("net1");
    let a = NetNs::new("ha").expect("netns");
    let b = NetNs::new("hb").expect("netns");
    let c = NetNs::new("hc").expect("netns");
    s.cli
        .run(&["connect", "bridge", a.name(), "-p", "8080:80"])
        .expect("a");
    s.cli
        .run(&["connect", "bridge", b.name(), "-p", "8081:80"])
        .expect("b");
    s.cli.run(&["connect", "net1", c.name()]).expect("c");
    let srv_a = http_server(&a, SocketAddr::from(([172, 17, 0, 2], 80)), "a").expect("a srv");
    let srv_b = http_server(&b, SocketAddr::from(([172, 17, 0, 3], 80)), "b").expect("b srv");
    let host = |p| SocketAddr::from((s.fh.host_ip, p));

    // Another container on the same network, keeping its address.
    assert_eq!(http_get(&b, host(8080), "/", T).expect("b -> a").1, "a");
    assert!(
        srv_a
            .peers()
            .iter()
            .any(|p| p.ip() == Ipv4Addr::new(172, 17, 0, 3)),
        "{:?}",
        srv_a.peers()
    );
    assert_eq!(http_get(&a, host(8081), "/", T).expect("a -> b").1, "b");
    // A container of another network.
    assert_eq!(http_get(&c, host(8080), "/", T).expect("c -> a").1, "a");
    assert!(
        srv_a
            .peers()
            .iter()
            .any(|p| p.ip() == Ipv4Addr::new(172, 18, 0, 2)),
        "{:?}",
        srv_a.peers()
    );
    // A container reaching its own published port (seen from the gateway).
    assert_eq!(http_get(&a, host(8080), "/", T).expect("a -> a").1, "a");
    assert!(
        srv_a
            .peers()
            .iter()
            .any(|p| p.ip() == Ipv4Addr::new(172, 17, 0, 1)),
        "{:?}",
        srv_a.peers()
    );
    drop(srv_b);
    no_csum_errors(&[&a, &b, &c]);
    no_firewall_rules(&s.fh.host);
}

#[test]
fn isolation_icc_and_anti_spoofing() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("iso");
    s.cli.run(&["network", "create", "net1"]).expect("net1");
    s.cli
        .run(&[
            "network",
            "create",
            "-o",
            "com.docker.network.bridge.enable_icc=false",
            "quiet",
        ])
        .expect("quiet");
    let b = NetNs::new("ib").expect("netns");
    let c = NetNs::new("ic").expect("netns");
    let q1 = NetNs::new("q1").expect("netns");
    let q2 = NetNs::new("q2").expect("netns");
    s.cli.run(&["connect", "bridge", b.name()]).expect("b");
    s.cli.run(&["connect", "net1", c.name()]).expect("c");
    s.cli.run(&["connect", "quiet", q1.name()]).expect("q1");
    s.cli
        .run(&["connect", "quiet", q2.name(), "-p", "8090:80"])
        .expect("q2");
    let q2_ip = Ipv4Addr::new(172, 19, 0, 3);

    // Networks are isolated from each other, not from their gateways.
    assert!(!ping(&b, Ipv4Addr::new(172, 18, 0, 2), 1, Duration::from_secs(1)).expect("ping"));
    assert!(s.cli.drops("network-isolation") >= 1);
    assert!(ping(&c, Ipv4Addr::new(172, 18, 0, 1), 1, T).expect("ping gateway"));

    // ICC off: no direct traffic inside the network; the published port
    // through the host address still works.
    assert!(!ping(&q1, q2_ip, 1, Duration::from_secs(1)).expect("ping"));
    assert!(s.cli.drops("icc-disabled") >= 1);
    let _srv = http_server(&q2, SocketAddr::from((q2_ip, 80)), "q2").expect("srv");
    assert_eq!(
        http_get(&q1, SocketAddr::from((s.fh.host_ip, 8090)), "/", T)
            .expect("via host")
            .1,
        "q2"
    );

    // A source address that is not the endpoint's own is dropped.
    b.exec(&["ip", "addr", "add", "172.17.0.99/16", "dev", "eth0"])
        .expect("extra addr");
    let before = s.cli.drops("spoofed-source");
    let out = b
        .exec_output(
            &[
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                "172.17.0.99",
                "172.17.0.1",
            ],
            T,
        )
        .expect("ping");
    assert!(!out.success(), "spoofed ping answered: {}", out.stdout);
    assert!(s.cli.drops("spoofed-source") > before);
}

#[test]
fn path_mtu_discovery_works_through_masquerade() {
    if !dataplane_tests::require_root() {
        return;
    }
    use dataplane_tests::netns::{add_addr, add_route, default_route, veth_pair};
    let s = setup("pmtu");
    // Beyond the uplink: the client routes to a far network over a link
    // whose MTU is 1280 (on the router's side; the far host keeps 1500, so
    // TCP's MSS does not hide the bottleneck).
    let far = NetNs::new("far").expect("netns");
    let link = dataplane_tests::unique_ifname("far");
    veth_pair(&s.fh.client, &link, &far, "eth0").expect("veth");
    s.fh.client
        .exec(&["ip", "link", "set", &link, "mtu", "1280"])
        .expect("mtu");
    add_addr(&s.fh.client, &link, "198.51.100.1/24").expect("addr");
    add_addr(&far, "eth0", "198.51.100.2/24").expect("addr");
    default_route(&far, Ipv4Addr::new(198, 51, 100, 1)).expect("route");
    s.fh.client
        .sysctl("net.ipv4.ip_forward", "1")
        .expect("forwarding");
    add_route(&s.fh.host, "198.51.100.0/24", s.fh.client_ip).expect("host route");
    let c = NetNs::new("pm").expect("netns");
    s.cli
        .run(&["connect", "bridge", c.name()])
        .expect("connect");

    // A sink on the far host: reads everything, answers with the count.
    let sink = count_sink(&far, SocketAddr::from(([198, 51, 100, 2], 9500))).expect("sink");
    let payload = vec![0xabu8; 300_000];
    let sent = c
        .run_in(move || -> std::io::Result<String> {
            let mut st =
                TcpStream::connect_timeout(&SocketAddr::from(([198, 51, 100, 2], 9500)), T)?;
            st.set_read_timeout(Some(Duration::from_secs(15)))?;
            st.set_write_timeout(Some(Duration::from_secs(15)))?;
            st.write_all(&payload)?;
            st.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            st.read_to_string(&mut reply)?;
            Ok(reply)
        })
        .expect("ns")
        .expect("transfer larger than the path MTU completes");
    assert_eq!(sent, "300000");
    assert_eq!(sink.join().expect("sink").expect("sink io"), 300_000);
    // The container learnt the path MTU from the translated ICMP error.
    let route = c
        .exec(&["ip", "route", "get", "198.51.100.2"])
        .expect("route get");
    assert!(route.contains("mtu 1280"), "{route}");
}

#[test]
fn filter_rules_guard_published_ports_and_direct_traffic() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("filter");
    let c = NetNs::new("fc").expect("netns");
    s.cli
        .run(&["connect", "bridge", c.name(), "-p", "8080:80"])
        .expect("connect");
    let ip = Ipv4Addr::new(172, 17, 0, 2);
    let _srv = http_server(&c, SocketAddr::from((ip, 80)), "guarded").expect("http");
    // Direct traffic too: the client is given a route to the bridge subnet.
    s.fh.client_route("172.17.0.0/16").expect("route");
    let short = Duration::from_secs(1);
    assert!(http_get(&s.fh.client, host_addr(&s, 8080), "/", T).is_ok());

    // DOCKER-USER's classic: only 192.168.1.1 may come in through the uplink.
    let id = s
        .cli
        .run(&[
            "filter",
            "add",
            "--in",
            &s.fh.uplink,
            "--not-src",
            "192.168.1.1/32",
            "--action",
            "drop",
        ])
        .expect("filter add");
    assert!(
        http_get(&s.fh.client, host_addr(&s, 8080), "/", short).is_err(),
        "published port"
    );
    assert!(
        http_get(&s.fh.client, SocketAddr::from((ip, 80)), "/", short).is_err(),
        "direct"
    );
    let ls = s
        .cli
        .json(&["filter", "ls", "--format", "json"])
        .expect("ls");
    assert_eq!(
        ls[0]["rule"],
        format!(
            "--in {} --not-src 192.168.1.1/32 --action drop",
            s.fh.uplink
        )
    );
    assert!(ls[0]["packets"].as_u64() >= Some(2), "{ls}");
    assert!(s.cli.drops("filtered") >= 2);
    // The container's own egress keeps working (replies are not filtered).
    let out = tcp_echo_server(&s.fh.client, SocketAddr::from((s.fh.client_ip, 9300))).expect("srv");
    assert_eq!(
        tcp_echo(&c, out.local_addr(), b"out", T).expect("egress"),
        b"out"
    );

    // An accept rule put first lets the client in again; removing the drop
    // rule restores everything.
    let accept = s
        .cli
        .run(&[
            "filter",
            "add",
            "--first",
            "--src",
            "192.0.2.2/32",
            "--dport",
            "80/tcp",
            "--action",
            "accept",
        ])
        .expect("accept");
    assert_eq!(
        http_get(&s.fh.client, host_addr(&s, 8080), "/", T)
            .expect("accepted")
            .1,
        "guarded"
    );
    s.cli
        .run(&["filter", "rm", accept.trim()])
        .expect("rm accept");
    s.cli.run(&["filter", "rm", id.trim()]).expect("rm drop");
    assert_eq!(
        http_get(&s.fh.client, host_addr(&s, 8080), "/", T)
            .expect("restored")
            .1,
        "guarded"
    );
    // Direct traffic stays out: the default gateway mode (`nat`) protects
    // the subnet from direct access (tests/tests/gateway_modes.rs).
    assert!(http_get(&s.fh.client, SocketAddr::from((ip, 80)), "/", short).is_err());
    assert!(s.cli.drops("direct-access") >= 1);

    for (args, needle) in [
        (
            vec!["filter", "add", "--src", "10.0.0.0/33", "--action", "drop"],
            "--src",
        ),
        (
            vec!["filter", "add", "--dport", "70000", "--action", "drop"],
            "--dport",
        ),
        (vec!["filter", "add", "--action", "maybe"], "--action"),
        (
            vec!["filter", "add", "--network", "nosuch", "--action", "drop"],
            "network nosuch: no such network",
        ),
        (vec!["filter", "rm", "99"], "filter 99: no such rule"),
    ] {
        let e = s.cli.fail(&args).expect("refused");
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    assert_eq!(
        s.cli
            .json(&["filter", "ls", "--format", "json"])
            .expect("ls"),
        serde_json::json!([])
    );
}
