//! IPv6 flows set up and followed with their conntrack entries in a per-CPU
//! scratch map (`DP_SCRATCH6`, Cilium's way with big structures) instead of
//! on the stack: an IPv6 entry is 104 bytes, and the generic path's copies
//! of it (`conntrack::entry`, `create`'s reply, `snat`'s candidate) do not
//! fit a 512-byte frame beside the parser's. The logic is `conntrack` and
//! `nat`'s; only where the entries live differs. The steps a program
//! calls (`tracked`, `tracked_local`, `apply`, `masquerade`, `local`,
//! `redirect`, `own_port`) are BPF
//! subprograms of their own: the verifier adds a program's frame to the
//! frame of the one step it runs, not to all of them.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, BPF_ANY, BPF_F_INGRESS, BPF_NOEXIST,
        TC_ACT_REDIRECT,
    },
    helpers::{bpf_loop, bpf_redirect},
    programs::TcContext,
    EbpfContext,
};
use dataplane_common::{
    ct::{
        CtEntry6, CtKey6, FLAG_DNAT, FLAG_HAIRPIN_SELF, FLAG_LOCAL, FLAG_REPLY, FLAG_SNAT,
        REWRITE_DST, REWRITE_SRC,
    },
    drop::DropReason,
    nat::PortTarget6,
    net::IPPROTO_TCP,
};

use crate::{
    conntrack,
    counters::bump,
    family::Family,
    hostsock,
    maps::{Scratch6, DP_PORT_STATS, DP_SCRATCH6},
    nat::{self, NAT_CONFIG},
    parse::{ip_len, Ipv6Packet},
    tcp,
};

#[inline(always)]
pub fn scratch() -> Result<&'static mut Scratch6, DropReason> {
    // SAFETY: a per-CPU value, used by this program run alone (tc programs
    // do not nest on a CPU).
    DP_SCRATCH6
        .get_ptr_mut(0)
        .map(|p| unsafe { &mut *p })
        .ok_or(DropReason::CtInsert)
}

/// `conntrack::entry` into `out`: a new flow's entry without a rewrite.
#[inline(always)]
fn fill_entry(
    ctx: &TcContext,
    flags: u8,
    pkt: &Ipv6Packet,
    out: &mut CtEntry6,
) -> Result<(), DropReason> {
    let tcp = pkt.proto == IPPROTO_TCP && !pkt.later_fragment;
    if tcp && !tcp::may_start(pkt.tcp_flags) {
        return Err(DropReason::TcpInvalidFlags);
    }
    // SAFETY: `out` is one whole, writable entry; all-zero is a valid one.
    unsafe { core::ptr::write_bytes(out as *mut CtEntry6, 0, 1) };
    let t = conntrack::now();
    out.state = conntrack::initial_state(pkt) as u8;
    out.flags = flags;
    out.created_ns = t;
    out.last_seen_ns = t;
    if tcp {
        tcp::advance(ctx, out, pkt);
    }
    Ok(())
}

/// `CtEntry::reply` into `out`.
#[inline(always)]
fn fill_reply(orig: &CtEntry6, key: &CtKey6, out: &mut CtEntry6) {
    // SAFETY: as in `fill_entry`.
    unsafe { core::ptr::write_bytes(out as *mut CtEntry6, 0, 1) };
    out.state = orig.state;
    out.flags = orig.flags | FLAG_REPLY;
    out.redirect_ifindex = orig.redirect_ifindex;
    out.redirect_dmac = orig.redirect_dmac;
    out.redirect_smac = orig.redirect_smac;
    out.created_ns = orig.created_ns;
    out.last_seen_ns = orig.last_seen_ns;
    if orig.rewrite & REWRITE_DST != 0 {
        out.rewrite |= REWRITE_SRC;
        out.new_saddr = key.daddr;
        out.new_sport = key.dport;
    }
    if orig.rewrite & REWRITE_SRC != 0 {
        out.rewrite |= REWRITE_DST;
        out.new_daddr = key.saddr;
        out.new_dport = key.sport;
    }
}

