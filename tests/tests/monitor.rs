//! Drop events (`dataplane monitor`): BPF_PROG_TEST_RUN of `dp_uplink_in` on
//! malformed packets while `events::stream` runs, one event per drop with
//! the right reason and decoded headers; and `events::decode` on hand-built
//! frames.

use std::{net::Ipv4Addr, time::Duration};

use dataplane_common::{
    drop::DropReason,
    event::{DropEvent, HEADERS_LEN},
};
use dataplane_tests::{datapath, packets::PacketBuilder, BpffsDir};
use dataplane_user::datapath::{
    ebpf::Dataplane,
    events::{self, Decoded},
    stats,
};

const SHOT: u32 = 2;
const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

/// A packet the program must drop, and what its event must say.
struct Case {
    name: &'static str,
    packet: Vec<u8>,
    reason: DropReason,
    /// (source port, destination port) when the headers carry them.
    ports: Option<(u16, u16)>,
}

fn drops() -> Vec<Case> {
    let tcp = PacketBuilder::tcp(A, B, 40000, 80);
    let udp = PacketBuilder::udp(A, B, 5353, 53);
    vec![
        Case {
            name: "tcp header cut at 10 bytes",
            packet: tcp.clone().truncate_l4(10).build(),
            reason: DropReason::Truncated,
            ports: Some((40000, 80)),
        },
        Case {
            name: "ihl 4",
            packet: tcp.clone().ihl(4).build(),
            reason: DropReason::BadIhl,
            ports: None,
        },
        Case {
            name: "version 6 in an ipv4 frame",
            packet: udp.clone().version(6).build(),
            reason: DropReason::BadVersion,
            ports: None,
        },
        Case {
            name: "ihl 15 past the packet end",
            packet: udp.truncate_l4(0).ihl(15).build(),
            reason: DropReason::BadIhl,
            ports: None,
        },
    ]
}

