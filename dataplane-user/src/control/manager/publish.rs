//! Published ports: checked against each other and every endpoint's, given
//! counter slots, added to and removed from live endpoints.

use std::collections::HashMap;

use super::{Manager, NetworkError, PublishSpecs};
use crate::{
    control::{
        host::Host,
        model::{Attachment, Endpoint},
        ports::{PortMapping, Proto},
        state::State,
    },
    datapath::Datapath,
};

/// Who publishes each (protocol, host port) now, apart from `except`
/// (mappings about to be replaced): the one port-conflict search.
pub(super) struct PortHolders<'a> {
    state: &'a State,
    except: &'a [PortMapping],
    /// Built in one pass over the state when many lookups will follow (K
    /// lookups at N cost K + N, not K * N); a few are a plain scan.
    index: Option<HashMap<(Proto, u16), Vec<Held<'a>>>>,
}

/// A published mapping and the endpoint publishing it.
type Held<'a> = (&'a PortMapping, &'a Endpoint);

impl<'a> PortHolders<'a> {
    pub(super) fn new(state: &'a State, except: &'a [PortMapping], many: bool) -> Self {
        let mut holders = PortHolders {
            state,
            except,
            index: None,
        };
        if many {
            let mut index: HashMap<_, Vec<_>> = HashMap::new();
            for (p, ep) in holders.all() {
                index
                    .entry((p.proto, p.host_port))
                    .or_default()
                    .push((p, ep));
            }
            holders.index = Some(index);
        }
        holders
    }

    fn all(&self) -> impl Iterator<Item = Held<'a>> + 'a {
        let except = self.except;
        self.state.endpoints.values().flat_map(move |ep| {
            ep.published
                .iter()
                .filter(move |p| !except.contains(p))
                .map(move |p| (p, ep))
        })
    }

    /// The mapping `m` conflicts with, and its endpoint.
    pub(super) fn find(&self, m: &PortMapping) -> Option<Held<'a>> {
        match &self.index {
            Some(index) => index
                .get(&(m.proto, m.host_port))
                .and_then(|v| v.iter().find(|(p, _)| p.conflicts(m)).copied()),
            None => self.all().find(|(p, _)| p.conflicts(m)),
        }
    }
}

impl<D: Datapath, H: Host> Manager<D, H> {
    /// Checks `wanted` against each other and every existing mapping
    /// (`except`: mappings about to be replaced); assigns counter slots,
    /// zeroing their old counts.
    pub(super) fn new_mappings(
        &mut self,
        wanted: &[PortMapping],
        except: &[PortMapping],
    ) -> Result<Vec<PortMapping>, NetworkError> {
        let holders = PortHolders::new(&self.state, except, wanted.len() > 8);
        let mut out: Vec<PortMapping> = Vec::new();
        let mut claimed: HashMap<(Proto, u16), Vec<PortMapping>> = HashMap::new();
        for &m in wanted {
            let slot = (m.proto, m.host_port);
            if let Some(prev) = claimed
                .get(&slot)
                .and_then(|v| v.iter().find(|o| o.conflicts(&m)))
            {
                return Err(NetworkError::PortConflict {
                    mapping: m.to_string(),
                    holder: "this command".into(),
                    existing: prev.to_string(),
                });
            }
            if let Some((prev, ep)) = holders.find(&m) {
                return Err(NetworkError::PortConflict {
                    mapping: m.to_string(),
                    holder: format!("endpoint {} on network {}", ep.name, ep.network),
                    existing: prev.to_string(),
                });
            }
            claimed.entry(slot).or_default().push(m);
            out.push(m);
        }
        if out.is_empty() {
            return Ok(out);
        }
        let mut used = vec![false; dataplane_common::nat::MAX_PORT_MAPPINGS as usize];
        for m in self.state.endpoints.values().flat_map(|e| &e.published) {
            if let Some(u) = used.get_mut(m.stats_index as usize) {
                *u = true;
            }
        }
        // Free slots in ascending order, found in one pass.
        let mut next = 0;
        for m in &mut out {
            m.stats_index = self.dp.claim_stats_index(&used, next)?;
            next = m.stats_index + 1;
        }
        Ok(out)
    }

    /// `publish add`: more published ports on a live endpoint.
    pub async fn publish_add(
        &mut self,
        network: &str,
        endpoint: &str,
        specs: impl PublishSpecs,
    ) -> Result<Vec<PortMapping>, NetworkError> {
        let ep = self.endpoint_named(network, endpoint)?;
        if !matches!(ep.attachment, Attachment::Veth { .. }) {
            return Err(NetworkError::NotApplicable {
                network: ep.network.clone(),
                option: "--publish",
                driver: self.network(&ep.network)?.driver.name(),
            });
        }
        let added = self.new_mappings(&specs.mappings()?, &[])?;
        self.change(|state| {
            if let Some(e) = state.endpoints.get_mut(&ep.id) {
                e.published.extend(added.iter().copied());
            }
        })
        .await?;
        Ok(added)
    }

    /// `publish rm`: stop publishing ports of a live endpoint. Their flows
    /// go with them (see [`Manager::persist`]): a client sending on one
    /// tuple must reach whatever publishes the port next, not the old
    /// target (moby#53384).
    pub async fn publish_rm(
        &mut self,
        network: &str,
        endpoint: &str,
        specs: impl PublishSpecs,
    ) -> Result<(), NetworkError> {
        let ep = self.endpoint_named(network, endpoint)?;
        let mut remove = Vec::new();
        for m in specs.mappings()? {
            {
                let found = ep
                    .published
                    .iter()
                    .find(|p| {
                        p.host_ip == m.host_ip
                            && p.host_port == m.host_port
                            && p.proto == m.proto
                            && p.container_port == m.container_port
                    })
                    .ok_or_else(|| NetworkError::NotPublished {
                        mapping: m.to_string(),
                        endpoint: ep.name.clone(),
                    })?;
                remove.push(*found);
            }
        }
        self.change(|state| {
            if let Some(e) = state.endpoints.get_mut(&ep.id) {
                e.published.retain(|p| !remove.contains(p));
            }
        })
        .await
    }
}
