//! Filter rules (DOCKER-USER) through BPF_PROG_TEST_RUN of `dp_uplink_in`,
//! which calls `filter::check` for packets heading to a container, after
//! DNAT: verdicts for published-port and direct traffic, first match wins,
//! `--dport` is the container's port, per-rule counters (also across a
//! reorder) and the `filtered` drop counter, that a hundred rules that do
//! not match change nothing, and that established published-port flows meet
//! the rules while replies to the containers' own connections do not.
//! At scale: 10 000 rules with the match at position 9 999 or 0, traffic no
//! rule names, and the full `MAX_RULES` in both generations. Through the
//! CLI and the agent: a list of rules (`filter add --from-file`,
//! `filter_add_many`) is added whole or not at all.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData};
use dataplane_common::{
    drop::DropReason,
    filter::{
        src_data, FilterConfig, FilterHostKey, FilterSrcData, HostRules, RuleBits, SRC_GEN_BITS,
    },
    maps,
    nat::SUBNET_MASQUERADE,
};
use dataplane_tests::{
    cli::{api, stop_agent, Cli},
    datapath,
    packets::{parse, PacketBuilder},
    topo::FakeHost,
    BpffsDir,
};
use dataplane_user::{
    control::filter_rules::{FilterArgs, FilterRule},
    datapath::{
        ebpf::Dataplane,
        filter::{self, ResolvedRule},
        stats,
    },
    sys::bpf::{MapShape, RawMap},
};

/// The Ethernet header, which rule counters do not count.
const ETH_LEN: usize = 14;

/// tcx "next program" (TC_ACT_UNSPEC) as the u32 the syscall returns.
const NEXT: u32 = u32::MAX;
const SHOT: u32 = 2;

const CLIENT: [u8; 4] = [192, 0, 2, 2];
const OTHER: [u8; 4] = [192, 0, 2, 3];
const HOST: [u8; 4] = [192, 0, 2, 1];
/// A container of network 1 (172.17.0.0/16), the target of the published
/// ports.
const C1: [u8; 4] = [172, 17, 0, 2];
/// A container of network 2 (172.18.0.0/16).
const C2: [u8; 4] = [172, 18, 0, 2];
const NET1: u32 = 0x1111_1111;
const NET2: u32 = 0x2222_2222;
/// tc test runs see the namespace's loopback as the device.
const TEST_RUN_IFINDEX: u32 = 1;

/// Names as the CLI would resolve them: `lo` is the test-run device, any
/// other interface is one the packets do not come in on; `net1`/`net2` are
/// the two networks, any other network has no subnet.
fn resolve(r: &FilterRule) -> ResolvedRule {
    ResolvedRule {
        ifindex: r.in_iface.as_deref().map(|i| match i {
            "lo" => TEST_RUN_IFINDEX,
            _ => 9,
        }),
        network: r.network.as_deref().map(|n| match n {
            "net1" => NET1,
            "net2" => NET2,
            _ => 0x3333_3333,
        }),
    }
}

