//! IPv4 fragments: non-first fragments carry no ports, so they cannot be
//! matched to a flow by themselves (Cilium's `ipv4_handle_fragmentation`).
//! The first fragment's ports are kept in `DP_FRAGS` under the datagram's
//! addresses, IP id and protocol; later fragments take them from there and
//! then follow their flow's translation (addresses only: the L4 header,
//! checksum included, is in the first fragment). A later fragment whose
//! first was not seen is the caller's to judge: passed on when it is not
//! the dataplane's business, dropped when it would leak an internal address.

use dataplane_common::ct::{FragKey, FragPorts};

use crate::{maps::DP_FRAGS, parse::Ipv4Packet};

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

#[inline(always)]
fn key(pkt: &Ipv4Packet, zone: u8) -> FragKey {
    FragKey {
        saddr: pkt.src,
        daddr: pkt.dst,
        id: pkt.ip_id,
        proto: pkt.proto,
        zone,
    }
}

/// Records a first fragment's ports, or gives a later fragment its
/// datagram's ports. Call before any translation (the key is the datagram
/// as it arrived, in `zone`).
#[inline(always)]
pub fn track(pkt: &mut Ipv4Packet, zone: u8) -> Frag {
    if !pkt.is_fragment() {
        return Frag::Whole;
    }
    let k = key(pkt, zone);
    if !pkt.later_fragment {
        let ports = FragPorts {
            sport: pkt.sport,
            dport: pkt.dport,
        };
        // Best effort: a failed insert leaves the later fragments untracked,
        // which the callers handle.
        let _ = DP_FRAGS.insert(k, ports, 0);
        return Frag::Whole;
    }
    // SAFETY: copied out at once.
    match unsafe { DP_FRAGS.get(k) }.copied() {
        Some(p) => {
            pkt.sport = p.sport;
            pkt.dport = p.dport;
            Frag::Tracked
        }
        None => Frag::Untracked,
    }
}
