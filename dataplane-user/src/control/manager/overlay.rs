//! Overlay networks in the manager (docs/overlay.md): `network create -d
//! overlay` writes the network to the cluster store and makes it here;
//! networks other hosts made are adopted by the cluster's watch
//! (`control::cluster::sync`) through [`Manager::adopt_overlay`]; a
//! connect takes its address from the cluster and publishes its endpoint;
//! a disconnect and `network rm` give them back.

use std::{net::Ipv4Addr, sync::Arc};

use super::{now_rfc3339, ConnectRequest, Manager, NetworkError};
use crate::{
    control::{
        cluster::{
            records::{EndpointRecord, NetworkRecord},
            Cluster, ClusterError,
        },
        driver::{self, NetworkDriver as _},
        host::Host,
        ipam,
        model::{
            Attachment, CreateRequest, DriverConfig, Endpoint, Network, OverlayConfig, DEFAULT_MTU,
        },
    },
    datapath::Datapath,
};

/// The devices of the overlay network with this id on every host.
fn device_names(id: &str) -> (String, String) {
    let short = id.get(..12).unwrap_or(id);
    (format!("ov-{short}"), format!("vx-{short}"))
}

impl<D: Datapath, H: Host> Manager<D, H> {
    /// The cluster, or the error saying this agent has none.
    pub fn cluster(&self) -> Result<Arc<Cluster>, NetworkError> {
        Ok(self.cluster.clone().ok_or(ClusterError::NotConfigured)?)
    }

    /// `network create -d overlay`: the record in the cluster (name and VNI
    /// taken in one transaction), then the network here.
    pub(super) async fn create_overlay(
        &mut self,
        req: CreateRequest,
        id: String,
    ) -> Result<Network, NetworkError> {
        let cluster = self.cluster()?;
        if self.state.networks.contains_key(&req.name) {
            return Err(NetworkError::DuplicateName(req.name));
        }
        if req.enable_ipv6 {
            return Err(NetworkError::NotApplicable {
                network: req.name,
                option: "--ipv6",
                driver: "overlay",
            });
        }
        let subnet = req
            .subnet
            .ok_or_else(|| ClusterError::NoSubnet(req.name.clone()))?;
        self.subnet_for(Some(subnet)).await?;
        let rec = NetworkRecord {
            id,
            name: req.name.clone(),
            subnet,
            gateway: req.gateway.unwrap_or_else(|| ipam::first_host(&subnet)),
            ip_range: req.ip_range,
            vni: 0,
            mtu: (req.mtu != DEFAULT_MTU).then_some(req.mtu),
            created: now_rfc3339(),
            created_by: cluster.identity().host_id.clone(),
            labels: req.labels.clone(),
        };
        let rec = cluster.create_network(rec).await?;
        match self.adopt_overlay(&rec).await {
            Ok(net) => Ok(net),
            Err(e) => {
                let _ = cluster.remove_network(&rec).await;
                Err(e)
            }
        }
    }

    /// The cluster's network `rec` on this host: its bridge and VXLAN
    /// device, and its record in the state. One already here with the
    /// same id is kept as it is; a local network of that name that is not
    /// it is an error.
    pub async fn adopt_overlay(&mut self, rec: &NetworkRecord) -> Result<Network, NetworkError> {
        if let Some(n) = self.state.networks.get(&rec.name) {
            if n.id == rec.id {
                return Ok(n.clone());
            }
            return Err(NetworkError::DuplicateName(rec.name.clone()));
        }
        let me = self.cluster()?.identity().clone();
        let (bridge, vxlan) = device_names(&rec.id);
        let net = Network {
            id: rec.id.clone(),
            name: rec.name.clone(),
            driver: DriverConfig::Overlay(OverlayConfig {
                bridge,
                vxlan,
                vni: rec.vni,
                vtep: me.vtep,
                port: me.vxlan_port,
            }),
            created: rec.created.clone(),
            subnet: Some(rec.subnet),
            gateway: Some(rec.gateway),
            ip_range: rec.ip_range,
            subnet6: None,
            gateway6: None,
            ip_range6: None,
            enable_ipv6: false,
            enable_ipv4: true,
            internal: false,
            mtu: rec.mtu.map_or(me.mtu, |m| m.min(me.mtu)),
            labels: rec.labels.clone(),
        };
        let driver = driver::for_network(&net);
        driver.create(&self.host, &net).await?;
        if driver.needs_forwarding(&net) {
            self.host
                .enable_forwarding()
                .map_err(NetworkError::Forwarding)?;
        }
        let changed = self
            .change(|state| state.networks.insert(net.name.clone(), net.clone()))
            .await;
        if let Err(e) = changed {
            driver::for_network(&net).remove(&self.host).await;
            return Err(e);
        }
        Ok(net)
    }

