//! Connection tracking entries, shared by the NAT programs (which create and
//! update them) and the agent (which lists and garbage-collects them).
//!
//! A translated flow has two entries, one per direction, each keyed by the
//! tuple as the uplink program sees it *before* translation; the value says
//! how to rewrite. The reverse entry's key is the reverse of the translated
//! packet, so either direction finds its rewrite with one lookup. TCP and
//! non-TCP flows live in separate LRU maps (Cilium's split), so a UDP flood
//! cannot evict established TCP connections.

use bytemuck::{Pod, Zeroable};

/// A flow tuple as seen on the wire. For ICMP echo the identifier stands in
/// for a port: `sport` for requests, `dport` for replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Network byte order.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey>() == 16);

impl CtKey {
    /// The tuple of a packet travelling the other way.
    #[must_use]
    pub const fn reversed(&self) -> CtKey {
        CtKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// How a packet matching an entry is rewritten.
pub const REWRITE_SRC: u8 = 1;
pub const REWRITE_DST: u8 = 2;

/// Which NAT created the flow, and which direction this entry is.
pub const FLAG_DNAT: u8 = 1;
pub const FLAG_SNAT: u8 = 2;
pub const FLAG_REPLY: u8 = 4;

/// TCP state of a flow (as far as a NAT needs to know it).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// Non-TCP flows.
    Open = 0,
    SynSent = 1,
    Established = 2,
    /// FIN or RST seen: the entry expires after the closing timeout.
    Closing = 3,
}

impl CtState {
    pub const fn from_u8(v: u8) -> CtState {
        match v {
            1 => CtState::SynSent,
            2 => CtState::Established,
            3 => CtState::Closing,
            _ => CtState::Open,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            CtState::Open => "OPEN",
            CtState::SynSent => "SYN_SENT",
            CtState::Established => "ESTABLISHED",
            CtState::Closing => "CLOSING",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    /// The address and port (network byte order) that replace the source or
    /// the destination, per `rewrite`.
    pub nat_addr: [u8; 4],
    pub nat_port: [u8; 2],
    /// [`REWRITE_SRC`] or [`REWRITE_DST`].
    pub rewrite: u8,
    /// [`CtState`].
    pub state: u8,
    /// [`FLAG_DNAT`]/[`FLAG_SNAT`], plus [`FLAG_REPLY`] on the reply entry.
    pub flags: u8,
    pub _pad: [u8; 7],
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at creation and last packet.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Packets and bytes in this entry's direction. Updated without atomics
    /// from every CPU: exact under one flow per CPU, approximate otherwise.
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<CtEntry>() == 48);

impl CtEntry {
    /// The key of the other direction's entry: the reverse of this packet's
    /// tuple after this entry's rewrite.
    #[must_use]
    pub const fn peer_key(&self, key: &CtKey) -> CtKey {
        let mut t = *key;
        if self.rewrite == REWRITE_SRC {
            t.saddr = self.nat_addr;
            t.sport = self.nat_port;
        } else {
            t.daddr = self.nat_addr;
            t.dport = self.nat_port;
        }
        t.reversed()
    }
}

crate::user_pod!(CtKey, CtEntry);
