//! Published ports for host-local clients: cgroup sock_addr programs that
//! translate at the socket instead of per packet (Cilium's "socket LB" with
//! reverse translation by socket cookie), the job Docker does with an
//! OUTPUT-chain DNAT and docker-proxy.
//!
//! - `dp_connect4` (TCP and connected UDP) and `dp_sendmsg4` (unconnected UDP
//!   `sendto`) look the destination up in `DP_PORTS`; on a match they rewrite
//!   it to the container and remember what the application asked for in
//!   `DP_SOCK_REVNAT` under the socket's cookie.
//! - `dp_recvmsg4` (the source of a UDP datagram as `recvfrom` reports it)
//!   and `dp_getpeername4` put that original address back when the peer is
//!   the container, so the application never sees the translation.
//!
//! Two TCP cases are left to the packets: a socket with a port of its own
//! (bound before connect) whose translated tuple another socket holds
//! already (the same port connected straight to the container, then to its
//! published port: translating would make connect fail, `EADDRNOTAVAIL`,
//! and connect4 cannot change the socket's port), and a socket bound to a
//! loopback address (no route takes that source to a container). The
//! destination is left as asked, the entry is marked
//! [`REVNAT_PER_PACKET`], and `dp_local_out` (on `lo`) translates the
//! connection per packet, with a source of its own, as the kernel's OUTPUT
//! DNAT and Docker's masquerade of local traffic do. A port the kernel
//! picks is chosen after connect4, on the translated tuple, and never
//! clashes.
//!
//! Matching: the exact key `{dst, port, proto}` first; failing that, when the
//! destination is the host itself (127.0.0.0/8 or an address in
//! `DP_HOST_ADDRS`), the wildcard key `{0.0.0.0, port, proto}`. A port bound
//! to one host address (`-p 127.0.0.1:8081:80`) therefore matches only that
//! address.
//!
//! Every program returns 1 (proceed): a socket hook never blocks a syscall.
//! The kernel enforces this for recvmsg4 and getpeername4, whose only valid
//! return value is 1.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext, Global,
};
use dataplane_common::{
    nat::{PortKey, PortTarget},
    net::{IPPROTO_TCP, IPPROTO_UDP},
    sock::{SockRevNat, REVNAT_PER_PACKET},
};

use crate::{
    fastpath, hostsock,
    maps::{DP_HOST_ADDRS, DP_PORTS, DP_SOCK_REVNAT},
};

/// The only return value of a sock_addr program that lets the syscall go on.
const PROCEED: i32 = 1;

/// The host's network namespace cookie, set by the loader (0: no check).
/// The cgroup can hold processes of other namespaces (containers); their
/// 127.0.0.1 is their own and must not be translated.
#[unsafe(no_mangle)]
pub(crate) static HOST_NETNS_COOKIE: Global<u64> = Global::new(0);

#[cgroup_sock_addr(connect4)]
pub fn dp_connect4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, Hook::Connect);
    PROCEED
}

#[cgroup_sock_addr(sendmsg4)]
pub fn dp_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, Hook::Sendmsg);
    PROCEED
}

#[cgroup_sock_addr(recvmsg4)]
pub fn dp_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn dp_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    PROCEED
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    /// The socket gets one peer: a miss also forgets an earlier translation.
    Connect,
    /// One datagram: other destinations of the same socket keep theirs.
    Sendmsg,
}

/// An IPv4 address and port, both in network byte order.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Endpoint {
    addr: [u8; 4],
    port: [u8; 2],
}

/// connect4/sendmsg4: published address -> container, remembering the
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
    let Some(target) = lookup(dst, proto) else {
        if hook == Hook::Connect {
            // A reconnected (UDP) socket now talks to an untranslated peer.
            let cookie = socket_cookie(ctx);
            if DP_SOCK_REVNAT.get_ptr(cookie).is_some() {
                let _ = DP_SOCK_REVNAT.remove(cookie);
            }
        }
        return;
    };
    let backend = Endpoint {
        addr: target.addr,
        port: target.port,
    };
    let per_packet =
        hook == Hook::Connect && proto == IPPROTO_TCP && leave_to_packets(ctx, backend);
    let rev = SockRevNat {
        orig_addr: dst.addr,
        orig_port: dst.port,
        flags: if per_packet { REVNAT_PER_PACKET } else { 0 },
        _pad: 0,
        backend_addr: backend.addr,
        backend_port: backend.port,
        _pad2: [0; 2],
    };
    // Translate even if recording fails (an LRU update only fails under
    // memory pressure): a working connection whose getpeername shows the
    // container beats a refused one. A per-packet connection without its
    // entry is refused (nothing listens on the published address).
    let _ = DP_SOCK_REVNAT.insert(socket_cookie(ctx), rev, 0);
    if !per_packet {
        set_user_endpoint(ctx, backend);
    }
}

