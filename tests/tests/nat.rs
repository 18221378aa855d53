//! The NAT dataplane end to end, through the CLI in a fake host with the
//! uplink's checksum offload off, for both families from one definition
//! each ([`family_tests!`]): published ports reached by an external client
//! with its address kept, masquerade for containers' egress (TCP, UDP,
//! ping), conntrack and what a user checks (`nat ls`, `conntrack ls`, empty
//! iptables/nftables rulesets), hairpin, isolation and ICC, anti-spoofing,
//! filters, and path MTU discovery through a 1280-byte hop behind
//! masquerade (IPv4's "fragmentation needed", IPv6's Packet Too Big).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use dataplane_tests::{
    cli::Cli,
    family::{add6, bound_connect, Family},
    family_tests,
    netns::{snmp_counter, NetNs},
    traffic::{
        count_sink, http_get, http_server, tcp_echo, tcp_echo_server, udp_echo_server, udp_request,
    },
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

fn no_firewall_rules(ns: &NetNs) {
    for tool in ["iptables-save", "ip6tables-save"] {
        let rules = ns.exec(&[tool]).unwrap_or_default();
        assert!(
            !rules.lines().any(|l| l.starts_with("-A")),
            "{tool}: rules in the host:\n{rules}"
        );
    }
    let nft = ns.exec(&["nft", "list", "ruleset"]).unwrap_or_default();
    assert!(nft.trim().is_empty(), "nftables rules in the host:\n{nft}");
}

/// No TCP or UDP checksum error counted in any of `nss` (IPv6's UDP has
/// counters of its own).
fn no_csum_errors(nss: &[&NetNs]) {
    for ns in nss {
        for (proto, field) in [("Tcp", "InCsumErrors"), ("Udp", "InCsumErrors")] {
            assert_eq!(
                snmp_counter(ns, proto, field).expect("snmp"),
                0,
                "{proto} {field} in {}",
                ns.name()
            );
        }
        let snmp6 = ns.exec(&["cat", "/proc/net/snmp6"]).unwrap_or_default();
        for line in snmp6.lines() {
            let mut it = line.split_whitespace();
            if let (Some("Udp6InCsumErrors"), Some(n)) = (it.next(), it.next()) {
                assert_eq!(n, "0", "Udp6InCsumErrors in {}", ns.name());
            }
        }
    }
}

/// The peers' addresses are all `want` (and there is one at least).
fn all_from(peers: &[SocketAddr], want: IpAddr) {
    assert!(
        !peers.is_empty() && peers.iter().all(|p| p.ip() == want),
        "want every peer from {want}: {peers:?}"
    );
}

fn any_from(peers: &[SocketAddr], want: IpAddr) {
    assert!(
        peers.iter().any(|p| p.ip() == want),
        "want a peer from {want}: {peers:?}"
    );
}

family_tests!(
    published_ports_reach_containers_with_the_clients_address,
    nat_ls_counts_the_flows_of_each_published_port,
    host_ip_bound_ports_and_duplicates,
    masquerade_gives_two_containers_200_distinct_flows,
    internal_and_unmasqueraded_networks,
    conntrack_entries_close_and_expire,
    hairpin_from_containers_on_any_network,
    isolation_icc_and_anti_spoofing,
    path_mtu_discovery_works_through_masquerade,
    filter_rules_guard_published_ports_and_direct_traffic,
);

