//! BPF_PROG_TEST_RUN of `dp_from_container6` on hand-built IPv6 frames: the
//! anti-spoofing rules (the endpoint's own address; link-local and
//! unspecified sources for NDP and DAD; nothing global from an endpoint
//! without IPv6), isolation between networks and ICC by the destination's
//! subnet (link-local unicast too), extension headers walked, and IPv4
//! left to `dp_from_container`. Each case checks the verdict and the drop
//! reason counted. And a host-local flow translated per packet: its later
//! packets through `dp_local_out6` and its replies through
//! `dp_from_container6` (its first packet needs a socket, which a test run
//! has not: `nat_local_bound.rs` covers it).

use std::net::Ipv6Addr;

use dataplane_common::{
    ct::{
        CtEntry6, CtKey6, CtState, FLAG_DNAT, FLAG_LOCAL, FLAG_REPLY, REWRITE_DST, REWRITE_SRC,
        ZONE_ENDPOINT,
    },
    drop::DropReason,
    nat::{EndpointInfo, EndpointInfo6, EndpointRoute, SUBNET_MASQUERADE, SUBNET_NO_ICC},
    net::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};
use dataplane_tests::{
    datapath,
    family::parsed,
    packets::{ipv6_frame, udp_header, PacketBuilder},
    packets6, BpffsDir,
};
use dataplane_user::datapath::{ebpf::Dataplane, stats};

const NEXT: u32 = u32::MAX;
const SHOT: u32 = 2;
/// tc test runs see the namespace's loopback as the device.
const TEST_RUN_IFINDEX: u32 = 1;
const PROGRAM: &str = "dp_from_container6";

fn a(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("an IPv6 address").octets()
}

/// Network 1 (fd00:1::/64, gateway ::1, the endpoint ::2) and network 2
/// (fd00:2::/64); `icc` for network 1.
fn configure(dp: &Dataplane, icc: bool) {
    let pins = dp.pins();
    let flags = SUBNET_MASQUERADE | if icc { 0 } else { SUBNET_NO_ICC };
    datapath::subnet6(pins, "fd00:1::".parse().expect("addr"), 64, flags, 1).expect("subnet");
    datapath::subnet6(
        pins,
        "fd00:2::".parse().expect("addr"),
        64,
        SUBNET_MASQUERADE,
        2,
    )
    .expect("subnet");
    let ep = EndpointInfo6 {
        addr: a("fd00:1::2"),
        gateway: a("fd00:1::1"),
        sandbox: 0,
        network_id: 1,
    };
    datapath::endpoint6(pins, TEST_RUN_IFINDEX, ep).expect("endpoint");
}

fn udp(src: &str, dst: &str) -> Vec<u8> {
    ipv6_frame(a(src), a(dst), &[], IPPROTO_UDP, &udp_header(5000, 53))
}

fn dropped(dir: &BpffsDir, reason: DropReason) -> u64 {
    stats::read(dir.pins()).expect("stats").drop(reason).packets
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    reason: Option<DropReason>,
}

fn case(name: &'static str, frame: Vec<u8>, reason: Option<DropReason>) -> Case {
    Case {
        name,
        frame,
        verdict: if reason.is_some() { SHOT } else { NEXT },
        reason,
    }
}

fn check(dir: &BpffsDir, dp: &mut Dataplane, cases: Vec<Case>) {
    check_with(dir, dp, PROGRAM, cases);
}

