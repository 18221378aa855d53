//! The cluster settings (`cluster_store`, `cluster_advertise` in Docker's
//! names, and the file's `[cluster]` section), parsed once into
//! [`ClusterConfig`]. Every error names the field and the value.

use std::{net::Ipv4Addr, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;

/// The VXLAN port IANA assigned (and Linux's `dstport` default since 3.7).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// How long a host's records outlive its last keep-alive.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// Docker's default client port for etcd.
const DEFAULT_ETCD_PORT: u16 = 2379;

/// A setting that did not parse: the field (or flag) and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?}: {problem}")]
pub struct ClusterConfigError {
    pub field: &'static str,
    pub value: String,
    pub problem: String,
}

fn bad(field: &'static str, value: &str, problem: impl Into<String>) -> ClusterConfigError {
    ClusterConfigError {
        field,
        value: value.to_owned(),
        problem: problem.into(),
    }
}

/// `cluster_store = "etcd://host:2379[,host:2379]"`: the etcd members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreUrl {
    /// `host:port` of each member, in the order given.
    pub members: Vec<String>,
}

impl FromStr for StoreUrl {
    type Err = ClusterConfigError;

    fn from_str(s: &str) -> Result<StoreUrl, ClusterConfigError> {
        const FIELD: &str = "cluster_store";
        let rest = s
            .strip_prefix("etcd://")
            .ok_or_else(|| bad(FIELD, s, "only etcd://host:port[,host:port] is supported"))?;
        let mut members = Vec::new();
        for m in rest.split(',') {
            let m = m.trim().trim_end_matches('/');
            if m.is_empty() || m.contains('/') || m.contains('@') {
                return Err(bad(FIELD, s, format!("{m:?} is not host[:port]")));
            }
            let (host, port) = match m.rsplit_once(':') {
                Some((h, p)) => {
                    let port: u16 = p
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| bad(FIELD, s, format!("{p:?} is not a port")))?;
                    (h, port)
                }
                None => (m, DEFAULT_ETCD_PORT),
            };
            if host.is_empty() {
                return Err(bad(FIELD, s, format!("{m:?} has no host")));
            }
            members.push(format!("{host}:{port}"));
        }
        Ok(StoreUrl { members })
    }
}

/// What `cluster_advertise` names: an address, or an interface whose first
/// IPv4 address is taken at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdvertiseHost {
    Ip(Ipv4Addr),
    Iface(String),
}

/// `cluster_advertise = "<ip>|<iface>[:port]"`. The address is this host's
/// VTEP (the outer source of its VXLAN packets); the port is Docker's
/// (its engine's API), recorded in the host record for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertise {
    pub host: AdvertiseHost,
    pub port: Option<u16>,
}

impl std::fmt::Display for Advertise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            AdvertiseHost::Ip(ip) => write!(f, "{ip}")?,
            AdvertiseHost::Iface(name) => f.write_str(name)?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl FromStr for Advertise {
    type Err = ClusterConfigError;

    fn from_str(s: &str) -> Result<Advertise, ClusterConfigError> {
        const FIELD: &str = "cluster_advertise";
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(FIELD, s, format!("{p:?} is not a port")))?;
                (h, Some(port))
            }
            None => (s, None),
        };
        let host = match host.parse::<Ipv4Addr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() => {
                return Err(bad(FIELD, s, "not a unicast address of this host"));
            }
            Ok(ip) => AdvertiseHost::Ip(ip),
            Err(_) => {
                crate::sys::names::IfName::new(host)
                    .map_err(|_| bad(FIELD, s, "neither an IPv4 address nor an interface name"))?;
                AdvertiseHost::Iface(host.to_owned())
            }
        };
        Ok(Advertise { host, port })
    }
}

/// TLS to etcd: the CA that signs the members' certificates, and a client
/// certificate and key when the members ask for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Everything the cluster needs, resolved from the file and the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub store: StoreUrl,
    pub advertise: Advertise,
    pub tls: Option<EtcdTls>,
    /// UDP destination port of the VXLAN devices.
    pub vxlan_port: u16,
    pub lease_ttl: Duration,
    /// This host's name in the store; default: the advertise address.
    pub host_id: Option<String>,
}

/// The file's `[cluster]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub vxlan_port: Option<u16>,
    pub lease_ttl_seconds: Option<u64>,
    pub host_id: Option<String>,
}

/// The cluster settings of the file, before the flags: what the file says
/// about the store and the advertise address, and its `[cluster]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSettings {
    pub store: Option<StoreUrl>,
    pub advertise: Option<Advertise>,
    pub tls: Option<EtcdTls>,
    pub vxlan_port: Option<u16>,
    pub lease_ttl: Option<Duration>,
    pub host_id: Option<String>,
}

fn absolute(field: &'static str, p: PathBuf) -> Result<PathBuf, ClusterConfigError> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(bad(field, &p.display().to_string(), "not an absolute path"))
    }
}