fn published_ports_reach_containers_with_the_clients_address(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("pub", None);
    let host = |port| SocketAddr::new(fam.host_ip(&fh), port);
    let client_ip = fam.client_ip(&fh);
    let c = NetNs::new("web").expect("netns");
    fam.connect(
        &cli,
        0,
        &c,
        &[
            "--name",
            "web",
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
            "-p",
            "9000-9002:7000-7002",
        ],
    );
    let ip = fam.addr(0, 2);
    let http = http_server(&c, SocketAddr::new(ip, 80), "published").expect("http");
    let udp = udp_echo_server(&c, SocketAddr::new(ip, 53)).expect("udp");
    let ranged = tcp_echo_server(&c, SocketAddr::new(ip, 7001)).expect("tcp");

    // The client has no route to the containers' subnet: only DNAT can get
    // it there.
    let (status, body) = http_get(&fh.client, host(8080), "/", T).expect("GET host:8080");
    assert_eq!((status, body.as_str()), (200, "published"));
    assert_eq!(
        udp_request(&fh.client, host(5353), b"dns?", T).expect("udp"),
        b"dns?"
    );
    let big = vec![7u8; 300_000];
    assert_eq!(
        tcp_echo(&fh.client, host(9001), &big, T).expect("range"),
        big
    );
    // The servers saw the client's own address, not the host's.
    for peers in [http.peers(), udp.peers(), ranged.peers()] {
        all_from(&peers, client_ip);
    }
    // An unpublished port is the host's own (nothing listens: refused).
    assert!(http_get(&fh.client, host(8081), "/", T).is_err());

    // What a user checks: conntrack shows the translated flows (`nat ls`:
    // nat_ls_counts_the_flows_of_each_published_port).
    let flows = cli.flows();
    let has = |proto: &str, dport: u64, nat: String| {
        flows
            .iter()
            .any(|f| f["proto"] == proto && f["dport"] == dport && f["nat"] == nat.as_str())
    };
    assert!(
        has(
            "udp",
            5353,
            format!("DNAT dst -> {}", fam.with_port(ip, 53))
        ),
        "{flows:#?}"
    );
    assert!(
        has(
            "tcp",
            8080,
            format!("DNAT dst -> {}", fam.with_port(ip, 80))
        ),
        "{flows:#?}"
    );
    no_csum_errors(&[&fh.client, &c, &fh.host]);
    no_firewall_rules(&fh.host);

    // The endpoint's flows go with it.
    cli.run(&["disconnect", &fam.network(0), c.name()])
        .expect("disconnect");
    let after = cli.flows();
    assert!(
        after
            .iter()
            .all(|f| ![8080, 5353, 9001].contains(&f["dport"].as_u64().unwrap_or(0))),
        "purged with the endpoint: {after:#?}"
    );
}

/// `nat ls` shows each published port of the family with its container
/// address and counts the flows it translated.
fn nat_ls_counts_the_flows_of_each_published_port(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("natls", None);
    let host = |port| SocketAddr::new(fam.host_ip(&fh), port);
    let c = NetNs::new("web").expect("netns");
    fam.connect(
        &cli,
        0,
        &c,
        &[
            "--name",
            "web",
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
            "-p",
            "9000-9001:7000-7001",
        ],
    );
    let ip = fam.addr(0, 2);
    let _http = http_server(&c, SocketAddr::new(ip, 80), "published").expect("http");
    let _udp = udp_echo_server(&c, SocketAddr::new(ip, 53)).expect("udp");
    let _ranged = tcp_echo_server(&c, SocketAddr::new(ip, 7001)).expect("tcp");
    http_get(&fh.client, host(8080), "/", T).expect("GET host:8080");
    udp_request(&fh.client, host(5353), b"dns?", T).expect("udp");
    tcp_echo(&fh.client, host(9001), b"range", T).expect("range");

    let nat = cli
        .json(&["nat", "ls", "--format", "json"])
        .expect("nat ls");
    let row = |port: u16| -> Value {
        let host = fam.with_port(fam.unspecified(), port);
        nat["dnat"]
            .as_array()
            .expect("dnat")
            .iter()
            .find(|r| r["host"] == host.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("no row for {host}: {nat}"))
    };
    assert_eq!(row(8080)["container"], fam.with_port(ip, 80));
    assert!(row(8080)["packets"].as_u64() >= Some(1));
    assert!(row(5353)["packets"].as_u64() >= Some(1));
    assert!(row(9001)["packets"].as_u64() >= Some(1));
    assert_eq!(row(9000)["packets"].as_u64(), Some(0));
}

