//! The network manager: every change to networks and endpoints goes through
//! here, under the state lock, in the order check input -> change the kernel
//! -> persist. A failed kernel change is undone before the error returns, so
//! the persisted state and the kernel never disagree about what exists.
//!
//! This file holds the manager itself (open, keep, the state transaction
//! [`Manager::change`] and the datapath sync); its operations live by noun
//! in `networks`, `endpoints`, `publish`, `uplinks`, `filters` and
//! `reconcile`, the front doors' typed requests in `requests`, and the
//! CNI and Docker operations in `cni` and `docker`. The kernel is reached
//! only through two seams: [`Datapath`] (maps and programs) and [`Host`]
//! (links, namespaces, sysctls), so the logic runs in unit tests (`tests`)
//! against a recording datapath and a fake host.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use dataplane_common::nat::NatConfig;

use super::{
    desired,
    driver::{BridgeError, DriverError},
    host::Host,
    ipam::{IpamError, MalformedMac},
    model::CreateError,
    ports::{PortMapping, PublishError},
};
use crate::{
    control::state::{apply_ports, Durable, JournalSync, Mark, State, StateError, StateStore},
    datapath::{
        bpffs::PinRoot,
        conntrack::Gone,
        ebpf::Dataplane,
        filter,
        nat::{self, NatError},
        BpfDatapath, Datapath, DatapathError,
    },
    sys::netlink::{Netlink, NetlinkError},
};

mod cni;
mod docker;
mod endpoints;
mod filters;
mod networks;
mod overlay;
mod publish;
mod reconcile;
mod requests;
mod uplinks;

