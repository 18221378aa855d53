//! Every map of the dataplane, declared in one place.
//!
//! All maps are `#[btf_map]`s so that `bpftool map dump` prints their struct
//! field names; the agent pins each one under `/sys/fs/bpf/dataplane/<NAME>`
//! (names and sizes in `dataplane_common::maps`).

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use dataplane_common::{
    ct::{CtEntry, CtKey, FragKey, FragKey6, FragPorts},
    drop::DropReason,
    maps::{
        CT_OTHER_MAX, CT_TCP_MAX, ENDPOINTS_MAX, FRAGS_MAX, HOST_ADDRS_MAX, PORTS_MAX,
        SOCK_REVNAT_MAX, SUBNETS_MAX, TRUSTED_IFACES_MAX, UPLINKS_MAX,
    },
    nat::{
        EndpointInfo, EndpointRoute, HostAddr, PortKey, PortTarget, SandboxAddr, SubnetPolicy,
        TrustedIface, Uplink, MAX_PORT_MAPPINGS,
    },
    sock::SockRevNat,
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

/// Published ports.
#[btf_map]
pub static DP_PORTS: HashMap<PortKey, PortTarget, { PORTS_MAX as usize }> = HashMap::new();

/// Packets and bytes of new flows per published port (`PortTarget::stats_index`).
#[btf_map]
pub static DP_PORT_STATS: PerCpuArray<PktCounter, { MAX_PORT_MAPPINGS as usize }> =
    PerCpuArray::new();

/// Managed subnets and what may leave them.
#[btf_map]
pub static DP_SUBNETS: LpmTrie<[u8; 4], SubnetPolicy, { SUBNETS_MAX as usize }> = LpmTrie::new();

/// Container ports open to direct access on `routed` networks (the key's
/// address is the container's).
#[btf_map]
pub static DP_OPEN_PORTS: HashMap<PortKey, u32, { PORTS_MAX as usize }> = HashMap::new();

/// Interfaces whose traffic skips a network's direct-access checks.
#[btf_map]
pub static DP_TRUSTED_IFACES: HashMap<TrustedIface, u32, { TRUSTED_IFACES_MAX as usize }> =
    HashMap::new();

/// The host's own addresses.
#[btf_map]
pub static DP_HOST_ADDRS: HashMap<[u8; 4], HostAddr, { HOST_ADDRS_MAX as usize }> = HashMap::new();

/// Uplinks by ifindex.
#[btf_map]
pub static DP_UPLINKS: HashMap<u32, Uplink, { UPLINKS_MAX as usize }> = HashMap::new();

/// Conntrack of TCP flows.
#[btf_map]
pub static DP_CT_TCP: LruHashMap<CtKey, CtEntry, { CT_TCP_MAX as usize }> = LruHashMap::new();

/// Conntrack of UDP and ICMP flows.
#[btf_map]
pub static DP_CT_OTHER: LruHashMap<CtKey, CtEntry, { CT_OTHER_MAX as usize }> = LruHashMap::new();

/// The ports of fragmented datagrams' first fragments (see `frag`).
#[btf_map]
pub static DP_FRAGS: LruHashMap<FragKey, FragPorts, { FRAGS_MAX as usize }> = LruHashMap::new();

/// The same for IPv6 datagrams (by the fragment header's identification).
#[btf_map]
pub static DP_FRAGS6: LruHashMap<FragKey6, FragPorts, { FRAGS_MAX as usize }> = LruHashMap::new();

/// Endpoints by the ifindex of their host-side veth.
#[btf_map]
pub static DP_ENDPOINTS: HashMap<u32, EndpointInfo, { ENDPOINTS_MAX as usize }> = HashMap::new();

/// The fast path's delivery data per endpoint address (see `fastpath`).
#[btf_map]
pub static DP_ENDPOINT_ROUTES: HashMap<[u8; 4], EndpointRoute, { ENDPOINTS_MAX as usize }> =
    HashMap::new();

/// The sandbox of the addresses of endpoints that share one (see
/// `endpoint`).
#[btf_map]
pub static DP_SANDBOX_ADDRS: HashMap<[u8; 4], SandboxAddr, { ENDPOINTS_MAX as usize }> =
    HashMap::new();

/// Host-local sockets translated by the sock_addr hooks, by socket cookie.
#[btf_map]
pub static DP_SOCK_REVNAT: LruHashMap<u64, SockRevNat, { SOCK_REVNAT_MAX as usize }> =
    LruHashMap::new();

// IPv6: one map per family (see `dataplane_common::maps`), read by the
// IPv6 programs (`uplink6`, `endpoint6`) through `family::Family`.
use dataplane_common::{
    ct::{CtEntry6, CtKey6},
    nat::{EndpointInfo6, PortKey6, PortTarget6, Uplink6},
};

/// Published IPv6 ports.
#[btf_map]
pub static DP_PORTS6: HashMap<PortKey6, PortTarget6, { PORTS_MAX as usize }> = HashMap::new();

/// Managed IPv6 subnets and what may leave them.
#[btf_map]
pub static DP_SUBNETS6: LpmTrie<[u8; 16], SubnetPolicy, { SUBNETS_MAX as usize }> = LpmTrie::new();

/// Container ports open to direct access on `routed` IPv6 networks.
#[btf_map]
pub static DP_OPEN_PORTS6: HashMap<PortKey6, u32, { PORTS_MAX as usize }> = HashMap::new();

/// The host's own IPv6 addresses (not link-local ones).
#[btf_map]
pub static DP_HOST_ADDRS6: HashMap<[u8; 16], HostAddr, { HOST_ADDRS_MAX as usize }> =
    HashMap::new();

/// Uplinks' IPv6 addresses by ifindex.
#[btf_map]
pub static DP_UPLINKS6: HashMap<u32, Uplink6, { UPLINKS_MAX as usize }> = HashMap::new();

/// Conntrack of IPv6 TCP flows.
#[btf_map]
pub static DP_CT6_TCP: LruHashMap<CtKey6, CtEntry6, { CT_TCP_MAX as usize }> = LruHashMap::new();

/// Conntrack of IPv6 UDP and ICMPv6 flows.
#[btf_map]
pub static DP_CT6_OTHER: LruHashMap<CtKey6, CtEntry6, { CT_OTHER_MAX as usize }> =
    LruHashMap::new();

/// The scratch space of one CPU: a flow's entry and its reply, and the
/// quoted tuple of an ICMPv6 error (`icmp6`).
#[repr(C)]
pub struct Scratch6 {
    pub orig: CtEntry6,
    pub reply: CtEntry6,
    pub quote: CtKey6,
}

/// Per-CPU room for a new IPv6 flow's conntrack entries (see `nat6`); not
/// pinned: it holds nothing between program runs.
#[btf_map]
pub static DP_SCRATCH6: PerCpuArray<Scratch6, 1> = PerCpuArray::new();

/// Host-local IPv6 sockets translated by the sock_addr hooks, by socket
/// cookie.
#[btf_map]
pub static DP_SOCK_REVNAT6: LruHashMap<
    u64,
    dataplane_common::sock::SockRevNat6,
    { SOCK_REVNAT_MAX as usize },
> = LruHashMap::new();

/// Endpoints' IPv6 side by the ifindex of their host-side veth.
#[btf_map]
pub static DP_ENDPOINTS6: HashMap<u32, EndpointInfo6, { ENDPOINTS_MAX as usize }> = HashMap::new();

/// The sandbox of IPv6 endpoint addresses shared in one (as
/// `DP_SANDBOX_ADDRS`).
#[btf_map]
pub static DP_SANDBOX_ADDRS6: HashMap<[u8; 16], SandboxAddr, { ENDPOINTS_MAX as usize }> =
    HashMap::new();

/// The fast path's route to an endpoint by its IPv6 address (as
/// `DP_ENDPOINT_ROUTES`).
#[btf_map]
pub static DP_ENDPOINT_ROUTES6: HashMap<[u8; 16], EndpointRoute, { ENDPOINTS_MAX as usize }> =
    HashMap::new();

// Filter rules (DOCKER-USER), see `dataplane_common::filter` and `filter.rs`.
// The dimension maps' values are 1952-byte `RuleBits`, and a rule set of
// 10 000 /32 sources has 10 001 source entries per generation: the maps
// allocate per entry (`BPF_F_NO_PREALLOC`, which LPM tries always do), so
// their size follows the rule set, not `FILTER_KEYS_MAX`. The /32 sources
// live in a hash, not the trie: no intermediate trie nodes of 2 KiB each.
use aya_ebpf::{bindings::BPF_F_NO_PREALLOC, btf_maps::Array};
use dataplane_common::{
    filter::{
        FilterAction, FilterConfig, FilterHostKey, FilterHostKey6, FilterIfaceKey, FilterNetKey,
        FilterPortKey, FilterSrc6Data, FilterSrcData, HostRules, RuleBits, FILTER_SLOTS,
    },
    maps::FILTER_KEYS_MAX,
};

/// The live generation of filter rules (one entry).
#[btf_map]
pub static DP_FLT_CONFIG: Array<FilterConfig, 1> = Array::new();

/// Filter rules by source address (longest prefix), for CIDRs shorter
/// than /32.
#[btf_map]
pub static DP_FLT_SRC: LpmTrie<FilterSrcData, RuleBits, { FILTER_KEYS_MAX as usize }> =
    LpmTrie::new();

/// Filter rules the addresses /32 rules name add to their region's.
/// Preallocated (see `FILTER_KEYS_MAX`).
#[btf_map]
pub static DP_FLT_HOST4: HashMap<FilterHostKey, HostRules, { FILTER_KEYS_MAX as usize }, 0> =
    HashMap::new();

/// Filter rules by IPv6 source address (longest prefix), for CIDRs
/// shorter than /128.
#[btf_map]
pub static DP_FLT_SRC6: LpmTrie<FilterSrc6Data, RuleBits, { FILTER_KEYS_MAX as usize }> =
    LpmTrie::new();

/// Filter rules the addresses /128 rules name add to their region's.
/// Preallocated, as `DP_FLT_HOST4`.
#[btf_map]
pub static DP_FLT_HOST6: HashMap<FilterHostKey6, HostRules, { FILTER_KEYS_MAX as usize }, 0> =
    HashMap::new();

/// Filter rules by in-interface.
#[btf_map]
pub static DP_FLT_IFACE: HashMap<
    FilterIfaceKey,
    RuleBits,
    { FILTER_KEYS_MAX as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Filter rules by (container) destination port.
#[btf_map]
pub static DP_FLT_PORT: HashMap<
    FilterPortKey,
    RuleBits,
    { FILTER_KEYS_MAX as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Filter rules by network.
#[btf_map]
pub static DP_FLT_NET: HashMap<
    FilterNetKey,
    RuleBits,
    { FILTER_KEYS_MAX as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Each filter rule's action, per generation and position.
#[btf_map]
pub static DP_FLT_ACTIONS: Array<FilterAction, { FILTER_SLOTS as usize }> = Array::new();

/// Packets and bytes matched by each filter rule, per generation and position.
#[btf_map]
pub static DP_FLT_STATS: PerCpuArray<PktCounter, { FILTER_SLOTS as usize }> = PerCpuArray::new();

// Drop events (`dataplane monitor`), see `dataplane_common::event` and `drop.rs`.
use aya_ebpf::btf_maps::RingBuf;
use dataplane_common::{event::DropEvent, maps::EVENTS_BYTES};

/// One [`DropEvent`] per dropped packet, best effort.
#[btf_map]
pub static DP_EVENTS: RingBuf<DropEvent, { EVENTS_BYTES as usize }> = RingBuf::new();

/// Drop events lost to a full ring buffer (slot 0).
#[btf_map]
pub static DP_EVENTS_LOST: PerCpuArray<PktCounter, 1> = PerCpuArray::new();
