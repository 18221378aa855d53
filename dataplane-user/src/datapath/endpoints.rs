//! The programs on an endpoint's host-side veth: `dp_from_container`
//! always, then `dp_from_container6` for an endpoint with an IPv6 address
//! (`dp_from_container` polices the IPv6 of the others). Each is a
//! direct-action `cls_bpf` filter on the veth's `clsact` ingress hook, at a
//! priority of its own ([`FILTER_PRIORITIES`], handle [`FILTER_HANDLE`]):
//! a tcx attachment waits for an RCU grace period with the RTNL held
//! (~15 ms, most of a connect, and the namespace's netlink requests queue
//! behind it), a filter for none.
//!
//! A filter holds its program, so attachments outlive the agent without a
//! pin; which pin root a filter belongs to is read from its program's maps
//! ([`OwnedMaps`]), so a load by another build (an upgrade) moves only its
//! own root's filters to its programs ([`relink_filters`]). Endpoints that
//! a build before the filters attached have pinned tcx links
//! (`links/<netns>_<ifname>_<program>_ingress`); those are kept, moved by
//! [`super::ebpf`]'s relink, and removed by [`detach_endpoint`] like the
//! filters.
//!
//! A connect prepares the attachment here ([`prepare_endpoint`]); the host
//! layer makes it on the new veth, still down. What the
//! programs read about the endpoint (`DP_ENDPOINTS`, `DP_ENDPOINTS6`,
//! `DP_ENDPOINT_ROUTES(6)`, `DP_SANDBOX_ADDRS`) is written with the rest of
//! the NAT maps ([`super::nat::apply`]).

use std::{
    collections::BTreeSet,
    ffi::CString,
    io,
    os::fd::{AsFd as _, OwnedFd},
};

use super::{
    bpffs::{current_netns_ino, PinRoot},
    ebpf::{ensure_detached, Dataplane, Direction, LoadError, PINNED_MAPS},
    nat::NatError,
};
use crate::sys::{
    bpf as sys_bpf,
    tc::{BpfFilter, Tc},
};

/// The IPv4 program on an endpoint's host-side veth (packets from the
/// container), the one whose filter says the endpoint is attached.
pub const ENDPOINT_PROGRAM: &str = "dp_from_container";

/// Every program on an endpoint's host-side veth, in run order: each family
/// has its own, and each passes the other family's packets on
/// (`TC_ACT_UNSPEC`, tcx's `TCX_NEXT`).
pub const ENDPOINT_PROGRAMS: [&str; 2] = [ENDPOINT_PROGRAM, "dp_from_container6"];

/// The tc priority of each endpoint program's filter, as
/// [`ENDPOINT_PROGRAMS`]: the lowest numbers, so they run before any
/// filter someone else adds to the veth.
pub const FILTER_PRIORITIES: [u16; 2] = [1, 2];

/// The handle of every endpoint filter (one per priority).
pub const FILTER_HANDLE: u32 = 1;

/// The programs an endpoint's veth gets, in run order.
pub fn endpoint_programs(ipv6: bool) -> &'static [&'static str] {
    if ipv6 {
        &ENDPOINT_PROGRAMS
    } else {
        &ENDPOINT_PROGRAMS[..1]
    }
}

/// The filter of [`ENDPOINT_PROGRAMS`]`[i]`.
fn is_endpoint_filter(f: &BpfFilter, i: usize) -> bool {
    f.priority == FILTER_PRIORITIES[i]
        && f.handle == FILTER_HANDLE
        && f.name == ENDPOINT_PROGRAMS[i]
        && f.direct_action
}

/// The index of the interface `ifname` in this thread's namespace; None
/// when there is none.
fn ifindex(ifname: &str) -> io::Result<Option<u32>> {
    let c = CString::new(ifname).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated name that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index != 0 {
        return Ok(Some(index));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODEV | libc::ENXIO) => Ok(None),
        _ => Err(e),
    }
}

