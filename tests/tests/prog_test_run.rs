//! BPF_PROG_TEST_RUN of `dp_stats` on hand-built packets: the verdict for
//! valid, truncated, bad-IHL, bad-version and non-IP frames, and the counters
//! each one moves. Runs the object as the agent loads it, with its maps pinned
//! under a bpffs directory unique to this test.

use dataplane_common::{drop::DropReason, stats::ProtoIndex};
use dataplane_tests::{datapath, packets::PacketBuilder, BpffsDir};
use dataplane_user::datapath::{ebpf::Dataplane, stats};

/// tcx "next program" (TC_ACT_UNSPEC) as the u32 the syscall returns.
const NEXT: u32 = u32::MAX;
const SHOT: u32 = 2;

struct Case {
    name: &'static str,
    packet: Vec<u8>,
    verdict: u32,
}

/// (A frame cut inside the IPv4 header cannot be tested here: the kernel's
/// test-run refuses IPv4 skbs shorter than an IP header with EINVAL. The TCP
/// cut below exercises the same `Truncated` path in the parser.)
fn cases() -> Vec<Case> {
    let tcp = PacketBuilder::tcp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80);
    let udp = PacketBuilder::udp([10, 0, 0, 1], [10, 0, 0, 2], 5353, 53);
    let icmp = PacketBuilder::icmp_echo([10, 0, 0, 1], [10, 0, 0, 2], 7, 1);
    vec![
        Case {
            name: "valid tcp",
            packet: tcp.clone().build(),
            verdict: NEXT,
        },
        Case {
            name: "valid udp",
            packet: udp.clone().build(),
            verdict: NEXT,
        },
        Case {
            name: "valid icmp",
            packet: icmp.clone().build(),
            verdict: NEXT,
        },
        Case {
            name: "tcp with ip options (ihl 6)",
            packet: tcp.clone().ip_options(4).build(),
            verdict: NEXT,
        },
        Case {
            name: "arp (non-ip)",
            packet: PacketBuilder::arp(),
            verdict: NEXT,
        },
        Case {
            name: "non-first udp fragment (no l4 header)",
            packet: udp.clone().fragment_offset(185).truncate_l4(0).build(),
            verdict: NEXT,
        },
        Case {
            name: "tcp header cut at 10 bytes",
            packet: tcp.clone().truncate_l4(10).build(),
            verdict: SHOT,
        },
        Case {
            name: "ihl 3 (12 bytes)",
            packet: tcp.clone().ihl(3).build(),
            verdict: SHOT,
        },
        Case {
            name: "ihl 15 past the packet end",
            packet: udp.clone().truncate_l4(0).ihl(15).build(),
            verdict: SHOT,
        },
        Case {
            name: "version 6 in an ipv4 frame",
            packet: tcp.version(6).build(),
            verdict: SHOT,
        },
    ]
}

