//! What the manager asks of the datapath, as one trait ([`Datapath`]): hold
//! this NAT state (in full or as a delta), these compiled filters, these
//! programs on these interfaces, and forget the flows of what is gone.
//! [`BpfDatapath`] is the real one (the eBPF object and its pinned maps,
//! loaded on first use); [`RecordingDatapath`] records what it was asked to
//! hold, for tests of the manager that run without root.

use std::collections::BTreeSet;

use aya::maps::{HashMap, MapData};
use dataplane_common::{
    maps,
    nat::{NatConfig, PortKey, PortTarget},
};

use crate::datapath::{
    bpffs::PinRoot,
    conntrack::{self, Gone},
    ebpf::Dataplane,
    endpoints,
    filter::{self, FilterError},
    maps::MapsError,
    nat::{self, Desired, NatDelta, NatError},
};

/// A filter set the datapath could not take: the object did not load, or
/// the maps refused it.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Nat(#[from] NatError),
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// The attachment of an endpoint's programs, to run by the host layer on a
/// thread in the agent's namespace ([`Datapath::prepare_endpoint`]).
pub type EndpointJob = Box<dyn FnOnce() -> Result<(), NatError> + Send>;

/// The datapath as the manager sees it. Every call is synchronous: map
/// writes and program attachments are system calls, not round trips.
pub trait Datapath {
    /// Masquerade settings for uplink programs attached from now on.
    fn set_nat_config(&mut self, nat: NatConfig);
    /// Loads (verifies) the endpoint programs now, so the first attachment
    /// does not pay for it.
    fn preload(&mut self) -> Result<(), NatError>;
    /// Makes the NAT maps hold exactly `want`, whatever they hold now.
    fn apply_nat(&mut self, want: &Desired) -> Result<(), NatError>;
    /// Takes the NAT maps from `old` (what was last applied) to `new`.
    fn apply_nat_changes(&mut self, old: &Desired, new: &Desired) -> Result<(), NatError>;
    /// Writes the published-port entries of a few keys (one request's
    /// ports), the rest of the maps untouched.
    fn apply_nat_delta(&mut self, delta: &NatDelta) -> Result<(), NatError>;
    /// Makes the filter maps hold `compiled`.
    fn apply_filters(&mut self, compiled: &filter::Compiled) -> Result<(), DatapathError>;
    fn attach_uplink(&mut self, ifname: &str) -> Result<(), NatError>;
    fn detach_uplink(&mut self, ifname: &str) -> Result<(), NatError>;
    /// Attaches the endpoint programs (the IPv6 one with `ipv6`).
    fn attach_endpoint(&mut self, host_ifname: &str, ipv6: bool) -> Result<(), NatError>;
    /// [`Datapath::attach_endpoint`] as a job the host layer runs once the
    /// veth exists (the programs are verified now): the veth's host end
    /// comes up only after it.
    fn prepare_endpoint(&mut self, host_ifname: &str, ipv6: bool) -> Result<EndpointJob, NatError>;
    fn detach_endpoint(&mut self, host_ifname: &str) -> Result<(), NatError>;
    /// Why the endpoint program is not attached to `host_ifname`, if it
    /// is not (or cannot be told).
    fn endpoint_unattached(&self, host_ifname: &str) -> Option<String>;
    /// The `count` lowest counter slots `used` does not mark, ascending,
    /// their counts zeroed (in one batch).
    fn claim_stats_slots(&mut self, used: &[bool], count: usize) -> Result<Vec<u32>, NatError>;
    /// The removal of the conntrack entries of what is gone, as a job the
    /// caller runs on a blocking thread (it walks whole tables, seconds
    /// for a full one, which must not hold the agent's one runtime
    /// thread); the job returns the errors met, as messages with their
    /// sources.
    fn purge_conntrack(&mut self, gone: &Gone) -> PurgeJob;
    /// What `DP_PORTS` holds for each key (None: no entry).
    fn port_targets(&self, keys: &[PortKey]) -> Result<Vec<Option<PortTarget>>, String>;
}

/// See [`Datapath::purge_conntrack`].
pub type PurgeJob = Box<dyn FnOnce() -> Vec<String> + Send + 'static>;

/// The eBPF object and its pinned maps, loaded once on first use (loading
/// costs more than most operations) with the masquerade settings of the
/// time (its programs' globals).
pub struct BpfDatapath {
    pins: PinRoot,
    nat: NatConfig,
    loaded: Option<(NatConfig, Dataplane)>,
}

impl BpfDatapath {
    /// A datapath over `pins`, with an object a previous manager loaded.
    pub fn new(pins: &PinRoot, loaded: Option<(NatConfig, Dataplane)>) -> BpfDatapath {
        BpfDatapath {
            pins: pins.clone(),
            nat: NatConfig::DEFAULT,
            loaded,
        }
    }

    pub fn pins(&self) -> &PinRoot {
        &self.pins
    }

