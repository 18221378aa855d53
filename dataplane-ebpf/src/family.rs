//! The address family as a type: IPv4 (`[u8; 4]`) and IPv6 (`[u8; 16]`)
//! each name their maps and their header differences here, so conntrack,
//! NAT and TCP tracking are written once and monomorphised per family (no
//! dispatch at run time, and the IPv4 code is what it was).

use aya_ebpf::{
    bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, programs::TcContext, EbpfContext,
};
use dataplane_common::{
    ct::{CtEntryOf, CtKeyOf},
    nat::{PortKeyOf, PortTargetOf},
    net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP},
};
use network_types::eth::EthHdr;

use crate::{
    hostsock,
    maps::{
        DP_CT6_OTHER, DP_CT6_TCP, DP_CT_OTHER, DP_CT_TCP, DP_HOST_ADDRS, DP_HOST_ADDRS6, DP_PORTS,
        DP_PORTS6,
    },
};

/// What differs between IPv4 and IPv6 for conntrack and NAT.
pub trait Family: Copy + Default + PartialEq + 'static {
    /// The family's ICMP protocol number and its echo types.
    const ICMP: u8;
    const ECHO_REQUEST: u8;
    const ECHO_REPLY: u8;
    /// Whether the ICMP checksum covers the pseudo-header (ICMPv6 does).
    const ICMP_PSEUDO: bool;
    /// Whether the IP header has a checksum of its own (IPv4).
    const IP_CSUM: bool;
    /// Offsets of the source and destination address fields.
    const SRC_OFF: usize;
    const DST_OFF: usize;
    /// 32-bit words in an address.
    const WORDS: usize;

    /// The address as 32-bit words in memory order (unused words zero).
    fn words(&self) -> [u32; 4];
    fn ct_lookup(key: &CtKeyOf<Self>) -> Option<*mut CtEntryOf<Self>>;
    fn ct_insert(key: &CtKeyOf<Self>, entry: &CtEntryOf<Self>, flags: u64) -> Result<(), i32>;
    fn ct_remove(key: &CtKeyOf<Self>) -> Result<(), i32>;
    /// The published port under `key`.
    fn port(key: &PortKeyOf<Self>) -> Option<PortTargetOf<Self>>;
    /// Whether `addr` is one of the host's own addresses.
    fn is_host_addr(addr: &Self) -> bool;
    /// Whether a socket of the host would receive a reply from `peer`'s
    /// destination to `addr`:`port` (see `nat::snat`).
    fn host_socket(
        ctx: &TcContext,
        proto: u8,
        peer: &CtKeyOf<Self>,
        addr: Self,
        port: [u8; 2],
    ) -> bool;
}

/// The map operations of an `impl Family`: the same code over each
/// family's own maps (conntrack TCP and other, published ports, host
/// addresses).
macro_rules! family_maps {
    ($ct_tcp:ident, $ct_other:ident, $ports:ident, $host_addrs:ident) => {
        #[inline(always)]
        fn ct_lookup(key: &CtKeyOf<Self>) -> Option<*mut CtEntryOf<Self>> {
            if key.proto == IPPROTO_TCP {
                $ct_tcp.get_ptr_mut(key)
            } else {
                $ct_other.get_ptr_mut(key)
            }
        }

        #[inline(always)]
        fn ct_insert(key: &CtKeyOf<Self>, entry: &CtEntryOf<Self>, flags: u64) -> Result<(), i32> {
            if key.proto == IPPROTO_TCP {
                $ct_tcp.insert(key, entry, flags)
            } else {
                $ct_other.insert(key, entry, flags)
            }
        }

        #[inline(always)]
        fn ct_remove(key: &CtKeyOf<Self>) -> Result<(), i32> {
            if key.proto == IPPROTO_TCP {
                $ct_tcp.remove(key)
            } else {
                $ct_other.remove(key)
            }
        }

        #[inline(always)]
        fn port(key: &PortKeyOf<Self>) -> Option<PortTargetOf<Self>> {
            // SAFETY: copied out at once.
            unsafe { $ports.get(*key) }.copied()
        }

        #[inline(always)]
        fn is_host_addr(addr: &Self) -> bool {
            // SAFETY: only whether the key is present.
            unsafe { $host_addrs.get(*addr) }.is_some()
        }
    };
}

impl Family for [u8; 4] {
    const ICMP: u8 = IPPROTO_ICMP;
    const ECHO_REQUEST: u8 = 8;
    const ECHO_REPLY: u8 = 0;
    const ICMP_PSEUDO: bool = false;
    const IP_CSUM: bool = true;
    const SRC_OFF: usize = EthHdr::LEN + 12;
    const DST_OFF: usize = EthHdr::LEN + 16;
    const WORDS: usize = 1;

    #[inline(always)]
    fn words(&self) -> [u32; 4] {
        [u32::from_ne_bytes(*self), 0, 0, 0]
    }

    family_maps!(DP_CT_TCP, DP_CT_OTHER, DP_PORTS, DP_HOST_ADDRS);

    #[inline(always)]
    fn host_socket(
        ctx: &TcContext,
        proto: u8,
        peer: &CtKeyOf<Self>,
        addr: Self,
        port: [u8; 2],
    ) -> bool {
        let ports =
            u32::from(u16::from_ne_bytes(peer.dport)) | u32::from(u16::from_ne_bytes(port)) << 16;
        hostsock::lookup_socket(
            ctx.as_ptr(),
            proto,
            u32::from_ne_bytes(peer.daddr),
            u32::from_ne_bytes(addr),
            ports,
        )
    }
}

impl Family for [u8; 16] {
    const ICMP: u8 = IPPROTO_ICMPV6;
    const ECHO_REQUEST: u8 = 128;
    const ECHO_REPLY: u8 = 129;
    const ICMP_PSEUDO: bool = true;
    const IP_CSUM: bool = false;
    const SRC_OFF: usize = EthHdr::LEN + 8;
    const DST_OFF: usize = EthHdr::LEN + 24;
    const WORDS: usize = 4;

    #[inline(always)]
    fn words(&self) -> [u32; 4] {
        let a = self;
        [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ]
    }

    family_maps!(DP_CT6_TCP, DP_CT6_OTHER, DP_PORTS6, DP_HOST_ADDRS6);

    #[inline(always)]
    fn host_socket(
        ctx: &TcContext,
        proto: u8,
        peer: &CtKeyOf<Self>,
        addr: Self,
        port: [u8; 2],
    ) -> bool {
        let mut tuple = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: peer.daddr.words(),
            daddr: addr.words(),
            sport: u16::from_ne_bytes(peer.dport),
            dport: u16::from_ne_bytes(port),
        };
        hostsock::lookup_socket6(ctx.as_ptr(), proto, &raw mut tuple)
    }
}