/// `filter add` arguments, as the CLI passes them.
fn args(flags: &[(&str, &str)]) -> FilterArgs {
    let mut a = FilterArgs::default();
    for (flag, value) in flags {
        let v = Some((*value).to_owned());
        match *flag {
            "--network" => a.network = v,
            "--in" => a.in_iface = v,
            "--src" => a.src = v,
            "--not-src" => a.not_src = v,
            "--dport" => a.dport = v,
            "--action" => a.action = (*value).to_owned(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn rule(id: u32, flags: &[(&str, &str)]) -> FilterRule {
    FilterRule::new(id, args(flags).parse().expect("valid rule"))
}

struct Fixture {
    dir: BpffsDir,
    dp: Dataplane,
}

impl Fixture {
    /// 0.0.0.0:8080/tcp -> C1:80 and 0.0.0.0:5353/udp -> C1:53; the host is
    /// HOST; 172.17/16 (NET1) and 172.18/16 (NET2) are managed subnets.
    fn new(tag: &str) -> Fixture {
        let dir = BpffsDir::new(tag).expect("bpffs dir");
        let dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
        let pins = dir.pins();
        for (port, proto, to) in [(8080u16, 6u8, 80u16), (5353, 17, 53)] {
            let target = SocketAddrV4::new(C1.into(), to);
            datapath::publish(pins, Ipv4Addr::UNSPECIFIED, port, proto, target).expect("port");
        }
        datapath::host_addr(pins, HOST.into(), 2).expect("host");
        datapath::uplink(pins, TEST_RUN_IFINDEX, HOST.into()).expect("uplink");
        for (net, id) in [([172, 17, 0, 0], NET1), ([172, 18, 0, 0], NET2)] {
            datapath::subnet(pins, net.into(), 16, SUBNET_MASQUERADE, id).expect("subnet");
        }
        Fixture { dir, dp }
    }

    fn rules(&mut self, rules: &[FilterRule]) {
        let t = Instant::now();
        let compiled = filter::compile(rules, resolve).expect("compile");
        let compile = t.elapsed();
        let t = Instant::now();
        filter::apply(&mut self.dp, &compiled).expect("apply");
        if rules.len() >= 1000 {
            eprintln!(
                "{} rules: compile {:.1} ms, apply {:.1} ms",
                rules.len(),
                compile.as_secs_f64() * 1e3,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    /// Runs `dp_uplink_in` on `packet`: the verdict and the packet after it.
    fn run(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        datapath::run_program(&mut self.dp, "dp_uplink_in", packet).expect("test run")
    }

    fn verdict(&mut self, packet: &[u8]) -> u32 {
        self.run(packet).0
    }

    /// (packets, bytes) of the rules at `positions`.
    fn counts(&self, positions: &[u32]) -> Vec<(u64, u64)> {
        let c = filter::counters(self.dir.pins(), positions.iter().copied()).expect("counters");
        positions
            .iter()
            .map(|p| c.get(p).map_or((0, 0), |c| (c.packets, c.bytes)))
            .collect()
    }

    /// The live generation and rule count, as the program reads them.
    fn live(&self) -> (u32, u32) {
        let path = self.dir.pins().map(maps::FILTER_CONFIG);
        let data = MapData::from_pin(path).expect("pinned config");
        let map = aya::maps::Map::from_map_data(data).expect("config map");
        let cfg: aya::maps::Array<MapData, FilterConfig> =
            aya::maps::Array::try_from(map).expect("config array");
        let c = cfg.get(&0, 0).expect("config");
        (c.gen, c.rules)
    }

    fn filtered(&self) -> u64 {
        stats::read(self.dir.pins())
            .expect("stats")
            .drop(DropReason::Filtered)
            .packets
    }
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    PacketBuilder::tcp(src, dst, sport, dport).build()
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    PacketBuilder::udp(src, dst, sport, dport).build()
}

/// Where a passed packet is headed after the program: (address, port).
fn dest(frame: &[u8]) -> ([u8; 4], u16) {
    let p = parse(frame).expect("an IPv4 frame with a whole L4 header");
    (p.dst, p.dport)
}

#[test]
fn not_src_drops_everyone_else() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("fltnotsrc");
    f.rules(&[rule(
        7,
        &[
            ("--in", "lo"),
            ("--not-src", "192.0.2.2/32"),
            ("--action", "drop"),
        ],
    )]);

    // The allowed client: published port (DNAT to C1:80) and direct.
    let (v, out) = f.run(&tcp(CLIENT, HOST, 40000, 8080));
    assert_eq!(
        (v, dest(&out)),
        (NEXT, (C1, 80)),
        "client via published port"
    );
    assert_eq!(
        f.verdict(&tcp(CLIENT, C1, 40001, 80)),
        NEXT,
        "client direct"
    );
    assert_eq!(f.counts(&[0]), [(0, 0)], "accepted by no rule: not counted");

    // Everyone else: dropped, also on a retransmission (the drop leaves no
    // conntrack entry that would let the next packet skip the filter).
    let syn = tcp(OTHER, HOST, 40002, 8080);
    assert_eq!(f.verdict(&syn), SHOT, "other via published port");
    assert_eq!(f.verdict(&syn), SHOT, "retransmitted SYN");
    let direct = udp([203, 0, 113, 9], C1, 5000, 53);
    assert_eq!(f.verdict(&direct), SHOT, "other direct");
    // IP bytes, as `iptables -vL` counts: no Ethernet header.
    let bytes = (2 * syn.len() + direct.len() - 3 * ETH_LEN) as u64;
    assert_eq!(f.counts(&[0]), [(3, bytes)]);
    assert_eq!(f.filtered(), 3);
    let by_id = filter::counters_by_id(f.dir.pins()).expect("by id");
    assert_eq!(by_id.get(&7).map(|c| c.packets), Some(3), "{by_id:?}");

    // The same rule on another interface leaves the test device alone.
    f.rules(&[rule(
        7,
        &[
            ("--in", "eth1"),
            ("--not-src", "192.0.2.2/32"),
            ("--action", "drop"),
        ],
    )]);
    let (v, out) = f.run(&tcp(OTHER, HOST, 40003, 8080));
    assert_eq!((v, dest(&out)), (NEXT, (C1, 80)), "rule for another --in");
    // Without --in it applies everywhere again.
    f.rules(&[rule(7, &[("--not-src", "192.0.2.2"), ("--action", "drop")])]);
    assert_eq!(f.verdict(&tcp(OTHER, HOST, 40004, 8080)), SHOT);
    // No rules: everything passes.
    f.rules(&[]);
    let (v, out) = f.run(&tcp(OTHER, HOST, 40005, 8080));
    assert_eq!((v, dest(&out)), (NEXT, (C1, 80)), "no rules");
    assert_eq!(f.filtered(), 4);
}

#[test]
fn earlier_accept_wins_and_counters_follow_their_rule() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("fltorder");
    let accept = rule(1, &[("--src", "192.0.2.3"), ("--action", "accept")]);
    let drop_all = rule(2, &[("--action", "drop")]);
    f.rules(&[accept.clone(), drop_all.clone()]);

    let (v, out) = f.run(&tcp(OTHER, HOST, 40000, 8080));
    assert_eq!((v, dest(&out)), (NEXT, (C1, 80)), "accepted by rule 0");
    assert_eq!(f.verdict(&tcp(CLIENT, HOST, 40001, 8080)), SHOT);
    assert_eq!(f.verdict(&udp(CLIENT, C1, 5000, 53)), SHOT);
    let counts = f.counts(&[0, 1]);
    assert_eq!((counts[0].0, counts[1].0), (1, 2), "{counts:?}");
    assert_eq!(f.filtered(), 2);

    // Reordered: the drop shadows the accept; each rule keeps its counts.
    f.rules(&[drop_all, accept]);
    let counts = f.counts(&[0, 1]);
    assert_eq!(
        (counts[0].0, counts[1].0),
        (2, 1),
        "counters moved: {counts:?}"
    );
    assert_eq!(f.verdict(&tcp(OTHER, HOST, 40002, 8080)), SHOT);
    let by_id = filter::counters_by_id(f.dir.pins()).expect("by id");
    let packets: Vec<(u32, u64)> = by_id.iter().map(|(id, c)| (*id, c.packets)).collect();
    assert_eq!(packets, [(1, 1), (2, 3)]);
    assert_eq!(f.filtered(), 3);
}

#[test]
fn dport_is_the_container_port() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("fltdport");
    f.rules(&[rule(1, &[("--dport", "80/tcp"), ("--action", "drop")])]);
    assert_eq!(
        f.verdict(&tcp(CLIENT, HOST, 40000, 8080)),
        SHOT,
        "8080 -> 80"
    );
    assert_eq!(f.verdict(&tcp(CLIENT, C1, 40001, 80)), SHOT, "direct to 80");
    let (v, out) = f.run(&udp(CLIENT, HOST, 5000, 5353));
    assert_eq!((v, dest(&out)), (NEXT, (C1, 53)), "5353 -> 53");
    assert_eq!(f.verdict(&tcp(CLIENT, C1, 40002, 81)), NEXT, "other port");
    assert_eq!(f.verdict(&udp(CLIENT, C1, 5001, 80)), NEXT, "80/udp");
    assert_eq!(f.counts(&[0])[0].0, 2);

    // The host port is not what the rule sees.
    f.rules(&[rule(1, &[("--dport", "8080"), ("--action", "drop")])]);
    let (v, out) = f.run(&tcp(CLIENT, HOST, 40003, 8080));
    assert_eq!((v, dest(&out)), (NEXT, (C1, 80)), "--dport 8080");
    assert_eq!(f.filtered(), 2);
}

#[test]
fn network_rules_match_the_destination_network() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("fltnet");
    f.rules(&[rule(1, &[("--network", "net2"), ("--action", "drop")])]);
    assert_eq!(f.verdict(&tcp(CLIENT, C2, 40000, 80)), SHOT, "net2");
    assert_eq!(f.verdict(&tcp(CLIENT, C1, 40001, 80)), NEXT, "net1 direct");
    let (v, out) = f.run(&tcp(CLIENT, HOST, 40002, 8080));
    assert_eq!((v, dest(&out)), (NEXT, (C1, 80)), "published into net1");
    f.rules(&[rule(1, &[("--network", "net1"), ("--action", "drop")])]);
    assert_eq!(f.verdict(&tcp(CLIENT, HOST, 40003, 8080)), SHOT, "now net1");
    assert_eq!(
        f.verdict(&tcp(CLIENT, C2, 40004, 80)),
        NEXT,
        "now net2 passes"
    );
}

/// A hundred rules, none matching the test traffic, in every dimension.
fn non_matching(count: u32) -> Vec<FilterRule> {
    (0..count)
        .map(|i| {
            let a = (i % 200).to_string();
            let cidr = format!("10.{a}.0.0/16");
            let port = (9000 + i).to_string();
            let flags: Vec<(&str, &str)> = match i % 5 {
                0 => vec![("--src", &cidr)],
                1 => vec![("--in", "eth1"), ("--not-src", "192.0.2.0/24")],
                2 => vec![("--dport", &port)],
                3 => vec![("--network", "net3")],
                _ => vec![("--src", "192.0.2.0/24"), ("--dport", "81/udp")],
            };
            let mut flags = flags;
            flags.push(("--action", "drop"));
            rule(100 + i, &flags)
        })
        .collect()
}

#[test]
fn a_hundred_non_matching_rules_change_nothing() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("flt100");
    // Each pass uses its own source ports, so no flow is tracked yet.
    let traffic = |base: u16| {
        vec![
            tcp(CLIENT, HOST, base, 8080),
            udp(OTHER, HOST, base + 1, 5353),
            tcp(OTHER, C1, base + 2, 80),
            udp(CLIENT, C2, base + 3, 53),
            tcp(CLIENT, HOST, base + 4, 9999),
        ]
    };
    let outcome = |f: &mut Fixture, base: u16| -> Vec<(u32, [u8; 4], u16)> {
        traffic(base)
            .iter()
            .map(|p| {
                let (v, out) = f.run(p);
                let (addr, port) = dest(&out);
                (v, addr, port)
            })
            .collect()
    };
    let before = outcome(&mut f, 40000);
    assert!(before.iter().all(|o| o.0 == NEXT), "{before:?}");

    let mut rules = non_matching(100);
    f.rules(&rules);
    assert_eq!(outcome(&mut f, 41000), before);
    let positions: Vec<u32> = (0..100).collect();
    assert!(
        f.counts(&positions).iter().all(|c| *c == (0, 0)),
        "no rule counted anything"
    );
    assert_eq!(f.filtered(), 0);

    // A matching rule behind them, in the second word of the bitmaps.
    rules.push(rule(1, &[("--src", "192.0.2.3/32"), ("--action", "drop")]));
    f.rules(&rules);
    let after = outcome(&mut f, 42000);
    let verdicts: Vec<u32> = after.iter().map(|o| o.0).collect();
    assert_eq!(verdicts, [NEXT, SHOT, SHOT, NEXT, NEXT]);
    assert_eq!(f.counts(&[100])[0].0, 2);
    assert_eq!(f.filtered(), 2);

    // The full 128, the last one matching.
    let mut rules = non_matching(127);
    rules.push(rule(2, &[("--dport", "53/udp"), ("--action", "drop")]));
    f.rules(&rules);
    let verdicts: Vec<u32> = outcome(&mut f, 43000).iter().map(|o| o.0).collect();
    assert_eq!(verdicts, [NEXT, SHOT, NEXT, SHOT, NEXT]);
    // A new rule id starts from zero; rule 1 is gone with its counts.
    assert_eq!(f.counts(&[127])[0].0, 2);
    assert_eq!(f.filtered(), 4);
}

#[test]
fn established_published_flows_are_filtered_but_container_replies_are_not() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("fltest");
    let (v, out) = f.run(&tcp(CLIENT, HOST, 40000, 8080));
    assert_eq!(
        (v, dest(&out)),
        (NEXT, (C1, 80)),
        "flow set up before the rule"
    );
    // A container's own connection out, masqueraded by the egress program.
    let syn_out = tcp(C1, CLIENT, 5000, 9000);
    let (verdict, out) =
        datapath::run_program(&mut f.dp, "dp_uplink_out", &syn_out).expect("test run");
    assert_eq!(verdict, NEXT);
    let masq = parse(&out).expect("masqueraded");
    assert_eq!(masq.src, HOST);

    f.rules(&[rule(1, &[("--src", "192.0.2.2"), ("--action", "drop")])]);
    // Later packets of the published-port flow meet the rule (as in
    // DOCKER-USER, which sees every packet).
    let ack = PacketBuilder::tcp(CLIENT, HOST, 40000, 8080)
        .tcp_flags(0x10)
        .build();
    assert_eq!(
        f.verdict(&ack),
        SHOT,
        "established flow to a published port"
    );
    // The reply to the container's own connection does not.
    let reply = PacketBuilder::tcp(CLIENT, HOST, 9000, masq.sport)
        .tcp_flags(0x12)
        .build();
    let (v, out) = f.run(&reply);
    assert_eq!(
        (v, dest(&out)),
        (NEXT, (C1, 5000)),
        "reply to container egress"
    );
    assert_eq!(f.counts(&[0])[0].0, 1);
    assert_eq!(f.filtered(), 1);
}

/// The `i`th of the bench's sources: 10.0.0.1, 10.0.0.2, ... (never the
/// test traffic's).
fn source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | (i + 1))
}

