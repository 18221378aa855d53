//! TCP as conntrack needs it (after nf_conntrack's `nf_conntrack_proto_tcp`,
//! reduced to what a NAT must not get wrong):
//! - which flag combinations a real stack sends ([`flags_valid`]) and which
//!   may start a flow ([`may_start`]): SYN+FIN, SYN+RST, NULL and Xmas
//!   segments are dropped, never tracked or translated;
//! - the checksum of a SYN that would create a translated flow
//!   ([`syn_checksum_ok`]): a corrupt SYN creates nothing;
//! - per direction, the sequence space sent and the largest window
//!   advertised ([`advance`]), so that a RST is accepted only within the
//!   receiver's window of the sender's position ([`rst_in_window`]): a
//!   blind RST with a guessed sequence number does not close a flow.
//!
//! Sequence numbers compare modulo 2^32 (RFC 1982), as the stacks do.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_skb_load_bytes},
    programs::TcContext,
    EbpfContext,
};
use dataplane_common::ct::{CtEntryOf, SEEN_SEQ};

use crate::{
    family::Family,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG},
};

/// ECE and CWR (ECN), which any segment may carry.
const TCP_ECN: u8 = 0x40 | 0x80;

/// Whether a real TCP stack sends this combination (nf_conntrack's
/// `tcp_valid_flags`; PSH and the ECN bits are free).
#[inline(always)]
pub fn flags_valid(flags: u8) -> bool {
    let f = flags & !(TCP_ECN | TCP_PSH) & !TCP_URG;
    f == TCP_SYN
        || f == TCP_SYN | TCP_ACK
        || f == TCP_RST
        || f == TCP_RST | TCP_ACK
        || f == TCP_FIN | TCP_ACK
        || f == TCP_ACK
}

/// A segment that opens a connection: SYN without ACK.
#[inline(always)]
pub fn opens(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// Whether a segment may create a conntrack entry: a SYN, or a bare ACK
/// (picking up a flow whose entries were lost, nf_conntrack's
/// `tcp_loose`). A SYN-ACK, FIN or RST of an unknown flow starts nothing.
#[inline(always)]
pub fn may_start(flags: u8) -> bool {
    flags_valid(flags) && (opens(flags) || flags & (TCP_SYN | TCP_RST | TCP_FIN) == 0)
}

/// The TCP header as loaded for a checksum: at most 60 bytes.
const MAX_HDR: u32 = 60;

/// Folds a 32-bit one's complement sum to 16 bits.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Whether a segment without payload (a SYN) has a valid checksum. A
/// segment still waiting for checksum offload (CHECKSUM_PARTIAL, sent by
/// a local stack with offload on) holds just the pseudo-header's sum in
/// its checksum field, which counts as valid: the device would complete
/// it. Segments with payload are not checked (true).
#[inline(always)]
pub fn syn_checksum_ok<A: Family>(ctx: &TcContext, pkt: &Packet<A>) -> bool {
    if pkt.later_fragment || pkt.tcp_payload_len() != 0 {
        return true;
    }
    let n = u32::from(pkt.tcp_hlen) & 0x3c;
    if n < 20 {
        return false;
    }
    let mut hdr = [0u8; MAX_HDR as usize];
    // SAFETY: `hdr` has room for `n` <= 60 bytes.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            pkt.l4_off as u32,
            hdr.as_mut_ptr().cast(),
            n,
        )
    };
    if rc != 0 {
        return false;
    }
    // The pseudo-header's 16-bit words, in an order of our own (the sum does
    // not depend on it): source, destination, then zero and the protocol,
    // and the length. IPv4's and IPv6's differ only in the address size.
    let len = (n as u16).to_be_bytes();
    let (src, dst) = (pkt.src.words(), pkt.dst.words());
    let mut pseudo = [0u32; 9];
    let mut i = 0;
    while i < A::WORDS {
        pseudo[i] = src[i];
        pseudo[A::WORDS + i] = dst[i];
        i += 1;
    }
    pseudo[2 * A::WORDS] = u32::from_ne_bytes([0, pkt.proto, len[0], len[1]]);
    let pseudo_len = (2 * A::WORDS as u32 + 1) * 4;
    // SAFETY: both buffers are initialised stack memory of the sizes given.
    let (p, h) = unsafe {
        let p = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            pseudo.as_mut_ptr().cast(),
            pseudo_len,
            0,
        );
        let h = bpf_csum_diff(core::ptr::null_mut(), 0, hdr.as_mut_ptr().cast(), n, 0);
        (p, h)
    };
    if p < 0 || h < 0 {
        return false;
    }
    if fold(p as u64 + h as u64) == 0xffff {
        return true;
    }
    // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
    u16::from_ne_bytes([hdr[16], hdr[17]]) == fold(p as u64)
}

