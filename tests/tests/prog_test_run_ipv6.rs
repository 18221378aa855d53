//! BPF_PROG_TEST_RUN of `dp_from_container6` on hand-built IPv6 frames: the
//! anti-spoofing rules (the endpoint's own address; link-local and
//! unspecified sources for NDP and DAD; nothing global from an endpoint
//! without IPv6), isolation between networks and ICC by the destination's
//! subnet (link-local unicast too), extension headers walked, and IPv4
//! left to `dp_from_container`. Each case checks the verdict and the drop
//! reason counted.

use std::net::Ipv6Addr;

use dataplane_common::{
    drop::DropReason,
    nat::{EndpointInfo, EndpointInfo6, SUBNET_MASQUERADE, SUBNET_NO_ICC},
    net::{IPPROTO_ICMPV6, IPPROTO_UDP},
};
use dataplane_tests::{
    datapath,
    packets::{ipv6_frame, udp_header, PacketBuilder},
    BpffsDir,
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
    let mut failures = Vec::new();
    for c in cases {
        let before = c.reason.map(|r| dropped(dir, r));
        let (verdict, out) = datapath::run_program(dp, PROGRAM, &c.frame).expect("test run");
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

    // An endpoint of ours without an IPv6 address: link-local only.
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
}
