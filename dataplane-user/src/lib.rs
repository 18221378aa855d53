//! The dataplane agent and CLI as a library. The `dataplane` binary is a
//! thin CLI over it; the integration tests use it for BPF_PROG_TEST_RUN.
//!
//! Layers, lowest first (a module imports only from its own layer or those
//! below it):
//! - [`sys`]: the host (rtnetlink, network namespaces, typed names);
//! - [`datapath`]: the eBPF object, its pinned maps and programs;
//! - the control plane (`network`, `state`, the desired map contents in
//!   `nat_desired`, the filter rule model in `filter_rules`);
//! - the front doors (`api`, `cni`, `docker`, `metrics`, the CLI).
//!
//! The flat paths (`crate::nat`, `crate::ebpf`, ...) are re-exports kept
//! while the callers move to the layered ones.

pub mod agent;
pub mod api;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod docker;
pub mod filter_rules;
pub mod metrics;
pub mod nat_desired;
pub mod network;
pub mod state;
pub mod sys;
pub mod table;

// The flat paths of before the layers, for the callers not moved yet.
pub use datapath::{bpffs, conntrack, ebpf, events as monitor, host_local as sock, stats};
pub use sys::{netlink, netns};

/// `crate::filter` as it was before the rule model ([`filter_rules`]) and
/// the datapath's compile and apply ([`datapath::filter`]) were split.
pub mod filter {
    pub use crate::{datapath::filter::*, filter_rules::*};
}

/// `crate::nat` as it was before the datapath ([`datapath::nat`]) and the
/// computation of its contents ([`nat_desired`]) were split.
pub mod nat {
    pub use crate::{
        datapath::nat::*,
        nat_desired::{desired, gone, network_key, sync},
    };
}