    /// A network gone from the cluster goes here too, with its endpoints.
    /// Only when the store says it is gone: never on a stale view, and
    /// `network rm`'s path (which takes it out of the store) then finds
    /// nothing to take out.
    pub async fn drop_overlay(&mut self, name: &str, id: &str) -> Result<(), NetworkError> {
        let ours = self
            .state
            .networks
            .get(name)
            .is_some_and(|n| n.id == id && matches!(n.driver, DriverConfig::Overlay(_)));
        if !ours || self.cluster()?.networks().await?.iter().any(|r| r.id == id) {
            return Ok(());
        }
        self.remove_one(name, true).await
    }

    /// This host's overlay networks.
    pub fn overlay_networks(&self) -> Vec<(&Network, &OverlayConfig)> {
        self.state
            .networks
            .values()
            .filter_map(|n| match &n.driver {
                DriverConfig::Overlay(o) => Some((n, o)),
                _ => None,
            })
            .collect()
    }

    /// This host's endpoints on overlay networks, as the cluster records
    /// them (those sharing another's namespace have no address of their
    /// own to publish).
    pub fn overlay_endpoints(&self) -> Vec<EndpointRecord> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let me = cluster.identity();
        self.overlay_networks()
            .into_iter()
            .flat_map(|(n, _)| self.state.endpoints_of(&n.name))
            .filter_map(|ep| endpoint_record(ep, &me.host_id, me.vtep))
            .collect()
    }

    /// `connect` to an overlay network: the address from the cluster, the
    /// endpoint as on a bridge, then its record for the other hosts. What
    /// fails half-way gives the address back.
    pub(super) async fn connect_overlay(
        &mut self,
        net: &Network,
        mut req: ConnectRequest,
    ) -> Result<Endpoint, NetworkError> {
        let cluster = self.cluster()?;
        let (Some(subnet), Some(gateway)) = (net.subnet, net.gateway) else {
            return Err(NetworkError::UnknownNetwork(net.name.clone()));
        };
        let range = net.alloc_range().unwrap_or(subnet);
        let ip = cluster
            .allocate(&net.name, subnet, range, gateway, req.ip)
            .await?;
        req.ip = Some(ip);
        let ep = match self.connect_network_local(&net.name, req).await {
            Ok(ep) => ep,
            Err(e) => {
                let _ = cluster.release(&net.name, ip).await;
                return Err(e);
            }
        };
        let me = cluster.identity();
        let published = match endpoint_record(&ep, &me.host_id, me.vtep) {
            Some(rec) => cluster.put_endpoint(&rec).await,
            None => Ok(()),
        };
        if let Err(e) = published {
            let _ = self.disconnect_endpoint(&ep).await;
            return Err(e.into());
        }
        Ok(ep)
    }

    /// After a disconnect: the endpoint's record and address go from the
    /// cluster. Returns what failed.
    pub(super) async fn overlay_forget(&self, ep: &Endpoint) -> Vec<String> {
        let (Some(cluster), Some(ip)) = (&self.cluster, ep.ipv4) else {
            return Vec::new();
        };
        let overlay = self
            .state
            .networks
            .get(&ep.network)
            .is_some_and(|n| matches!(n.driver, DriverConfig::Overlay(_)));
        if !overlay || matches!(ep.attachment, Attachment::Container { .. }) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        if let Err(e) = cluster.delete_endpoint(&ep.network, &ep.id).await {
            errors.push(crate::sys::error_chain(&e));
        }
        if let Err(e) = cluster.release(&ep.network, ip).await {
            errors.push(crate::sys::error_chain(&e));
        }
        errors
    }

    /// Before `network rm` of an overlay network: gone from the cluster
    /// (refused while other hosts have endpoints on it). A network the
    /// cluster no longer has (removed by another host) goes here alone.
    pub(super) async fn overlay_leave(&self, net: &Network) -> Result<(), NetworkError> {
        let DriverConfig::Overlay(o) = &net.driver else {
            return Ok(());
        };
        let cluster = self.cluster()?;
        let listed = cluster.networks().await?;
        let Some(rec) = listed.into_iter().find(|r| r.id == net.id) else {
            return Ok(());
        };
        debug_assert_eq!(rec.vni, o.vni);
        Ok(cluster.remove_network(&rec).await?)
    }
}

/// What the other hosts need of an endpoint with an address of its own.
fn endpoint_record(ep: &Endpoint, host: &str, vtep: Ipv4Addr) -> Option<EndpointRecord> {
    if matches!(ep.attachment, Attachment::Container { .. }) {
        return None;
    }
    Some(EndpointRecord {
        id: ep.id.clone(),
        name: ep.name.clone(),
        network: ep.network.clone(),
        host: host.to_owned(),
        ip: ep.ipv4?,
        mac: ep.mac?.to_string(),
        vtep,
    })
}
