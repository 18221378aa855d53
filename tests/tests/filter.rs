//! Filter rules (DOCKER-USER) through BPF_PROG_TEST_RUN of `dp_uplink_in`,
//! which calls `filter::check` for packets heading to a container, after
//! DNAT: verdicts for published-port and direct traffic, first match wins,
//! `--dport` is the container's port, per-rule counters (also across a
//! reorder) and the `filtered` drop counter, that a hundred rules that do
//! not match change nothing, and that established published-port flows meet
//! the rules while replies to the containers' own connections do not.

use std::net::{Ipv4Addr, SocketAddrV4};

use dataplane_common::{drop::DropReason, nat::SUBNET_MASQUERADE};
use dataplane_tests::{
    datapath,
    packets::{parse, PacketBuilder},
    BpffsDir,
};
use dataplane_user::{
    ebpf::Dataplane,
    filter::{self, FilterArgs, FilterRule, ResolvedRule},
    stats,
};

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
        let compiled = filter::compile(rules, resolve).expect("compile");
        filter::apply(&mut self.dp, &compiled).expect("apply");
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
    let bytes = (2 * syn.len() + direct.len()) as u64;
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
