//! BPF_PROG_TEST_RUN of the uplink programs on hand-built packets, for what
//! conntrack refuses or follows (issue 12): loopback destinations and forged
//! sources from outside, invalid TCP flag combinations, corrupt SYNs, blind
//! RSTs, a SYN reopening a closing tuple, half-closed flows, and fragments
//! following their first fragment through DNAT and masquerade. Each case
//! checks the verdict, the drop reason counted and the conntrack entries
//! left (none from a refused packet).

use std::net::{Ipv4Addr, SocketAddrV4};

use dataplane_common::{drop::DropReason, nat::SUBNET_MASQUERADE};
use dataplane_tests::{
    datapath,
    packets::{parse, PacketBuilder, Parsed},
    BpffsDir,
};
use dataplane_user::datapath::{
    conntrack::{self, Flow},
    ebpf::Dataplane,
    stats,
};

const NEXT: u32 = u32::MAX;
const SHOT: u32 = 2;

const CLIENT: [u8; 4] = [192, 0, 2, 2];
const HOST: [u8; 4] = [192, 0, 2, 1];
const C1: [u8; 4] = [172, 17, 0, 2];
const C2: [u8; 4] = [172, 17, 0, 3];
const GATEWAY: [u8; 4] = [172, 17, 0, 1];
const TEST_RUN_IFINDEX: u32 = 1;

const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

/// 0.0.0.0:8080/tcp and 127.0.0.1:8082/tcp -> C1:80, 5353/udp -> C1:53;
/// host addresses HOST, the gateway and 127.0.0.1 (as `nat::sync` writes
/// them from the host's links); 172.17.0.0/16 masqueraded through HOST.
fn load(tag: &str) -> (BpffsDir, Dataplane) {
    let dir = BpffsDir::new(tag).expect("bpffs");
    let dp = Dataplane::load(dir.pins()).expect("load");
    let pins = dp.pins();
    let web = SocketAddrV4::new(C1.into(), 80);
    datapath::publish(pins, Ipv4Addr::UNSPECIFIED, 8080, 6, web).expect("port");
    datapath::publish(pins, Ipv4Addr::LOCALHOST, 8082, 6, web).expect("port");
    let dns = SocketAddrV4::new(C1.into(), 53);
    datapath::publish(pins, Ipv4Addr::UNSPECIFIED, 5353, 17, dns).expect("port");
    datapath::host_addr(pins, HOST.into(), 2).expect("host");
    datapath::host_addr(pins, GATEWAY.into(), 3).expect("gateway");
    datapath::host_addr(pins, Ipv4Addr::LOCALHOST, 1).expect("loopback");
    datapath::uplink(pins, TEST_RUN_IFINDEX, HOST.into()).expect("uplink");
    datapath::subnet(pins, Ipv4Addr::new(172, 17, 0, 0), 16, SUBNET_MASQUERADE, 1).expect("subnet");
    (dir, dp)
}

fn run(dp: &mut Dataplane, program: &'static str, packet: &[u8]) -> (u32, Vec<u8>) {
    datapath::run_program(dp, program, packet).expect("test run")
}

fn parsed(frame: &[u8]) -> Parsed {
    let p = parse(frame).expect("an IPv4 frame with a whole L4 header");
    assert!(p.ip_ok, "IP checksum after rewrite: {p:?}");
    assert!(p.l4_ok, "L4 checksum after rewrite: {p:?}");
    p
}

fn drops(dir: &BpffsDir, reason: DropReason) -> u64 {
    stats::read(dir.pins()).expect("stats").drop(reason).packets
}

fn flows(dir: &BpffsDir) -> Vec<Flow> {
    conntrack::list(dir.pins()).expect("conntrack")
}

/// The state of the entry of the flow from `src`:`sport` (original
/// direction).
fn state_of(dir: &BpffsDir, src: [u8; 4], sport: u16) -> String {
    let f = flows(dir);
    f.iter()
        .find(|f| f.src == Ipv4Addr::from(src).to_string() && f.sport == sport && !f.reply)
        .map(|f| f.state.to_string())
        .unwrap_or_else(|| panic!("no flow from {src:?}:{sport}: {f:?}"))
}

fn tcp_in(sport: u16, flags: u8, seq: u32) -> Vec<u8> {
    PacketBuilder::tcp(CLIENT, HOST, sport, 8080)
        .tcp_flags(flags)
        .seq(seq)
        .build()
}

