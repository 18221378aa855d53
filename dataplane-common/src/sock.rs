//! State of the cgroup sock_addr hooks: what a host-local socket asked for
//! before connect4/sendmsg4 sent it to a container, so recvmsg4 and
//! getpeername4 can show the original address again.

use bytemuck::{Pod, Zeroable};

/// Keyed by socket cookie (`bpf_get_socket_cookie`, a `u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRevNat {
    /// What the application connected/sent to (the published address).
    pub orig_addr: [u8; 4],
    /// Network byte order.
    pub orig_port: [u8; 2],
    /// [`REVNAT_PER_PACKET`].
    pub flags: u8,
    pub _pad: u8,
    /// Where the hook sent it (the container).
    pub backend_addr: [u8; 4],
    pub backend_port: [u8; 2],
    pub _pad2: [u8; 2],
}
const _: () = assert!(size_of::<SockRevNat>() == 16);

/// connect4 (connect6) left the destination alone (the translated tuple was
/// taken by another socket of the same bound port, or the socket is bound
/// to a loopback address): `dp_local_out` (`dp_local_out6`) translates the
/// connection per packet instead, and the backend is where it goes.
pub const REVNAT_PER_PACKET: u8 = 1;

crate::user_pod!(SockRevNat);

/// [`SockRevNat`] for IPv6 sockets (`DP_SOCK_REVNAT6`, keyed by socket
/// cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRevNat6 {
    pub orig_addr: [u8; 16],
    /// Network byte order.
    pub orig_port: [u8; 2],
    /// [`REVNAT_PER_PACKET`] (what was padding before: 0, no flag, in
    /// entries of earlier releases).
    pub flags: u8,
    pub _pad: u8,
    pub backend_addr: [u8; 16],
    pub backend_port: [u8; 2],
    pub _pad2: [u8; 2],
}
const _: () = assert!(size_of::<SockRevNat6>() == 40);

crate::user_pod!(SockRevNat6);
