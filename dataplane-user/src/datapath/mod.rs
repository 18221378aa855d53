//! The BPF side of the dataplane.
//!
//! - loading: the object and its pinned maps and links ([`ebpf`]), the
//!   bpffs layout ([`bpffs`]), the pinned maps' layouts checked before they
//!   are adopted ([`layout`]);
//! - [`maps`]: typed access to any map by name (one error type), and the
//!   one "make this map hold exactly these entries" reconcile;
//! - one module per group of maps and programs: NAT ([`nat`]), the endpoint
//!   program ([`endpoints`]), filter rules ([`filter`]), connection
//!   tracking ([`conntrack`]), counters ([`stats`]), drop events
//!   ([`events`]), host-local sockets ([`host_local`]); [`proto`] is the
//!   protocol type their keys carry.
//!
//! This layer knows the kernel and the maps, not the agent's state: it
//! imports only itself and `crate::sys` (see `crate::LAYERS`). What the
//! maps should hold is computed above it (`crate::control::desired`) and
//! handed down as plain values ([`nat::Desired`], [`filter::Compiled`])
//! through [`Datapath`]: [`BpfDatapath`] writes them to the maps,
//! [`RecordingDatapath`] records them for the control plane's unit tests.

pub mod bpffs;
pub mod build;
pub mod conntrack;
pub mod ebpf;
pub mod endpoints;
pub mod events;
pub mod filter;
pub mod host_local;
pub mod layout;
pub mod limits;
pub mod maps;
pub mod nat;
pub mod proto;
mod seam;
pub mod stats;

pub use seam::{BpfDatapath, Datapath, DatapathError, EndpointJob, PurgeJob, RecordingDatapath};