fn tcp_back(dport: u16, flags: u8, seq: u32) -> Vec<u8> {
    PacketBuilder::tcp(C1, CLIENT, 80, dport)
        .tcp_flags(flags)
        .seq(seq)
        .build()
}

/// A published flow through its handshake: client ISN 1000 (window scale
/// 7), server ISN 5000 (window scale 7); both now at ISN + 1.
fn handshake(dp: &mut Dataplane, sport: u16) {
    let syn = PacketBuilder::tcp(CLIENT, HOST, sport, 8080)
        .seq(1000)
        .tcp_options(&[3, 3, 7])
        .build();
    assert_eq!(run(dp, "dp_uplink_in", &syn).0, NEXT);
    let syn_ack = PacketBuilder::tcp(C1, CLIENT, 80, sport)
        .tcp_flags(SYN_ACK)
        .seq(5000)
        .tcp_options(&[3, 3, 7])
        .build();
    assert_eq!(run(dp, "dp_uplink_out", &syn_ack).0, NEXT);
    assert_eq!(run(dp, "dp_uplink_in", &tcp_in(sport, ACK, 1001)).0, NEXT);
}

#[test]
fn loopback_destinations_from_outside_are_never_translated() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("pttlo");
    // Published on 127.0.0.1, and on 0.0.0.0 (which 127.0.0.1 is part of
    // for host-local clients): neither answers the network.
    for port in [8082, 8080] {
        let syn = PacketBuilder::tcp(CLIENT, [127, 0, 0, 1], 40000, port).build();
        let (verdict, out) = run(&mut dp, "dp_uplink_in", &syn);
        assert_eq!(verdict, SHOT, "127.0.0.1:{port} from outside");
        assert_eq!(out, syn, "never rewritten");
    }
    let other = PacketBuilder::udp(CLIENT, [127, 1, 2, 3], 40000, 53).build();
    assert_eq!(run(&mut dp, "dp_uplink_in", &other).0, SHOT);
    assert_eq!(drops(&dir, DropReason::LoopbackDestination), 3);
    assert!(flows(&dir).is_empty(), "no flow: {:?}", flows(&dir));
    // The host's own address still works.
    let syn = PacketBuilder::tcp(CLIENT, HOST, 40000, 8080).build();
    assert_eq!(parsed(&run(&mut dp, "dp_uplink_in", &syn).1).dst, C1);
}

#[test]
fn forged_sources_from_outside_are_counted_drops() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("pttmartian");
    for src in [C2, GATEWAY, HOST, [127, 0, 0, 1]] {
        let syn = PacketBuilder::tcp(src, HOST, 40000, 8080).build();
        assert_eq!(run(&mut dp, "dp_uplink_in", &syn).0, SHOT, "source {src:?}");
        // Straight to a container's address too, not only published ports.
        let direct = PacketBuilder::tcp(src, C1, 40000, 80).build();
        assert_eq!(
            run(&mut dp, "dp_uplink_in", &direct).0,
            SHOT,
            "source {src:?}"
        );
    }
    assert_eq!(drops(&dir, DropReason::MartianSource), 8);
    assert!(flows(&dir).is_empty(), "no flow: {:?}", flows(&dir));
}

#[test]
fn invalid_flags_and_corrupt_syns_start_nothing() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("pttflags");
    // SYN+FIN, SYN+RST, NULL, Xmas (FIN+PSH+URG), FIN alone, SYN-ACK/RST of
    // no flow.
    let refused = [0x03, 0x06, 0x00, 0x29, 0x01, SYN_ACK, RST];
    for (i, flags) in refused.into_iter().enumerate() {
        let p = tcp_in(41000 + i as u16, flags, 1);
        let (verdict, out) = run(&mut dp, "dp_uplink_in", &p);
        assert_eq!(verdict, SHOT, "flags {flags:#04x}");
        assert_eq!(out, p, "flags {flags:#04x} never rewritten");
    }
    assert_eq!(
        drops(&dir, DropReason::TcpInvalidFlags),
        refused.len() as u64
    );
    let bad = PacketBuilder::tcp(CLIENT, HOST, 42000, 8080)
        .bad_l4_checksum()
        .build();
    assert_eq!(run(&mut dp, "dp_uplink_in", &bad).0, SHOT);
    assert_eq!(drops(&dir, DropReason::TcpBadChecksum), 1);
    // Masquerade refuses the same flags from containers.
    let xmas = PacketBuilder::tcp(C1, CLIENT, 43000, 9000)
        .tcp_flags(0x29)
        .build();
    assert_eq!(run(&mut dp, "dp_uplink_out", &xmas).0, SHOT);
    assert!(flows(&dir).is_empty(), "no flow: {:?}", flows(&dir));

    // A SYN whose checksum waits for offload (the pseudo-header's sum in
    // the field, as a local stack with offload leaves it) is valid.
    let mut partial = PacketBuilder::tcp(CLIENT, HOST, 42001, 8080).build();
    let tcp_len = (partial.len() - 34) as u32;
    let mut sum = 0u32;
    for w in [&CLIENT[..2], &CLIENT[2..], &HOST[..2], &HOST[2..]] {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    sum += 6 + tcp_len;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    partial[34 + 16..34 + 18].copy_from_slice(&(sum as u16).to_be_bytes());
    let (verdict, out) = run(&mut dp, "dp_uplink_in", &partial);
    assert_eq!(verdict, NEXT);
    assert_eq!(parse(&out).expect("frame").dst, C1);

    // Inside a tracked flow, an Xmas segment is dropped and changes nothing.
    handshake(&mut dp, 44000);
    assert_eq!(
        run(&mut dp, "dp_uplink_in", &tcp_in(44000, 0x29, 1001)).0,
        SHOT
    );
    assert_eq!(state_of(&dir, CLIENT, 44000), "ESTABLISHED");
}