/// `count` rules `--src 10.x.y.z/32 --action drop`, ids from `first_id`.
fn sources(count: u32, first_id: u32) -> Vec<FilterRule> {
    (0..count)
        .map(|i| {
            rule(
                first_id + i,
                &[("--src", &source(i).to_string()), ("--action", "drop")],
            )
        })
        .collect()
}

#[test]
fn ten_thousand_rules_match_at_9999_and_at_0() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("flt10k");
    // 9 999 sources that are not the client, then the client's drop.
    let mut rules = sources(9_999, 1);
    rules.push(rule(
        50_000,
        &[("--src", "192.0.2.2/32"), ("--action", "drop")],
    ));
    f.rules(&rules);
    let syn = tcp(CLIENT, HOST, 40000, 8080);
    assert_eq!(f.verdict(&syn), SHOT, "client via published port");
    assert_eq!(f.verdict(&udp(CLIENT, C1, 5000, 53)), SHOT, "client direct");
    let (v, out) = f.run(&tcp(OTHER, HOST, 40001, 8080));
    assert_eq!((v, dest(&out)), (NEXT, (C1, 80)), "no rule names OTHER");
    // A listed source is dropped by its own rule, deep in the list.
    assert_eq!(f.verdict(&tcp(source(7_777).octets(), C1, 40002, 80)), SHOT);
    let counts = f.counts(&[0, 7_777, 9_998, 9_999]);
    assert_eq!(counts[0], (0, 0));
    assert_eq!(counts[1].0, 1);
    assert_eq!(counts[2], (0, 0));
    assert_eq!(counts[3].0, 2, "{counts:?}");
    assert_eq!(f.filtered(), 3);

    // Now the client's accept at 0, the same sources, and a catch-all drop
    // at 9 999. The client's rule id moves to position 0 with its counts.
    let mut rules = vec![rule(
        50_000,
        &[("--src", "192.0.2.2/32"), ("--action", "accept")],
    )];
    rules.extend(sources(9_998, 1));
    rules.push(rule(60_000, &[("--action", "drop")]));
    assert_eq!(rules.len(), 10_000);
    f.rules(&rules);
    let (v, out) = f.run(&tcp(CLIENT, HOST, 40003, 8080));
    assert_eq!((v, dest(&out)), (NEXT, (C1, 80)), "accepted at 0");
    assert_eq!(f.verdict(&tcp(OTHER, HOST, 40004, 8080)), SHOT, "catch-all");
    assert_eq!(
        f.verdict(&udp(OTHER, C2, 5001, 53)),
        SHOT,
        "catch-all direct"
    );
    let counts = f.counts(&[0, 9_999]);
    assert_eq!((counts[0].0, counts[1].0), (3, 2), "{counts:?}");
    let by_id = filter::counters_by_id(f.dir.pins()).expect("by id");
    assert_eq!(by_id.len(), 10_000);
    assert_eq!(by_id.get(&50_000).map(|c| c.packets), Some(3));
    assert_eq!(by_id.get(&60_000).map(|c| c.packets), Some(2));
    assert_eq!(
        by_id.get(&7_778).map(|c| c.packets),
        Some(1),
        "carried over"
    );
    assert_eq!(f.filtered(), 5);
}

