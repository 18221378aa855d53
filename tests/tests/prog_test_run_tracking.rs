//! BPF_PROG_TEST_RUN of the uplink programs on hand-built packets, for what
//! conntrack refuses or follows (issue 12), for both families from one
//! definition each: loopback destinations and forged sources from outside,
//! an internal network's egress, invalid TCP flag combinations, corrupt
//! SYNs, blind RSTs, a SYN reopening a closing tuple, half-closed flows;
//! and IPv4 fragments following their first fragment through DNAT and
//! masquerade. Each case checks the verdict, the drop reason counted and
//! the conntrack entries left (none from a refused packet).

use std::net::{IpAddr, Ipv4Addr};

use dataplane_common::{drop::DropReason, nat::SUBNET_INTERNAL};
use dataplane_tests::{
    datapath,
    family::{parse, parsed, sock, Family, Pkt, Plan},
    family_tests,
    packets::PacketBuilder,
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

const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

/// [`Plan::configure`], plus 8082/tcp published on loopback only (-> c1:80)
/// and the gateway and loopback as host addresses (as `nat::sync` writes
/// them from the host's links).
fn load(fam: Family, tag: &str) -> (BpffsDir, Dataplane, Plan) {
    let dir = BpffsDir::new(tag).expect("bpffs");
    let dp = Dataplane::load(dir.pins()).expect("load");
    let p = fam.plan();
    let pins = dp.pins();
    p.configure(pins);
    p.publish(pins, fam.loopback(), 8082, 6, sock(p.c1, 80));
    p.host_addr(pins, p.gateway, 3);
    p.host_addr(pins, fam.loopback(), 1);
    (dir, dp, p)
}

fn run(dp: &mut Dataplane, program: &'static str, packet: &[u8]) -> (u32, Vec<u8>) {
    datapath::run_program(dp, program, packet).expect("test run")
}

fn drops(dir: &BpffsDir, reason: DropReason) -> u64 {
    stats::read(dir.pins()).expect("stats").drop(reason).packets
}

fn flows(dir: &BpffsDir) -> Vec<Flow> {
    conntrack::list(dir.pins()).expect("conntrack")
}

/// The state of the entry of the flow from `src`:`sport` (original
/// direction).
fn state_of(dir: &BpffsDir, src: IpAddr, sport: u16) -> String {
    let f = flows(dir);
    f.iter()
        .find(|f| f.src == src.to_string() && f.sport == sport && !f.reply)
        .map(|f| f.state.to_string())
        .unwrap_or_else(|| panic!("no flow from {src}:{sport}: {f:?}"))
}

fn tcp_in(p: &Plan, sport: u16, flags: u8, seq: u32) -> Vec<u8> {
    Pkt::tcp(p.client, p.host, sport, 8080)
        .tcp_flags(flags)
        .seq(seq)
        .build()
}

fn tcp_back(p: &Plan, dport: u16, flags: u8, seq: u32) -> Vec<u8> {
    Pkt::tcp(p.c1, p.client, 80, dport)
        .tcp_flags(flags)
        .seq(seq)
        .build()
}

/// A published flow through its handshake: client ISN 1000 (window scale
/// 7), server ISN 5000 (window scale 7); both now at ISN + 1.
fn handshake(dp: &mut Dataplane, p: &Plan, sport: u16) {
    let syn = Pkt::tcp(p.client, p.host, sport, 8080)
        .seq(1000)
        .tcp_options(&[3, 3, 7])
        .build();
    assert_eq!(run(dp, p.uplink_in, &syn).0, NEXT);
    let syn_ack = Pkt::tcp(p.c1, p.client, 80, sport)
        .tcp_flags(SYN_ACK)
        .seq(5000)
        .tcp_options(&[3, 3, 7])
        .build();
    assert_eq!(run(dp, p.uplink_out, &syn_ack).0, NEXT);
    assert_eq!(run(dp, p.uplink_in, &tcp_in(p, sport, ACK, 1001)).0, NEXT);
}

family_tests!(
    loopback_destinations_from_outside_are_never_translated,
    forged_sources_from_outside_are_counted_drops,
    an_internal_networks_egress_is_a_counted_drop,
    invalid_flags_and_corrupt_syns_start_nothing,
    a_blind_rst_does_not_close_a_flow_but_one_in_window_does,
    a_syn_on_a_closing_tuple_starts_a_fresh_flow,
    a_half_closed_flow_stays_open_until_both_sides_finish,
);

fn loopback_destinations_from_outside_are_never_translated(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp, p) = load(fam, "pttlo");
    let lo = fam.loopback();
    // Published on loopback, and on the unspecified address (which
    // loopback is part of for host-local clients): neither answers the
    // network.
    for port in [8082, 8080] {
        let syn = Pkt::tcp(p.client, lo, 40000, port).build();
        let (verdict, out) = run(&mut dp, p.uplink_in, &syn);
        assert_eq!(verdict, SHOT, "{lo}:{port} from outside");
        assert_eq!(out, syn, "never rewritten");
    }
    // Another loopback address (IPv6 has only ::1: another port of it).
    let other = match fam {
        Family::V4 => Pkt::udp(p.client, Ipv4Addr::new(127, 1, 2, 3).into(), 40000, 53),
        Family::V6 => Pkt::udp(p.client, lo, 40000, 53),
    };
    assert_eq!(run(&mut dp, p.uplink_in, &other.build()).0, SHOT);
    assert_eq!(drops(&dir, DropReason::LoopbackDestination), 3);
    assert!(flows(&dir).is_empty(), "no flow: {:?}", flows(&dir));
    // The host's own address still works.
    let syn = Pkt::tcp(p.client, p.host, 40000, 8080).build();
    assert_eq!(parsed(&run(&mut dp, p.uplink_in, &syn).1).dst, p.c1);
}

