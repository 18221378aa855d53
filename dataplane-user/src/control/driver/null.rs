//! Docker's `null` driver (the `none` network): an endpoint is its
//! namespace's loopback, up; no links, no addresses, no options.

use super::{DriverError, EndpointPlan, NetworkDriver};
use crate::control::{
    host::Host,
    model::{Attachment, DriverKind},
};

pub struct Null;

impl NetworkDriver for Null {
    fn kind(&self) -> DriverKind {
        DriverKind::Null
    }

    fn has_links(&self) -> bool {
        false
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
