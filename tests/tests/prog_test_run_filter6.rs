//! BPF_PROG_TEST_RUN of the uplink's ingress programs with DOCKER-USER-style
//! filter rules of both families, compiled and applied as the agent does
//! (`datapath::filter::{compile, apply}`): IPv6 CIDR and /128 rules drop or
//! accept new flows to a published port, to a routed subnet and the later
//! packets of a published flow, counted as `Filtered` and on the rule's
//! counter; replies to the containers' own flows are not filtered; IPv4
//! rules (negated ones too) never match IPv6 packets and IPv6 rules never
//! match IPv4 ones; a rule without a source matches both; 10 000 /128
//! rules match at the first and the last and leave other sources alone.
//! Through the CLI:
//! a rules file mixing both families, `filter ls` and the IPv6 source maps
//! the rules land in.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData};
use dataplane_common::{
    drop::DropReason,
    filter::{src6_data, FilterConfig, FilterHostKey6, FilterSrc6Data, HostRules, RuleBits},
    maps,
    nat::SUBNET_MASQUERADE,
};
use dataplane_tests::{
    cli::Cli,
    datapath,
    packets::PacketBuilder,
    packets6::{self, Parsed6},
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
};

const NEXT: u32 = u32::MAX;
const SHOT: u32 = 2;
/// tc test runs see the namespace's loopback as the device.
const TEST_RUN_IFINDEX: u32 = 1;
const IN6: &str = "dp_uplink_in6";
const OUT6: &str = "dp_uplink_out6";
const IN4: &str = "dp_uplink_in";
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;

fn a(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("an IPv6 address").octets()
}

fn host() -> [u8; 16] {
    a("2001:db8::1")
}

fn c1() -> [u8; 16] {
    a("fd00:1::2")
}

const HOST4: [u8; 4] = [192, 0, 2, 1];
const C1_4: [u8; 4] = [172, 17, 0, 2];

/// Both families: [::]:8080/tcp -> [fd00:1::2]:80 and 0.0.0.0:8080/tcp ->
/// 172.17.0.2:80; fd00:1::/64 and 172.17.0.0/16 masqueraded through the
/// uplink (2001:db8::1, 192.0.2.1), network 1.
fn load(tag: &str) -> (BpffsDir, Dataplane) {
    let dir = BpffsDir::new(tag).expect("bpffs");
    let dp = Dataplane::load(dir.pins()).expect("load");
    let pins = dp.pins();
    let web6 = SocketAddrV6::new(c1().into(), 80, 0, 0);
    datapath::publish6(pins, Ipv6Addr::UNSPECIFIED, 8080, 6, web6, 3).expect("port");
    datapath::host_addr6(pins, host().into(), 2).expect("host");
    datapath::uplink6(pins, TEST_RUN_IFINDEX, host().into()).expect("uplink");
    datapath::subnet6(
        pins,
        "fd00:1::".parse().expect("a"),
        64,
        SUBNET_MASQUERADE,
        1,
    )
    .expect("subnet");
    let web4 = SocketAddrV4::new(C1_4.into(), 80);
    datapath::publish(pins, Ipv4Addr::UNSPECIFIED, 8080, 6, web4).expect("port");
    datapath::host_addr(pins, HOST4.into(), 2).expect("host");
    datapath::uplink(pins, TEST_RUN_IFINDEX, HOST4.into()).expect("uplink");
    datapath::subnet(pins, Ipv4Addr::new(172, 17, 0, 0), 16, SUBNET_MASQUERADE, 1).expect("subnet");
    (dir, dp)
}

/// A rule from `filter add`'s flags, e.g. `("--src", "2001:db8::/32")`.
fn rule(id: u32, flags: &[(&str, &str)], action: &str) -> FilterRule {
    let mut args = FilterArgs {
        action: action.into(),
        ..FilterArgs::default()
    };
    for (flag, value) in flags {
        let v = Some((*value).to_owned());
        match *flag {
            "--src" => args.src = v,
            "--not-src" => args.not_src = v,
            "--dport" => args.dport = v,
            other => panic!("flag {other} not used here"),
        }
    }
    FilterRule::new(id, args.parse().expect("a valid rule"))
}

/// Compiles and applies `rules` as the agent does (no interface or network
/// conditions here, so nothing to resolve).
fn apply(dp: &mut Dataplane, rules: &[FilterRule]) {
    let c = filter::compile(rules, |_| ResolvedRule::default()).expect("compile");
    filter::apply(dp, &c).expect("apply");
}

