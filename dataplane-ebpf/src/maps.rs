//! Every map of the dataplane, declared in one place.
//!
//! All maps are `#[btf_map]`s so that `bpftool map dump` prints their struct
//! field names; the agent pins each one under `/sys/fs/bpf/dataplane/<NAME>`
//! (names in `dataplane_common::maps`).

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use dataplane_common::{
    drop::DropReason,
    stats::{PktCounter, ProtoIndex},
};

/// Packets and bytes seen by the stats program, per protocol class.
#[btf_map]
pub static DP_PROTO_STATS: PerCpuArray<PktCounter, { ProtoIndex::COUNT as usize }> =
    PerCpuArray::new();

/// Packets and bytes dropped, per [`DropReason`].
#[btf_map]
pub static DP_DROP_STATS: PerCpuArray<PktCounter, { DropReason::COUNT as usize }> =
    PerCpuArray::new();
