//! Overlay networks across hosts (docs/overlay.md): the cluster store and
//! this host's place in it. [`Cluster`] is what the manager asks of the
//! cluster (overlay networks, addresses, endpoint records); `sync` is the
//! agent's task that keeps this host's lease alive, watches the store and
//! brings the local networks and VXLAN entries in line with it.
//!
//! The store is reached only through [`ClusterStore`], so the manager's
//! logic runs in unit tests against [`MemStore`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

pub mod config;
mod ipam;
pub mod records;
pub mod store;
pub mod sync;

pub use config::{ClusterConfig, ClusterConfigError};
use records::{
    decode, encode, endpoint_key, host_key, network_endpoints_prefix, network_key, vni_key,
    BadRecord, EndpointRecord, HostRecord, NetworkRecord, FIRST_VNI, MAX_VNI,
};
pub use store::{ClusterStore, EtcdStore, LeaseId, MemStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] BadRecord),
    #[error("--driver overlay: this agent has no cluster store (set cluster_store and cluster_advertise, docs/overlay.md)")]
    NotConfigured,
    #[error("network {0}: an overlay network needs --subnet (the same on every host)")]
    NoSubnet(String),
    #[error("network {0}: an overlay network of this name already exists in the cluster")]
    Exists(String),
    #[error(
        "network {network}: endpoints on host(s) {hosts} ({count} in all); disconnect them first"
    )]
    InUse {
        network: String,
        hosts: String,
        count: usize,
    },
    #[error("network {network}: no free address in {range} across the cluster")]
    Exhausted { network: String, range: String },
    #[error("--ip {ip}: already in use on network {network} by host {host}")]
    AddressTaken {
        ip: Ipv4Addr,
        network: String,
        host: String,
    },
    #[error("network {network}: {ip} is not a usable address of {subnet}")]
    OutOfSubnet {
        ip: Ipv4Addr,
        network: String,
        subnet: String,
    },
    #[error("no free VNI left ({FIRST_VNI}-{MAX_VNI})")]
    NoVni,
    #[error("network {network}: the cluster kept changing under {attempts} attempts")]
    Contended { network: String, attempts: usize },
}

/// Who this host is in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub host_id: String,
    /// The VTEP: the outer source address of this host's VXLAN packets.
    pub vtep: Ipv4Addr,
    pub vxlan_port: u16,
    pub advertise_port: Option<u16>,
    /// The MTU of overlay endpoints here: the VTEP interface's minus the
    /// VXLAN overhead (50 bytes over IPv4).
    pub mtu: u32,
    pub lease_ttl: Duration,
}

/// The VXLAN overhead over IPv4: outer Ethernet 14 + IPv4 20 + UDP 8 +
/// VXLAN 8 bytes.
pub const VXLAN_OVERHEAD: u32 = 50;

/// What `dataplane cluster status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    pub host_id: String,
    pub vtep: String,
    pub store: String,
    pub reachable: bool,
    /// The last error talking to the store, if the last call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 time this host last converged to the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
    pub watch_events: u64,
    /// Remote endpoints programmed on this host's VXLAN devices.
    pub programmed: usize,
    pub networks: Vec<String>,
    /// Hosts with a live record, each with its endpoints by network.
    pub hosts: BTreeMap<String, HostStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostStatus {
    pub vtep: String,
    pub endpoints: usize,
}

