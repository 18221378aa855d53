//! Uplinks: the interfaces whose traffic the NAT programs translate.

use super::{Manager, NetworkError};
use crate::{control::host::Host, datapath::Datapath};

impl<D: Datapath, H: Host> Manager<D, H> {
    /// `uplink add`: translate traffic through this interface.
    pub async fn uplink_add(&mut self, name: &str) -> Result<(), NetworkError> {
        if self.state.uplinks.iter().any(|u| u == name) {
            return Err(NetworkError::DuplicateUplink(name.to_owned()));
        }
        if self.host.link_by_name(name).await?.is_none() {
            return Err(NetworkError::UnknownUplink(name.to_owned()));
        }
        self.dp.attach_uplink(name)?;
        let changed = self
            .change(|state| state.uplinks.push(name.to_owned()))
            .await;
        if let Err(e) = changed {
            let _ = self.dp.detach_uplink(name);
            return Err(e);
        }
        Ok(())
    }

    /// `uplink rm`.
    pub async fn uplink_rm(&mut self, name: &str) -> Result<(), NetworkError> {
        if !self.state.uplinks.iter().any(|u| u == name) {
            return Err(NetworkError::NotUplink(name.to_owned()));
        }
        self.dp.detach_uplink(name)?;
        self.change(|state| state.uplinks.retain(|u| u != name))
            .await
    }
}