#[test]
fn every_drop_streams_one_event() {
    if !dataplane_tests::require_root() {
        return;
    }
    let dir = BpffsDir::new("mon").expect("bpffs dir");
    let mut dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
    let prog = dp
        .tc_program("dp_uplink_in")
        .expect("verifier accepts dp_uplink_in");
    let cases = drops();
    // Packets the program lets on: they must produce no event.
    let passing = [
        PacketBuilder::tcp(A, B, 40000, 80).build(),
        PacketBuilder::arp(),
    ];

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut events: Vec<Decoded> = Vec::new();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let mut done_tx = Some(done_tx);
    let want = cases.len();
    rt.block_on(async {
        let on_event = |d: Decoded| {
            events.push(d);
            if events.len() == want {
                if let Some(tx) = done_tx.take() {
                    let _ = tx.send(());
                }
            }
        };
        // Stop once every drop was seen (plus a moment for extra events to
        // show up), or after a timeout.
        let stop = async {
            if tokio::time::timeout(Duration::from_secs(5), done_rx)
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        // `join!` polls the stream first: it opens the ring buffer and skips
        // the backlog before the packets below are sent.
        let send = async {
            for p in passing.iter() {
                let (verdict, _) = datapath::run_tc(prog, p).expect("test run");
                assert_ne!(verdict, SHOT, "a valid packet was dropped");
            }
            for case in &cases {
                let (verdict, _) = datapath::run_tc(prog, &case.packet)
                    .unwrap_or_else(|e| panic!("{}: test run failed: {e:?}", case.name));
                assert_eq!(verdict, SHOT, "{}: not dropped", case.name);
            }
        };
        let (streamed, ()) = tokio::join!(events::stream(dir.pins(), on_event, stop), send);
        streamed.expect("stream drop events");
    });

    assert_eq!(
        events.len(),
        cases.len(),
        "one event per drop, got {events:#?}"
    );
    let mut failures = Vec::new();
    for (case, ev) in cases.iter().zip(&events) {
        let mut check = |ok: bool, what: &str| {
            if !ok {
                failures.push(format!("{}: {what}: {ev:?} ({ev})", case.name));
            }
        };
        check(ev.reason == case.reason.name(), "reason");
        check(ev.len as usize == case.packet.len(), "len");
        check(
            ev.captured as usize <= case.packet.len().min(HEADERS_LEN) && ev.captured >= 34,
            "captured",
        );
        check(ev.ethertype == Some(0x0800), "ethertype");
        check(ev.src == Some(Ipv4Addr::from(A)), "src");
        check(ev.dst == Some(Ipv4Addr::from(B)), "dst");
        check(
            ev.sport.zip(ev.dport) == case.ports,
            "ports (only when the L4 header is there)",
        );
        check(ev.ifindex == events[0].ifindex, "ifindex");
        check(
            ev.to_string()
                .starts_with(&format!("drop ({}) if ", case.reason.name())),
            "display",
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        events[0].to_string(),
        format!(
            "drop (truncated) if {} len 44: 10.0.0.1:40000 -> 10.0.0.2:80 tcp",
            events[0].ifindex
        )
    );

    // The drop counters agree, and nothing was lost.
    let snap = stats::read(dir.pins()).expect("read counters");
    let total: u64 = DropReason::ALL.iter().map(|r| snap.drop(*r).packets).sum();
    assert_eq!(total, cases.len() as u64, "drop counters");
    let lost = events::lost(dir.pins()).expect("read lost events");
    assert_eq!(lost.packets, 0, "lost events");
}

/// An event as the eBPF side writes it for `frame`, capturing `captured`
/// bytes.
fn event(reason: DropReason, ifindex: u32, frame: &[u8], captured: usize) -> DropEvent {
    let mut ev = DropEvent::ZERO;
    ev.reason = reason as u32;
    ev.ifindex = ifindex;
    ev.len = frame.len() as u32;
    let n = captured.min(frame.len()).min(HEADERS_LEN);
    ev.headers[..n].copy_from_slice(&frame[..n]);
    ev.captured = n as u32;
    ev
}

#[test]
fn decode_hand_built_headers() {
    let src = [172, 17, 0, 99];
    let dst = [172, 17, 0, 1];

    // ICMP echo request, 98 bytes (ping's default).
    let icmp = PacketBuilder::icmp_echo(src, dst, 7, 1)
        .payload(&[0; 56])
        .build();
    assert_eq!(icmp.len(), 98);
    let d = events::decode(&event(DropReason::Spoofed, 7, &icmp, 64));
    assert_eq!(
        d.to_string(),
        "drop (spoofed-source) if 7 len 98: 172.17.0.99 -> 172.17.0.1 icmp echo-request"
    );
    assert_eq!((d.icmp_type, d.icmp_code), (Some(8), Some(0)));
    assert_eq!((d.sport, d.dport), (None, None));
    assert_eq!(d.protocol, Some(1));

    // TCP SYN.
    let tcp = PacketBuilder::tcp(src, dst, 40000, 8080)
        .payload(&[0; 100])
        .build();
    let d = events::decode(&event(DropReason::Filtered, 3, &tcp, 64));
    assert_eq!(d.reason, "filtered");
    assert_eq!(d.ethertype, Some(0x0800));
    assert_eq!(d.src, Some(Ipv4Addr::from(src)));
    assert_eq!(d.dst, Some(Ipv4Addr::from(dst)));
    assert_eq!(
        (d.protocol, d.sport, d.dport),
        (Some(6), Some(40000), Some(8080))
    );
    assert_eq!(d.tcp_flags, Some(0x02));
    assert_eq!(
        d.to_string(),
        "drop (filtered) if 3 len 154: 172.17.0.99:40000 -> 172.17.0.1:8080 tcp [S]"
    );

    // UDP with IP options: ports after the longer header.
    let udp = PacketBuilder::udp(src, dst, 5353, 53).ip_options(8).build();
    let d = events::decode(&event(DropReason::Isolated, 9, &udp, 64));
    assert_eq!(
        (d.protocol, d.sport, d.dport),
        (Some(17), Some(5353), Some(53))
    );
    assert_eq!(
        d.to_string(),
        format!(
            "drop (network-isolation) if 9 len {}: 172.17.0.99:5353 -> 172.17.0.1:53 udp",
            udp.len()
        )
    );

    // ARP request.
    let arp = PacketBuilder::arp();
    let d = events::decode(&event(DropReason::Filtered, 2, &arp, 64));
    assert_eq!(d.ethertype, Some(0x0806));
    assert_eq!(d.arp_op, Some(1));
    assert_eq!(d.src, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(d.dst, Some(Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(d.protocol, None);
    assert_eq!(
        d.to_string(),
        "drop (filtered) if 2 len 42: arp request 10.0.0.1 -> 10.0.0.2"
    );

    // Short captures: Ethernet + IPv4 only (no ports), Ethernet only,
    // nothing.
    let d = events::decode(&event(DropReason::Truncated, 1, &tcp, 34));
    assert_eq!(d.captured, 34);
    assert_eq!(d.src, Some(Ipv4Addr::from(src)));
    assert_eq!((d.sport, d.dport, d.tcp_flags), (None, None, None));
    assert_eq!(
        d.to_string(),
        "drop (truncated) if 1 len 154: 172.17.0.99 -> 172.17.0.1 tcp"
    );
    let d = events::decode(&event(DropReason::Truncated, 1, &tcp, 14));
    assert_eq!(d.ethertype, Some(0x0800));
    assert_eq!((d.src, d.protocol), (None, None));
    assert_eq!(
        d.to_string(),
        "drop (truncated) if 1 len 154: ipv4 (header not captured)"
    );
    let d = events::decode(&event(DropReason::Truncated, 1, &tcp, 0));
    assert_eq!(d.ethertype, None);
    assert_eq!(
        d.to_string(),
        "drop (truncated) if 1 len 154: (no ethernet header captured)"
    );

    // A bad IHL: addresses, but no L4 guesswork.
    let bad = PacketBuilder::tcp(src, dst, 1, 2).ihl(4).build();
    let d = events::decode(&event(DropReason::BadIhl, 1, &bad, 64));
    assert_eq!((d.src, d.sport), (Some(Ipv4Addr::from(src)), None));

    // A reason this build does not know, and a bogus `captured`.
    let mut ev = event(DropReason::Truncated, 1, &tcp, 64);
    ev.reason = 99;
    ev.captured = 1000;
    let d = events::decode(&ev);
    assert_eq!(d.reason, "unknown-99");
    assert_eq!(d.captured, HEADERS_LEN as u32);
}
