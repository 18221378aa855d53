//! The CNI plugin's operations on the manager (`crate::frontends::cni` parses the
//! runtime's request; this carries it out): ADD is `connect` with the
//! runtime's interface name, address and port mappings, DEL and CHECK find
//! the endpoint by container id and interface name, never by namespace
//! path (DEL must work after the namespace is gone).
//!
//! Each attachment is recorded in the state (`cni_attachments`) before its
//! endpoint is made, under the endpoint name it will get: a crash between
//! the two leaves a record without an endpoint, which DEL treats as done
//! and the next CNI call prunes; an endpoint is never left without its
//! record, so DEL always finds what ADD made.

use std::net::Ipv4Addr;

use dataplane_common::{maps, nat::PortKey};

use super::{requests, ConnectRequest, ConnectTo, Manager, NetworkError, PublishSpecs};
use crate::{
    control::{
        cni::{AddArgs, AddResult, AttachmentKey, CheckArgs, GcArgs, NetworkSpec},
        driver::{self, NetworkDriver as _},
        host::Host,
        ipam,
        model::{Attachment, CreateArgs, CreateError, Endpoint, Network},
        names::MacAddr,
        ports::{self, PortMapping},
        state::CniAttachment,
    },
    datapath::Datapath,
};

#[derive(Debug, thiserror::Error)]
pub enum CniNetError {
    #[error(
        "network {0}: no such network; give ipam.subnet in the CNI configuration to create it, \
         or create it with `dataplane network create`"
    )]
    NoNetwork(String),
    #[error(
        "network {network}: the CNI configuration says {field} {want}, the network has {have}"
    )]
    Mismatch {
        network: String,
        field: &'static str,
        want: String,
        have: String,
    },
    #[error(
        "network {network}: container {container_id} is already attached as {ifname} \
         (endpoint {endpoint}); DEL it first"
    )]
    Attached {
        network: String,
        container_id: String,
        ifname: String,
        endpoint: String,
    },
    #[error("network {network} from the CNI configuration")]
    Create {
        network: String,
        #[source]
        source: CreateError,
    },
    #[error("network {network}: a {driver} network has no interface for CNI to set up")]
    Driver {
        network: String,
        driver: &'static str,
    },
}

