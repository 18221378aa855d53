//! Networks: the predefined ones of a first start, `network create` (its
//! subnet checked against the other networks and the uplinks, its bridge
//! made) and `network rm`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{now_rfc3339, random_hex, Manager, NetworkError};
use crate::{
    control::{
        driver::{self, BridgeError, NetworkDriver as _},
        host::Host,
        ipam::{self, v6, IpamError},
        model::{
            BridgeConfig, CreateRequest, DriverConfig, Endpoint, GatewayMode, Network,
            DEFAULT_BRIDGE, DEFAULT_MTU,
        },
        state::{State, VERSION},
    },
    datapath::Datapath,
};

impl<D: Datapath, H: Host> Manager<D, H> {
    pub(super) async fn init_predefined(&mut self) -> Result<(), NetworkError> {
        let routes = self.host_routes().await?;
        let subnet = ipam::next_free_subnet(&[], &routes)?;
        let gateway = ipam::first_host(&subnet);
        let bridge = Network {
            id: random_hex(32)?,
            name: "bridge".into(),
            driver: DriverConfig::Bridge(BridgeConfig {
                name: DEFAULT_BRIDGE.into(),
                icc: true,
                masquerade: true,
                host_binding_ipv4: None,
                gateway_mode: GatewayMode::Nat,
                trusted_host_interfaces: Vec::new(),
            }),
            created: now_rfc3339(),
            subnet: Some(subnet),
            gateway: Some(gateway),
            ip_range: None,
            subnet6: None,
            gateway6: None,
            ip_range6: None,
            enable_ipv6: false,
            enable_ipv4: true,
            internal: false,
            mtu: DEFAULT_MTU,
            labels: BTreeMap::new(),
        };
        driver::for_network(&bridge)
            .create(&self.host, &bridge)
            .await?;
        self.host
            .enable_forwarding()
            .map_err(NetworkError::Forwarding)?;
        // The version the files will say, so what is held and what is
        // stored agree from the first write.
        let mut state = State {
            version: VERSION,
            ..State::default()
        };
        for (name, driver) in [("host", DriverConfig::Host), ("none", DriverConfig::Null)] {
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
                    subnet6: None,
                    gateway6: None,
                    ip_range6: None,
                    enable_ipv6: false,
                    enable_ipv4: true,
                    internal: false,
                    mtu: DEFAULT_MTU,
                    labels: BTreeMap::new(),
                },
            );
        }
        state.networks.insert("bridge".into(), bridge);
        self.persist(state).await
    }

    pub(super) async fn host_routes(&self) -> Result<Vec<Ipv4Net>, NetworkError> {
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
    pub(super) async fn uplink_addrs(
        &self,
    ) -> Result<Vec<(String, Vec<(Ipv4Addr, u8)>)>, NetworkError> {
        let mut out = Vec::new();
        for l in self.uplink_links().await? {
            let addrs = self.host.addrs(Some(l.index)).await?;
            out.push((
                l.name,
                addrs.into_iter().map(|(_, a, len)| (a, len)).collect(),
            ));
        }
        Ok(out)
    }

    /// [`Self::uplink_addrs`] for IPv6 (link-local ones left out: no
    /// network can take fe80::/10).
    pub(super) async fn uplink_addrs6(
        &self,
    ) -> Result<Vec<(String, Vec<(std::net::Ipv6Addr, u8)>)>, NetworkError> {
        let mut out = Vec::new();
        for l in self.uplink_links().await? {
            let addrs = self.host.addrs6(Some(l.index)).await?;
            out.push((
                l.name,
                addrs
                    .into_iter()
                    .filter(|(_, a, _)| !a.is_unicast_link_local())
                    .map(|(_, a, len)| (a, len))
                    .collect(),
            ));
        }
        Ok(out)
    }

    /// The uplinks' links: those added, and the interfaces the default
    /// routes leave by.
    async fn uplink_links(&self) -> Result<Vec<crate::sys::netlink::Link>, NetworkError> {
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
        Ok(links)
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

    /// The subnet asked for, checked against the other networks' and the
    /// uplinks', or the next free one of the default pools.
    pub(super) async fn subnet_for(&self, asked: Option<Ipv4Net>) -> Result<Ipv4Net, NetworkError> {
        let used: Vec<(String, Ipv4Net)> = self
            .state
            .networks
            .values()
            .filter_map(|n| n.subnet.map(|s| (n.name.clone(), s)))
            .collect();
        match asked {
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
                Ok(s)
            }
            None => {
                let taken: Vec<Ipv4Net> = used.iter().map(|(_, s)| *s).collect();
                Ok(ipam::next_free_subnet(&taken, &self.host_routes().await?)?)
            }
        }
    }

    /// The IPv6 subnet asked for, checked against the other networks' and
    /// the uplinks' prefixes, or the next free /64 of the host's unique
    /// local prefix (past the uplinks' prefixes too); with the host's
    /// global ID when it was made for this network (to be stored with it).
    async fn subnet6_for(
        &self,
        asked: Option<Ipv6Net>,
    ) -> Result<(Ipv6Net, Option<u64>), NetworkError> {
        let uplinks = self.uplink_addrs6().await?;
        let used: Vec<(String, Ipv6Net)> = self
            .state
            .networks
            .values()
            .filter_map(|n| n.subnet6.map(|s| (n.name.clone(), s)))
            .collect();
        if let Some(s) = asked {
            if let Some((other, os)) = used.iter().find(|(_, u)| v6::overlaps6(&s, u)) {
                return Err(IpamError::Overlap6 {
                    subnet: s,
                    other: other.clone(),
                    other_subnet: *os,
                }
                .into());
            }
            v6::check_not_uplink6(&s, &uplinks)?;
            return Ok((s, None));
        }
        let (id, new) = match self.state.ula_global_id {
            Some(id) => (id, None),
            None => {
                let id = v6::new_global_id().map_err(NetworkError::Random)?;
                (id, Some(id))
            }
        };
        let mut taken: Vec<Ipv6Net> = used.into_iter().map(|(_, s)| s).collect();
        taken.extend(
            uplinks
                .iter()
                .flat_map(|(_, addrs)| addrs)
                .filter_map(|(a, len)| Ipv6Net::new(*a, *len).ok().map(|n| n.trunc())),
        );
        Ok((v6::next_free_ula(id, &taken)?, new))
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
        if req.driver == crate::control::model::DriverKind::Overlay {
            return self.create_overlay(req, id).await;
        }
        let subnet = match req.enable_ipv4 {
            true => Some(self.subnet_for(req.subnet).await?),
            false => None,
        };
        let gateway = subnet.map(|s| req.gateway.unwrap_or_else(|| ipam::first_host(&s)));
        let (subnet6, new_ula_id) = match req.enable_ipv6 {
            true => {
                let (s, id) = self.subnet6_for(req.subnet6).await?;
                (Some(s), id)
            }
            false => (None, None),
        };
        let gateway6 = subnet6.map(|s| req.gateway6.unwrap_or_else(|| v6::first_host6(&s)));
        let net = Network {
            driver: req.driver_config(&id)?,
            id,
            name: req.name.clone(),
            created: now_rfc3339(),
            subnet,
            gateway,
            ip_range: req.ip_range,
            subnet6,
            gateway6,
            ip_range6: req.ip_range6,
            enable_ipv6: req.enable_ipv6,
            enable_ipv4: req.enable_ipv4,
            internal: req.internal,
            mtu: req.mtu,
            labels: req.labels.clone(),
        };
        let driver = driver::for_network(&net);
        if let Some(name) = driver.bridge() {
            if let Some(other) = self
                .state
                .networks
                .values()
                .find(|n| driver::for_network(n).bridge() == Some(name))
            {
                return Err(BridgeError::InUse {
                    bridge: name.to_owned(),
                    kind: format!("bridge of network {}", other.name),
                }
                .into());
            }
        }
        driver.create(&self.host, &net).await?;
        if driver.needs_forwarding(&net) {
            self.host
                .enable_forwarding()
                .map_err(NetworkError::Forwarding)?;
        }
        let changed = self
            .change(|state| {
                if new_ula_id.is_some() {
                    state.ula_global_id = new_ula_id;
                }
                state.networks.insert(net.name.clone(), net.clone())
            })
            .await;
        if let Err(e) = changed {
            driver::for_network(&net).remove(&self.host).await;
            return Err(e);
        }
        Ok(net)
    }

    /// IPv6 on the default `bridge` network (the agent's
    /// `default_bridge_ipv6`): its subnet (`asked`, checked as `--subnet`
    /// is, or a /64 of the host's unique local prefix), gateway and the
    /// bridge's address. Endpoints connected before keep IPv4 only; those
    /// connected after get both. Already on, it is kept as it is (a
    /// different `asked` is reported, not applied: addresses in use would
    /// change under their containers).
    pub async fn default_bridge_ipv6(
        &mut self,
        asked: Option<Ipv6Net>,
    ) -> Result<Vec<String>, NetworkError> {
        let mut net = self.network("bridge")?.clone();
        if net.enable_ipv6 {
            return Ok(match (asked, net.subnet6) {
                (Some(a), Some(have)) if a != have => vec![format!(
                    "IPv6 kept on {have}; default_bridge_subnet6 {a} applies to a new state only"
                )],
                _ => Vec::new(),
            });
        }
        let asked = asked
            .map(|s| v6::parse_subnet6(&s.to_string()))
            .transpose()?;
        let (subnet6, new_ula_id) = self.subnet6_for(asked).await?;
        net.subnet6 = Some(subnet6);
        net.gateway6 = Some(v6::first_host6(&subnet6));
        net.enable_ipv6 = true;
        let mut changed = driver::for_network(&net).restore(&self.host, &net).await?;
        changed.insert(0, format!("IPv6 on, subnet {subnet6}"));
        self.change(|state| {
            if new_ula_id.is_some() {
                state.ula_global_id = new_ula_id;
            }
            state.networks.insert(net.name.clone(), net.clone())
        })
        .await?;
        Ok(changed)
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

    pub(super) async fn remove_one(&mut self, name: &str, force: bool) -> Result<(), NetworkError> {
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
        self.overlay_leave(&net).await?;
        let mut errors = Vec::new();
        for ep in &eps {
            if let Err(e) = self.disconnect_endpoint(ep).await {
                errors.push(e.to_string());
            }
        }
        errors.extend(driver::for_network(&net).remove(&self.host).await);
        self.change(|state| state.networks.remove(&net.name))
            .await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetworkError::Teardown {
                context: format!("network {} removed, but", net.name),
                errors,
            })
        }
    }
}