/// Packets counted on the rule at each position.
fn counted(dp: &Dataplane, rules: usize) -> Vec<u64> {
    let c = filter::counters(dp.pins(), 0..rules as u32).expect("counters");
    (0..rules as u32)
        .map(|p| c.get(&p).map_or(0, |c| c.packets))
        .collect()
}

fn filtered(dir: &BpffsDir) -> u64 {
    stats::read(dir.pins())
        .expect("stats")
        .drop(DropReason::Filtered)
        .packets
}

fn run(dp: &mut Dataplane, program: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
    datapath::run_program(dp, program, frame).expect("test run")
}

fn parsed(frame: &[u8]) -> Parsed6 {
    let p = packets6::parse(frame).expect("an IPv6 frame");
    assert!(p.l4_ok, "checksum after rewrite: {p:?}");
    p
}

/// Runs each case, checks its verdict and that a drop was counted as
/// `Filtered` (and nothing else was), then the rules' counters.
fn check(
    dir: &BpffsDir,
    dp: &mut Dataplane,
    cases: Vec<(&str, &'static str, Vec<u8>, u32)>,
    rules: usize,
    want_counted: &[u64],
) {
    let mut failures = Vec::new();
    for (name, program, frame, want) in cases {
        let before = filtered(dir);
        let (verdict, _) = run(dp, program, &frame);
        if verdict != want {
            failures.push(format!("{name}: verdict {verdict:#x}, expected {want:#x}"));
        }
        let drops = filtered(dir) - before;
        let want_drops = u64::from(want == SHOT);
        if drops != want_drops {
            failures.push(format!("{name}: {drops} counted as filtered"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(counted(dp, rules), want_counted, "the rules' counters");
}

#[test]
fn ipv6_cidr_and_host_rules_on_new_flows() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("ptrflt6new");
    let rules = [
        rule(1, &[("--src", "2001:db8:bad::/48")], "drop"),
        rule(2, &[("--src", "2001:db8::66")], "drop"),
        // IPv4 only: must not take every IPv6 packet.
        rule(3, &[("--not-src", "192.0.2.0/24")], "drop"),
        rule(4, &[("--src", "2001:db8:ac::/48")], "accept"),
        // Shadowed for 2001:db8:ac::/48 by rule 4; drops the rest of /32.
        rule(5, &[("--src", "2001:db8::/32")], "drop"),
    ];
    apply(&mut dp, &rules);
    let syn = |src: &str, sport| packets6::tcp(a(src), host(), sport, 8080, SYN);
    check(
        &dir,
        &mut dp,
        vec![
            (
                "a /48 rule's source",
                IN6,
                syn("2001:db8:bad::5", 40000),
                SHOT,
            ),
            (
                "a /128 rule's source",
                IN6,
                syn("2001:db8::66", 40001),
                SHOT,
            ),
            ("an accepted /48", IN6, syn("2001:db8:ac::1", 40002), NEXT),
            ("the rest of the /32", IN6, syn("2001:db8::67", 40003), SHOT),
            ("outside every rule", IN6, syn("2001:db9::1", 40004), NEXT),
            (
                "routed straight to a container",
                IN6,
                packets6::udp(a("2001:db8:bad::9"), c1(), 5000, 53),
                SHOT,
            ),
            (
                "not to a container at all",
                IN6,
                packets6::udp(a("2001:db8:bad::9"), a("2001:db8::77"), 5000, 53),
                NEXT,
            ),
        ],
        rules.len(),
        &[2, 1, 0, 1, 1],
    );
    // The accepted flow was translated.
    let (verdict, out) = run(&mut dp, IN6, &syn("2001:db8:ac::2", 40005));
    assert_eq!(verdict, NEXT);
    let p = parsed(&out);
    assert_eq!((p.dst, p.dport), (c1(), 80), "DNAT after the accept");
}

#[test]
fn later_packets_of_published_flows_and_replies() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("ptrflt6later");
    let client = a("2001:db8::2");
    let server = a("2001:db8::9");
    // A published flow and a flow the container started, both from before
    // any rule.
    let (verdict, _) = run(
        &mut dp,
        IN6,
        &packets6::tcp(client, host(), 40000, 8080, SYN),
    );
    assert_eq!(verdict, NEXT);
    let (verdict, _) = run(
        &mut dp,
        OUT6,
        &packets6::tcp(c1(), client, 80, 40000, SYN_ACK),
    );
    assert_eq!(verdict, NEXT);
    let (verdict, masq) = run(&mut dp, OUT6, &packets6::tcp(c1(), server, 41000, 443, SYN));
    assert_eq!(verdict, NEXT);
    let masq_port = parsed(&masq).sport;

    let rules = [rule(7, &[("--src", "2001:db8::/32")], "drop")];
    apply(&mut dp, &rules);
    check(
        &dir,
        &mut dp,
        vec![
            (
                "the client's next segment",
                IN6,
                packets6::tcp(client, host(), 40000, 8080, ACK),
                SHOT,
            ),
            (
                "the server's reply to the container's flow",
                IN6,
                packets6::tcp(server, host(), 443, masq_port, SYN_ACK),
                NEXT,
            ),
        ],
        rules.len(),
        &[1],
    );
}

#[test]
fn families_do_not_cross() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("ptrflt6fam");
    let rules = [
        // Each family's "everything but" rule: never the other family's.
        rule(1, &[("--not-src", "2001:db8::/32")], "drop"),
        rule(2, &[("--not-src", "192.0.2.0/24")], "drop"),
        rule(3, &[("--src", "::/0"), ("--dport", "81")], "drop"),
        // No source: both families.
        rule(4, &[("--dport", "80")], "drop"),
    ];
    apply(&mut dp, &rules);
    let syn6 = |src: &str| packets6::tcp(a(src), host(), 40000, 8080, SYN);
    let syn4 = |src: [u8; 4]| PacketBuilder::tcp(src, HOST4, 40000, 8080).build();
    check(
        &dir,
        &mut dp,
        vec![
            ("ipv6 outside 2001:db8::/32", IN6, syn6("2001:db9::1"), SHOT),
            (
                "ipv4 outside 192.0.2.0/24",
                IN4,
                syn4([198, 51, 100, 1]),
                SHOT,
            ),
            // Inside its own family's CIDR, past the other family's
            // negation: the family-less --dport 80 rule (after DNAT).
            ("ipv6 inside 2001:db8::/32", IN6, syn6("2001:db8::2"), SHOT),
            ("ipv4 inside 192.0.2.0/24", IN4, syn4([192, 0, 2, 2]), SHOT),
        ],
        rules.len(),
        &[1, 1, 0, 2],
    );

    // ::/0 alone: IPv4 packets meet no rule; IPv6 ones do.
    let rules = [rule(9, &[("--src", "::/0")], "drop")];
    apply(&mut dp, &rules);
    check(
        &dir,
        &mut dp,
        vec![
            ("ipv4 under ::/0", IN4, syn4([192, 0, 2, 3]), NEXT),
            ("ipv6 under ::/0", IN6, syn6("2001:db8::3"), SHOT),
        ],
        rules.len(),
        &[1],
    );
}

/// The `i`th of the bench's kind of source, in IPv6: 2001:db8:5::/48.
fn source6(i: u32) -> Ipv6Addr {
    let [hi, lo] = [(i >> 16) as u16, i as u16];
    Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, hi, lo + 1)
}

#[test]
fn ten_thousand_ipv6_sources_match_at_the_last_and_leave_others_alone() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("ptrflt6k");
    let rules: Vec<FilterRule> = (0..10_000)
        .map(|i| rule(i + 1, &[("--src", &source6(i).to_string())], "drop"))
        .collect();
    apply(&mut dp, &rules);
    let syn = |src: Ipv6Addr, sport| packets6::tcp(src.octets(), host(), sport, 8080, SYN);
    check(
        &dir,
        &mut dp,
        vec![
            (
                "the last rule's source",
                IN6,
                syn(source6(9_999), 40000),
                SHOT,
            ),
            ("the first rule's source", IN6, syn(source6(0), 40001), SHOT),
            (
                "a source next to them",
                IN6,
                syn(source6(10_000), 40002),
                NEXT,
            ),
            (
                "ipv4 meets none of them",
                IN4,
                PacketBuilder::tcp([192, 0, 2, 2], HOST4, 40003, 8080).build(),
                NEXT,
            ),
        ],
        0,
        &[],
    );
    let c = filter::counters(dp.pins(), [0, 1, 9_999]).expect("counters");
    let packets: Vec<u64> = c.values().map(|c| c.packets).collect();
    assert_eq!(packets, [1, 0, 1]);
}

