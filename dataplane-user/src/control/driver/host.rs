//! Docker's `host` driver (the `host` network): an endpoint is the host's
//! own namespace; nothing is made or removed.

use serde_json::{Map, Value};

use super::{DriverError, EndpointPlan, NetworkDriver};
use crate::control::{
    host::Host,
    model::{Attachment, DriverKind, Network},
};

pub struct HostNet;

impl NetworkDriver for HostNet {
    fn kind(&self) -> DriverKind {
        DriverKind::Host
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
        _host: &H,
        _plan: &EndpointPlan<'_>,
    ) -> Result<Attachment, DriverError> {
        Ok(Attachment::Host)
    }
}
