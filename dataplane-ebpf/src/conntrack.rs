//! Conntrack: finding a flow's entry, creating the entry pair of a new
//! translated flow, and keeping state, last-seen time and counters current.
//! Expiry is the agent's job (it walks the maps); the LRU maps evict the
//! least recently used entries when full.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use dataplane_common::{
    ct::{CtEntryOf, CtKeyOf, CtState, FLAG_HAIRPIN_SELF, FLAG_REPLY, SEEN_FIN},
    drop::DropReason,
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    family::Family,
    parse::{ip_len, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    tcp,
};

/// The tuple of a parsed packet in a conntrack zone.
#[inline(always)]
pub fn key_of<A: Family>(pkt: &Packet<A>, zone: u8) -> CtKeyOf<A> {
    CtKeyOf {
        saddr: pkt.src,
        daddr: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        zone,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn lookup<A: Family>(key: &CtKeyOf<A>) -> Option<*mut CtEntryOf<A>> {
    A::ct_lookup(key)
}

/// The entry of `pkt`'s flow under `key`, if it is live. A SYN that
/// opens a connection on the tuple of a closing flow starts a new flow
/// (nf_conntrack's reopen): both old entries go, and the caller treats
/// the packet as the first of a new flow, so it is filtered and translated
/// by today's rules and never inherits the old flow's CLOSING state.
#[inline(always)]
pub fn lookup_flow<A: Family>(key: &CtKeyOf<A>, pkt: &Packet<A>) -> Option<*mut CtEntryOf<A>> {
    if !trackable(pkt) {
        return None;
    }
    let entry = lookup(key)?;
    if key.proto != IPPROTO_TCP || pkt.later_fragment || !tcp::opens(pkt.tcp_flags) {
        return Some(entry);
    }
    // SAFETY: from the lookup above; read before the entries go.
    let e = unsafe { &*entry };
    if e.state != CtState::Closing as u8 || e.flags & FLAG_REPLY != 0 {
        return Some(entry);
    }
    let _ = remove(&e.peer_key(key));
    let _ = remove(key);
    None
}

#[inline(always)]
pub fn insert<A: Family>(key: &CtKeyOf<A>, entry: &CtEntryOf<A>, flags: u64) -> Result<(), i32> {
    A::ct_insert(key, entry, flags)
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

/// A new entry (no rewrite yet: add it with `with_src`/`with_dst`) for
/// the flow `pkt` starts. A TCP segment must be one that may start a flow
/// (a SYN, or a bare ACK picking a flow up); its sequence position and
/// window scale are the entry's first.
#[inline(always)]
pub fn entry<A: Family>(
    ctx: &TcContext,
    flags: u8,
    pkt: &Packet<A>,
) -> Result<CtEntryOf<A>, DropReason> {
    let mut e = blank(flags, pkt);
    if pkt.proto == IPPROTO_TCP && !pkt.later_fragment {
        if !tcp::may_start(pkt.tcp_flags) {
            return Err(DropReason::TcpInvalidFlags);
        }
        tcp::advance(ctx, &mut e, pkt);
    }
    Ok(e)
}

#[inline(always)]
fn blank<A: Family>(flags: u8, pkt: &Packet<A>) -> CtEntryOf<A> {
    let t = now();
    CtEntryOf {
        new_saddr: A::default(),
        new_daddr: A::default(),
        new_sport: [0; 2],
        new_dport: [0; 2],
        rewrite: 0,
        state: initial_state(pkt) as u8,
        flags,
        tcp_seen: 0,
        redirect_ifindex: 0,
        redirect_dmac: [0; 6],
        redirect_smac: [0; 6],
        created_ns: t,
        last_seen_ns: t,
        packets: 0,
        bytes: 0,
        tcp_seq_end: 0,
        tcp_max_win: 0,
        tcp_wscale: 0,
        _pad: [0; 7],
    }
}

#[inline(always)]
pub fn initial_state<A>(pkt: &Packet<A>) -> CtState {
    if pkt.proto != IPPROTO_TCP {
        CtState::Open
    } else if pkt.tcp_flags & TCP_SYN != 0 {
        CtState::SynSent
    } else {
        // Mid-stream pickup (e.g. entries lost to LRU eviction).
        CtState::Established
    }
}

/// Creates both entries of a new flow whose original packets match
/// `orig_key` and get `orig`'s rewrite. The reply entry goes in first;
/// with `exclusive` it must not exist yet (the caller is claiming that
/// tuple, e.g. a source port), so two CPUs can never take the same one.
#[inline(always)]
pub fn create<A: Family>(
    orig_key: &CtKeyOf<A>,
    orig: &CtEntryOf<A>,
    exclusive: bool,
) -> Result<(), i32> {
    let reply_key = orig.peer_key(orig_key);
    let reply = orig.reply(orig_key);
    let flags = if exclusive { BPF_NOEXIST } else { BPF_ANY };
    insert(&reply_key, &reply, u64::from(flags))?;
    // `orig`'s redirect is where replies go; the original direction takes
    // it too only when it goes back into the same container.
    let mut o = *orig;
    if o.flags & FLAG_HAIRPIN_SELF == 0 {
        o.redirect_ifindex = 0;
    }
    if insert(orig_key, &o, u64::from(BPF_ANY)).is_err() {
        let _ = remove(&reply_key);
        return Err(DropReason::CtInsert as i32);
    }
    Ok(())
}

/// Tracks a flow untranslated (so its replies are known), when no other
/// flow holds its reply tuple: a translated flow's entry under that tuple
/// must not be overwritten (its packets would then leave untranslated,
/// with a container's address). Best effort: a flow left untracked is
/// simply not recognised by its replies.
#[inline(always)]
pub fn pass<A: Family>(key: &CtKeyOf<A>, entry: &CtEntryOf<A>) {
    let _ = create(key, entry, true);
}

/// Whether `pkt` can belong to a tracked flow: ICMP other than echo has no
/// identifier, and its zero "ports" would match an echo flow with
/// identifier 0 (whose rewrite would then write over the message's own
/// bytes). A later fragment's type is unknown: its first fragment's flow
/// decides.
#[inline(always)]
fn trackable<A: Family>(pkt: &Packet<A>) -> bool {
    pkt.proto != A::ICMP
        || pkt.later_fragment
        || pkt.icmp_type == A::ECHO_REQUEST
        || pkt.icmp_type == A::ECHO_REPLY
}

#[inline(always)]
pub fn remove<A: Family>(key: &CtKeyOf<A>) -> Result<(), i32> {
    A::ct_remove(key)
}

/// Counts a packet of a tracked flow in its entry (found under `key`)
/// and follows the TCP state of both directions: FIN from one side makes
/// the flow half-closed (FIN_WAIT, still the established timeout), from
/// both sides closing; a RST closes it only when it lies within the
/// window (a blind RST is dropped); flag combinations no stack sends are
/// dropped. Returns the entry as updated.
#[inline(always)]
pub fn track<A: Family>(
    ctx: &TcContext,
    entry: *mut CtEntryOf<A>,
    key: &CtKeyOf<A>,
    pkt: &Packet<A>,
) -> Result<CtEntryOf<A>, DropReason> {
    track_in_place(ctx, entry, key, pkt)?;
    // SAFETY: as in `track_in_place`.
    Ok(unsafe { *entry })
}

/// [`track`] without the copy of the entry (IPv6's is 104 bytes; the
/// caller reads the map's value instead).
#[inline(always)]
pub fn track_in_place<A: Family>(
    ctx: &TcContext,
    entry: *mut CtEntryOf<A>,
    key: &CtKeyOf<A>,
    pkt: &Packet<A>,
) -> Result<(), DropReason> {
    // SAFETY: `entry` comes from a map lookup in this program run. Fields
    // are plain integers; concurrent updates from other CPUs can only lose
    // a counter increment, which the counters document.
    let e = unsafe { &mut *entry };
    if pkt.proto == IPPROTO_TCP && !pkt.later_fragment {
        tcp_state(ctx, e, key, pkt)?;
    }
    e.last_seen_ns = now();
    e.packets += 1;
    e.bytes += u64::from(ip_len(ctx));
    Ok(())
}

#[inline(always)]
fn tcp_state<A: Family>(
    ctx: &TcContext,
    e: &mut CtEntryOf<A>,
    key: &CtKeyOf<A>,
    pkt: &Packet<A>,
) -> Result<(), DropReason> {
    let flags = pkt.tcp_flags;
    if !tcp::flags_valid(flags) {
        return Err(DropReason::TcpInvalidFlags);
    }
    let peer = lookup(&e.peer_key(key));
    if flags & TCP_RST != 0 {
        // SAFETY: a map value pointer from this run, read only.
        let to = peer.map(|p| unsafe { &*p });
        if !tcp::rst_in_window(e, to, pkt) {
            return Err(DropReason::TcpOutOfWindow);
        }
        e.state = CtState::Closing as u8;
        set_state(peer, CtState::Closing);
        return Ok(());
    }
    tcp::advance(ctx, e, pkt);
    if flags & TCP_FIN != 0 {
        e.tcp_seen |= SEEN_FIN;
        // SAFETY: as above.
        let both = peer.is_some_and(|p| unsafe { (*p).tcp_seen } & SEEN_FIN != 0);
        let state = if both {
            CtState::Closing
        } else {
            CtState::FinWait
        };
        if e.state != CtState::Closing as u8 {
            e.state = state as u8;
            set_state(peer, state);
        }
        return Ok(());
    }
    if e.state == CtState::SynSent as u8 && flags & TCP_ACK != 0 {
        e.state = CtState::Established as u8;
    }
    Ok(())
}

#[inline(always)]
fn set_state<A>(entry: Option<*mut CtEntryOf<A>>, state: CtState) {
    if let Some(p) = entry {
        // SAFETY: a map value pointer from this run.
        unsafe { (*p).state = state as u8 };
    }
}

/// Whether a new flow of the host's own (not from a managed subnet) would
/// share its tuple with a masqueraded flow: its replies are the replies of
/// a container's flow that masquerade gave the same address and port to
/// the same peer (the host's port allocator sees only sockets). Such a
/// flow gets a port of its own, as the kernel's NAT remaps a clashing
/// flow; the host's other flows stay untracked. Only a flow's first
/// packet asks (a TCP SYN, or a UDP datagram), and never a later fragment
/// (the callers check).
#[inline(always)]
pub fn host_flow_collides<A: Family>(pkt: &Packet<A>, zone: u8) -> bool {
    let opens = match pkt.proto {
        IPPROTO_TCP => tcp::opens(pkt.tcp_flags),
        IPPROTO_UDP => true,
        _ => false,
    };
    opens && lookup(&key_of(pkt, zone).reversed()).is_some()
}