fn forged_sources_from_outside_are_counted_drops(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp, p) = load(fam, "pttmartian");
    for src in [p.c2, p.gateway, p.host, fam.loopback()] {
        let syn = Pkt::tcp(src, p.host, 40000, 8080).build();
        assert_eq!(run(&mut dp, p.uplink_in, &syn).0, SHOT, "source {src}");
        // Straight to a container's address too, not only published ports.
        let direct = Pkt::tcp(src, p.c1, 40000, 80).build();
        assert_eq!(run(&mut dp, p.uplink_in, &direct).0, SHOT, "source {src}");
    }
    assert_eq!(drops(&dir, DropReason::MartianSource), 8);
    assert!(flows(&dir).is_empty(), "no flow: {:?}", flows(&dir));
}

/// An internal network's packets never leave through the uplink.
fn an_internal_networks_egress_is_a_counted_drop(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp, p) = load(fam, "pttinternal");
    let (net, inside) = match fam {
        Family::V4 => (IpAddr::from([10, 9, 0, 0]), IpAddr::from([10, 9, 0, 2])),
        Family::V6 => (
            "fd00:9::".parse().expect("addr"),
            "fd00:9::2".parse().expect("addr"),
        ),
    };
    let len = if fam == Family::V4 { 24 } else { 64 };
    p.add_subnet(dp.pins(), net, len, SUBNET_INTERNAL, 9);
    let out = Pkt::udp(inside, p.server, 5000, 53).build();
    assert_eq!(run(&mut dp, p.uplink_out, &out).0, SHOT);
    assert_eq!(drops(&dir, DropReason::Internal), 1);
    assert!(flows(&dir).is_empty(), "no flow: {:?}", flows(&dir));
}

/// A SYN whose checksum waits for offload: the pseudo-header's sum in the
/// field, as a local stack with offload leaves it.
fn partial_checksum_syn(p: &Plan, sport: u16) -> Vec<u8> {
    let mut frame = Pkt::tcp(p.client, p.host, sport, 8080).build();
    let l4_at = match p.fam {
        Family::V4 => 14 + 20,
        Family::V6 => 14 + 40,
    };
    let tcp_len = (frame.len() - l4_at) as u32;
    let octets = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut sum = 6 + tcp_len;
    for w in octets(p.client).chunks(2).chain(octets(p.host).chunks(2)) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[l4_at + 16..l4_at + 18].copy_from_slice(&(sum as u16).to_be_bytes());
    frame
}

fn invalid_flags_and_corrupt_syns_start_nothing(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp, p) = load(fam, "pttflags");
    // SYN+FIN, SYN+RST, NULL, Xmas (FIN+PSH+URG), FIN alone, SYN-ACK/RST of
    // no flow.
    let refused = [0x03, 0x06, 0x00, 0x29, 0x01, SYN_ACK, RST];
    for (i, flags) in refused.into_iter().enumerate() {
        let pkt = tcp_in(&p, 41000 + i as u16, flags, 1);
        let (verdict, out) = run(&mut dp, p.uplink_in, &pkt);
        assert_eq!(verdict, SHOT, "flags {flags:#04x}");
        assert_eq!(out, pkt, "flags {flags:#04x} never rewritten");
    }
    assert_eq!(
        drops(&dir, DropReason::TcpInvalidFlags),
        refused.len() as u64
    );
    let bad = Pkt::tcp(p.client, p.host, 42000, 8080)
        .bad_l4_checksum()
        .build();
    assert_eq!(run(&mut dp, p.uplink_in, &bad).0, SHOT);
    assert_eq!(drops(&dir, DropReason::TcpBadChecksum), 1);
    // Masquerade refuses the same flags from containers.
    let xmas = Pkt::tcp(p.c1, p.client, 43000, 9000)
        .tcp_flags(0x29)
        .build();
    assert_eq!(run(&mut dp, p.uplink_out, &xmas).0, SHOT);
    assert!(flows(&dir).is_empty(), "no flow: {:?}", flows(&dir));

    // A SYN whose checksum waits for offload is valid.
    let partial = partial_checksum_syn(&p, 42001);
    let (verdict, out) = run(&mut dp, p.uplink_in, &partial);
    assert_eq!(verdict, NEXT);
    assert_eq!(parse(&out).expect("frame").dst, p.c1);

    // Inside a tracked flow, an Xmas segment is dropped and changes nothing.
    handshake(&mut dp, &p, 44000);
    assert_eq!(
        run(&mut dp, p.uplink_in, &tcp_in(&p, 44000, 0x29, 1001)).0,
        SHOT
    );
    assert_eq!(state_of(&dir, p.client, 44000), "ESTABLISHED");
}

