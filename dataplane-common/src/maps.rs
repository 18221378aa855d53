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
/// Published ports: [`crate::nat::PortKey`] -> [`crate::nat::PortTarget`].
pub const PORTS: &str = "DP_PORTS";
/// Per-CPU [`crate::stats::PktCounter`] per published port (`stats_index`).
pub const PORT_STATS: &str = "DP_PORT_STATS";
/// Managed subnets: LPM key over `[u8; 4]` -> [`crate::nat::SubnetPolicy`].
pub const SUBNETS: &str = "DP_SUBNETS";
/// The host's own addresses: `[u8; 4]` -> [`crate::nat::HostAddr`].
pub const HOST_ADDRS: &str = "DP_HOST_ADDRS";
/// Conntrack, TCP flows: [`crate::ct::CtKey`] -> [`crate::ct::CtEntry`].
pub const CT_TCP: &str = "DP_CT_TCP";
/// Conntrack, UDP and ICMP flows.
pub const CT_OTHER: &str = "DP_CT_OTHER";
/// Entries of each conntrack map (LRU: the oldest go first when full).
pub const CT_TCP_MAX: u32 = 262_144;
pub const CT_OTHER_MAX: u32 = 65_536;
/// Fragmented datagrams in flight: [`crate::ct::FragKey`] ->
/// [`crate::ct::FragPorts`] (LRU: a datagram lives milliseconds).
pub const FRAGS: &str = "DP_FRAGS";
pub const FRAGS_MAX: u32 = 8192;
/// First fragments' ports of IPv6 datagrams: [`crate::ct::FragKey6`] ->
/// [`crate::ct::FragPorts`] (LRU, [`FRAGS_MAX`] entries).
pub const FRAGS6: &str = "DP_FRAGS6";
/// Published port entries.
pub const PORTS_MAX: u32 = 65_536;
/// Managed subnets.
pub const SUBNETS_MAX: u32 = 1024;
/// Host addresses.
pub const HOST_ADDRS_MAX: u32 = 256;
/// Uplinks: ifindex (`u32`) -> [`crate::nat::Uplink`].
pub const UPLINKS: &str = "DP_UPLINKS";
pub const UPLINKS_MAX: u32 = 64;
/// Host-local clients translated by the cgroup sock_addr hooks, for the
/// reverse translation in recvmsg4/getpeername4.
pub const SOCK_REVNAT: &str = "DP_SOCK_REVNAT";
pub const SOCK_REVNAT_MAX: u32 = 65_536;
/// Endpoints by host-side veth ifindex: `u32` -> [`crate::nat::EndpointInfo`].
pub const ENDPOINTS: &str = "DP_ENDPOINTS";
pub const ENDPOINTS_MAX: u32 = 16_384;
/// The fast path's delivery data by endpoint address: `[u8; 4]` ->
/// [`crate::nat::EndpointRoute`] (one per veth endpoint).
pub const ENDPOINT_ROUTES: &str = "DP_ENDPOINT_ROUTES";
/// The sandbox of each address of an endpoint that shares its sandbox
/// with others: `[u8; 4]` -> [`crate::nat::SandboxAddr`].
pub const SANDBOX_ADDRS: &str = "DP_SANDBOX_ADDRS";
/// Container ports open to direct access on `routed` networks: a
/// [`crate::nat::PortKey`] holding the container's address and port ->
/// `u32` (unused, 1).
pub const OPEN_PORTS: &str = "DP_OPEN_PORTS";
/// Interfaces a network trusts: [`crate::nat::TrustedIface`] -> `u32`
/// (unused, 1).
pub const TRUSTED_IFACES: &str = "DP_TRUSTED_IFACES";
pub const TRUSTED_IFACES_MAX: u32 = 1024;
/// Filter rules (DOCKER-USER), see [`crate::filter`]. The live generation:
/// array of one [`crate::filter::FilterConfig`].
pub const FILTER_CONFIG: &str = "DP_FLT_CONFIG";
/// Source address: LPM key over [`crate::filter::FilterSrcData`] ->
/// [`crate::filter::RuleBits`].
pub const FILTER_SRC: &str = "DP_FLT_SRC";
/// Source address, what /32 rules add to their address's region:
/// [`crate::filter::FilterHostKey`] -> [`crate::filter::HostRules`].
pub const FILTER_HOST: &str = "DP_FLT_HOST4";
/// IPv6 source address: LPM key over [`crate::filter::FilterSrc6Data`] ->
/// [`crate::filter::RuleBits`].
pub const FILTER_SRC6: &str = "DP_FLT_SRC6";
/// IPv6 source address, what /128 rules add to their address's region:
/// [`crate::filter::FilterHostKey6`] -> [`crate::filter::HostRules`].
pub const FILTER_HOST6: &str = "DP_FLT_HOST6";
/// Pins made before [`crate::filter::HostRules`] (layout schema 1) held
/// every /32 (/128) address's whole bitmap here:
/// [`crate::filter::FilterHostKey`] ([`crate::filter::FilterHostKey6`]) ->
/// [`crate::filter::RuleBits`]. The agent converts and unpins them.
pub const FILTER_SRC_HOST_V1: [&str; 2] = ["DP_FLT_SRC_HOST", "DP_FLT_SRC6_HOST"];
/// In-interface: [`crate::filter::FilterIfaceKey`] -> [`crate::filter::RuleBits`].
pub const FILTER_IFACE: &str = "DP_FLT_IFACE";
/// Destination port: [`crate::filter::FilterPortKey`] -> [`crate::filter::RuleBits`].
pub const FILTER_PORT: &str = "DP_FLT_PORT";
/// Network: [`crate::filter::FilterNetKey`] -> [`crate::filter::RuleBits`].
pub const FILTER_NET: &str = "DP_FLT_NET";
/// Array of [`crate::filter::FilterAction`] per [`crate::filter::slot`].
pub const FILTER_ACTIONS: &str = "DP_FLT_ACTIONS";
/// Per-CPU [`crate::stats::PktCounter`] per [`crate::filter::slot`].
pub const FILTER_STATS: &str = "DP_FLT_STATS";
/// Entries of each filter dimension map: per generation, one per rule plus
/// the wildcard (or 0.0.0.0/0) entry. For the maps of bitmaps a cap, not an
/// allocation: they allocate per entry (`BPF_F_NO_PREALLOC`); the host
/// maps' 32-byte values are preallocated (about 2.5 MB a family), which
/// writes 10 000 addresses in a third of the time.
pub const FILTER_KEYS_MAX: u32 = crate::filter::GENERATIONS * (crate::filter::MAX_RULES + 1);
/// Drop events: a ring buffer of [`crate::event::DropEvent`] (best effort).
pub const EVENTS: &str = "DP_EVENTS";
/// Size of the drop event ring buffer in bytes (a power of two, whole pages).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Drop events lost because the ring buffer was full: per-CPU array of one
/// [`crate::stats::PktCounter`] (events, bytes of the dropped packets).
pub const EVENTS_LOST: &str = "DP_EVENTS_LOST";

