//! The one drop funnel: every program that drops a packet returns through
//! [`drop_packet`], so each drop is counted under a typed reason.

use aya_ebpf::bindings::TC_ACT_SHOT;
use dataplane_common::drop::DropReason;

use crate::{counters::bump, maps::DP_DROP_STATS};

/// Counts the drop under `reason` and returns the tc verdict that drops it.
#[inline(always)]
pub fn drop_packet(reason: DropReason, len: u32) -> i32 {
    bump(&DP_DROP_STATS, reason as u32, len);
    TC_ACT_SHOT
}
