//! An upgrade under live TCP flows. Building the previous release's binary
//! inside a test is too slow here, so the previous release's pins are made
//! by hand: the live conntrack table is copied into a smaller DP_CT_TCP and
//! the drop counters into a shorter DP_DROP_STATS (the last release had
//! fewer drop reasons), pinned in place of the current ones. The next load
//! (a `dataplane connect`) must migrate both keeping their entries, move
//! the attached programs to the new maps, and the flows must go on.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use dataplane_common::maps;
use dataplane_tests::{
    cli::{stop_agent, Cli},
    family::add6,
    netns::NetNs,
    topo::FakeHost,
    traffic::tcp_echo_server,
};
use dataplane_user::{
    datapath::{ebpf::OBJECT, endpoints, layout},
    sys::bpf::{MapShape, RawMap},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);
const FLOWS: usize = 4;

fn echo(conn: &mut TcpStream, round: u32) {
    let msg = format!("round {round} ");
    conn.write_all(msg.as_bytes()).expect("write");
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, msg.as_bytes());
}

/// Replaces the pin `name` by a map of `shape` holding the live map's
/// entries (all of them: `shape` is big enough).
fn pin_older(cli: &Cli, name: &str, shape: MapShape) -> usize {
    let path = cli.pins.pins().map(name);
    let live = RawMap::from_pin(&path).expect("live map");
    let old = RawMap::create(name, shape).expect("older map");
    let mut n = 0;
    for key in live.keys(shape.max_entries as usize).expect("keys") {
        let Some(value) = live.lookup(&key).expect("lookup") else {
            continue;
        };
        if u32::try_from(n).is_ok_and(|n| n < shape.max_entries) && old.update(&key, &value).is_ok()
        {
            n += 1;
        }
    }
    std::fs::remove_file(&path).expect("unpin the live map");
    old.pin(&path).expect("pin the older map");
    n
}

fn our_flows(cli: &Cli) -> Vec<Value> {
    cli.flows()
        .into_iter()
        .filter(|f| f["proto"] == "tcp" && (f["dport"] == 8080 || f["sport"] == 7000))
        .collect()
}

fn packets(flows: &[Value]) -> u64 {
    flows.iter().filter_map(|f| f["packets"].as_u64()).sum()
}

#[test]
fn live_tcp_flows_survive_an_upgrade_of_the_map_layout() {
    let (fh, cli) = Cli::uplinked("upgrade", None).expect("fake host");
    let c = NetNs::new("upg").expect("netns");
    cli.run(&["connect", "bridge", c.name(), "-p", "8080:7000"])
        .expect("connect");
    let _server =
        tcp_echo_server(&c, SocketAddr::from((Ipv4Addr::new(172, 17, 0, 2), 7000))).expect("echo");
    let dst = SocketAddr::from((fh.host_ip, 8080));
    let mut conns: Vec<TcpStream> = (0..FLOWS)
        .map(|_| {
            let s = fh
                .client
                .run_in(move || TcpStream::connect_timeout(&dst, T))
                .expect("ns")
                .expect("connect through the published port");
            s.set_read_timeout(Some(T)).expect("timeout");
            s
        })
        .collect();
    for c in &mut conns {
        echo(c, 0);
    }
    let before = our_flows(&cli);
    assert_eq!(before.len(), 2 * FLOWS, "{before:?}");
    let filters_before = filter_programs(&fh.host);
    assert_eq!(filters_before.len(), 1, "{filters_before:?}");

    let ct = layout::declared(OBJECT, &[maps::CT_TCP]).expect("object")[maps::CT_TCP];
    let copied = pin_older(
        &cli,
        maps::CT_TCP,
        MapShape {
            max_entries: 4096,
            ..ct
        },
    );
    let drops = layout::declared(OBJECT, &[maps::DROP_STATS]).expect("object")[maps::DROP_STATS];
    pin_older(
        &cli,
        maps::DROP_STATS,
        MapShape {
            max_entries: drops.max_entries - 2,
            ..drops
        },
    );
    assert!(copied >= 2 * FLOWS, "{copied}");

    // The upgrade: the next command that loads the object.
    let c2 = NetNs::new("upg2").expect("netns");
    let out = cli
        .command(&["connect", "bridge", c2.name()])
        .expect("command")
        .output()
        .expect("run connect");
    let log = String::from_utf8_lossy(&out.stderr);
    eprintln!("{log}");
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("pinned map DP_CT_TCP migrated") && log.contains("0 lost"),
        "{log}"
    );
    assert!(log.contains("pinned map DP_DROP_STATS migrated"), "{log}");
    let now = RawMap::from_pin(&cli.pins.pins().map(maps::CT_TCP)).expect("pinned");
    assert_eq!(now.shape(), ct, "the pinned table has the new layout");
    // The first endpoint's filter runs the new load's program (on the new
    // maps); the second endpoint got one of its own.
    let filters_after = filter_programs(&fh.host);
    assert_eq!(filters_after.len(), 2, "{filters_after:?}");
    for (ifindex, id) in &filters_before {
        let now = filters_after.iter().find(|(i, _)| i == ifindex);
        assert!(
            now.is_some_and(|(_, n)| n != id),
            "the filter on interface {ifindex} still runs program {id} ({now:?})"
        );
    }

    // The flows go on, and through the new table: their counters in it
    // move.
    let after_upgrade = packets(&our_flows(&cli));
    for round in 1..=3 {
        for c in &mut conns {
            echo(c, round);
        }
    }
    let flows = our_flows(&cli);
    assert_eq!(flows.len(), 2 * FLOWS, "{flows:?}");
    assert!(
        flows.iter().all(|f| f["state"] == "ESTABLISHED"),
        "{flows:?}"
    );
    let later = packets(&flows);
    eprintln!(
        "{FLOWS} live TCP flows kept across the upgrade; packets in the new table {after_upgrade} -> {later}"
    );
    assert!(
        later >= after_upgrade + 6 * FLOWS as u64,
        "{after_upgrade} -> {later}"
    );
}