/// The window scale a SYN announces (RFC 7323 option 3), 0 without one.
#[inline(always)]
fn syn_wscale<A>(ctx: &TcContext, pkt: &Packet<A>) -> u8 {
    let n = u32::from(pkt.tcp_hlen) & 0x3c;
    if n <= 20 {
        return 0;
    }
    let mut opts = [0u8; 40];
    let len = n - 20;
    // SAFETY: `opts` has room for `len` <= 40 bytes.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            pkt.l4_off as u32 + 20,
            opts.as_mut_ptr().cast(),
            len,
        )
    };
    if rc != 0 {
        return 0;
    }
    let mut i = 0usize;
    // At most 40 option bytes, each step consuming at least one.
    while i < 39 {
        let kind = opts[i];
        match kind {
            0 => return 0,
            1 => i += 1,
            _ => {
                let l = usize::from(opts[i + 1]);
                if kind == 3 && l == 3 && i + 2 < 40 {
                    // Read from the packet, not from `opts`: the compiler
                    // turns the bound into `i != 38`, from which the
                    // verifier cannot bound a variable stack offset.
                    let w: u8 = ctx.load(pkt.l4_off + 20 + i + 2).unwrap_or(0);
                    // RFC 7323: values above 14 are taken as 14.
                    return w.min(14);
                }
                if l < 2 {
                    return 0;
                }
                i += l;
            }
        }
    }
    0
}

/// Notes what this direction's sender has sent: the end of its sequence
/// space, the window it advertises (unscaled in SYNs, scaled after), and
/// on a SYN its window scale.
#[inline(always)]
pub fn advance<A>(ctx: &TcContext, e: &mut CtEntryOf<A>, pkt: &Packet<A>) {
    let flags = pkt.tcp_flags;
    let syn = flags & TCP_SYN != 0;
    let fin = flags & TCP_FIN != 0;
    if syn {
        e.tcp_wscale = syn_wscale(ctx, pkt);
    }
    let end = pkt
        .tcp_seq
        .wrapping_add(pkt.tcp_payload_len())
        .wrapping_add(u32::from(syn))
        .wrapping_add(u32::from(fin));
    if e.tcp_seen & SEEN_SEQ == 0 || after(end, e.tcp_seq_end) {
        e.tcp_seq_end = end;
        e.tcp_seen |= SEEN_SEQ;
    }
    let shift = if syn {
        0
    } else {
        u32::from(e.tcp_wscale.min(14))
    };
    let win = u32::from(pkt.tcp_win) << shift;
    if win > e.tcp_max_win {
        e.tcp_max_win = win;
    }
}

/// `a` comes after `b` in sequence space.
#[inline(always)]
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Whether a RST from the sender of `from` lies within the window the
/// other side (`to`) advertised, around the sender's position (RFC 5961's
/// acceptable range, as nf_conntrack checks it). Without both positions
/// known (a flow picked up mid-stream, a RST answering a SYN) it is
/// accepted, as nf_conntrack does.
#[inline(always)]
pub fn rst_in_window<A>(from: &CtEntryOf<A>, to: Option<&CtEntryOf<A>>, pkt: &Packet<A>) -> bool {
    let Some(to) = to else {
        return true;
    };
    if from.tcp_seen & SEEN_SEQ == 0 || to.tcp_max_win == 0 {
        return true;
    }
    // The receiver may not have acknowledged all the sender sent: a RST
    // answering one of its segments carries its (older) ACK number.
    let win = to.tcp_max_win.max(1);
    let d = pkt.tcp_seq.wrapping_sub(from.tcp_seq_end) as i32;
    let d = i64::from(d);
    d >= -i64::from(win) && d <= i64::from(win)
}