/// A pinned map of the CLI's pin root, opened as `M`.
fn pinned<M: TryFrom<Map>>(cli: &Cli, name: &str) -> M
where
    M::Error: std::fmt::Debug,
{
    let data = MapData::from_pin(cli.pins.pins().map(name)).expect("pinned map");
    M::try_from(Map::from_map_data(data).expect("map")).expect("map type")
}

#[test]
fn a_rules_file_of_both_families_through_the_cli() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "flt6cli").expect("cli");
    cli.run(&["uplink", "add", &fh.uplink]).expect("uplink add");
    let ids = cli
        .run(&[
            "filter",
            "add",
            "--src",
            "2001:db8::1/32",
            "--action",
            "drop",
        ])
        .expect("filter add");
    assert_eq!(ids.trim(), "1");
    let file = cli.state.path().join("mixed.rules");
    std::fs::write(
        &file,
        "--not-src 10.0.0.0/8 --action accept\n\
         --src 2001:db8::7 --action accept\n\
         --src ::/0 --dport 53/udp --action drop\n\
         --dport 80 --action drop\n",
    )
    .expect("rules file");
    let path = file.to_str().expect("utf-8 path");
    let ids = cli
        .run(&["filter", "add", "--first", "--from-file", path])
        .expect("add from file");
    assert_eq!(ids, "2\n3\n4\n5\n");
    let ls = cli
        .json(&["filter", "ls", "--format", "json"])
        .expect("filter ls");
    let rows: Vec<(u64, String, u64)> = ls
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().expect("id"),
                r["rule"].as_str().expect("rule").to_owned(),
                r["packets"].as_u64().expect("packets"),
            )
        })
        .collect();
    let want = [
        (2, "--not-src 10.0.0.0/8 --action accept"),
        (3, "--src 2001:db8::7/128 --action accept"),
        (4, "--src ::/0 --dport 53/udp --action drop"),
        (5, "--dport 80/tcp --action drop"),
        (1, "--src 2001:db8::/32 --action drop"),
    ];
    let got: Vec<(u64, &str)> = rows.iter().map(|(id, r, _)| (*id, r.as_str())).collect();
    assert_eq!(got, want, "host bits cleared, /128 spelled out, in order");
    assert!(rows.iter().all(|(_, _, p)| *p == 0), "{rows:?}");

    // The IPv6 sources in the IPv6 maps of the live generation: ::/0 and
    // 2001:db8::/32 in the trie (the /0 rule names ::/0 itself), the /128
    // in the hash.
    let cfg: aya::maps::Array<MapData, FilterConfig> = pinned(&cli, maps::FILTER_CONFIG);
    let live = cfg.get(&0, 0).expect("config");
    assert_eq!(live.rules, 5);
    let trie: LpmTrie<MapData, FilterSrc6Data, RuleBits> = pinned(&cli, maps::FILTER_SRC6);
    let mut prefixes: Vec<u32> = trie
        .keys()
        .map(|k| k.expect("key"))
        .filter(|k| k.data()[..4] == live.gen.to_be_bytes())
        .map(|k| k.prefix_len())
        .collect();
    prefixes.sort_unstable();
    assert_eq!(prefixes, [32, 32 + 32]);
    let hosts: HashMap<MapData, FilterHostKey6, HostRules> = pinned(&cli, maps::FILTER_HOST6);
    let host_keys: Vec<FilterHostKey6> = hosts
        .keys()
        .map(|k| k.expect("key"))
        .filter(|k| k.gen == live.gen)
        .collect();
    assert_eq!(host_keys.len(), 1);
    assert_eq!(host_keys[0].addr, a("2001:db8::7"));
    // Positions: 0 --not-src 10/8, 1 the /128, 2 ::/0 53/udp, 3 --dport
    // 80, 4 2001:db8::/32. The /128's rules: its region's (the /32's drop,
    // ::/0 and the family-less rule; not the IPv4 --not-src) and its own
    // accept, which is all the hash holds for it.
    let own = hosts.get(&host_keys[0], 0).expect("the /128's rules");
    assert_eq!(own.positions(), [1]);
    let region = trie
        .get(
            &Key::new(32 + 128, src6_data(live.gen, a("2001:db8::7"))),
            0,
        )
        .expect("the /128's region");
    assert_eq!(region.positions().collect::<Vec<_>>(), [2, 3, 4]);

    let e = cli
        .fail(&[
            "filter",
            "add",
            "--not-src",
            "2001:db8::/129",
            "--action",
            "drop",
        ])
        .expect("refused");
    assert!(
        e.contains("--not-src \"2001:db8::/129\": not an IP address or CIDR"),
        "{e}"
    );
}