fn check_with(dir: &BpffsDir, dp: &mut Dataplane, program: &'static str, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let before = c.reason.map(|r| dropped(dir, r));
        let (verdict, out) = datapath::run_program(dp, program, &c.frame).expect("test run");
        if verdict != c.verdict {
            failures.push(format!(
                "{}: verdict {verdict:#x}, expected {:#x}",
                c.name, c.verdict
            ));
        }
        if out != c.frame {
            failures.push(format!("{}: the frame changed", c.name));
        }
        if let (Some(r), Some(b)) = (c.reason, before) {
            if dropped(dir, r) != b + 1 {
                failures.push(format!("{}: not counted as {}", c.name, r.name()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn sources_isolation_and_extension_headers() {
    if !dataplane_tests::require_root() {
        return;
    }
    let dir = BpffsDir::new("ptr6").expect("bpffs dir");
    let mut dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
    dp.tc_program(PROGRAM)
        .expect("the verifier accepts dp_from_container6");
    configure(&dp, true);
    let ns = ipv6_frame(
        a("fe80::2"),
        a("ff02::1:ff00:1"),
        &[],
        IPPROTO_ICMPV6,
        &[135, 0, 0, 0, 0, 0, 0, 0],
    );
    let dad = ipv6_frame(
        [0; 16],
        a("ff02::1:ff00:2"),
        &[],
        IPPROTO_ICMPV6,
        &[135, 0, 0, 0, 0, 0, 0, 0],
    );
    let v4 = PacketBuilder::udp([10, 9, 9, 9], [10, 0, 0, 1], 5000, 53).build();
    // (A frame cut inside the IPv6 header cannot be run: the kernel's test
    // run refuses it with EINVAL, as it does a short IPv4 one. A cut UDP
    // header takes the same `Truncated` path in the parser.)
    let mut truncated = udp("fd00:1::2", "2001:db8::1");
    truncated.truncate(14 + 40 + 2);
    check(
        &dir,
        &mut dp,
        vec![
            case(
                "own address to the world",
                udp("fd00:1::2", "2001:db8::1"),
                None,
            ),
            case(
                "own address to the gateway",
                udp("fd00:1::2", "fd00:1::1"),
                None,
            ),
            case("within its network", udp("fd00:1::2", "fd00:1::3"), None),
            case("neighbour solicitation from link-local", ns, None),
            case("duplicate address detection from ::", dad, None),
            case("ipv4 is the other program's", v4, None),
            case(
                "another container's address",
                udp("fd00:1::3", "2001:db8::1"),
                Some(DropReason::Spoofed),
            ),
            case(
                "an address of another network",
                udp("fd00:2::5", "2001:db8::1"),
                Some(DropReason::Spoofed),
            ),
            case(
                "to another network",
                udp("fd00:1::2", "fd00:2::5"),
                Some(DropReason::Isolated),
            ),
            case(
                "two destination options headers walked",
                ipv6_frame(
                    a("fd00:1::2"),
                    a("fd00:2::5"),
                    &[60, 60],
                    IPPROTO_UDP,
                    &udp_header(5000, 53),
                ),
                Some(DropReason::Isolated),
            ),
            case(
                "udp header cut at 2 bytes",
                truncated,
                Some(DropReason::Truncated),
            ),
        ],
    );
}

#[test]
fn icc_off_and_endpoints_without_ipv6() {
    if !dataplane_tests::require_root() {
        return;
    }
    let dir = BpffsDir::new("ptr6icc").expect("bpffs dir");
    let mut dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
    configure(&dp, false);
    let ns = ipv6_frame(
        a("fe80::2"),
        a("fe80::3"),
        &[],
        IPPROTO_ICMPV6,
        &[135, 0, 0, 0, 0, 0, 0, 0],
    );
    check(
        &dir,
        &mut dp,
        vec![
            case("to the gateway", udp("fd00:1::2", "fd00:1::1"), None),
            case("to the world", udp("fd00:1::2", "2001:db8::1"), None),
            case("NDP between link-local addresses", ns, None),
            case(
                "within its network",
                udp("fd00:1::2", "fd00:1::3"),
                Some(DropReason::IccDisabled),
            ),
            case(
                "UDP between link-local addresses",
                udp("fe80::2", "fe80::3"),
                Some(DropReason::IccDisabled),
            ),
        ],
    );

    // An endpoint of ours without an IPv6 address: link-local only. Its
    // veth has only `dp_from_container` (the IPv6 program is attached to
    // endpoints with an IPv6 address), which polices its IPv6 itself.
    let dir = BpffsDir::new("ptr6no").expect("bpffs dir");
    let mut dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
    let v4 = EndpointInfo {
        addr: [10, 0, 0, 2],
        gateway: [10, 0, 0, 1],
        sandbox: 0,
        network_id: 1,
    };
    datapath::endpoint(dp.pins(), TEST_RUN_IFINDEX, v4).expect("endpoint");
    check(
        &dir,
        &mut dp,
        vec![
            case("link-local", udp("fe80::2", "fe80::1"), None),
            case(
                "any global source",
                udp("fd00:1::2", "2001:db8::1"),
                Some(DropReason::Spoofed),
            ),
        ],
    );
    check_with(
        &dir,
        &mut dp,
        "dp_from_container",
        vec![
            case("link-local, IPv4 program", udp("fe80::2", "fe80::1"), None),
            case(":: (DAD), IPv4 program", udp("::", "ff02::1:ff00:2"), None),
            case(
                "a global source, IPv4 program",
                udp("fd00:1::2", "2001:db8::1"),
                Some(DropReason::Spoofed),
            ),
        ],
    );
    // With an IPv6 address the IPv6 program that follows decides.
    configure(&dp, true);
    check_with(
        &dir,
        &mut dp,
        "dp_from_container",
        vec![case(
            "an endpoint with IPv6: left to dp_from_container6",
            udp("fd00:1::7", "2001:db8::1"),
            None,
        )],
    );
}

mod nat {
    //! The uplink's IPv6 programs on what only IPv6 has: upper layers
    //! behind extension headers (a managed subnet's refused, anything else
    //! passed untouched), neighbour discovery passed, and a container's
    //! address reached directly in `nat` mode without a gateway-mode flag.
    //! What both families share (DNAT, masquerade, errors, refusals,
    //! conntrack) is written once in prog_test_run.rs and
    //! prog_test_run_tracking.rs.

    use dataplane_common::{drop::DropReason, net::IPPROTO_UDP};
    use dataplane_tests::{
        datapath,
        family::{Family, Plan},
        packets::{ipv6_frame, udp_header},
        packets6, BpffsDir,
    };
    use dataplane_user::datapath::{ebpf::Dataplane, stats};

    use super::{a, NEXT, SHOT};

    fn octets(ip: std::net::IpAddr) -> [u8; 16] {
        match ip {
            std::net::IpAddr::V6(a) => a.octets(),
            std::net::IpAddr::V4(_) => panic!("{ip}: not IPv6"),
        }
    }

    #[test]
    fn extension_headers_and_ndp_from_outside() {
        if !dataplane_tests::require_root() {
            return;
        }
        let dir = BpffsDir::new("ptr6ext").expect("bpffs");
        let mut dp = Dataplane::load(dir.pins()).expect("load");
        let p: Plan = Family::V6.plan();
        p.configure(dp.pins());
        let (client, c1) = (octets(p.client), octets(p.c1));
        let count = |r: DropReason| stats::read(dir.pins()).expect("stats").drop(r).packets;
        let cases = [
            (
                "to a container behind five extension headers",
                ipv6_frame(
                    client,
                    c1,
                    &[60, 60, 60, 60, 60],
                    IPPROTO_UDP,
                    &udp_header(5000, 53),
                ),
                Some(DropReason::Ipv6ExtHeaders),
            ),
            (
                "to a container directly (nat mode: no gateway mode flag here)",
                packets6::udp(client, c1, 5000, 53),
                None,
            ),
            (
                "elsewhere behind five extension headers",
                ipv6_frame(
                    client,
                    a("2001:db8::77"),
                    &[60, 60, 60, 60, 60],
                    IPPROTO_UDP,
                    &udp_header(5000, 53),
                ),
                None,
            ),
            (
                "neighbour solicitation",
                packets6::frame(
                    a("fe80::2"),
                    a("ff02::1:ff00:1"),
                    58,
                    vec![135, 0, 0, 0, 0, 0, 0, 0],
                    2,
                ),
                None,
            ),
        ];
        let mut failures = Vec::new();
        for (name, frame, reason) in cases {
            let before = reason.map(count);
            let (verdict, out) =
                datapath::run_program(&mut dp, p.uplink_in, &frame).expect("test run");
            let want = if reason.is_some() { SHOT } else { NEXT };
            if verdict != want {
                failures.push(format!("{name}: verdict {verdict:#x}, expected {want:#x}"));
            }
            if reason.is_none() && out != frame {
                failures.push(format!("{name}: the frame changed"));
            }
            if let (Some(r), Some(b)) = (reason, before) {
                if count(r) != b + 1 {
                    failures.push(format!("{name}: not counted as {}", r.name()));
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }
}

/// A host-local flow `dp_local_out6` started (a client bound to `[::1]:L`
/// reaching `[::1]:8080`, published to the endpoint's port 80, from the
/// gateway's port 50000): its later packets leave `lo` for the container's
/// veth with both addresses translated and the route's MACs; the
/// container's replies get the published address and the client's back
/// and are redirected (into `lo`'s ingress); other TCP on `lo` is left
/// alone. Checksums verify after each rewrite.
#[test]
fn a_host_local_flow_is_translated_both_ways() {
    if !dataplane_tests::require_root() {
        return;
    }
    const REDIRECT: u32 = 7;
    const L: u16 = 41234;
    const MASQ: u16 = 50000;
    let dir = BpffsDir::new("ptr6local").expect("bpffs dir");
    let mut dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
    configure(&dp, true);
    let (lo, c1, gw) = (a("::1"), a("fd00:1::2"), a("fd00:1::1"));
    let route = EndpointRoute {
        ifindex: TEST_RUN_IFINDEX,
        mac: [2, 0, 0, 0, 1, 2],
        gateway_mac: [2, 0, 0, 0, 1, 1],
    };
    datapath::endpoint_route6(dir.pins(), Ipv6Addr::from(c1), route).expect("route");
    let key = |saddr, sport: u16, daddr, dport: u16| CtKey6 {
        saddr,
        daddr,
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        proto: IPPROTO_TCP,
        zone: ZONE_ENDPOINT,
        _pad: [0; 2],
    };
    let orig = CtEntry6 {
        new_saddr: gw,
        new_sport: MASQ.to_be_bytes(),
        new_daddr: c1,
        new_dport: 80u16.to_be_bytes(),
        rewrite: REWRITE_SRC | REWRITE_DST,
        state: CtState::Established as u8,
        flags: FLAG_DNAT | FLAG_LOCAL,
        ..CtEntry6::default()
    };
    let reply = CtEntry6 {
        new_saddr: lo,
        new_sport: 8080u16.to_be_bytes(),
        new_daddr: lo,
        new_dport: L.to_be_bytes(),
        flags: FLAG_DNAT | FLAG_LOCAL | FLAG_REPLY,
        redirect_ifindex: TEST_RUN_IFINDEX,
        ..orig
    };
    datapath::ct6_tcp(dir.pins(), key(lo, L, lo, 8080), orig).expect("entry");
    datapath::ct6_tcp(dir.pins(), key(c1, 80, gw, MASQ), reply).expect("reply entry");
    const ACK: u8 = 0x10;

    let out_frame = packets6::tcp(lo, lo, L, 8080, ACK);
    let (verdict, out) =
        datapath::run_program(&mut dp, "dp_local_out6", &out_frame).expect("test run");
    assert_eq!(verdict, REDIRECT, "into the container's veth");
    let seen = parsed(&out);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (
            Ipv6Addr::from(gw).into(),
            MASQ,
            Ipv6Addr::from(c1).into(),
            80
        ),
        "{seen:?}"
    );
    assert_eq!((seen.eth_dst, seen.eth_src), (route.mac, route.gateway_mac));
    assert_eq!(seen.ttl, 64, "the host's own packet keeps its hop limit");

    let reply_frame = packets6::tcp(c1, gw, 80, MASQ, ACK);
    let (verdict, back) =
        datapath::run_program(&mut dp, "dp_from_container6", &reply_frame).expect("test run");
    assert_eq!(verdict, REDIRECT, "into lo's ingress");
    let seen = parsed(&back);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (
            Ipv6Addr::from(lo).into(),
            8080,
            Ipv6Addr::from(lo).into(),
            L
        ),
        "{seen:?}"
    );
    assert_eq!(
        (seen.eth_dst, seen.eth_src),
        ([0; 6], [0; 6]),
        "lo's addresses"
    );

    // Another connection on lo, with no entry: left alone.
    let other = packets6::tcp(lo, lo, L + 1, 8080, ACK);
    let (verdict, out) = datapath::run_program(&mut dp, "dp_local_out6", &other).expect("test run");
    assert_eq!((verdict, out), (NEXT, other), "not ours");
}
