//! The programs on an endpoint's host-side veth: `dp_from_container`
//! always, then `dp_from_container6` for an endpoint with an IPv6 address
//! (`dp_from_container` polices the IPv6 of the others: each tcx attach
//! waits for an RCU grace period, ~10-15 ms of a connect, so an IPv4-only
//! endpoint pays for one). Attaching them and removing their pins; a
//! connect prepares the attachment here ([`prepare_endpoint`]) and makes it
//! on a thread of its own while it configures the namespace. What they read about the endpoint (`DP_ENDPOINTS`,
//! `DP_ENDPOINTS6`, `DP_ENDPOINT_ROUTES(6)`, `DP_SANDBOX_ADDRS`) is written with
//! the rest of the NAT maps ([`super::nat::apply`]).

use super::{
    bpffs::PinRoot,
    ebpf::{ensure_detached, Dataplane, Direction, TcxJob},
    nat::NatError,
};

/// The IPv4 program on an endpoint's host-side veth (packets from the
/// container), the one whose pin says the endpoint is attached.
pub const ENDPOINT_PROGRAM: &str = "dp_from_container";

/// Every program on an endpoint's host-side veth, in tcx order: each family
/// has its own, and each passes the other family's packets on.
pub const ENDPOINT_PROGRAMS: [&str; 2] = [ENDPOINT_PROGRAM, "dp_from_container6"];

/// The programs an endpoint's veth gets, in tcx order.
pub fn endpoint_programs(ipv6: bool) -> &'static [&'static str] {
    if ipv6 {
        &ENDPOINT_PROGRAMS
    } else {
        &ENDPOINT_PROGRAMS[..1]
    }
}

/// Attaches the endpoint programs to a container's host-side veth (the
/// IPv6 one with `ipv6`); existing attachments are kept.
pub fn attach_endpoint(dp: &mut Dataplane, host_ifname: &str, ipv6: bool) -> Result<(), NatError> {
    for program in endpoint_programs(ipv6) {
        dp.ensure_attached(program, host_ifname, Direction::Ingress)?;
    }
    Ok(())
}

/// The endpoint programs' attachments to a host-side veth, verified and
/// with their pins free, to make on any thread of the agent's namespace
/// (each waits for an RCU grace period).
#[derive(Debug)]
pub struct EndpointAttach {
    jobs: Vec<TcxJob>,
}

impl EndpointAttach {
    /// Attaches in tcx order. On a failure the attachments made are
    /// unpinned again (their links go with the veth).
    pub fn run(self) -> Result<(), NatError> {
        let mut made = Vec::new();
        for job in self.jobs {
            match job.run() {
                Ok(pin) => made.push(pin),
                Err(e) => {
                    for pin in made {
                        // Best effort: the pin of a link whose veth is
                        // about to go; a leftover is found by reconcile.
                        let _ = std::fs::remove_file(pin);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

/// [`attach_endpoint`]'s first half, on the dataplane: programs already
/// attached are kept (no job for them).
pub fn prepare_endpoint(
    dp: &mut Dataplane,
    host_ifname: &str,
    ipv6: bool,
) -> Result<EndpointAttach, NatError> {
    let mut jobs = Vec::new();
    for program in endpoint_programs(ipv6) {
        jobs.extend(dp.tcx_job(program, host_ifname, Direction::Ingress)?);
    }
    Ok(EndpointAttach { jobs })
}

/// Removes the endpoint programs' pins (their links are gone already when
/// the veth went with its namespace).
pub fn detach_endpoint(pins: &PinRoot, host_ifname: &str) -> Result<(), NatError> {
    for program in ENDPOINT_PROGRAMS {
        ensure_detached(pins, program, host_ifname, Direction::Ingress)?;
    }
    Ok(())
}
