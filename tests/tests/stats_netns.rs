//! `dp_stats` on a real uplink: a user attaches it with the `dataplane` CLI
//! inside the fake host, sends TCP, UDP and ICMP from the external client to a
//! container, and reads the counters with `dataplane stats show` and with
//! `bpftool map dump pinned` (BTF field names). Detach and cleanup leave no
//! link or pin.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use dataplane_tests::{
    cli::Cli,
    cmd,
    netns::snmp_counter,
    topo::FakeHost,
    traffic::{ping, tcp_echo, tcp_echo_server, udp_echo_server, udp_request},
    BpffsDir,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);

fn counters(cli: &Cli) -> Value {
    cli.json(&["stats", "show", "--format", "json"])
        .expect("stats show")
}

/// IDs of the pinned links, each checked to be tcx (link type 11 in
/// Debian's bpftool 7.1) and to run dp_stats.
fn pinned_tcx_links(pins: &BpffsDir) -> Vec<u64> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(pins.path().join("links")).expect("links dir") {
        let path = entry.expect("entry").path();
        let link: Value = serde_json::from_str(
            &cmd::run(&[
                "bpftool",
                "-j",
                "link",
                "show",
                "pinned",
                &path.to_string_lossy(),
            ])
            .expect("bpftool link show"),
        )
        .expect("json");
        assert!(
            link["type"] == 11 || link["type"] == "tcx",
            "{path:?}: {link}"
        );
        let prog_id = link["prog_id"].as_u64().expect("prog_id").to_string();
        let prog: Value = serde_json::from_str(
            &cmd::run(&["bpftool", "-j", "prog", "show", "id", &prog_id]).expect("prog"),
        )
        .expect("json");
        assert_eq!(prog["name"], "dp_stats", "{prog}");
        ids.push(link["id"].as_u64().expect("link id"));
    }
    ids
}

fn packets(v: &Value, section: &str, name: &str) -> u64 {
    v[section][name]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("{section}.{name} in {v}"))
}

