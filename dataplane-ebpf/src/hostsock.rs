//! Whether a socket of the host holds a tuple (`bpf_skc_lookup_tcp`,
//! `bpf_sk_lookup_udp`): the masquerade's port choice and the host-local
//! hooks ask it, so a translated flow never takes a tuple the host's own
//! sockets would receive the replies of. Each lookup is a BPF subprogram of
//! its own, so its tuple and the socket reference live in a frame of their
//! own.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, BPF_F_CURRENT_NETNS,
    },
    helpers::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
};
use dataplane_common::net::{IPPROTO_TCP, IPPROTO_UDP};

/// `Family::host_socket`'s lookup for IPv4: whether a socket of the host
/// (this program's network namespace) would receive the replies to a flow
/// from `addr`:`port` to `peer`'s destination: the tuple as a reply
/// arrives, looked up as the stack would deliver it — an established (or
/// TIME_WAIT, or request) TCP socket on the whole tuple, a TCP listener or
/// UDP socket bound to the port. Such a port is the host's: a translated
/// flow on it would steal the host's replies, or hand a container datagrams
/// meant for a host service.
///
/// The lookup, a BPF subprogram of its own (at most five
/// scalar arguments, hence the packed ports: the reply's source port in the
/// low half, its destination port in the high half, both as on the wire),
/// so its tuple and the socket reference live in a frame of their own: the
/// callers' frames are close to the 512-byte stack limit. `skb` is the
/// program's context: a packet's, or a socket address's (`dp_connect4`).
#[inline(never)]
pub fn lookup_socket(skb: *mut c_void, proto: u8, saddr: u32, daddr: u32, ports: u32) -> bool {
    let mut tuple = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
        saddr,
        daddr,
        sport: ports as u16,
        dport: (ports >> 16) as u16,
    };
    // Only the IPv4 half of `bpf_sock_tuple`: the helpers read `size` bytes.
    let tuple: *mut bpf_sock_tuple = (&raw mut tuple).cast();
    let size = size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    socket_exists(skb, proto, tuple, size)
}

/// Whether the host (this program's network namespace) has a socket on
/// `tuple` (`size` bytes of it: `bpf_sock_tuple`'s IPv4 or IPv6 half),
/// TCP (any state, listeners too) or UDP; the socket is released at once.
#[inline(always)]
pub fn socket_exists(skb: *mut c_void, proto: u8, tuple: *mut bpf_sock_tuple, size: u32) -> bool {
    // The kernel's "the caller's namespace" is any negative 32-bit value.
    let netns = BPF_F_CURRENT_NETNS as u64;
    // Each branch releases its own reference: the verifier tracks the
    // socket from each lookup to its release.
    if proto == IPPROTO_TCP {
        // SAFETY: `skb` is the program's context and the tuple lives on
        // the caller's frame for the call; a returned socket is released
        // below.
        let sk = unsafe { bpf_skc_lookup_tcp(skb, tuple, size, netns, 0) };
        if sk.is_null() {
            return false;
        }
        // SAFETY: a socket the lookup above returned, released once.
        unsafe { bpf_sk_release(sk.cast()) };
        return true;
    }
    if proto == IPPROTO_UDP {
        // SAFETY: as for TCP.
        let sk = unsafe { bpf_sk_lookup_udp(skb, tuple, size, netns, 0) };
        if sk.is_null() {
            return false;
        }
        // SAFETY: as for TCP.
        unsafe { bpf_sk_release(sk.cast()) };
        return true;
    }
    false
}

/// [`lookup_socket`] for an IPv6 tuple (built by the caller, whose
/// frame holds it for the call).
#[inline(never)]
pub fn lookup_socket6(
    skb: *mut c_void,
    proto: u8,
    tuple: *mut bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
) -> bool {
    let size = size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>() as u32;
    socket_exists(skb, proto, tuple.cast(), size)
}
