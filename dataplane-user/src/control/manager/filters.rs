//! Filter rules (`filter add/rm`): resolved against the host, compiled,
//! refused before anything is written when they do not compile.

use std::collections::BTreeMap;

use super::{Manager, NetworkError};
use crate::{
    control::{filter_rules::FilterRule, host::Host},
    datapath::{filter, Datapath},
};

/// Everything a compiled rule set depends on: the rules and what their
/// names resolved to.
#[derive(PartialEq, Eq)]
pub(super) struct FilterInputs {
    pub(super) rules: Vec<FilterRule>,
    pub(super) ifindex: BTreeMap<String, u32>,
    pub(super) networks: BTreeMap<String, u32>,
}

/// A rule set compiled from its resolved inputs.
pub(super) fn compile(inputs: &FilterInputs) -> Result<filter::Compiled, NetworkError> {
    Ok(filter::compile(&inputs.rules, |r| filter::ResolvedRule {
        ifindex: r
            .in_iface
            .as_ref()
            .and_then(|n| inputs.ifindex.get(n).copied()),
        network: r
            .network
            .as_ref()
            .map(|n| inputs.networks.get(n).copied().unwrap_or(u32::MAX)),
    })?)
}

impl<D: Datapath, H: Host> Manager<D, H> {
    /// Resolves the names rules use against the host as it is now:
    /// interfaces by index (one that does not exist yet gets an index
    /// nothing has, so its rule matches nothing rather than everything),
    /// networks by key.
    pub(super) async fn filter_inputs(
        &self,
        rules: &[FilterRule],
    ) -> Result<FilterInputs, NetworkError> {
        let mut ifindex = BTreeMap::new();
        let mut networks = BTreeMap::new();
        for r in rules {
            if let Some(name) = &r.in_iface {
                if !ifindex.contains_key(name) {
                    let idx = self
                        .host
                        .link_by_name(name)
                        .await?
                        .map(|l| l.index)
                        .unwrap_or(u32::MAX);
                    ifindex.insert(name.clone(), idx);
                }
            }
            if let Some(n) = &r.network {
                let key = self
                    .state
                    .networks
                    .get(n)
                    .map(|net| crate::control::desired::network_key(&net.id))
                    .unwrap_or(u32::MAX);
                networks.insert(n.clone(), key);
            }
        }
        Ok(FilterInputs {
            rules: rules.to_vec(),
            ifindex,
            networks,
        })
    }

    /// Compiles rules against the host as it is now (see
    /// [`Self::filter_inputs`]), kept for the write of the same rules.
    pub(super) async fn compile_filters(
        &mut self,
        rules: &[FilterRule],
    ) -> Result<(), NetworkError> {
        let inputs = self.filter_inputs(rules).await?;
        let compiled = compile(&inputs)?;
        self.compiled = Some((inputs, compiled));
        Ok(())
    }

    /// `filter add`: a rule at the end of the list, or first with `first`
    /// (like `iptables -I DOCKER-USER`).
    pub async fn filter_add(
        &mut self,
        spec: crate::control::filter_rules::FilterSpec,
        first: bool,
    ) -> Result<FilterRule, NetworkError> {
        if let Some(n) = &spec.network {
            self.network(n)?;
        }
        let id = self.state.filters.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        let rule = FilterRule::new(id, spec);
        self.insert_rules(std::slice::from_ref(&rule), first)
            .await?;
        Ok(rule)
    }

    /// Puts `added` at the end of the rules, or before all others with
    /// `first`, once the whole list compiles: too many rules and the like
    /// are refused before anything is written.
    async fn insert_rules(
        &mut self,
        added: &[FilterRule],
        first: bool,
    ) -> Result<(), NetworkError> {
        let mut rules = self.state.filters.clone();
        if first {
            rules.splice(0..0, added.iter().cloned());
        } else {
            rules.extend(added.iter().cloned());
        }
        self.compile_filters(&rules).await?;
        self.change_filters(rules).await
    }

    /// `filter add --from-file` (the `filter_add_many` request): rules in
    /// the given order at the end of the list, or before all others with
    /// `first`. All or none: any refused rule leaves the rules as they were.
    pub async fn filter_add_many(
        &mut self,
        specs: Vec<crate::control::filter_rules::FilterSpec>,
        first: bool,
    ) -> Result<Vec<FilterRule>, NetworkError> {
        for (index, spec) in specs.iter().enumerate() {
            if let Some(n) = &spec.network {
                self.network(n).map_err(|e| NetworkError::FilterInRequest {
                    index,
                    source: Box::new(e),
                })?;
            }
        }
        let next = self.state.filters.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        let added: Vec<FilterRule> = (next..)
            .zip(specs)
            .map(|(id, spec)| FilterRule::new(id, spec))
            .collect();
        self.insert_rules(&added, first).await?;
        Ok(added)
    }

    /// `filter rm`.
    pub async fn filter_rm(&mut self, id: u32) -> Result<(), NetworkError> {
        self.filter_rm_many(&[id]).await
    }

    /// `filter rm ID...` (the `filter_rm_many` request): all of them in one
    /// change, or none when one is not a rule.
    pub async fn filter_rm_many(&mut self, ids: &[u32]) -> Result<(), NetworkError> {
        let have: std::collections::BTreeSet<u32> =
            self.state.filters.iter().map(|r| r.id).collect();
        if let Some(unknown) = ids.iter().find(|id| !have.contains(id)) {
            return Err(NetworkError::UnknownFilter(*unknown));
        }
        let gone: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
        let rules = self
            .state
            .filters
            .iter()
            .filter(|r| !gone.contains(&r.id))
            .cloned()
            .collect();
        self.change_filters(rules).await
    }
}
