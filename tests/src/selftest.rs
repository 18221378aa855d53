//! Self-tests of the harness (`cargo test -p dataplane-tests --lib`). The
//! privileged ones build real namespaces and skip (or fail under CI=true)
//! when not root.

use std::{
    collections::HashSet,
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::json;

use crate::{
    cmd,
    leak::{find_leaks, find_leaks_matching, parse_loaded_programs, parse_netns_list},
    netns::{offload_state, parse_snmp, snmp_counter, NetNs},
    run_id,
    topo::{FakeHost, INNER_DEV},
    traffic::{
        http_get, http_server, parse_http_response, parse_ping_received, ping, tcp_echo,
        tcp_echo_server, udp_echo_server, udp_request,
    },
    unique_ifname, unique_name, IFNAME_MAX, PREFIX,
};

/// Privileged tests share this lock; the leak test takes it exclusively so
/// no sibling test's live namespaces count as leaks.
static SUITE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    SUITE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SUITE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const T: Duration = Duration::from_secs(5);
const BRIDGE_GW: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);

fn netns_ino(path: &std::path::Path) -> u64 {
    fs::metadata(path).expect("stat netns").ino()
}

fn current_netns_ino() -> u64 {
    netns_ino(std::path::Path::new("/proc/thread-self/ns/net"))
}

// ---- unprivileged ----

