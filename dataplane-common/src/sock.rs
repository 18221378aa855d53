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
    pub _pad: [u8; 2],
    /// Where the hook sent it (the container).
    pub backend_addr: [u8; 4],
    pub backend_port: [u8; 2],
    pub _pad2: [u8; 2],
}
const _: () = assert!(size_of::<SockRevNat>() == 16);

crate::user_pod!(SockRevNat);
