//! The dataplane agent and CLI as a library: loading and pinning the eBPF
//! object ([`ebpf`]), the bpffs layout ([`bpffs`]), and the per-protocol
//! statistics program ([`stats`]). The `dataplane` binary is a thin CLI over it;
//! the integration tests use it for BPF_PROG_TEST_RUN.

pub mod agent;
pub mod api;
pub mod bpffs;
pub mod cni;
pub mod config;
pub mod conntrack;
pub mod docker;
pub mod ebpf;
pub mod filter;
pub mod metrics;
pub mod monitor;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod sock;
pub mod state;
pub mod stats;
pub mod table;
