//! Masquerade and the host's own sockets, end to end through the CLI in a
//! fake host (issue 12, items 2 and 5): a container's flow never takes the
//! tuple of a connection the host holds, never shadows a host service's
//! port (CVE-2021-3773, the kernel selftest `nft_nat.sh`
//! `test_port_shadow`), and a port taken moves into the configured
//! masquerade range. Each case runs for both families.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use dataplane_tests::{
    cli::Cli, family::Family, family_tests, netns::NetNs, topo::FakeHost, traffic::tcp_echo_server,
};

const T: Duration = Duration::from_secs(5);

struct Setup {
    fam: Family,
    fh: FakeHost,
    cli: Cli,
    /// The container, the first on network 0.
    c: NetNs,
    host_ip: IpAddr,
    client_ip: IpAddr,
}

/// A fake host with `config` as the CLI's config file (None: the
/// defaults), its uplink, and one container.
fn setup(fam: Family, tag: &str, config: Option<&str>) -> Setup {
    let (fh, cli) = fam.setup(tag, config);
    let c = NetNs::new("c").expect("netns");
    fam.connect(&cli, 0, &c, &[]);
    Setup {
        fam,
        host_ip: fam.host_ip(&fh),
        client_ip: fam.client_ip(&fh),
        fh,
        cli,
        c,
    }
}

impl Setup {
    fn connect_from_port(
        &self,
        ns: &NetNs,
        port: u16,
        dst: SocketAddr,
    ) -> anyhow::Result<TcpStream> {
        self.fam.connect_from_port(ns, port, dst, T)
    }
}

/// One echo round trip on an open connection.
fn echo(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(payload)?;
    let mut got = vec![0u8; payload.len()];
    stream.read_exact(&mut got)?;
    Ok(got)
}

/// The next datagram on `s` within `timeout`, with its sender.
fn recv_within(s: &UdpSocket, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        s.set_read_timeout(Some(left)).ok()?;
        match s.recv_from(&mut buf) {
            Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // An ICMP error from an earlier datagram: keep listening.
            Err(_) => {}
        }
    }
    None
}

fn udp_bound(fam: Family, ns: &NetNs, port: u16) -> UdpSocket {
    ns.run_in(|| UdpSocket::bind((fam.unspecified(), port)))
        .expect("run_in")
        .unwrap_or_else(|e| panic!("bind udp {port} in {ns}: {e}"))
}

family_tests!(
    a_container_never_takes_the_tuple_of_a_host_connection,
    a_host_connection_on_a_tuple_masquerade_holds_gets_its_own_port,
    a_container_cannot_shadow_a_host_udp_service,
    a_taken_port_moves_into_the_configured_range,
);

/// Item 2: the host holds a connection from port P to the client's
/// service; a container connecting to the same service from port P must
/// not be masqueraded onto the host's tuple. P = 45000 lies in the
/// masquerade range (default 32768-60999), where the container's port is
/// kept when free, so only the socket lookup keeps them apart.
fn a_container_never_takes_the_tuple_of_a_host_connection(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup(fam, "hostconn", None);
    let svc = SocketAddr::new(s.client_ip, 7004);
    let server = tcp_echo_server(&s.fh.client, svc).expect("server");
    const P: u16 = 45000;
    let mut host_conn = s
        .connect_from_port(&s.fh.host, P, svc)
        .expect("host connection");
    assert_eq!(echo(&mut host_conn, b"host").expect("host echo"), b"host");

    let mut cont_conn = s
        .connect_from_port(&s.c, P, svc)
        .expect("container connection");
    assert_eq!(
        echo(&mut cont_conn, b"container").expect("container echo"),
        b"container"
    );
    // The host's connection is untouched by the container's.
    assert_eq!(
        echo(&mut host_conn, b"still here").expect("host echo after the container's connect"),
        b"still here"
    );

    let peers = server.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert_eq!(peers[0], SocketAddr::new(s.host_ip, P), "the host's");
    assert_eq!(peers[1].ip(), s.host_ip, "masqueraded: {peers:?}");
    assert_ne!(
        peers[1].port(),
        P,
        "the container's flow moved to another port"
    );
    // conntrack agrees: the container's flow left from the port the server saw.
    let flows = s
        .cli
        .json(&["conntrack", "ls", "--format", "json"])
        .expect("conntrack ls");
    let orig = flows
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| {
            f["src"] == s.fam.addr(0, 2).to_string() && f["sport"] == P && f["reply"] == false
        })
        .unwrap_or_else(|| panic!("no flow from the container: {flows}"));
    let want = format!("src -> {}", s.fam.with_port(s.host_ip, peers[1].port()));
    assert!(
        orig["nat"].as_str().is_some_and(|n| n.ends_with(&want)),
        "{orig}"
    );
}