#[test]
fn the_same_rule_set_again_changes_nothing() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("fltsame");
    let mut rules = sources(10_000, 1);
    f.rules(&rules);
    let live = f.live();
    assert_eq!(live.1, 10_000);
    assert_eq!(f.verdict(&tcp(source(42).octets(), C1, 40000, 80)), SHOT);
    // What every unrelated change (a network, a port) does: apply the
    // filters again. Nothing is written, no generation switch.
    let t = Instant::now();
    f.rules(&rules);
    eprintln!(
        "the same 10 000 rules again: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(f.live(), live);
    assert_eq!(f.counts(&[42])[0].0, 1);
    // One rule changed: a switch, and its effect.
    rules[42] = rule(
        43,
        &[("--src", &source(42).to_string()), ("--action", "accept")],
    );
    f.rules(&rules);
    assert_eq!(f.live(), ((live.0 + 1) % 2, 10_000));
    assert_eq!(f.verdict(&tcp(source(42).octets(), C1, 40001, 80)), NEXT);
    assert_eq!(f.counts(&[42])[0].0, 2, "the rule id kept its counts");
}

#[test]
fn ten_thousand_sources_leave_other_traffic_alone() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("fltsrc10k");
    let traffic = |base: u16| {
        vec![
            tcp(CLIENT, HOST, base, 8080),
            udp(OTHER, HOST, base + 1, 5353),
            tcp(OTHER, C1, base + 2, 80),
            udp(CLIENT, C2, base + 3, 53),
        ]
    };
    let before: Vec<(u32, ([u8; 4], u16))> = traffic(40000)
        .iter()
        .map(|p| {
            let (v, out) = f.run(p);
            (v, dest(&out))
        })
        .collect();
    f.rules(&sources(10_000, 1));
    let after: Vec<(u32, ([u8; 4], u16))> = traffic(41000)
        .iter()
        .map(|p| {
            let (v, out) = f.run(p);
            (v, dest(&out))
        })
        .collect();
    assert_eq!(after, before);
    assert!(after.iter().all(|(v, _)| *v == NEXT), "{after:?}");
    let positions: Vec<u32> = (0..10_000).collect();
    assert!(f.counts(&positions).iter().all(|c| *c == (0, 0)));
    assert_eq!(f.filtered(), 0);
}

