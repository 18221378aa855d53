//! The API's answers, one struct per kind of result (`docs/api.md`, column
//! "result"): the server builds them, the CLI reads them, both through
//! serde, so a field renamed on one side is a compile error on the other.
//! Requests whose result has the shape of `docker network inspect` keep it
//! as JSON ([`crate::control::inspect`] owns that shape).

use std::{net::Ipv4Addr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// `{}`: done, nothing to report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// `network_create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCreated {
    pub id: String,
    pub name: String,
}

/// `network_rm`, `cni_gc`: what went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: Vec<String>,
}

/// `connect`: the endpoint made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    pub id: String,
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    /// On a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub mac: Option<String>,
    pub ifname: Option<String>,
}

/// `publish_add`: the mappings added, as `-p` would write them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub published: Vec<String>,
}

/// `filter_add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterAdded {
    pub id: u32,
    pub rule: String,
}

/// `filter_add_many`: the new ids in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterIds {
    pub ids: Vec<u32>,
}

/// One row of `filter_ls`, in evaluation order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRow {
    pub id: u32,
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

/// `dns_ls`: the names one network's DNS answers, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsTable {
    pub network: String,
    /// The responder's address (the network's gateway), port 53.
    pub server: Option<std::net::IpAddr>,
    pub names: Vec<DnsRow>,
}

/// One name: its addresses (answered in rotation) and the endpoints that
/// give them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRow {
    pub name: String,
    pub addresses: Vec<String>,
    pub endpoints: Vec<String>,
}

/// `nat_ls`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatTable {
    pub dnat: Vec<DnatRow>,
    pub snat: Vec<SnatRow>,
    pub uplinks: Vec<String>,
}

/// A published port, with the flows it translated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnatRow {
    pub proto: String,
    /// `HOSTIP:PORT`.
    pub host: String,
    /// `CONTAINERIP:PORT`.
    pub container: String,
    pub endpoint: String,
    pub network: String,
    pub packets: u64,
    pub bytes: u64,
}

/// A bridged network's source NAT policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatRow {
    pub network: String,
    pub subnet: String,
    pub masquerade: bool,
    pub internal: bool,
}

/// One entry of `conntrack_ls` ([`crate::datapath::conntrack::Flow`] on the wire).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    pub proto: String,
    pub state: String,
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    pub nat: String,
    pub reply: bool,
    pub packets: u64,
    pub bytes: u64,
    pub age_s: u64,
    pub idle_s: u64,
}

impl From<crate::datapath::conntrack::Flow> for FlowRow {
    fn from(f: crate::datapath::conntrack::Flow) -> FlowRow {
        FlowRow {
            proto: f.proto.to_owned(),
            state: f.state.to_owned(),
            src: f.src,
            dst: f.dst,
            sport: f.sport,
            dport: f.dport,
            nat: f.nat,
            reply: f.reply,
            packets: f.packets,
            bytes: f.bytes,
            age_s: f.age_s,
            idle_s: f.idle_s,
        }
    }
}

/// `status`: who answers, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// "agent" or "cli".
    pub server: String,
    pub pid: u32,
    pub state_dir: PathBuf,
    pub bpffs_root: PathBuf,
    pub networks: usize,
    pub endpoints: usize,
    pub uplinks: Vec<String>,
    /// The maps' fill and the resource drops (absent from older agents).
    #[serde(default)]
    pub limits: crate::datapath::limits::LimitsReport,
}

/// `cni_check`: what differs from the attachment (empty: it matches).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problems {
    pub problems: Vec<String>,
}

/// A tc attach point of `dp_stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcDirection {
    Ingress,
    Egress,
}

impl From<TcDirection> for crate::datapath::ebpf::Direction {
    fn from(d: TcDirection) -> Self {
        match d {
            TcDirection::Ingress => crate::datapath::ebpf::Direction::Ingress,
            TcDirection::Egress => crate::datapath::ebpf::Direction::Egress,
        }
    }
}

/// `stats_attach` / `stats_detach`: the links made or removed, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcLinks {
    pub links: Vec<TcLink>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcLink {
    pub iface: String,
    pub direction: TcDirection,
    /// Where the link is pinned (attach only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<PathBuf>,
}

/// `local_attach` / `local_detach`: the cgroup whose hooks changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalHooks {
    pub cgroup: PathBuf,
}

/// Conntrack idle timeouts in seconds, as sent with `conntrack_gc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutSecs {
    pub tcp_established: u64,
    pub tcp_syn: u64,
    pub tcp_closing: u64,
    pub other: u64,
}

impl From<crate::datapath::conntrack::Timeouts> for TimeoutSecs {
    fn from(t: crate::datapath::conntrack::Timeouts) -> Self {
        TimeoutSecs {
            tcp_established: t.tcp_established.as_secs(),
            tcp_syn: t.tcp_syn.as_secs(),
            tcp_closing: t.tcp_closing.as_secs(),
            other: t.other.as_secs(),
        }
    }
}

impl From<TimeoutSecs> for crate::datapath::conntrack::Timeouts {
    fn from(t: TimeoutSecs) -> Self {
        let s = std::time::Duration::from_secs;
        crate::datapath::conntrack::Timeouts {
            tcp_established: s(t.tcp_established),
            tcp_syn: s(t.tcp_syn),
            tcp_closing: s(t.tcp_closing),
            other: s(t.other),
        }
    }
}

/// `conntrack_gc`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcDone {
    pub scanned: usize,
    pub removed: usize,
    /// Entries without their flow's other entry: evicted by a full table
    /// (absent from older agents).
    #[serde(default)]
    pub unpaired: usize,
}

/// `cleanup`: what could not be removed (empty: everything went).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleaned {
    pub bpffs_root: PathBuf,
    pub errors: Vec<String>,
}