/// Item 2 the other way round: a container's flow holds host:P -> the
/// client's service first; the host then connects to the same service
/// from P (its port allocator sees only its sockets). The host's flow gets
/// a port of its own, as the kernel's NAT remaps a clashing flow, and both
/// connections keep working.
fn a_host_connection_on_a_tuple_masquerade_holds_gets_its_own_port(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup(fam, "hostafter", None);
    let svc = SocketAddr::new(s.client_ip, 7006);
    let server = tcp_echo_server(&s.fh.client, svc).expect("server");
    const P: u16 = 45100;
    let mut cont_conn = s
        .connect_from_port(&s.c, P, svc)
        .expect("container connection");
    assert_eq!(echo(&mut cont_conn, b"c").expect("container echo"), b"c");
    let mut host_conn = s
        .connect_from_port(&s.fh.host, P, svc)
        .expect("the host's connection from the port masquerade holds");
    assert_eq!(echo(&mut host_conn, b"host").expect("host echo"), b"host");
    assert_eq!(
        echo(&mut cont_conn, b"still here").expect("container echo after the host's connect"),
        b"still here"
    );
    let peers = server.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert_eq!(
        peers[0],
        SocketAddr::new(s.host_ip, P),
        "the container's, kept"
    );
    assert_eq!(peers[1].ip(), s.host_ip);
    assert_ne!(peers[1].port(), P, "the host's flow moved: {peers:?}");
}

/// Item 5, the kernel selftest's port shadow: a container sends from a host
/// service's UDP port to the client's 41404; the client's datagrams from
/// 41404 to that port of the host must reach the host's listener, not the
/// container. The socket lookup moves the container's flow off the host
/// service's port, below the masquerade range (1405) and inside it
/// (45405).
fn a_container_cannot_shadow_a_host_udp_service(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup(fam, "shadow", None);
    for (svc_port, client_port) in [(1405u16, 41404u16), (45405, 41405)] {
        let host_listener = udp_bound(s.fam, &s.fh.host, svc_port);
        let container = udp_bound(s.fam, &s.c, svc_port);
        let client = udp_bound(s.fam, &s.fh.client, client_port);
        let to_client = SocketAddr::new(s.client_ip, client_port);
        container
            .send_to(b"from the container", to_client)
            .expect("send");
        let (got, masq) = recv_within(&client, T).expect("the client hears the container");
        assert_eq!(got, b"from the container");
        assert_eq!(masq.ip(), s.host_ip, "masqueraded");
        assert_ne!(masq.port(), svc_port, "not from the host service's port");

        let to_host = SocketAddr::new(s.host_ip, svc_port);
        client.send_to(b"for the host", to_host).expect("send");
        let (got, from) =
            recv_within(&host_listener, T).unwrap_or_else(|| panic!("host {svc_port}: nothing"));
        assert_eq!(got, b"for the host");
        assert_eq!(from, to_client);
        assert_eq!(
            recv_within(&container, Duration::from_millis(500)),
            None,
            "port {svc_port}: the container got the host's datagram"
        );
        // The container's own flow still gets its replies.
        client.send_to(b"reply", masq).expect("send");
        let (got, _) = recv_within(&container, T).expect("the container's reply");
        assert_eq!(got, b"reply");
    }
}

/// A port the host holds is replaced by one of the configured masquerade
/// range (here 50001-65535), and a free port is kept whatever its range
/// (as netfilter's masquerade keeps it).
fn a_taken_port_moves_into_the_configured_range(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup(
        fam,
        "range",
        Some("[masquerade]\nport_min = 50001\nport_max = 65535\n"),
    );
    let svc = SocketAddr::new(s.client_ip, 7005);
    let server = tcp_echo_server(&s.fh.client, svc).expect("server");
    let mut host_conn = s
        .connect_from_port(&s.fh.host, 45000, svc)
        .expect("host connection");
    assert_eq!(echo(&mut host_conn, b"h").expect("host echo"), b"h");
    for port in [45000u16, 30000] {
        let mut conn = s.connect_from_port(&s.c, port, svc).expect("connect");
        assert_eq!(echo(&mut conn, b"x").expect("echo"), b"x");
    }
    let seen: Vec<u16> = server.peers().iter().map(SocketAddr::port).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], 45000, "the host's own");
    assert!((50001..=65535).contains(&seen[1]), "45000 -> {}", seen[1]);
    assert_eq!(seen[2], 30000, "free: kept");
}
