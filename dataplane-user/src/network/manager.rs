//! The network manager: every change to networks and endpoints goes through
//! here, under the state lock, in the order check input -> change the kernel
//! -> persist. A failed kernel change is undone before the error returns, so
//! the persisted state and the kernel never disagree about what exists.

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use dataplane_common::nat::NatConfig;
use ipnet::Ipv4Net;

use super::{
    datapath::{BpfDatapath, Datapath, DatapathError},
    driver::{BridgeError, DriverError, EndpointPlan},
    host::Host,
    ipam::{self, IpamError, MalformedMac},
    model::{
        Attachment, CreateRequest, DriverKind, Endpoint, Network, DEFAULT_BRIDGE, DEFAULT_MTU,
    },
    ports::{self, PortMapping, PublishError},
};
use crate::{
    bpffs::PinRoot,
    ebpf::Dataplane,
    filter::{self, FilterRule},
    nat::{self, NatError},
    netlink::{Netlink, NetlinkError},
    state::{Mark, State, StateError, StateStore},
};

mod cni;
pub use cni::CniNetError;

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
    #[error("--ifname {0}: not a valid interface name (1-15 bytes, no '/' or white space)")]
    BadIfname(String),
    #[error("--name {0:?}: must start with a letter or digit and contain only [a-zA-Z0-9_.-]")]
    BadEndpointName(String),
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
    #[error("network {network}: NETNS is required")]
    NetnsRequired { network: String },
    #[error("reading random bytes for an id")]
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
}

mod docker;

pub use docker::{
    docker_network_name, docker_veth_names, DockerJoin, DockerOpError, DockerPortBinding,
    EPHEMERAL_PORTS,
};

/// `connect` as the user typed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectArgs {
    /// A network name, `none`, `host` or `container:<endpoint>`.
    pub network: String,
    /// Name under /var/run/netns or a path (/proc/PID/ns/net).
    pub netns: Option<String>,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub name: Option<String>,
    pub ifname: Option<String>,
    /// `--publish` values, Docker's syntax.
    pub publish: Vec<String>,
}

/// A rule set compiled from its resolved inputs.
fn compile(inputs: &FilterInputs) -> Result<filter::Compiled, NetworkError> {
    Ok(filter::compile(&inputs.rules, |r| filter::ResolvedRule {
        ifindex: r
            .in_iface
            .as_ref()
            .and_then(|n| inputs.ifindex.get(n).copied()),
        network: r
            .network
            .as_ref()
            .map(|n| inputs.networks.get(n).copied().unwrap_or(u32::MAX)),
    })?)
}

/// Takes the state lock off the async threads: waiting for another holder
/// must not stall a runtime whose other tasks (the holder's, in the agent)
/// need to run to release it.
async fn lock_state(dir: &Path) -> Result<StateStore, NetworkError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || StateStore::open(&dir))
        .await
        .map_err(|e| NetworkError::Random(std::io::Error::other(e)))?
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
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(NetworkError::Random)?;
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
/// [`RecordingDatapath`](super::datapath::RecordingDatapath) and a
/// [`FakeHost`](super::host::FakeHost).
pub struct Manager<D = BpfDatapath, H = Netlink> {
    store: StateStore,
    state: State,
    host: H,
    dp: D,
    /// What the maps were last set to by this process, so the next change
    /// writes only its difference; None: unknown, reconcile in full.
    applied: Option<Applied>,
}

/// The maps' contents as last written, and when they were last reconciled
/// in full (anything edited behind the agent's back is repaired then).
struct Applied {
    nat: nat::Desired,
    filters: Option<FilterInputs>,
    reconciled: Instant,
}

