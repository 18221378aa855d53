//! Docker's `host` driver (the `host` network): an endpoint is the host's
//! own namespace; nothing is made or removed.

use super::{DriverError, EndpointPlan, NetworkDriver};
use crate::control::{
    host::Host,
    model::{Attachment, DriverKind},
};

pub struct HostNet;

impl NetworkDriver for HostNet {
    fn kind(&self) -> DriverKind {
        DriverKind::Host
    }

    fn has_links(&self) -> bool {
        false
    }

    async fn setup_endpoint<H: Host>(
        &self,
        _host: &H,
        _plan: &EndpointPlan<'_>,
    ) -> Result<Attachment, DriverError> {
        Ok(Attachment::Host)
    }
}
