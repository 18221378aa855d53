//! Address and port rewriting with incremental checksum updates, and source
//! NAT's port allocation (masquerade, hairpin), which stays clear of the
//! host's own sockets.
//!
//! Packet pointers are never held across the helpers used here: every store
//! and checksum helper may move packet data (see `parse`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use dataplane_common::{
    ct::{CtEntryOf, CtKeyOf, REWRITE_DST, REWRITE_SRC},
    drop::DropReason,
    nat::{NatConfig, PortKeyOf, PortTargetOf},
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack,
    family::Family,
    parse::{Packet, IP_CSUM_OFF},
    tcp,
};

/// Masquerade and fast path settings, set by the agent at load time.
#[unsafe(no_mangle)]
pub static NAT_CONFIG: aya_ebpf::Global<NatConfig> = aya_ebpf::Global::new(NatConfig::DEFAULT);

/// Which side of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

/// Where the L4 checksum and the translated "port" live for this protocol:
/// (checksum offset, port offset, extra checksum flags).
#[inline(always)]
fn l4_offsets<A: Family>(pkt: &Packet<A>, side: Side) -> Option<(usize, usize, u64)> {
    let off = pkt.l4_off;
    let port_off = if side == Side::Src { off } else { off + 2 };
    match pkt.proto {
        IPPROTO_TCP => Some((off + 16, port_off, 0)),
        // A zero UDP checksum means "none" and must stay zero.
        IPPROTO_UDP => Some((off + 6, port_off, u64::from(BPF_F_MARK_MANGLED_0))),
        // The echo identifier, whichever side is rewritten.
        p if p == A::ICMP => Some((off + 2, off + 4, 0)),
        _ => None,
    }
}

/// Folds an address change into the L4 checksum at `csum_off`, one 32-bit
/// word at a time (one word for IPv4, four for IPv6).
#[inline(always)]
pub fn l4_csum_addr<A: Family>(
    ctx: &TcContext,
    csum_off: usize,
    old: &A,
    new: &A,
    flags: u64,
) -> Result<(), DropReason> {
    let (o, n) = (old.words(), new.words());
    let mut i = 0;
    while i < A::WORDS {
        if o[i] != n[i] {
            ctx.l4_csum_replace(
                csum_off,
                u64::from(o[i]),
                u64::from(n[i]),
                u64::from(BPF_F_PSEUDO_HDR) | flags | 4,
            )
            .map_err(|_| DropReason::Rewrite)?;
        }
        i += 1;
    }
    Ok(())
}