// IPv6: one map per family (Cilium's layout), so the IPv4 maps keep their
// layout and key size; the values are the IPv4 ones widened where they hold
// an address (the `...Of<[u8; 16]>` types).
/// Published IPv6 ports: [`crate::nat::PortKey6`] -> [`crate::nat::PortTarget6`].
pub const PORTS6: &str = "DP_PORTS6";
/// Managed IPv6 subnets: LPM key over `[u8; 16]` -> [`crate::nat::SubnetPolicy`].
pub const SUBNETS6: &str = "DP_SUBNETS6";
/// The host's own IPv6 addresses: `[u8; 16]` -> [`crate::nat::HostAddr`].
pub const HOST_ADDRS6: &str = "DP_HOST_ADDRS6";
/// Uplinks' IPv6 addresses: ifindex (`u32`) -> [`crate::nat::Uplink6`].
pub const UPLINKS6: &str = "DP_UPLINKS6";
/// Conntrack of IPv6 TCP flows: [`crate::ct::CtKey6`] -> [`crate::ct::CtEntry6`].
pub const CT6_TCP: &str = "DP_CT6_TCP";
/// Conntrack of IPv6 UDP and ICMPv6 flows.
pub const CT6_OTHER: &str = "DP_CT6_OTHER";
/// Endpoints' IPv6 side by host-side veth ifindex: `u32` ->
/// [`crate::nat::EndpointInfo6`].
pub const ENDPOINTS6: &str = "DP_ENDPOINTS6";
/// The fast path's route to an endpoint by its IPv6 address: `[u8; 16]` ->
/// [`crate::nat::EndpointRoute`] (as [`ENDPOINT_ROUTES`]).
pub const ENDPOINT_ROUTES6: &str = "DP_ENDPOINT_ROUTES6";
/// The sandbox of IPv6 endpoint addresses shared in one: `[u8; 16]` ->
/// [`crate::nat::SandboxAddr`] (as [`SANDBOX_ADDRS`]).
pub const SANDBOX_ADDRS6: &str = "DP_SANDBOX_ADDRS6";
/// Container ports open on `routed` IPv6 networks: [`crate::nat::PortKey6`]
/// -> `u32` (unused, 1).
pub const OPEN_PORTS6: &str = "DP_OPEN_PORTS6";
/// Host-local IPv6 clients translated by the cgroup sock_addr hooks
/// (`dp_connect6`, `dp_sendmsg6`): socket cookie (`u64`) ->
/// [`crate::sock::SockRevNat6`].
pub const SOCK_REVNAT6: &str = "DP_SOCK_REVNAT6";
