//! The journal's lines ([`Change`]): what a change to the endpoints or the
//! filter rules since the snapshot is written as, how a line is replayed, and which lines take
//! one state to another. The files are `super` (`state.rs`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::State;
use crate::control::{filter_rules::FilterRule, model::Endpoint, ports::PortMapping};

/// One journal line: a change to the endpoints or the filter rules since
/// the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Change {
    /// An endpoint as it now is (new or changed beyond its ports).
    EndpointPut(Box<Endpoint>),
    /// An endpoint gone, by id.
    EndpointDel(String),
    /// Ports appended to an endpoint's published list.
    PortsAdd {
        endpoint: String,
        ports: Vec<PortMapping>,
    },
    /// Ports removed from an endpoint's published list.
    PortsRm {
        endpoint: String,
        ports: Vec<PortMapping>,
    },
    /// The filter rules as they now are: a `filter add`/`rm` writes its
    /// list, not the whole state with every endpoint's mappings (at
    /// 100 000 mappings the snapshot was most of a rules request).
    Filters(Vec<FilterRule>),
}

impl Change {
    pub(super) fn apply(self, state: &mut State) {
        match self {
            Change::EndpointPut(ep) => {
                state.endpoints.insert(ep.id.clone(), *ep);
            }
            Change::EndpointDel(id) => {
                state.endpoints.remove(&id);
            }
            Change::PortsAdd { endpoint, ports } => apply_ports(state, &endpoint, &ports, true),
            Change::PortsRm { endpoint, ports } => apply_ports(state, &endpoint, &ports, false),
            Change::Filters(rules) => state.filters = rules,
        }
    }
}

/// Adds `ports` to (`added`) or removes them from the published ports of
/// endpoint `endpoint` of `state`: what a `ports_add` or `ports_rm` line
/// means.
pub fn apply_ports(state: &mut State, endpoint: &str, ports: &[PortMapping], added: bool) {
    let Some(ep) = state.endpoints.get_mut(endpoint) else {
        return;
    };
    if added {
        ep.published.extend_from_slice(ports);
    } else if ports.len() <= 16 {
        // A few: each found from the end (the newest, most often) and
        // taken out, not a set lookup per mapping of the endpoint (the
        // allocator never makes two equal mappings).
        for m in ports {
            if let Some(i) = ep.published.iter().rposition(|p| p == m) {
                ep.published.remove(i);
            }
        }
    } else {
        let gone: BTreeSet<&PortMapping> = ports.iter().collect();
        ep.published.retain(|p| !gone.contains(p));
    }
}

/// The change from `old` to `new` of one endpoint, when it is only ports.
fn port_change(old: &Endpoint, new: &Endpoint) -> Option<Change> {
    let (o, n) = (&old.published, &new.published);
    let same_rest = old.id == new.id
        && old.name == new.name
        && old.network == new.network
        && old.netns == new.netns
        && old.attachment == new.attachment
        && old.ifname == new.ifname
        && old.mac == new.mac
        && old.ipv4 == new.ipv4;
    if !same_rest {
        return None;
    }
    if n.len() > o.len() && n[..o.len()] == o[..] {
        return Some(Change::PortsAdd {
            endpoint: new.id.clone(),
            ports: n[o.len()..].to_vec(),
        });
    }
    if n.len() < o.len() {
        // Removal keeps the order: one walk over both lists finds what went
        // (and proves nothing else changed).
        let mut gone = Vec::with_capacity(o.len() - n.len());
        let mut rest = n.iter().peekable();
        for p in o {
            if rest.peek() == Some(&p) {
                rest.next();
            } else {
                gone.push(*p);
            }
        }
        if rest.peek().is_none() && gone.len() == o.len() - n.len() {
            return Some(Change::PortsRm {
                endpoint: new.id.clone(),
                ports: gone,
            });
        }
    }
    None
}

/// The journal lines taking `old` to `new`; None when the change is not
/// one the journal records (networks, uplinks, CNI records).
pub(super) fn changes(old: &State, new: &State) -> Option<Vec<Change>> {
    if old.version != new.version
        || old.uplinks != new.uplinks
        || old.cni_attachments != new.cni_attachments
        || old.networks != new.networks
        || old.ula_global_id != new.ula_global_id
    {
        return None;
    }
    let mut out = Vec::new();
    if old.filters != new.filters {
        out.push(Change::Filters(new.filters.clone()));
    }
    for (id, ep) in &new.endpoints {
        match old.endpoints.get(id) {
            Some(prev) if prev == ep => {}
            Some(prev) => out.push(
                port_change(prev, ep).unwrap_or_else(|| Change::EndpointPut(Box::new(ep.clone()))),
            ),
            None => out.push(Change::EndpointPut(Box::new(ep.clone()))),
        }
    }
    for id in old.endpoints.keys() {
        if !new.endpoints.contains_key(id) {
            out.push(Change::EndpointDel(id.clone()));
        }
    }
    Some(out)
}