fn a_blind_rst_does_not_close_a_flow_but_one_in_window_does(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp, p) = load(fam, "pttrst");
    handshake(&mut dp, &p, 45000);
    assert_eq!(state_of(&dir, p.client, 45000), "ESTABLISHED");
    // Far outside the server's window (64240 << 7 bytes) of the client's
    // position 1001.
    for seq in [
        0x8000_0000u32,
        1001 + 64240 * 128 + 1000,
        1001u32.wrapping_sub(20_000_000),
    ] {
        let (verdict, _) = run(&mut dp, p.uplink_in, &tcp_in(&p, 45000, RST, seq));
        assert_eq!(verdict, SHOT, "RST at {seq}");
    }
    assert_eq!(drops(&dir, DropReason::TcpOutOfWindow), 3);
    assert_eq!(state_of(&dir, p.client, 45000), "ESTABLISHED");
    // The flow still works.
    let data = tcp_in(&p, 45000, ACK, 1001);
    assert_eq!(parsed(&run(&mut dp, p.uplink_in, &data).1).dst, p.c1);
    // The server's RST at its own position closes it.
    let (verdict, out) = run(&mut dp, p.uplink_out, &tcp_back(&p, 45000, RST, 5001));
    assert_eq!(verdict, NEXT);
    assert_eq!(parsed(&out).src, p.host);
    assert_eq!(state_of(&dir, p.client, 45000), "CLOSING");
}

fn a_syn_on_a_closing_tuple_starts_a_fresh_flow(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp, p) = load(fam, "pttreopen");
    handshake(&mut dp, &p, 46000);
    assert_eq!(
        run(&mut dp, p.uplink_in, &tcp_in(&p, 46000, FIN_ACK, 1001)).0,
        NEXT
    );
    assert_eq!(
        run(&mut dp, p.uplink_out, &tcp_back(&p, 46000, FIN_ACK, 5001)).0,
        NEXT
    );
    assert_eq!(state_of(&dir, p.client, 46000), "CLOSING");
    // The same client port again, as a new connection.
    let syn = Pkt::tcp(p.client, p.host, 46000, 8080).seq(900_000).build();
    let (verdict, out) = run(&mut dp, p.uplink_in, &syn);
    assert_eq!(verdict, NEXT);
    assert_eq!(parsed(&out).dst, p.c1);
    let f = flows(&dir);
    assert_eq!(f.len(), 2, "one fresh pair: {f:?}");
    assert!(
        f.iter().all(|f| f.state == "SYN_SENT" && f.packets == 0),
        "{f:?}"
    );
}

fn a_half_closed_flow_stays_open_until_both_sides_finish(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp, p) = load(fam, "ptthalf");
    handshake(&mut dp, &p, 47000);
    // The client is done sending (shutdown(SHUT_WR)).
    assert_eq!(
        run(&mut dp, p.uplink_in, &tcp_in(&p, 47000, FIN_ACK, 1001)).0,
        NEXT
    );
    assert_eq!(state_of(&dir, p.client, 47000), "FIN_WAIT");
    // The server answers, much later, and keeps the established timeout.
    let answer = Pkt::tcp(p.c1, p.client, 80, 47000)
        .tcp_flags(ACK)
        .seq(5001)
        .payload(b"late answer")
        .build();
    let (verdict, out) = run(&mut dp, p.uplink_out, &answer);
    assert_eq!(verdict, NEXT);
    assert_eq!(parsed(&out).src, p.host);
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
    let fin = tcp_back(&p, 47000, FIN_ACK, 5012);
    assert_eq!(run(&mut dp, p.uplink_out, &fin).0, NEXT);
    assert_eq!(state_of(&dir, p.client, 47000), "CLOSING");
    conntrack::gc(dir.pins(), &zero).expect("gc");
    assert!(flows(&dir).is_empty());
}

/// IPv4's own: fragments (IPv6 later fragments pass to the stack
/// untranslated, see `uplink6`).
#[test]
fn fragments_follow_their_first_fragment_and_never_leak() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (dir, mut dp, _) = load(Family::V4, "pttfrag");
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
