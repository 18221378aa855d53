//! Connection tracking entries, shared by the NAT programs (which create and
//! update them) and the agent (which lists and garbage-collects them).
//!
//! A translated flow has two entries, one per direction, each keyed by the
//! tuple as the uplink program sees it *before* translation; the value says
//! how to rewrite. The reverse entry's key is the reverse of the translated
//! packet, so either direction finds its rewrite with one lookup. TCP and
//! non-TCP flows live in separate LRU maps (Cilium's split), so a UDP flood
//! cannot evict established TCP connections.

//!
//! Each family has its own maps (Cilium's `CT_MAP_TCP4`/`CT_MAP_TCP6`): the
//! key and entry are generic over the address (`[u8; 4]` or `[u8; 16]`), so
//! the IPv4 layout stays what it was and one set of methods serves both.

use bytemuck::{Pod, Zeroable};

/// A flow tuple as seen on the wire. For ICMP echo the identifier stands in
/// for a port: `sport` for requests, `dport` for replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    /// Network byte order.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    /// Which program's flows: [`ZONE_UPLINK`] or [`ZONE_ENDPOINT`]. A flow
    /// translated at the uplink must not be translated again where its
    /// packets enter the host from a container, and the other way round.
    pub zone: u8,
    pub _pad: [u8; 2],
}
/// An IPv4 flow tuple.
pub type CtKey = CtKeyOf<[u8; 4]>;
/// An IPv6 flow tuple.
pub type CtKey6 = CtKeyOf<[u8; 16]>;
const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(size_of::<CtKey6>() == 40);

/// Flows translated by the uplink programs (published ports from outside,
/// masquerade).
pub const ZONE_UPLINK: u8 = 0;
/// Flows translated where they leave a container (hairpin).
pub const ZONE_ENDPOINT: u8 = 1;

impl<A: Copy> CtKeyOf<A> {
    /// The tuple of a packet travelling the other way.
    #[must_use]
    #[inline(always)]
    pub fn reversed(&self) -> CtKeyOf<A> {
        CtKeyOf {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            zone: self.zone,
            _pad: [0; 2],
        }
    }
}

/// Bits of [`CtEntry::rewrite`]: which sides of a matching packet change.
pub const REWRITE_SRC: u8 = 1;
pub const REWRITE_DST: u8 = 2;

/// Which NAT created the flow, and which direction this entry is.
pub const FLAG_DNAT: u8 = 1;
pub const FLAG_SNAT: u8 = 2;
pub const FLAG_REPLY: u8 = 4;
/// A container reaching its own published port: after the rewrite the
/// packet goes straight back into the container (MACs swapped), because the
/// host stack would drop a packet from its own address.
pub const FLAG_HAIRPIN_SELF: u8 = 8;
/// A host-local flow NATed per packet (`dp_local_out` on `lo`): the reply
/// entry's redirect is into `lo`'s ingress, where the host stack delivers
/// it to the client's socket.
pub const FLAG_LOCAL: u8 = 16;

/// TCP state of a flow (as far as a NAT needs to know it).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// Non-TCP flows.
    Open = 0,
    SynSent = 1,
    Established = 2,
    /// FIN seen in both directions, or a RST: the entry expires after the
    /// closing timeout, and a new SYN on the tuple starts a fresh flow.
    Closing = 3,
    /// FIN seen in one direction only (half-closed): the other side may
    /// still send for as long as it likes, so the entry keeps the
    /// established timeout (nf_conntrack's FIN_WAIT/CLOSE_WAIT, without
    /// cutting a long half-close short).
    FinWait = 4,
}