/// The index of `ifname`, which must exist (an endpoint's veth to attach
/// to): a missing one is `ENODEV`.
fn existing_ifindex(ifname: &str) -> Result<u32, LoadError> {
    ifindex(ifname)
        .map_err(filter_err(ifname, "looking up"))?
        .ok_or_else(|| filter_err(ifname, "looking up")(io::Error::from_raw_os_error(libc::ENODEV)))
}

fn filter_err<'a>(ifname: &'a str, what: &'static str) -> impl Fn(io::Error) -> LoadError + 'a {
    move |source| LoadError::Filter {
        ifname: ifname.to_owned(),
        what,
        source,
    }
}

/// Whether `program` is on `host_ifname` as a tcx link an earlier build
/// pinned (the link is kept: a filter too would run it twice).
fn legacy_link(pins: &PinRoot, program: &str, host_ifname: &str) -> Result<bool, LoadError> {
    let ino = current_netns_ino().map_err(LoadError::Netns)?;
    Ok(pins
        .link(ino, host_ifname, program, Direction::Ingress.name())
        .exists())
}

/// Attaches the endpoint programs to a container's host-side veth (the
/// IPv6 one with `ipv6`); attachments that exist already are kept.
pub fn attach_endpoint(dp: &mut Dataplane, host_ifname: &str, ipv6: bool) -> Result<(), NatError> {
    let index = existing_ifindex(host_ifname)?;
    let present = Tc::open()
        .and_then(|mut tc| tc.bpf_filters(index))
        .map_err(filter_err(host_ifname, "listing the filters of"))?;
    let mut job = prepare_endpoint(dp, host_ifname, ipv6)?;
    job.progs
        .retain(|p| !present.iter().any(|f| is_endpoint_filter(f, p.index)));
    if job.progs.is_empty() {
        return Ok(());
    }
    job.run()
}

/// One endpoint program's filter, prepared.
#[derive(Debug)]
struct FilterJob {
    /// Into [`ENDPOINT_PROGRAMS`] and [`FILTER_PRIORITIES`].
    index: usize,
    prog: OwnedFd,
}

/// The endpoint programs' filters on a host-side veth, their programs
/// verified, to make on any thread of the agent's namespace.
#[derive(Debug)]
pub struct EndpointAttach {
    ifname: String,
    netns_ino: u64,
    progs: Vec<FilterJob>,
}

impl EndpointAttach {
    /// Adds the `clsact` qdisc (kept when there) and makes each filter run
    /// its program (created, or its program replaced). On a failure the
    /// filters made stay: they go with the veth, which the caller removes.
    pub fn run(self) -> Result<(), NatError> {
        if self.progs.is_empty() {
            return Ok(());
        }
        let ifname = self.ifname.as_str();
        if current_netns_ino().map_err(LoadError::Netns)? != self.netns_ino {
            return Err(LoadError::Filter {
                ifname: ifname.to_owned(),
                what: "attaching to",
                source: io::Error::other(
                    "the thread left the namespace the attachment was prepared in",
                ),
            }
            .into());
        }
        let index = existing_ifindex(ifname)?;
        let mut tc = Tc::open().map_err(filter_err(ifname, "opening netlink for"))?;
        tc.ensure_clsact(index)
            .map_err(filter_err(ifname, "adding the clsact qdisc to"))?;
        for p in &self.progs {
            tc.replace_bpf_filter(
                index,
                FILTER_PRIORITIES[p.index],
                FILTER_HANDLE,
                p.prog.as_fd(),
                ENDPOINT_PROGRAMS[p.index],
            )
            .map_err(|source| LoadError::Filter {
                ifname: ifname.to_owned(),
                what: "attaching a cls_bpf filter to",
                source,
            })?;
        }
        Ok(())
    }
}

