//! Published ports (DNAT) and masquerade (SNAT) configuration, written by the
//! agent and read by the uplink programs; the endpoints' routes the fast path
//! delivers translated packets with.

use bytemuck::{Pod, Zeroable};

/// A published port as it is reached: host address, port, protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKeyOf<A> {
    /// Host address the port is bound to; 0.0.0.0 (or ::) binds every host
    /// address of the family.
    pub addr: A,
    /// Network byte order.
    pub port: [u8; 2],
    /// IANA protocol number (TCP or UDP).
    pub proto: u8,
    pub _pad: u8,
}
/// A published IPv4 port.
pub type PortKey = PortKeyOf<[u8; 4]>;
/// A published IPv6 port.
pub type PortKey6 = PortKeyOf<[u8; 16]>;
const _: () = assert!(size_of::<PortKey>() == 8);
const _: () = assert!(size_of::<PortKey6>() == 20);

/// Where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTargetOf<A> {
    /// Container address and port (network byte order).
    pub addr: A,
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    /// Slot of this mapping in the per-mapping counter array.
    pub stats_index: u32,
    pub _pad2: u32,
}
pub type PortTarget = PortTargetOf<[u8; 4]>;
pub type PortTarget6 = PortTargetOf<[u8; 16]>;
const _: () = assert!(size_of::<PortTarget>() == 16);
const _: () = assert!(size_of::<PortTarget6>() == 28);

/// Per managed subnet: what leaves it through an uplink.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SubnetPolicy {
    /// [`SUBNET_MASQUERADE`], [`SUBNET_INTERNAL`], [`SUBNET_NO_ICC`],
    /// [`SUBNET_PROTECTED`], [`SUBNET_ROUTED`].
    pub flags: u32,
    /// Identifies the network (isolation compares these); never 0.
    pub network_id: u32,
}
const _: () = assert!(size_of::<SubnetPolicy>() == 8);

/// Rewrite the source of egress flows to the uplink's address.
pub const SUBNET_MASQUERADE: u32 = 1;
/// The network has no egress at all (`--internal`): drop at the uplink.
pub const SUBNET_INTERNAL: u32 = 2;
/// `enable_icc=false`: endpoints of the network may not talk to each other.
pub const SUBNET_NO_ICC: u32 = 4;
/// Gateway mode `nat`: direct-access protection. Packets from outside to an
/// address of the subnet (a container's, the gateway's) are dropped unless
/// a published port translated them or the interface they came in by is
/// trusted by the network (`DP_TRUSTED_IFACES`).
pub const SUBNET_PROTECTED: u32 = 8;
/// Gateway mode `routed`: no masquerade; from outside only ICMP and the
/// container ports published (`DP_OPEN_PORTS`) may be reached directly.
pub const SUBNET_ROUTED: u32 = 16;

/// An interface whose traffic skips one network's direct-access checks
/// (`com.docker.network.bridge.trusted_host_interfaces`), the key of
/// `DP_TRUSTED_IFACES` (the value is unused, 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Pod, Zeroable)]
pub struct TrustedIface {
    pub ifindex: u32,
    /// [`SubnetPolicy::network_id`] of the network trusting it.
    pub network_id: u32,
}
const _: () = assert!(size_of::<TrustedIface>() == 8);

/// An endpoint's host-side veth, by ifindex: what may leave it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfoOf<A> {
    /// The endpoint's own address: anything else as a source is spoofed
    /// (for IPv6, link-local and unspecified sources are also allowed: NDP
    /// and duplicate address detection use them).
    pub addr: A,
    /// Its network's gateway (the host's address on the bridge), the source
    /// given to hairpin flows that stay on one bridge.
    pub gateway: A,
    /// Its sandbox (the inode number of its network namespace, unique
    /// among live namespaces); 0: none known. Sources found in
    /// `DP_SANDBOX_ADDRS` with the same sandbox are its own too.
    pub sandbox: u32,
    pub network_id: u32,
}
/// An endpoint's IPv4 side (`DP_ENDPOINTS`).
pub type EndpointInfo = EndpointInfoOf<[u8; 4]>;
/// An endpoint's IPv6 side (`DP_ENDPOINTS6`), for endpoints with an IPv6
/// address.
pub type EndpointInfo6 = EndpointInfoOf<[u8; 16]>;
const _: () = assert!(size_of::<EndpointInfo>() == 16);
const _: () = assert!(size_of::<EndpointInfo6>() == 40);

