//! The fast path end to end, through the CLI in a fake host: traffic from
//! the external client to a published port and a container's masqueraded
//! egress both work, and skip the host's IP stack — the host's
//! `Ip: ForwDatagrams` (`/proc/net/snmp`) stays where it was — while with
//! the fast path off (`dataplane agent --fast-path off`) the same traffic is
//! forwarded by the stack and the counter grows. Packets the fast path must
//! leave to the stack still get there: bigger than the MTU on the way, in
//! either direction, they make the host send "fragmentation needed", and
//! PMTU discovery works. The bridge's MAC, which the fast path's routes
//! hold, does not move as ports come and go.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use dataplane_tests::{
    cli::{stop_agent, Cli},
    datapath,
    family::add6,
    netns::{set_offload, snmp6_counter, snmp_counter, NetNs},
    topo::FakeHost,
    traffic::{
        count_sink, http_get, http_server, ping, tcp_echo, tcp_echo_server, udp_echo_server,
        udp_request, Server,
    },
};

const T: Duration = Duration::from_secs(5);
/// The first container on the default network.
const WEB: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);

fn forwarded(fh: &FakeHost) -> u64 {
    snmp_counter(&fh.host, "Ip", "ForwDatagrams").expect("Ip: ForwDatagrams")
}

fn no_csum_errors(nss: &[&NetNs]) {
    for ns in nss {
        for proto in ["Tcp", "Udp"] {
            assert_eq!(
                snmp_counter(ns, proto, "InCsumErrors").expect("snmp"),
                0,
                "{proto} InCsumErrors in {}",
                ns.name()
            );
        }
    }
}

/// A container `web` on the default network publishing 8080 -> 80 (HTTP)
/// and 5353 -> 53/udp (echo), checksum offload off inside so every
/// checksum the dataplane updates is checked by a receiver; it reaches the
/// client's TCP and UDP echo servers on 9000.
struct Traffic {
    web: NetNs,
    _http: Server,
    _dns: Server,
}

fn web_container(fh: &FakeHost, cli: &Cli) -> Traffic {
    let web = NetNs::new("fpweb").expect("netns");
    cli.run(&[
        "connect",
        "bridge",
        web.name(),
        "--name",
        "web",
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
    ])
    .expect("connect with ports");
    set_offload(&web, "eth0", false).expect("offload off in the container");
    let http = http_server(&web, SocketAddr::from((WEB, 80)), "fast").expect("http");
    let dns = udp_echo_server(&web, SocketAddr::from((WEB, 53))).expect("udp");
    // Neighbours first (ARP is not IP, but a first packet waiting for one
    // is not what the counters are about).
    assert!(ping(&web, fh.host_ip, 1, T).expect("ping"));
    Traffic {
        web,
        _http: http,
        _dns: dns,
    }
}

/// Published port in, masquerade out: TCP, UDP and ICMP each way; the
/// servers see the addresses they should.
fn exercise(fh: &FakeHost, t: &Traffic) {
    let host = |port| SocketAddr::from((fh.host_ip, port));
    for _ in 0..3 {
        let (status, body) = http_get(&fh.client, host(8080), "/", T).expect("GET host:8080");
        assert_eq!((status, body.as_str()), (200, "fast"));
    }
    assert_eq!(
        udp_request(&fh.client, host(5353), b"q?", T).expect("udp to the published port"),
        b"q?"
    );
    let ext = SocketAddr::from((fh.client_ip, 9000));
    let echo = tcp_echo_server(&fh.client, ext).expect("external tcp server");
    let udp = udp_echo_server(&fh.client, ext).expect("external udp server");
    let big = vec![0x5au8; 300_000];
    assert_eq!(
        tcp_echo(&t.web, ext, &big, T).expect("tcp out and back"),
        big
    );
    assert_eq!(
        udp_request(&t.web, ext, b"out", T).expect("udp out"),
        b"out"
    );
    assert!(ping(&t.web, fh.client_ip, 3, T).expect("ping"), "ping out");
    for peers in [echo.peers(), udp.peers()] {
        assert!(
            !peers.is_empty() && peers.iter().all(|p| p.ip() == fh.host_ip),
            "masqueraded to the host's address: {peers:?}"
        );
    }
}

