//! BPF_PROG_TEST_RUN of `dp_stats` on hand-built packets: the verdict for
//! valid, truncated, bad-IHL, bad-version and non-IP frames, and the counters
//! each one moves. Runs the object as the agent loads it, with its maps pinned
//! under a bpffs directory unique to this test.

use aya::programs::{TestRun, TestRunOptions};
use dataplane_common::{drop::DropReason, stats::ProtoIndex};
use dataplane_tests::{packets::PacketBuilder, BpffsDir};
use dataplane_user::{ebpf::Dataplane, stats};

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
        let mut out = vec![0u8; case.packet.len() + 64];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(&case.packet),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("{}: test run failed: {e:?}", case.name));
        if result.return_value != case.verdict {
            failures.push(format!(
                "{}: verdict {:#x}, expected {:#x}",
                case.name, result.return_value, case.verdict
            ));
        }
        // The stats program never rewrites a packet.
        let n = result.data_size_out as usize;
        if out[..n] != case.packet[..] {
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