    /// The loaded object, for the next manager of this process.
    pub fn into_loaded(self) -> Option<(NatConfig, Dataplane)> {
        self.loaded
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    fn dp(&mut self) -> Result<&mut Dataplane, NatError> {
        if self.loaded.is_none() {
            let dp = Dataplane::load_with(&self.pins, &self.nat)?;
            self.loaded = Some((self.nat, dp));
        }
        match &mut self.loaded {
            Some((_, dp)) => Ok(dp),
            None => Err(NatError::Map(MapsError::NoMap("the eBPF object"))),
        }
    }
}

impl Datapath for BpfDatapath {
    fn set_nat_config(&mut self, nat: NatConfig) {
        self.nat = nat;
        // An object loaded with other settings would attach programs with
        // them.
        if self.loaded.as_ref().is_some_and(|(l, _)| *l != nat) {
            self.loaded = None;
        }
    }

    fn preload(&mut self) -> Result<(), NatError> {
        for program in endpoints::ENDPOINT_PROGRAMS {
            self.dp()?.tc_program(program)?;
        }
        Ok(())
    }

    fn apply_nat(&mut self, want: &Desired) -> Result<(), NatError> {
        nat::apply(self.dp()?, want)
    }

    fn apply_nat_changes(&mut self, old: &Desired, new: &Desired) -> Result<(), NatError> {
        nat::apply_changes(self.dp()?, old, new)
    }

    fn apply_nat_delta(&mut self, delta: &NatDelta) -> Result<(), NatError> {
        nat::apply_delta(self.dp()?, delta)
    }

    fn apply_filters(&mut self, compiled: &filter::Compiled) -> Result<(), DatapathError> {
        Ok(filter::apply(self.dp()?, compiled)?)
    }

    fn attach_uplink(&mut self, ifname: &str) -> Result<(), NatError> {
        nat::attach_uplink(self.dp()?, ifname)
    }

    fn detach_uplink(&mut self, ifname: &str) -> Result<(), NatError> {
        nat::detach_uplink(&self.pins, ifname)
    }

    fn attach_endpoint(&mut self, host_ifname: &str, ipv6: bool) -> Result<(), NatError> {
        nat::attach_endpoint(self.dp()?, host_ifname, ipv6)
    }

    fn prepare_endpoint(&mut self, host_ifname: &str, ipv6: bool) -> Result<EndpointJob, NatError> {
        let attach = endpoints::prepare_endpoint(self.dp()?, host_ifname, ipv6)?;
        Ok(Box::new(move || attach.run()))
    }

    fn detach_endpoint(&mut self, host_ifname: &str) -> Result<(), NatError> {
        nat::detach_endpoint(&self.pins, host_ifname)
    }

    fn endpoint_unattached(&self, host_ifname: &str) -> Option<String> {
        endpoints::endpoint_unattached(&self.pins, host_ifname)
    }

    fn claim_stats_slots(&mut self, used: &[bool], count: usize) -> Result<Vec<u32>, NatError> {
        nat::claim_stats_slots(self.dp()?, used, count)
    }

    fn purge_conntrack(&mut self, gone: &Gone) -> PurgeJob {
        let (pins, gone) = (self.pins.clone(), gone.clone());
        Box::new(move || {
            conntrack::purge(&pins, &gone)
                .errors
                .iter()
                .map(|e| crate::sys::error_chain(e))
                .collect()
        })
    }

    fn port_targets(&self, keys: &[PortKey]) -> Result<Vec<Option<PortTarget>>, String> {
        let table: HashMap<MapData, PortKey, PortTarget> =
            crate::datapath::maps::open(&self.pins, maps::PORTS)
                .map_err(|e| crate::sys::error_chain(&e))?;
        Ok(keys.iter().map(|k| table.get(k, 0).ok()).collect())
    }
}

/// A datapath that holds what it is told in memory and records every call,
/// for tests of the manager. Operations named in [`Self::fail`] fail.
#[derive(Debug, Default)]
pub struct RecordingDatapath {
    /// Every call, as `op` or `op arg`, in order.
    pub calls: Vec<String>,
    /// What the NAT maps hold (the last state applied).
    pub nat: Desired,
    /// Rules of the last compiled filter set applied.
    pub filter_rules: Option<u32>,
    pub uplinks: BTreeSet<String>,
    pub endpoints: BTreeSet<String>,
    /// Everything purged so far.
    pub purged: Gone,
    /// Operation names (as in `calls`, without the argument) that fail.
    pub fail: BTreeSet<&'static str>,
}

impl RecordingDatapath {
    fn call(&mut self, op: &'static str, arg: &str) -> Result<(), NatError> {
        self.calls.push(if arg.is_empty() {
            op.to_owned()
        } else {
            format!("{op} {arg}")
        });
        if self.fail.contains(op) {
            return Err(NatError::Map(MapsError::Cpus(std::io::Error::other(
                format!("{op}: injected failure"),
            ))));
        }
        Ok(())
    }

