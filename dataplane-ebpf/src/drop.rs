//! The one drop funnel: every program that drops a packet returns through
//! [`drop_packet`], so each drop is counted under a typed reason and, best
//! effort, reported as a [`DropEvent`] in the `DP_EVENTS` ring buffer
//! (`dataplane monitor`). A full ring buffer loses the event and counts it in
//! `DP_EVENTS_LOST`; the drop itself is never affected.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
    EbpfContext,
};
use dataplane_common::{
    drop::DropReason,
    event::{DropEvent, CAPTURE_STEPS},
};

use crate::{
    counters::bump,
    maps::{DP_DROP_STATS, DP_EVENTS, DP_EVENTS_LOST},
};

/// Counts the drop under `reason`, reports it, and returns the tc verdict
/// that drops it.
#[inline(always)]
pub fn drop_packet(ctx: &TcContext, reason: DropReason) -> i32 {
    let len = ctx.len();
    bump(&DP_DROP_STATS, reason as u32, len);
    report(ctx, reason, len);
    explain(ctx, reason);
    TC_ACT_SHOT
}

/// Drops that mean the dataplane itself is short of something, not that a
/// packet was bad or forbidden, also go to the agent's log (aya-log): they
/// are rare, and an operator must hear of them.
#[inline(always)]
fn explain(ctx: &TcContext, reason: DropReason) {
    match reason {
        DropReason::SnatExhausted => {
            aya_log_ebpf::warn!(
                ctx,
                "masquerade: no free source port left for a new flow; packet dropped"
            )
        }
        DropReason::CtInsert => {
            aya_log_ebpf::warn!(ctx, "conntrack: could not store a new flow (table full of live entries); packet dropped")
        }
        DropReason::Rewrite => {
            aya_log_ebpf::error!(ctx, "NAT: rewriting a packet failed; packet dropped")
        }
        _ => {}
    }
}

/// Writes the drop event straight into reserved ring buffer memory (no
/// stack copy of the headers).
#[inline(always)]
fn report(ctx: &TcContext, reason: DropReason, len: u32) {
    let Some(mut entry) = DP_EVENTS.reserve(0) else {
        bump(&DP_EVENTS_LOST, 0, len);
        return;
    };
    let ev: *mut DropEvent = entry.as_mut_ptr();
    // SAFETY: `ev` points to reserved ring buffer memory the size of a
    // `DropEvent`, owned by this program until it is submitted. Every field
    // is written below before the submit.
    unsafe {
        addr_of_mut!((*ev).reason).write(reason as u32);
        addr_of_mut!((*ev).ifindex).write((*ctx.skb.skb).ifindex);
        addr_of_mut!((*ev).len).write(len);
        addr_of_mut!((*ev)._pad).write(0);
        addr_of_mut!((*ev)._pad2).write(0);
        addr_of_mut!((*ev).ktime_ns).write(bpf_ktime_get_ns());
        let headers = addr_of_mut!((*ev).headers).cast::<u8>();
        addr_of_mut!((*ev).captured).write(capture(ctx, headers));
    }
    entry.submit(0);
}

/// Copies the first bytes of the frame to `dst` (64 bytes), trying the
/// fixed sizes of [`CAPTURE_STEPS`] from the largest down: each size is a
/// constant for the verifier, and there is no loop over the packet. A failed
/// `bpf_skb_load_bytes` zeroes its destination, so the first (64-byte) try
/// leaves the window zeroed whatever follows. Returns the bytes copied.
///
/// # Safety
/// `dst` must be valid for writes of `CAPTURE_STEPS[0]` bytes.
#[inline(always)]
unsafe fn capture(ctx: &TcContext, dst: *mut u8) -> u32 {
    const S0: u32 = CAPTURE_STEPS[0];
    const S1: u32 = CAPTURE_STEPS[1];
    const S2: u32 = CAPTURE_STEPS[2];
    const S3: u32 = CAPTURE_STEPS[3];
    const S4: u32 = CAPTURE_STEPS[4];
    let skb = ctx.as_ptr().cast();
    let dst = dst.cast();
    // SAFETY (each call): `dst` has room for the largest step.
    unsafe {
        if bpf_skb_load_bytes(skb, 0, dst, S0) == 0 {
            S0
        } else if bpf_skb_load_bytes(skb, 0, dst, S1) == 0 {
            S1
        } else if bpf_skb_load_bytes(skb, 0, dst, S2) == 0 {
            S2
        } else if bpf_skb_load_bytes(skb, 0, dst, S3) == 0 {
            S3
        } else if bpf_skb_load_bytes(skb, 0, dst, S4) == 0 {
            S4
        } else {
            0
        }
    }
}