/// Everything a compiled rule set depends on: the rules and what their
/// names resolved to.
#[derive(PartialEq, Eq)]
struct FilterInputs {
    rules: Vec<FilterRule>,
    ifindex: BTreeMap<String, u32>,
    networks: BTreeMap<String, u32>,
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
        let host = match cache.host {
            Some(h) => h,
            None => Netlink::connect(None).await?,
        };
        let pid = pin_id(pins);
        let dp = cache
            .dp
            .filter(|(id, _, _)| id.is_some() && *id == pid)
            .map(|(_, nat, dp)| (nat, dp));
        let (loaded, mut applied) = match cache.state {
            Some((mark, state)) if store.resume(&mark) => (Some(state), cache.applied),
            _ => (store.load()?, None),
        };
        if dp.is_none() {
            applied = None;
        }
        let dp = BpfDatapath::new(pins, dp);
        Manager::start(store, loaded, host, dp, applied).await
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
        } = self;
        let pins = dp.pins().clone();
        let cache = Cache {
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
        let mut m = Manager {
            store,
            state: loaded.clone().unwrap_or_default(),
            host,
            dp,
            applied,
        };
        if loaded.is_none() {
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

    /// Gives back the datapath and host (and releases the state lock).
    pub fn into_parts(self) -> (D, H) {
        (self.dp, self.host)
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

    async fn init_predefined(&mut self) -> Result<(), NetworkError> {
        let routes = self.host_routes().await?;
        let subnet = ipam::next_free_subnet(&[], &routes)?;
        let gateway = ipam::first_host(&subnet);
        let bridge = Network {
            id: random_hex(32)?,
            name: "bridge".into(),
            driver: DriverKind::Bridge,
            created: now_rfc3339(),
            subnet: Some(subnet),
            gateway: Some(gateway),
            ip_range: None,
            internal: false,
            mtu: DEFAULT_MTU,
            bridge: Some(DEFAULT_BRIDGE.into()),
            icc: true,
            masquerade: true,
            host_binding_ipv4: None,
            macvlan: None,
            labels: BTreeMap::new(),
        };
        self.host
            .ensure_bridge(DEFAULT_BRIDGE, gateway, subnet, DEFAULT_MTU, false)
            .await?;
        self.host
            .enable_forwarding()
            .map_err(NetworkError::Forwarding)?;
        let mut state = State::default();
        for (name, driver) in [("host", DriverKind::Host), ("none", DriverKind::Null)] {
            state.networks.insert(
                name.into(),
                Network {
                    id: random_hex(32)?,
                    name: name.into(),
                    driver,
                    created: now_rfc3339(),
                    subnet: None,
                    gateway: None,
                    ip_range: None,
                    internal: false,
                    mtu: DEFAULT_MTU,
                    bridge: None,
                    icc: true,
                    masquerade: false,
                    host_binding_ipv4: None,
                    macvlan: None,
                    labels: BTreeMap::new(),
                },
            );
        }
        state.networks.insert("bridge".into(), bridge);
        self.persist(state).await
    }

    /// Writes `state`, makes it current once it is on disk, then brings the
    /// datapath's maps in line with it, and last removes the flows of what
    /// the change took away (endpoints, published ports): once the maps no
    /// longer publish it, no new entry can be made for it behind the purge.
    /// The change stands when the purge fails; its errors are reported.
    async fn persist(&mut self, state: State) -> Result<(), NetworkError> {
        let gone = nat::gone(&self.state, &state);
        self.store.commit(&self.state, &state)?;
        self.state = state;
        self.sync_datapath().await?;
        let errors = self.dp.purge_conntrack(&gone);
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

    /// Every map the programs read, from the state: NAT and filters. With
    /// the maps' last contents known (and reconciled recently), only the
    /// difference is written; otherwise every map is reconciled in full.
    async fn sync_datapath(&mut self) -> Result<(), NetworkError> {
        let inputs = self.filter_inputs(&self.state.filters).await?;
        let want = self.host.nat_desired(&self.state).await?;
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
        if last_filters.as_ref() != Some(&inputs) {
            self.dp.apply_filters(&compile(&inputs)?)?;
        }
        self.applied = Some(Applied {
            nat: want,
            filters: Some(inputs),
            reconciled,
        });
        Ok(())
    }

    /// Resolves the names rules use against the host as it is now:
    /// interfaces by index (one that does not exist yet gets an index
    /// nothing has, so its rule matches nothing rather than everything),
    /// networks by key.
    async fn filter_inputs(&self, rules: &[FilterRule]) -> Result<FilterInputs, NetworkError> {
        let mut ifindex = BTreeMap::new();
        let mut networks = BTreeMap::new();
        for r in rules {
            if let Some(name) = &r.in_iface {
                if !ifindex.contains_key(name) {
                    let idx = self
                        .host
                        .link_by_name(name)
                        .await?
                        .map(|l| l.index)
                        .unwrap_or(u32::MAX);
                    ifindex.insert(name.clone(), idx);
                }
            }
            if let Some(n) = &r.network {
                let key = self
                    .state
                    .networks
                    .get(n)
                    .map(|net| nat::network_key(&net.id))
                    .unwrap_or(u32::MAX);
                networks.insert(n.clone(), key);
            }
        }
        Ok(FilterInputs {
            rules: rules.to_vec(),
            ifindex,
            networks,
        })
    }

    /// Compiles rules against the host as it is now (see [`Self::filter_inputs`]).
    async fn compile_filters(
        &self,
        rules: &[FilterRule],
    ) -> Result<filter::Compiled, NetworkError> {
        compile(&self.filter_inputs(rules).await?)
    }

    /// `filter add`: a rule at the end of the list, or first with `first`
    /// (like `iptables -I DOCKER-USER`).
    pub async fn filter_add(
        &mut self,
        spec: filter::FilterSpec,
        first: bool,
    ) -> Result<FilterRule, NetworkError> {
        if let Some(n) = &spec.network {
            self.network(n)?;
        }
        let id = self.state.filters.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        let rule = FilterRule::new(id, spec);
        let mut state = self.state.clone();
        if first {
            state.filters.insert(0, rule.clone());
        } else {
            state.filters.push(rule.clone());
        }
        // Refuse before anything is written: too many rules and the like.
        self.compile_filters(&state.filters).await?;
        self.persist(state).await?;
        Ok(rule)
    }

    /// `filter add --from-file` (the `filter_add_many` request): rules in
    /// the given order at the end of the list, or before all others with
    /// `first`. All or none: any refused rule leaves the rules as they were.
    pub async fn filter_add_many(
        &mut self,
        specs: Vec<filter::FilterSpec>,
        first: bool,
    ) -> Result<Vec<FilterRule>, NetworkError> {
        for (index, spec) in specs.iter().enumerate() {
            if let Some(n) = &spec.network {
                self.network(n).map_err(|e| NetworkError::FilterInRequest {
                    index,
                    source: Box::new(e),
                })?;
            }
        }
        let next = self.state.filters.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        let added: Vec<FilterRule> = (next..)
            .zip(specs)
            .map(|(id, spec)| FilterRule::new(id, spec))
            .collect();
        let mut state = self.state.clone();
        if first {
            state.filters.splice(0..0, added.iter().cloned());
        } else {
            state.filters.extend(added.iter().cloned());
        }
        // Refuse before anything is written: too many rules and the like.
        self.compile_filters(&state.filters).await?;
        self.persist(state).await?;
        Ok(added)
    }

    /// `filter rm`.
    pub async fn filter_rm(&mut self, id: u32) -> Result<(), NetworkError> {
        if !self.state.filters.iter().any(|r| r.id == id) {
            return Err(NetworkError::UnknownFilter(id));
        }
        let mut state = self.state.clone();
        state.filters.retain(|r| r.id != id);
        self.persist(state).await
    }

    async fn host_routes(&self) -> Result<Vec<Ipv4Net>, NetworkError> {
        Ok(self
            .host
            .routes()
            .await?
            .into_iter()
            .filter_map(|r| Ipv4Net::new(r.dst, r.prefix_len).ok())
            .collect())
    }

    /// The addresses of every uplink (those added, and the interfaces the
    /// default routes leave by, which the agent makes uplinks on its first
    /// start), by name: a network must not take their subnets.
    async fn uplink_addrs(&self) -> Result<Vec<(String, Vec<(Ipv4Addr, u8)>)>, NetworkError> {
        let mut links = Vec::new();
        for name in &self.state.uplinks {
            if let Some(l) = self.host.link_by_name(name).await? {
                links.push(l);
            }
        }
        for r in self.host.routes().await? {
            let Some(oif) = r.oif.filter(|_| r.prefix_len == 0) else {
                continue;
            };
            if links.iter().any(|l| l.index == oif) {
                continue;
            }
            if let Some(l) = self.host.link_by_index(oif).await? {
                links.push(l);
            }
        }
        let mut out = Vec::new();
        for l in links {
            let addrs = self.host.addrs(Some(l.index)).await?;
            out.push((
                l.name,
                addrs.into_iter().map(|(_, a, len)| (a, len)).collect(),
            ));
        }
        Ok(out)
    }

    pub fn network(&self, name: &str) -> Result<&Network, NetworkError> {
        self.state
            .networks
            .get(name)
            .or_else(|| {
                // Docker accepts an id or a unique id prefix too.
                let mut by_id = self
                    .state
                    .networks
                    .values()
                    .filter(|n| n.id.starts_with(name));
                match (by_id.next(), by_id.next()) {
                    (Some(n), None) if name.len() >= 3 => Some(n),
                    _ => None,
                }
            })
            .ok_or_else(|| NetworkError::UnknownNetwork(name.to_owned()))
    }

    /// `network create`.
    pub async fn create(&mut self, req: CreateRequest) -> Result<Network, NetworkError> {
        let id = random_hex(32)?;
        self.create_with_id(req, id).await
    }

    /// `network create` with the id chosen by the caller (Docker's
    /// NetworkID for networks Docker creates through the remote driver).
    pub async fn create_with_id(
        &mut self,
        req: CreateRequest,
        id: String,
    ) -> Result<Network, NetworkError> {
        if self.state.networks.contains_key(&req.name) {
            return Err(NetworkError::DuplicateName(req.name));
        }
        let used: Vec<(String, Ipv4Net)> = self
            .state
            .networks
            .values()
            .filter_map(|n| n.subnet.map(|s| (n.name.clone(), s)))
            .collect();
        let subnet = match req.subnet {
            Some(s) => {
                if let Some((other, os)) = used.iter().find(|(_, u)| ipam::overlaps(&s, u)) {
                    return Err(IpamError::Overlap {
                        subnet: s,
                        other: other.clone(),
                        other_subnet: *os,
                    }
                    .into());
                }
                ipam::check_not_uplink(&s, &self.uplink_addrs().await?)?;
                s
            }
            None => {
                let taken: Vec<Ipv4Net> = used.iter().map(|(_, s)| *s).collect();
                ipam::next_free_subnet(&taken, &self.host_routes().await?)?
            }
        };
        let gateway = req.gateway.unwrap_or_else(|| ipam::first_host(&subnet));
        let bridge = match req.driver {
            DriverKind::Bridge => Some(
                req.bridge_name
                    .clone()
                    .unwrap_or_else(|| format!("br-{}", &id[..12])),
            ),
            _ => None,
        };
        if let Some(mv) = &req.macvlan {
            if self.host.link_by_name(&mv.parent).await?.is_none() {
                return Err(DriverError::ParentMissing {
                    network: req.name.clone(),
                    parent: mv.parent.clone(),
                }
                .into());
            }
        }
        if let Some(name) = &bridge {
            if let Some(other) = self
                .state
                .networks
                .values()
                .find(|n| n.bridge.as_deref() == Some(name))
            {
                return Err(BridgeError::InUse {
                    bridge: name.clone(),
                    kind: format!("bridge of network {}", other.name),
                }
                .into());
            }
        }
        let net = Network {
            id,
            name: req.name.clone(),
            driver: req.driver,
            created: now_rfc3339(),
            subnet: Some(subnet),
            gateway: Some(gateway),
            ip_range: req.ip_range,
            internal: req.internal,
            mtu: req.mtu,
            bridge: bridge.clone(),
            icc: req.icc,
            masquerade: req.masquerade,
            host_binding_ipv4: req.host_binding_ipv4,
            macvlan: req.macvlan.clone(),
            labels: req.labels.clone(),
        };
        if let Some(name) = &bridge {
            self.host
                .ensure_bridge(name, gateway, subnet, net.mtu, false)
                .await?;
            if !net.internal {
                self.host
                    .enable_forwarding()
                    .map_err(NetworkError::Forwarding)?;
            }
        }
        let mut state = self.state.clone();
        state.networks.insert(net.name.clone(), net.clone());
        if let Err(e) = self.persist(state).await {
            if let Some(name) = &bridge {
                self.delete_link_named(name).await;
            }
            return Err(e);
        }
        Ok(net)
    }

    async fn delete_link_named(&self, name: &str) -> Vec<String> {
        match self.host.link_by_name(name).await {
            Ok(Some(l)) => match self.host.delete_link(l.index).await {
                Ok(()) => Vec::new(),
                Err(e) if e.is_not_found() => Vec::new(),
                Err(e) => vec![e.to_string()],
            },
            Ok(None) => Vec::new(),
            Err(e) => vec![e.to_string()],
        }
    }

    /// `network rm`: refused while endpoints are attached unless `force`,
    /// which disconnects them first. Every name is tried; the errors of all
    /// come back together.
    pub async fn remove(
        &mut self,
        names: &[String],
        force: bool,
    ) -> Result<Vec<String>, NetworkError> {
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for name in names {
            match self.remove_one(name, force).await {
                Ok(()) => removed.push(name.clone()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(NetworkError::Teardown {
                context: "network rm".into(),
                errors,
            })
        }
    }

    async fn remove_one(&mut self, name: &str, force: bool) -> Result<(), NetworkError> {
        let net = self.network(name)?.clone();
        if net.is_predefined() {
            return Err(NetworkError::Predefined(net.name));
        }
        let eps: Vec<Endpoint> = self.state.endpoints_of(&net.name).cloned().collect();
        if !eps.is_empty() && !force {
            return Err(NetworkError::InUse {
                network: net.name.clone(),
                count: eps.len(),
                names: eps
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut errors = Vec::new();
        for ep in &eps {
            if let Err(e) = self.disconnect_endpoint(ep).await {
                errors.push(e.to_string());
            }
        }
        if let Some(bridge) = &net.bridge {
            errors.extend(self.delete_link_named(bridge).await);
        }
        let mut state = self.state.clone();
        state.networks.remove(&net.name);
        self.persist(state).await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetworkError::Teardown {
                context: format!("network {} removed, but", net.name),
                errors,
            })
        }
    }

    /// `connect`.
    pub async fn connect(&mut self, args: &ConnectArgs) -> Result<Endpoint, NetworkError> {
        if let Some(target) = args.network.strip_prefix("container:") {
            return self.connect_container(target, args).await;
        }
        let net = self.network(&args.network)?.clone();
        let netns_arg = args
            .netns
            .clone()
            .ok_or_else(|| NetworkError::NetnsRequired {
                network: net.name.clone(),
            })?;
        let netns = netns_path(&netns_arg);
        let ino = self
            .host
            .netns_id(&netns)
            .ok_or_else(|| NetworkError::UnknownNetns(netns_arg.clone()))?;
        let name = match &args.name {
            Some(n) if super::model::valid_name(n) => n.clone(),
            Some(n) => return Err(NetworkError::BadEndpointName(n.clone())),
            None => netns
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| netns_arg.clone()),
        };
        for ep in self.state.endpoints_of(&net.name) {
            if self.host.netns_id(&ep.netns) == Some(ino) {
                return Err(NetworkError::AlreadyConnected {
                    network: net.name.clone(),
                    netns: netns_arg,
                    endpoint: ep.name.clone(),
                });
            }
            if ep.name == name {
                return Err(NetworkError::DuplicateEndpoint {
                    network: net.name.clone(),
                    name,
                });
            }
        }
        let id = random_hex(32)?;
        let no_link = matches!(net.driver, DriverKind::Host | DriverKind::Null);
        for (option, given) in [
            ("--ip", args.ip.is_some()),
            ("--mac", args.mac.is_some()),
            ("--ifname", args.ifname.is_some()),
        ] {
            if no_link && given {
                return Err(NetworkError::NotApplicable {
                    network: net.name.clone(),
                    option,
                    driver: net.driver.name(),
                });
            }
        }
        if no_link {
            let plan_net = net.clone();
            let attachment = if net.driver == DriverKind::Null {
                let plan = EndpointPlan {
                    network: &plan_net,
                    netns: &netns,
                    ifname: "lo",
                    ipv4: Ipv4Addr::UNSPECIFIED,
                    mac: [0; 6],
                    suffix: "",
                };
                self.host.setup_endpoint(&plan).await?
            } else {
                Attachment::Host
            };
            let ep = Endpoint {
                id,
                name,
                network: net.name.clone(),
                netns,
                attachment,
                ifname: None,
                mac: None,
                ipv4: None,
                published: Vec::new(),
            };
            return self.record(ep).await;
        }

        // Addresses in use: the gateway and every endpoint of the network.
        let subnet = net
            .subnet
            .ok_or_else(|| NetworkError::UnknownNetwork(net.name.clone()))?;
        let mut used: Vec<(Ipv4Addr, String)> = net
            .gateway
            .map(|g| (g, "the gateway".to_owned()))
            .into_iter()
            .collect();
        used.extend(
            self.state
                .endpoints_of(&net.name)
                .filter_map(|e| e.ipv4.map(|ip| (ip, format!("endpoint {}", e.name)))),
        );
        let ipv4 = match &args.ip {
            Some(ip) => {
                let ip = ipam::parse_addr("ip", ip)?;
                ipam::check_requested(&subnet, ip, &used)?;
                ip
            }
            None => ipam::allocate(
                &net.name,
                &subnet,
                &net.alloc_range().unwrap_or(subnet),
                &used,
            )?,
        };
        let mac = match &args.mac {
            Some(m) => ipam::parse_mac(m)?,
            None => ipam::mac_for(ipv4),
        };
        let published = self.new_mappings(&args.publish, &[])?;
        let names = self.host.netns_links(&netns).await?;
        let ifname = match &args.ifname {
            Some(i) if !super::model::valid_ifname(i) => {
                return Err(NetworkError::BadIfname(i.clone()))
            }
            Some(i) if names.contains(i) => {
                return Err(NetworkError::IfnameTaken {
                    ifname: i.clone(),
                    netns: netns_arg,
                })
            }
            Some(i) => i.clone(),
            None => (0..)
                .map(|n| format!("eth{n}"))
                .find(|c| !names.contains(c))
                .unwrap_or_else(|| "eth0".into()),
        };
        let suffix = random_hex(4)?[..7].to_owned();
        let plan = EndpointPlan {
            network: &net,
            netns: &netns,
            ifname: &ifname,
            ipv4,
            mac,
            suffix: &suffix,
        };
        let attachment = self.host.setup_endpoint(&plan).await?;
        if let Attachment::Veth { host_ifname } = &attachment {
            let attached = self.dp.attach_endpoint(host_ifname);
            if let Err(e) = attached {
                let _ = self
                    .host
                    .teardown_endpoint(&netns, Some(&ifname), &attachment)
                    .await;
                return Err(e.into());
            }
        }
        let ep = Endpoint {
            id,
            name,
            network: net.name.clone(),
            netns,
            attachment,
            ifname: Some(ifname),
            mac: Some(ipam::format_mac(&mac)),
            ipv4: Some(ipv4),
            published,
        };
        match self.record(ep.clone()).await {
            Ok(ep) => Ok(ep),
            Err(e) => {
                let _ = self
                    .host
                    .teardown_endpoint(&ep.netns, ep.ifname.as_deref(), &ep.attachment)
                    .await;
                Err(e)
            }
        }
    }

    async fn record(&mut self, ep: Endpoint) -> Result<Endpoint, NetworkError> {
        let mut state = self.state.clone();
        state.endpoints.insert(ep.id.clone(), ep.clone());
        self.persist(state).await?;
        Ok(ep)
    }

    /// `connect container:<endpoint>`: a new endpoint record sharing an
    /// existing endpoint's namespace (Docker's `--network container:NAME`).
    async fn connect_container(
        &mut self,
        target: &str,
        args: &ConnectArgs,
    ) -> Result<Endpoint, NetworkError> {
        let owner = self
            .state
            .endpoints
            .values()
            .find(|e| e.name == target || e.id.starts_with(target) && target.len() >= 3)
            .cloned()
            .ok_or_else(|| NetworkError::UnknownContainer(target.to_owned()))?;
        for (option, given) in [
            ("--ip", args.ip.is_some()),
            ("--mac", args.mac.is_some()),
            ("--ifname", args.ifname.is_some()),
        ] {
            if given {
                return Err(NetworkError::NotApplicable {
                    network: format!("container:{target}"),
                    option,
                    driver: "container",
                });
            }
        }
        if let Some(ns) = &args.netns {
            if self.host.netns_id(&netns_path(ns)) != self.host.netns_id(&owner.netns) {
                return Err(NetworkError::UnknownNetns(format!(
                    "{ns} (container:{target} shares {}, a different namespace)",
                    owner.netns.display()
                )));
            }
        }
        let name = match &args.name {
            Some(n) if super::model::valid_name(n) => n.clone(),
            Some(n) => return Err(NetworkError::BadEndpointName(n.clone())),
            None => format!("{}-shared", owner.name),
        };
        if self
            .state
            .endpoints_of(&owner.network)
            .any(|e| e.name == name)
        {
            return Err(NetworkError::DuplicateEndpoint {
                network: owner.network.clone(),
                name,
            });
        }
        let ep = Endpoint {
            id: random_hex(32)?,
            name,
            network: owner.network.clone(),
            netns: owner.netns.clone(),
            attachment: Attachment::Container {
                endpoint: owner.id.clone(),
            },
            ifname: owner.ifname.clone(),
            mac: owner.mac.clone(),
            ipv4: owner.ipv4,
            published: Vec::new(),
        };
        self.record(ep).await
    }

    /// `disconnect NETWORK CONTAINER`: CONTAINER is an endpoint name or id, or
    /// the namespace (name or path) it was connected with.
    pub async fn disconnect(&mut self, network: &str, what: &str) -> Result<(), NetworkError> {
        let net = self.network(network)?.clone();
        let ino = self.host.netns_id(&netns_path(what));
        let ep = self
            .state
            .endpoints_of(&net.name)
            .find(|e| {
                e.name == what
                    || e.id == what
                    || e.netns == netns_path(what)
                    || (ino.is_some()
                        && self.host.netns_id(&e.netns) == ino
                        && !matches!(e.attachment, Attachment::Container { .. }))
            })
            .cloned()
            .ok_or_else(|| NetworkError::UnknownEndpoint {
                network: net.name.clone(),
                what: what.to_owned(),
            })?;
        self.disconnect_endpoint(&ep).await
    }

    /// Removes one endpoint's links and its record; the record goes even when
    /// some link could not be removed, and the errors are reported.
    async fn disconnect_endpoint(&mut self, ep: &Endpoint) -> Result<(), NetworkError> {
        // Endpoints sharing this one's namespace go with it.
        let sharers: Vec<String> = self
            .state
            .endpoints
            .values()
            .filter(|e| matches!(&e.attachment, Attachment::Container { endpoint } if *endpoint == ep.id))
            .map(|e| e.id.clone())
            .collect();
        let mut errors = self
            .host
            .teardown_endpoint(&ep.netns, ep.ifname.as_deref(), &ep.attachment)
            .await;
        if let Attachment::Veth { host_ifname } = &ep.attachment {
            if let Err(e) = self.dp.detach_endpoint(host_ifname) {
                errors.push(e.to_string());
            }
        }
        let mut state = self.state.clone();
        state.endpoints.remove(&ep.id);
        for id in sharers {
            state.endpoints.remove(&id);
        }
        self.persist(state).await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetworkError::Teardown {
                context: format!("endpoint {} disconnected from {}, but", ep.name, ep.network),
                errors,
            })
        }
    }

    /// Parses `specs` and checks them against each other and every existing
    /// mapping (`except`: mappings about to be replaced); assigns counter
    /// slots, zeroing their old counts.
    fn new_mappings(
        &mut self,
        specs: &[String],
        except: &[PortMapping],
    ) -> Result<Vec<PortMapping>, NetworkError> {
        // Who holds each (protocol, host port) now, indexed in one pass
        // over the state when many mappings come at once (K mappings at N
        // cost K + N, not K * N); a few are checked by a plain scan.
        let holders = || {
            self.state.endpoints.values().flat_map(|ep| {
                ep.published
                    .iter()
                    .filter(|p| !except.contains(p))
                    .map(move |p| (p, ep))
            })
        };
        let index = specs.len() > 8 || specs.iter().any(|s| s.contains('-'));
        let mut held: std::collections::HashMap<
            (ports::Proto, u16),
            Vec<(&PortMapping, &Endpoint)>,
        > = std::collections::HashMap::new();
        if index {
            for (p, ep) in holders() {
                held.entry((p.proto, p.host_port))
                    .or_default()
                    .push((p, ep));
            }
        }
        let mut out: Vec<PortMapping> = Vec::new();
        let mut claimed: std::collections::HashMap<(ports::Proto, u16), Vec<PortMapping>> =
            std::collections::HashMap::new();
        for spec in specs {
            for m in ports::parse(spec)? {
                let slot = (m.proto, m.host_port);
                if let Some(prev) = claimed
                    .get(&slot)
                    .and_then(|v| v.iter().find(|o| o.conflicts(&m)))
                {
                    return Err(NetworkError::PortConflict {
                        mapping: m.to_string(),
                        holder: "this command".into(),
                        existing: prev.to_string(),
                    });
                }
                let holder = if index {
                    held.get(&slot)
                        .and_then(|v| v.iter().find(|(p, _)| p.conflicts(&m)).copied())
                } else {
                    holders().find(|(p, _)| p.conflicts(&m))
                };
                if let Some((prev, ep)) = holder {
                    return Err(NetworkError::PortConflict {
                        mapping: m.to_string(),
                        holder: format!("endpoint {} on network {}", ep.name, ep.network),
                        existing: prev.to_string(),
                    });
                }
                claimed.entry(slot).or_default().push(m);
                out.push(m);
            }
        }
        if out.is_empty() {
            return Ok(out);
        }
        let mut used = vec![false; dataplane_common::nat::MAX_PORT_MAPPINGS as usize];
        for m in self.state.endpoints.values().flat_map(|e| &e.published) {
            if let Some(u) = used.get_mut(m.stats_index as usize) {
                *u = true;
            }
        }
        // Free slots in ascending order, found in one pass.
        let mut next = 0;
        for m in &mut out {
            m.stats_index = self.dp.claim_stats_index(&used, next)?;
            next = m.stats_index + 1;
        }
        Ok(out)
    }

    fn endpoint_named(&self, network: &str, what: &str) -> Result<Endpoint, NetworkError> {
        let net = self.network(network)?;
        self.state
            .endpoints_of(&net.name)
            .find(|e| e.name == what || e.id == what || e.netns == netns_path(what))
            .cloned()
            .ok_or_else(|| NetworkError::UnknownEndpoint {
                network: net.name.clone(),
                what: what.to_owned(),
            })
    }

    /// `publish add`: more published ports on a live endpoint.
    pub async fn publish_add(
        &mut self,
        network: &str,
        endpoint: &str,
        specs: &[String],
    ) -> Result<Vec<PortMapping>, NetworkError> {
        let ep = self.endpoint_named(network, endpoint)?;
        if !matches!(ep.attachment, Attachment::Veth { .. }) {
            return Err(NetworkError::NotApplicable {
                network: ep.network.clone(),
                option: "--publish",
                driver: self.network(&ep.network)?.driver.name(),
            });
        }
        let added = self.new_mappings(specs, &[])?;
        let mut state = self.state.clone();
        if let Some(e) = state.endpoints.get_mut(&ep.id) {
            e.published.extend(added.iter().copied());
        }
        self.persist(state).await?;
        Ok(added)
    }

    /// `publish rm`: stop publishing ports of a live endpoint. Their flows
    /// go with them (see [`Manager::persist`]): a client sending on one
    /// tuple must reach whatever publishes the port next, not the old
    /// target (moby#53384).
    pub async fn publish_rm(
        &mut self,
        network: &str,
        endpoint: &str,
        specs: &[String],
    ) -> Result<(), NetworkError> {
        let ep = self.endpoint_named(network, endpoint)?;
        let mut remove = Vec::new();
        for spec in specs {
            for m in ports::parse(spec)? {
                let found = ep
                    .published
                    .iter()
                    .find(|p| {
                        p.host_ip == m.host_ip
                            && p.host_port == m.host_port
                            && p.proto == m.proto
                            && p.container_port == m.container_port
                    })
                    .ok_or_else(|| NetworkError::NotPublished {
                        mapping: m.to_string(),
                        endpoint: ep.name.clone(),
                    })?;
                remove.push(*found);
            }
        }
        let mut state = self.state.clone();
        if let Some(e) = state.endpoints.get_mut(&ep.id) {
            e.published.retain(|p| !remove.contains(p));
        }
        self.persist(state).await
    }

    /// `uplink add`: translate traffic through this interface.
    pub async fn uplink_add(&mut self, name: &str) -> Result<(), NetworkError> {
        if self.state.uplinks.iter().any(|u| u == name) {
            return Err(NetworkError::DuplicateUplink(name.to_owned()));
        }
        if self.host.link_by_name(name).await?.is_none() {
            return Err(NetworkError::UnknownUplink(name.to_owned()));
        }
        self.dp.attach_uplink(name)?;
        let mut state = self.state.clone();
        state.uplinks.push(name.to_owned());
        if let Err(e) = self.persist(state).await {
            let _ = self.dp.detach_uplink(name);
            return Err(e);
        }
        Ok(())
    }

    /// `uplink rm`.
    pub async fn uplink_rm(&mut self, name: &str) -> Result<(), NetworkError> {
        if !self.state.uplinks.iter().any(|u| u == name) {
            return Err(NetworkError::NotUplink(name.to_owned()));
        }
        self.dp.detach_uplink(name)?;
        let mut state = self.state.clone();
        state.uplinks.retain(|u| u != name);
        self.persist(state).await
    }

    /// Makes the kernel match the state after a restart or reboot: every
    /// bridge exists with its gateway address and is up. Returns what it
    /// changed.
    pub async fn reconcile(&mut self) -> Result<Vec<String>, NetworkError> {
        let mut changed = Vec::new();
        let mut forwarding = false;
        for net in self.state.networks.values() {
            if let (Some(bridge), Some(subnet), Some(gw)) = (&net.bridge, net.subnet, net.gateway) {
                changed.extend(
                    self.host
                        .ensure_bridge(bridge, gw, subnet, net.mtu, true)
                        .await?,
                );
                forwarding |= !net.internal;
            }
        }
        changed.extend(self.repair_endpoints().await?);
        // A bridge re-created above has lost its ports: put the endpoints'
        // host ends (still alive with their namespaces) back on it.
        for ep in self.state.endpoints.values() {
            let Attachment::Veth { host_ifname } = &ep.attachment else {
                continue;
            };
            let Some(bridge) = self
                .state
                .networks
                .get(&ep.network)
                .and_then(|n| n.bridge.clone())
            else {
                continue;
            };
            let (Some(port), Some(br)) = (
                self.host.link_by_name(host_ifname).await?,
                self.host.link_by_name(&bridge).await?,
            ) else {
                continue;
            };
            if port.master != Some(br.index) {
                self.host.set_master(port.index, br.index).await?;
                changed.push(format!("attached {host_ifname} to {bridge}"));
            }
        }
        if forwarding {
            self.host
                .enable_forwarding()
                .map_err(NetworkError::Forwarding)?;
        }
        for u in &self.state.uplinks {
            self.dp.attach_uplink(u)?;
        }
        for ep in self.state.endpoints.values() {
            if let Attachment::Veth { host_ifname } = &ep.attachment {
                if self.host.link_by_name(host_ifname).await?.is_some() {
                    self.dp.attach_endpoint(host_ifname)?;
                }
            }
        }
        self.sync_datapath().await?;
        Ok(changed)
    }

    /// After a crash between a kernel change and its state write, the two
    /// disagree; the state wins. A veth on one of our bridges that no
    /// endpoint owns is an interrupted connect's: removed. An endpoint whose
    /// veth is gone while its namespace lives (an interrupted disconnect, a
    /// link deleted by hand) is set up again as recorded.
    async fn repair_endpoints(&mut self) -> Result<Vec<String>, NetworkError> {
        let mut changed = Vec::new();
        let mut bridges = Vec::new();
        for net in self.state.networks.values() {
            if let Some(b) = &net.bridge {
                if let Some(l) = self.host.link_by_name(b).await? {
                    bridges.push(l.index);
                }
            }
        }
        let owned: std::collections::BTreeSet<&str> = self
            .state
            .endpoints
            .values()
            .filter_map(|e| match &e.attachment {
                Attachment::Veth { host_ifname } => Some(host_ifname.as_str()),
                _ => None,
            })
            .collect();
        for link in self.host.links().await? {
            let on_ours = link.master.is_some_and(|m| bridges.contains(&m));
            if on_ours
                && link.kind.as_deref() == Some("veth")
                && !owned.contains(link.name.as_str())
            {
                match self.host.delete_link(link.index).await {
                    Ok(()) => {
                        changed.push(format!("removed {}, a veth no endpoint owns", link.name))
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let missing: Vec<Endpoint> = {
            let mut v = Vec::new();
            for ep in self.state.endpoints.values() {
                if let Attachment::Veth { host_ifname } = &ep.attachment {
                    if self.host.link_by_name(host_ifname).await?.is_none()
                        && self.host.netns_id(&ep.netns).is_some()
                    {
                        v.push(ep.clone());
                    }
                }
            }
            v
        };
        for ep in missing {
            let (Some(net), Some(ipv4), Some(ifname), Some(mac), Attachment::Veth { host_ifname }) = (
                self.state.networks.get(&ep.network).cloned(),
                ep.ipv4,
                ep.ifname.clone(),
                ep.mac.as_deref().and_then(|m| ipam::parse_mac(m).ok()),
                &ep.attachment,
            ) else {
                continue;
            };
            let suffix = host_ifname.trim_start_matches("veth").to_owned();
            let plan = EndpointPlan {
                network: &net,
                netns: &ep.netns,
                ifname: &ifname,
                ipv4,
                mac,
                suffix: &suffix,
            };
            // A half-made endpoint in the namespace would block the rename.
            let _ = self
                .host
                .teardown_endpoint(&ep.netns, Some(&ifname), &ep.attachment)
                .await;
            self.host.setup_endpoint(&plan).await?;
            // The old link's pin outlived its veth: replace it.
            self.dp.detach_endpoint(host_ifname)?;
            self.dp.attach_endpoint(host_ifname)?;
            changed.push(format!(
                "set up endpoint {} on {} again",
                ep.name, ep.network
            ));
        }
        Ok(changed)
    }

    /// Disconnects every endpoint and removes every bridge, then the state
    /// file: what `dataplane cleanup` does to networking. Best effort.
    pub async fn teardown_all(mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let eps: Vec<Endpoint> = self.state.endpoints.values().cloned().collect();
        for ep in &eps {
            if self.state.endpoints.contains_key(&ep.id) {
                if let Err(e) = self.disconnect_endpoint(ep).await {
                    errors.push(e.to_string());
                }
            }
        }
        let bridges: Vec<String> = self
            .state
            .networks
            .values()
            .filter_map(|n| n.bridge.clone())
            .collect();
        for b in bridges {
            errors.extend(self.delete_link_named(&b).await);
        }
        let path = self.store.path();
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("removing {}: {e}", path.display()));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests;