/// [`attach_endpoint`]'s first half, on the dataplane: the programs
/// verified, those an earlier build attached with a pinned tcx link left
/// out (kept).
pub fn prepare_endpoint(
    dp: &mut Dataplane,
    host_ifname: &str,
    ipv6: bool,
) -> Result<EndpointAttach, NatError> {
    let netns_ino = current_netns_ino().map_err(LoadError::Netns)?;
    let mut progs = Vec::new();
    for (index, program) in endpoint_programs(ipv6).iter().enumerate() {
        if legacy_link(dp.pins(), program, host_ifname)? {
            continue;
        }
        progs.push(FilterJob {
            index,
            prog: dp.program_fd(program)?,
        });
    }
    Ok(EndpointAttach {
        ifname: host_ifname.to_owned(),
        netns_ino,
        progs,
    })
}

/// Removes the endpoint programs from a host-side veth: their filters
/// (none when the veth went with its namespace) and the pins of tcx links
/// an earlier build made.
pub fn detach_endpoint(pins: &PinRoot, host_ifname: &str) -> Result<(), NatError> {
    if let Some(index) = ifindex(host_ifname).map_err(filter_err(host_ifname, "looking up"))? {
        let mut tc = Tc::open().map_err(filter_err(host_ifname, "opening netlink for"))?;
        for priority in FILTER_PRIORITIES {
            match tc.delete_filter(index, priority, FILTER_HANDLE) {
                Ok(()) => {}
                // Not there, or the veth (or its qdisc) went meanwhile.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
                    ) => {}
                Err(source) => {
                    return Err(LoadError::Filter {
                        ifname: host_ifname.to_owned(),
                        what: "removing a filter from",
                        source,
                    }
                    .into())
                }
            }
        }
    }
    for program in ENDPOINT_PROGRAMS {
        ensure_detached(pins, program, host_ifname, Direction::Ingress)?;
    }
    Ok(())
}

/// Why [`ENDPOINT_PROGRAM`] is not on `host_ifname` (in this thread's
/// namespace), if it is not: neither its filter nor an earlier build's
/// pinned tcx link is there.
pub fn endpoint_unattached(pins: &PinRoot, host_ifname: &str) -> Option<String> {
    match legacy_link(pins, ENDPOINT_PROGRAM, host_ifname) {
        Ok(true) => return None,
        Ok(false) => {}
        Err(e) => return Some(crate::sys::error_chain(&e)),
    }
    let filters = match ifindex(host_ifname) {
        Ok(Some(index)) => Tc::open().and_then(|mut tc| tc.bpf_filters(index)),
        Ok(None) => return Some(format!("{host_ifname} does not exist")),
        Err(e) => Err(e),
    };
    match filters {
        Ok(f) if f.iter().any(|f| is_endpoint_filter(f, 0)) => None,
        Ok(_) => Some(format!(
            "{ENDPOINT_PROGRAM} is not attached to {host_ifname} (no cls_bpf filter at ingress \
             priority {} handle {FILTER_HANDLE})",
            FILTER_PRIORITIES[0]
        )),
        Err(e) => Some(format!("listing the tc filters of {host_ifname}: {e}")),
    }
}

/// The ids of the maps pinned under a root: a program that uses one of
/// them was loaded for that root (each root has maps of its own).
#[derive(Debug, Default)]
pub struct OwnedMaps(BTreeSet<u32>);

impl OwnedMaps {
    /// The maps pinned under `pins` now (read before a load migrates any,
    /// so the programs attached earlier, on the old maps, count as ours).
    pub fn read(pins: &PinRoot) -> OwnedMaps {
        OwnedMaps(
            PINNED_MAPS
                .iter()
                .filter_map(|m| sys_bpf::pinned_map_id(&pins.map(m)).ok())
                .collect(),
        )
    }

    /// Whether the program with id `prog_id` uses one of these maps.
    fn owns(&self, prog_id: u32) -> bool {
        sys_bpf::prog_map_ids(prog_id).is_ok_and(|ids| ids.iter().any(|id| self.0.contains(id)))
    }
}

