//! The manager's operations for Docker's remote network driver
//! (`crate::frontends::docker` speaks the protocol and parses it into these typed
//! calls). A Docker network is one of ours whose id is Docker's NetworkID
//! and whose name is `docker-<12 hex of the id>`; a Docker endpoint is one
//! of ours whose id is Docker's EndpointID, recorded at CreateEndpoint with
//! the address Docker's IPAM gave and no namespace until Join.
//!
//! Join differs from `connect`: Docker moves the container end of the veth
//! into the sandbox and configures it itself, so the veth is made here with
//! both ends in the host namespace, the host end on the bridge with the
//! per-endpoint program attached, and the other end handed to Docker.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use super::{publish::Refused, Manager, NetworkError};
/// Docker's range for ports published without a host port (`-p 80`) when
/// the kernel's `ip_local_port_range` cannot be read; the range used is
/// the host's ([`Host::ephemeral_ports`]).
pub use crate::sys::sockets::FALLBACK_EPHEMERAL_PORTS as EPHEMERAL_PORTS;
use crate::{
    control::{
        driver::{self, DriverError, NetworkDriver as _},
        host::Host,
        ipam,
        model::{Attachment, CreateRequest, Endpoint, Network},
        names::MacAddr,
        ports::{self, PortMapping, PortRequest, Proto},
    },
    datapath::Datapath,
};

#[derive(Debug, thiserror::Error)]
pub enum DockerOpError {
    #[error("NetworkID {0}: no network of the dataplane has this id")]
    UnknownNetwork(String),
    #[error("EndpointID {endpoint}: no endpoint of network {network} has this id")]
    UnknownEndpoint { network: String, endpoint: String },
    #[error("NetworkID {id}: already created with pool {existing}, now asked for {asked}")]
    Recreated {
        id: String,
        existing: String,
        asked: String,
    },
    #[error("EndpointID {0}: already exists")]
    DuplicateEndpoint(String),
    #[error("EndpointID {endpoint}: already joined to sandbox {sandbox}")]
    AlreadyJoined { endpoint: String, sandbox: String },
    #[error("EndpointID {endpoint}: interface name {ifname} is taken in the host namespace")]
    IfnameTaken { endpoint: String, ifname: String },
    #[error("EndpointID {0}: not a veth endpoint")]
    NotVeth(String),
    #[error("com.docker.network.portmap {binding}: every host port of the range is taken (the last one tried: {last})")]
    PortsTaken { binding: String, last: String },
}

/// One entry of Docker's `com.docker.network.portmap`, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DockerPortBinding {
    pub proto: Proto,
    /// None: every host address (of both families).
    pub host_ip: Option<IpAddr>,
    /// 0: any free port (`-p 80`).
    pub host_port: u16,
    /// Equal to `host_port` unless Docker was given a range to pick from.
    pub host_port_end: u16,
    pub container_port: u16,
}

impl DockerPortBinding {
    /// The binding as a `--publish` request: host port 0 is any free one.
    pub fn request(&self) -> PortRequest {
        PortRequest {
            // 0.0.0.0 is every address, as `--publish` has it.
            host_ip: self
                .host_ip
                .filter(|ip| *ip != IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            host_ports: (self.host_port != 0)
                .then_some((self.host_port, self.host_port_end.max(self.host_port))),
            container_port: self.container_port,
            proto: self.proto,
        }
    }
}

impl std::fmt::Display for DockerPortBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}-{}:{}/{}",
            self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            self.host_port,
            self.host_port_end,
            self.container_port,
            self.proto.name()
        )
    }
}

/// What Join hands back to Docker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerJoin {
    /// The veth end in the host namespace that Docker moves into the
    /// sandbox and renames.
    pub src_name: String,
    /// None for internal networks (no way out, no default route).
    pub gateway: Option<Ipv4Addr>,
    /// The same for IPv6, on a network with IPv6.
    pub gateway6: Option<Ipv6Addr>,
}

/// Our name of a Docker network.
pub fn docker_network_name(network_id: &str) -> String {
    format!("docker-{}", &network_id[..12.min(network_id.len())])
}

/// Host-side names of a Docker endpoint's veth: (on the bridge, handed to
/// Docker).
pub fn docker_veth_names(endpoint_id: &str) -> (String, String) {
    let suffix = &endpoint_id[..7.min(endpoint_id.len())];
    (format!("veth{suffix}"), format!("vtmp{suffix}"))
}