    /// How many calls named `op` were made.
    pub fn count(&self, op: &str) -> usize {
        self.calls
            .iter()
            .filter(|c| c.split(' ').next() == Some(op))
            .count()
    }
}

/// `Desired` is not `Clone` (nothing outside tests needs a copy).
fn copy(d: &Desired) -> Desired {
    Desired {
        ports: d.ports.clone(),
        subnets: d.subnets.clone(),
        endpoints: d.endpoints.clone(),
        endpoint_routes: d.endpoint_routes.clone(),
        sandbox_addrs: d.sandbox_addrs.clone(),
        host_addrs: d.host_addrs.clone(),
        uplinks: d.uplinks.clone(),
        open_ports: d.open_ports.clone(),
        trusted_ifaces: d.trusted_ifaces.clone(),
        subnets6: d.subnets6.clone(),
        endpoints6: d.endpoints6.clone(),
        endpoint_routes6: d.endpoint_routes6.clone(),
        sandbox_addrs6: d.sandbox_addrs6.clone(),
        ports6: d.ports6.clone(),
        host_addrs6: d.host_addrs6.clone(),
        uplinks6: d.uplinks6.clone(),
        open_ports6: d.open_ports6.clone(),
    }
}

impl Datapath for RecordingDatapath {
    fn set_nat_config(&mut self, _nat: NatConfig) {}

    fn preload(&mut self) -> Result<(), NatError> {
        self.call("preload", "")
    }

    fn apply_nat(&mut self, want: &Desired) -> Result<(), NatError> {
        self.call("apply_nat", "")?;
        self.nat = copy(want);
        Ok(())
    }

    fn apply_nat_changes(&mut self, old: &Desired, new: &Desired) -> Result<(), NatError> {
        self.call("apply_nat_changes", "")?;
        if *old != self.nat {
            return Err(NatError::Map(MapsError::NoMap(
                "DP_* (the delta's base is not what is held)",
            )));
        }
        self.nat = copy(new);
        Ok(())
    }

    fn apply_nat_delta(&mut self, delta: &NatDelta) -> Result<(), NatError> {
        self.call("apply_nat_delta", "")?;
        // What the maps would do: a key's entry replaced or deleted
        // whatever it held.
        delta.apply_to(&mut self.nat);
        Ok(())
    }

    fn apply_filters(&mut self, compiled: &filter::Compiled) -> Result<(), DatapathError> {
        self.call("apply_filters", "")?;
        self.filter_rules = Some(compiled.rules());
        Ok(())
    }

    fn attach_uplink(&mut self, ifname: &str) -> Result<(), NatError> {
        self.call("attach_uplink", ifname)?;
        self.uplinks.insert(ifname.to_owned());
        Ok(())
    }

    fn detach_uplink(&mut self, ifname: &str) -> Result<(), NatError> {
        self.call("detach_uplink", ifname)?;
        self.uplinks.remove(ifname);
        Ok(())
    }

    fn attach_endpoint(&mut self, host_ifname: &str, _ipv6: bool) -> Result<(), NatError> {
        self.call("attach_endpoint", host_ifname)?;
        self.endpoints.insert(host_ifname.to_owned());
        Ok(())
    }

    fn prepare_endpoint(&mut self, host_ifname: &str, ipv6: bool) -> Result<EndpointJob, NatError> {
        // Recorded as the attachment itself: the job's thread cannot reach
        // the recording, and the real one fails only where this would.
        self.attach_endpoint(host_ifname, ipv6)?;
        Ok(Box::new(|| Ok(())))
    }

    fn detach_endpoint(&mut self, host_ifname: &str) -> Result<(), NatError> {
        self.call("detach_endpoint", host_ifname)?;
        self.endpoints.remove(host_ifname);
        Ok(())
    }

    fn endpoint_unattached(&self, host_ifname: &str) -> Option<String> {
        (!self.endpoints.contains(host_ifname))
            .then(|| format!("{} is not attached to {host_ifname}", nat::ENDPOINT_PROGRAM))
    }

    fn claim_stats_slots(&mut self, used: &[bool], count: usize) -> Result<Vec<u32>, NatError> {
        self.call("claim_stats_slots", "")?;
        nat::free_slots(used, dataplane_common::nat::MAX_PORT_MAPPINGS, count)
    }

    fn purge_conntrack(&mut self, gone: &Gone) -> PurgeJob {
        if gone.is_empty() {
            return Box::new(Vec::new);
        }
        let errors = match self.call("purge_conntrack", "") {
            Ok(()) => {
                self.purged.addrs.extend(gone.addrs.iter().copied());
                self.purged.mappings.extend(gone.mappings.iter().copied());
                Vec::new()
            }
            Err(e) => vec![e.to_string()],
        };
        Box::new(move || errors)
    }

    fn port_targets(&self, keys: &[PortKey]) -> Result<Vec<Option<PortTarget>>, String> {
        Ok(keys
            .iter()
            .map(|k| self.nat.ports.get(k).copied())
            .collect())
    }
}
