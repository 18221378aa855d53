//! The bridge driver: a Linux bridge per network holding the gateway
//! address, and per endpoint a veth pair whose host end is a port of it.
//! Its subnet is routed by the host and, unless internal, masqueraded on
//! the way out; only its endpoints publish ports.

use serde_json::{Map, Value};

use super::{
    delete_link_named, host_veth_name, mtu_option, DriverError, EndpointPlan, NetworkDriver,
    SubnetPolicy,
};
use crate::control::{
    host::Host,
    model::{Attachment, BridgeConfig, DriverKind, GatewayMode, Network},
};

/// The bridge driver of one network.
pub struct Bridge<'a>(pub &'a BridgeConfig);

impl Bridge<'_> {
    /// The bridge with the network's gateway addresses (none in gateway
    /// mode `isolated`), up; `adopt` allows one that exists already (see
    /// [`ensure_bridge`]). A network with IPv6 turns on the host's IPv6
    /// forwarding unless it is internal.
    async fn ensure<H: Host>(
        &self,
        host: &H,
        net: &Network,
        adopt: bool,
    ) -> Result<Vec<String>, DriverError> {
        let isolated = self.0.gateway_mode == GatewayMode::Isolated;
        let gateway = net.gateway.filter(|_| !isolated);
        let mut changed = host
            .ensure_bridge(&self.0.name, gateway, net.subnet, net.mtu, adopt)
            .await?;
        if let Some(subnet6) = net.subnet6.filter(|_| net.enable_ipv6) {
            let gateway6 = net.gateway6.filter(|_| !isolated);
            changed.extend(host.ensure_bridge6(&self.0.name, gateway6, subnet6).await?);
            if !net.internal {
                changed.extend(host.enable_forwarding6().await?);
            }
        }
        Ok(changed)
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
        if net.subnet.is_none() && net.subnet6.is_none() {
            return None;
        }
        Some(SubnetPolicy {
            subnet: net.subnet,
            subnet6: net.subnet6,
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
        let host_ifname = host_veth_name(plan.suffix);
        host.attach_veth(plan, &host_ifname, br.index).await?;
        Ok(Attachment::Veth { host_ifname })
    }
}