/// Whether connecting this socket straight to `backend` cannot work, so
/// the packets must be translated instead: it is bound to a loopback
/// address (the route out of the host refuses that source, `EINVAL`), or
/// it would take a tuple a socket of the host holds (only a socket with a
/// port of its own can clash, see the module docs; the local address is
/// the bound one, or the one the route to the container picks: its
/// network's gateway).
#[inline(always)]
fn leave_to_packets(ctx: &SockAddrContext, backend: Endpoint) -> bool {
    // SAFETY: `sk` of a sock_addr context is the socket of the syscall,
    // never null; `src_ip4` and `src_port` are readable 4-byte fields.
    let (src_ip, src_port) = unsafe {
        let sk = read_volatile(addr_of!((*ctx.sock_addr).__bindgen_anon_1.sk));
        (
            read_volatile(addr_of!((*sk).src_ip4)),
            read_volatile(addr_of!((*sk).src_port)),
        )
    };
    if src_ip.to_ne_bytes()[0] == 127 {
        return true;
    }
    if src_port == 0 {
        return false;
    }
    let local = if src_ip != 0 {
        src_ip
    } else {
        match fastpath::endpoint(backend.addr) {
            Some((_, ep)) => u32::from_ne_bytes(ep.gateway),
            None => return false,
        }
    };
    // As a reply would arrive: from the container's port to ours (host
    // order in `src_port`, wire order in the tuple).
    let ports =
        u32::from(u16::from_ne_bytes(backend.port)) | u32::from((src_port as u16).to_be()) << 16;
    hostsock::lookup_socket(
        ctx.as_ptr(),
        IPPROTO_TCP,
        u32::from_ne_bytes(backend.addr),
        local,
        ports,
    )
}

/// recvmsg4/getpeername4: container -> the address the application used.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    if protocol(ctx).is_none() {
        return;
    }
    let Some(rev) = DP_SOCK_REVNAT.get_ptr(socket_cookie(ctx)) else {
        return;
    };
    // SAFETY: a map value pointer is valid for the program's run; a concurrent
    // update may tear it, which the backend comparison below then rejects.
    let rev = unsafe { read_volatile(rev) };
    let peer = user_endpoint(ctx);
    if peer.addr == rev.backend_addr && peer.port == rev.backend_port {
        set_user_endpoint(
            ctx,
            Endpoint {
                addr: rev.orig_addr,
                port: rev.orig_port,
            },
        );
    }
}

/// The published port `dst` reaches, if any (the match rules are in the
/// module docs).
#[inline(always)]
fn lookup(dst: Endpoint, proto: u8) -> Option<PortTarget> {
    let mut key = PortKey {
        addr: dst.addr,
        port: dst.port,
        proto,
        _pad: 0,
    };
    if let Some(t) = DP_PORTS.get_ptr(key) {
        // SAFETY: map value pointer, valid for the program's run.
        return Some(unsafe { read_volatile(t) });
    }
    if !is_host_addr(dst.addr) {
        return None;
    }
    key.addr = [0; 4];
    // SAFETY: as above.
    DP_PORTS.get_ptr(key).map(|t| unsafe { read_volatile(t) })
}

/// Whether `addr` is the host itself: loopback or one of its addresses.
#[inline(always)]
fn is_host_addr(addr: [u8; 4]) -> bool {
    addr[0] == 127 || DP_HOST_ADDRS.get_ptr(addr).is_some()
}

/// The socket's cookie: unique per socket for the boot, never reused, so a
/// stale entry of a closed socket can only age out of the LRU map.
#[inline(always)]
pub(crate) fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper only reads the socket behind a valid sock_addr context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// TCP or UDP, the only protocols ports are published for.
#[inline(always)]
pub(crate) fn protocol(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: `protocol` is a readable 4-byte field of every sock_addr context.
    let p = unsafe { read_volatile(addr_of!((*ctx.sock_addr).protocol)) };
    match p {
        p if p == u32::from(IPPROTO_TCP) => Some(IPPROTO_TCP),
        p if p == u32::from(IPPROTO_UDP) => Some(IPPROTO_UDP),
        _ => None,
    }
}

/// The address the syscall carries (`user_ip4`/`user_port`). Both are
/// network order in memory; the kernel loads the 2-byte `sin_port` into the
/// low half of the 4-byte `user_port`, so its `u16` value, written back in
/// native order, is the port's wire bytes on either endianness.
#[inline(always)]
fn user_endpoint(ctx: &SockAddrContext) -> Endpoint {
    let sa = ctx.sock_addr;
    // SAFETY: full-width reads of readable fields of a valid context.
    let (ip, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    Endpoint {
        addr: ip.to_ne_bytes(),
        port: (port as u16).to_ne_bytes(),
    }
}

/// Rewrites the syscall's address. The kernel accepts only 4-byte stores to
/// these fields, hence the volatile full-width writes.
#[inline(always)]
fn set_user_endpoint(ctx: &SockAddrContext, ep: Endpoint) {
    let sa = ctx.sock_addr;
    // SAFETY: writable fields for connect4/sendmsg4/recvmsg4/getpeername4.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(ep.addr));
        write_volatile(
            addr_of_mut!((*sa).user_port),
            u32::from(u16::from_ne_bytes(ep.port)),
        );
    }
}
