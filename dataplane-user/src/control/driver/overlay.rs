//! The overlay driver (flannel's style, docs/overlay.md): on each host a
//! bridge per overlay network with the gateway address (the same on every
//! host: each host's containers leave through their own) and a VXLAN
//! device as the bridge's port to the other hosts. The device learns
//! nothing: the cluster's watch (`control::cluster`) programs a static
//! forwarding entry (remote MAC -> remote VTEP) and a permanent neighbour
//! entry (remote IP -> MAC, answered by the device's ARP proxy) per remote
//! endpoint. Endpoints are veths on the bridge, as the bridge driver's.

use serde_json::{Map, Value};

use super::{
    delete_link_named, host_veth_name, mtu_option, DriverError, EndpointPlan, NetworkDriver,
    SubnetPolicy,
};
use crate::{
    control::{
        host::Host,
        model::{Attachment, DriverKind, Network, OverlayConfig},
    },
    sys::netlink::VxlanSpec,
};

/// The overlay driver of one network.
pub struct Overlay<'a>(pub &'a OverlayConfig);

impl Overlay<'_> {
    async fn ensure<H: Host>(
        &self,
        host: &H,
        net: &Network,
        adopt: bool,
    ) -> Result<Vec<String>, DriverError> {
        let cfg = self.0;
        let mut changed = host
            .ensure_bridge(&cfg.bridge, net.gateway, net.subnet, net.mtu, adopt)
            .await?;
        let bridge =
            host.link_by_name(&cfg.bridge)
                .await?
                .ok_or_else(|| DriverError::BridgeMissing {
                    network: net.name.clone(),
                    bridge: cfg.bridge.clone(),
                })?;
        let spec = VxlanSpec {
            name: cfg.vxlan.clone(),
            vni: cfg.vni,
            port: cfg.port,
            local: cfg.vtep,
            master: bridge.index,
            mtu: net.mtu,
        };
        match host.ensure_vxlan(&spec, adopt).await {
            Ok(c) => changed.extend(c),
            Err(e) => {
                if !adopt {
                    let _ = delete_link_named(host, &cfg.bridge).await;
                }
                return Err(e.into());
            }
        }
        Ok(changed)
    }
}

impl NetworkDriver for Overlay<'_> {
    fn kind(&self) -> DriverKind {
        DriverKind::Overlay
    }

    fn bridge(&self) -> Option<&str> {
        Some(&self.0.bridge)
    }

    fn has_links(&self) -> bool {
        true
    }

    /// Its own subnet, so the endpoint program keeps it apart from the
    /// other networks. Egress leaves by this host's uplinks, masqueraded
    /// as a bridge network's (the gateway is on every host's bridge: each
    /// host is its containers' way out, as Docker's `docker_gwbridge`),
    /// and direct access from outside is dropped as in gateway mode `nat`.
    fn subnet_policy(&self, net: &Network) -> Option<SubnetPolicy> {
        let masquerade = !net.internal;
        Some(SubnetPolicy {
            subnet: Some(net.subnet?),
            subnet6: None,
            masquerade,
            icc: true,
            protected: masquerade,
            routed: false,
        })
    }

    fn needs_forwarding(&self, net: &Network) -> bool {
        !net.internal
    }

    fn docker_options(&self, net: &Network) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert(
            "com.docker.network.driver.overlay.vxlanid_list".into(),
            Value::String(self.0.vni.to_string()),
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
        let mut errors = delete_link_named(host, &self.0.vxlan).await;
        errors.extend(delete_link_named(host, &self.0.bridge).await);
        errors
    }

    async fn setup_endpoint<H: Host>(
        &self,
        host: &H,
        plan: &EndpointPlan<'_>,
    ) -> Result<Attachment, DriverError> {
        let bridge = &self.0.bridge;
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