#[test]
fn max_rules_fit_in_both_generations() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("fltmax");
    let max = filter::MAX_RULES;
    let mut rules = sources(max - 1, 1);
    rules.push(rule(90_000, &[("--dport", "53/udp"), ("--action", "drop")]));
    // Written twice, the second time with the last rule renumbered (the
    // same set again would write nothing): it fills the other generation
    // while the first is live, so both hold MAX_RULES rules at once.
    f.rules(&rules);
    let first = f.live();
    rules[max as usize - 1].id = 90_002;
    f.rules(&rules);
    assert_eq!(f.live(), ((first.0 + 1) % 2, max));
    assert_eq!(f.verdict(&udp(CLIENT, C1, 5000, 53)), SHOT, "last rule");
    assert_eq!(f.verdict(&tcp(CLIENT, C1, 40000, 80)), NEXT);
    assert_eq!(
        f.verdict(&tcp(source(max - 2).octets(), C1, 40001, 80)),
        SHOT
    );
    let counts = f.counts(&[max - 2, max - 1]);
    assert_eq!((counts[0].0, counts[1].0), (1, 1), "{counts:?}");
    // One more is refused before anything is written.
    rules.push(rule(90_003, &[("--action", "drop")]));
    let err = filter::compile(&rules, resolve).expect_err("too many");
    assert_eq!(
        err.to_string(),
        format!("{} filter rules: at most {max} are supported", max + 1)
    );
}