/// `conntrack::create` for the entry in `s.orig` (its reply built in
/// `s.reply`).
#[inline(always)]
fn create(key: &CtKey6, s: &mut Scratch6, exclusive: bool) -> Result<(), DropReason> {
    let reply_key = s.orig.peer_key(key);
    fill_reply(&s.orig, key, &mut s.reply);
    let flags = if exclusive { BPF_NOEXIST } else { BPF_ANY };
    conntrack::insert(&reply_key, &s.reply, u64::from(flags)).map_err(|_| DropReason::CtInsert)?;
    let redirect = s.orig.redirect_ifindex;
    if s.orig.flags & FLAG_HAIRPIN_SELF == 0 {
        s.orig.redirect_ifindex = 0;
    }
    let inserted = conntrack::insert(key, &s.orig, u64::from(BPF_ANY));
    s.orig.redirect_ifindex = redirect;
    if inserted.is_err() {
        let _ = conntrack::remove(&reply_key);
        return Err(DropReason::CtInsert);
    }
    Ok(())
}

/// A packet of a tracked flow of `zone`: counted and its TCP state
/// followed; its entry is left in the scratch for [`apply`]. False when it
/// starts no known flow.
#[inline(never)]
pub fn tracked(ctx: &TcContext, pkt: &Ipv6Packet, zone: u8) -> Result<bool, DropReason> {
    tracked_if(ctx, pkt, zone, false)
}

/// [`tracked`] for the original direction of a host-local flow
/// (`dp_local_out6`) only: a packet of any other flow is left alone,
/// neither counted nor its TCP state followed.
#[inline(never)]
pub fn tracked_local(ctx: &TcContext, pkt: &Ipv6Packet, zone: u8) -> Result<bool, DropReason> {
    tracked_if(ctx, pkt, zone, true)
}

#[inline(always)]
fn tracked_if(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    zone: u8,
    local_only: bool,
) -> Result<bool, DropReason> {
    let key = conntrack::key_of(pkt, zone);
    let Some(entry) = conntrack::lookup_flow(&key, pkt) else {
        return Ok(false);
    };
    if local_only {
        // SAFETY: a map value pointer from this run; one field read.
        let flags = unsafe { (*entry).flags };
        if flags & FLAG_LOCAL == 0 || flags & FLAG_REPLY != 0 {
            return Ok(false);
        }
    }
    conntrack::track_in_place(ctx, entry, &key, pkt)?;
    let s = scratch()?;
    // SAFETY: a map value from the lookup above, copied map to map.
    unsafe { core::ptr::copy_nonoverlapping(entry, &raw mut s.orig, 1) };
    Ok(true)
}

