//! The macvlan driver: no device of its own; each endpoint is a macvlan
//! child of the network's parent link, on the parent's segment (so the
//! host does not route it: no NAT, no published ports).

use serde_json::{Map, Value};

use super::{mtu_option, DriverError, EndpointPlan, NetworkDriver};
use crate::control::{
    host::Host,
    model::{Attachment, DriverKind, MacvlanConfig, Network},
};

/// The macvlan driver of one network.
pub struct Macvlan<'a>(pub &'a MacvlanConfig);

impl Macvlan<'_> {
    async fn parent<H: Host>(&self, host: &H, net: &Network) -> Result<u32, DriverError> {
        let parent = &self.0.parent;
        host.link_by_name(parent)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| DriverError::ParentMissing {
                network: net.name.clone(),
                parent: parent.clone(),
            })
    }
}

impl NetworkDriver for Macvlan<'_> {
    fn kind(&self) -> DriverKind {
        DriverKind::Macvlan
    }

    fn has_links(&self) -> bool {
        true
    }

    fn docker_options(&self, net: &Network) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("parent".into(), Value::String(self.0.parent.clone()));
        o.insert(
            "macvlan_mode".into(),
            Value::String(self.0.mode.name().to_owned()),
        );
        mtu_option(net, &mut o);
        o
    }

    /// Nothing to make; the parent must exist.
    async fn create<H: Host>(&self, host: &H, net: &Network) -> Result<Vec<String>, DriverError> {
        self.parent(host, net).await?;
        Ok(Vec::new())
    }

    // `restore` and `remove` are the trait's no-ops: a parent missing after
    // a restart fails the endpoints' set-up, not the agent's start.

    async fn setup_endpoint<H: Host>(
        &self,
        host: &H,
        plan: &EndpointPlan<'_>,
    ) -> Result<Attachment, DriverError> {
        let parent = self.parent(host, plan.network).await?;
        host.attach_macvlan(plan, parent, self.0).await?;
        Ok(Attachment::Macvlan)
    }
}