#[test]
fn counters_move_with_real_traffic_and_detach_cleans_up() {
    if !dataplane_tests::require_root() {
        return;
    }
    // Offload off on the uplink: the counted packets are the ones with
    // checksums computed in software, as a NAT program will see them.
    let fh = FakeHost::new(false).expect("fake host");
    let bridge = fh.add_bridge("br", "10.77.0.1/24").expect("bridge");
    let c = fh
        .add_container(
            &bridge,
            "c1",
            "10.77.0.2/24",
            Ipv4Addr::new(10, 77, 0, 1),
            false,
        )
        .expect("container");
    fh.client_route("10.77.0.0/24").expect("client route");
    let cli = Cli::new(&fh.host, "stats").expect("cli");
    let pins = &cli.pins;

    let out = cli.run(&["stats", "attach", &fh.uplink]).expect("attach");
    assert!(out.contains("ingress") && out.contains("egress"), "{out}");
    // A second attach of the same program is refused, naming the interface.
    let again = cli.run(&["stats", "attach", &fh.uplink]).unwrap_err();
    assert!(
        again.to_string().contains("already has dp_stats attached"),
        "{again:#}"
    );
    // Each attachment is a pinned tcx link running dp_stats.
    let link_ids = pinned_tcx_links(&cli.pins);
    assert_eq!(link_ids.len(), 2, "one link per direction");

    let before = counters(&cli);
    let tcp = tcp_echo_server(&c.ns, SocketAddr::from((c.ip, 8080))).expect("tcp server");
    let udp = udp_echo_server(&c.ns, SocketAddr::from((c.ip, 5353))).expect("udp server");
    let payload = vec![0x5a; 100_000];
    let echoed = tcp_echo(&fh.client, tcp.local_addr(), &payload, T).expect("tcp echo");
    assert_eq!(echoed, payload);
    let reply = udp_request(&fh.client, udp.local_addr(), b"hello", T).expect("udp");
    assert_eq!(reply, b"hello");
    assert!(
        ping(&fh.client, c.ip, 3, T).expect("ping"),
        "ping through the host"
    );
    let after = counters(&cli);

    // Both directions of every exchange crossed the uplink.
    let tcp_delta = packets(&after, "protocols", "tcp") - packets(&before, "protocols", "tcp");
    assert!(
        tcp_delta >= 20,
        "100 kB echoed over TCP is dozens of segments, got {tcp_delta}"
    );
    let udp_delta = packets(&after, "protocols", "udp") - packets(&before, "protocols", "udp");
    assert!(udp_delta >= 2, "request and reply, got {udp_delta}");
    let icmp_delta = packets(&after, "protocols", "icmp") - packets(&before, "protocols", "icmp");
    assert_eq!(icmp_delta, 6, "3 echo requests and 3 replies");
    let tcp_bytes = after["protocols"]["tcp"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        tcp_bytes >= 200_000,
        "both directions carry the 100 kB: {tcp_bytes}"
    );
    assert_eq!(packets(&after, "protocols", "malformed"), 0);
    for reason in ["truncated", "bad-ihl", "bad-ip-version"] {
        assert_eq!(packets(&after, "drops", reason), 0, "{reason}");
    }
    // The TCP server saw the client's own address (the program changes nothing).
    assert!(
        tcp.peers().iter().all(|p| p.ip() == fh.client_ip),
        "{:?}",
        tcp.peers()
    );
    for ns in [&fh.client, &c.ns] {
        assert_eq!(snmp_counter(ns, "Tcp", "InCsumErrors").expect("snmp"), 0);
        assert_eq!(snmp_counter(ns, "Udp", "InCsumErrors").expect("snmp"), 0);
    }

    // The table a user reads, and bpftool's view with BTF field names.
    let table = cli.run(&["stats", "show"]).expect("stats show");
    assert!(
        table.contains("PROTOCOL") && table.contains("icmp"),
        "{table}"
    );
    let dump = cmd::run(&[
        "bpftool",
        "map",
        "dump",
        "pinned",
        &pins.path().join("DP_PROTO_STATS").to_string_lossy(),
    ])
    .expect("bpftool map dump");
    assert!(
        dump.contains("\"packets\"") && dump.contains("\"bytes\""),
        "{dump}"
    );

    cli.run(&["stats", "detach", &fh.uplink]).expect("detach");
    for id in link_ids {
        let gone = cmd::run(&["bpftool", "link", "show", "id", &id.to_string()]);
        assert!(gone.is_err(), "link {id} still exists after detach");
    }
    let links = std::fs::read_dir(pins.path().join("links"))
        .expect("links dir")
        .count();
    assert_eq!(links, 0, "link pins left after detach");
    // Detaching again is an error that names what is missing.
    let err = cli.run(&["stats", "detach", &fh.uplink]).unwrap_err();
    assert!(
        err.to_string().contains("nothing of dp_stats is attached"),
        "{err:#}"
    );

    cli.run(&["cleanup"]).expect("cleanup");
    assert!(!pins.path().exists(), "cleanup removes the bpffs root");
}

#[test]
fn bad_input_is_refused_with_the_field_and_value() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(true).expect("fake host");
    let cli = Cli::new(&fh.host, "badin").expect("cli");
    let pins = &cli.pins;
    let err = cli.run(&["stats", "attach", "nosuchdev0"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"nosuchdev0\": no such interface"),
        "{err:#}"
    );
    let err = cli
        .run(&["stats", "attach", "a-name-longer-than-15"])
        .unwrap_err();
    assert!(
        err.to_string().contains("not a valid interface name"),
        "{err:#}"
    );
    let bin = dataplane_tests::dataplane_bin().expect("bin");
    let out = Command::new(bin)
        .args(["--netns", "dpt-no-such-netns", "stats", "show"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--netns dpt-no-such-netns: no such network namespace"),
        "{stderr}"
    );
    // Nothing was attached by the failed commands.
    let links = std::fs::read_dir(pins.path().join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(links, 0);
}