impl<D: Datapath, H: Host> Manager<D, H> {
    /// The network Docker knows as `network_id`.
    pub fn docker_network(&self, network_id: &str) -> Result<&Network, NetworkError> {
        self.state
            .networks
            .values()
            .find(|n| n.id == network_id)
            .ok_or_else(|| DockerOpError::UnknownNetwork(network_id.to_owned()).into())
    }

    /// The endpoint Docker knows as `endpoint_id` on `network_id`.
    pub fn docker_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<&Endpoint, NetworkError> {
        let net = self.docker_network(network_id)?;
        self.state
            .endpoints
            .get(endpoint_id)
            .filter(|e| e.network == net.name)
            .ok_or_else(|| {
                DockerOpError::UnknownEndpoint {
                    network: net.name.clone(),
                    endpoint: endpoint_id.to_owned(),
                }
                .into()
            })
    }

    /// CreateNetwork. Asked again for an existing id with the same pool (a
    /// retry), it answers with the network as it is.
    pub async fn docker_create_network(
        &mut self,
        network_id: &str,
        req: CreateRequest,
    ) -> Result<Network, NetworkError> {
        if let Ok(net) = self.docker_network(network_id) {
            if net.subnet == req.subnet {
                return Ok(net.clone());
            }
            return Err(DockerOpError::Recreated {
                id: network_id.to_owned(),
                existing: net.subnet.map(|s| s.to_string()).unwrap_or_default(),
                asked: req.subnet.map(|s| s.to_string()).unwrap_or_default(),
            }
            .into());
        }
        self.create_with_id(req, network_id.to_owned()).await
    }

    /// DeleteNetwork: the network and anything still attached to it.
    pub async fn docker_delete_network(&mut self, network_id: &str) -> Result<(), NetworkError> {
        let name = self.docker_network(network_id)?.name.clone();
        self.remove(&[name], true).await.map(|_| ())
    }

    /// CreateEndpoint: records the endpoint with Docker's address (checked
    /// against the subnet, the gateway and the other endpoints) and MAC, or
    /// ours (02:42:<ip>) when Docker gave none. Nothing in the kernel yet.
    pub async fn docker_create_endpoint(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        (ipv4, ipv6): (Option<Ipv4Addr>, Option<Ipv6Addr>),
        mac: Option<[u8; 6]>,
    ) -> Result<Endpoint, NetworkError> {
        let net = self.docker_network(network_id)?.clone();
        if self.state.endpoints.contains_key(endpoint_id) {
            return Err(DockerOpError::DuplicateEndpoint(endpoint_id.to_owned()).into());
        }
        if let Some(ipv4) = ipv4 {
            let (subnet, used) = self.addresses_in_use(&net)?;
            ipam::check_requested(&subnet, ipv4, &used)?;
        }
        // Checked as `--ip6` is (in the subnet, not the gateway, free).
        let ipv6 = match ipv6 {
            Some(ip) => self.address6_for(&net, Some(ip))?,
            None => None,
        };
        let (host_ifname, peer) = docker_veth_names(endpoint_id);
        for name in [&host_ifname, &peer] {
            if self.host.link_by_name(name).await?.is_some() {
                return Err(DockerOpError::IfnameTaken {
                    endpoint: endpoint_id.to_owned(),
                    ifname: name.clone(),
                }
                .into());
            }
        }
        let mac = match (mac, ipv4, ipv6) {
            (Some(m), _, _) => m,
            (None, Some(ip), _) => ipam::mac_for(ip),
            (None, None, Some(ip)) => ipam::v6::mac_for6(ip),
            (None, None, None) => ipam::mac_for(Ipv4Addr::UNSPECIFIED),
        };
        let ep = Endpoint {
            id: endpoint_id.to_owned(),
            name: endpoint_id[..12.min(endpoint_id.len())].to_owned(),
            network: net.name.clone(),
            netns: PathBuf::new(),
            attachment: Attachment::Veth { host_ifname },
            ifname: None,
            mac: Some(MacAddr(mac)),
            ipv4,
            ipv6,
            published: Vec::new(),
            aliases: Vec::new(),
        };
        self.record(ep).await
    }

