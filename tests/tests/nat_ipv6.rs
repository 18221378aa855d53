//! IPv6 NAT end to end through the CLI in a fake host whose uplink has an
//! IPv6 address: a port published on a dual-stack network answers a client
//! outside on the host's IPv6 address with the client's address kept;
//! the containers' own flows leave masqueraded (NAT66: TCP, UDP, ping) and
//! their replies come back; networks stay isolated over IPv6; and a 1 MB
//! transfer through a 1280-byte-MTU hop completes, because the router's
//! Packet Too Big reaches the container translated (IPv6 path MTU
//! discovery behind NAT66).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use dataplane_tests::{
    cli::Cli,
    netns::NetNs,
    topo::FakeHost,
    traffic::{count_sink, tcp_echo, udp_echo_server, udp_request},
};

const T: Duration = Duration::from_secs(5);
const HOST6: &str = "2001:db8:1::1";
const CLIENT6: &str = "2001:db8:1::2";

/// Adds `addr` (without DAD) to `dev` in `ns`, IPv6 on the device first
/// (new namespaces here start with it off).
fn add6(ns: &NetNs, dev: &str, addr: &str) {
    ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0")
        .expect("IPv6 on the device");
    ns.exec(&["ip", "-6", "addr", "add", addr, "dev", dev, "nodad"])
        .expect("ip -6 addr add");
}

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("an IPv6 address")
}

/// The fake host with IPv6 on its uplink (host 2001:db8:1::1/64, client
/// ::2), and a dual-stack network `n6` (10.82.0.0/24, fd00:82::/64).
fn setup(tag: &str) -> (FakeHost, Cli) {
    let (fh, cli) = Cli::uplinked(tag, None).expect("fake host with its uplink");
    add6(&fh.host, &fh.uplink, &format!("{HOST6}/64"));
    add6(&fh.client, &fh.client_dev, &format!("{CLIENT6}/64"));
    cli.run(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.82.0.0/24",
        "--subnet",
        "fd00:82::/64",
        "n6",
    ])
    .expect("network create --ipv6");
    (fh, cli)
}

/// A TCP server in `ns` on `addr` answering one connection with the
/// client's address as it saw it.
fn peer_once(ns: &NetNs, addr: SocketAddr) -> JoinHandle<Option<IpAddr>> {
    let listener = ns
        .run_in(move || TcpListener::bind(addr))
        .expect("run in netns")
        .expect("bind");
    thread::spawn(move || {
        listener.set_nonblocking(true).ok()?;
        let deadline = Instant::now() + T * 2;
        loop {
            match listener.accept() {
                Ok((mut conn, peer)) => {
                    conn.set_nonblocking(false).ok()?;
                    conn.write_all(peer.ip().to_string().as_bytes()).ok()?;
                    return Some(peer.ip());
                }
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(_) => return None,
            }
        }
    })
}

/// Connects from `ns` to `dst` and reads what the server says.
fn ask(ns: &NetNs, dst: SocketAddr) -> String {
    ns.run_in(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&dst, T)?;
        s.set_read_timeout(Some(T))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("run in netns")
    .unwrap_or_else(|e| panic!("tcp from {ns} to {dst}: {e}"))
}

fn ping6(ns: &NetNs, dst: &str) -> bool {
    ns.exec_output(
        &[
            "ping", "-6", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "5", "-w", "5", dst,
        ],
        T + Duration::from_secs(5),
    )
    .expect("ping runs")
    .success()
}