#[test]
fn a_blind_rst_does_not_close_a_flow_but_one_in_window_does() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("pttrst");
    handshake(&mut dp, 45000);
    assert_eq!(state_of(&dir, CLIENT, 45000), "ESTABLISHED");
    // Far outside the server's window (64240 << 7 bytes) of the client's
    // position 1001.
    for seq in [
        0x8000_0000u32,
        1001 + 64240 * 128 + 1000,
        1001u32.wrapping_sub(20_000_000),
    ] {
        let (verdict, _) = run(&mut dp, "dp_uplink_in", &tcp_in(45000, RST, seq));
        assert_eq!(verdict, SHOT, "RST at {seq}");
    }
    assert_eq!(drops(&dir, DropReason::TcpOutOfWindow), 3);
    assert_eq!(state_of(&dir, CLIENT, 45000), "ESTABLISHED");
    // The flow still works.
    let data = tcp_in(45000, ACK, 1001);
    assert_eq!(parsed(&run(&mut dp, "dp_uplink_in", &data).1).dst, C1);
    // The server's RST at its own position closes it.
    let (verdict, out) = run(&mut dp, "dp_uplink_out", &tcp_back(45000, RST, 5001));
    assert_eq!(verdict, NEXT);
    assert_eq!(parsed(&out).src, HOST);
    assert_eq!(state_of(&dir, CLIENT, 45000), "CLOSING");
}

#[test]
fn a_syn_on_a_closing_tuple_starts_a_fresh_flow() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("pttreopen");
    handshake(&mut dp, 46000);
    assert_eq!(
        run(&mut dp, "dp_uplink_in", &tcp_in(46000, FIN_ACK, 1001)).0,
        NEXT
    );
    assert_eq!(
        run(&mut dp, "dp_uplink_out", &tcp_back(46000, FIN_ACK, 5001)).0,
        NEXT
    );
    assert_eq!(state_of(&dir, CLIENT, 46000), "CLOSING");
    // The same client port again, as a new connection.
    let syn = PacketBuilder::tcp(CLIENT, HOST, 46000, 8080)
        .seq(900_000)
        .build();
    let (verdict, out) = run(&mut dp, "dp_uplink_in", &syn);
    assert_eq!(verdict, NEXT);
    assert_eq!(parsed(&out).dst, C1);
    let f = flows(&dir);
    assert_eq!(f.len(), 2, "one fresh pair: {f:?}");
    assert!(
        f.iter().all(|f| f.state == "SYN_SENT" && f.packets == 0),
        "{f:?}"
    );
}