    /// Join: the veth pair in the host namespace, host end on the bridge and
    /// up with the endpoint program attached, the other end with the
    /// endpoint's MAC for Docker to move into `sandbox`.
    pub async fn docker_join(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        sandbox: &Path,
    ) -> Result<DockerJoin, NetworkError> {
        let net = self.docker_network(network_id)?.clone();
        let ep = self.docker_endpoint(network_id, endpoint_id)?.clone();
        if !ep.netns.as_os_str().is_empty() {
            return Err(DockerOpError::AlreadyJoined {
                endpoint: endpoint_id.to_owned(),
                sandbox: ep.netns.display().to_string(),
            }
            .into());
        }
        let Attachment::Veth { host_ifname } = &ep.attachment else {
            return Err(DockerOpError::NotVeth(endpoint_id.to_owned()).into());
        };
        let (_, peer) = docker_veth_names(endpoint_id);
        let bridge = driver::for_network(&net)
            .bridge()
            .unwrap_or_default()
            .to_owned();
        let br =
            self.host
                .link_by_name(&bridge)
                .await?
                .ok_or_else(|| DriverError::BridgeMissing {
                    network: net.name.clone(),
                    bridge: bridge.clone(),
                })?;
        let mac = ep
            .mac
            .map(|m| m.octets())
            .unwrap_or_else(|| ipam::mac_for(ep.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED)));
        let (host_end, peer_end) = self
            .host
            .create_veth(host_ifname, &peer, Some(net.mtu))
            .await?;
        let result = async {
            self.host.set_master(host_end.index, br.index).await?;
            self.host.set_up(host_end.index).await?;
            self.host.set_mac(peer_end.index, mac).await?;
            self.dp.attach_endpoint(host_ifname, ep.ipv6.is_some())?;
            self.change(|state| {
                if let Some(e) = state.endpoints.get_mut(endpoint_id) {
                    e.netns = sandbox.to_owned();
                }
            })
            .await
        }
        .await;
        if let Err(e) = result {
            let _ = self.dp.detach_endpoint(host_ifname);
            let _ = self.host.delete_link(host_end.index).await;
            return Err(e);
        }
        Ok(DockerJoin {
            src_name: peer,
            gateway: net.gateway.filter(|_| !net.internal),
            gateway6: net.gateway6.filter(|_| !net.internal && ep.ipv6.is_some()),
        })
    }

    /// Leave: the endpoint is in no sandbox any more. Its veth stays until
    /// DeleteEndpoint (Docker moves the container end back to the host
    /// namespace after Leave, as with its own bridge driver).
    pub async fn docker_leave(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), NetworkError> {
        let ep = self.docker_endpoint(network_id, endpoint_id)?.clone();
        self.change(|state| {
            if let Some(e) = state.endpoints.get_mut(&ep.id) {
                e.netns = PathBuf::new();
                e.published.clear();
            }
        })
        .await
    }

    /// DeleteEndpoint: the veth, the endpoint program and the record.
    pub async fn docker_delete_endpoint(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), NetworkError> {
        let ep = self.docker_endpoint(network_id, endpoint_id)?.clone();
        self.disconnect_endpoint(&ep).await
    }

    /// ProgramExternalConnectivity: the endpoint publishes exactly
    /// `bindings` (replacing what it published). A binding with a host port
    /// range or no host port gets the first free port of the range (of
    /// the host's ephemeral range), as Docker's port allocator does: the
    /// one allocator of `--publish` ([`Manager::choose_ports`]).
    pub async fn docker_program_external(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        bindings: &[DockerPortBinding],
    ) -> Result<Vec<PortMapping>, NetworkError> {
        let ep = self.docker_endpoint(network_id, endpoint_id)?.clone();
        // This endpoint's mappings are being replaced: no conflict.
        let wanted: Vec<PortRequest> = bindings.iter().map(DockerPortBinding::request).collect();
        let net = self.docker_network(network_id)?;
        ports::check_families(&net.name, net.enable_ipv6, &wanted)?;
        let chosen = match self.choose_ports(&wanted, &ep.published)? {
            Ok(chosen) => chosen,
            Err(Refused { index, holder }) => {
                return Err(DockerOpError::PortsTaken {
                    binding: bindings[index].to_string(),
                    last: self.holder_text(&holder),
                }
                .into());
            }
        };
        let mappings = self.claim_slots(chosen, ep.ipv4.is_some() && ep.ipv6.is_some())?;
        self.change(|state| {
            if let Some(e) = state.endpoints.get_mut(&ep.id) {
                e.published = mappings.clone();
            }
        })
        .await?;
        Ok(mappings)
    }

    /// RevokeExternalConnectivity: the endpoint publishes nothing.
    pub async fn docker_revoke_external(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), NetworkError> {
        let ep = self.docker_endpoint(network_id, endpoint_id)?.clone();
        if ep.published.is_empty() {
            return Ok(());
        }
        self.change(|state| {
            if let Some(e) = state.endpoints.get_mut(&ep.id) {
                e.published.clear();
            }
        })
        .await
    }
}