/// The runtime's names for the container that DNS can carry (a container
/// name with `_` cannot be a host name): the others are left out rather
/// than failing the ADD.
fn runtime_names(given: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in given
        .iter()
        .filter_map(|n| crate::control::names_dns::dns_name(n).ok())
    {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

impl CniAttachment {
    fn is(&self, network: &str, key: &AttachmentKey) -> bool {
        self.network == network
            && self.container_id == key.container_id
            && self.ifname == key.ifname
    }
}

impl<D: Datapath, H: Host> Manager<D, H> {
    /// Writes a state that differs from the current one only in its CNI
    /// records, which the datapath does not read: no map sync needed.
    fn cni_save(&mut self, state: crate::control::state::State) -> Result<(), NetworkError> {
        self.store.save(&state)?;
        self.state = state;
        self.ports = None; // derived from the state: rebuilt when needed
        Ok(())
    }

    fn cni_endpoint(&self, att: &CniAttachment) -> Option<Endpoint> {
        self.state
            .endpoints_of(&att.network)
            .find(|e| e.name == att.endpoint)
            .cloned()
    }

    /// The state with records whose endpoint is gone dropped (an
    /// interrupted ADD, or an endpoint removed with `dataplane disconnect`
    /// or `network rm --force`).
    fn cni_pruned(&self) -> crate::control::state::State {
        let mut state = self.state.clone();
        state
            .cni_attachments
            .retain(|a| self.cni_endpoint(a).is_some());
        state
    }

    /// A free endpoint name: the container id's first 12 characters and
    /// the interface name, or the whole id when that is taken.
    fn cni_endpoint_name(&self, network: &str, key: &AttachmentKey) -> String {
        let ifname: String = key
            .ifname
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let short = key.container_id.get(..12).unwrap_or(&key.container_id);
        let taken = |name: &str| {
            self.state.endpoints_of(network).any(|e| e.name == name)
                || self
                    .state
                    .cni_attachments
                    .iter()
                    .any(|a| a.network == network && a.endpoint == name)
        };
        let first = format!("{short}-{ifname}");
        if !taken(&first) {
            return first;
        }
        format!("{}-{ifname}", key.container_id)
    }

    /// Checks an existing network against the configuration's settings, or
    /// creates it from them. True when it was created here.
    async fn cni_network(
        &mut self,
        name: &str,
        spec: Option<&NetworkSpec>,
    ) -> Result<bool, NetworkError> {
        let existing = match self.network(name) {
            Ok(n) => Some(n.clone()),
            Err(NetworkError::UnknownNetwork(_)) => None,
            Err(e) => return Err(e),
        };
        match (existing, spec) {
            (Some(net), spec) => {
                if let Some(spec) = spec {
                    let mismatch = |field, want: String, have: String| {
                        Err(CniNetError::Mismatch {
                            network: net.name.clone(),
                            field,
                            want,
                            have,
                        }
                        .into())
                    };
                    let subnet = spec.subnet.as_deref().map(ipam::parse_subnet).transpose()?;
                    if subnet.is_some() && subnet != net.subnet {
                        return mismatch(
                            "ipam.subnet",
                            spec.subnet.clone().unwrap_or_default(),
                            net.subnet.map(|s| s.to_string()).unwrap_or_default(),
                        );
                    }
                    let gw = spec
                        .gateway
                        .as_deref()
                        .map(|g| ipam::parse_addr("gateway", g))
                        .transpose()?;
                    if gw.is_some() && gw != net.gateway {
                        return mismatch(
                            "ipam.gateway",
                            spec.gateway.clone().unwrap_or_default(),
                            net.gateway.map(|g| g.to_string()).unwrap_or_default(),
                        );
                    }
                    let subnet6 = spec
                        .subnet6
                        .as_deref()
                        .map(ipam::v6::parse_subnet6)
                        .transpose()?;
                    if subnet6.is_some() && subnet6 != net.subnet6 {
                        return mismatch(
                            "ipam.ranges",
                            spec.subnet6.clone().unwrap_or_default(),
                            net.subnet6
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "no IPv6".to_owned()),
                        );
                    }
                    let driver = driver::for_network(&net);
                    let bridge = driver.bridge();
                    if spec.bridge.is_some() && spec.bridge.as_deref() != bridge {
                        return mismatch(
                            "bridge",
                            spec.bridge.clone().unwrap_or_default(),
                            bridge.unwrap_or_default().to_owned(),
                        );
                    }
                }
                Ok(false)
            }
            (None, None) => Err(CniNetError::NoNetwork(name.to_owned()).into()),
            (None, Some(spec)) => {
                let mut options = Vec::new();
                if let Some(b) = &spec.bridge {
                    options.push(format!("com.docker.network.bridge.name={b}"));
                }
                if let Some(m) = spec.ip_masq {
                    options.push(format!(
                        "com.docker.network.bridge.enable_ip_masquerade={m}"
                    ));
                }
                if let Some(m) = &spec.gateway_mode {
                    options.push(format!("com.docker.network.bridge.gateway_mode_ipv4={m}"));
                }
                let args = CreateArgs {
                    name: name.to_owned(),
                    driver: "bridge".into(),
                    subnet: spec.subnet.iter().chain(&spec.subnet6).cloned().collect(),
                    gateway: spec.gateway.iter().chain(&spec.gateway6).cloned().collect(),
                    ip_range: spec
                        .ip_range
                        .iter()
                        .chain(&spec.ip_range6)
                        .cloned()
                        .collect(),
                    ipv6: spec.ipv6,
                    ipv4: Some(spec.subnet.is_some() || !spec.ipv6),
                    internal: false,
                    mtu: spec.mtu.map(|m| m.to_string()),
                    options,
                    labels: vec!["dataplane.cni=created".into()],
                };
                let req = args.parse().map_err(|source| CniNetError::Create {
                    network: name.to_owned(),
                    source,
                })?;
                self.create(req).await?;
                Ok(true)
            }
        }
    }

    /// CNI ADD: the endpoint, recorded under the container id and interface
    /// name. A failure leaves the state as it was (a network created for
    /// this call is removed again).
    pub async fn cni_add(&mut self, args: &AddArgs) -> Result<AddResult, NetworkError> {
        if let Some(att) = self
            .state
            .cni_attachments
            .iter()
            .find(|a| a.is(&args.network, &args.key))
        {
            if let Some(ep) = self.cni_endpoint(att) {
                return Err(CniNetError::Attached {
                    network: args.network.clone(),
                    container_id: args.key.container_id.clone(),
                    ifname: args.key.ifname.clone(),
                    endpoint: ep.name,
                }
                .into());
            }
        }
        let created = self
            .cni_network(&args.network, args.create.as_ref())
            .await?;
        let result = self.cni_add_endpoint(args).await;
        if result.is_err() && created {
            let _ = self.remove_one(&args.network, false).await;
        }
        result
    }

    async fn cni_add_endpoint(&mut self, args: &AddArgs) -> Result<AddResult, NetworkError> {
        let net = self.network(&args.network)?.clone();
        if !driver::for_network(&net).has_links() {
            return Err(CniNetError::Driver {
                network: net.name.clone(),
                driver: net.driver.name(),
            }
            .into());
        }
        let before = self.state.clone();
        let name = self.cni_endpoint_name(&net.name, &args.key);
        // The runtime's strings, typed before anything is recorded.
        let connect = ConnectRequest {
            network: ConnectTo::Network(net.name.clone()),
            netns: Some(args.netns.clone()),
            ip: args
                .ip
                .as_deref()
                .map(|ip| ipam::parse_addr("ip", ip))
                .transpose()?,
            ip6: args
                .ip6
                .as_deref()
                .map(|ip| ipam::v6::parse_addr6("ip6", ip))
                .transpose()?,
            mac: args
                .mac
                .as_deref()
                .map(super::super::names::unicast_mac)
                .transpose()?,
            name: Some(requests::endpoint_name(&name)?),
            ifname: Some(requests::ifname(&args.key.ifname)?),
            publish: args.publish.mappings()?,
            aliases: runtime_names(&args.aliases),
        };
        let mut state = self.cni_pruned();
        state.cni_attachments.push(CniAttachment {
            network: net.name.clone(),
            container_id: args.key.container_id.clone(),
            ifname: args.key.ifname.clone(),
            endpoint: name.clone(),
        });
        self.cni_save(state)?;
        let ep = match self.connect(connect).await {
            Ok(ep) => ep,
            Err(e) => {
                let _ = self.cni_save(before);
                return Err(e);
            }
        };
        match self.cni_describe(&net, &ep, args).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // No result means the runtime counts the ADD as failed:
                // take back what it made.
                let _ = self.cni_del(&net.name, &args.key).await;
                Err(e)
            }
        }
    }

    /// The result of an ADD: the endpoint and what the kernel has for it.
    async fn cni_describe(
        &self,
        net: &Network,
        ep: &Endpoint,
        args: &AddArgs,
    ) -> Result<AddResult, NetworkError> {
        let gateway = net.gateway;
        let ipv4 = ep.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let view = self
            .host
            .netns_view(&ep.netns, &args.key.ifname, false)
            .await?;
        let index = view.link.map(|l| l.index);
        let default_route = view.routes.iter().any(|r| {
            r.prefix_len == 0 && r.gateway.is_some() && r.gateway == gateway && r.oif == index
        });
        let (host_ifname, host_mac) = match &ep.attachment {
            Attachment::Veth { host_ifname } => (
                Some(host_ifname.clone()),
                self.host
                    .link_by_name(host_ifname)
                    .await?
                    .and_then(|l| l.mac)
                    .map(|m| ipam::format_mac(&m)),
            ),
            _ => (None, None),
        };
        let default_route6 = view.routes6.iter().any(|r| {
            r.prefix_len == 0 && r.gateway.is_some() && r.gateway == net.gateway6 && r.oif == index
        });
        Ok(AddResult {
            endpoint: ep.name.clone(),
            network: ep.network.clone(),
            ifname: args.key.ifname.clone(),
            mac: ep.mac.map(|m| m.to_string()).unwrap_or_default(),
            ipv4,
            prefix_len: net.subnet.map(|s| s.prefix_len()).unwrap_or(32),
            gateway,
            default_route,
            ipv6: ep
                .ipv6
                .map(|ip| (ip, net.subnet6.map(|s| s.prefix_len()).unwrap_or(128))),
            gateway6: net.gateway6.filter(|_| ep.ipv6.is_some()),
            default_route6,
            host_ifname,
            host_mac,
            netns: args.netns.clone(),
            dns_server: crate::control::names_dns::no_names_reason(net)
                .is_none()
                .then(|| crate::control::names_dns::server_of(net))
                .flatten(),
        })
    }

    /// CNI DEL: removes the attachment's endpoint and its record. Nothing
    /// to remove (a second DEL, an ADD that never happened) is success.
    pub async fn cni_del(
        &mut self,
        network: &str,
        key: &AttachmentKey,
    ) -> Result<(), NetworkError> {
        let att = self
            .state
            .cni_attachments
            .iter()
            .find(|a| a.is(network, key))
            .cloned();
        let teardown = match att.as_ref().and_then(|a| self.cni_endpoint(a)) {
            Some(ep) => self.disconnect_endpoint(&ep).await,
            None => Ok(()),
        };
        let mut state = self.cni_pruned();
        state.cni_attachments.retain(|a| !a.is(network, key));
        if state != self.state {
            self.cni_save(state)?;
        }
        teardown
    }

    /// CNI CHECK: every way the live attachment differs from what ADD set
    /// up and what the runtime asks for now (empty: it matches).
    pub async fn cni_check(&mut self, args: &CheckArgs) -> Result<Vec<String>, NetworkError> {
        let mut problems = Vec::new();
        let Some(ep) = self
            .state
            .cni_attachments
            .iter()
            .find(|a| a.is(&args.network, &args.key))
            .and_then(|a| self.cni_endpoint(a))
        else {
            problems.push(format!(
                "network {}: container {} has no attachment {} (no ADD, or DEL ran)",
                args.network, args.key.container_id, args.key.ifname
            ));
            return Ok(problems);
        };
        let net = self.network(&ep.network)?.clone();
        let netns = super::netns_path(&args.netns);
        if self.host.netns_id(&netns).is_none()
            || self.host.netns_id(&netns) != self.host.netns_id(&ep.netns)
        {
            problems.push(format!(
                "CNI_NETNS {} is not the namespace the endpoint was set up in ({})",
                args.netns,
                ep.netns.display()
            ));
            return Ok(problems);
        }
        let ifname = &args.key.ifname;
        let want_addr = ep
            .ipv4
            .map(|ip| (ip, net.subnet.map(|s| s.prefix_len()).unwrap_or(32)));
        if let (Some(reported), Some((ip, len))) = (&args.address, want_addr) {
            if *reported != format!("{ip}/{len}") {
                problems.push(format!(
                    "prevResult reports address {reported} for {ifname}, the endpoint has {ip}/{len}"
                ));
            }
        }
        let view = self
            .host
            .netns_view(&netns, ifname, want_addr.is_some())
            .await?;
        match view.link {
            None => problems.push(format!("interface {ifname} is missing from {}", args.netns)),
            Some(link) => {
                if !link.up {
                    problems.push(format!("interface {ifname} is down"));
                }
                let mac = link.mac.map(MacAddr);
                if mac != ep.mac {
                    let text = |m: Option<MacAddr>| m.map(|m| m.to_string()).unwrap_or_default();
                    problems.push(format!(
                        "interface {ifname} has MAC {}, the endpoint {}",
                        text(mac),
                        text(ep.mac)
                    ));
                }
                if let Some((ip, len)) = want_addr {
                    if !view.addrs.iter().any(|(_, a, p)| *a == ip && *p == len) {
                        problems.push(format!("interface {ifname} lacks its address {ip}/{len}"));
                    }
                }
                for (dst, gw) in &args.routes {
                    let Ok(dst_net) = dst.parse::<ipnet::Ipv4Net>() else {
                        problems.push(format!("prevResult route {dst}: not an IPv4 CIDR"));
                        continue;
                    };
                    let found = view.routes.iter().any(|r| {
                        r.dst == dst_net.network()
                            && r.prefix_len == dst_net.prefix_len()
                            && r.gateway == *gw
                            && r.oif == Some(link.index)
                    });
                    if !found {
                        problems.push(format!(
                            "route {dst} via {} on {ifname} is missing",
                            gw.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
                        ));
                    }
                }
            }
        }
        if let Attachment::Veth { host_ifname } = &ep.attachment {
            problems.extend(self.cni_check_host_end(&net, host_ifname).await?);
        }
        problems.extend(self.cni_check_ports(&ep, &args.publish));
        Ok(problems)
    }

    /// A veth endpoint's host end: there, up, on the bridge, with the
    /// endpoint program attached.
    async fn cni_check_host_end(
        &self,
        net: &Network,
        host_ifname: &str,
    ) -> Result<Vec<String>, NetworkError> {
        let mut problems = Vec::new();
        let driver = driver::for_network(net);
        let bridge_name = driver.bridge();
        let bridge = match bridge_name {
            Some(b) => self.host.link_by_name(b).await?,
            None => None,
        };
        match self.host.link_by_name(host_ifname).await? {
            None => problems.push(format!("host end {host_ifname} of the veth is missing")),
            Some(l) => {
                if !l.up {
                    problems.push(format!("host end {host_ifname} is down"));
                }
                if l.master.is_none() || l.master != bridge.as_ref().map(|b| b.index) {
                    problems.push(format!(
                        "host end {host_ifname} is not on bridge {}",
                        bridge_name.unwrap_or_default()
                    ));
                }
            }
        }
        problems.extend(self.dp.endpoint_unattached(host_ifname));
        Ok(problems)
    }

    /// The endpoint's published ports against the runtime's mappings and
    /// against DP_PORTS, where the datapath reads them.
    fn cni_check_ports(&self, ep: &Endpoint, publish: &[String]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut wanted = Vec::new();
        for spec in publish {
            match ports::parse(spec) {
                Ok(m) => wanted.extend(m),
                Err(e) => problems.push(e.to_string()),
            }
        }
        // A request with no or a range of host ports matches the port
        // it was given.
        for w in &wanted {
            if !ep.published.iter().any(|p| w.matches(p)) {
                problems.push(format!("port mapping {w} is not published"));
            }
        }
        for p in &ep.published {
            if !wanted.iter().any(|w| w.matches(p)) {
                problems.push(format!(
                    "port mapping {p} is published but the runtime no longer asks for it"
                ));
            }
        }
        let (Some(ip), false) = (ep.ipv4, ep.published.is_empty()) else {
            return problems;
        };
        // IPv4 mappings only: the IPv6 maps are the datapath's to check.
        let v4: Vec<&PortMapping> = ep
            .published
            .iter()
            .filter(|p| p.host_ipv4().is_some())
            .collect();
        let keys: Vec<PortKey> = v4
            .iter()
            .map(|p| PortKey {
                addr: p.host_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
                port: p.host_port.to_be_bytes(),
                proto: p.proto.number(),
                _pad: 0,
            })
            .collect();
        let targets = match self.dp.port_targets(&keys) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("reading {}: {e}", maps::PORTS));
                return problems;
            }
        };
        for (p, target) in v4.into_iter().zip(targets) {
            match target {
                Some(t) if t.addr == ip.octets() && t.port == p.container_port.to_be_bytes() => {}
                Some(t) => problems.push(format!(
                    "{} sends {p} to {}:{}, not to the endpoint",
                    maps::PORTS,
                    Ipv4Addr::from(t.addr),
                    u16::from_be_bytes(t.port)
                )),
                None => problems.push(format!("{p} is missing from {}", maps::PORTS)),
            }
        }
        problems
    }

    /// CNI GC (1.1.0): removes every attachment of `network` the runtime
    /// does not list as valid. Returns what went, as `container/ifname`.
    pub async fn cni_gc(&mut self, args: &GcArgs) -> Result<Vec<String>, NetworkError> {
        let stale: Vec<AttachmentKey> = self
            .state
            .cni_attachments
            .iter()
            .filter(|a| a.network == args.network)
            .map(|a| AttachmentKey {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
            .filter(|k| !args.valid.contains(k))
            .collect();
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for key in stale {
            match self.cni_del(&args.network, &key).await {
                Ok(()) => removed.push(format!("{}/{}", key.container_id, key.ifname)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(NetworkError::Teardown {
                context: format!("GC of network {}", args.network),
                errors,
            })
        }
    }
}
