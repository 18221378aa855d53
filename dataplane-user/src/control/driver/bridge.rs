//! The bridge driver: a Linux bridge per network holding the gateway
//! address, and per endpoint a veth pair whose host end is a port of it.
//! Its subnet is routed by the host and, unless internal, masqueraded on
//! the way out; only its endpoints publish ports.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use super::{
    delete_link_named, mtu_option, DriverError, EndpointPlan, NetworkDriver, SubnetPolicy,
};
use crate::{
    control::{
        host::Host,
        model::{Attachment, BridgeConfig, DriverKind, GatewayMode, Network},
    },
    sys::netlink::{Netlink, NetlinkError},
};

/// The bridge driver of one network.
pub struct Bridge<'a>(pub &'a BridgeConfig);

impl Bridge<'_> {
    /// The bridge with the network's gateway address (none in gateway
    /// mode `isolated`), up; `adopt` allows one that exists already (see
    /// [`ensure_bridge`]).
    async fn ensure<H: Host>(
        &self,
        host: &H,
        net: &Network,
        adopt: bool,
    ) -> Result<Vec<String>, DriverError> {
        let (Some(subnet), Some(gateway)) = (net.subnet, net.gateway) else {
            return Ok(Vec::new());
        };
        let gateway = (self.0.gateway_mode != GatewayMode::Isolated).then_some(gateway);
        Ok(host
            .ensure_bridge(&self.0.name, gateway, subnet, net.mtu, adopt)
            .await?)
    }
}

impl NetworkDriver for Bridge<'_> {
    fn kind(&self) -> DriverKind {
        DriverKind::Bridge
    }

    fn bridge(&self) -> Option<&str> {
        Some(&self.0.name)
    }

    fn has_links(&self) -> bool {
        true
    }

    fn subnet_policy(&self, net: &Network) -> Option<SubnetPolicy> {
        let mode = self.0.gateway_mode;
        let internal = net.internal || mode == GatewayMode::Isolated;
        let nat = matches!(mode, GatewayMode::Nat | GatewayMode::NatUnprotected);
        let masquerade = self.0.masquerade && nat && !internal;
        Some(SubnetPolicy {
            subnet: net.subnet?,
            masquerade,
            icc: self.0.icc,
            // Protection guards what masquerade hides: with masquerade off
            // the containers' own flows come back to their addresses.
            protected: masquerade && mode == GatewayMode::Nat,
            routed: mode == GatewayMode::Routed && !internal,
        })
    }

    fn needs_forwarding(&self, net: &Network) -> bool {
        !net.internal
    }

    fn docker_options(&self, net: &Network) -> Map<String, Value> {
        let cfg = self.0;
        let mut o = Map::new();
        let mut put = |k: &str, v: String| {
            o.insert(format!("com.docker.network.bridge.{k}"), Value::String(v));
        };
        put("name", cfg.name.clone());
        put("enable_icc", cfg.icc.to_string());
        put("enable_ip_masquerade", cfg.masquerade.to_string());
        put("gateway_mode_ipv4", cfg.gateway_mode.name().to_owned());
        if !cfg.trusted_host_interfaces.is_empty() {
            put(
                "trusted_host_interfaces",
                cfg.trusted_host_interfaces.join(":"),
            );
        }
        put(
            "host_binding_ipv4",
            cfg.host_binding_ipv4
                .map(|a| a.to_string())
                .unwrap_or_else(|| "0.0.0.0".into()),
        );
        mtu_option(net, &mut o);
        o
    }

    async fn create<H: Host>(&self, host: &H, net: &Network) -> Result<Vec<String>, DriverError> {
        self.ensure(host, net, false).await
    }

    async fn restore<H: Host>(&self, host: &H, net: &Network) -> Result<Vec<String>, DriverError> {
        self.ensure(host, net, true).await
    }

    async fn remove<H: Host>(&self, host: &H) -> Vec<String> {
        delete_link_named(host, &self.0.name).await
    }

    async fn setup_endpoint<H: Host>(
        &self,
        host: &H,
        plan: &EndpointPlan<'_>,
    ) -> Result<Attachment, DriverError> {
        let bridge = &self.0.name;
        let br = host
            .link_by_name(bridge)
            .await?
            .ok_or_else(|| DriverError::BridgeMissing {
                network: plan.network.name.clone(),
                bridge: bridge.clone(),
            })?;
        let host_ifname = format!("veth{}", plan.suffix);
        host.attach_veth(plan, &host_ifname, br.index).await?;
        Ok(Attachment::Veth { host_ifname })
    }
}

/// Creates the bridge of a network with its gateway address (if it has
/// one on the bridge), up, or checks
/// an existing one. `adopt` allows an existing bridge (the agent restoring
/// its own); otherwise an existing link of that name is someone else's.
///
/// The bridge's MAC is set explicitly (a random one for a new bridge, its
/// current one for an adopted bridge), as Docker does: a Linux bridge
/// whose MAC was never set takes the lowest of its ports' MACs, so it
/// would change as containers come and go, while containers' neighbour
/// caches and the fast path's routes (`nat::desired`) hold the gateway's
/// MAC.
pub async fn ensure_bridge(
    host: &Netlink,
    name: &str,
    gateway: Option<Ipv4Addr>,
    subnet: Ipv4Net,
    mtu: u32,
    adopt: bool,
) -> Result<Vec<String>, BridgeError> {
    let mut changed = Vec::new();
    let link = match host.link_by_name(name).await? {
        Some(l) if !adopt || l.kind.as_deref() != Some("bridge") => {
            return Err(BridgeError::InUse {
                bridge: name.to_owned(),
                kind: l.kind.unwrap_or_else(|| "unknown".to_owned()),
            })
        }
        Some(l) => {
            // Setting the MAC it has marks it as chosen; nothing changes.
            if let Some(mac) = l.mac {
                host.set_mac(l.index, mac).await?;
            }
            l
        }
        None => {
            changed.push(format!("created bridge {name}"));
            let link = host.create_bridge(name, Some(mtu)).await?;
            let pinned = async {
                host.set_mac(link.index, random_mac().map_err(BridgeError::Random)?)
                    .await
                    .map_err(BridgeError::from)
            }
            .await;
            if let Err(e) = pinned {
                let _ = host.delete_link(link.index).await;
                return Err(e);
            }
            link
        }
    };
    if let Some(gateway) = gateway {
        let has_addr = host
            .addrs(Some(link.index))
            .await?
            .iter()
            .any(|(_, a, p)| *a == gateway && *p == subnet.prefix_len());
        if !has_addr {
            host.add_addr(link.index, gateway, subnet.prefix_len())
                .await?;
            changed.push(format!("added {gateway}/{} to {name}", subnet.prefix_len()));
        }
    }
    if !link.up {
        host.set_up(link.index).await?;
        changed.push(format!("set {name} up"));
    }
    Ok(changed)
}

/// A random unicast, locally administered MAC (Docker's
/// `GenerateRandomMAC`).
fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    getrandom::fill(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("getting random bytes for the bridge's MAC")]
    Random(#[source] std::io::Error),
    #[error("bridge name {bridge} is in use by a link the dataplane does not own (kind {kind})")]
    InUse { bridge: String, kind: String },
}

#[cfg(test)]
mod tests {
    use super::random_mac;

    #[test]
    fn random_macs_are_unicast_locally_administered_and_differ() {
        let a = random_mac().unwrap();
        let b = random_mac().unwrap();
        for m in [a, b] {
            assert_eq!(m[0] & 0x01, 0, "unicast: {m:02x?}");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered: {m:02x?}");
        }
        assert_ne!(a, b);
    }
}
