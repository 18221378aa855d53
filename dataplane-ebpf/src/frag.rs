//! Fragments: non-first fragments carry no ports, so they cannot be
//! matched to a flow by themselves (Cilium's `ipv4_handle_fragmentation`).
//! The first fragment's ports are kept in `DP_FRAGS` (`DP_FRAGS6`) under the
//! datagram's addresses, identification (IPv4's 16-bit IP id, the IPv6
//! fragment header's 32 bits) and protocol; later fragments take them from
//! there and then follow their flow's translation (addresses only: the L4
//! header, checksum included, is in the first fragment). A later fragment
//! whose first was not seen is the caller's to judge: passed on when it is
//! not the dataplane's business, dropped when it would leak an internal
//! address. Fragments that arrive before their first are not reordered:
//! they are untracked (Cilium does the same).

use dataplane_common::ct::{FragKey, FragKey6, FragPorts};

use crate::{
    family::Family,
    maps::{DP_FRAGS, DP_FRAGS6},
    parse::Packet,
};

/// What [`track`] made of the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment, or a first fragment (its ports are recorded).
    Whole,
    /// A later fragment of a datagram whose first fragment was seen: the
    /// packet now carries the first fragment's ports.
    Tracked,
    /// A later fragment of a datagram whose first fragment was not seen.
    Untracked,
}

/// A family's table of first fragments.
pub trait Fragments: Family {
    /// The ports recorded for `pkt`'s datagram in `zone`.
    fn ports(pkt: &Packet<Self>, zone: u8) -> Option<FragPorts>;
    /// Records `pkt`'s (a first fragment's) ports. Best effort: a failed
    /// insert leaves the later fragments untracked, which the callers
    /// handle.
    fn record(pkt: &Packet<Self>, zone: u8, ports: &FragPorts);
}

impl Fragments for [u8; 4] {
    #[inline(always)]
    fn ports(pkt: &Packet<Self>, zone: u8) -> Option<FragPorts> {
        // SAFETY: copied out at once.
        unsafe { DP_FRAGS.get(key4(pkt, zone)) }.copied()
    }

    #[inline(always)]
    fn record(pkt: &Packet<Self>, zone: u8, ports: &FragPorts) {
        let _ = DP_FRAGS.insert(key4(pkt, zone), *ports, 0);
    }
}

impl Fragments for [u8; 16] {
    #[inline(always)]
    fn ports(pkt: &Packet<Self>, zone: u8) -> Option<FragPorts> {
        // SAFETY: copied out at once.
        unsafe { DP_FRAGS6.get(key6(pkt, zone)) }.copied()
    }

    #[inline(always)]
    fn record(pkt: &Packet<Self>, zone: u8, ports: &FragPorts) {
        let _ = DP_FRAGS6.insert(key6(pkt, zone), *ports, 0);
    }
}

#[inline(always)]
fn key4(pkt: &Packet<[u8; 4]>, zone: u8) -> FragKey {
    FragKey {
        saddr: pkt.src,
        daddr: pkt.dst,
        id: [pkt.frag_id[0], pkt.frag_id[1]],
        proto: pkt.proto,
        zone,
    }
}

#[inline(always)]
fn key6(pkt: &Packet<[u8; 16]>, zone: u8) -> FragKey6 {
    FragKey6 {
        saddr: pkt.src,
        daddr: pkt.dst,
        id: pkt.frag_id,
        proto: pkt.proto,
        zone,
        _pad: [0; 2],
    }
}

/// [`track`] for the IPv6 programs, as a BPF subprogram of its own (its
/// 40-byte key stays off their frames).
#[inline(never)]
pub fn track6(pkt: &mut Packet<[u8; 16]>, zone: u8) -> Frag {
    track(pkt, zone)
}

/// Records a first fragment's ports, or gives a later fragment its
/// datagram's ports. Call before any translation (the key is the datagram
/// as it arrived, in `zone`).
#[inline(always)]
pub fn track<A: Fragments>(pkt: &mut Packet<A>, zone: u8) -> Frag {
    if !pkt.is_fragment() {
        return Frag::Whole;
    }
    if !pkt.later_fragment {
        let ports = FragPorts {
            sport: pkt.sport,
            dport: pkt.dport,
        };
        A::record(pkt, zone, &ports);
        return Frag::Whole;
    }
    match A::ports(pkt, zone) {
        Some(p) => {
            pkt.sport = p.sport;
            pkt.dport = p.dport;
            Frag::Tracked
        }
        None => Frag::Untracked,
    }
}
