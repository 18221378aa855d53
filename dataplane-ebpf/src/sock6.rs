//! Published ports for host-local IPv6 clients: `dp_connect6`,
//! `dp_sendmsg6`, `dp_recvmsg6` and `dp_getpeername6`, the IPv6 twins of
//! `sock`'s hooks (translation at the socket, the original address kept
//! under the socket's cookie in `DP_SOCK_REVNAT6` for the reverse).
//!
//! Matching: the exact key `{dst, port, proto}` of `DP_PORTS6` first; when
//! the destination is the host itself (`::1` or an address in
//! `DP_HOST_ADDRS6`), the wildcard key `{::, port, proto}`.
//!
//! The same two TCP cases as IPv4's are left to the packets, for the same
//! reasons: a socket bound to `::1` (no route takes that source to a
//! container, and IPv6 has no `route_localnet`) and a socket with a port of
//! its own whose translated tuple another socket holds (its connect would
//! fail, `EADDRNOTAVAIL`). Its entry
//! is marked [`REVNAT_PER_PACKET`], the destination left as asked, and
//! `dp_local_out6` (on `lo`, `local6`) translates the connection per
//! packet. A UDP socket bound to `::1` is not translated (nothing
//! translates its datagrams per packet): it finds nothing listening.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, helpers::bpf_get_netns_cookie,
    macros::cgroup_sock_addr, programs::SockAddrContext, EbpfContext,
};
use dataplane_common::{
    nat::{PortKey6, PortTarget6},
    net::IPPROTO_TCP,
    sock::{SockRevNat6, REVNAT_PER_PACKET},
};

use crate::{
    family::Family,
    fastpath, hostsock,
    maps::{DP_PORTS6, DP_SOCK_REVNAT6},
    sock::{protocol, socket_cookie, Hook, HOST_NETNS_COOKIE},
};

const PROCEED: i32 = 1;
const LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

#[cgroup_sock_addr(connect6)]
pub fn dp_connect6(ctx: SockAddrContext) -> i32 {
    forward(&ctx, Hook::Connect);
    PROCEED
}

#[cgroup_sock_addr(sendmsg6)]
pub fn dp_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward(&ctx, Hook::Sendmsg);
    PROCEED
}

#[cgroup_sock_addr(recvmsg6)]
pub fn dp_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn dp_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    PROCEED
}

/// An IPv6 address and port, both in network byte order.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Endpoint {
    addr: [u8; 16],
    port: [u8; 2],
}

/// connect6/sendmsg6: published address -> container, remembering the
/// original for the reverse direction.
#[inline(always)]
fn forward(ctx: &SockAddrContext, hook: Hook) {
    let host = HOST_NETNS_COOKIE.load();
    // SAFETY: the context pointer is valid for the program's run.
    if host != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != host {
        return;
    }
    let Some(proto) = protocol(ctx) else {
        return;
    };
    let dst = user_endpoint(ctx);
    let Some(target) = lookup(&dst, proto) else {
        if hook == Hook::Connect {
            let cookie = socket_cookie(ctx);
            if DP_SOCK_REVNAT6.get_ptr(cookie).is_some() {
                let _ = DP_SOCK_REVNAT6.remove(cookie);
            }
        }
        return;
    };
    let bound = bound(ctx);
    let loopback = bound.addr == LOOPBACK.words();
    let per_packet =
        hook == Hook::Connect && proto == IPPROTO_TCP && leave_to_packets(ctx, &bound, &target);
    if loopback && !per_packet {
        return;
    }
    let rev = SockRevNat6 {
        orig_addr: dst.addr,
        orig_port: dst.port,
        flags: if per_packet { REVNAT_PER_PACKET } else { 0 },
        _pad: 0,
        backend_addr: target.addr,
        backend_port: target.port,
        _pad2: [0; 2],
    };
    // As for IPv4: translate even if recording fails (a per-packet
    // connection without its entry is refused).
    let _ = DP_SOCK_REVNAT6.insert(socket_cookie(ctx), rev, 0);
    if !per_packet {
        set_user_endpoint(
            ctx,
            &Endpoint {
                addr: target.addr,
                port: target.port,
            },
        );
    }
}

/// The socket's bound address (32-bit words, memory order) and port (host
/// order; 0 when the kernel is to pick one after connect).
struct Bound {
    addr: [u32; 4],
    port: u32,
}

