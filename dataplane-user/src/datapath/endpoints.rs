//! The program on every endpoint's host-side veth (`dp_from_container`):
//! attaching it and removing its pin. What it reads about the endpoint
//! (`DP_ENDPOINTS`, `DP_ENDPOINT_ROUTES`, `DP_SANDBOX_ADDRS`) is written with
//! the rest of the NAT maps ([`super::nat::apply`]).

use super::{
    bpffs::PinRoot,
    ebpf::{ensure_detached, Dataplane, Direction},
    nat::NatError,
};

/// The program on an endpoint's host-side veth (packets from the container).
pub const ENDPOINT_PROGRAM: &str = "dp_from_container";

/// Attaches the endpoint program to a container's host-side veth; an
/// existing attachment is kept.
pub fn attach_endpoint(dp: &mut Dataplane, host_ifname: &str) -> Result<(), NatError> {
    Ok(dp.ensure_attached(ENDPOINT_PROGRAM, host_ifname, Direction::Ingress)?)
}

/// Removes the endpoint program's pin (its link is gone already when the
/// veth went with its namespace).
pub fn detach_endpoint(pins: &PinRoot, host_ifname: &str) -> Result<(), NatError> {
    Ok(ensure_detached(
        pins,
        ENDPOINT_PROGRAM,
        host_ifname,
        Direction::Ingress,
    )?)
}
