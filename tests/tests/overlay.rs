//! Overlay networks across hosts (docs/overlay.md): a real etcd in its own
//! namespace, three fake hosts on one underlay bridge, each with its own
//! agent on that store. An overlay network made on one host is listed on
//! the others; containers on every host reach each other (ping, TCP);
//! concurrent connects on all hosts get distinct addresses; `network rm`
//! is refused while another host has endpoints on the network.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use dataplane_tests::{
    cluster::{wait_until, Certs, ClusterHost, Etcd, Underlay},
    netns::NetNs,
    run_id,
    traffic::{ping, tcp_echo, tcp_echo_server, udp_echo_server, udp_request},
};
use serde_json::Value;

const SYNC: Duration = Duration::from_secs(15);
/// Connects per host in the concurrent round: the 50 (3 x 50 = 150
/// distinct addresses, a few seconds), or `DP_OVERLAY_CONNECTS`.
fn n() -> usize {
    std::env::var("DP_OVERLAY_CONNECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=200).contains(n))
        .unwrap_or(50)
}

/// The addresses of `net`'s endpoints as `network inspect` on `h` shows
/// them (this host's own), by endpoint name.
fn local_ips(h: &ClusterHost, net: &str) -> Vec<(String, Ipv4Addr)> {
    let v = h.cli.json(&["network", "inspect", net]).expect("inspect");
    let Some(containers) = v[0]["Containers"].as_object() else {
        return Vec::new();
    };
    containers
        .values()
        .map(|c| {
            let ip = c["IPv4Address"].as_str().unwrap_or_default();
            let ip = ip.split('/').next().unwrap_or_default();
            (
                c["Name"].as_str().unwrap_or_default().to_owned(),
                ip.parse().expect("an IPv4 address"),
            )
        })
        .collect()
}

/// Remote endpoints programmed on `h` (from `cluster status`).
fn programmed(h: &ClusterHost) -> u64 {
    h.status()
        .ok()
        .and_then(|s| s["programmed"].as_u64())
        .unwrap_or(0)
}

fn listed(h: &ClusterHost, net: &str) -> Option<Value> {
    let v = h.cli.json(&["network", "ls", "--format", "json"]).ok()?;
    v.as_array()?.iter().find(|n| n["Name"] == net).cloned()
}

/// The underlay, etcd on it (10.77.0.10) and `n` hosts (10.77.0.1...),
/// or None when the test cannot run here.
fn cluster(n: u32, extra: &str) -> Option<(Underlay, Etcd, Vec<ClusterHost>)> {
    if !dataplane_tests::require_root()
        || !dataplane_tests::require_tools("the overlay test", &["etcd"])
    {
        return None;
    }
    let ul = Underlay::new().expect("underlay");
    let etcd = Etcd::start(&ul, "10.77.0.10/24").expect("etcd");
    let ttl = format!("[cluster]\nlease_ttl_seconds = 5\n{extra}");
    let hosts: Vec<ClusterHost> = (1..=n)
        .map(|n| {
            ClusterHost::start(&ul, n, &format!("10.77.0.{n}/24"), &etcd.url(), &ttl).expect("host")
        })
        .collect();
    Some((ul, etcd, hosts))
}

/// `network create -d overlay` on host `on`, then waits until every host
/// lists it.
fn create(hosts: &[ClusterHost], on: usize, net: &str, subnet: &str) {
    hosts[on]
        .cli
        .run(&[
            "network", "create", "-d", "overlay", "--subnet", subnet, net,
        ])
        .expect("network create -d overlay");
    for h in hosts {
        assert!(
            wait_until(SYNC, || listed(h, net).is_some()),
            "{net} not listed on {} within {SYNC:?}: {:?}",
            h.addr,
            h.cli.run(&["network", "ls", "--format", "json"])
        );
    }
}

/// Connects `c` to `net` on `h` (with more flags); its address.
fn connect(h: &ClusterHost, net: &str, c: &NetNs, extra: &[&str]) -> Ipv4Addr {
    let mut args = vec!["connect", net, c.name()];
    args.extend_from_slice(extra);
    h.cli.run(&args).expect("connect");
    local_ips(h, net)
        .into_iter()
        .find(|(name, _)| name == c.name())
        .map(|(_, ip)| ip)
        .expect("the endpoint's address")
}

/// Every container pings and TCP-connects every other (an echo server on
/// port 7000 of each).
fn all_reach_all(cs: &[NetNs], ips: &[Ipv4Addr]) {
    let servers: Vec<_> = cs
        .iter()
        .zip(ips)
        .map(|(c, ip)| tcp_echo_server(c, SocketAddr::from((*ip, 7000))).expect("server"))
        .collect();
    for (i, c) in cs.iter().enumerate() {
        for (j, ip) in ips.iter().enumerate() {
            if i == j {
                continue;
            }
            let ok = wait_until(Duration::from_secs(10), || {
                ping(c, *ip, 1, Duration::from_secs(2)).unwrap_or(false)
            });
            assert!(
                ok,
                "ping from host {} to {ip} (host {}) failed",
                i + 1,
                j + 1
            );
            let got = tcp_echo(
                c,
                SocketAddr::from((*ip, 7000)),
                b"overlay",
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("tcp from host {} to {ip}: {e:#}", i + 1));
            assert_eq!(got, b"overlay");
        }
    }
    drop(servers);
}

/// [`n`] new namespaces per host connected to `net` at once, all hosts
/// together; the namespaces (to keep until the end).
fn concurrent_connects(hosts: &[ClusterHost], net: &str) -> Vec<Vec<NetNs>> {
    let more: Vec<Vec<NetNs>> = (0..3)
        .map(|i| {
            (0..n())
                .map(|k| NetNs::new(&format!("o{i}{k}")).expect("ns"))
                .collect()
        })
        .collect();
    let started = std::time::Instant::now();
    thread::scope(|s| {
        for (h, nss) in hosts.iter().zip(&more) {
            for ns in nss {
                s.spawn(move || {
                    h.cli
                        .run(&["connect", net, ns.name()])
                        .unwrap_or_else(|e| panic!("concurrent connect on {}: {e:#}", h.addr))
                });
            }
        }
    });
    // The measure for per-host address blocks (docs/overlay.md).
    eprintln!(
        "{} concurrent overlay connects on {} hosts: {:?}",
        more.iter().map(Vec::len).sum::<usize>(),
        hosts.len(),
        started.elapsed()
    );
    more
}

#[test]
fn containers_on_three_hosts_share_an_overlay_network() {
    let Some((_ul, etcd, hosts)) = cluster(3, "") else {
        return;
    };
    let net = format!("ov{}", run_id());

    // Made on host 1, listed on hosts 2 and 3 with the same id.
    create(&hosts, 0, &net, "10.0.9.0/24");
    let made = listed(&hosts[0], &net).expect("listed on host 1");
    assert_eq!(made["Driver"], "overlay", "{made}");
    for h in &hosts[1..] {
        assert_eq!(listed(h, &net).unwrap()["Id"], made["Id"]);
    }
    let inspect = hosts[2].cli.json(&["network", "inspect", &net]).unwrap();
    assert_eq!(inspect[0]["Scope"], "global", "{inspect}");
    assert_eq!(inspect[0]["Peers"], serde_json::json!([]), "{inspect}");
    assert_eq!(
        inspect[0]["Options"]["com.docker.network.driver.mtu"], "1450",
        "{inspect}"
    );

    // One container per host, each reaching the others.
    let cs: Vec<NetNs> = (0..3)
        .map(|i| NetNs::new(&format!("oc{i}")).expect("container ns"))
        .collect();
    let mut ips = Vec::new();
    for (h, c) in hosts.iter().zip(&cs) {
        h.cli.run(&["connect", &net, c.name()]).expect("connect");
        let mine = local_ips(h, &net);
        assert_eq!(mine.len(), 1, "{mine:?}");
        ips.push(mine[0].1);
    }
    for h in &hosts {
        assert!(
            wait_until(SYNC, || programmed(h) >= 2),
            "host {}: remote endpoints not programmed: {}",
            h.addr,
            h.status().unwrap_or_default()
        );
    }
    all_reach_all(&cs, &ips);

    // 3 x n() concurrent connects: every address distinct across hosts.
    let _more = concurrent_connects(&hosts, &net);
    let mut all = BTreeSet::new();
    for h in &hosts {
        for (name, ip) in local_ips(h, &net) {
            assert!(
                all.insert(ip),
                "{ip} ({name} on {}) handed out twice",
                h.addr
            );
        }
    }
    assert_eq!(all.len(), 3 * (n() + 1), "{all:?}");

    // Every host sees every endpoint; rm is refused on host 2, naming the
    // other hosts.
    for h in &hosts {
        assert!(
            wait_until(SYNC, || programmed(h) >= 2 * (n() as u64 + 1)),
            "host {}: {}",
            h.addr,
            h.status().unwrap_or_default()
        );
    }
    // Every host's inspect names the same peers: the three hosts.
    for h in &hosts {
        let v = h.cli.json(&["network", "inspect", &net]).unwrap();
        let peers: Vec<&str> = v[0]["Peers"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["IP"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(peers, ["10.77.0.1", "10.77.0.2", "10.77.0.3"], "{v}");
    }
    let table = hosts[0]
        .cli
        .run(&["cluster", "status"])
        .expect("cluster status");
    assert!(
        table.contains("(reachable)") && table.contains("10.77.0.3"),
        "{table}"
    );
    let st = hosts[1].status().expect("cluster status");
    assert_eq!(st["reachable"], true, "{st}");
    for h in &hosts {
        assert_eq!(st["hosts"][&h.addr]["endpoints"], n() as u64 + 1, "{st}");
    }
    let refused = hosts[1]
        .cli
        .fail(&["network", "rm", "--force", &net])
        .expect("rm refused");
    assert!(
        refused.contains("10.77.0.1") && refused.contains("10.77.0.3"),
        "{refused}"
    );
    assert!(listed(&hosts[0], &net).is_some());
    drop(etcd);
}

/// `net`'s VXLAN device on `h` uses the configured port (8472) and MTU
/// 1450; 1 MB goes from `from` to `to` (at `to_ip`, another host) and back
/// over the 1500-byte underlay: no black hole.
fn port_mtu_and_a_megabyte(h: &ClusterHost, net: &str, from: &NetNs, to: &NetNs, to_ip: Ipv4Addr) {
    let v = h.cli.json(&["network", "inspect", net]).expect("inspect");
    let id = v[0]["Id"].as_str().expect("an id");
    let dev = format!("vx-{}", &id[..12]);
    let link =
        h.ns.exec(&["ip", "-d", "link", "show", &dev])
            .expect("ip link");
    assert!(
        link.contains("dstport 8472")
            && link.contains("mtu 1450")
            && link.contains(" udpcsum")
            && link.contains("nolearning")
            && link.contains("proxy"),
        "{link}"
    );
    let _big = tcp_echo_server(to, SocketAddr::from((to_ip, 7002))).expect("server");
    let mb: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let got = tcp_echo(
        from,
        SocketAddr::from((to_ip, 7002)),
        &mb,
        Duration::from_secs(20),
    )
    .expect("1 MB across hosts");
    assert!(
        got == mb,
        "1 MB came back as {} bytes, not the same",
        got.len()
    );
}

#[test]
fn overlay_endpoints_reach_out_are_published_and_stay_apart() {
    let Some((ul, etcd, hosts)) = cluster(2, "vxlan_port = 8472") else {
        return;
    };
    let (a, b) = (format!("oa{}", run_id()), format!("ob{}", run_id()));
    create(&hosts, 0, &a, "10.0.9.0/24");
    create(&hosts, 1, &b, "10.0.10.0/24");
    let cs: Vec<NetNs> = (0..4)
        .map(|i| NetNs::new(&format!("oe{i}")).expect("ns"))
        .collect();
    // a1 on host 1 publishing 8080 -> 7000; a2 on host 2; b1, b2 on network b.
    let a1 = connect(&hosts[0], &a, &cs[0], &["-p", "8080:7000"]);
    let a2 = connect(&hosts[1], &a, &cs[1], &[]);
    let b1 = connect(&hosts[0], &b, &cs[2], &[]);
    let b2 = connect(&hosts[1], &b, &cs[3], &[]);
    for h in &hosts {
        assert!(
            wait_until(SYNC, || programmed(h) >= 2),
            "{}",
            h.status().unwrap_or_default()
        );
    }

    // UDP across hosts.
    let _udp = udp_echo_server(&cs[1], SocketAddr::from((a2, 7001))).expect("udp server");
    let got = udp_request(
        &cs[0],
        SocketAddr::from((a2, 7001)),
        b"u",
        Duration::from_secs(5),
    )
    .expect("udp across hosts");
    assert_eq!(got, b"u");

    port_mtu_and_a_megabyte(&hosts[0], &a, &cs[0], &cs[1], a2);

    // Not across overlay networks, on one host or across two.
    for (from, to) in [(&cs[0], b1), (&cs[0], b2), (&cs[3], a1)] {
        assert!(
            !ping(from, to, 1, Duration::from_secs(1)).unwrap_or(true),
            "{from} reached {to} on another overlay network"
        );
    }
    assert!(
        ping(&cs[2], b2, 1, Duration::from_secs(3)).unwrap_or(false),
        "b1 -> b2"
    );
    // Nor between an overlay network and a local bridge network.
    let local = NetNs::new("oelocal").expect("ns");
    hosts[0]
        .cli
        .run(&["network", "create", "--subnet", "10.0.20.0/24", "lb"])
        .expect("a bridge network");
    let l1 = connect(&hosts[0], "lb", &local, &[]);
    for (from, to) in [(&cs[0], l1), (&local, a1)] {
        assert!(
            !ping(from, to, 1, Duration::from_secs(1)).unwrap_or(true),
            "{from} reached {to} across an overlay and a bridge network"
        );
    }
    // Dropped by the endpoint program as isolation, not lost elsewhere.
    let isolated = hosts[0].cli.drops("network-isolation");
    assert!(
        isolated >= 2,
        "network-isolation drops on host 1: {isolated}"
    );

    // Egress: masqueraded to the host's underlay address.
    let outside =
        tcp_echo_server(&etcd.ns, SocketAddr::from(([10, 77, 0, 10], 7100))).expect("outside");
    let got = tcp_echo(
        &cs[1],
        SocketAddr::from(([10, 77, 0, 10], 7100)),
        b"out",
        Duration::from_secs(5),
    )
    .expect("egress from a2");
    assert_eq!(got, b"out");
    let peers = outside.peers();
    assert_eq!(
        peers.last().map(SocketAddr::ip),
        Some("10.77.0.2".parse().unwrap()),
        "{peers:?}"
    );

    // The published port on host 1 reaches a1, from outside.
    let _server = tcp_echo_server(&cs[0], SocketAddr::from((a1, 7000))).expect("server");
    let got = tcp_echo(
        &etcd.ns,
        SocketAddr::from(([10, 77, 0, 1], 8080)),
        b"pub",
        Duration::from_secs(5),
    )
    .expect("published port of an overlay endpoint");
    assert_eq!(got, b"pub");
    // DOCKER-USER-style filters apply to it as to a bridge endpoint's.
    let id = hosts[0]
        .cli
        .run(&[
            "filter",
            "add",
            "--src",
            "10.77.0.10/32",
            "--action",
            "drop",
        ])
        .expect("filter add");
    let refused = tcp_echo(
        &etcd.ns,
        SocketAddr::from(([10, 77, 0, 1], 8080)),
        b"pub",
        Duration::from_secs(2),
    );
    assert!(refused.is_err(), "the filter let it through: {refused:?}");
    hosts[0]
        .cli
        .run(&["filter", "rm", id.trim()])
        .expect("filter rm");
    drop(ul);
}

/// One round trip on an open connection to an echo server.
fn echo_on(stream: &mut TcpStream, what: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(what)?;
    let mut buf = vec![0u8; what.len()];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

/// The hosts with a live lease in `h`'s `cluster status`.
fn live_hosts(h: &ClusterHost) -> Vec<String> {
    h.status()
        .ok()
        .and_then(|s| s["hosts"].as_object().map(|o| o.keys().cloned().collect()))
        .unwrap_or_default()
}

#[test]
fn a_dead_host_goes_with_its_lease_and_flows_survive_an_etcd_restart() {
    let Some((_ul, mut etcd, mut hosts)) = cluster(3, "") else {
        return;
    };
    let net = format!("of{}", run_id());
    create(&hosts, 0, &net, "10.0.9.0/24");
    let cs: Vec<NetNs> = (0..3)
        .map(|i| NetNs::new(&format!("of{i}")).expect("ns"))
        .collect();
    let ips: Vec<Ipv4Addr> = hosts
        .iter()
        .zip(&cs)
        .map(|(h, c)| connect(h, &net, c, &[]))
        .collect();
    for h in &hosts {
        assert!(
            wait_until(SYNC, || programmed(h) >= 2),
            "{}",
            h.status().unwrap_or_default()
        );
    }
    // A connection from host 1's container to host 2's, open across what
    // follows.
    let server = SocketAddr::from((ips[1], 7000));
    let _echo = tcp_echo_server(&cs[1], server).expect("server");
    let mut flow = cs[0]
        .run_in(|| TcpStream::connect_timeout(&server, Duration::from_secs(5)))
        .expect("run_in")
        .expect("connect c1 -> c2");
    flow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(echo_on(&mut flow, b"before").unwrap(), b"before");

    // Host 3 dies (kill -9, namespace gone): the others drop its endpoint
    // once its lease (5 s) runs out.
    let mut h3 = hosts.pop().expect("host 3");
    h3.kill_agent();
    drop(h3);
    for h in &hosts {
        assert!(
            wait_until(Duration::from_secs(15), || programmed(h) == 1
                && !live_hosts(h).contains(&"10.77.0.3".to_owned())),
            "host {} still has host 3: {}",
            h.addr,
            h.status().unwrap_or_default()
        );
    }

    // etcd down: running flows keep forwarding, a connect fails clearly.
    etcd.stop();
    assert_eq!(echo_on(&mut flow, b"during").unwrap(), b"during");
    assert!(ping(&cs[1], ips[0], 1, Duration::from_secs(3)).unwrap_or(false));
    let late = NetNs::new("oflate").expect("ns");
    let e = hosts[1]
        .cli
        .fail(&["connect", &net, late.name()])
        .expect("connect refused while etcd is down");
    assert!(
        e.contains("cluster store") && e.contains("10.77.0.10:2379"),
        "{e}"
    );
    let st = hosts[0].status().expect("status");
    assert_eq!(st["reachable"], false, "{st}");

    // etcd back: the hosts resync, new endpoints work again.
    etcd.run().expect("etcd restarted");
    assert!(
        wait_until(Duration::from_secs(30), || hosts[1]
            .cli
            .run(&["connect", &net, late.name()])
            .is_ok()),
        "connect after etcd's restart"
    );
    let late_ip = local_ips(&hosts[1], &net)
        .into_iter()
        .find(|(n, _)| n == late.name())
        .map(|(_, ip)| ip)
        .expect("late address");
    assert!(
        wait_until(SYNC, || programmed(&hosts[0]) >= 2),
        "{}",
        hosts[0].status().unwrap_or_default()
    );
    assert!(
        wait_until(Duration::from_secs(10), || ping(
            &cs[0],
            late_ip,
            1,
            Duration::from_secs(2)
        )
        .unwrap_or(false)),
        "host 1 -> the endpoint made after the restart"
    );
    assert_eq!(echo_on(&mut flow, b"after").unwrap(), b"after");
    assert_eq!(hosts[0].status().unwrap()["reachable"], true);
}

/// The VXLAN device's own forwarding entries (`self`: those the agent
/// programs, not those the bridge learns) of `net` on `h`.
fn fdb_macs(h: &ClusterHost, net: &str) -> String {
    let v = h.cli.json(&["network", "inspect", net]).expect("inspect");
    let id = v[0]["Id"].as_str().unwrap_or_default();
    let dev = format!("vx-{}", &id[..12]);
    let all =
        h.ns.exec(&["bridge", "fdb", "show", "dev", &dev])
            .unwrap_or_default();
    all.lines()
        .filter(|l| l.contains(" self"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_restarted_agent_repairs_its_entries_from_the_store() {
    let Some((_ul, _etcd, mut hosts)) = cluster(2, "") else {
        return;
    };
    let net = format!("or{}", run_id());
    create(&hosts, 0, &net, "10.0.9.0/24");
    let cs: Vec<NetNs> = (0..3)
        .map(|i| NetNs::new(&format!("or{i}")).expect("ns"))
        .collect();
    connect(&hosts[0], &net, &cs[0], &[]);
    let ip2 = connect(&hosts[1], &net, &cs[1], &[]);
    assert!(wait_until(SYNC, || programmed(&hosts[1]) == 1));
    let old_mac = {
        let v = hosts[0].cli.json(&["network", "inspect", &net]).unwrap();
        let c = v[0]["Containers"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .clone();
        c["MacAddress"].as_str().unwrap_or_default().to_owned()
    };
    assert!(
        fdb_macs(&hosts[1], &net).contains(&old_mac),
        "{}",
        fdb_macs(&hosts[1], &net)
    );

    // Host 2's agent is down while host 1's endpoint goes and another comes.
    hosts[1].kill_agent();
    let ip3 = connect(&hosts[0], &net, &cs[2], &[]);
    hosts[0]
        .cli
        .run(&["disconnect", &net, cs[0].name()])
        .expect("disconnect");
    hosts[1].restart_agent().expect("restart");
    assert!(
        wait_until(SYNC, || ping(&cs[1], ip3, 1, Duration::from_secs(2))
            .unwrap_or(false)),
        "host 2 -> the endpoint made while its agent was down"
    );
    assert!(
        wait_until(SYNC, || !fdb_macs(&hosts[1], &net).contains(&old_mac)),
        "the gone endpoint's entry stayed: {}",
        fdb_macs(&hosts[1], &net)
    );
    assert_eq!(programmed(&hosts[1]), 1);
    assert!(ping(&cs[2], ip2, 1, Duration::from_secs(3)).unwrap_or(false));

    // `cleanup` on host 2 gives its endpoint's record back: host 1 drops it.
    hosts[1].cli.run(&["cleanup"]).expect("cleanup");
    assert!(
        wait_until(SYNC, || programmed(&hosts[0]) == 0),
        "{}",
        hosts[0].status().unwrap_or_default()
    );
}

#[test]
fn hosts_reach_etcd_over_tls_with_client_certificates() {
    if !dataplane_tests::require_root()
        || !dataplane_tests::require_tools("the overlay TLS test", &["etcd", "openssl"])
    {
        return;
    }
    let ul = Underlay::new().expect("underlay");
    let certs = Certs::new("10.77.0.10").expect("certificates");
    let etcd = Etcd::start_with(&ul, "10.77.0.10/24", Some(&certs)).expect("etcd over TLS");
    let cfg = format!("[cluster]\n{}", certs.agent_config());
    let hosts: Vec<ClusterHost> = (1..=2)
        .map(|n| {
            ClusterHost::start(&ul, n, &format!("10.77.0.{n}/24"), &etcd.url(), &cfg).expect("host")
        })
        .collect();
    let net = format!("ot{}", run_id());
    create(&hosts, 0, &net, "10.0.9.0/24");
    let st = hosts[1].status().expect("cluster status");
    assert_eq!(st["reachable"], true, "{st}");
    assert_eq!(st["hosts"].as_object().map(|h| h.len()), Some(2), "{st}");
}