/// Applies the rewrite of the entry [`tracked`], [`dnat`] or
/// [`masquerade`] left in the scratch.
#[inline(never)]
pub fn apply(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<(), DropReason> {
    let s = scratch()?;
    nat::apply(ctx, pkt, &s.orig)
}

/// A new flow to a published port: DNAT to `target`, client address kept
/// (its entry left in the scratch for [`apply`]).
#[inline(always)]
pub fn dnat(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    zone: u8,
    target: &PortTarget6,
) -> Result<(), DropReason> {
    let s = scratch()?;
    fill_entry(ctx, FLAG_DNAT, pkt, &mut s.orig)?;
    s.orig.rewrite |= REWRITE_DST;
    s.orig.new_daddr = target.addr;
    s.orig.new_dport = target.port;
    let key = conntrack::key_of(pkt, zone);
    create(&key, s, false)?;
    bump(&DP_PORT_STATS, target.stats_index, ip_len(ctx));
    Ok(())
}

/// A new flow tracked untranslated (routed networks), so its replies are
/// known.
#[inline(always)]
pub fn pass(ctx: &TcContext, pkt: &Ipv6Packet, zone: u8) -> Result<(), DropReason> {
    let s = scratch()?;
    fill_entry(ctx, 0, pkt, &mut s.orig)?;
    let key = conntrack::key_of(pkt, zone);
    // As `conntrack::pass`: never over another flow's entry, best effort.
    let _ = create(&key, s, true);
    Ok(())
}

/// A new flow's masquerade to `addr` (`nat::snat`'s port choice: the
/// client's port when its tuple is free, else random ones of the range,
/// never one a host socket would receive replies on); its entry is left in
/// the scratch for [`apply`]. The probes run as `bpf_loop` steps: unrolled,
/// the verifier walked them once per state and passed its million
/// instructions.
#[inline(never)]
pub fn masquerade(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    zone: u8,
    addr: &[u8; 16],
) -> Result<(), DropReason> {
    let s = scratch()?;
    fill_entry(ctx, FLAG_SNAT, pkt, &mut s.orig)?;
    source_port(ctx, pkt, zone, addr, true)
}

/// A new host-local flow translated per packet (`dp_local_out6`): DNAT
/// to `target`, and `gateway` (the container's network's) as its source
/// with the client's port when that tuple is free, another port otherwise
/// (never one a host socket would receive the container's replies on: the
/// client's own direct connection, say). The replies go into `lo`'s
/// ingress ([`FLAG_LOCAL`], the device this packet leaves by, whose
/// Ethernet addresses are zero as the entry's are). The entry is left in
/// the scratch for [`apply`].
#[inline(never)]
pub fn local(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    zone: u8,
    target: &PortTarget6,
    gateway: &[u8; 16],
) -> Result<(), DropReason> {
    let s = scratch()?;
    fill_entry(ctx, FLAG_DNAT | FLAG_LOCAL, pkt, &mut s.orig)?;
    s.orig.rewrite |= REWRITE_DST;
    s.orig.new_daddr = target.addr;
    s.orig.new_dport = target.port;
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    s.orig.redirect_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    source_port(ctx, pkt, zone, gateway, true)
}

/// A container reaching a port published on a host address (hairpin):
/// DNAT to `target`, keeping the container's address; the flow's replies
/// go straight back into its veth `ifindex` with the frame's Ethernet
/// addresses swapped (the server's own program sends them). A container
/// reaching its own port (`own`) also gets `gateway` as its source (it
/// would drop a packet from itself), and both directions go straight back
/// into it: then the caller completes the flow with [`own_port`] (a step of
/// its own: its port probes and this set-up do not fit one frame). The
/// entry is left in the scratch for [`apply`] and [`redirect`].
#[inline(always)]
pub fn hairpin(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    zone: u8,
    target: &PortTarget6,
    ifindex: u32,
    own: bool,
) -> Result<(), DropReason> {
    let s = scratch()?;
    fill_entry(ctx, FLAG_DNAT, pkt, &mut s.orig)?;
    s.orig.rewrite |= REWRITE_DST;
    s.orig.new_daddr = target.addr;
    s.orig.new_dport = target.port;
    let macs: [u8; 12] = ctx.load(0).map_err(|_| DropReason::Truncated)?;
    s.orig.redirect_ifindex = ifindex;
    s.orig.redirect_dmac.copy_from_slice(&macs[6..]);
    s.orig.redirect_smac.copy_from_slice(&macs[..6]);
    if own {
        s.orig.flags |= FLAG_HAIRPIN_SELF;
        return Ok(());
    }
    create(&conntrack::key_of(pkt, zone), s, false)?;
    bump(&DP_PORT_STATS, target.stats_index, ip_len(ctx));
    Ok(())
}

/// Completes [`hairpin`]'s flow of a container to its own port: the
/// gateway as its source, on a free port. No host socket can receive a
/// flow between the bridge's gateway and a container (the IPv4 hairpin
/// skips the lookup too).
#[inline(never)]
pub fn own_port(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    zone: u8,
    gateway: &[u8; 16],
    stats_index: u32,
) -> Result<(), DropReason> {
    source_port(ctx, pkt, zone, gateway, false)?;
    bump(&DP_PORT_STATS, stats_index, ip_len(ctx));
    Ok(())
}

/// Sends the packet out of the scratch entry's redirect (into a
/// container's veth, with the Ethernet addresses it recorded): a hairpin
/// flow's replies, and both directions of a container's flow to its own
/// port; a host-local flow's replies ([`FLAG_LOCAL`]) into `lo`'s ingress
/// (its recorded addresses are `lo`'s, zero), where the host stack
/// delivers them to the client's socket. `Ok(None)`: the stack's to
/// deliver.
#[inline(never)]
pub fn redirect(ctx: &TcContext, new_flow: bool) -> Result<Option<i32>, DropReason> {
    let s = scratch()?;
    let e = &s.orig;
    if e.redirect_ifindex == 0 || (new_flow && e.flags & FLAG_HAIRPIN_SELF == 0) {
        return Ok(None);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&e.redirect_dmac);
    macs[6..].copy_from_slice(&e.redirect_smac);
    ctx.store(0, &macs, 0).map_err(|_| DropReason::Rewrite)?;
    let flags = if e.flags & FLAG_LOCAL != 0 {
        u64::from(BPF_F_INGRESS)
    } else {
        0
    };
    // SAFETY: a helper taking plain integers.
    let rc = unsafe { bpf_redirect(e.redirect_ifindex, flags) };
    if rc != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::Rewrite);
    }
    Ok(Some(TC_ACT_REDIRECT))
}