/// This host's handle on the cluster: the store, who it is, its lease.
pub struct Cluster {
    store: Arc<dyn ClusterStore>,
    id: Identity,
    store_name: String,
    lease: tokio::sync::Mutex<Option<LeaseId>>,
    status: Mutex<ClusterStatus>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("store", &self.store_name)
            .finish_non_exhaustive()
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Cluster {
    pub fn new(store: Arc<dyn ClusterStore>, store_name: String, id: Identity) -> Cluster {
        let status = ClusterStatus {
            host_id: id.host_id.clone(),
            vtep: id.vtep.to_string(),
            store: store_name.clone(),
            ..ClusterStatus::default()
        };
        Cluster {
            store,
            id,
            store_name,
            lease: tokio::sync::Mutex::new(None),
            status: Mutex::new(status),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.id
    }

    pub fn store(&self) -> &dyn ClusterStore {
        &*self.store
    }

    /// This host's lease, granted (with the host record written) when it
    /// has none.
    pub async fn lease(&self) -> Result<LeaseId, ClusterError> {
        let mut slot = self.lease.lock().await;
        if let Some(l) = *slot {
            return Ok(l);
        }
        let l = self.store.grant(self.id.lease_ttl).await?;
        let rec = HostRecord {
            id: self.id.host_id.clone(),
            vtep: self.id.vtep,
            advertise_port: self.id.advertise_port,
            vxlan_port: self.id.vxlan_port,
            started: now_rfc3339(),
        };
        self.store
            .put(&host_key(&self.id.host_id), encode(&rec), Some(l))
            .await?;
        *slot = Some(l);
        Ok(l)
    }

    /// One keep-alive of the lease. Err when it is gone (the records
    /// bound to it went with it): the next [`Cluster::lease`] grants a new
    /// one, and the caller writes this host's records again.
    pub async fn keep_alive(&self) -> Result<(), ClusterError> {
        let current = *self.lease.lock().await;
        let Some(l) = current else {
            self.lease().await?;
            return Ok(());
        };
        match self.store.keep_alive(l).await {
            Err(StoreError::LeaseGone(_)) => {
                *self.lease.lock().await = None;
                Err(StoreError::LeaseGone(l).into())
            }
            r => Ok(r?),
        }
    }

    /// Every overlay network of the cluster.
    pub async fn networks(&self) -> Result<Vec<NetworkRecord>, ClusterError> {
        let (kvs, _) = self.store.get_prefix(&records::networks_prefix()).await?;
        kvs.iter()
            .map(|(k, v)| decode(k, v).map_err(ClusterError::from))
            .collect()
    }

    /// Writes a new overlay network with the next free VNI: the name and
    /// the VNI are taken in one transaction, so two hosts creating at once
    /// get one network each or one refusal.
    pub async fn create_network(
        &self,
        mut rec: NetworkRecord,
    ) -> Result<NetworkRecord, ClusterError> {
        const ATTEMPTS: usize = 16;
        for _ in 0..ATTEMPTS {
            let existing = self.networks().await?;
            if existing.iter().any(|n| n.name == rec.name) {
                return Err(ClusterError::Exists(rec.name));
            }
            let used: BTreeSet<u32> = existing.iter().map(|n| n.vni).collect();
            rec.vni = (FIRST_VNI..=MAX_VNI)
                .find(|v| !used.contains(v))
                .ok_or(ClusterError::NoVni)?;
            let pairs = vec![
                (network_key(&rec.name), encode(&rec)),
                (vni_key(rec.vni), rec.name.clone().into_bytes()),
            ];
            if self.store.create_all(&pairs, None).await? {
                return Ok(rec);
            }
        }
        Err(ClusterError::Contended {
            network: rec.name,
            attempts: ATTEMPTS,
        })
    }

    /// The endpoints of `network` across the cluster.
    pub async fn endpoints_of(&self, network: &str) -> Result<Vec<EndpointRecord>, ClusterError> {
        let (kvs, _) = self
            .store
            .get_prefix(&network_endpoints_prefix(network))
            .await?;
        kvs.iter()
            .map(|(k, v)| decode(k, v).map_err(ClusterError::from))
            .collect()
    }

    /// Removes an overlay network from the cluster: refused while any
    /// host other than this one has endpoints on it (this host's are the
    /// caller's to disconnect first).
    pub async fn remove_network(&self, rec: &NetworkRecord) -> Result<(), ClusterError> {
        let others: Vec<EndpointRecord> = self
            .endpoints_of(&rec.name)
            .await?
            .into_iter()
            .filter(|e| e.host != self.id.host_id)
            .collect();
        if !others.is_empty() {
            let hosts: BTreeSet<&str> = others.iter().map(|e| e.host.as_str()).collect();
            return Err(ClusterError::InUse {
                network: rec.name.clone(),
                hosts: hosts.into_iter().collect::<Vec<_>>().join(", "),
                count: others.len(),
            });
        }
        self.store.delete(&network_key(&rec.name)).await?;
        self.store.delete(&vni_key(rec.vni)).await?;
        self.store
            .delete_prefix(&records::ipam_prefix(&rec.name))
            .await?;
        self.store
            .delete_prefix(&network_endpoints_prefix(&rec.name))
            .await?;
        Ok(())
    }

    /// Publishes this host's endpoint (bound to the host's lease).
    pub async fn put_endpoint(&self, rec: &EndpointRecord) -> Result<(), ClusterError> {
        let lease = self.lease().await?;
        self.store
            .put(
                &endpoint_key(&rec.network, &rec.id),
                encode(rec),
                Some(lease),
            )
            .await?;
        Ok(())
    }

    pub async fn delete_endpoint(&self, network: &str, id: &str) -> Result<(), ClusterError> {
        Ok(self.store.delete(&endpoint_key(network, id)).await?)
    }

    /// Notes a store call's outcome for `cluster status`.
    pub fn note(&self, result: Result<(), String>) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.reachable = result.is_ok();
        s.error = result.err();
    }

    pub(crate) fn with_status(&self, f: impl FnOnce(&mut ClusterStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// What this host's watch last did, without asking the store (for a
    /// scrape, which must answer while the store is down).
    pub fn snapshot(&self) -> ClusterStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What `cluster status` shows: the store asked now for the hosts and
    /// endpoints, with what the watch last did.
    pub async fn status(&self) -> ClusterStatus {
        let mut out = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        out.hosts.clear();
        match self.store.get_prefix(records::PREFIX).await {
            Ok((kvs, _)) => {
                out.reachable = true;
                out.error = None;
                fill_status(&mut out, &kvs);
            }
            Err(e) => {
                out.reachable = false;
                out.error = Some(crate::sys::error_chain(&e));
            }
        }
        out
    }
}

/// Hosts, endpoints per host and networks from a read of the whole
/// prefix; records that do not decode are skipped.
fn fill_status(out: &mut ClusterStatus, kvs: &[(String, Vec<u8>)]) {
    out.networks.clear();
    for (k, v) in kvs {
        match records::Key::parse(k) {
            records::Key::Host(id) => {
                if let Ok(h) = decode::<HostRecord>(k, v) {
                    out.hosts.entry(id).or_default().vtep = h.vtep.to_string();
                }
            }
            records::Key::Network(name) => out.networks.push(name),
            _ => {}
        }
    }
    for (k, v) in kvs {
        if let records::Key::Endpoint { .. } = records::Key::parse(k) {
            if let Ok(e) = decode::<EndpointRecord>(k, v) {
                out.hosts.entry(e.host).or_default().endpoints += 1;
            }
        }
    }
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cluster_advertise {value}: {problem}")]
    Advertise { value: String, problem: String },
    #[error("cluster_advertise: reading the host's links")]
    Netlink(#[source] crate::sys::netlink::NetlinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// This host's VTEP address and the MTU of the interface that has it,
/// from `cluster_advertise`: an address must be one of this host's, an
/// interface must have an IPv4 address.
async fn advertise_addr(
    host: &crate::sys::netlink::Netlink,
    a: &config::Advertise,
) -> Result<(Ipv4Addr, u32), StartError> {
    let fail = |value: String, problem: &str| StartError::Advertise {
        value,
        problem: problem.to_owned(),
    };
    match &a.host {
        config::AdvertiseHost::Iface(name) => {
            let link = host
                .link_by_name(name)
                .await
                .map_err(StartError::Netlink)?
                .ok_or_else(|| fail(name.clone(), "no such interface"))?;
            let addrs = host
                .addrs(Some(link.index))
                .await
                .map_err(StartError::Netlink)?;
            let (_, ip, _) = addrs
                .first()
                .ok_or_else(|| fail(name.clone(), "the interface has no IPv4 address"))?;
            Ok((*ip, link.mtu))
        }
        config::AdvertiseHost::Ip(ip) => {
            let addrs = host.addrs(None).await.map_err(StartError::Netlink)?;
            let (index, _, _) = addrs
                .iter()
                .find(|(_, a, _)| a == ip)
                .ok_or_else(|| fail(ip.to_string(), "not an address of this host"))?;
            let link = host
                .link_by_index(*index)
                .await
                .map_err(StartError::Netlink)?
                .ok_or_else(|| fail(ip.to_string(), "its interface went away"))?;
            Ok((*ip, link.mtu))
        }
    }
}

/// The cluster of `cfg`: the advertise address resolved, the store's
/// client made (it dials lazily: an unreachable store shows in `cluster
/// status` and the sync task's log, and the agent starts anyway, so local
/// networks are not held hostage by the store).
pub async fn start(cfg: &ClusterConfig) -> Result<Arc<Cluster>, StartError> {
    let host = crate::sys::netlink::Netlink::connect(None)
        .await
        .map_err(StartError::Netlink)?;
    let (vtep, mtu) = advertise_addr(&host, &cfg.advertise).await?;
    let store = EtcdStore::connect(&cfg.store, cfg.tls.as_ref()).await?;
    let id = Identity {
        host_id: cfg.host_id.clone().unwrap_or_else(|| vtep.to_string()),
        vtep,
        vxlan_port: cfg.vxlan_port,
        advertise_port: cfg.advertise.port,
        mtu: mtu.saturating_sub(VXLAN_OVERHEAD),
        lease_ttl: cfg.lease_ttl,
    };
    let name = format!("etcd://{}", cfg.store.members.join(","));
    Ok(Arc::new(Cluster::new(Arc::new(store), name, id)))
}
