//! What the cluster store holds: the key layout under one prefix and the
//! records (JSON) at each key. Written here once, read by every host; the
//! layout is documented in docs/overlay.md.
//!
//! ```text
//! /dataplane/v1/networks/<name>          NetworkRecord            (no lease)
//! /dataplane/v1/vnis/<vni>               the network's name       (no lease)
//! /dataplane/v1/ipam/<net>/<ip>          IpamRecord               (host lease)
//! /dataplane/v1/endpoints/<net>/<id>     EndpointRecord           (host lease)
//! /dataplane/v1/hosts/<host-id>          HostRecord               (host lease)
//! ```

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Every key starts with this: one etcd can serve other users, and a later
/// layout gets `v2` beside it.
pub const PREFIX: &str = "/dataplane/v1/";

/// The first VNI handed out (below are left for hand-made devices).
pub const FIRST_VNI: u32 = 4096;
/// VNIs are 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

pub fn networks_prefix() -> String {
    format!("{PREFIX}networks/")
}
pub fn network_key(name: &str) -> String {
    format!("{PREFIX}networks/{name}")
}
pub fn vni_key(vni: u32) -> String {
    format!("{PREFIX}vnis/{vni}")
}
pub fn ipam_prefix(net: &str) -> String {
    format!("{PREFIX}ipam/{net}/")
}
pub fn ipam_key(net: &str, ip: Ipv4Addr) -> String {
    format!("{PREFIX}ipam/{net}/{ip}")
}
pub fn endpoints_prefix() -> String {
    format!("{PREFIX}endpoints/")
}
pub fn network_endpoints_prefix(net: &str) -> String {
    format!("{PREFIX}endpoints/{net}/")
}
pub fn endpoint_key(net: &str, id: &str) -> String {
    format!("{PREFIX}endpoints/{net}/{id}")
}
pub fn hosts_prefix() -> String {
    format!("{PREFIX}hosts/")
}
pub fn host_key(id: &str) -> String {
    format!("{PREFIX}hosts/{id}")
}

/// An overlay network: the same on every host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Ipv4Net>,
    pub vni: u32,
    /// `--mtu` / `-o com.docker.network.driver.mtu` when given: each host
    /// takes the lower of it and its own (uplink MTU - 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub created: String,
    /// The host that created it.
    pub created_by: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Who holds an address of an overlay network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamRecord {
    pub host: String,
    /// The endpoint's id, once it exists (empty while it is being made).
    pub endpoint: String,
}

/// An endpoint of an overlay network, as the other hosts need it: where
/// to send frames for its MAC, and its IP's MAC for the ARP proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: String,
    pub name: String,
    pub network: String,
    pub host: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The host's VTEP address (its advertise address).
    pub vtep: Ipv4Addr,
}

/// One agent on the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: String,
    pub vtep: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_port: Option<u16>,
    pub vxlan_port: u16,
    pub started: String,
}

/// A record that did not decode: its key and why.
#[derive(Debug, thiserror::Error)]
#[error("cluster store key {key}: {source}")]
pub struct BadRecord {
    pub key: String,
    #[source]
    pub source: serde_json::Error,
}

pub fn encode<T: Serialize>(t: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string
    // keys, no custom serialisers).
    serde_json::to_vec(t).unwrap_or_default()
}

pub fn decode<T: for<'de> Deserialize<'de>>(key: &str, value: &[u8]) -> Result<T, BadRecord> {
    serde_json::from_slice(value).map_err(|source| BadRecord {
        key: key.to_owned(),
        source,
    })
}

/// What a key under [`PREFIX`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Network(String),
    Endpoint { network: String, id: String },
    Host(String),
    Other,
}

impl Key {
    pub fn parse(key: &str) -> Key {
        let Some(rest) = key.strip_prefix(PREFIX) else {
            return Key::Other;
        };
        let mut parts = rest.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("networks"), Some(n), None) => Key::Network(n.to_owned()),
            (Some("hosts"), Some(h), None) => Key::Host(h.to_owned()),
            (Some("endpoints"), Some(n), Some(id)) => Key::Endpoint {
                network: n.to_owned(),
                id: id.to_owned(),
            },
            _ => Key::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(Key::parse(&network_key("ov")), Key::Network("ov".into()));
        assert_eq!(
            Key::parse(&host_key("10.0.0.1")),
            Key::Host("10.0.0.1".into())
        );
        assert_eq!(
            Key::parse(&endpoint_key("ov", "ab")),
            Key::Endpoint {
                network: "ov".into(),
                id: "ab".into()
            }
        );
        assert_eq!(
            Key::parse(&ipam_key("ov", Ipv4Addr::new(10, 0, 9, 2))),
            Key::Other
        );
        assert_eq!(Key::parse("/elsewhere/x"), Key::Other);
    }
}