/// Rewrites one side's address and port, fixing the IP and L4 checksums.
#[inline(always)]
fn rewrite_side<A: Family>(
    ctx: &TcContext,
    pkt: &Packet<A>,
    side: Side,
    addr: A,
    port: [u8; 2],
) -> Result<(), DropReason> {
    let (old_addr, old_port, addr_off) = match side {
        Side::Src => (pkt.src, pkt.sport, A::SRC_OFF),
        Side::Dst => (pkt.dst, pkt.dport, A::DST_OFF),
    };
    let err = |_| DropReason::Rewrite;
    // A later fragment has no L4 header: its first fragment carried the
    // ports and the checksum, rewritten there.
    let l4 = if pkt.later_fragment {
        None
    } else {
        l4_offsets(pkt, side)
    };
    if let Some((csum_off, port_off, extra)) = l4 {
        // ICMP has no pseudo-header (only the identifier is in its
        // checksum); ICMPv6 has one.
        if (pkt.proto != A::ICMP || A::ICMP_PSEUDO) && old_addr != addr {
            l4_csum_addr(ctx, csum_off, &old_addr, &addr, extra)?;
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
        if A::IP_CSUM {
            ctx.l3_csum_replace(
                IP_CSUM_OFF,
                u64::from(old_addr.words()[0]),
                u64::from(addr.words()[0]),
                4,
            )
            .map_err(err)?;
        }
        ctx.store(addr_off, &addr, 0).map_err(err)?;
    }
    Ok(())
}

/// Applies a conntrack entry's rewrite to the packet. `pkt` holds the
/// fields as parsed, before either side changed, which is what each
/// incremental checksum update needs.
#[inline(always)]
pub fn apply<A: Family>(
    ctx: &TcContext,
    pkt: &Packet<A>,
    e: &CtEntryOf<A>,
) -> Result<(), DropReason> {
    if e.rewrite & REWRITE_SRC != 0 {
        rewrite_side(ctx, pkt, Side::Src, e.new_saddr, e.new_sport)?;
    }
    if e.rewrite & REWRITE_DST != 0 {
        rewrite_side(ctx, pkt, Side::Dst, e.new_daddr, e.new_dport)?;
    }
    Ok(())
}

/// Creates the entry pair of a new flow whose source becomes `addr` (plus
/// whatever `orig` already rewrites), and returns the completed original
/// entry. The source port is kept when its tuple is free, as netfilter's
/// masquerade keeps it (whatever its range); otherwise random ports of the
/// configured range are probed, a bounded number of times. Keeping the
/// container's port matters for connection rates: a port moved to another
/// connection's recently closed tuple meets the server's TIME_WAIT socket
/// (docs/architecture.md has the measurement).
///
/// A candidate is taken when a socket of the host would receive the
/// replies (`host_socket`: the host's own connection on that tuple, or a
/// listener or bound UDP socket on the port, which a container could
/// otherwise shadow, CVE-2021-3773), or when conntrack holds its reply
/// tuple. The replies come from the destination as `orig` rewrites it (a
/// host-local flow's container, `local`). Claiming a port is one BPF_NOEXIST insert of the reply entry,
/// so two CPUs never share a tuple.
///
/// `HOST_SOCKETS` false skips the socket lookup: the
/// endpoint program's hairpin (to the bridge gateway) has no stack left
/// for them (a known gap, docs/architecture.md); the uplink's masquerade
/// always checks.
#[inline(always)]
pub fn snat<A: Family, const HOST_SOCKETS: bool>(
    ctx: &TcContext,
    pkt: &Packet<A>,
    zone: u8,
    orig: CtEntryOf<A>,
    addr: A,
) -> Result<CtEntryOf<A>, DropReason> {
    let cfg = NAT_CONFIG.load();
    let key = conntrack::key_of(pkt, zone);
    let min = u32::from(cfg.snat_port_min);
    let span = u32::from(cfg.snat_port_max.saturating_sub(cfg.snat_port_min)) + 1;
    let mut candidate = pkt.sport;
    // The peer after `orig`'s own rewrite (a host-local flow's container).
    let peer = orig.translate(&key);
    let mut i = 0u32;
    while i <= cfg.snat_probes && i <= 64 {
        if !HOST_SOCKETS || !A::host_socket(ctx, pkt.proto, &peer, addr, candidate) {
            let e = orig.with_src(addr, candidate);
            if conntrack::create(&key, &e, true).is_ok() {
                return Ok(e);
            }
        }
        candidate = random_port(min, span);
        i += 1;
    }
    Err(DropReason::SnatExhausted)
}

/// A random port of the range `min`..`min + span` (network byte order).
#[inline(always)]
pub fn random_port(min: u32, span: u32) -> [u8; 2] {
    // SAFETY: a helper without arguments or side effects.
    let r = unsafe { bpf_get_prandom_u32() };
    // `checked_rem`: a callback (nat6) reads `span` from memory, where the
    // compiler cannot see it is never 0, and a panic path fails the load.
    ((min + r.checked_rem(span).unwrap_or(0)) as u16).to_be_bytes()
}

/// Applies the conntrack entry of `pkt`'s flow in `zone`, if there is one,
/// and returns it.
#[inline(always)]
pub fn translate_tracked<A: Family>(
    ctx: &TcContext,
    pkt: &Packet<A>,
    zone: u8,
) -> Result<Option<CtEntryOf<A>>, DropReason> {
    let key = conntrack::key_of(pkt, zone);
    let Some(entry) = conntrack::lookup_flow(&key, pkt) else {
        return Ok(None);
    };
    apply_tracked(ctx, pkt, &key, entry).map(Some)
}

/// Counts the packet in its flow's entry (found under `key`), follows
/// the TCP state (`conntrack::track`, which refuses invalid segments), and
/// applies the rewrite.
#[inline(always)]
pub fn apply_tracked<A: Family>(
    ctx: &TcContext,
    pkt: &Packet<A>,
    key: &CtKeyOf<A>,
    entry: *mut CtEntryOf<A>,
) -> Result<CtEntryOf<A>, DropReason> {
    let e = conntrack::track(ctx, entry, key, pkt)?;
    apply(ctx, pkt, &e)?;
    Ok(e)
}

/// The published port a container's packet opens a hairpin flow to:
/// [`published`], for TCP only with a segment that opens a connection.
/// What a container answers a host-local client (translated at its socket,
/// so never tracked here) goes to the client's address and port, and that
/// port may be a published one too: the answer is no new flow.
#[inline(always)]
pub fn hairpin_target<A: Family>(pkt: &Packet<A>) -> Option<PortTargetOf<A>> {
    if pkt.proto == IPPROTO_TCP && !tcp::opens(pkt.tcp_flags) {
        return None;
    }
    published(pkt)
}

/// The published port `pkt` is addressed to: one bound to its destination,
/// or to every host address when the destination is one of ours.
#[inline(always)]
pub fn published<A: Family>(pkt: &Packet<A>) -> Option<PortTargetOf<A>> {
    if pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP {
        return None;
    }
    let mut key = PortKeyOf {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    if let Some(t) = A::port(&key) {
        return Some(t);
    }
    if !A::is_host_addr(&pkt.dst) {
        return None;
    }
    key.addr = A::default();
    A::port(&key)
}
