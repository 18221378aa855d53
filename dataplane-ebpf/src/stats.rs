//! `dp_stats`: a tc (tcx) program that counts packets and bytes per protocol
//! class and drops malformed IPv4 through the drop funnel. It never changes a
//! packet and hands valid ones on to the next program in the tcx chain.

use aya_ebpf::{macros::classifier, programs::TcContext};
use dataplane_common::{
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    stats::ProtoIndex,
};

use crate::{
    counters::bump,
    drop::drop_packet,
    maps::DP_PROTO_STATS,
    parse::{parse, Ipv4Packet, L3},
};

/// tcx verdict "continue with the next program" (`TCX_NEXT`, same value as
/// `TC_ACT_UNSPEC`): counting must not end the chain for programs after it.
const TCX_NEXT: i32 = -1;

#[classifier]
pub fn dp_stats(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let mut pkt = Ipv4Packet::default();
    match parse(&ctx, &mut pkt) {
        Ok(l3) => {
            count(classify(l3, &pkt), len);
            TCX_NEXT
        }
        Err(reason) => {
            count(ProtoIndex::Malformed, len);
            drop_packet(&ctx, reason)
        }
    }
}

#[inline(always)]
fn classify(l3: L3, p: &Ipv4Packet) -> ProtoIndex {
    match l3 {
        L3::Other | L3::Ipv6 => ProtoIndex::NonIpv4,
        L3::Ipv4 => match p.proto {
            IPPROTO_TCP => ProtoIndex::Tcp,
            IPPROTO_UDP => ProtoIndex::Udp,
            IPPROTO_ICMP => ProtoIndex::Icmp,
            _ => ProtoIndex::OtherIpv4,
        },
    }
}

#[inline(always)]
fn count(idx: ProtoIndex, len: u32) {
    bump(&DP_PROTO_STATS, idx as u32, len);
}
