//! Drop events: what the eBPF drop funnel writes into the `DP_EVENTS` ring
//! buffer for every dropped packet (best effort), and what `dataplane
//! monitor` decodes.

use bytemuck::{Pod, Zeroable};

/// Bytes of the frame copied into each event (from the Ethernet header on).
pub const HEADERS_LEN: usize = 64;

/// The sizes the eBPF side tries to copy, largest first, so that a short
/// frame still yields as much of its headers as possible with a fixed-size
/// (verifier-friendly) load: the whole window; Ethernet + IPv4 + TCP;
/// Ethernet + IPv4 + 8 bytes of UDP/ICMP; Ethernet + IPv4; Ethernet.
pub const CAPTURE_STEPS: [u32; 5] = [64, 54, 42, 34, 14];

/// One dropped packet. `headers[captured..]` is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DropEvent {
    /// [`crate::drop::DropReason`] as its `u32` value.
    pub reason: u32,
    /// Interface the program ran on (`__sk_buff.ifindex`).
    pub ifindex: u32,
    /// Length of the whole packet (`skb->len`).
    pub len: u32,
    pub _pad: u32,
    /// The first bytes of the frame, zero-padded.
    pub headers: [u8; HEADERS_LEN],
    /// How many bytes of `headers` were copied from the packet.
    pub captured: u32,
    pub _pad2: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the drop.
    pub ktime_ns: u64,
}
const _: () = assert!(size_of::<DropEvent>() == 96);
// The kernel reserves ring buffer records at 8-byte boundaries.
const _: () = assert!(align_of::<DropEvent>() <= 8);

crate::user_pod!(DropEvent);

impl DropEvent {
    /// An event with every field zero.
    pub const ZERO: DropEvent = DropEvent {
        reason: 0,
        ifindex: 0,
        len: 0,
        _pad: 0,
        headers: [0; HEADERS_LEN],
        captured: 0,
        _pad2: 0,
        ktime_ns: 0,
    };

    /// The captured bytes of the frame.
    pub fn frame(&self) -> &[u8] {
        let n = (self.captured as usize).min(HEADERS_LEN);
        &self.headers[..n]
    }
}
