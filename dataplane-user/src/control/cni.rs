//! What the CNI plugin asks of the control plane: ADD, CHECK and GC
//! requests and ADD's answer, keyed by the attachment CNI names. The plugin
//! (`crate::frontends::cni`) parses the runtime's configuration into these
//! and sends them over the API; the manager (`manager/cni.rs`) carries them
//! out.

use serde::{Deserialize, Serialize};

/// One attachment, as CNI names it: the container and the interface name
/// inside it (unique on a host while the container lives).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// The network a CNI configuration may create when it does not exist yet:
/// the CLI's `network create` strings (checked by the agent like the CLI's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    /// The IPv6 range of a dual-stack or IPv6-only network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range6: Option<String>,
    /// IPv6 on: an IPv6 range was configured (`subnet6` may still be None:
    /// a ULA /64 is picked).
    #[serde(default)]
    pub ipv6: bool,
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
    /// `ipMasq`: None keeps the default (masquerade on).
    pub ip_masq: Option<bool>,
    /// `gatewayMode`: Docker's `gateway_mode_ipv4` (checked by the agent);
    /// None keeps the default (`nat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mode: Option<String>,
}

/// API request `cni_add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddArgs {
    pub network: String,
    /// Create the network from this when it does not exist; without it a
    /// missing network is an error.
    pub create: Option<NetworkSpec>,
    pub key: AttachmentKey,
    pub netns: String,
    pub ip: Option<String>,
    /// The IPv6 address asked for (`runtimeConfig.ips`).
    #[serde(default)]
    pub ip6: Option<String>,
    pub mac: Option<String>,
    /// Docker's `-p` syntax, one per port mapping.
    pub publish: Vec<String>,
    /// The runtime's names for the container (`K8S_POD_NAME`, podman's
    /// `aliases`): DNS answers them on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// What `cni_add` set up (the agent's answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    pub endpoint: String,
    pub network: String,
    pub ifname: String,
    pub mac: String,
    /// 0.0.0.0 on an IPv6-only network.
    pub ipv4: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The IPv6 address with its prefix length, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<(std::net::Ipv6Addr, u8)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// Whether the namespace's IPv6 default route is ours.
    #[serde(default)]
    pub default_route6: bool,
    /// Whether the namespace's default route is ours (a second network does
    /// not take it, as in Docker).
    pub default_route: bool,
    pub host_ifname: Option<String>,
    pub host_mac: Option<String>,
    pub netns: String,
    /// The agent's DNS responder for this network (its gateway), when the
    /// network has names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_server: Option<std::net::IpAddr>,
}

/// API request `cni_check`: what the runtime believes ADD set up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckArgs {
    pub network: String,
    pub key: AttachmentKey,
    pub netns: String,
    /// The address ADD reported (from `prevResult`), `ip/prefix`.
    pub address: Option<String>,
    /// Routes ADD reported for this interface: (destination CIDR, gateway).
    pub routes: Vec<(String, Option<std::net::Ipv4Addr>)>,
    /// The port mappings the runtime asks for now, Docker's `-p` syntax.
    pub publish: Vec<String>,
}

/// API request `cni_gc`: every attachment of `network` not listed goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcArgs {
    pub network: String,
    pub valid: Vec<AttachmentKey>,
}
