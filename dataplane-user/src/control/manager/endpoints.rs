//! Endpoints: `connect` (a namespace on a network, or `container:<name>`
//! sharing another endpoint's) and `disconnect`.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use super::{netns_path, random_hex, ConnectRequest, ConnectTo, Manager, NetworkError};
use crate::{
    control::{
        driver::{self, host_veth_name, EndpointPlan, HostEndPrograms, NetworkDriver as _},
        host::Host,
        ipam::{self, v6},
        model::{Attachment, Endpoint, Network},
        names::{IfName, MacAddr},
        ports,
    },
    datapath::Datapath,
};

/// `--ip`, `--mac` and `--ifname` are for endpoints with a link of their
/// own: refused for `host`, `none` and `container:` endpoints.
fn refuse_link_options(
    req: &ConnectRequest,
    network: &str,
    driver: &'static str,
) -> Result<(), NetworkError> {
    for (option, given) in [
        ("--ip", req.ip.is_some()),
        ("--ip6", req.ip6.is_some()),
        ("--mac", req.mac.is_some()),
        ("--ifname", req.ifname.is_some()),
    ] {
        if given {
            return Err(NetworkError::NotApplicable {
                network: network.to_owned(),
                option,
                driver,
            });
        }
    }
    Ok(())
}

impl<D: Datapath, H: Host> Manager<D, H> {
    /// `connect`: from a typed [`ConnectRequest`], or from the wire's
    /// [`ConnectArgs`](super::ConnectArgs), parsed first.
    pub async fn connect<R>(&mut self, req: R) -> Result<Endpoint, NetworkError>
    where
        R: TryInto<ConnectRequest>,
        NetworkError: From<R::Error>,
    {
        let req: ConnectRequest = req.try_into()?;
        match &req.network {
            ConnectTo::Container(target) => self.connect_container(&target.clone(), &req).await,
            ConnectTo::Network(network) => self.connect_network(&network.clone(), req).await,
        }
    }

    async fn connect_network(
        &mut self,
        network: &str,
        req: ConnectRequest,
    ) -> Result<Endpoint, NetworkError> {
        let net = self.network(network)?.clone();
        if let crate::control::model::DriverConfig::Overlay(_) = net.driver {
            return self.connect_overlay(&net, req).await;
        }
        self.connect_network_local(network, req).await
    }