/// The sandbox of an endpoint address (`DP_SANDBOX_ADDRS`, keyed by the
/// address): an endpoint's veth may send from the address of another
/// endpoint of its own sandbox (network namespace). A container on two
/// networks answers a client of one from its address on the other when
/// that is the address the client's flow was translated to (hairpin from
/// a shared network), and its routes send that answer out by the client's
/// network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SandboxAddr {
    /// [`EndpointInfo::sandbox`] of the endpoint with this address.
    pub sandbox: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SandboxAddr>() == 8);

/// Where the fast path delivers packets for one endpoint address
/// (`DP_ENDPOINT_ROUTES`, keyed by the endpoint's IPv4 address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EndpointRoute {
    /// The endpoint's host-side veth: `bpf_redirect_peer` on it lands in
    /// the container's namespace.
    pub ifindex: u32,
    /// The container's MAC: the destination of frames delivered into it.
    pub mac: [u8; 6],
    /// Its bridge's MAC (the gateway's): the source of frames delivered
    /// into the container, and the destination of the frames the container
    /// routes through its gateway (only those are the host's to route).
    pub gateway_mac: [u8; 6],
}
const _: () = assert!(size_of::<EndpointRoute>() == 16);

/// A local address of the host, for "is this packet for me" checks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HostAddr {
    pub ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<HostAddr>() == 8);

/// Load-time configuration of the NAT programs (a `Global` in the object):
/// programs keep the values of the process that attached them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NatConfig {
    /// Source ports masquerade allocates from, inclusive (host byte order).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// How many random ports to try after the original one is taken.
    pub snat_probes: u32,
    /// Non-zero: translated packets skip the host stack (the fast path,
    /// `bpf_redirect_peer` into containers, `bpf_redirect`/`_neigh` out to
    /// the uplinks); 0: every packet goes through the stack.
    pub fast_path: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<NatConfig>() == 16);

impl NatConfig {
    /// Linux's default ephemeral range, as netfilter's masquerade uses; the
    /// fast path on.
    pub const DEFAULT: NatConfig = NatConfig {
        snat_port_min: 32768,
        snat_port_max: 60999,
        snat_probes: 32,
        fast_path: 1,
        _pad: 0,
    };
}

/// Slots of the per-mapping counter array.
pub const MAX_PORT_MAPPINGS: u32 = 65536;

/// An uplink: where masquerade takes its source address from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkOf<A> {
    /// The uplink's primary address of the family (for IPv6, a global one:
    /// never link-local).
    pub addr: A,
    pub _pad: u32,
}
pub type Uplink = UplinkOf<[u8; 4]>;
pub type Uplink6 = UplinkOf<[u8; 16]>;
const _: () = assert!(size_of::<Uplink>() == 8);
const _: () = assert!(size_of::<Uplink6>() == 20);

// SAFETY: `#[repr(C)]`, `Copy`, no implicit padding (the size assertions),
// every bit pattern valid; written out because the derive refuses generic
// structs.
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            unsafe impl Zeroable for $t {}
            unsafe impl Pod for $t {}
        )*
    };
}
pod!(
    PortKey,
    PortKey6,
    PortTarget,
    PortTarget6,
    EndpointInfo,
    EndpointInfo6,
    Uplink,
    Uplink6
);

crate::user_pod!(
    PortKey,
    PortKey6,
    PortTarget,
    PortTarget6,
    EndpointInfo6,
    Uplink6,
    SubnetPolicy,
    HostAddr,
    NatConfig,
    Uplink,
    EndpointInfo,
    EndpointRoute,
    SandboxAddr,
    TrustedIface
);