/// Every endpoint filter in this thread's namespace, whichever root's:
/// `(ifindex, index into ENDPOINT_PROGRAMS, the filter)`.
pub fn endpoint_filters() -> io::Result<Vec<(u32, usize, BpfFilter)>> {
    let mut tc = Tc::open()?;
    let mut out = Vec::new();
    for index in interface_indexes()? {
        let filters = match tc.bpf_filters(index) {
            Ok(f) => f,
            // Gone since the listing.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => continue,
            Err(e) => return Err(e),
        };
        for f in filters {
            if let Some(i) = (0..ENDPOINT_PROGRAMS.len()).find(|i| is_endpoint_filter(&f, *i)) {
                out.push((index, i, f));
            }
        }
    }
    Ok(out)
}

/// [`endpoint_filters`] whose program is this root's (`owned`).
fn owned_filters(owned: &OwnedMaps) -> io::Result<Vec<(u32, usize)>> {
    Ok(endpoint_filters()?
        .into_iter()
        .filter(|(_, _, f)| owned.owns(f.prog_id))
        .map(|(index, i, _)| (index, i))
        .collect())
}

/// Moves every endpoint filter of this root in this thread's namespace to
/// `dp`'s program of the same name (each replaced atomically). Best effort:
/// a filter that cannot be moved keeps its program, with a warning.
pub fn relink_filters(dp: &mut Dataplane, owned: &OwnedMaps) {
    let found = owned_filters(owned).and_then(|f| Ok((f, Tc::open()?)));
    let (filters, mut tc) = match found {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("endpoint filters left on the old programs: listing them: {e}");
            return;
        }
    };
    for (index, i) in filters {
        let program = ENDPOINT_PROGRAMS[i];
        let moved = dp
            .program_fd(program)
            .map_err(NatError::from)
            .and_then(|fd| {
                tc.replace_bpf_filter(
                    index,
                    FILTER_PRIORITIES[i],
                    FILTER_HANDLE,
                    fd.as_fd(),
                    program,
                )
                .map_err(|source| {
                    LoadError::Filter {
                        ifname: format!("interface {index}"),
                        what: "replacing the program of",
                        source,
                    }
                    .into()
                })
            });
        match moved {
            Ok(()) => tracing::info!(ifindex = index, "filter moved to the new {program}"),
            Err(e) => tracing::warn!(
                ifindex = index,
                "filter of {program} left on the old maps: {}",
                crate::sys::error_chain(&e)
            ),
        }
    }
}

/// Removes every endpoint filter of this root in this thread's namespace
/// (those of endpoints no state knows of), for a cleanup. Best effort:
/// every failure is returned.
pub fn remove_filters(pins: &PinRoot) -> Vec<String> {
    let owned = OwnedMaps::read(pins);
    let (filters, mut tc) = match owned_filters(&owned).and_then(|f| Ok((f, Tc::open()?))) {
        Ok(f) => f,
        Err(e) => return vec![format!("listing the endpoint filters: {e}")],
    };
    let mut errors = Vec::new();
    for (index, i) in filters {
        match tc.delete_filter(index, FILTER_PRIORITIES[i], FILTER_HANDLE) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {}
            Err(e) => errors.push(format!(
                "removing the {} filter of interface {index}: {e}",
                ENDPOINT_PROGRAMS[i]
            )),
        }
    }
    errors
}

/// The index of every interface in this thread's namespace.
fn interface_indexes() -> io::Result<Vec<u32>> {
    // SAFETY: if_nameindex returns an array ending in a zero entry, freed
    // below with if_freenameindex and not used after.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut p = list;
        while (*p).if_index != 0 {
            out.push((*p).if_index);
            p = p.add(1);
        }
        libc::if_freenameindex(list);
        Ok(out)
    }
}
