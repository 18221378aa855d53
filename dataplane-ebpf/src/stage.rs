//! The IPv6 programs run in two stages, each a BPF *global* function: the
//! parse stage fills the packet's fields on the program's frame, the flow
//! stage (conntrack, NAT, filters, fast path) reads them through a pointer.
//! The verifier checks a global function once, on its own, for any
//! argument of its type; a static subprogram it checks once per call site
//! and per state of the caller there. Walked inline, the flow steps were
//! checked once per way a packet had been parsed (protocol, fragment,
//! extension headers...), which took `dp_uplink_in6` to 961 000 of the
//! verifier's 1 000 000 instructions; in stages it is about a tenth.
//!
//! A stage returns the tc verdict, its drops counted through the one drop
//! funnel, or [`CONTINUE`] (parse stage: on to the flow stage).
//! [`two_stage!`] writes a program's entry and its two global functions.

use aya_ebpf::programs::TcContext;
use dataplane_common::drop::DropReason;

use crate::drop::drop_packet;

/// A parse stage's "go on": no tc verdict is this negative.
pub const CONTINUE: i32 = i32::MIN;

/// A stage's result as its global function returns it.
#[inline(always)]
pub fn verdict(ctx: &TcContext, result: Result<i32, DropReason>) -> i64 {
    i64::from(match result {
        Ok(verdict) => verdict,
        Err(reason) => drop_packet(ctx, reason),
    })
}

/// An IPv6 tc program in its two stages: the entry `$prog` and the global
/// functions `$parse_fn` and `$flow_fn` (the names `bpftool` and the
/// verifier log show), which run the module's `$parse` (filling an
/// `Ipv6Packet` on the entry's frame) and `$flow` (reading it through a
/// pointer). A global function is verified for any argument of its type,
/// so each checks its pointer for null and answers the next program's
/// verdict (-1) then.
macro_rules! two_stage {
    ($prog:ident: $parse_fn:ident => $parse:path, $flow_fn:ident => $flow:path) => {
        #[aya_ebpf::macros::classifier]
        pub fn $prog(ctx: aya_ebpf::programs::TcContext) -> i32 {
            let mut pkt = $crate::parse::Ipv6Packet::default();
            let verdict = $parse_fn(ctx.skb.skb, &raw mut pkt) as i32;
            if verdict != $crate::stage::CONTINUE {
                return verdict;
            }
            $flow_fn(ctx.skb.skb, &raw const pkt) as i32
        }

        #[no_mangle]
        #[inline(never)]
        pub extern "C" fn $parse_fn(
            skb: *mut aya_ebpf::bindings::__sk_buff,
            pkt: *mut $crate::parse::Ipv6Packet,
        ) -> i64 {
            let ctx = aya_ebpf::programs::TcContext::new(skb);
            // SAFETY: the program's own packet; a global function must
            // check null.
            let Some(pkt) = (unsafe { pkt.as_mut() }) else {
                return -1;
            };
            $crate::stage::verdict(&ctx, $parse(&ctx, pkt))
        }

        #[no_mangle]
        #[inline(never)]
        pub extern "C" fn $flow_fn(
            skb: *mut aya_ebpf::bindings::__sk_buff,
            pkt: *const $crate::parse::Ipv6Packet,
        ) -> i64 {
            let ctx = aya_ebpf::programs::TcContext::new(skb);
            // SAFETY: as above.
            let Some(pkt) = (unsafe { pkt.as_ref() }) else {
                return -1;
            };
            $crate::stage::verdict(&ctx, $flow(&ctx, pkt))
        }
    };
}
pub(crate) use two_stage;
