//! Names of the pinned maps and of the bpffs directory they live in.
//!
//! The eBPF side declares the maps under these names; the agent pins them under
//! [`PIN_ROOT`] so `bpftool map dump pinned /sys/fs/bpf/dataplane/<name>` works.

/// bpffs directory holding every pin the dataplane owns.
pub const PIN_ROOT: &str = "/sys/fs/bpf/dataplane";

/// Per-CPU [`crate::stats::PktCounter`] per [`crate::stats::ProtoIndex`].
pub const PROTO_STATS: &str = "DP_PROTO_STATS";
/// Per-CPU [`crate::stats::PktCounter`] per [`crate::drop::DropReason`].
pub const DROP_STATS: &str = "DP_DROP_STATS";
