//! Conntrack: finding a flow's entry, creating the entry pair of a new
//! translated flow, and keeping state, last-seen time and counters current.
//! Expiry is the agent's job (it walks the maps); the LRU maps evict the
//! least recently used entries when full.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
};
use dataplane_common::{
    ct::{CtEntry, CtKey, CtState, FLAG_HAIRPIN_SELF},
    drop::DropReason,
    net::IPPROTO_TCP,
};

use crate::{
    maps::{DP_CT_OTHER, DP_CT_TCP},
    parse::{Ipv4Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// The tuple of a parsed packet in a conntrack zone.
#[inline(always)]
pub fn key_of(pkt: &Ipv4Packet, zone: u8) -> CtKey {
    CtKey {
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
pub fn lookup(key: &CtKey) -> Option<*mut CtEntry> {
    if key.proto == IPPROTO_TCP {
        DP_CT_TCP.get_ptr_mut(key)
    } else {
        DP_CT_OTHER.get_ptr_mut(key)
    }
}

#[inline(always)]
fn insert(key: &CtKey, entry: &CtEntry, flags: u64) -> Result<(), i32> {
    if key.proto == IPPROTO_TCP {
        DP_CT_TCP.insert(key, entry, flags)
    } else {
        DP_CT_OTHER.insert(key, entry, flags)
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

/// A new entry (no rewrite yet: add it with `with_src`/`with_dst`).
#[inline(always)]
pub fn entry(flags: u8, pkt: &Ipv4Packet) -> CtEntry {
    let t = now();
    CtEntry {
        new_saddr: [0; 4],
        new_daddr: [0; 4],
        new_sport: [0; 2],
        new_dport: [0; 2],
        rewrite: 0,
        state: initial_state(pkt) as u8,
        flags,
        _pad: 0,
        redirect_ifindex: 0,
        redirect_dmac: [0; 6],
        redirect_smac: [0; 6],
        created_ns: t,
        last_seen_ns: t,
        packets: 0,
        bytes: 0,
    }
}

#[inline(always)]
fn initial_state(pkt: &Ipv4Packet) -> CtState {
    if pkt.proto != IPPROTO_TCP {
        CtState::Open
    } else if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CtState::Closing
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
pub fn create(orig_key: &CtKey, orig: &CtEntry, exclusive: bool) -> Result<(), i32> {
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

#[inline(always)]
pub fn remove(key: &CtKey) -> Result<(), i32> {
    if key.proto == IPPROTO_TCP {
        DP_CT_TCP.remove(key)
    } else {
        DP_CT_OTHER.remove(key)
    }
}

/// Updates counters, last-seen time and TCP state of an entry; returns
/// whether the packet closes the flow (FIN/RST), so the caller can move the
/// reverse entry to closing too.
#[inline(always)]
pub fn touch(entry: *mut CtEntry, pkt: &Ipv4Packet, len: u32) -> bool {
    // SAFETY: `entry` comes from a map lookup in this program run. Fields
    // are plain integers; concurrent updates from other CPUs can only lose
    // a counter increment, which the counters document.
    let e = unsafe { &mut *entry };
    e.last_seen_ns = now();
    e.packets += 1;
    e.bytes += u64::from(len);
    if pkt.proto != IPPROTO_TCP {
        return false;
    }
    let flags = pkt.tcp_flags;
    if flags & (TCP_FIN | TCP_RST) != 0 {
        e.state = CtState::Closing as u8;
        return true;
    }
    if e.state == CtState::SynSent as u8 && flags & TCP_ACK != 0 {
        e.state = CtState::Established as u8;
    }
    false
}

/// Marks an entry closing (the other direction saw FIN or RST).
#[inline(always)]
pub fn mark_closing(key: &CtKey) {
    if let Some(e) = lookup(key) {
        // SAFETY: as in `touch`.
        unsafe { (*e).state = CtState::Closing as u8 };
    }
}