impl ClusterSettings {
    /// Parses the file's fields; the error names the field.
    pub fn parse(
        store: Option<&str>,
        advertise: Option<&str>,
        file: ClusterFile,
    ) -> Result<ClusterSettings, ClusterConfigError> {
        let tls = match (file.tls_ca, file.tls_cert, file.tls_key) {
            (None, None, None) => None,
            (Some(ca), cert, key) => {
                if cert.is_some() != key.is_some() {
                    let given = cert.or(key).unwrap_or_default();
                    return Err(bad(
                        "cluster.tls_cert/tls_key",
                        &given.display().to_string(),
                        "a client certificate needs its key and the key its certificate",
                    ));
                }
                Some(EtcdTls {
                    ca: absolute("cluster.tls_ca", ca)?,
                    cert: cert.map(|p| absolute("cluster.tls_cert", p)).transpose()?,
                    key: key.map(|p| absolute("cluster.tls_key", p)).transpose()?,
                })
            }
            (None, cert, key) => {
                let given = cert.or(key).unwrap_or_default();
                return Err(bad(
                    "cluster.tls_cert",
                    &given.display().to_string(),
                    "given without cluster.tls_ca",
                ));
            }
        };
        if let Some(0) = file.vxlan_port {
            return Err(bad("cluster.vxlan_port", "0", "not a UDP port"));
        }
        let lease_ttl = match file.lease_ttl_seconds {
            Some(s) if !(2..=3600).contains(&s) => {
                return Err(bad(
                    "cluster.lease_ttl_seconds",
                    &s.to_string(),
                    "not between 2 and 3600",
                ))
            }
            s => s.map(Duration::from_secs),
        };
        if let Some(id) = &file.host_id {
            if id.is_empty() || id.contains('/') || id.chars().any(char::is_whitespace) {
                return Err(bad(
                    "cluster.host_id",
                    id,
                    "empty, or has '/' or white space",
                ));
            }
        }
        Ok(ClusterSettings {
            store: store.map(str::parse).transpose()?,
            advertise: advertise.map(str::parse).transpose()?,
            tls,
            vxlan_port: file.vxlan_port,
            lease_ttl,
            host_id: file.host_id,
        })
    }

    /// The flags over these settings: None without a store; a store
    /// without an advertise address is an error (the other hosts would
    /// not know where to send this host's packets).
    pub fn resolve(
        &self,
        store: Option<StoreUrl>,
        advertise: Option<Advertise>,
    ) -> Result<Option<ClusterConfig>, ClusterConfigError> {
        let Some(store) = store.or_else(|| self.store.clone()) else {
            if let Some(a) = advertise.or_else(|| self.advertise.clone()) {
                return Err(bad(
                    "cluster_advertise",
                    &a.to_string(),
                    "given without cluster_store",
                ));
            }
            return Ok(None);
        };
        let advertise = advertise
            .or_else(|| self.advertise.clone())
            .ok_or_else(|| {
                bad(
                    "cluster_advertise",
                    "",
                    "required with cluster_store (this host's address or interface)",
                )
            })?;
        Ok(Some(ClusterConfig {
            store,
            advertise,
            tls: self.tls.clone(),
            vxlan_port: self.vxlan_port.unwrap_or(DEFAULT_VXLAN_PORT),
            lease_ttl: self.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
            host_id: self.host_id.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse() {
        let u: StoreUrl = "etcd://10.0.0.1:2379,etcd2:2380".parse().unwrap();
        assert_eq!(u.members, vec!["10.0.0.1:2379", "etcd2:2380"]);
        let u: StoreUrl = "etcd://h".parse().unwrap();
        assert_eq!(u.members, vec!["h:2379"]);
        for (bad, needle) in [
            ("consul://h:8500", "only etcd://"),
            ("etcd://h:0", "\"0\" is not a port"),
            ("etcd://h:99999", "is not a port"),
            ("etcd://,h", "is not host[:port]"),
            ("etcd://:2379", "has no host"),
        ] {
            let e = bad.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(
                e.starts_with("cluster_store") && e.contains(needle),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn advertise_parses() {
        let a: Advertise = "192.0.2.1:2376".parse().unwrap();
        assert_eq!(a.host, AdvertiseHost::Ip(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(a.port, Some(2376));
        let a: Advertise = "eth0".parse().unwrap();
        assert_eq!(
            (a.host, a.port),
            (AdvertiseHost::Iface("eth0".into()), None)
        );
        for bad in ["0.0.0.0", "eth0:x", "a/b", "this-name-is-far-too-long"] {
            let e = bad.parse::<Advertise>().unwrap_err().to_string();
            assert!(e.starts_with("cluster_advertise"), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_resolve() {
        let s = ClusterSettings::parse(None, None, ClusterFile::default()).unwrap();
        assert_eq!(s.resolve(None, None).unwrap(), None);
        let e = s
            .resolve(Some("etcd://h".parse().unwrap()), None)
            .unwrap_err();
        assert!(e.to_string().contains("required with cluster_store"), "{e}");
        let c = s
            .resolve(
                Some("etcd://h".parse().unwrap()),
                Some("10.1.0.2".parse().unwrap()),
            )
            .unwrap()
            .unwrap();
        assert_eq!((c.vxlan_port, c.lease_ttl), (4789, DEFAULT_LEASE_TTL));
        let file = ClusterFile {
            tls_cert: Some("/c.pem".into()),
            ..ClusterFile::default()
        };
        let e = ClusterSettings::parse(None, None, file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without cluster.tls_ca"), "{e}");
        let file = ClusterFile {
            tls_ca: Some("rel.pem".into()),
            ..ClusterFile::default()
        };
        let e = ClusterSettings::parse(None, None, file)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cluster.tls_ca \"rel.pem\""), "{e}");
    }
}