#[test]
fn translated_flows_skip_the_host_stack() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "fpon").expect("cli");
    cli.run(&["uplink", "add", &fh.uplink]).expect("uplink add");
    let t = web_container(&fh, &cli);

    let before = forwarded(&fh);
    exercise(&fh, &t);
    let after = forwarded(&fh);
    assert_eq!(
        after,
        before,
        "the host forwarded {} datagrams the fast path should have carried",
        after - before
    );
    // The flows are the dataplane's all the same: counted and tracked.
    let nat = cli
        .json(&["nat", "ls", "--format", "json"])
        .expect("nat ls");
    let row = nat["dnat"]
        .as_array()
        .expect("dnat")
        .iter()
        .find(|r| r["host"] == "0.0.0.0:8080")
        .cloned()
        .expect("8080");
    assert!(row["packets"].as_u64() >= Some(3), "{nat}");
    let ct = cli
        .json(&["conntrack", "ls", "--format", "json"])
        .expect("conntrack ls");
    assert!(
        ct.as_array().expect("flows").iter().any(|f| f["dport"] == 9000
            && f["nat"].as_str().is_some_and(|n| n.starts_with("SNAT"))),
        "{ct}"
    );
    no_csum_errors(&[&fh.client, &t.web, &fh.host]);
}

#[test]
fn with_the_fast_path_off_the_stack_forwards() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "fpoff").expect("cli");
    // The agent attaches the uplink's programs and (on `connect`, which
    // the CLI sends it) the endpoint's, all with the fast path off.
    let (agent, _) = cli
        .start_agent_with(
            &fh.uplink,
            &["--docker-socket", "off", "--fast-path", "off"],
        )
        .expect("agent");
    let t = web_container(&fh, &cli);

    let before = forwarded(&fh);
    exercise(&fh, &t);
    let grown = forwarded(&fh) - before;
    // Three GETs alone are more than 20 packets each way; 300 kB are
    // hundreds.
    assert!(
        grown >= 200,
        "the stack forwarded only {grown} datagrams with the fast path off"
    );
    no_csum_errors(&[&fh.client, &t.web, &fh.host]);
    let status = stop_agent(agent, libc::SIGTERM).expect("stop agent");
    assert!(status.success(), "agent exit: {status}");

    let e = cli
        .fail(&["agent", "--iface", &fh.uplink, "--fast-path", "maybe"])
        .expect("a bad value is refused");
    assert!(e.contains("--fast-path") && e.contains("on or off"), "{e}");
}

/// Polls `ip route get DST` in `ns` until it shows `mtu MTU` (a learnt
/// path MTU), bounded.
fn learnt_mtu(ns: &NetNs, dst: Ipv4Addr, mtu: u32) -> Result<(), String> {
    let deadline = Instant::now() + T;
    loop {
        let route = ns
            .exec(&["ip", "route", "get", &dst.to_string()])
            .map_err(|e| e.to_string())?;
        if route.contains(&format!("mtu {mtu}")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(route);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn path_mtu_discovery_out_of_containers() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "fppmout").expect("cli");
    cli.run(&["uplink", "add", &fh.uplink]).expect("uplink add");

    // The host's uplink takes 1280 bytes (the client's end keeps
    // 1500, so the client's MSS does not hide the bottleneck). The
    // container keeps checksum offload and TSO on: its big segments reach
    // the fast path as GSO packets, checked segment by segment.
    fh.host
        .exec(&["ip", "link", "set", &fh.uplink, "mtu", "1280"])
        .expect("uplink mtu");
    let c = NetNs::new("fppm").expect("netns");
    cli.run(&["connect", "bridge", c.name()]).expect("connect");
    let dst = SocketAddr::from((fh.client_ip, 9500));
    let sink = count_sink(&fh.client, dst).expect("sink");
    let payload = vec![0xabu8; 300_000];
    let reply = c
        .run_in(move || -> std::io::Result<String> {
            let mut st = TcpStream::connect_timeout(&dst, T)?;
            st.set_read_timeout(Some(Duration::from_secs(20)))?;
            st.set_write_timeout(Some(Duration::from_secs(20)))?;
            st.write_all(&payload)?;
            st.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            st.read_to_string(&mut reply)?;
            Ok(reply)
        })
        .expect("ns")
        .expect("a transfer larger than the uplink's MTU completes");
    assert_eq!(reply, "300000");
    assert_eq!(sink.join().expect("sink").expect("sink io"), 300_000);
    learnt_mtu(&c, fh.client_ip, 1280)
        .unwrap_or_else(|route| panic!("the container learnt no path MTU: {route}"));
    no_csum_errors(&[&fh.client, &fh.host]);
}

#[test]
fn path_mtu_discovery_into_containers() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "fppmin").expect("cli");
    cli.run(&["uplink", "add", &fh.uplink]).expect("uplink add");

    // A network whose MTU is 1280, a client sending 1400-byte UDP
    // datagrams with DF to its published port. The fast path leaves them to
    // the stack, whose "fragmentation needed" (quoting the translated
    // packet) goes back translated, so the client learns the path MTU to
    // the host's address; datagrams that fit still get through.
    cli.run(&[
        "network",
        "create",
        "--subnet",
        "10.93.0.0/24",
        "-o",
        "com.docker.network.driver.mtu=1280",
        "small",
    ])
    .expect("network with MTU 1280");
    let s = NetNs::new("fpsm").expect("netns");
    cli.run(&["connect", "small", s.name(), "-p", "5354:53/udp"])
        .expect("connect");
    let srv = udp_echo_server(&s, SocketAddr::from(([10, 93, 0, 2], 53))).expect("udp echo server");
    let published = SocketAddr::from((fh.host_ip, 5354));
    assert_eq!(
        udp_request(&fh.client, published, b"small", T).expect("a datagram that fits"),
        b"small"
    );
    let received = srv.peers().len();
    let first_big = fh
        .client
        .run_in(move || -> std::io::Result<usize> {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            let on = libc::IP_PMTUDISC_DO;
            // SAFETY: setsockopt on a socket this closure owns, with an int.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            sock.connect(published)?;
            sock.send(&[7u8; 1400])
        })
        .expect("ns")
        .expect("the first 1400-byte datagram leaves the client");
    assert_eq!(first_big, 1400);
    learnt_mtu(&fh.client, fh.host_ip, 1280).unwrap_or_else(|route| {
        panic!("the client learnt no path MTU towards the published port: {route}")
    });
    assert_eq!(
        srv.peers().len(),
        received,
        "the 1400-byte datagram did not fit the container's network"
    );
    no_csum_errors(&[&fh.client, &s, &fh.host]);
}

