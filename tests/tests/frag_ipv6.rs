//! IPv6 fragments through NAT66 and published ports, end to end in a fake
//! host: a 4000-byte UDP datagram (three fragments at MTU 1500; IPv6
//! senders fragment, routers never do) out of a masqueraded container and
//! back, and in to a port published on the host's IPv6 address and back.
//! The later fragments follow their first fragment's flow (`frag`), so
//! they arrive translated and whole; no fragment leaves the host with a
//! container's address.

use std::{net::SocketAddr, time::Duration};

use dataplane_tests::{
    cli::Cli,
    family::add6,
    netns::NetNs,
    traffic::{udp_echo_server, udp_request},
};

const T: Duration = Duration::from_secs(5);
const HOST6: &str = "2001:db8:1::1";
const CLIENT6: &str = "2001:db8:1::2";
/// The first container on `n6`.
const C1: &str = "fd00:87::2";

fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse().expect("an IPv6 address"), port)
}

#[test]
fn fragmented_ipv6_datagrams_are_translated_whole() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = Cli::uplinked("frag6", None).expect("fake host with its uplink");
    add6(&fh.host, &fh.uplink, &format!("{HOST6}/64"));
    add6(&fh.client, &fh.client_dev, &format!("{CLIENT6}/64"));
    cli.run(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.87.0.0/24",
        "--subnet",
        "fd00:87::/64",
        "n6",
    ])
    .expect("network create --ipv6");
    let c = NetNs::new("f6c").expect("netns");
    cli.run(&["connect", "-p", "5353:53/udp", "n6", c.name()])
        .expect("connect");
    // Count, on the client's side, any packet with a container's source.
    let cl = &fh.client;
    for rule in [
        vec!["add", "table", "ip6", "leak"],
        vec![
            "add",
            "chain",
            "ip6",
            "leak",
            "in",
            "{ type filter hook prerouting priority -400; }",
        ],
        vec![
            "add", "rule", "ip6", "leak", "in", "ip6", "saddr", "fd00::/8", "counter",
        ],
    ] {
        let mut args = vec!["nft"];
        args.extend(rule);
        cl.exec(&args).expect("nft");
    }
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();

    // NAT66: 4000 bytes out of the container and back.
    let ext = udp_echo_server(cl, sa(CLIENT6, 7100)).expect("ext");
    let reply = udp_request(&c, ext.local_addr(), &big, T).expect("masqueraded datagram");
    assert_eq!(reply, big);
    assert!(
        ext.peers().iter().all(|p| p.ip() == sa(HOST6, 0).ip()),
        "{:?}",
        ext.peers()
    );

    // A published port: 4000 bytes in to the container and back, the
    // client's address kept.
    let dns = udp_echo_server(&c, sa(C1, 53)).expect("container");
    let reply = udp_request(cl, sa(HOST6, 5353), &big, T).expect("published datagram");
    assert_eq!(reply, big);
    assert!(
        dns.peers().iter().all(|p| p.ip() == sa(CLIENT6, 0).ip()),
        "{:?}",
        dns.peers()
    );

    let counter = cl
        .exec(&["nft", "list", "chain", "ip6", "leak", "in"])
        .expect("nft list");
    assert!(
        counter.contains("counter packets 0 bytes 0"),
        "a container address left the host:\n{counter}"
    );
}