#[test]
fn names_are_prefixed_short_and_unique() {
    let id = run_id();
    assert_eq!(id.len(), 6);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(run_id(), id, "run id is stable");

    let ns = unique_name("some-long-tag");
    assert!(ns.starts_with(&format!("{PREFIX}-{id}-")), "{ns}");
    assert!(ns.ends_with("-some-long-tag"));

    let names: Vec<String> = thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..200)
                        .map(|_| unique_ifname("veth-host!"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    let set: HashSet<&String> = names.iter().collect();
    assert_eq!(set.len(), names.len(), "duplicate interface names");
    for n in &names {
        assert!(n.len() <= IFNAME_MAX, "{n} too long");
        assert!(n.starts_with(&format!("{PREFIX}{id}")), "{n}");
        assert!(n.chars().all(|c| c.is_ascii_alphanumeric()), "{n}");
    }
    assert!(unique_ifname("").len() <= IFNAME_MAX);
}

#[test]
fn cmd_reports_failures_and_timeouts() {
    assert_eq!(cmd::run(&["echo", "hi"]).expect("echo").trim(), "hi");
    let err = format!(
        "{:#}",
        cmd::run(&["sh", "-c", "echo oops >&2; exit 3"]).expect_err("must fail")
    );
    assert!(err.contains("sh -c"), "{err}");
    assert!(err.contains("oops"), "{err}");
    assert!(err.contains('3'), "{err}");
    assert!(cmd::run(&[]).is_err());
    assert!(cmd::run(&["/nonexistent/tool"]).is_err());
    assert!(!cmd::run_ok(&["false"]));

    let start = Instant::now();
    // The grandchild sleep must die with the group, or draining would wait.
    let err = cmd::run_timeout(
        &["sh", "-c", "sleep 30 & sleep 30"],
        Duration::from_millis(300),
    )
    .expect_err("must time out");
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn parsers() {
    let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                Tcp: RtoAlgorithm MaxConn InCsumErrors\nTcp: 1 -1 7\n\
                Udp: InDatagrams InCsumErrors\nUdp: 5 0\n";
    assert_eq!(parse_snmp(snmp, "Tcp", "InCsumErrors").expect("tcp"), 7);
    assert_eq!(parse_snmp(snmp, "Udp", "InDatagrams").expect("udp"), 5);
    assert!(parse_snmp(snmp, "Udp", "Nope").is_err());
    assert!(parse_snmp(snmp, "Icmp", "InMsgs").is_err());
    assert!(
        parse_snmp(snmp, "Tcp", "MaxConn").is_err(),
        "negative is not a counter"
    );

    let (code, body) =
        parse_http_response(b"HTTP/1.0 404 Not Found\r\nA: b\r\n\r\nmissing").expect("http");
    assert_eq!((code, body.as_str()), (404, "missing"));
    assert!(parse_http_response(b"garbage").is_err());
    assert!(parse_http_response(b"FOO 200\r\n\r\n").is_err());

    let ping_out = "--- 10.0.0.1 ping statistics ---\n\
                    3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms\n";
    assert_eq!(parse_ping_received(ping_out), Some(2));
    assert_eq!(
        parse_ping_received("1 packets transmitted, 0 received, +1 errors, 100% packet loss"),
        Some(0)
    );
    assert_eq!(
        parse_ping_received("ping: connect: Network is unreachable"),
        None
    );

    assert_eq!(
        parse_netns_list("dpt-a (id: 3)\nother\n"),
        vec!["dpt-a".to_string(), "other".to_string()]
    );

    let progs = json!([
        {"id": 9, "type": "sched_cls", "name": "dp_stats"},
        {"id": 10, "type": "xdp", "name": "other"},
        {"id": 11, "type": "cgroup_skb"}
    ]);
    let found = parse_loaded_programs(&progs);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("dp_stats") && found[0].contains("id 9"));
}

// ---- privileged ----

#[test]
fn netns_is_removed_on_drop() {
    if !crate::require_root() {
        return;
    }
    let _g = shared();
    let ns = NetNs::new("drop").expect("create netns");
    let path = ns.path().to_path_buf();
    assert!(ns.name().starts_with(&format!("{PREFIX}-{}-", run_id())));
    assert!(path.exists());
    let links = ns.ip_json(&["link", "show"]).expect("ip -j link");
    let names: Vec<&str> = links
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert_eq!(names, ["lo"]);
    let lo_up = links[0]["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .any(|f| f == "UP");
    assert!(lo_up, "lo must be up: {links}");
    assert_eq!(
        ns.sysctl_get("net.ipv6.conf.default.disable_ipv6")
            .expect("get"),
        "1"
    );
    ns.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");
    assert_eq!(ns.sysctl_get("net.ipv4.ip_forward").expect("get"), "1");
    drop(ns);
    assert!(!path.exists(), "{} survived drop", path.display());
}

#[test]
fn netns_is_removed_after_panic() {
    if !crate::require_root() {
        return;
    }
    let _g = shared();
    let caught = std::panic::catch_unwind(|| {
        let ns = NetNs::new("panic").expect("create netns");
        std::panic::panic_any(ns.path().to_path_buf());
    })
    .expect_err("closure panics");
    let path = caught
        .downcast::<std::path::PathBuf>()
        .expect("payload is the netns path");
    assert!(!path.exists(), "{} survived a panic", path.display());
}

#[test]
fn run_in_and_spawn_in_switch_only_their_thread() {
    if !crate::require_root() {
        return;
    }
    let _g = shared();
    let ns = NetNs::new("setns").expect("create netns");
    let want = netns_ino(ns.path());
    let before = current_netns_ino();
    assert_ne!(before, want);
    assert_eq!(ns.run_in(current_netns_ino).expect("run_in"), want);
    let h = ns.spawn_in(current_netns_ino).expect("spawn_in");
    assert_eq!(h.join().expect("join"), want);
    assert_eq!(current_netns_ino(), before, "caller must stay where it was");

    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = ns.run_in(|| panic!("inner"));
    }));
    assert!(caught.is_err(), "a panic in run_in reaches the caller");
}

/// A fake host with one container on a bridge, client routed to it directly.
fn build(offload: bool) -> Result<(FakeHost, crate::topo::Container)> {
    let fh = FakeHost::new(offload)?;
    let br = fh.add_bridge("br", "10.200.0.1/24")?;
    let c = fh.add_container(&br, "c1", "10.200.0.2/24", BRIDGE_GW, offload)?;
    fh.client_route("10.200.0.0/24")?;
    Ok((fh, c))
}