#[test]
fn a_half_closed_flow_stays_open_until_both_sides_finish() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("ptthalf");
    handshake(&mut dp, 47000);
    // The client is done sending (shutdown(SHUT_WR)).
    assert_eq!(
        run(&mut dp, "dp_uplink_in", &tcp_in(47000, FIN_ACK, 1001)).0,
        NEXT
    );
    assert_eq!(state_of(&dir, CLIENT, 47000), "FIN_WAIT");
    // The server answers, much later, and keeps the established timeout.
    let answer = PacketBuilder::tcp(C1, CLIENT, 80, 47000)
        .tcp_flags(ACK)
        .seq(5001)
        .payload(b"late answer")
        .build();
    let (verdict, out) = run(&mut dp, "dp_uplink_out", &answer);
    assert_eq!(verdict, NEXT);
    assert_eq!(parsed(&out).src, HOST);
    let timeouts = conntrack::Timeouts::default();
    let f = flows(&dir);
    assert!(f.iter().all(|f| f.state == "FIN_WAIT"), "{f:?}");
    // GC with a 0 s closing timeout keeps a half-closed flow.
    let zero = conntrack::Timeouts {
        tcp_closing: std::time::Duration::ZERO,
        ..timeouts
    };
    conntrack::gc(dir.pins(), &zero).expect("gc");
    assert_eq!(
        flows(&dir).len(),
        2,
        "half-closed flows survive the closing timeout"
    );
    // The server's FIN closes it.
    let fin = tcp_back(47000, FIN_ACK, 5012);
    assert_eq!(run(&mut dp, "dp_uplink_out", &fin).0, NEXT);
    assert_eq!(state_of(&dir, CLIENT, 47000), "CLOSING");
    conntrack::gc(dir.pins(), &zero).expect("gc");
    assert!(flows(&dir).is_empty());
}

#[test]
fn fragments_follow_their_first_fragment_and_never_leak() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp) = load("pttfrag");
    // Masquerade: a datagram of C1 in two fragments.
    let first = PacketBuilder::udp(C1, CLIENT, 5000, 53)
        .payload(&[7u8; 64])
        .ip_id(0x4242)
        .more_fragments()
        .build();
    let p = parsed_first(&run(&mut dp, "dp_uplink_out", &first).1);
    assert_eq!((p.0, p.1), (HOST, 5000));
    let later = PacketBuilder::udp(C1, CLIENT, 0, 0)
        .ip_id(0x4242)
        .fragment_offset(9)
        .truncate_l4(0)
        .payload(&[])
        .build();
    let mut later = later;
    later.extend_from_slice(&[7u8; 32]);
    fix_ip_len(&mut later);
    let (verdict, out) = run(&mut dp, "dp_uplink_out", &later);
    assert_eq!(verdict, NEXT);
    assert_eq!(&out[26..30], &HOST, "later fragment masqueraded too");
    assert!(ip_checksum_ok(&out));
    assert_eq!(&out[34..], &later[34..], "its payload untouched");
    // A later fragment whose first was not seen cannot leave as C1.
    let mut orphan = later.clone();
    orphan[18..20].copy_from_slice(&0x5151u16.to_be_bytes());
    fix_ip_len(&mut orphan);
    assert_eq!(run(&mut dp, "dp_uplink_out", &orphan).0, SHOT);
    assert_eq!(drops(&dir, DropReason::FragmentUntracked), 1);

    // DNAT: a datagram to a published port in two fragments.
    let first = PacketBuilder::udp(CLIENT, HOST, 6000, 5353)
        .payload(&[9u8; 64])
        .ip_id(0x7777)
        .more_fragments()
        .build();
    let p = parsed_first(&run(&mut dp, "dp_uplink_in", &first).1);
    assert_eq!((p.2, p.3), (C1, 53));
    let mut later = PacketBuilder::udp(CLIENT, HOST, 0, 0)
        .ip_id(0x7777)
        .fragment_offset(9)
        .truncate_l4(0)
        .build();
    later.extend_from_slice(&[9u8; 32]);
    fix_ip_len(&mut later);
    let (verdict, out) = run(&mut dp, "dp_uplink_in", &later);
    assert_eq!(verdict, NEXT);
    assert_eq!(&out[30..34], &C1, "later fragment follows the DNAT");
    assert!(ip_checksum_ok(&out));
}

/// (src, sport, dst, dport) of a first fragment (its UDP checksum covers
/// the whole datagram, so it is not checked here).
fn parsed_first(frame: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    assert!(ip_checksum_ok(frame));
    let ip = &frame[14..];
    let l4 = &ip[20..];
    (
        ip[12..16].try_into().expect("src"),
        u16::from_be_bytes([l4[0], l4[1]]),
        ip[16..20].try_into().expect("dst"),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

fn fix_ip_len(frame: &mut [u8]) {
    let len = (frame.len() - 14) as u16;
    frame[16..18].copy_from_slice(&len.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = dataplane_tests::packets::checksum(&frame[14..34], 0);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

fn ip_checksum_ok(frame: &[u8]) -> bool {
    dataplane_tests::packets::checksum(&frame[14..34], 0) == 0
}