impl CtState {
    pub const fn from_u8(v: u8) -> CtState {
        match v {
            1 => CtState::SynSent,
            2 => CtState::Established,
            3 => CtState::Closing,
            4 => CtState::FinWait,
            _ => CtState::Open,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            CtState::Open => "OPEN",
            CtState::SynSent => "SYN_SENT",
            CtState::Established => "ESTABLISHED",
            CtState::Closing => "CLOSING",
            CtState::FinWait => "FIN_WAIT",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryOf<A> {
    /// The source and destination a matching packet gets, on the sides
    /// [`CtEntry::rewrite`] names (network byte order ports).
    pub new_saddr: A,
    pub new_daddr: A,
    pub new_sport: [u8; 2],
    pub new_dport: [u8; 2],
    /// [`REWRITE_SRC`] | [`REWRITE_DST`].
    pub rewrite: u8,
    /// [`CtState`].
    pub state: u8,
    /// [`FLAG_DNAT`]/[`FLAG_SNAT`], plus [`FLAG_REPLY`] on the reply entry.
    pub flags: u8,
    /// What this direction's sender has sent: [`SEEN_FIN`], [`SEEN_SEQ`].
    pub tcp_seen: u8,
    /// Non-zero: after the rewrite the packet is sent out of this interface
    /// (into a container, skipping the host stack) with these Ethernet
    /// addresses. Used by hairpin flows, whose rewritten packets the host
    /// would otherwise drop as coming from its own address.
    pub redirect_ifindex: u32,
    pub redirect_dmac: [u8; 6],
    pub redirect_smac: [u8; 6],
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at creation and last packet.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Packets and bytes in this entry's direction. Updated without atomics
    /// from every CPU: exact under one flow per CPU, approximate otherwise.
    pub packets: u64,
    /// IP bytes (headers included, no link layer), as `iptables -vL`.
    pub bytes: u64,
    /// TCP window tracking (host byte order), for this direction's sender:
    /// the sequence number just past the last byte it sent (valid with
    /// [`SEEN_SEQ`]), the largest window it advertised (scaled), and its
    /// window scale from its SYN.
    pub tcp_seq_end: u32,
    pub tcp_max_win: u32,
    pub tcp_wscale: u8,
    pub _pad: [u8; 7],
}
/// An IPv4 flow's entry.
pub type CtEntry = CtEntryOf<[u8; 4]>;
/// An IPv6 flow's entry.
pub type CtEntry6 = CtEntryOf<[u8; 16]>;
const _: () = assert!(size_of::<CtEntry>() == 80);
const _: () = assert!(size_of::<CtEntry6>() == 104);

/// Bits of [`CtEntry::tcp_seen`].
/// This direction sent a FIN.
pub const SEEN_FIN: u8 = 1;
/// `tcp_seq_end` holds a sequence number this direction sent.
pub const SEEN_SEQ: u8 = 2;

impl<A: Copy + Default> CtEntryOf<A> {
    /// Rewrite the source to `addr`:`port`.
    #[must_use]
    #[inline(always)]
    pub fn with_src(mut self, addr: A, port: [u8; 2]) -> CtEntryOf<A> {
        self.rewrite |= REWRITE_SRC;
        self.new_saddr = addr;
        self.new_sport = port;
        self
    }

    /// Rewrite the destination to `addr`:`port`.
    #[must_use]
    #[inline(always)]
    pub fn with_dst(mut self, addr: A, port: [u8; 2]) -> CtEntryOf<A> {
        self.rewrite |= REWRITE_DST;
        self.new_daddr = addr;
        self.new_dport = port;
        self
    }

    /// The tuple of a packet matching `key` after this entry's rewrite.
    #[must_use]
    #[inline(always)]
    pub fn translate(&self, key: &CtKeyOf<A>) -> CtKeyOf<A> {
        let mut t = *key;
        if self.rewrite & REWRITE_SRC != 0 {
            t.saddr = self.new_saddr;
            t.sport = self.new_sport;
        }
        if self.rewrite & REWRITE_DST != 0 {
            t.daddr = self.new_daddr;
            t.dport = self.new_dport;
        }
        t
    }

    /// The key of the other direction's entry: the reverse of the
    /// translated tuple.
    #[must_use]
    #[inline(always)]
    pub fn peer_key(&self, key: &CtKeyOf<A>) -> CtKeyOf<A> {
        self.translate(key).reversed()
    }

    /// The other direction's entry for a flow whose original packets match
    /// `key`: it undoes this entry's rewrite (a rewritten destination comes
    /// back as the source, and the other way round), and takes this entry's
    /// redirect (which says where replies go).
    #[must_use]
    #[inline(always)]
    pub fn reply(&self, key: &CtKeyOf<A>) -> CtEntryOf<A> {
        let mut r = CtEntryOf {
            new_saddr: A::default(),
            new_daddr: A::default(),
            new_sport: [0; 2],
            new_dport: [0; 2],
            rewrite: 0,
            state: self.state,
            flags: self.flags | FLAG_REPLY,
            tcp_seen: 0,
            redirect_ifindex: self.redirect_ifindex,
            redirect_dmac: self.redirect_dmac,
            redirect_smac: self.redirect_smac,
            created_ns: self.created_ns,
            last_seen_ns: self.last_seen_ns,
            packets: 0,
            bytes: 0,
            tcp_seq_end: 0,
            tcp_max_win: 0,
            tcp_wscale: 0,
            _pad: [0; 7],
        };
        if self.rewrite & REWRITE_DST != 0 {
            r = r.with_src(key.daddr, key.dport);
        }
        if self.rewrite & REWRITE_SRC != 0 {
            r = r.with_dst(key.saddr, key.sport);
        }
        r
    }
}

/// A fragmented datagram, as every fragment of it carries: addresses,
/// IP identification and protocol, in one conntrack zone (Cilium's
/// `ipv4_frag_id`). Non-first fragments carry no ports; the first one's
/// are kept under this key so the later ones find their flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Network byte order, as in the header.
    pub id: [u8; 2],
    pub proto: u8,
    pub zone: u8,
}
const _: () = assert!(size_of::<FragKey>() == 12);

/// `DP_FRAGS6`'s key: an IPv6 datagram by its addresses, the fragment
/// header's 32-bit identification and its upper-layer protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FragKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network byte order, as in the fragment header.
    pub id: [u8; 4],
    pub proto: u8,
    pub zone: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FragKey6>() == 40);

/// The ports of a fragmented datagram's first fragment (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FragPorts {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}
const _: () = assert!(size_of::<FragPorts>() == 4);

// SAFETY: `#[repr(C)]`, `Copy`, no implicit padding (the size assertions
// above), every bit pattern valid. Pod is not derived: the derive refuses
// generic structs, whose padding depends on the parameter.
unsafe impl Zeroable for CtKey {}
unsafe impl Pod for CtKey {}
unsafe impl Zeroable for CtKey6 {}
unsafe impl Pod for CtKey6 {}
unsafe impl Zeroable for CtEntry {}
unsafe impl Pod for CtEntry {}
unsafe impl Zeroable for CtEntry6 {}
unsafe impl Pod for CtEntry6 {}

crate::user_pod!(CtKey, CtEntry, CtKey6, CtEntry6, FragKey, FragKey6, FragPorts);