/// Pins from before host entries (layout schema 1) held each single
/// address's whole bitmap in `DP_FLT_SRC_HOST`, which today's programs do
/// not read. The next load writes the live rules the new way before any
/// link moves, and unpins the old map: an address's own accept and a
/// `--not-src` exception keep holding before a catch-all drop.
#[test]
fn older_pins_single_addresses_are_converted_on_load() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut f = Fixture::new("fltv1");
    let third = [192, 0, 2, 4];
    f.rules(&[
        rule(1, &[("--src", "192.0.2.2"), ("--action", "accept")]),
        rule(2, &[("--src", "10.0.0.0/8"), ("--action", "accept")]),
        rule(3, &[("--not-src", "192.0.2.3"), ("--action", "drop")]),
    ]);
    let verdicts =
        |f: &mut Fixture| [CLIENT, OTHER, third].map(|src| f.verdict(&tcp(src, HOST, 40000, 8080)));
    assert_eq!(verdicts(&mut f), [NEXT, NEXT, SHOT]);

    // What an older agent left: no host entry, no /32 in the trie, both
    // addresses' whole bitmaps in the old map.
    let pins = f.dir.pins().clone();
    let gen = f.live().0;
    let mut hosts: HashMap<MapData, FilterHostKey, HostRules> = pinned(&pins, maps::FILTER_HOST);
    let mut trie: LpmTrie<MapData, FilterSrcData, RuleBits> = pinned(&pins, maps::FILTER_SRC);
    let client = FilterHostKey { gen, addr: CLIENT };
    assert_eq!(hosts.get(&client, 0).expect("host entry").positions(), [0]);
    hosts.remove(&client).expect("remove the host entry");
    let other = Key::new(SRC_GEN_BITS + 32, src_data(gen, OTHER));
    let other_bits = trie.get(&other, 0).expect("the exception's region");
    assert!(other_bits.is_empty(), "{other_bits:?}");
    trie.remove(&other).expect("remove the /32");
    let region = trie
        .get(&Key::new(SRC_GEN_BITS + 32, src_data(gen, CLIENT)), 0)
        .expect("0.0.0.0/0");
    assert!(region.positions().eq([2]), "{region:?}");
    let mut client_bits = region;
    client_bits.set(0);
    let shape = MapShape {
        map_type: 1,
        key_size: 8,
        value_size: size_of::<RuleBits>() as u32,
        max_entries: maps::FILTER_KEYS_MAX,
        flags: 1,
    };
    let old = RawMap::create("DP_FLT_SRC_HOST", shape).expect("the old map");
    for (addr, bits) in [(CLIENT, client_bits), (OTHER, other_bits)] {
        let key = FilterHostKey { gen, addr };
        old.update(bytemuck::bytes_of(&key), bytemuck::bytes_of(&bits))
            .expect("old entry");
    }
    let old_path = pins.map(maps::FILTER_SRC_HOST_V1[0]);
    old.pin(&old_path).expect("pin the old map");
    drop(old);
    // Today's programs without the conversion: the drop takes both.
    assert_eq!(verdicts(&mut f), [SHOT, SHOT, SHOT]);

    f.dp = Dataplane::load(&pins).expect("load onto the older pins");
    assert!(!old_path.exists(), "the old map is unpinned");
    assert_eq!(verdicts(&mut f), [NEXT, NEXT, SHOT]);
    let hosts: HashMap<MapData, FilterHostKey, HostRules> = pinned(&pins, maps::FILTER_HOST);
    assert_eq!(hosts.get(&client, 0).expect("converted").positions(), [0]);
    let trie: LpmTrie<MapData, FilterSrcData, RuleBits> = pinned(&pins, maps::FILTER_SRC);
    assert!(trie
        .get(&other, 0)
        .expect("the exception, whole")
        .is_empty());
    // A second load finds nothing to convert and changes nothing.
    f.dp = Dataplane::load(&pins).expect("load again");
    assert_eq!(verdicts(&mut f), [NEXT, NEXT, SHOT]);
}