#[test]
fn published_port_and_masquerade_over_ipv6() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("n6pub");
    let c1 = NetNs::new("n6c1").expect("netns");
    cli.run(&["connect", "-p", "8080:80", "n6", c1.name()])
        .expect("connect -p 8080:80");

    // In: the client reaches the container on the host's IPv6 address,
    // and the container sees the client's own address.
    let seen = peer_once(&c1, "[::]:80".parse().expect("addr"));
    let said = ask(&fh.client, SocketAddr::from((ip(HOST6), 8080)));
    assert_eq!(said, CLIENT6, "the container saw the client's address");
    assert_eq!(seen.join().expect("server"), Some(IpAddr::V6(ip(CLIENT6))));

    // Out: the container's flows leave with the host's IPv6 address.
    let seen = peer_once(&fh.client, SocketAddr::from((ip(CLIENT6), 9000)));
    let said = ask(&c1, SocketAddr::from((ip(CLIENT6), 9000)));
    assert_eq!(said, HOST6, "masqueraded to the uplink's IPv6 address");
    assert_eq!(seen.join().expect("server"), Some(IpAddr::V6(ip(HOST6))));
    let udp = SocketAddr::from((ip(CLIENT6), 5353));
    let _echo = udp_echo_server(&fh.client, udp).expect("udp echo");
    assert_eq!(
        udp_request(&c1, udp, b"v6 udp", T).expect("udp through NAT66"),
        b"v6 udp"
    );
    assert!(ping6(&c1, CLIENT6), "ping -6 through NAT66");

    // `conntrack ls` shows the IPv6 flows with their translation, the
    // container's own port kept by the masquerade.
    let flows = cli.flows();
    let has = |dport: u64, nat: &str| {
        flows
            .iter()
            .any(|f| f["dport"] == dport && f["nat"].as_str().is_some_and(|n| n.starts_with(nat)))
    };
    assert!(
        has(8080, "DNAT dst -> [fd00:82::2]:80"),
        "the published flow: {flows:#?}"
    );
    assert!(
        has(9000, "SNAT src -> [2001:db8:1::1]:"),
        "the masqueraded flow: {flows:#?}"
    );
    // The endpoint's flows go with it.
    cli.run(&["disconnect", "n6", c1.name()])
        .expect("disconnect");
    let after = cli.flows();
    assert!(
        after
            .iter()
            .all(|f| f["dport"] != 8080 && f["dport"] != 9000),
        "purged with the endpoint: {after:#?}"
    );
}

#[test]
fn networks_stay_isolated_over_ipv6() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (_fh, cli) = setup("n6iso");
    cli.run(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.83.0.0/24",
        "--subnet",
        "fd00:83::/64",
        "other",
    ])
    .expect("second network");
    let c1 = NetNs::new("n6i1").expect("netns");
    let c2 = NetNs::new("n6i2").expect("netns");
    let c3 = NetNs::new("n6i3").expect("netns");
    cli.run(&["connect", "n6", c1.name()]).expect("connect");
    cli.run(&["connect", "--ip6", "fd00:82::9", "n6", c2.name()])
        .expect("connect");
    cli.run(&["connect", "--ip6", "fd00:83::9", "other", c3.name()])
        .expect("connect");
    let echo = SocketAddr::from((ip("fd00:82::9"), 7000));
    let _s2 = dataplane_tests::traffic::tcp_echo_server(&c2, echo).expect("echo");
    assert_eq!(
        tcp_echo(&c1, echo, b"same net", T).expect("within the network"),
        b"same net"
    );
    let far = SocketAddr::from((ip("fd00:83::9"), 7000));
    let _s3 = dataplane_tests::traffic::tcp_echo_server(&c3, far).expect("echo");
    assert!(
        tcp_echo(&c1, far, b"other net", Duration::from_secs(2)).is_err(),
        "another network's container is not reachable over IPv6"
    );
    assert!(
        cli.drops("network-isolation") >= 1,
        "counted as network-isolation"
    );
}

#[test]
fn packet_too_big_through_nat66_keeps_a_bulk_transfer_going() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("n6ptb");
    // far -- (MTU 1280) -- client (a router) -- uplink -- host.
    let far = NetNs::new("n6far").expect("netns");
    let (rdev, fdev) = ("ptbr0", "ptbf0");
    fh.client
        .exec(&[
            "ip", "link", "add", rdev, "type", "veth", "peer", "name", fdev,
        ])
        .expect("veth");
    fh.client
        .exec(&["ip", "link", "set", fdev, "netns", far.name()])
        .expect("move veth");
    for (ns, dev, addr) in [
        (&fh.client, rdev, "2001:db8:2::1/64"),
        (&far, fdev, "2001:db8:2::2/64"),
    ] {
        ns.exec(&["ip", "link", "set", dev, "mtu", "1280", "up"])
            .expect("mtu");
        add6(ns, dev, addr);
    }
    far.exec(&["ip", "link", "set", "lo", "up"]).expect("lo");
    far.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:2::1",
    ])
    .expect("far route");
    fh.client
        .sysctl("net.ipv6.conf.all.forwarding", "1")
        .expect("router forwards");
    fh.host
        .exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:2::/64",
            "via",
            CLIENT6,
            "dev",
            &fh.uplink,
        ])
        .expect("host route to far");
    let c1 = NetNs::new("n6p1").expect("netns");
    cli.run(&["connect", "n6", c1.name()]).expect("connect");

    let sink = SocketAddr::from((ip("2001:db8:2::2"), 9100));
    let counted = count_sink(&far, sink).expect("sink");
    let sent = c1
        .run_in(move || -> std::io::Result<usize> {
            let mut s = TcpStream::connect_timeout(&sink, T)?;
            s.set_write_timeout(Some(Duration::from_secs(15)))?;
            let block = vec![0x5au8; 64 << 10];
            for _ in 0..16 {
                s.write_all(&block)?;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer.parse().unwrap_or(0))
        })
        .expect("run in netns")
        .expect("1 MB through the 1280-MTU hop (a black hole would time out)");
    assert_eq!(sent, 1 << 20);
    assert_eq!(counted.join().expect("sink thread").expect("sink"), 1 << 20);
}

