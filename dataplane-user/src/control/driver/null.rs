//! Docker's `null` driver (the `none` network): an endpoint is its
//! namespace's loopback, up; no links, no addresses, no options.

use serde_json::{Map, Value};

use super::{DriverError, EndpointPlan, NetworkDriver};
use crate::control::{
    host::Host,
    model::{Attachment, DriverKind, Network},
};

pub struct Null;

impl NetworkDriver for Null {
    fn kind(&self) -> DriverKind {
        DriverKind::Null
    }

    fn has_links(&self) -> bool {
        false
    }

    fn docker_options(&self, _net: &Network) -> Map<String, Value> {
        Map::new()
    }

    async fn create<H: Host>(&self, _host: &H, _net: &Network) -> Result<Vec<String>, DriverError> {
        Ok(Vec::new())
    }

    async fn restore<H: Host>(
        &self,
        _host: &H,
        _net: &Network,
    ) -> Result<Vec<String>, DriverError> {
        Ok(Vec::new())
    }

    async fn remove<H: Host>(&self, _host: &H) -> Vec<String> {
        Vec::new()
    }

    async fn setup_endpoint<H: Host>(
        &self,
        host: &H,
        plan: &EndpointPlan<'_>,
    ) -> Result<Attachment, DriverError> {
        host.loopback_up(plan.netns).await?;
        Ok(Attachment::Loopback)
    }
}