/// The program behind each pinned link of the datapath's NAT and endpoint
/// programs (`dp_stats` aside: it is the agent's own, detached on stop),
/// by pin name.
fn attached_programs(cli: &Cli) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let dir = cli.pins.pins().links_dir();
    for e in std::fs::read_dir(&dir).expect("links dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains("dp_stats") {
            continue;
        }
        let path = e.path();
        let out_json = dataplane_tests::cmd::run(&[
            "bpftool",
            "-j",
            "link",
            "show",
            "pinned",
            path.to_str().expect("utf-8 path"),
        ])
        .expect("bpftool link show");
        let v: Value = serde_json::from_str(&out_json).expect("json");
        if let Some(id) = v["prog_id"].as_u64() {
            out.insert(name, id);
        }
    }
    out
}

/// `(ifindex, program id)` of every endpoint filter in `ns`.
fn filter_programs(ns: &NetNs) -> Vec<(u32, u32)> {
    ns.run_in(endpoints::endpoint_filters)
        .expect("netns")
        .expect("endpoint filters")
        .into_iter()
        .map(|(ifindex, _, f)| (ifindex, f.prog_id))
        .collect()
}

/// Runs the previous release's `dataplane ARGS` with the test's flags.
fn prev_run(cli: &Cli, prev: &Path, args: &[&str]) -> String {
    let out = cli
        .command_of(prev, args)
        .output()
        .expect("run the previous release");
    assert!(
        out.status.success(),
        "previous release {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a connection from `ns` to `dst` fails within a second (a
/// filter rule drops its SYN).
fn refused(ns: &NetNs, dst: SocketAddr) -> bool {
    ns.run_in(move || TcpStream::connect_timeout(&dst, Duration::from_secs(1)))
        .expect("ns")
        .is_err()
}

fn connect_from(ns: &NetNs, dst: SocketAddr) -> TcpStream {
    let s = ns
        .run_in(move || TcpStream::connect_timeout(&dst, T))
        .expect("ns")
        .expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s
}

/// The real upgrade: the previous release's agent (built by `cargo xtask
/// test` from `xtask/src/prev_release.rs`'s commit) sets up an IPv4 and a
/// dual-stack network with published ports and carries live TCP flows
/// (in over IPv4 and IPv6, out through the masquerade); the current agent
/// takes over its state and pins. The flows go on, new connections work
/// through the new programs, and the state is the one the old agent made.
#[test]
fn state_and_live_flows_survive_an_upgrade_from_the_previous_release() {
    if !dataplane_tests::require_root() {
        return;
    }
    let prev = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/prev-release/dataplane");
    assert!(
        prev.exists(),
        "the previous release's binary is missing at {}: `cargo xtask test` builds it",
        prev.display()
    );
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "upgprev").expect("cli");
    add6(&fh.host, &fh.uplink, "2001:db8:1::1/64");
    add6(&fh.client, &fh.client_dev, "2001:db8:1::2/64");
    let (old, _) = cli
        .start_agent_of(&prev, &fh.uplink, &["--docker-socket", "off"])
        .expect("the previous release's agent");
    let c = NetNs::new("upgp4").expect("netns");
    let c6 = NetNs::new("upgp6").expect("netns");
    prev_run(
        &cli,
        &prev,
        &[
            "connect",
            "bridge",
            c.name(),
            "-p",
            "8080:7000",
            "-p",
            "8081:7001",
        ],
    );
    // A DOCKER-USER-style rule for one address: the previous release keeps
    // it as a whole bitmap in a map this release converts at load.
    let blocked = format!("{}/32", fh.client_ip);
    prev_run(
        &cli,
        &prev,
        &[
            "filter", "add", "--src", &blocked, "--dport", "7001", "--action", "drop",
        ],
    );
    prev_run(
        &cli,
        &prev,
        &[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "10.83.0.0/24",
            "--subnet",
            "fd00:83::/64",
            "n6",
        ],
    );
    prev_run(
        &cli,
        &prev,
        &["connect", "-p", "8086:7000", "n6", c6.name()],
    );
    let _s4 =
        tcp_echo_server(&c, SocketAddr::from((Ipv4Addr::new(172, 17, 0, 2), 7000))).expect("echo");
    let _s4b =
        tcp_echo_server(&c, SocketAddr::from((Ipv4Addr::new(172, 17, 0, 2), 7001))).expect("echo");
    let to_blocked = SocketAddr::from((fh.host_ip, 8081));
    assert!(
        refused(&fh.client, to_blocked),
        "the old agent's rule drops"
    );
    let c6_addr: std::net::Ipv6Addr = "fd00:83::2".parse().expect("addr");
    let _s6 = tcp_echo_server(&c6, SocketAddr::from((c6_addr, 7000))).expect("echo6");
    let _out = tcp_echo_server(&fh.client, SocketAddr::from((fh.client_ip, 9100))).expect("out");
    let host6: std::net::Ipv6Addr = "2001:db8:1::1".parse().expect("addr");
    let mut conns = vec![
        connect_from(&fh.client, SocketAddr::from((fh.host_ip, 8080))),
        connect_from(&fh.client, SocketAddr::from((fh.host_ip, 8080))),
        connect_from(&fh.client, SocketAddr::from((host6, 8086))),
        connect_from(&c, SocketAddr::from((fh.client_ip, 9100))),
    ];
    for conn in &mut conns {
        echo(conn, 0);
    }
    let inspect_before = prev_run(&cli, &prev, &["network", "inspect", "n6"]);
    let programs_before = attached_programs(&cli);
    assert!(
        !programs_before.is_empty(),
        "no program is attached by pinned link"
    );
    let status = stop_agent(old, libc::SIGTERM).expect("stop the old agent");
    assert!(status.success(), "old agent: {status}");

    // The upgrade: the current agent on the same state and pins.
    let (new, log) = cli.start_agent(&fh.uplink).expect("the current agent");
    eprintln!("{log}");
    for round in 1..=3 {
        for conn in &mut conns {
            echo(conn, round);
        }
    }
    let flows: Vec<Value> = cli
        .flows()
        .into_iter()
        .filter(|f| f["proto"] == "tcp" && f["state"] == "ESTABLISHED")
        .collect();
    assert!(flows.len() >= 2 * conns.len(), "{flows:?}");
    // New connections go through the new programs, on both families.
    for dst in [
        SocketAddr::from((fh.host_ip, 8080)),
        SocketAddr::from((host6, 8086)),
    ] {
        let mut fresh = connect_from(&fh.client, dst);
        echo(&mut fresh, 9);
    }
    // The old endpoints keep their (moved) tcx links, with no filter that
    // would run the programs twice; a new endpoint gets filters.
    assert_eq!(
        filter_programs(&fh.host),
        Vec::new(),
        "no filter on the old veths"
    );
    // The rule holds through the upgrade, converted before the links moved.
    assert!(refused(&fh.client, to_blocked), "the rule still drops");
    assert!(
        !cli.pins.pins().map(maps::FILTER_SRC_HOST_V1[0]).exists(),
        "the old host map is converted and unpinned"
    );
    assert!(
        cli.run(&["filter", "ls"])
            .expect("filter ls")
            .contains(&format!("--src {blocked} --dport 7001/tcp --action drop")),
        "the rule as the old agent stored it"
    );
    let c_new = NetNs::new("upgpn").expect("netns");
    cli.run(&["connect", "-p", "8087:7000", "n6", c_new.name()])
        .expect("connect on the new agent");
    assert_eq!(
        filter_programs(&fh.host).len(),
        2,
        "both programs of a dual-stack endpoint as filters"
    );
    let _sn = tcp_echo_server(
        &c_new,
        SocketAddr::from((
            "fd00:83::3".parse::<std::net::Ipv6Addr>().expect("addr"),
            7000,
        )),
    )
    .expect("echo on the new endpoint");
    echo(
        &mut connect_from(&fh.client, SocketAddr::from((host6, 8087))),
        10,
    );
    let programs_after = attached_programs(&cli);
    eprintln!("programs by link pin: {programs_before:?} -> {programs_after:?}");
    for (pin, id) in &programs_before {
        let now = programs_after.get(pin);
        assert!(
            now.is_some_and(|n| n != id),
            "{pin}: still the previous release's program {id} ({now:?})"
        );
    }
    let inspect_after = cli.run(&["network", "inspect", "n6"]).expect("inspect");
    let (b, a): (Value, Value) = (
        serde_json::from_str(&inspect_before).expect("json"),
        serde_json::from_str(&inspect_after).expect("json"),
    );
    assert_eq!(a[0]["Id"], b[0]["Id"], "the network kept its id");
    assert_eq!(a[0]["IPAM"], b[0]["IPAM"], "and its address plan");
    assert!(
        cli.pins.pins().map(maps::FRAGS6).exists(),
        "the maps the new release adds are pinned"
    );
    let status = stop_agent(new, libc::SIGTERM).expect("stop");
    assert!(status.success(), "new agent: {status}");
    eprintln!(
        "{} live TCP flows (IPv4 in, IPv6 in, masquerade out) kept from {} to the current binary",
        conns.len(),
        prev.display()
    );
}
