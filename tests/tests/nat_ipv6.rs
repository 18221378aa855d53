//! What only IPv6 has of NAT end to end through the CLI in a fake host: a
//! routed network of a global prefix (no NAT66, only the published
//! container ports open; IPv4's routed networks are in gateway_modes.rs).
//! The NAT cases both families share (published ports, NAT66 masquerade,
//! conntrack, isolation, hairpin, Packet Too Big through a 1280-byte hop)
//! are written once in nat.rs and the other nat_*.rs files and run for
//! IPv6 there.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use dataplane_tests::{
    family::{Family, CLIENT6, HOST6},
    netns::NetNs,
    traffic::tcp_echo,
};

const T: Duration = Duration::from_secs(5);

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("an IPv6 address")
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

#[test]
fn a_routed_ipv6_network_opens_only_its_published_container_ports() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = Family::V6.setup("n6rt", None);
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
        .exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:84::/64",
            "via",
            &HOST6.to_string(),
        ])
        .expect("client route");
    let container = ip("2001:db8:84::2");
    let _mapped = dataplane_tests::traffic::tcp_echo_server(&c, SocketAddr::from((container, 80)))
        .expect("server 80");
    let _unmapped =
        dataplane_tests::traffic::tcp_echo_server(&c, SocketAddr::from((container, 81)))
            .expect("server 81");
    assert!(
        Family::V6
            .ping(&fh.client, container.into(), 2, T)
            .expect("ping -6"),
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
    let seen = peer_once(&fh.client, SocketAddr::from((CLIENT6, 9300)));
    assert_eq!(ask(&c, SocketAddr::from((CLIENT6, 9300))), "2001:db8:84::2");
    assert_eq!(seen.join().expect("server"), Some(IpAddr::V6(container)));
}
