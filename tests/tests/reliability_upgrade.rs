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
    time::Duration,
};

use dataplane_common::maps;
use dataplane_tests::{cli::Cli, netns::NetNs, traffic::tcp_echo_server};
use dataplane_user::{
    datapath::{ebpf::OBJECT, layout},
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