fn host_ip_bound_ports_and_duplicates(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("bind", None);
    let host = |port| SocketAddr::new(fam.host_ip(&fh), port);
    let net = fam.network(0);
    let a = NetNs::new("a").expect("netns");
    let b = NetNs::new("b").expect("netns");
    let lo_bound = format!("{}:80", fam.with_port(fam.loopback(), 8081));
    fam.connect(&cli, 0, &a, &["--name", "a", "-p", &lo_bound]);
    let _srv = http_server(&a, SocketAddr::new(fam.addr(0, 2), 80), "local only").expect("http");
    // Bound to loopback: never reachable from another host.
    assert!(http_get(&fh.client, host(8081), "/", Duration::from_secs(2)).is_err());

    // Duplicate bindings are refused and change nothing.
    let before = cli.json(&["nat", "ls", "--format", "json"]).expect("nat");
    let e = cli
        .fail(&["connect", &net, b.name(), "-p", "8081:80"])
        .expect("wildcard over loopback");
    // (`-p 8081:80` is every host address of both families; the message
    // writes it as 0.0.0.0.)
    let want = format!(
        "--publish 0.0.0.0:8081->80/tcp: endpoint a on network {net} already publishes {}->80/tcp",
        fam.with_port(fam.loopback(), 8081)
    );
    assert!(e.contains(&want), "want {want:?}: {e}");
    let e = cli
        .fail(&["connect", &net, b.name(), "-p", "8082:80", "-p", "8082:81"])
        .expect("twice in one command");
    assert!(e.contains("this command already publishes"), "{e}");
    let e = cli
        .fail(&["connect", &net, b.name(), "-p", ":80"])
        .expect("malformed");
    assert!(e.contains("--publish :80: expected"), "{e}");
    assert_eq!(
        cli.json(&["nat", "ls", "--format", "json"]).expect("nat"),
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
    cli.run(&["publish", "add", &net, "a", "8083:80"])
        .expect("publish add");
    let (st, body) = http_get(&fh.client, host(8083), "/", T).expect("GET 8083");
    assert_eq!((st, body.as_str()), (200, "local only"));
    cli.run(&["publish", "rm", &net, "a", "8083:80"])
        .expect("publish rm");
    assert!(http_get(&fh.client, host(8083), "/", Duration::from_secs(2)).is_err());
    let e = cli
        .fail(&["publish", "rm", &net, "a", "8083:80"])
        .expect("not published");
    assert!(e.contains("endpoint a does not publish it"), "{e}");
}

fn masquerade_gives_two_containers_200_distinct_flows(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("masq", None);
    let (host_ip, client_ip) = (fam.host_ip(&fh), fam.client_ip(&fh));
    let c1 = NetNs::new("m1").expect("netns");
    let c2 = NetNs::new("m2").expect("netns");
    fam.connect(&cli, 0, &c1, &[]);
    fam.connect(&cli, 0, &c2, &[]);
    let ext = SocketAddr::new(client_ip, 9000);
    let srv = tcp_echo_server(&fh.client, ext).expect("external server");

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
    all_from(&peers, host_ip);
    let ports: BTreeSet<u16> = peers.iter().map(SocketAddr::port).collect();
    assert_eq!(ports.len(), 200, "distinct source ports");
    // The first container kept its own ports; the second was moved.
    assert_eq!(ports.range(40_000..40_100).count(), 100, "{ports:?}");
    // `conntrack ls` shows the translation, the container's own port kept.
    let flows = cli.flows();
    let snat = format!("SNAT src -> {}", fam.with_port(host_ip, 40_000));
    assert!(
        flows
            .iter()
            .any(|f| f["dport"] == 9000 && f["sport"] == 40_000 && f["nat"] == snat.as_str()),
        "want {snat:?}: {flows:#?}"
    );
    drop(streams);

    let u = udp_echo_server(&fh.client, SocketAddr::new(client_ip, 5300)).expect("udp");
    assert_eq!(
        udp_request(&c1, u.local_addr(), b"out", T).expect("udp"),
        b"out"
    );
    all_from(&u.peers(), host_ip);
    assert!(
        fam.ping(&c2, client_ip, 2, T).expect("ping"),
        "ping out and back"
    );
    no_csum_errors(&[&fh.client, &c1, &c2]);
    no_firewall_rules(&fh.host);

    // A disconnected endpoint's masqueraded flows go with it.
    let c1_ip = fam.addr(0, 2).to_string();
    assert!(
        cli.flows().iter().any(|f| f["src"] == c1_ip.as_str()),
        "{:#?}",
        cli.flows()
    );
    cli.run(&["disconnect", &fam.network(0), c1.name()])
        .expect("disconnect");
    let after = cli.flows();
    assert!(
        after.iter().all(|f| f["src"] != c1_ip.as_str()
            && f["dst"] != c1_ip.as_str()
            && !f["nat"].as_str().unwrap_or_default().contains(&c1_ip)),
        "purged with the endpoint: {after:#?}"
    );
}

fn internal_and_unmasqueraded_networks(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("policy", None);
    fam.create_network(&cli, 1, &["--internal"]);
    fam.create_network(
        &cli,
        2,
        &["-o", "com.docker.network.bridge.enable_ip_masquerade=false"],
    );
    let i = NetNs::new("i").expect("netns");
    let r = NetNs::new("r").expect("netns");
    fam.connect(&cli, 1, &i, &[]);
    fam.connect(&cli, 2, &r, &[]);
    let srv =
        tcp_echo_server(&fh.client, SocketAddr::new(fam.client_ip(&fh), 9100)).expect("server");

    // Internal: no default route, and even with one added by hand nothing
    // leaves through the uplink.
    assert!(tcp_echo(&i, srv.local_addr(), b"x", Duration::from_secs(1)).is_err());
    let gw = fam.addr(1, 1).to_string();
    i.exec(&["ip", fam.flag(), "route", "add", "default", "via", &gw])
        .expect("route by hand");
    assert!(tcp_echo(&i, srv.local_addr(), b"x", Duration::from_secs(1)).is_err());
    assert!(
        cli.drops("internal-network-egress") >= 1,
        "counted as internal-network-egress"
    );

    // Masquerade off: the outside sees the container's own address (the
    // client is given a route back, as a routed network would have).
    fam.client_route(&fh, &fam.subnet(2));
    assert_eq!(
        tcp_echo(&r, srv.local_addr(), b"y", T).expect("unmasqueraded"),
        b"y"
    );
    any_from(&srv.peers(), fam.addr(2, 2));
}

fn conntrack_entries_close_and_expire(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("ct", None);
    let c = NetNs::new("c").expect("netns");
    fam.connect(&cli, 0, &c, &["-p", "8080:80"]);
    let srv = tcp_echo_server(&c, SocketAddr::new(fam.addr(0, 2), 80)).expect("server");
    let dst = SocketAddr::new(fam.host_ip(&fh), 8080);
    let mut st = fh
        .client
        .run_in(move || TcpStream::connect_timeout(&dst, T))
        .expect("ns")
        .expect("connect");
    st.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    st.set_read_timeout(Some(T)).expect("timeout");
    st.read_exact(&mut buf).expect("read");
    let live = cli.flows();
    let ours: Vec<&Value> = live.iter().filter(|f| f["proto"] == "tcp").collect();
    assert_eq!(ours.len(), 2, "an entry per direction: {live:?}");
    assert!(ours.iter().all(|f| f["state"] == "ESTABLISHED"), "{live:?}");

    // A GC with the default timeouts keeps a live flow.
    let out = cli.run(&["conntrack", "gc"]).expect("gc");
    assert!(out.contains("removed 0"), "{out}");
    drop(st);
    std::thread::sleep(Duration::from_millis(300));
    let closed = cli.flows();
    assert!(
        closed
            .iter()
            .filter(|f| f["proto"] == "tcp")
            .all(|f| f["state"] == "CLOSING"),
        "{closed:?}"
    );
    // The closing timeout (here 1 s) removes both entries; nothing else does.
    std::thread::sleep(Duration::from_millis(1500));
    let out = cli
        .run(&["conntrack", "gc", "--ct-tcp-closing", "1"])
        .expect("gc");
    assert!(out.contains("removed 2"), "{out}");
    assert!(cli.flows().iter().all(|f| f["proto"] != "tcp"));
    drop(srv);
}

#[test]
fn uplink_bad_input() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = Cli::uplinked("upbad", None).expect("fake host with its uplink");
    let e = cli.fail(&["uplink", "add", &fh.uplink]).expect("twice");
    assert!(e.contains("already added"), "{e}");
    let e = cli.fail(&["uplink", "add", "dptnosuch0"]).expect("missing");
    assert!(e.contains("uplink dptnosuch0: no such interface"), "{e}");
    let e = cli.fail(&["uplink", "rm", "lo"]).expect("not an uplink");
    assert!(e.contains("uplink lo: not an uplink"), "{e}");
    cli.run(&["uplink", "rm", &fh.uplink]).expect("rm");
    assert_eq!(cli.run(&["uplink", "ls"]).expect("ls").trim(), "");
    let links = std::fs::read_dir(cli.pins.path().join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(links, 0, "uplink rm detached both programs");
}

fn hairpin_from_containers_on_any_network(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("hairpin", None);
    fam.create_network(&cli, 1, &[]);
    let a = NetNs::new("ha").expect("netns");
    let b = NetNs::new("hb").expect("netns");
    let c = NetNs::new("hc").expect("netns");
    fam.connect(&cli, 0, &a, &["-p", "8080:80"]);
    fam.connect(&cli, 0, &b, &["-p", "8081:80"]);
    fam.connect(&cli, 1, &c, &[]);
    let srv_a = http_server(&a, SocketAddr::new(fam.addr(0, 2), 80), "a").expect("a srv");
    let srv_b = http_server(&b, SocketAddr::new(fam.addr(0, 3), 80), "b").expect("b srv");
    let host = |p| SocketAddr::new(fam.host_ip(&fh), p);

    // Another container on the same network, keeping its address.
    assert_eq!(http_get(&b, host(8080), "/", T).expect("b -> a").1, "a");
    any_from(&srv_a.peers(), fam.addr(0, 3));
    assert_eq!(http_get(&a, host(8081), "/", T).expect("a -> b").1, "b");
    // A container of another network.
    assert_eq!(http_get(&c, host(8080), "/", T).expect("c -> a").1, "a");
    any_from(&srv_a.peers(), fam.addr(1, 2));
    // A container reaching its own published port (seen from the gateway).
    assert_eq!(http_get(&a, host(8080), "/", T).expect("a -> a").1, "a");
    any_from(&srv_a.peers(), fam.addr(0, 1));
    drop(srv_b);
    no_csum_errors(&[&a, &b, &c]);
    no_firewall_rules(&fh.host);
}

fn isolation_icc_and_anti_spoofing(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("iso", None);
    fam.create_network(&cli, 1, &[]);
    fam.create_network(
        &cli,
        2,
        &["-o", "com.docker.network.bridge.enable_icc=false"],
    );
    let b = NetNs::new("ib").expect("netns");
    let b2 = NetNs::new("ib2").expect("netns");
    let c = NetNs::new("ic").expect("netns");
    let q1 = NetNs::new("q1").expect("netns");
    let q2 = NetNs::new("q2").expect("netns");
    fam.connect(&cli, 0, &b, &[]);
    fam.connect(&cli, 0, &b2, &[]);
    fam.connect(&cli, 1, &c, &[]);
    fam.connect(&cli, 2, &q1, &[]);
    fam.connect(&cli, 2, &q2, &["-p", "8090:80"]);
    let q2_ip = fam.addr(2, 3);

    // Within a network containers talk; networks are isolated from each
    // other, not from their gateways.
    let echo = SocketAddr::new(fam.addr(0, 3), 7000);
    let _e = tcp_echo_server(&b2, echo).expect("echo");
    assert_eq!(
        tcp_echo(&b, echo, b"same net", T).expect("within the network"),
        b"same net"
    );
    let far = SocketAddr::new(fam.addr(1, 2), 7000);
    let _f = tcp_echo_server(&c, far).expect("echo");
    assert!(tcp_echo(&b, far, b"other net", Duration::from_secs(2)).is_err());
    assert!(!fam
        .ping(&b, fam.addr(1, 2), 1, Duration::from_secs(1))
        .expect("ping"));
    assert!(cli.drops("network-isolation") >= 1);
    assert!(fam.ping(&c, fam.addr(1, 1), 1, T).expect("ping gateway"));

    // ICC off: no direct traffic inside the network; the published port
    // through the host address still works.
    assert!(!fam
        .ping(&q1, q2_ip, 1, Duration::from_secs(1))
        .expect("ping"));
    assert!(cli.drops("icc-disabled") >= 1);
    let _srv = http_server(&q2, SocketAddr::new(q2_ip, 80), "q2").expect("srv");
    assert_eq!(
        http_get(&q1, SocketAddr::new(fam.host_ip(&fh), 8090), "/", T)
            .expect("via host")
            .1,
        "q2"
    );

    // A source address that is not the endpoint's own is dropped.
    let extra = fam.addr(0, 99);
    match fam {
        Family::V4 => b
            .exec(&["ip", "addr", "add", &format!("{extra}/16"), "dev", "eth0"])
            .map(drop)
            .expect("extra addr"),
        Family::V6 => add6(&b, "eth0", &format!("{extra}/64")),
    }
    let before = cli.drops("spoofed-source");
    let (src, gw) = (extra.to_string(), fam.addr(0, 1).to_string());
    let out = b
        .exec_output(
            &["ping", fam.flag(), "-c", "1", "-W", "1", "-I", &src, &gw],
            T,
        )
        .expect("ping");
    assert!(!out.success(), "spoofed ping answered: {}", out.stdout);
    assert!(cli.drops("spoofed-source") > before);
}

/// A bulk transfer from a container to a far host behind a 1280-byte hop
/// (on the router's side only: the far host keeps 1500, so TCP's MSS does
/// not hide the bottleneck) completes, and the container learnt the path
/// MTU from the router's error translated back through masquerade.
fn path_mtu_discovery_works_through_masquerade(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    use dataplane_tests::netns::{add_addr, veth_pair};
    let (fh, cli) = fam.setup("pmtu", None);
    // far -- (MTU 1280) -- client (a router) -- uplink -- host.
    let far = NetNs::new("far").expect("netns");
    let link = dataplane_tests::unique_ifname("far");
    veth_pair(&fh.client, &link, &far, "eth0").expect("veth");
    fh.client
        .exec(&["ip", "link", "set", &link, "mtu", "1280"])
        .expect("mtu");
    let (router, far_ip, far_net) = match fam {
        Family::V4 => ("198.51.100.1", "198.51.100.2", "198.51.100.0/24"),
        Family::V6 => ("2001:db8:2::1", "2001:db8:2::2", "2001:db8:2::/64"),
    };
    match fam {
        Family::V4 => {
            add_addr(&fh.client, &link, &format!("{router}/24")).expect("addr");
            add_addr(&far, "eth0", &format!("{far_ip}/24")).expect("addr");
            fh.client
                .sysctl("net.ipv4.ip_forward", "1")
                .expect("forwarding");
        }
        Family::V6 => {
            add6(&fh.client, &link, &format!("{router}/64"));
            add6(&far, "eth0", &format!("{far_ip}/64"));
            fh.client
                .sysctl("net.ipv6.conf.all.forwarding", "1")
                .expect("forwarding");
        }
    }
    far.exec(&["ip", fam.flag(), "route", "add", "default", "via", router])
        .expect("far route");
    let client_ip = fam.client_ip(&fh).to_string();
    fh.host
        .exec(&[
            "ip",
            fam.flag(),
            "route",
            "add",
            far_net,
            "via",
            &client_ip,
            "dev",
            &fh.uplink,
        ])
        .expect("host route to far");
    let c = NetNs::new("pm").expect("netns");
    fam.connect(&cli, 0, &c, &[]);

    // A sink on the far host: reads everything, answers with the count.
    let far_ip: IpAddr = far_ip.parse().expect("far address");
    let sink_addr = SocketAddr::new(far_ip, 9500);
    let sink = count_sink(&far, sink_addr).expect("sink");
    let sent = c
        .run_in(move || -> std::io::Result<String> {
            let mut st = TcpStream::connect_timeout(&sink_addr, T)?;
            st.set_read_timeout(Some(Duration::from_secs(15)))?;
            st.set_write_timeout(Some(Duration::from_secs(15)))?;
            let block = vec![0xabu8; 64 << 10];
            for _ in 0..16 {
                st.write_all(&block)?;
            }
            st.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            st.read_to_string(&mut reply)?;
            Ok(reply)
        })
        .expect("ns")
        .expect("1 MB through the 1280-MTU hop (a black hole would time out)");
    assert_eq!(sent, (1usize << 20).to_string());
    assert_eq!(sink.join().expect("sink").expect("sink io"), 1 << 20);
    // The container learnt the path MTU from the translated error.
    let route = c
        .exec(&["ip", fam.flag(), "route", "get", &far_ip.to_string()])
        .expect("route get");
    assert!(route.contains("mtu 1280"), "{route}");
}

fn filter_rules_guard_published_ports_and_direct_traffic(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("filter", None);
    let host = |port| SocketAddr::new(fam.host_ip(&fh), port);
    let c = NetNs::new("fc").expect("netns");
    fam.connect(&cli, 0, &c, &["-p", "8080:80"]);
    let ip = fam.addr(0, 2);
    let _srv = http_server(&c, SocketAddr::new(ip, 80), "guarded").expect("http");
    // Direct traffic too: the client is given a route to the subnet.
    fam.client_route(&fh, &fam.subnet(0));
    let short = Duration::from_secs(1);
    assert!(http_get(&fh.client, host(8080), "/", T).is_ok());

    // DOCKER-USER's classic: only one address may come in through the uplink.
    let (only, host_len) = match fam {
        Family::V4 => ("192.168.1.1/32", 32),
        Family::V6 => ("2001:db8:99::1/128", 128),
    };
    let id = cli
        .run(&[
            "filter",
            "add",
            "--in",
            &fh.uplink,
            "--not-src",
            only,
            "--action",
            "drop",
        ])
        .expect("filter add");
    assert!(
        http_get(&fh.client, host(8080), "/", short).is_err(),
        "published port"
    );
    assert!(
        http_get(&fh.client, SocketAddr::new(ip, 80), "/", short).is_err(),
        "direct"
    );
    let ls = cli.json(&["filter", "ls", "--format", "json"]).expect("ls");
    assert_eq!(
        ls[0]["rule"],
        format!("--in {} --not-src {only} --action drop", fh.uplink)
    );
    assert!(ls[0]["packets"].as_u64() >= Some(2), "{ls}");
    assert!(cli.drops("filtered") >= 2);
    // The container's own egress keeps working (replies are not filtered).
    let client_ip = fam.client_ip(&fh);
    let out = tcp_echo_server(&fh.client, SocketAddr::new(client_ip, 9300)).expect("srv");
    assert_eq!(
        tcp_echo(&c, out.local_addr(), b"out", T).expect("egress"),
        b"out"
    );

    // An accept rule put first lets the client in again; removing the drop
    // rule restores everything.
    let client_cidr = format!("{client_ip}/{host_len}");
    let accept = cli
        .run(&[
            "filter",
            "add",
            "--first",
            "--src",
            &client_cidr,
            "--dport",
            "80/tcp",
            "--action",
            "accept",
        ])
        .expect("accept");
    assert_eq!(
        http_get(&fh.client, host(8080), "/", T)
            .expect("accepted")
            .1,
        "guarded"
    );
    cli.run(&["filter", "rm", accept.trim()])
        .expect("rm accept");
    cli.run(&["filter", "rm", id.trim()]).expect("rm drop");
    assert_eq!(
        http_get(&fh.client, host(8080), "/", T)
            .expect("restored")
            .1,
        "guarded"
    );
    // Direct traffic stays out: the default gateway mode (`nat`) protects
    // the subnet from direct access (tests/tests/gateway_modes.rs).
    assert!(http_get(&fh.client, SocketAddr::new(ip, 80), "/", short).is_err());
    assert!(cli.drops("direct-access") >= 1);

    for (args, needle) in [
        (
            vec!["filter", "add", "--src", "10.0.0.0/33", "--action", "drop"],
            "--src",
        ),
        (
            vec!["filter", "add", "--src", "fd00::/129", "--action", "drop"],
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
        let e = cli.fail(&args).expect("refused");
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    assert_eq!(
        cli.json(&["filter", "ls", "--format", "json"]).expect("ls"),
        serde_json::json!([])
    );
}