fn exercise(offload: bool) {
    let (fh, c) = build(offload).expect("build topology");
    assert!(fh.uplink.len() <= IFNAME_MAX && c.host_veth.len() <= IFNAME_MAX);
    assert_eq!(
        fh.host.sysctl_get("net.ipv4.ip_forward").expect("sysctl"),
        "1"
    );

    // No IPv6 chatter on the links (see NetNs::new).
    let v6 = c.ns.ip_json(&["-6", "addr", "show"]).expect("ip -6 addr");
    let v6_addrs: usize = v6
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l["addr_info"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(v6_addrs, 0, "{v6}");

    let want_on = offload;
    for (ns, dev) in [
        (&fh.host, fh.uplink.as_str()),
        (&fh.client, fh.client_dev.as_str()),
        (&fh.host, c.host_veth.as_str()),
        (&c.ns, INNER_DEV),
    ] {
        let (tx, rx) = offload_state(ns, dev).expect("ethtool -k");
        if !want_on {
            assert!(!tx && !rx, "offload still on for {dev} in {ns}");
        }
    }

    let tcp_addr = SocketAddr::from((c.ip, 7000));
    let udp_addr = SocketAddr::from((c.ip, 7001));
    let http_addr = SocketAddr::from((c.ip, 8080));
    let tcp = tcp_echo_server(&c.ns, tcp_addr).expect("tcp server");
    let udp = udp_echo_server(&c.ns, udp_addr).expect("udp server");
    let http = http_server(&c.ns, http_addr, "hello from c1").expect("http server");
    assert_eq!(tcp.local_addr(), tcp_addr);

    // Big enough to need many segments, so checksums are computed per segment.
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let got = tcp_echo(&fh.client, tcp_addr, &payload, T).expect("tcp echo");
    assert!(
        got == payload,
        "echo differs: {} of {} bytes",
        got.len(),
        payload.len()
    );
    assert_eq!(
        udp_request(&fh.client, udp_addr, b"ping-udp", T).expect("udp"),
        b"ping-udp"
    );
    let (status, body) = http_get(&fh.client, http_addr, "/", T).expect("http get");
    assert_eq!((status, body.as_str()), (200, "hello from c1"));
    assert!(ping(&fh.client, c.ip, 3, T).expect("ping"));
    // An address on the bridge subnet that nobody has: routed, but silent.
    assert!(!ping(
        &fh.client,
        Ipv4Addr::new(10, 200, 0, 99),
        1,
        Duration::from_secs(1)
    )
    .expect("ping to nobody"));

    // No NAT: the servers see the client's own address.
    for (what, peers) in [
        ("tcp", tcp.peers()),
        ("udp", udp.peers()),
        ("http", http.peers()),
    ] {
        assert!(!peers.is_empty(), "{what} saw no peer");
        assert!(
            peers.iter().all(|p| p.ip() == fh.client_ip),
            "{what} peers {peers:?}"
        );
    }

    // Nothing listens on this port: refused fast, not a hang.
    let closed = SocketAddr::from((c.ip, 7999));
    assert!(tcp_echo(&fh.client, closed, b"x", T).is_err());
    assert!(udp_request(&fh.client, closed, b"x", Duration::from_millis(500)).is_err());

    for ns in [&fh.client, &c.ns, &fh.host] {
        for proto in ["Tcp", "Udp"] {
            assert_eq!(
                snmp_counter(ns, proto, "InCsumErrors").expect("snmp"),
                0,
                "{proto} checksum errors in {ns}"
            );
        }
    }
    assert!(snmp_counter(&c.ns, "Udp", "InDatagrams").expect("snmp") >= 1);

    let start = Instant::now();
    drop((tcp, udp, http));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "server drop took {:?}",
        start.elapsed()
    );
}

#[test]
fn fake_host_routes_client_to_container() {
    if !crate::require_root() {
        return;
    }
    let _g = shared();
    exercise(true);
}

#[test]
fn fake_host_works_with_checksum_offload_off() {
    if !crate::require_root() {
        return;
    }
    let _g = shared();
    exercise(false);
}

#[test]
fn nothing_leaks() {
    if !crate::require_root() {
        return;
    }
    let _g = exclusive();
    let id = run_id();
    {
        let (fh, c) = build(false).expect("build topology");
        let _srv = tcp_echo_server(&c.ns, SocketAddr::from((c.ip, 7000))).expect("server");
        assert!(
            !find_leaks_matching(&id).expect("leak check").is_empty(),
            "check sees live objects"
        );
        drop(fh);
    }
    let _ = std::panic::catch_unwind(|| {
        let _ns = NetNs::new("leakpanic").expect("create netns");
        panic!("dropped while unwinding");
    });
    let leaks = find_leaks_matching(&id).expect("leak check");
    assert!(leaks.is_empty(), "leaked: {leaks:#?}");
    // Other processes may be mid-run, so the global view is only required to work.
    find_leaks().expect("global leak check runs");
}
