//! Endpoints: `connect` (a namespace on a network, or `container:<name>`
//! sharing another endpoint's) and `disconnect`.

use std::net::Ipv4Addr;

use super::{netns_path, random_hex, ConnectArgs, Manager, NetworkError};
use crate::network::{
    datapath::Datapath,
    driver::EndpointPlan,
    host::Host,
    ipam,
    model::{Attachment, DriverKind, Endpoint},
};

impl<D: Datapath, H: Host> Manager<D, H> {
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
            Some(n) if crate::network::model::valid_name(n) => n.clone(),
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
            Some(i) if !crate::network::model::valid_ifname(i) => {
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
            Some(n) if crate::network::model::valid_name(n) => n.clone(),
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

    /// Removes one endpoint's links and its record; the record goes even when
    /// some link could not be removed, and the errors are reported.
    pub(super) async fn disconnect_endpoint(&mut self, ep: &Endpoint) -> Result<(), NetworkError> {
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
        self.change(|state| {
            state.endpoints.remove(&ep.id);
            for id in sharers {
                state.endpoints.remove(&id);
            }
        })
        .await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetworkError::Teardown {
                context: format!("endpoint {} disconnected from {}, but", ep.name, ep.network),
                errors,
            })
        }
    }

    pub(super) fn endpoint_named(
        &self,
        network: &str,
        what: &str,
    ) -> Result<Endpoint, NetworkError> {
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
}