#[test]
fn hairpin_to_a_port_published_on_the_hosts_ipv6_address() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (_fh, cli) = setup("n6hp");
    let c1 = NetNs::new("n6h1").expect("netns");
    let c2 = NetNs::new("n6h2").expect("netns");
    cli.run(&["connect", "-p", "8080:80", "n6", c1.name()])
        .expect("connect -p");
    cli.run(&["connect", "--ip6", "fd00:82::9", "n6", c2.name()])
        .expect("connect");
    let published = SocketAddr::from((ip(HOST6), 8080));

    // Another container: DNAT keeps its address.
    let seen = peer_once(&c1, "[::]:80".parse().expect("addr"));
    assert_eq!(ask(&c2, published), "fd00:82::9", "c1 saw c2's own address");
    assert_eq!(
        seen.join().expect("server"),
        Some(IpAddr::V6(ip("fd00:82::9")))
    );

    // The container itself: it comes back from the gateway.
    let seen = peer_once(&c1, "[::]:80".parse().expect("addr"));
    assert_eq!(ask(&c1, published), "fd00:82::1", "from the gateway");
    assert_eq!(
        seen.join().expect("server"),
        Some(IpAddr::V6(ip("fd00:82::1")))
    );
}

#[test]
fn a_routed_ipv6_network_opens_only_its_published_container_ports() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("n6rt");
    cli.run(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.84.0.0/24",
        "--subnet",
        "2001:db8:84::/64",
        "-o",
        "com.docker.network.bridge.gateway_mode_ipv4=routed",
        "rt",
    ])
    .expect("a routed dual-stack network");
    let c = NetNs::new("n6r1").expect("netns");
    cli.run(&[
        "connect",
        "-p",
        "8080:80",
        "--ip6",
        "2001:db8:84::2",
        "rt",
        c.name(),
    ])
    .expect("connect");
    // The upstream router's route to the network (docs/docker-compat.md).
    fh.client
        .exec(&["ip", "-6", "route", "add", "2001:db8:84::/64", "via", HOST6])
        .expect("client route");
    let container = ip("2001:db8:84::2");
    let _mapped = dataplane_tests::traffic::tcp_echo_server(&c, SocketAddr::from((container, 80)))
        .expect("server 80");
    let _unmapped =
        dataplane_tests::traffic::tcp_echo_server(&c, SocketAddr::from((container, 81)))
            .expect("server 81");
    assert!(
        ping6(&fh.client, "2001:db8:84::2"),
        "routed: ICMPv6 gets in"
    );
    assert_eq!(
        tcp_echo(&fh.client, SocketAddr::from((container, 80)), b"m", T)
            .expect("the published container port, straight to the container"),
        b"m"
    );
    assert!(
        tcp_echo(
            &fh.client,
            SocketAddr::from((container, 81)),
            b"u",
            Duration::from_secs(1)
        )
        .is_err(),
        "an unpublished port is not reachable"
    );
    assert!(cli.drops("direct-access") >= 1, "counted as direct-access");
    // The container's own flows leave with its own address (no NAT66).
    let seen = peer_once(&fh.client, SocketAddr::from((ip(CLIENT6), 9300)));
    assert_eq!(
        ask(&c, SocketAddr::from((ip(CLIENT6), 9300))),
        "2001:db8:84::2"
    );
    assert_eq!(seen.join().expect("server"), Some(IpAddr::V6(container)));
}