/// Picks the new flow's source port on `addr` for the entry in the
/// scratch (which already says how the flow is translated otherwise) and
/// creates its entries: the client's port when its tuple is free, else
/// random ones of the range, never (with `host_sockets`) one a host socket
/// would receive replies on.
#[inline(always)]
fn source_port(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    zone: u8,
    addr: &[u8; 16],
    host_sockets: bool,
) -> Result<(), DropReason> {
    let cfg = NAT_CONFIG.load();
    let s = scratch()?;
    // The replies come from the destination as the entry rewrites it (a
    // host-local flow's container).
    let (peer_addr, peer_port) = if s.orig.rewrite & REWRITE_DST != 0 {
        (s.orig.new_daddr, s.orig.new_dport)
    } else {
        (pkt.dst, pkt.dport)
    };
    let mut probe = Probe {
        skb: ctx.skb.skb,
        key: conntrack::key_of(pkt, zone),
        peer_addr,
        peer_port,
        addr: *addr,
        candidate: pkt.sport,
        min: u32::from(cfg.snat_port_min),
        span: u32::from(cfg.snat_port_max.saturating_sub(cfg.snat_port_min)) + 1,
        host_sockets: u32::from(host_sockets),
        found: 0,
    };
    let steps = cfg.snat_probes.min(64) + 1;
    // SAFETY: `probe_step` is a BPF function taking this context, which
    // lives on this frame for the whole call.
    unsafe { bpf_loop(steps, probe_step as *mut c_void, (&raw mut probe).cast(), 0) };
    if probe.found == 0 {
        return Err(DropReason::SnatExhausted);
    }
    Ok(())
}

/// What the probe steps work on, on the caller's frame.
#[repr(C)]
struct Probe {
    skb: *mut __sk_buff,
    key: CtKey6,
    /// Where the replies come from (address and port).
    peer_addr: [u8; 16],
    peer_port: [u8; 2],
    addr: [u8; 16],
    candidate: [u8; 2],
    min: u32,
    span: u32,
    host_sockets: u32,
    found: u32,
}

/// One candidate port: taken when no host socket would receive its
/// replies and its reply tuple is free (claimed by the insert); 1 ends the
/// loop.
#[inline(never)]
extern "C" fn probe_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `masquerade` passes its `Probe`.
    let p = unsafe { &mut *ctx.cast::<Probe>() };
    let claimed = (p.host_sockets == 0 || !host_socket(p)) && claim(&p.key, &p.addr, p.candidate);
    // Every path leaves the same fields written, so the verifier's states
    // at the next step compare equal and the steps are checked once, not
    // once per path through the previous ones.
    p.candidate = nat::random_port(p.min, p.span);
    p.found = u32::from(claimed);
    i64::from(claimed)
}

/// Whether a socket of the host would receive a reply from the probe's
/// peer to its candidate (`Family::host_socket`'s lookup, from the
/// translated peer).
#[inline(always)]
fn host_socket(p: &Probe) -> bool {
    let tc = TcContext::new(p.skb);
    let mut tuple = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
        saddr: p.peer_addr.words(),
        daddr: p.addr.words(),
        sport: u16::from_ne_bytes(p.peer_port),
        dport: u16::from_ne_bytes(p.candidate),
    };
    hostsock::lookup_socket6(tc.as_ptr(), p.key.proto, &raw mut tuple)
}

/// Tries `port` as the new flow's source port (the entry in the scratch).
#[inline(always)]
fn claim(key: &CtKey6, addr: &[u8; 16], port: [u8; 2]) -> bool {
    let Ok(s) = scratch() else {
        return false;
    };
    s.orig.rewrite |= REWRITE_SRC;
    s.orig.new_saddr = *addr;
    s.orig.new_sport = port;
    create(key, s, true).is_ok()
}