    /// [`Self::connect_network`] on this host alone (an overlay endpoint's
    /// address already taken from the cluster).
    pub(super) async fn connect_network_local(
        &mut self,
        network: &str,
        req: ConnectRequest,
    ) -> Result<Endpoint, NetworkError> {
        let net = self.network(network)?.clone();
        let (netns_arg, netns, name) = self.new_endpoint_of(&net, &req)?;
        let id = random_hex(32)?;
        if !driver::for_network(&net).has_links() {
            return self.connect_no_link(&net, &req, id, name, netns).await;
        }
        let ipv4 = self.address_for(&net, req.ip)?;
        let ipv6 = self.address6_for(&net, req.ip6)?;
        let mac = match (req.mac, ipv4, ipv6) {
            (Some(m), _, _) => m.octets(),
            (None, Some(ip), _) => ipam::mac_for(ip),
            (None, None, Some(ip)) => v6::mac_for6(ip),
            (None, None, None) => return Err(NetworkError::UnknownNetwork(net.name.clone())),
        };
        ports::check_families(&net.name, net.enable_ipv6, &req.publish)?;
        let published = self.new_mappings(&req.publish, &[], ipv4.is_some() && ipv6.is_some())?;
        let ifname = self.ifname_in(&netns, &netns_arg, req.ifname).await?;
        let suffix = random_hex(4)?[..7].to_owned();
        // Verified now, attached by the host layer once the veth exists (a
        // driver without a veth leaves the job alone).
        let programs = HostEndPrograms::new(
            self.dp
                .prepare_endpoint(&host_veth_name(&suffix), ipv6.is_some())?,
        );
        let plan = EndpointPlan {
            network: &net,
            netns: &netns,
            ifname: &ifname,
            ipv4,
            ipv6,
            mac,
            suffix: &suffix,
            programs: &programs,
        };
        let attachment = match driver::for_network(&net)
            .setup_endpoint(&self.host, &plan)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                // Filters made before the failure (none once the veth is
                // gone).
                let _ = self.dp.detach_endpoint(&host_veth_name(&suffix));
                return Err(e.into());
            }
        };
        if let Attachment::Veth { host_ifname } = &attachment {
            if let Err(e) = self.dp.attach_endpoint(host_ifname, plan.ipv6.is_some()) {
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
            mac: Some(MacAddr(mac)),
            ipv4,
            ipv6,
            published,
            aliases: req.aliases.clone(),
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

    /// The namespace (as given, and its path) and the name of a new
    /// endpoint of `net`: the namespace must exist and not be on `net`
    /// already, the name must be free.
    fn new_endpoint_of(
        &self,
        net: &Network,
        req: &ConnectRequest,
    ) -> Result<(String, PathBuf, String), NetworkError> {
        let netns_arg = req
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
        let name = match &req.name {
            Some(n) => n.clone(),
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
        Ok((netns_arg, netns, name))
    }

    /// An endpoint of a `host` or `none` network: no link of its own.
    async fn connect_no_link(
        &mut self,
        net: &Network,
        req: &ConnectRequest,
        id: String,
        name: String,
        netns: PathBuf,
    ) -> Result<Endpoint, NetworkError> {
        refuse_link_options(req, &net.name, net.driver.name())?;
        let plan = EndpointPlan {
            network: net,
            netns: &netns,
            ifname: "lo",
            ipv4: None,
            ipv6: None,
            mac: [0; 6],
            suffix: "",
            programs: &HostEndPrograms::default(),
        };
        let attachment = driver::for_network(net)
            .setup_endpoint(&self.host, &plan)
            .await?;
        let ep = Endpoint {
            id,
            name,
            network: net.name.clone(),
            netns,
            attachment,
            ifname: None,
            mac: None,
            ipv4: None,
            ipv6: None,
            published: Vec::new(),
            aliases: req.aliases.clone(),
        };
        self.record(ep).await
    }

    /// The network's subnet and the addresses taken in it (the gateway and
    /// every endpoint), each with who holds it, for IPAM's checks.
    pub(super) fn addresses_in_use(
        &self,
        net: &Network,
    ) -> Result<(ipnet::Ipv4Net, Vec<(Ipv4Addr, String)>), NetworkError> {
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
        Ok((subnet, used))
    }

    /// The address asked for, checked against the subnet and the addresses
    /// in use (the gateway and every endpoint of the network), or the next
    /// free one; None on an IPv6-only network (where `--ip` is refused).
    fn address_for(
        &self,
        net: &Network,
        ip: Option<Ipv4Addr>,
    ) -> Result<Option<Ipv4Addr>, NetworkError> {
        if net.subnet.is_none() && !net.enable_ipv4 {
            return match ip {
                Some(ip) => Err(NetworkError::NoFamily {
                    network: net.name.clone(),
                    option: "--ip",
                    value: ip.to_string(),
                    family: "IPv4",
                }),
                None => Ok(None),
            };
        }
        let (subnet, used) = self.addresses_in_use(net)?;
        Ok(Some(match ip {
            Some(ip) => {
                ipam::check_requested(&subnet, ip, &used)?;
                ip
            }
            None => ipam::allocate(
                &net.name,
                &subnet,
                &net.alloc_range().unwrap_or(subnet),
                &used,
            )?,
        }))
    }

    /// The network's IPv6 subnet and the IPv6 addresses taken in it, each
    /// with who holds it; None without IPv6.
    pub(super) fn addresses6_in_use(
        &self,
        net: &Network,
    ) -> Option<(ipnet::Ipv6Net, Vec<(Ipv6Addr, String)>)> {
        let subnet = net.subnet6.filter(|_| net.enable_ipv6)?;
        let mut used: Vec<(Ipv6Addr, String)> = net
            .gateway6
            .map(|g| (g, "the gateway".to_owned()))
            .into_iter()
            .collect();
        used.extend(
            self.state
                .endpoints_of(&net.name)
                .filter_map(|e| e.ipv6.map(|ip| (ip, format!("endpoint {}", e.name)))),
        );
        Some((subnet, used))
    }

    /// `--ip6` checked (in the subnet and range, not the gateway, not
    /// taken), or the next free IPv6 address; None without IPv6.
    pub(super) fn address6_for(
        &self,
        net: &Network,
        ip: Option<Ipv6Addr>,
    ) -> Result<Option<Ipv6Addr>, NetworkError> {
        let Some((subnet, used)) = self.addresses6_in_use(net) else {
            return match ip {
                Some(ip) => Err(NetworkError::NoFamily {
                    network: net.name.clone(),
                    option: "--ip6",
                    value: ip.to_string(),
                    family: "IPv6",
                }),
                None => Ok(None),
            };
        };
        let range = net.alloc_range6().unwrap_or(subnet);
        Ok(Some(match ip {
            Some(ip) => {
                v6::check_requested6(&subnet, ip, &used)?;
                if !range.contains(&ip) && net.ip_range6.is_some() {
                    return Err(ipam::IpamError::IpOutside6 { ip, subnet: range }.into());
                }
                ip
            }
            None => v6::allocate6(&net.name, &subnet, &range, &used)?,
        }))
    }

    /// The interface name asked for, if free in the namespace, or the
    /// first free `ethN`.
    async fn ifname_in(
        &self,
        netns: &Path,
        netns_arg: &str,
        asked: Option<IfName>,
    ) -> Result<String, NetworkError> {
        let names = self.host.netns_links(netns).await?;
        Ok(match asked {
            Some(i) if names.iter().any(|n| n == i.as_str()) => {
                return Err(NetworkError::IfnameTaken {
                    ifname: i.into(),
                    netns: netns_arg.to_owned(),
                })
            }
            Some(i) => i.into(),
            None => (0..)
                .map(|n| format!("eth{n}"))
                .find(|c| !names.contains(c))
                .unwrap_or_else(|| "eth0".into()),
        })
    }

    pub(super) async fn record(&mut self, ep: Endpoint) -> Result<Endpoint, NetworkError> {
        self.change(|state| state.endpoints.insert(ep.id.clone(), ep.clone()))
            .await?;
        Ok(ep)
    }

    /// `connect container:<endpoint>`: a new endpoint record sharing an
    /// existing endpoint's namespace (Docker's `--network container:NAME`).
    pub(super) async fn connect_container(
        &mut self,
        target: &str,
        args: &ConnectRequest,
    ) -> Result<Endpoint, NetworkError> {
        let owner = self
            .state
            .endpoints
            .values()
            .find(|e| e.name == target || e.id.starts_with(target) && target.len() >= 3)
            .cloned()
            .ok_or_else(|| NetworkError::UnknownContainer(target.to_owned()))?;
        refuse_link_options(args, &format!("container:{target}"), "container")?;
        if let Some(ns) = &args.netns {
            if self.host.netns_id(&netns_path(ns)) != self.host.netns_id(&owner.netns) {
                return Err(NetworkError::UnknownNetns(format!(
                    "{ns} (container:{target} shares {}, a different namespace)",
                    owner.netns.display()
                )));
            }
        }
        let name = match &args.name {
            Some(n) => n.clone(),
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
            mac: owner.mac,
            ipv4: owner.ipv4,
            ipv6: owner.ipv6,
            published: Vec::new(),
            aliases: args.aliases.clone(),
        };
        self.record(ep).await
    }

    /// `disconnect NETWORK CONTAINER`: CONTAINER is an endpoint name or id, or
    /// the namespace (name or path) it was connected with.
    pub async fn disconnect(&mut self, network: &str, what: &str) -> Result<(), NetworkError> {
        let net = self.network(network)?.clone();
        let ino = self.host.netns_id(&netns_path(what));
        // A name or id first: an endpoint sharing the namespace of the one
        // named has the same namespace path.
        let by_name = |e: &&Endpoint| e.name == what || e.id == what;
        let by_netns = |e: &&Endpoint| {
            e.netns == netns_path(what)
                || (ino.is_some()
                    && self.host.netns_id(&e.netns) == ino
                    && !matches!(e.attachment, Attachment::Container { .. }))
        };
        let ep = self
            .state
            .endpoints_of(&net.name)
            .find(by_name)
            .or_else(|| self.state.endpoints_of(&net.name).find(by_netns))
            .cloned()
            .ok_or_else(|| NetworkError::UnknownEndpoint {
                network: net.name.clone(),
                what: what.to_owned(),
            })?;
        self.disconnect_endpoint(&ep).await
    }

    /// Removes one endpoint's record, then its links: the record goes first,
    /// so a record that cannot be written (a full disk) leaves the endpoint
    /// whole, state and kernel agreeing; once it is written the links go
    /// even when some step fails, and the errors are reported.
    pub(super) async fn disconnect_endpoint(&mut self, ep: &Endpoint) -> Result<(), NetworkError> {
        // Endpoints sharing this one's namespace go with it.
        let sharers: Vec<String> = self
            .state
            .endpoints
            .values()
            .filter(|e| matches!(&e.attachment, Attachment::Container { endpoint } if *endpoint == ep.id))
            .map(|e| e.id.clone())
            .collect();
        let recorded = self
            .change(|state| {
                state.endpoints.remove(&ep.id);
                for id in sharers {
                    state.endpoints.remove(&id);
                }
            })
            .await;
        if self.state.endpoints.contains_key(&ep.id) {
            return recorded; // not written: nothing was torn down
        }
        let mut errors = self
            .host
            .teardown_endpoint(&ep.netns, ep.ifname.as_deref(), &ep.attachment)
            .await;
        if let Attachment::Veth { host_ifname } = &ep.attachment {
            if let Err(e) = self.dp.detach_endpoint(host_ifname) {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = recorded {
            errors.push(crate::sys::error_chain(&e));
        }
        errors.extend(self.overlay_forget(ep).await);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetworkError::Teardown {
                context: format!("endpoint {} disconnected from {}, but", ep.name, ep.network),
                errors,
            })
        }
    }

    /// The endpoint of `network` named `what` (its name, id or
    /// namespace), borrowed: it may hold thousands of mappings.
    pub(super) fn endpoint_named(
        &self,
        network: &str,
        what: &str,
    ) -> Result<&Endpoint, NetworkError> {
        let net = self.network(network)?;
        let netns = netns_path(what);
        self.state
            .endpoints_of(&net.name)
            .find(|e| e.name == what || e.id == what || e.netns == netns)
            .ok_or_else(|| NetworkError::UnknownEndpoint {
                network: net.name.clone(),
                what: what.to_owned(),
            })
    }
}