/// The MAC of `dev` in `ns`.
fn mac_of(ns: &NetNs, dev: &str) -> String {
    let v = ns.ip_json(&["link", "show", "dev", dev]).expect("ip link");
    v[0]["address"].as_str().expect("address").to_owned()
}

#[test]
fn the_bridge_mac_stays_and_routes_follow_endpoints() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "fpmac").expect("cli");
    cli.run(&["uplink", "add", &fh.uplink]).expect("uplink add");
    let t = web_container(&fh, &cli);
    let bridge = "dp0";
    let mac = mac_of(&fh.host, bridge);

    // A bridge whose MAC was never set takes its lowest port MAC: give a
    // port the lowest there is, add and remove others, refuse a duplicate
    // port (Docker's "dup" scenario).
    let ports = fh
        .host
        .ip_json(&["link", "show", "master", bridge])
        .expect("ports");
    let web_port = ports[0]["ifname"].as_str().expect("ifname").to_owned();
    fh.host
        .exec(&[
            "ip",
            "link",
            "set",
            &web_port,
            "address",
            "02:00:00:00:00:01",
        ])
        .expect("low port MAC");
    assert_eq!(mac_of(&fh.host, bridge), mac, "a port's MAC change");
    let b = NetNs::new("fpmb").expect("netns");
    cli.run(&["connect", "bridge", b.name()]).expect("b");
    let b_ip = Ipv4Addr::new(172, 17, 0, 3);
    let routes = datapath::endpoint_routes(cli.pins.pins()).expect("routes");
    assert_eq!(
        routes.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![WEB, b_ip],
        "{routes:?}"
    );
    let dup = NetNs::new("fpmd").expect("netns");
    let e = cli
        .fail(&["connect", "bridge", dup.name(), "-p", "8080:80"])
        .expect("duplicate port refused");
    assert!(e.contains("8080"), "{e}");
    cli.run(&["disconnect", "bridge", b.name()])
        .expect("disconnect b");
    assert_eq!(mac_of(&fh.host, bridge), mac, "ports joined and left");
    // The routes are the endpoints': b's went with it; web's names its
    // veth, its MAC inside and the bridge's.
    let routes = datapath::endpoint_routes(cli.pins.pins()).expect("routes");
    let hex = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let web_index = ports[0]["ifindex"].as_u64().expect("ifindex");
    assert_eq!(routes.len(), 1, "{routes:?}");
    let (addr, r) = routes[0];
    assert_eq!(
        (addr, u64::from(r.ifindex), hex(r.mac), hex(r.gateway_mac)),
        (WEB, web_index, mac_of(&t.web, "eth0"), mac.clone())
    );

    // The published port still answers, still past the stack.
    let before = forwarded(&fh);
    for _ in 0..3 {
        let (status, _) = http_get(&fh.client, SocketAddr::from((fh.host_ip, 8080)), "/", T)
            .expect("GET :8080 after ports came and went");
        assert_eq!(status, 200);
    }
    assert_eq!(
        forwarded(&fh),
        before,
        "fast path after ports came and went"
    );
    drop(t);
}

