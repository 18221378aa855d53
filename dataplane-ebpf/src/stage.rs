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
