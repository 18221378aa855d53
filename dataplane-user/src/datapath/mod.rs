//! The BPF side of the dataplane: loading the object and pinning its maps
//! ([`ebpf`], [`bpffs`]), and one module per group of maps the agent writes
//! or reads: NAT and endpoints ([`nat`]), filter rules ([`filter`]),
//! connection tracking ([`conntrack`]), counters ([`stats`]), drop events
//! ([`events`]) and host-local sockets ([`host_local`]).
//!
//! This layer knows the kernel and the maps, not the agent's state: it must
//! not import `crate::network` or `crate::state`.

pub mod bpffs;
pub mod conntrack;
pub mod ebpf;
pub mod events;
pub mod filter;
pub mod host_local;
pub mod maps;
pub mod nat;
pub mod proto;
pub mod stats;