const HOST6: &str = "2001:db8:1::1";
const CLIENT6: &str = "2001:db8:1::2";
/// The first container on the IPv6 network `n6`.
const WEB6: &str = "fd00:86::2";

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("an IPv6 address")
}

fn forwarded6(fh: &FakeHost) -> u64 {
    snmp6_counter(&fh.host, "Ip6OutForwDatagrams").expect("Ip6OutForwDatagrams")
}

fn ping6(ns: &NetNs, dst: &str) -> bool {
    ns.exec(&[
        "ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "5", "-w", "5", dst,
    ])
    .is_ok()
}

/// The IPv6 twin of `translated_flows_skip_the_host_stack` and
/// `with_the_fast_path_off_the_stack_forwards`: a published port on the
/// host's IPv6 address in (client address kept), NAT66 out (TCP, UDP,
/// ping); with the fast path on, the host's `Ip6OutForwDatagrams` stays
/// where it was, with it off the stack forwards it all.
fn ipv6_flows(tag: &str, fast_path: bool) {
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, tag).expect("cli");
    add6(&fh.host, &fh.uplink, &format!("{HOST6}/64"));
    add6(&fh.client, &fh.client_dev, &format!("{CLIENT6}/64"));
    let mode = if fast_path { "on" } else { "off" };
    let (agent, _) = cli
        .start_agent_with(&fh.uplink, &["--docker-socket", "off", "--fast-path", mode])
        .expect("agent");
    cli.run(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.86.0.0/24",
        "--subnet",
        "fd00:86::/64",
        "n6",
    ])
    .expect("network create --ipv6");
    let web = NetNs::new("fp6web").expect("netns");
    cli.run(&[
        "connect",
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
        "n6",
        web.name(),
    ])
    .expect("connect with ports");
    set_offload(&web, "eth0", false).expect("offload off in the container");
    let _http = http_server(&web, SocketAddr::from((v6(WEB6), 80)), "fast6").expect("http");
    let srv = udp_echo_server(&web, SocketAddr::from((v6(WEB6), 53))).expect("udp");
    // Neighbours first (NDP is ICMPv6 the fast path leaves alone).
    assert!(ping6(&web, CLIENT6), "ping -6 out");
    assert!(ping6(&fh.client, HOST6), "client reaches the host");

    let routes = datapath::endpoint_routes6(cli.pins.pins()).expect("routes");
    assert_eq!(
        routes.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![v6(WEB6)],
        "{routes:?}"
    );
    let before = forwarded6(&fh);
    let host = |port| SocketAddr::from((v6(HOST6), port));
    for _ in 0..3 {
        let (status, body) = http_get(&fh.client, host(8080), "/", T).expect("GET [host6]:8080");
        assert_eq!((status, body.as_str()), (200, "fast6"));
    }
    assert_eq!(
        udp_request(&fh.client, host(5353), b"q6", T).expect("udp to the published port"),
        b"q6"
    );
    assert!(
        srv.peers().iter().all(|p| p.ip() == v6(CLIENT6)),
        "the client's address kept: {:?}",
        srv.peers()
    );
    let ext = SocketAddr::from((v6(CLIENT6), 9000));
    let echo = tcp_echo_server(&fh.client, ext).expect("external tcp server");
    let udp = udp_echo_server(&fh.client, ext).expect("external udp server");
    let big = vec![0x6bu8; 300_000];
    assert_eq!(tcp_echo(&web, ext, &big, T).expect("tcp out and back"), big);
    assert_eq!(
        udp_request(&web, ext, b"out6", T).expect("udp out"),
        b"out6"
    );
    assert!(ping6(&web, CLIENT6), "ping -6 out");
    for peers in [echo.peers(), udp.peers()] {
        assert!(
            !peers.is_empty() && peers.iter().all(|p| p.ip() == v6(HOST6)),
            "masqueraded to the host's address: {peers:?}"
        );
    }
    let grown = forwarded6(&fh) - before;
    if fast_path {
        assert_eq!(
            grown, 0,
            "the host forwarded {grown} IPv6 datagrams the fast path should have carried"
        );
    } else {
        assert!(
            grown >= 200,
            "the stack forwarded only {grown} IPv6 datagrams with the fast path off"
        );
    }
    no_csum_errors(&[&fh.client, &web, &fh.host]);
    let status = stop_agent(agent, libc::SIGTERM).expect("stop agent");
    assert!(status.success(), "agent exit: {status}");
}

#[test]
fn ipv6_translated_flows_skip_the_host_stack() {
    if !dataplane_tests::require_root() {
        return;
    }
    ipv6_flows("fp6on", true);
}

#[test]
fn ipv6_with_the_fast_path_off_the_stack_forwards() {
    if !dataplane_tests::require_root() {
        return;
    }
    ipv6_flows("fp6off", false);
}
