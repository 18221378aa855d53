//! Packet/byte counters: the value type of every counter map, and the
//! protocol classes of the stats program.

use bytemuck::{Pod, Zeroable};

/// Index into the per-protocol counter array. The eBPF side classifies every
/// packet into exactly one of these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoIndex {
    /// IPv4 with a protocol we do not parse further (e.g. GRE, SCTP).
    OtherIpv4 = 0,
    Tcp = 1,
    Udp = 2,
    Icmp = 3,
    /// Not IPv4 at all (ARP, IPv6, ...).
    NonIpv4 = 4,
    /// Dropped by the parser as malformed (truncated, bad IHL).
    Malformed = 5,
}

impl ProtoIndex {
    /// Every index, in array order.
    pub const ALL: [ProtoIndex; 6] = [
        ProtoIndex::OtherIpv4,
        ProtoIndex::Tcp,
        ProtoIndex::Udp,
        ProtoIndex::Icmp,
        ProtoIndex::NonIpv4,
        ProtoIndex::Malformed,
    ];
    /// Number of array slots.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            ProtoIndex::OtherIpv4 => "other-ipv4",
            ProtoIndex::Tcp => "tcp",
            ProtoIndex::Udp => "udp",
            ProtoIndex::Icmp => "icmp",
            ProtoIndex::NonIpv4 => "non-ipv4",
            ProtoIndex::Malformed => "malformed",
        }
    }
}

/// Value of every counter map (per protocol class, per drop reason): one per
/// slot per CPU; userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PktCounter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<PktCounter>() == 16);

crate::user_pod!(PktCounter);

impl PktCounter {
    /// Adds another CPU's counters.
    #[must_use]
    pub const fn add(self, other: PktCounter) -> PktCounter {
        PktCounter {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}
