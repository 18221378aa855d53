//! The dataplane agent and CLI as a library. The `dataplane` binary
//! (`bin/dataplane/`) is a thin CLI over it; `dataplane-cni` is the CNI
//! plugin; the integration tests use it for BPF_PROG_TEST_RUN and the fake
//! host.
//!
//! The folders are the layers, lowest first; a module imports only from its
//! own layer or those below it ([`LAYERS`], checked by a unit test):
//! - [`sys`]: the host's kernel interfaces: rtnetlink, network namespaces,
//!   typed names;
//! - [`datapath`]: the eBPF object, its pinned maps and programs, typed map
//!   access, and the [`datapath::Datapath`] seam the control plane drives;
//! - [`control`]: networks, endpoints, published ports, filters, uplinks:
//!   the manager, IPAM, the drivers, the persisted state, and what the maps
//!   should hold, computed from it;
//! - [`api`]: the agent's requests and typed answers, its server and the
//!   CLI's client;
//! - [`frontends`]: the other front doors: Docker's remote network driver,
//!   the CNI plugin, `/metrics`;
//! - the agent ([`agent`], [`config`]): start order, one task set, one
//!   cancellation token.

pub mod agent;
pub mod api;
pub mod config;
pub mod control;
pub mod datapath;
pub mod frontends;
pub mod sys;

/// The layers, lowest first, with the top-level modules of each: the one
/// place the order is written.
pub const LAYERS: &[(&str, &[&str])] = &[
    ("sys", &["sys"]),
    ("datapath", &["datapath"]),
    ("control", &["control"]),
    ("api", &["api"]),
    ("frontends", &["frontends"]),
    ("agent", &["agent", "config"]),
];

#[cfg(test)]
mod layers;