pub use cni::CniNetError;
use filters::{compile, FilterInputs};
pub use requests::{ConnectArgs, ConnectRequest, ConnectTo, PublishSpecs};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Mac(#[from] MalformedMac),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Nat(#[from] NatError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("--publish {mapping}: {holder} already publishes {existing}")]
    PortConflict {
        mapping: String,
        holder: String,
        existing: String,
    },
    #[error(
        "--publish {mapping}: {socket} is in use on the host by {process}; nothing was published"
    )]
    HostPortInUse {
        mapping: String,
        socket: String,
        process: String,
    },
    #[error("--publish {request}: no free host port in {range} (the last one tried: {last})")]
    NoFreePort {
        request: String,
        range: String,
        last: String,
    },
    #[error("reading the host's sockets (/proc/self/net) to find a free port: {0}")]
    HostSockets(std::io::Error),
    #[error("--publish {mapping}: endpoint {endpoint} does not publish it")]
    NotPublished { mapping: String, endpoint: String },
    #[error("uplink {0}: no such interface in the host namespace")]
    UnknownUplink(String),
    #[error("filter {0}: no such rule (see `dataplane filter ls`)")]
    UnknownFilter(u32),
    #[error(transparent)]
    Filter(#[from] filter::FilterError),
    /// A rule of a `filter_add_many` request, by its index in `rules`.
    #[error("rules[{index}]")]
    FilterInRequest {
        index: usize,
        #[source]
        source: Box<NetworkError>,
    },
    #[error("uplink {0}: already added")]
    DuplicateUplink(String),
    #[error("uplink {0}: not an uplink (see `dataplane uplink ls`)")]
    NotUplink(String),
    #[error("network {0}: no such network")]
    UnknownNetwork(String),
    #[error("network {0}: a network with this name already exists")]
    DuplicateName(String),
    #[error("network {0}: a pre-defined network cannot be removed")]
    Predefined(String),
    #[error(
        "network {network}: {count} endpoint(s) attached ({names}); disconnect them or use --force"
    )]
    InUse {
        network: String,
        count: usize,
        names: String,
    },
    #[error("netns {0}: no such network namespace")]
    UnknownNetns(String),
    #[error("network {network}: {netns} is already connected as endpoint {endpoint}")]
    AlreadyConnected {
        network: String,
        netns: String,
        endpoint: String,
    },
    #[error("network {network}: an endpoint named {name} already exists")]
    DuplicateEndpoint { network: String, name: String },
    #[error("--ifname {ifname}: {netns} already has an interface of that name")]
    IfnameTaken { ifname: String, netns: String },
    #[error("--ifname {0}: not a valid interface name (1-15 bytes, no '/', ':' or white space)")]
    BadIfname(String),
    #[error("--name {0:?}: must start with a letter or digit and contain only [a-zA-Z0-9_.-]")]
    BadEndpointName(String),
    #[error("--alias {0}")]
    BadAlias(String),
    #[error("network {network}: no endpoint {what}")]
    UnknownEndpoint { network: String, what: String },
    #[error("container:{0}: no endpoint of that name on any network")]
    UnknownContainer(String),
    #[error("{network}: {option} does not apply to the {driver} driver")]
    NotApplicable {
        network: String,
        option: &'static str,
        driver: &'static str,
    },
    #[error("{option} {value}: network {network} has no {family}")]
    NoFamily {
        network: String,
        option: &'static str,
        value: String,
        family: &'static str,
    },
    #[error("network {network}: NETNS is required")]
    NetnsRequired { network: String },
    #[error("waiting for the state lock")]
    LockTask(#[source] tokio::task::JoinError),
    #[error("waiting for the state journal's fsync")]
    SyncTask(#[source] tokio::task::JoinError),
    #[error("getting random bytes for an id")]
    Random(#[source] std::io::Error),
    #[error("enabling IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
    #[error(transparent)]
    Docker(#[from] DockerOpError),
    #[error("{context}: {}", .errors.join("; "))]
    Teardown {
        context: String,
        errors: Vec<String>,
    },
    #[error(transparent)]
    Cni(#[from] CniNetError),
    #[error(transparent)]
    Cluster(#[from] crate::control::cluster::ClusterError),
}

/// A typed request needs no parsing: nothing can go wrong.
impl From<std::convert::Infallible> for NetworkError {
    fn from(e: std::convert::Infallible) -> NetworkError {
        match e {}
    }
}

pub use docker::{
    docker_network_name, docker_veth_names, DockerJoin, DockerOpError, DockerPortBinding,
    EPHEMERAL_PORTS,
};

/// Takes the state lock off the async threads: waiting for another holder
/// must not stall a runtime whose other tasks (the holder's, in the agent)
/// need to run to release it.
async fn lock_state(dir: &Path) -> Result<StateStore, NetworkError> {
    // Free (the usual case in the agent): taken here, without a thread
    // hand-off.
    if let Some(store) = StateStore::try_open(dir)? {
        return Ok(store);
    }
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || StateStore::open(&dir))
        .await
        .map_err(NetworkError::LockTask)?
        .map_err(NetworkError::from)
}

/// Resolves a namespace argument: a bare name lives under /var/run/netns.
pub fn netns_path(arg: &str) -> PathBuf {
    if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        PathBuf::from("/var/run/netns").join(arg)
    }
}

fn random_hex(bytes: usize) -> Result<String, NetworkError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| NetworkError::Random(e.into()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// Identity of a namespace file, to tell when two paths are one namespace.
fn netns_ino(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The manager over a datapath `D` and a host `H`: by default the eBPF
/// object and the host namespace's netlink connection; tests use a
/// [`RecordingDatapath`](crate::datapath::RecordingDatapath) and a
/// [`FakeHost`](super::host::FakeHost).
pub struct Manager<D = BpfDatapath, H = Netlink> {
    store: StateStore,
    state: State,
    host: H,
    dp: D,
    /// What the maps were last set to by this process, so the next change
    /// writes only its difference; None: unknown, reconcile in full.
    applied: Option<Applied>,
    /// The cluster of overlay networks, when the agent has a store.
    cluster: Option<std::sync::Arc<crate::control::cluster::Cluster>>,
    /// The port allocator's index of the state's mappings, kept while only
    /// `publish add|rm` change them (None: build it when needed).
    ports: Option<publish::PortIndex>,
    /// A rule set `filter add` compiled to check it, and its inputs: the
    /// write that follows uses it rather than compiling it again.
    compiled: Option<(FilterInputs, filter::Compiled)>,
}

/// The maps' contents as last written, and when they were last reconciled
/// in full (anything edited behind the agent's back is repaired then).
struct Applied {
    nat: nat::Desired,
    filters: Option<FilterInputs>,
    reconciled: Instant,
}

/// How long map deltas are trusted before the next change reconciles the
/// maps in full.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// What a long-lived caller (the agent) keeps between requests, so one
/// request costs what it changes, not a reload: the loaded eBPF object
/// (programs stay verified), the netlink connection, the state as this
/// process last read or wrote it, and what the maps were last set to.
/// Every part is checked before reuse: the state against the files'
/// [`Mark`], the object against the pins' identity.
#[derive(Default)]
pub struct Cache {
    host: Option<Netlink>,
    state: Option<(Mark, State)>,
    dp: Option<(PinId, NatConfig, Dataplane)>,
    applied: Option<Applied>,
    /// The journal's group commit, shared by every request's store.
    sync: Option<std::sync::Arc<JournalSync>>,
    /// The port allocator's index, of the state kept beside it.
    ports: Option<publish::PortIndex>,
}

impl Cache {
    /// The state the last request left, if it changed since `last` (None
    /// while a request holds the cache, before the first, or unchanged):
    /// what readers of the agent's state in the same process (the DNS
    /// responder) take instead of reading the files under the state lock,
    /// which would make every request wait for them.
    pub fn state_since(&self, last: Option<Mark>) -> Option<(Mark, &State)> {
        let (mark, state) = self.state.as_ref()?;
        (Some(*mark) != last).then_some((*mark, state))
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("state", &self.state.as_ref().map(|(m, _)| m))
            .field("loaded", &self.dp.is_some())
            .finish_non_exhaustive()
    }
}

/// Identity of the pinned maps: `dataplane cleanup` removes them, and an
/// object loaded before that would write to maps no program reads.
type PinId = Option<(u64, u64)>;

fn pin_id(pins: &PinRoot) -> PinId {
    netns_ino(&pins.map(dataplane_common::maps::PORTS))
}

impl Manager {
    /// Locks and loads the state in `dir`; a first start creates Docker's
    /// predefined networks (and the default bridge in the kernel).
    pub async fn open(dir: &Path, pins: &PinRoot) -> Result<Manager, NetworkError> {
        Manager::open_cached(dir, pins, None).await
    }

    /// [`Manager::open`] reusing what `slot` kept from the last manager of
    /// this process ([`Manager::keep`]): taken only once the state lock is
    /// ours, so it always comes from the last holder.
    pub async fn open_cached(
        dir: &Path,
        pins: &PinRoot,
        slot: Option<&std::sync::Mutex<Cache>>,
    ) -> Result<Manager, NetworkError> {
        let mut store = lock_state(dir).await?;
        let cache = slot
            .map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default();
        if let Some(sync) = cache.sync {
            store.set_sync(sync);
        }
        let host = match cache.host {
            Some(h) => h,
            None => Netlink::connect(None).await?,
        };
        let pid = pin_id(pins);
        let dp = cache
            .dp
            .filter(|(id, _, _)| id.is_some() && *id == pid)
            .map(|(_, nat, dp)| (nat, dp));
        let (loaded, mut applied, ports) = match cache.state {
            Some((mark, state)) if store.resume(&mark) => (Some(state), cache.applied, cache.ports),
            _ => (store.load()?, None, None),
        };
        if dp.is_none() {
            applied = None;
        }
        let dp = BpfDatapath::new(pins, dp);
        let mut m = Manager::start(store, loaded, host, dp, applied).await?;
        m.ports = ports;
        Ok(m)
    }

    /// Puts what is worth keeping into `slot` for the next manager, then
    /// releases the state lock.
    pub fn keep(self, slot: &std::sync::Mutex<Cache>) {
        let Manager {
            store,
            state,
            host,
            dp,
            applied,
            cluster: _,
            ports,
            compiled: _,
        } = self;
        let pins = dp.pins().clone();
        let cache = Cache {
            sync: Some(store.sync()),
            ports,
            host: Some(host),
            state: Some((store.mark(), state)),
            dp: dp.into_loaded().map(|(nat, dp)| (pin_id(&pins), nat, dp)),
            applied,
        };
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = cache;
        drop(store);
    }

    /// Like [`Manager::open`] but never initialises: None when there is no
    /// state yet (cleanup must not create what it is about to remove).
    pub async fn open_existing(
        dir: &Path,
        pins: &PinRoot,
    ) -> Result<Option<Manager>, NetworkError> {
        if !dir.join("state.json").exists() {
            return Ok(None);
        }
        let mut store = lock_state(dir).await?;
        let Some(state) = store.load()? else {
            return Ok(None);
        };
        let host = Netlink::connect(None).await?;
        Ok(Some(Manager {
            store,
            state,
            host,
            dp: BpfDatapath::new(pins, None),
            applied: None,
            cluster: None,
            ports: None,
            compiled: None,
        }))
    }
}

impl<D: Datapath, H: Host> Manager<D, H> {
    /// Locks and loads the state in `dir` with the given datapath and host
    /// (a first start creates the predefined networks): for tests.
    pub async fn open_with(dir: &Path, dp: D, host: H) -> Result<Self, NetworkError> {
        let mut store = lock_state(dir).await?;
        let loaded = store.load()?;
        Manager::start(store, loaded, host, dp, None).await
    }

    async fn start(
        store: StateStore,
        loaded: Option<State>,
        host: H,
        dp: D,
        applied: Option<Applied>,
    ) -> Result<Self, NetworkError> {
        // Not a copy: every request of the agent starts here, and the state
        // may hold 100 000 mappings.
        let first = loaded.is_none();
        let mut m = Manager {
            store,
            state: loaded.unwrap_or_default(),
            host,
            dp,
            applied,
            cluster: None,
            ports: None,
            compiled: None,
        };
        if first {
            m.init_predefined().await?;
        }
        Ok(m)
    }

    /// The datapath, as tests read what it was asked to hold.
    pub fn datapath(&self) -> &D {
        &self.dp
    }

    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    /// From now on a change returns once its journal line is written; its
    /// fsync is waited for with [`Self::take_durable`] after the state lock
    /// is released, shared with the changes of concurrent requests (group
    /// commit). The caller answers only once that returns.
    pub fn defer_durability(&mut self) {
        self.store.defer();
    }

    /// Starts the fsync of a deferred journal append on a blocking thread
    /// now, so that it overlaps the map writes, the flow purge and the
    /// lock's release; the answer still waits for it
    /// ([`Self::take_durable`]).
    fn start_sync(&self) {
        if let Some(durable) = self.store.peek_durable() {
            // Its outcome is recorded in the journal's sync state, where
            // the wait before the answer finds it.
            drop(tokio::task::spawn_blocking(move || durable.wait()));
        }
    }

    /// What to wait for before answering for the changes made (see
    /// [`Self::defer_durability`]).
    pub fn take_durable(&mut self) -> Durable {
        self.store.take_durable()
    }

    /// Gives back the datapath and host (and releases the state lock).
    pub fn into_parts(self) -> (D, H) {
        (self.dp, self.host)
    }

    /// The cluster overlay networks are created in and addresses taken
    /// from (docs/overlay.md).
    pub fn set_cluster(
        &mut self,
        cluster: Option<std::sync::Arc<crate::control::cluster::Cluster>>,
    ) {
        self.cluster = cluster;
    }

    /// Masquerade settings for uplink programs attached from now on.
    pub fn set_nat_config(&mut self, nat: NatConfig) {
        self.dp.set_nat_config(nat);
    }

    /// Loads (verifies) the endpoint program now, so the first `connect`
    /// of a long-lived manager's life does not pay for it.
    pub fn preload_endpoint_program(&mut self) -> Result<(), NetworkError> {
        Ok(self.dp.preload()?)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Writes `state`, makes it current once it is on disk, then brings the
    /// datapath's maps in line with it, and last removes the flows of what
    /// the change took away (endpoints, published ports): once the maps no
    /// longer publish it, no new entry can be made for it behind the purge.
    /// The change stands when the purge fails; its errors are reported.
    async fn persist(&mut self, state: State) -> Result<(), NetworkError> {
        let gone = desired::gone(&self.state, &state);
        // Any change but `publish add|rm`'s may move mappings.
        self.ports = None;
        self.store.commit(&self.state, &state)?;
        self.start_sync();
        self.state = state;
        self.sync_datapath().await?;
        self.purge(&gone).await
    }

    /// Removes the flows of what a change took away (see
    /// [`Self::persist`]).
    async fn purge(&mut self, gone: &Gone) -> Result<(), NetworkError> {
        // Off the runtime's thread: a full table takes seconds to walk.
        let errors = if gone.is_empty() {
            Vec::new()
        } else {
            let job = self.dp.purge_conntrack(gone);
            tokio::task::spawn_blocking(job)
                .await
                .unwrap_or_else(|e| vec![format!("the conntrack purge task: {e}")])
        };
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetworkError::Teardown {
                context: "saved, but purging the conntrack entries of removed endpoints and \
                          published ports failed"
                    .into(),
                errors,
            })
        }
    }

    /// One change of the state: `f` edits a copy, which is then persisted
    /// (see [`Self::persist`]); returns what `f` returned.
    async fn change<T>(&mut self, f: impl FnOnce(&mut State) -> T) -> Result<T, NetworkError> {
        let mut state = self.state.clone();
        let out = f(&mut state);
        self.persist(state).await?;
        Ok(out)
    }

    /// [`Self::change`] for `mappings` added to (`added`) or removed from
    /// the published ports of endpoint `endpoint`: with the maps' contents
    /// known, the state is changed in place after one journal line, and
    /// only the entries of those ports are computed and written
    /// ([`desired::port_delta`]), not every mapping of the state; the state
    /// stays the one source of truth (the periodic full reconcile still
    /// recomputes everything from it).
    async fn change_ports(
        &mut self,
        endpoint: &str,
        mappings: &[PortMapping],
        added: bool,
    ) -> Result<(), NetworkError> {
        let fresh = self
            .applied
            .as_ref()
            .is_some_and(|a| a.reconciled.elapsed() < RECONCILE_EVERY);
        if !fresh || !self.state.endpoints.contains_key(endpoint) {
            let mut state = self.state.clone();
            apply_ports(&mut state, endpoint, mappings, added);
            return self.persist(state).await;
        }
        let now = &self.state;
        self.store.commit_ports(endpoint, mappings, added, || {
            let mut state = now.clone();
            apply_ports(&mut state, endpoint, mappings, added);
            state
        })?;
        self.start_sync();
        apply_ports(&mut self.state, endpoint, mappings, added);
        // The endpoint's mappings on the same host ports, from the index
        // rather than a pass over all of its mappings.
        let near = self.ports.as_mut().map(|index| {
            index.change(endpoint, mappings, added);
            let keys: Vec<_> = mappings.iter().map(|m| (m.proto, m.host_port)).collect();
            index.of_endpoint(endpoint, &keys)
        });
        // Unknown until written: a failed write leaves the next change a
        // full reconcile.
        let Some(mut applied) = self.applied.take() else {
            return Ok(());
        };
        let Some(delta) = desired::port_delta(&self.state, endpoint, mappings, near, &applied.nat)
        else {
            return Ok(());
        };
        self.dp.apply_nat_delta(&delta)?;
        delta.apply_to(&mut applied.nat);
        self.applied = Some(applied);
        self.purge(&desired::delta_gone(&delta)).await
    }

    /// [`Self::change`] for the filter rules becoming `rules`: one journal
    /// line, the state changed in place, and only the filter maps written
    /// (nothing else depends on the rules), when the maps' contents are
    /// known; the full change otherwise. At 100 000 mappings the full one
    /// spent most of a rules request cloning the state and recomputing
    /// every mapping.
    pub(super) async fn change_filters(
        &mut self,
        rules: Vec<crate::control::filter_rules::FilterRule>,
    ) -> Result<(), NetworkError> {
        let fresh = self
            .applied
            .as_ref()
            .is_some_and(|a| a.reconciled.elapsed() < RECONCILE_EVERY);
        if !fresh {
            return self.change(|state| state.filters = rules).await;
        }
        let now = &self.state;
        self.store.commit_filters(&rules, || State {
            filters: rules.clone(),
            ..now.clone()
        })?;
        self.start_sync();
        self.state.filters = rules;
        // Unknown until written: a failed write leaves the next change a
        // full reconcile.
        let Some(mut applied) = self.applied.take() else {
            return Ok(());
        };
        let inputs = self.filter_inputs(&self.state.filters).await?;
        self.write_filters(applied.filters.as_ref(), &inputs)?;
        applied.filters = Some(inputs);
        self.applied = Some(applied);
        Ok(())
    }

    /// Writes the rule set of `inputs` unless `last` (what the maps hold)
    /// is the same; the set `filter add` compiled to check it when it is
    /// this one.
    fn write_filters(
        &mut self,
        last: Option<&FilterInputs>,
        inputs: &FilterInputs,
    ) -> Result<(), NetworkError> {
        if last == Some(inputs) {
            return Ok(());
        }
        let compiled = match self.compiled.take() {
            Some((of, c)) if of == *inputs => c,
            _ => compile(inputs)?,
        };
        Ok(self.dp.apply_filters(&compiled)?)
    }

    /// Every map the programs read, from the state: NAT and filters. With
    /// the maps' last contents known (and reconciled recently), only the
    /// difference is written; otherwise every map is reconciled in full.
    async fn sync_datapath(&mut self) -> Result<(), NetworkError> {
        let inputs = self.filter_inputs(&self.state.filters).await?;
        let want = desired::desired(&self.state, &self.host).await?;
        let last = self
            .applied
            .take()
            .filter(|a| a.reconciled.elapsed() < RECONCILE_EVERY);
        let (reconciled, last_filters) = match last {
            Some(a) => {
                self.dp.apply_nat_changes(&a.nat, &want)?;
                (a.reconciled, a.filters)
            }
            None => {
                self.dp.apply_nat(&want)?;
                (Instant::now(), None)
            }
        };
        self.write_filters(last_filters.as_ref(), &inputs)?;
        self.applied = Some(Applied {
            nat: want,
            filters: Some(inputs),
            reconciled,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