fn pinned<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    pins: &dataplane_user::datapath::bpffs::PinRoot,
    name: &str,
) -> T {
    let data = MapData::from_pin(pins.map(name)).expect("pinned map");
    T::try_from(aya::maps::Map::from_map_data(data).expect("map")).expect("map type")
}

fn filter_ls(cli: &Cli) -> Vec<String> {
    let v = cli
        .json(&["filter", "ls", "--format", "json"])
        .expect("filter ls");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|r| r["rule"].as_str().expect("rule").to_owned())
        .collect()
}

#[test]
fn a_list_of_rules_is_added_whole_or_not_at_all() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "fltmany").expect("cli");
    cli.run(&["uplink", "add", &fh.uplink]).expect("uplink add");
    // In the state directory, which goes with the test.
    let file = cli.state.path().join("test.rules");
    let write = |text: &str| std::fs::write(&file, text).expect("rules file");
    let path = file.to_str().expect("utf-8 path");

    // 10 000 rules from a file, in one request; comments are skipped.
    let mut text = String::from("# the bench's sources\n");
    for i in 0..10_000 {
        text.push_str(&format!("--src {}/32 --action drop\n\n", source(i)));
    }
    write(&text);
    let t = Instant::now();
    let ids = cli
        .run(&["filter", "add", "--from-file", path])
        .expect("add from file");
    eprintln!(
        "filter add --from-file, 10 000 rules, no agent: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 10_000);
    assert_eq!((ids[0], ids[9_999]), ("1", "10000"));
    let ls = filter_ls(&cli);
    assert_eq!(ls.len(), 10_000);
    assert_eq!(
        ls[9_999],
        format!("--src {}/32 --action drop", source(9_999))
    );
    // The program runs them all (the live rule set, read from the maps).
    let live = filter::counters_by_id(cli.pins.pins()).expect("live rules");
    assert_eq!(live.len(), 10_000);

    // A bad line anywhere: nothing is added, the error names the line.
    write("--src 192.0.2.9 --action accept\n--network bridge --action drop\n--src 10.0.0.0/33 --action drop\n");
    let e = cli
        .fail(&["filter", "add", "--from-file", path])
        .expect("refused");
    assert!(
        e.contains("line 3: --src \"10.0.0.0/33\": not an IP address or CIDR"),
        "{e}"
    );
    // More rules than fit: the count is named.
    let mut text = String::new();
    for i in 0..=filter::MAX_RULES - 10_000 {
        text.push_str(&format!(
            "--src 172.16.{}.{}/32 --action drop\n",
            i / 250,
            i % 250
        ));
    }
    write(&text);
    let e = cli
        .fail(&["filter", "add", "--from-file", path])
        .expect("refused");
    assert!(
        e.contains(&format!(
            "{} filter rules: at most {} are supported",
            filter::MAX_RULES + 1,
            filter::MAX_RULES
        )),
        "{e}"
    );
    assert_eq!(filter_ls(&cli).len(), 10_000, "nothing added");

    // The agent checks a request on its own: a bad value or an unknown
    // network in any rule refuses the whole request, naming the rule.
    let (agent, _) = cli.start_agent(&fh.uplink).expect("agent");
    // The agent says it runs a moment before its socket is there.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli.socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let good = serde_json::json!({"src": "192.0.2.9", "action": "accept"});
    for (bad, want) in [
        (
            serde_json::json!({"dport": "80/sctp", "action": "drop"}),
            "rules[2]: --dport \"80/sctp\": unknown protocol \"sctp\" (tcp or udp)",
        ),
        (
            serde_json::json!({"network": "nosuch", "action": "drop"}),
            "rules[2]: network nosuch: no such network",
        ),
    ] {
        let e = api(
            &cli.socket,
            &serde_json::json!({"op": "filter_add_many", "rules": [good, good, bad], "first": true}),
        )
        .expect_err("refused");
        assert!(e.contains(want), "{e}");
    }
    assert_eq!(filter_ls(&cli).len(), 10_000, "nothing added by the agent");

    // A good list with --first goes before the others, in its order.
    write("--src 192.0.2.2/32 --dport 80 --action accept\n--network bridge --action drop\n");
    let ids = cli
        .run(&["filter", "add", "--first", "--from-file", path])
        .expect("first");
    assert_eq!(ids, "10001\n10002\n");
    let t = Instant::now();
    let added = api(
        &cli.socket,
        &serde_json::json!({"op": "filter_add_many", "rules": [good], "first": false}),
    )
    .expect("one more");
    eprintln!(
        "filter_add_many of 1 rule onto 10 002, agent: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(added, serde_json::json!({"ids": [10_003]}));
    let ls = filter_ls(&cli);
    assert_eq!(ls.len(), 10_003);
    assert_eq!(
        ls[..2],
        [
            "--src 192.0.2.2/32 --dport 80/tcp --action accept",
            "--network bridge --action drop"
        ]
    );
    assert_eq!(ls[2], format!("--src {}/32 --action drop", source(0)));
    assert_eq!(ls[10_002], "--src 192.0.2.9/32 --action accept");
    // The single-rule form still works beside it.
    let id = cli
        .run(&["filter", "add", "--src", "198.51.100.1", "--action", "drop"])
        .expect("single");
    assert_eq!(id.trim(), "10004");
    let live = filter::counters_by_id(cli.pins.pins()).expect("live rules");
    assert_eq!(live.len(), 10_004);
    // Several removed in one change, or none when one id is unknown.
    let e = cli
        .fail(&["filter", "rm", "10001", "99999"])
        .expect("refused");
    assert!(e.contains("99999"), "{e}");
    assert_eq!(filter_ls(&cli).len(), 10_004, "nothing removed");
    cli.run(&["filter", "rm", "10001", "10002", "10004"])
        .expect("rm three");
    let ls = filter_ls(&cli);
    assert_eq!(ls.len(), 10_001);
    assert_eq!(ls[0], format!("--src {}/32 --action drop", source(0)));
    assert_eq!(
        filter::counters_by_id(cli.pins.pins())
            .expect("live rules")
            .len(),
        10_001
    );
    stop_agent(agent, libc::SIGTERM).expect("stop agent");
}
