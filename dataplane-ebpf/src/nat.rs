//! Address and port rewriting with incremental checksum updates, and the
//! masquerade source-port allocation.
//!
//! Packet pointers are never held across the helpers used here: every store
//! and checksum helper may move packet data (see `parse`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use dataplane_common::{
    ct::{CtKey, FLAG_REPLY, FLAG_SNAT, REWRITE_DST, REWRITE_SRC},
    drop::DropReason,
    nat::NatConfig,
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack,
    parse::{Ipv4Packet, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF},
};

/// Masquerade settings, set by the agent at load time.
#[unsafe(no_mangle)]
static NAT_CONFIG: aya_ebpf::Global<NatConfig> = aya_ebpf::Global::new(NatConfig::DEFAULT);

/// Where the L4 checksum and the translated "port" live for this protocol.
#[inline(always)]
fn l4_offsets(pkt: &Ipv4Packet, rewrite: u8) -> Option<(usize, usize, u64)> {
    let off = pkt.l4_off;
    match pkt.proto {
        // (checksum offset, port offset, extra checksum flags)
        IPPROTO_TCP => Some((
            off + 16,
            if rewrite == REWRITE_SRC { off } else { off + 2 },
            0,
        )),
        IPPROTO_UDP => Some((
            off + 6,
            if rewrite == REWRITE_SRC { off } else { off + 2 },
            u64::from(BPF_F_MARK_MANGLED_0),
        )),
        // The echo identifier, whichever side is rewritten.
        IPPROTO_ICMP => Some((off + 2, off + 4, 0)),
        _ => None,
    }
}

/// Rewrites the source or destination address and port of `pkt` to
/// `addr`/`port`, fixing the IP and L4 checksums.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    rewrite: u8,
    addr: [u8; 4],
    port: [u8; 2],
) -> Result<(), DropReason> {
    let (old_addr, old_port, addr_off) = if rewrite == REWRITE_SRC {
        (pkt.src, pkt.sport, IP_SRC_OFF)
    } else {
        (pkt.dst, pkt.dport, IP_DST_OFF)
    };
    let err = |_| DropReason::Rewrite;
    if let Some((csum_off, port_off, extra)) = l4_offsets(pkt, rewrite) {
        // ICMP has no pseudo-header: only the identifier is in its checksum.
        if pkt.proto != IPPROTO_ICMP && old_addr != addr {
            ctx.l4_csum_replace(
                csum_off,
                u64::from(u32::from_ne_bytes(old_addr)),
                u64::from(u32::from_ne_bytes(addr)),
                u64::from(BPF_F_PSEUDO_HDR) | extra | 4,
            )
            .map_err(err)?;
        }
        if old_port != port {
            ctx.l4_csum_replace(
                csum_off,
                u64::from(u16::from_ne_bytes(old_port)),
                u64::from(u16::from_ne_bytes(port)),
                extra | 2,
            )
            .map_err(err)?;
            ctx.store(port_off, &port, 0).map_err(err)?;
        }
    }
    if old_addr != addr {
        ctx.l3_csum_replace(
            IP_CSUM_OFF,
            u64::from(u32::from_ne_bytes(old_addr)),
            u64::from(u32::from_ne_bytes(addr)),
            4,
        )
        .map_err(err)?;
        ctx.store(addr_off, &addr, 0).map_err(err)?;
    }
    Ok(())
}

/// Creates the entry pair of a new masqueraded flow leaving from `pkt.src`
/// with source `uplink_addr`, and returns the chosen source port. The
/// original port is kept when that tuple is free; otherwise random ports of
/// the configured range are probed, a bounded number of times. Claiming a
/// port is one BPF_NOEXIST insert of the reply entry, so two CPUs can never
/// hand out the same tuple.
#[inline(always)]
pub fn masquerade(pkt: &Ipv4Packet, uplink_addr: [u8; 4]) -> Result<[u8; 2], DropReason> {
    let cfg = NAT_CONFIG.load();
    let orig_key = conntrack::key_of(pkt);
    let orig = conntrack::entry(REWRITE_SRC, FLAG_SNAT, uplink_addr, [0; 2], pkt);
    let reply = conntrack::entry(REWRITE_DST, FLAG_SNAT | FLAG_REPLY, pkt.src, pkt.sport, pkt);
    let mut candidate = pkt.sport;
    let span = u32::from(cfg.snat_port_max.saturating_sub(cfg.snat_port_min)) + 1;
    let mut i = 0u32;
    while i <= cfg.snat_probes && i <= 64 {
        let reply_key = CtKey {
            saddr: pkt.dst,
            daddr: uplink_addr,
            sport: pkt.dport,
            dport: candidate,
            proto: pkt.proto,
            _pad: [0; 3],
        };
        let mut o = orig;
        o.nat_port = candidate;
        if conntrack::create_pair(&orig_key, &o, &reply_key, &reply, true).is_ok() {
            return Ok(candidate);
        }
        // SAFETY: a helper without arguments or side effects.
        let r = unsafe { bpf_get_prandom_u32() };
        candidate = ((cfg.snat_port_min as u32 + r % span) as u16).to_be_bytes();
        i += 1;
    }
    Err(DropReason::SnatExhausted)
}
