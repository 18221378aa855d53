//! What every request runs against ([`Context`]: the state, the pins, the
//! agent's cache) and how an answer goes on the wire: shared by the
//! requests on the datapath alone (`datapath.rs`) and the manager's
//! (`server.rs`).

use std::{path::PathBuf, sync::Arc};

use serde_json::Value;

use crate::{
    control::manager::{Cache, Manager, NetworkError},
    datapath::bpffs::PinRoot,
};

/// What a request runs against.
#[derive(Clone, Debug)]
pub struct Context {
    pub state_dir: PathBuf,
    pub pins: PinRoot,
    pub nat: dataplane_common::nat::NatConfig,
    /// Who executes: "agent" or "cli".
    pub server: &'static str,
    /// What one request's manager leaves for the next (the agent's; None
    /// in the CLI, which runs one request).
    pub cache: Option<Arc<std::sync::Mutex<Cache>>>,
    /// The cluster of overlay networks (the agent's, with a store).
    pub cluster: Option<Arc<crate::control::cluster::Cluster>>,
}

impl Context {
    /// A manager for one request, under the state lock, from the cache if
    /// there is one. Hand it back with [`Context::done`].
    pub async fn manager(&self) -> Result<Manager, NetworkError> {
        let mut m =
            Manager::open_cached(&self.state_dir, &self.pins, self.cache.as_deref()).await?;
        m.set_nat_config(self.nat);
        m.set_cluster(self.cluster.clone());
        m.defer_durability();
        Ok(m)
    }

    /// Ends a request: what the manager holds goes back into the cache,
    /// then the state lock is released; then waits until its changes are
    /// on disk (an fsync shared with the requests that wrote meanwhile),
    /// so the answer follows durability.
    pub async fn done(&self, mut m: Manager) -> Result<(), NetworkError> {
        let durable = m.take_durable();
        match &self.cache {
            Some(slot) => m.keep(slot),
            None => drop(m),
        }
        if durable.settled() {
            // Nothing written, or the fsync started after the write is
            // done: no thread hand-off.
            return Ok(durable.wait()?);
        }
        tokio::task::spawn_blocking(move || durable.wait())
            .await
            .map_err(NetworkError::SyncTask)??;
        Ok(())
    }
}

/// An answer on the wire.
pub(super) fn answer<T: serde::Serialize>(t: T) -> Result<Value, anyhow::Error> {
    Ok(serde_json::to_value(t)?)
}