#[test]
fn dp_stats_verdicts_and_counters() {
    if !dataplane_tests::require_root() {
        return;
    }
    let dir = BpffsDir::new("ptr").expect("bpffs dir");
    let mut dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
    let prog = dp
        .tc_program(stats::PROGRAM)
        .expect("verifier accepts dp_stats");
    let mut failures = Vec::new();
    for case in cases() {
        let (verdict, out) = datapath::run_tc(prog, &case.packet)
            .unwrap_or_else(|e| panic!("{}: test run failed: {e:?}", case.name));
        if verdict != case.verdict {
            failures.push(format!(
                "{}: verdict {:#x}, expected {:#x}",
                case.name, verdict, case.verdict
            ));
        }
        // The stats program never rewrites a packet.
        if out != case.packet {
            failures.push(format!("{}: packet changed", case.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    let snap = stats::read(dir.pins()).expect("read counters");
    let expect_proto = [
        (ProtoIndex::Tcp, 2),
        (ProtoIndex::Udp, 2),
        (ProtoIndex::Icmp, 1),
        (ProtoIndex::NonIpv4, 1),
        (ProtoIndex::OtherIpv4, 0),
        (ProtoIndex::Malformed, 4),
    ];
    for (idx, packets) in expect_proto {
        assert_eq!(
            snap.protocol(idx).packets,
            packets,
            "{} packets",
            idx.name()
        );
    }
    let expect_drop = [
        (DropReason::Truncated, 1),
        (DropReason::BadIhl, 2),
        (DropReason::BadVersion, 1),
    ];
    for (reason, packets) in expect_drop {
        assert_eq!(
            snap.drop(reason).packets,
            packets,
            "{} drops",
            reason.name()
        );
    }
    // Bytes are the frame lengths the program saw.
    let tcp_len = PacketBuilder::tcp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80)
        .build()
        .len() as u64;
    assert_eq!(snap.protocol(ProtoIndex::Tcp).bytes, tcp_len + tcp_len + 4);
}

mod nat {
    //! The uplink NAT programs on hand-built packets: the rewritten bytes,
    //! checksums that still verify, the conntrack entries left behind,
    //! malformed packets dropped with a reason and never rewritten, and the
    //! fast path's redirect into containers and the cases it leaves to the
    //! stack.

    use std::net::{Ipv4Addr, SocketAddrV4};

    use dataplane_common::{
        drop::DropReason,
        nat::{EndpointInfo, EndpointRoute, NatConfig},
    };
    use dataplane_tests::{
        datapath,
        family::{parse, parsed, sock, Family, Pkt, Plan},
        family_tests,
        packets::{self, PacketBuilder, Parsed, ETH_DST, ETH_SRC},
        BpffsDir,
    };
    use dataplane_user::datapath::{bpffs::PinRoot, conntrack, ebpf::Dataplane, stats};

    use super::{NEXT, SHOT};

    const CLIENT: [u8; 4] = [192, 0, 2, 2];
    const HOST: [u8; 4] = [192, 0, 2, 1];
    const C1: [u8; 4] = [172, 17, 0, 2];
    const C2: [u8; 4] = [172, 17, 0, 3];
    /// tc test runs see the namespace's loopback as the device.
    const TEST_RUN_IFINDEX: u32 = 1;

    /// [`Plan::configure`] for IPv4: 0.0.0.0:8080/tcp -> C1:80, 5353/udp
    /// -> C1:53; the host is HOST; 172.17.0.0/16 is masqueraded through an
    /// uplink with HOST.
    fn configure(dp: &Dataplane) {
        Family::V4.plan().configure(dp.pins());
    }

    fn run(dp: &mut Dataplane, program: &'static str, packet: &[u8]) -> (u32, Vec<u8>) {
        datapath::run_program(dp, program, packet).expect("test run")
    }

    fn parsed4(frame: &[u8]) -> Parsed {
        let p = packets::parse(frame).expect("an IPv4 frame with a whole L4 header");
        assert!(p.ip_ok, "IP checksum after rewrite: {p:?}");
        assert!(p.l4_ok, "L4 checksum after rewrite: {p:?}");
        p
    }

    /// A fresh object with [`Plan::configure`]'s entries.
    fn load(fam: Family, tag: &str, cfg: Option<&NatConfig>) -> (BpffsDir, Dataplane, Plan) {
        let dir = BpffsDir::new(tag).expect("bpffs");
        let dp = match cfg {
            Some(cfg) => Dataplane::load_with(dir.pins(), cfg),
            None => Dataplane::load(dir.pins()),
        }
        .expect("load");
        let plan = fam.plan();
        plan.configure(dp.pins());
        (dir, dp, plan)
    }

    family_tests!(
        dnat_and_its_reply,
        masquerade_keeps_free_ports_and_moves_taken_ones,
        masquerade_tcp_udp_and_echo_and_their_replies,
        too_big_errors_reach_the_container_translated,
        malformed_packets_are_dropped_with_a_reason_and_never_rewritten,
        masquerade_exhaustion_is_a_counted_drop_not_a_shared_port,
    );

    fn dnat_and_its_reply(fam: Family) {
        if !dataplane_tests::require_root() {
            return;
        }
        let (dir, mut dp, p) = load(fam, "ptrdnat", None);
        let (inp, out) = (p.uplink_in, p.uplink_out);

        let syn = Pkt::tcp(p.client, p.host, 40000, 8080).build();
        let (verdict, frame) = run(&mut dp, inp, &syn);
        assert_eq!(verdict, NEXT);
        let s = parsed(&frame);
        assert_eq!(
            (s.src, s.sport, s.dst, s.dport),
            (p.client, 40000, p.c1, 80),
            "DNAT keeps the client"
        );

        let syn_ack = Pkt::tcp(p.c1, p.client, 80, 40000).tcp_flags(0x12).build();
        let (verdict, frame) = run(&mut dp, out, &syn_ack);
        assert_eq!(verdict, NEXT);
        let s = parsed(&frame);
        assert_eq!(
            (s.src, s.sport, s.dst, s.dport),
            (p.host, 8080, p.client, 40000),
            "reply looks like the host's"
        );

        // UDP, and a port nobody published passes unchanged.
        let q = Pkt::udp(p.client, p.host, 5000, 5353).build();
        let s = parsed(&run(&mut dp, inp, &q).1);
        assert_eq!((s.dst, s.dport), (p.c1, 53));
        let other = Pkt::tcp(p.client, p.host, 40001, 8081).build();
        assert_eq!(run(&mut dp, inp, &other), (NEXT, other.clone()));

        let flows = conntrack::list(dir.pins()).expect("conntrack");
        assert_eq!(flows.len(), 4, "two entries per translated flow: {flows:?}");
        let dnat = format!("DNAT dst -> {}", sock(p.c1, 80));
        assert!(
            flows.iter().any(|f| f.nat == dnat && f.state == "SYN_SENT"),
            "{flows:?}"
        );
        let back = format!("DNAT src -> {}", sock(p.host, 8080));
        assert!(flows.iter().any(|f| f.nat == back && f.reply), "{flows:?}");
    }

    fn masquerade_keeps_free_ports_and_moves_taken_ones(fam: Family) {
        if !dataplane_tests::require_root() {
            return;
        }
        let (_dir, mut dp, p) = load(fam, "ptrsnat", None);
        let (inp, out) = (p.uplink_in, p.uplink_out);

        let a = Pkt::tcp(p.c1, p.client, 40000, 9000).build();
        let pa = parsed(&run(&mut dp, out, &a).1);
        assert_eq!((pa.src, pa.sport), (p.host, 40000), "original port kept");
        // Same source port from another container to the same destination.
        let b = Pkt::tcp(p.c2, p.client, 40000, 9000).build();
        let pb = parsed(&run(&mut dp, out, &b).1);
        assert_eq!(pb.src, p.host);
        assert_ne!(pb.sport, 40000, "a taken tuple gets another port");
        assert!(
            (32768..=60999).contains(&pb.sport),
            "from the configured range: {}",
            pb.sport
        );

        // Replies find their way back to each container.
        let ra = Pkt::tcp(p.client, p.host, 9000, 40000)
            .tcp_flags(0x12)
            .build();
        let s = parsed(&run(&mut dp, inp, &ra).1);
        assert_eq!((s.dst, s.dport), (p.c1, 40000));
        let rb = Pkt::tcp(p.client, p.host, 9000, pb.sport)
            .tcp_flags(0x12)
            .build();
        let s = parsed(&run(&mut dp, inp, &rb).1);
        assert_eq!((s.dst, s.dport), (p.c2, 40000));

        // ICMP echo: the identifier is the port.
        let ping = Pkt::echo(p.c1, p.client, 77, false).build();
        let s = parsed(&run(&mut dp, out, &ping).1);
        assert_eq!((s.src, s.sport), (p.host, 77));
        // Traffic that is not from a managed subnet is the host's own.
        let own = Pkt::tcp(p.host, p.client, 1234, 9000).build();
        assert_eq!(run(&mut dp, out, &own), (NEXT, own.clone()));
    }

    fn masquerade_tcp_udp_and_echo_and_their_replies(fam: Family) {
        if !dataplane_tests::require_root() {
            return;
        }
        let (_dir, mut dp, p) = load(fam, "ptrmasq", None);
        let server = p.server;
        for (name, out_frame, reply) in [
            (
                "tcp",
                Pkt::tcp(p.c1, server, 41000, 443),
                Pkt::tcp(server, p.host, 443, 41000).tcp_flags(0x12),
            ),
            (
                "udp",
                Pkt::udp(p.c1, server, 5000, 53),
                Pkt::udp(server, p.host, 53, 5000),
            ),
            (
                "echo",
                Pkt::echo(p.c1, server, 77, false),
                Pkt::echo(server, p.host, 77, true),
            ),
        ] {
            let out_frame = out_frame.build();
            let (verdict, out) = run(&mut dp, p.uplink_out, &out_frame);
            assert_eq!(verdict, NEXT, "{name}");
            let s = parsed(&out);
            assert_eq!(s.src, p.host, "{name}: masqueraded to the uplink's address");
            let sent = parse(&out_frame).expect("frame");
            assert_eq!(s.sport, sent.sport, "{name}: the container's port kept");
            let (verdict, back) = run(&mut dp, p.uplink_in, &reply.build());
            assert_eq!(verdict, NEXT, "{name} reply");
            let r = parsed(&back);
            assert_eq!(r.dst, p.c1, "{name}: the reply goes back to the container");
            assert_eq!(r.dport, sent.sport, "{name}");
        }
    }

    /// A router's "too big" error (IPv4: fragmentation needed; IPv6:
    /// Packet Too Big) about a masqueraded flow reaches the container with
    /// the quote translated back to what it sent.
    fn too_big_errors_reach_the_container_translated(fam: Family) {
        if !dataplane_tests::require_root() {
            return;
        }
        let (_dir, mut dp, p) = load(fam, "ptrptb", None);
        let syn = Pkt::tcp(p.c1, p.server, 41000, 443).build();
        let (_, translated) = run(&mut dp, p.uplink_out, &syn);
        let router = match fam {
            Family::V4 => std::net::IpAddr::from([198, 51, 100, 254]),
            Family::V6 => "2001:db8:9::fe".parse().expect("addr"),
        };
        let too_big = Pkt::too_big(router, p.host, &translated).build();
        let (verdict, out) = run(&mut dp, p.uplink_in, &too_big);
        assert_eq!(verdict, NEXT);
        let s = parsed(&out);
        assert_eq!(s.dst, p.c1, "the error goes to the container");
        let (qs, qd, qsport, qdport) = s.quoted.expect("a quote");
        assert_eq!((qs, qsport), (p.c1, 41000), "the quote is what it sent");
        assert_eq!((qd, qdport), (p.server, 443));
    }

    fn malformed_packets_are_dropped_with_a_reason_and_never_rewritten(fam: Family) {
        if !dataplane_tests::require_root() {
            return;
        }
        let (dir, mut dp, p) = load(fam, "ptrbad", None);
        let cut = Pkt::tcp(p.client, p.host, 40000, 8080)
            .truncate_l4(10)
            .build();
        assert_eq!(run(&mut dp, p.uplink_in, &cut).0, SHOT);
        let cut_out = Pkt::udp(p.c1, p.client, 5000, 53).truncate_l4(4).build();
        assert_eq!(run(&mut dp, p.uplink_out, &cut_out).0, SHOT);
        let snap = stats::read(dir.pins()).expect("stats");
        assert_eq!(snap.drop(DropReason::Truncated).packets, 2);
        if fam == Family::V4 {
            // IPv4's own: a header length shorter than the header.
            let bad_ihl = PacketBuilder::tcp(CLIENT, HOST, 40000, 8080).ihl(4).build();
            assert_eq!(run(&mut dp, "dp_uplink_in", &bad_ihl).0, SHOT);
            let snap = stats::read(dir.pins()).expect("stats");
            assert_eq!(snap.drop(DropReason::BadIhl).packets, 1);
        }
        assert!(
            conntrack::list(dir.pins()).expect("ct").is_empty(),
            "no flow from a malformed packet"
        );
    }

    fn masquerade_exhaustion_is_a_counted_drop_not_a_shared_port(fam: Family) {
        if !dataplane_tests::require_root() {
            return;
        }
        // Two ports: the containers' source port 40001 (in the range, so
        // the first flow keeps it) and 40000.
        let cfg = NatConfig {
            snat_port_min: 40000,
            snat_port_max: 40001,
            snat_probes: 32,
            ..NatConfig::DEFAULT
        };
        let (dir, mut dp, p) = load(fam, "ptrexh", Some(&cfg));
        let mut ports = Vec::new();
        for host in 2u8..4 {
            let syn = Pkt::tcp(p.container(host), p.client, 40001, 9000).build();
            let (verdict, out) = run(&mut dp, p.uplink_out, &syn);
            assert_eq!(verdict, NEXT, "container {host}");
            ports.push(parsed(&out).sport);
        }
        assert_eq!(ports, vec![40001, 40000], "every flow its own source port");
        let lines = Capture::default();
        let mut logger = aya_log::EbpfLogger::init_with_logger(dp.ebpf_mut(), lines.clone())
            .expect("the object logs through aya-log");
        let fourth = Pkt::tcp(p.container(9), p.client, 40001, 9000).build();
        assert_eq!(run(&mut dp, p.uplink_out, &fourth).0, SHOT);
        // The operator hears of it through the program's log.
        logger.flush();
        let logged = lines.0.lock().expect("lock").join("\n");
        assert!(logged.contains("no free source port"), "{logged:?}");
        let snap = stats::read(dir.pins()).expect("stats");
        assert_eq!(snap.drop(DropReason::SnatExhausted).packets, 1);
    }

    /// The container's MAC and its bridge's, as the agent records them for
    /// the fast path.
    const C1_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 2];
    const GW_MAC: [u8; 6] = [0x02, 0x42, 0xaa, 0xbb, 0xcc, 0xdd];
    /// TC_ACT_REDIRECT.
    const REDIRECT: u32 = 7;

    /// C1 as the endpoint behind the test run's device, in `sandbox`.
    fn c1_endpoint(pins: &PinRoot, sandbox: u32) {
        datapath::endpoint(
            pins,
            TEST_RUN_IFINDEX,
            EndpointInfo {
                addr: C1,
                gateway: [172, 17, 0, 1],
                sandbox,
                network_id: 1,
            },
        )
        .expect("endpoint");
    }

    /// [`configure`], plus C1 as an endpoint behind the test run's device
    /// (so its MTU check and the redirect have a device to name) with its
    /// fast path route.
    fn configure_endpoint(dp: &Dataplane) {
        configure(dp);
        let pins = dp.pins();
        c1_endpoint(pins, 0);
        datapath::endpoint_route(
            pins,
            C1.into(),
            EndpointRoute {
                ifindex: TEST_RUN_IFINDEX,
                mac: C1_MAC,
                gateway_mac: GW_MAC,
            },
        )
        .expect("route");
    }

    /// A frame the fast path delivered into C1: the MACs of the container
    /// and its gateway, one hop less, checksums that verify.
    fn assert_delivered(what: &str, verdict: u32, out: &[u8], sent_ttl: u8) -> Parsed {
        assert_eq!(verdict, REDIRECT, "{what}: redirected");
        let p = parsed4(out);
        assert_eq!(p.dst, C1, "{what}: translated");
        assert_eq!(
            (p.eth_dst, p.eth_src),
            (C1_MAC, GW_MAC),
            "{what}: container and gateway MACs"
        );
        assert_eq!(p.ttl, sent_ttl - 1, "{what}: TTL decremented");
        p
    }

    /// A frame left to the stack: translated (DNAT happened before the fast
    /// path's decision), otherwise as it came.
    fn assert_fell_back(what: &str, verdict: u32, out: &[u8], sent_ttl: u8) -> Parsed {
        assert_eq!(verdict, NEXT, "{what}: left to the stack");
        let p = parsed4(out);
        assert_eq!((p.dst, p.dport), (C1, 80), "{what}: DNAT still applied");
        assert_eq!(
            (p.eth_dst, p.eth_src, p.ttl),
            (ETH_DST, ETH_SRC, sent_ttl),
            "{what}: MACs and TTL untouched"
        );
        p
    }

    /// Anti-spoofing at the endpoint: its own address passes, and so does
    /// the address of another endpoint of its sandbox (a container on two
    /// networks answering from the other network's address, issue 12
    /// item 8); another sandbox's address or an unknown one is dropped.
    #[test]
    fn endpoints_send_from_the_addresses_of_their_sandbox_only() {
        if !dataplane_tests::require_root() {
            return;
        }
        let dir = BpffsDir::new("ptrsandbox").expect("bpffs");
        let mut dp = Dataplane::load(dir.pins()).expect("load");
        configure_endpoint(&dp);
        let pins = dir.pins();
        c1_endpoint(pins, 77);
        let ours = Ipv4Addr::new(10, 63, 0, 2);
        let theirs = Ipv4Addr::new(10, 63, 0, 9);
        datapath::sandbox_addr(pins, C1.into(), 77).expect("sandbox");
        datapath::sandbox_addr(pins, ours, 77).expect("sandbox");
        datapath::sandbox_addr(pins, theirs, 78).expect("sandbox");
        let spoofed = || {
            stats::read(dir.pins())
                .expect("stats")
                .drop(DropReason::Spoofed)
                .packets
        };
        for (src, verdict) in [
            (Ipv4Addr::from(C1), NEXT),
            (ours, NEXT),
            (theirs, SHOT),
            (Ipv4Addr::new(10, 63, 0, 5), SHOT),
        ] {
            let before = spoofed();
            let p = PacketBuilder::udp(src.octets(), CLIENT, 5000, 53).build();
            assert_eq!(run(&mut dp, "dp_from_container", &p).0, verdict, "{src}");
            let counted = u64::from(verdict == SHOT);
            assert_eq!(spoofed() - before, counted, "{src} counted as spoofed");
        }
        // An endpoint in no known sandbox keeps only its own address.
        c1_endpoint(pins, 0);
        datapath::sandbox_addr(pins, Ipv4Addr::new(10, 63, 0, 3), 0).expect("sandbox");
        for src in [ours, Ipv4Addr::new(10, 63, 0, 3)] {
            let p = PacketBuilder::udp(src.octets(), CLIENT, 5000, 53).build();
            assert_eq!(run(&mut dp, "dp_from_container", &p).0, SHOT, "{src}");
        }
    }

    #[test]
    fn fast_path_redirects_translated_packets_into_the_container() {
        if !dataplane_tests::require_root() {
            return;
        }
        let dir = BpffsDir::new("ptrfast").expect("bpffs");
        let mut dp = Dataplane::load(dir.pins()).expect("load");
        configure_endpoint(&dp);

        // A new flow to a published port.
        let syn = PacketBuilder::tcp(CLIENT, HOST, 41000, 8080).build();
        let (verdict, out) = run(&mut dp, "dp_uplink_in", &syn);
        let p = assert_delivered("published SYN", verdict, &out, 64);
        assert_eq!(
            (p.src, p.sport, p.dport),
            (CLIENT, 41000, 80),
            "client kept"
        );
        // A later packet of that flow (tracked), at another TTL.
        let ack = PacketBuilder::tcp(CLIENT, HOST, 41000, 8080)
            .tcp_flags(0x10)
            .ttl(9)
            .build();
        let (verdict, out) = run(&mut dp, "dp_uplink_in", &ack);
        assert_delivered("published ACK", verdict, &out, 9);
        // UDP to a published port.
        let q = PacketBuilder::udp(CLIENT, HOST, 5001, 5353).build();
        let (verdict, out) = run(&mut dp, "dp_uplink_in", &q);
        let p = assert_delivered("published UDP", verdict, &out, 64);
        assert_eq!(p.dport, 53);
        // The reply to a masqueraded flow of C1.
        let out_syn = PacketBuilder::tcp(C1, CLIENT, 42000, 9000).build();
        let (verdict, masq) = run(&mut dp, "dp_uplink_out", &out_syn);
        assert_eq!(verdict, NEXT);
        let m = parsed4(&masq);
        let reply = PacketBuilder::tcp(CLIENT, HOST, 9000, m.sport)
            .tcp_flags(0x12)
            .build();
        let (verdict, out) = run(&mut dp, "dp_uplink_in", &reply);
        let p = assert_delivered("masquerade reply", verdict, &out, 64);
        assert_eq!(p.dport, 42000, "the container's own port back");
    }

    #[test]
    fn fast_path_leaves_what_the_stack_must_see_to_the_stack() {
        if !dataplane_tests::require_root() {
            return;
        }
        let dir = BpffsDir::new("ptrslow").expect("bpffs");
        let mut dp = Dataplane::load(dir.pins()).expect("load");
        configure_endpoint(&dp);
        let syn = |sport| PacketBuilder::tcp(CLIENT, HOST, sport, 8080);

        // TTL 1: the stack sends time exceeded.
        let (v, out) = run(&mut dp, "dp_uplink_in", &syn(43001).ttl(1).build());
        assert_fell_back("TTL 1", v, &out, 1);
        // A first fragment (MF set, offset 0): the stack reassembles.
        let (v, out) = run(
            &mut dp,
            "dp_uplink_in",
            &syn(43002).more_fragments().build(),
        );
        assert_fell_back("first fragment", v, &out, 64);
        // IP options: the stack processes them.
        let (v, out) = run(&mut dp, "dp_uplink_in", &syn(43003).ip_options(4).build());
        assert_fell_back("IP options", v, &out, 64);

        // A container the fast path has no route for.
        let c2 = SocketAddrV4::new(C2.into(), 80);
        datapath::publish(dp.pins(), Ipv4Addr::UNSPECIFIED, 8082, 6, c2).expect("port");
        let unknown = PacketBuilder::tcp(CLIENT, HOST, 43004, 8082).build();
        let (v, out) = run(&mut dp, "dp_uplink_in", &unknown);
        assert_eq!(v, NEXT, "unknown endpoint: left to the stack");
        let p = parsed4(&out);
        assert_eq!((p.dst, p.dport, p.ttl), (C2, 80, 64), "DNAT still applied");
        assert_eq!((p.eth_dst, p.eth_src), (ETH_DST, ETH_SRC));
        // A route whose device now belongs to another endpoint (stale).
        datapath::endpoint_route(
            dp.pins(),
            C2.into(),
            EndpointRoute {
                ifindex: TEST_RUN_IFINDEX,
                mac: C1_MAC,
                gateway_mac: GW_MAC,
            },
        )
        .expect("stale route");
        let stale = PacketBuilder::tcp(CLIENT, HOST, 43005, 8082).build();
        let (v, out) = run(&mut dp, "dp_uplink_in", &stale);
        assert_eq!(v, NEXT, "stale route: left to the stack");
        assert_eq!(parsed4(&out).dst, C2);

        // The fast path switched off: programs loaded with fast_path = 0.
        let off = NatConfig {
            fast_path: 0,
            ..NatConfig::DEFAULT
        };
        let mut slow = Dataplane::load_with(dir.pins(), &off).expect("load, fast path off");
        let (v, out) = run(&mut slow, "dp_uplink_in", &syn(43006).build());
        assert_fell_back("fast path off", v, &out, 64);
        // ... while the same packet through programs with it on is redirected.
        let (v, out) = run(&mut dp, "dp_uplink_in", &syn(43007).build());
        assert_delivered("fast path on", v, &out, 64);
    }

    /// Log records the programs wrote, as aya-log hands them over.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            if let Ok(mut v) = self.0.lock() {
                v.push(format!("{}: {}", record.level(), record.args()));
            }
        }
        fn flush(&self) {}
    }
}