#[inline(always)]
fn bound(ctx: &SockAddrContext) -> Bound {
    // SAFETY: `sk` of a sock_addr context is the socket of the syscall,
    // never null; `src_ip6` is four readable 4-byte fields, `src_port` one.
    unsafe {
        let sk = read_volatile(addr_of!((*ctx.sock_addr).__bindgen_anon_1.sk));
        Bound {
            addr: [
                read_volatile(addr_of!((*sk).src_ip6[0])),
                read_volatile(addr_of!((*sk).src_ip6[1])),
                read_volatile(addr_of!((*sk).src_ip6[2])),
                read_volatile(addr_of!((*sk).src_ip6[3])),
            ],
            port: read_volatile(addr_of!((*sk).src_port)),
        }
    }
}

/// Whether connecting this socket straight to `backend` cannot work, so
/// the packets must be translated instead (`sock::leave_to_packets`'s
/// twin): it is bound to `::1`, or it would take a tuple a socket of the
/// host holds (its local address the bound one, or the gateway the route
/// to the container picks).
#[inline(always)]
fn leave_to_packets(ctx: &SockAddrContext, bound: &Bound, backend: &PortTarget6) -> bool {
    if bound.addr == LOOPBACK.words() {
        return true;
    }
    if bound.port == 0 {
        return false;
    }
    let local = if bound.addr != [0; 4] {
        bound.addr
    } else {
        let gateway = fastpath::gateway6(&backend.addr);
        if gateway == [0; 16] {
            return false;
        }
        gateway.words()
    };
    // As a reply would arrive: from the container's port to ours.
    let mut tuple = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
        saddr: backend.addr.words(),
        daddr: local,
        sport: u16::from_ne_bytes(backend.port),
        dport: (bound.port as u16).to_be(),
    };
    hostsock::lookup_socket6(ctx.as_ptr(), IPPROTO_TCP, &raw mut tuple)
}

/// recvmsg6/getpeername6: container -> the address the application used.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    if protocol(ctx).is_none() {
        return;
    }
    let Some(rev) = DP_SOCK_REVNAT6.get_ptr(socket_cookie(ctx)) else {
        return;
    };
    // SAFETY: a map value pointer is valid for the program's run; a torn
    // read is rejected by the backend comparison below.
    let rev = unsafe { read_volatile(rev) };
    let peer = user_endpoint(ctx);
    if peer.addr == rev.backend_addr && peer.port == rev.backend_port {
        set_user_endpoint(
            ctx,
            &Endpoint {
                addr: rev.orig_addr,
                port: rev.orig_port,
            },
        );
    }
}

/// The published port `dst` reaches, if any.
#[inline(always)]
fn lookup(dst: &Endpoint, proto: u8) -> Option<PortTarget6> {
    let mut key = PortKey6 {
        addr: dst.addr,
        port: dst.port,
        proto,
        _pad: 0,
    };
    if let Some(t) = DP_PORTS6.get_ptr(key) {
        // SAFETY: map value pointer, valid for the program's run.
        return Some(unsafe { read_volatile(t) });
    }
    if dst.addr != LOOPBACK && !<[u8; 16]>::is_host_addr(&dst.addr) {
        return None;
    }
    key.addr = [0; 16];
    // SAFETY: as above.
    DP_PORTS6.get_ptr(key).map(|t| unsafe { read_volatile(t) })
}

/// The address the syscall carries (`user_ip6`/`user_port`, network order
/// in memory; see `sock`'s twin for the port).
#[inline(always)]
fn user_endpoint(ctx: &SockAddrContext) -> Endpoint {
    let sa = ctx.sock_addr;
    // SAFETY: full-width reads of readable fields of a valid context.
    let (w, port) = unsafe {
        (
            [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ],
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&w[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
    addr[12..].copy_from_slice(&w[3].to_ne_bytes());
    Endpoint {
        addr,
        port: (port as u16).to_ne_bytes(),
    }
}

/// Rewrites the syscall's address, with the 4-byte stores the kernel
/// accepts.
#[inline(always)]
fn set_user_endpoint(ctx: &SockAddrContext, ep: &Endpoint) {
    let sa = ctx.sock_addr;
    let w = ep.addr.words();
    // SAFETY: writable fields for connect6/sendmsg6/recvmsg6/getpeername6.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), w[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), w[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), w[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), w[3]);
        write_volatile(
            addr_of_mut!((*sa).user_port),
            u32::from(u16::from_ne_bytes(ep.port)),
        );
    }
}
