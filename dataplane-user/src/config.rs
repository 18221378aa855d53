//! The agent's configuration file (TOML), parsed once at start into typed
//! settings. Every field is optional and documented here; an unknown field
//! or a bad value is a startup error naming the field, never a silent
//! default. Command-line flags override the file.
//!
//! ```toml
//! # /etc/dataplane/dataplane.toml
//! state_dir = "/var/lib/dataplane"        # persisted networks, endpoints, rules
//! bpffs_root = "/sys/fs/bpf/dataplane"    # pinned maps and links
//! socket = "/run/dataplane/dataplane.sock" # the API (root only)
//! uplinks = ["eth0"]                      # first start only; default: the
//!                                         # interfaces with a default route
//! interval_seconds = 10                   # counters log and conntrack GC, 1-3600
//! host_cgroup = "/sys/fs/cgroup"          # host-local published ports; "off": off;
//!                                         # default: the cgroup v2 root
//! metrics_address = "127.0.0.1:9641"      # Prometheus /metrics; "off": off
//! docker_socket = "/run/docker/plugins/dataplane.sock"  # Docker's remote network
//!                                         # driver `dataplane`; "off": off
//! fast_path = true                        # translated flows skip the bridge and
//!                                         # the host stack; false: they do not
//! default_bridge_ipv6 = false             # IPv6 on the default `bridge` network
//! default_bridge_subnet6 = "fd00:1::/64"  # its IPv6 subnet; default: a /64 of
//!                                         # the host's unique local prefix
//! max_connections = 256                   # per front door (API, Docker, metrics),
//!                                         # 1-16384; the oldest idle one is
//!                                         # closed for a newcomer
//!
//! # Overlay networks across hosts (docs/overlay.md), Docker's names:
//! cluster_store = "etcd://10.0.0.1:2379,10.0.0.2:2379"
//! cluster_advertise = "eth0"              # or an address; ":port" allowed
//!
//! [conntrack]                             # idle timeouts, seconds
//! tcp_established = 21600
//! tcp_syn = 60
//! tcp_closing = 10
//! other = 60                              # UDP and ICMP
//!
//! [masquerade]                            # source ports for SNAT
//! port_min = 32768
//! port_max = 60999
//!
//! [dns]                                   # names on user networks (docs/dns.md)
//! enabled = true                          # false: no responder
//! resolv_conf = "/etc/resolv.conf"        # the host's resolvers, re-read on change
//! netns_etc = "/etc/netns"                # where `ip netns exec` finds resolv.conf
//! cache_size = 1024                       # upstream answers kept, 0-65536
//!
//! [maps]                                  # entries of the big BPF maps, 16-16777216;
//! conntrack_tcp = 262144                  # applied when the agent starts (entries
//! conntrack_other = 65536                 # migrated; a size below the live entries
//! conntrack6_tcp = 262144                 # is refused); memory cost in
//! conntrack6_other = 65536                # docs/reliability.md
//! published_ports = 65536                 # DP_PORTS, DP_PORTS6, DP_PORT_STATS each
//! filter_keys = 30722                     # each filter dimension map (a cap)
//! sock_revnat = 65536                     # host-local reverse NAT, per family
//! [cluster]                               # with cluster_store only
//! tls_ca = "/etc/dataplane/etcd-ca.pem"   # TLS to etcd; a client certificate
//! tls_cert = "/etc/dataplane/etcd.pem"    # and key when etcd asks for one
//! tls_key = "/etc/dataplane/etcd-key.pem"
//! vxlan_port = 4789                       # UDP port of the VXLAN devices
//! lease_ttl_seconds = 15                  # this host's records outlive it so long
//! host_id = "node1"                       # default: the advertise address
//! ```
//!
//! `off` is the one word for "off" (`none` and "" are still accepted). The
//! file and the command line meet here: [`Config::find`] reads the file,
//! [`Config::paths`] and [`Config::agent`] put the flags on top of it, so
//! the binary holds no merging rules of its own.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use dataplane_common::{maps::PIN_ROOT, nat::NatConfig};
use serde::Deserialize;

use crate::{
    control::cluster::config::{
        Advertise, ClusterConfig, ClusterConfigError, ClusterFile, ClusterSettings, StoreUrl,
    },
    datapath::{
        bpffs::PinRoot,
        conntrack::Timeouts,
        host_local,
        limits::{self, MapSizes},
    },
    frontends::dns::DnsSettings,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's message names the field, the line and the column.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {problem}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
    /// The cluster settings (`cluster_store`, `cluster_advertise`,
    /// `[cluster]`); the error names the field and the value.
    #[error("{path}: {source}")]
    Cluster {
        path: PathBuf,
        #[source]
        source: ClusterConfigError,
    },
    /// A cluster flag over the file's settings.
    #[error(transparent)]
    ClusterFlags(ClusterConfigError),
    /// `host_cgroup` not set: its default, the cgroup v2 root, is not
    /// mounted or cannot be read.
    #[error("host_cgroup: no default")]
    HostCgroup(#[source] host_local::SockError),
}

/// The file as written (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    state_dir: Option<PathBuf>,
    bpffs_root: Option<PathBuf>,
    socket: Option<PathBuf>,
    uplinks: Option<Vec<String>>,
    interval_seconds: Option<u64>,
    host_cgroup: Option<String>,
    metrics_address: Option<String>,
    docker_socket: Option<String>,
    fast_path: Option<bool>,
    default_bridge_ipv6: Option<bool>,
    default_bridge_subnet6: Option<String>,
    max_connections: Option<usize>,
    #[serde(default)]
    conntrack: ConntrackFile,
    #[serde(default)]
    masquerade: MasqueradeFile,
    #[serde(default)]
    dns: DnsFile,
    cluster_store: Option<String>,
    cluster_advertise: Option<String>,
    #[serde(default)]
    cluster: ClusterFile,
    #[serde(default)]
    maps: MapsFile,
}

/// `[maps]`: entries of the configurable maps (see [`limits::GROUPS`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapsFile {
    conntrack_tcp: Option<u32>,
    conntrack_other: Option<u32>,
    conntrack6_tcp: Option<u32>,
    conntrack6_other: Option<u32>,
    published_ports: Option<u32>,
    filter_keys: Option<u32>,
    sock_revnat: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsFile {
    enabled: Option<bool>,
    resolv_conf: Option<PathBuf>,
    netns_etc: Option<PathBuf>,
    cache_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConntrackFile {
    tcp_established: Option<u64>,
    tcp_syn: Option<u64>,
    tcp_closing: Option<u64>,
    other: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MasqueradeFile {
    port_min: Option<u16>,
    port_max: Option<u16>,
}

/// Where host-local access, metrics or Docker's driver go: off, the
/// default, or a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting<T> {
    Off,
    Default,
    Value(T),
}

/// The word that turns a setting off, in the file and in flags alike.
/// `none` and the empty string are older spellings, still accepted.
pub const OFF: &str = "off";

impl<T> Setting<T> {
    /// `off` (or `none`, or empty) is [`Setting::Off`]; anything else is a
    /// value for `parse`.
    pub fn parse<E>(text: &str, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<Self, E> {
        match text {
            OFF | "none" | "" => Ok(Setting::Off),
            v => parse(v).map(Setting::Value),
        }
    }

    /// The flag's setting if given, else this one.
    fn or_flag(self, flag: Option<Setting<T>>) -> Setting<T> {
        flag.unwrap_or(self)
    }

    /// The value in force: none when off, `default()` when not set.
    fn resolve<E>(self, default: impl FnOnce() -> Result<T, E>) -> Result<Option<T>, E> {
        match self {
            Setting::Off => Ok(None),
            Setting::Value(v) => Ok(Some(v)),
            Setting::Default => default().map(Some),
        }
    }
}

/// The agent's settings after the file; flags are applied on top by the
/// binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub state_dir: Option<PathBuf>,
    pub bpffs_root: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub uplinks: Vec<String>,
    pub interval: Duration,
    pub host_cgroup: Setting<PathBuf>,
    pub metrics: Setting<SocketAddr>,
    /// Where Docker's remote network driver is served.
    pub docker_socket: Setting<PathBuf>,
    pub timeouts: Timeouts,
    pub nat: NatConfig,
    /// IPv6 on the default `bridge` network, on this subnet (None: a /64
    /// of the host's unique local prefix).
    pub default_bridge_ipv6: Option<Option<ipnet::Ipv6Net>>,
    /// The DNS responder; None: off.
    pub dns: Option<DnsSettings>,
    /// Connections each front door (API, Docker's driver, metrics) serves
    /// at once.
    pub max_connections: usize,
    /// `[maps]`: the sizes the file sets (the others stay None).
    pub maps: MapSizes,
    /// Overlay networks' cluster store, as the file gives it.
    pub cluster: ClusterSettings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            state_dir: None,
            bpffs_root: None,
            socket: None,
            uplinks: Vec::new(),
            interval: Duration::from_secs(10),
            host_cgroup: Setting::Default,
            metrics: Setting::Default,
            docker_socket: Setting::Default,
            timeouts: Timeouts::default(),
            nat: NatConfig::DEFAULT,
            default_bridge_ipv6: None,
            dns: Some(DnsSettings::default()),
            max_connections: crate::api::DEFAULT_MAX_CONNECTIONS,
            maps: MapSizes::default(),
            cluster: ClusterSettings::default(),
        }
    }
}

/// Highest `max_connections`: each connection is a file descriptor, and
/// the unit allows 65 536.
const MAX_CONNECTIONS: usize = 16_384;

/// Metrics listen here unless configured: loopback only.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9641";
const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9641);

/// Read when present, so the CLI and the agent agree on paths.
pub const DEFAULT_CONFIG: &str = "/etc/dataplane/dataplane.toml";

/// The global flags that name places (`--bpffs-root`, `--state-dir`,
/// `--socket`), as given.
#[derive(Clone, Debug, Default)]
pub struct PathFlags {
    pub bpffs_root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
}

/// Where the dataplane keeps its things, flags over file over defaults.
#[derive(Clone, Debug)]
pub struct Paths {
    pub pins: PinRoot,
    pub state_dir: PathBuf,
    /// The agent's API socket.
    pub socket: PathBuf,
}

/// Conntrack idle timeouts from flags, in seconds; each overrides the file.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutFlags {
    pub tcp_established: Option<u64>,
    pub tcp_syn: Option<u64>,
    pub tcp_closing: Option<u64>,
    pub other: Option<u64>,
}

impl TimeoutFlags {
    /// `base` with every given flag put over it.
    pub fn over(self, base: Timeouts) -> Timeouts {
        let pick = |flag: Option<u64>, base: Duration| flag.map_or(base, Duration::from_secs);
        Timeouts {
            tcp_established: pick(self.tcp_established, base.tcp_established),
            tcp_syn: pick(self.tcp_syn, base.tcp_syn),
            tcp_closing: pick(self.tcp_closing, base.tcp_closing),
            other: pick(self.other, base.other),
        }
    }
}

/// `dataplane agent`'s own flags, as given (already checked by the parser).
#[derive(Clone, Debug, Default)]
pub struct AgentFlags {
    pub ifaces: Vec<String>,
    pub interval_seconds: Option<u64>,
    pub timeouts: TimeoutFlags,
    pub host_cgroup: Option<Setting<PathBuf>>,
    pub docker_socket: Option<Setting<PathBuf>>,
    pub fast_path: Option<bool>,
    /// `--cluster-store`, `--cluster-advertise` (over the file's).
    pub cluster_store: Option<StoreUrl>,
    pub cluster_advertise: Option<Advertise>,
}

/// Everything the agent runs with: file and flags merged, defaults
/// filled in, "off" as `None`.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub paths: Paths,
    /// Uplinks on a first start; empty: the interfaces with a default
    /// route.
    pub ifaces: Vec<String>,
    pub interval: Duration,
    pub timeouts: Timeouts,
    /// Where host-local clients get published ports.
    pub host_cgroup: Option<PathBuf>,
    /// Masquerade and fast path settings for the programs the agent
    /// attaches.
    pub nat: NatConfig,
    /// Where Docker's remote network driver is served.
    pub docker_socket: Option<PathBuf>,
    /// Where Prometheus scrapes.
    pub metrics: Option<SocketAddr>,
    /// See [`Config::default_bridge_ipv6`].
    pub default_bridge_ipv6: Option<Option<ipnet::Ipv6Net>>,
    /// The DNS responder's settings; None: off.
    pub dns: Option<DnsSettings>,
    /// Connections each front door serves at once.
    pub max_connections: usize,
    /// Every configurable map's size: the file's, else the object's.
    pub maps: MapSizes,
    /// Overlay networks across hosts; None: no cluster store.
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// The file named by `--config` (which must exist), else the default
    /// file when it exists, else the defaults.
    pub fn find(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::load(path),
            None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG)),
            None => Ok(Config::default()),
        }
    }

    /// The places, flags over the file over the built-in defaults.
    pub fn paths(&self, flags: PathFlags) -> Paths {
        Paths {
            pins: PinRoot::new(
                flags
                    .bpffs_root
                    .or_else(|| self.bpffs_root.clone())
                    .unwrap_or_else(|| PathBuf::from(PIN_ROOT)),
            ),
            state_dir: flags
                .state_dir
                .or_else(|| self.state_dir.clone())
                .unwrap_or_else(|| PathBuf::from(crate::control::state::DEFAULT_DIR)),
            socket: flags
                .socket
                .or_else(|| self.socket.clone())
                .unwrap_or_else(|| PathBuf::from(crate::api::DEFAULT_SOCKET)),
        }
    }

    /// The agent's settings: `flags` over this file over the defaults.
    pub fn agent(&self, paths: Paths, flags: AgentFlags) -> Result<AgentConfig, ConfigError> {
        let host_cgroup = self
            .host_cgroup
            .clone()
            .or_flag(flags.host_cgroup)
            .resolve(|| host_local::cgroup2_mount().map_err(ConfigError::HostCgroup))?;
        let docker_socket = self
            .docker_socket
            .clone()
            .or_flag(flags.docker_socket)
            .resolve(|| {
                Ok::<_, ConfigError>(PathBuf::from(crate::frontends::docker::DEFAULT_SOCKET))
            })?;
        let metrics = self
            .metrics
            .clone()
            .resolve(|| Ok::<_, ConfigError>(DEFAULT_METRICS_ADDR))?;
        Ok(AgentConfig {
            paths,
            ifaces: if flags.ifaces.is_empty() {
                self.uplinks.clone()
            } else {
                flags.ifaces
            },
            interval: flags
                .interval_seconds
                .map_or(self.interval, Duration::from_secs),
            timeouts: flags.timeouts.over(self.timeouts),
            host_cgroup,
            nat: NatConfig {
                fast_path: flags.fast_path.map_or(self.nat.fast_path, u32::from),
                ..self.nat
            },
            docker_socket,
            metrics,
            default_bridge_ipv6: self.default_bridge_ipv6,
            dns: self.dns.clone(),
            max_connections: self.max_connections,
            maps: self.maps.or(MapSizes::defaults()),
            cluster: self
                .cluster
                .resolve(flags.cluster_store, flags.cluster_advertise)
                .map_err(ConfigError::ClusterFlags)?,
        })
    }
}

/// `default_bridge_ipv6` and `default_bridge_subnet6`: None when IPv6 is
/// off, else the subnet if one is given; the error names the field.
#[allow(clippy::type_complexity)]
fn default_bridge_ipv6(
    on: Option<bool>,
    subnet6: Option<String>,
) -> Result<Option<Option<ipnet::Ipv6Net>>, (&'static str, String)> {
    const FIELD: &str = "default_bridge_subnet6";
    let subnet6 = subnet6
        .map(|v| {
            v.parse::<ipnet::Ipv6Net>()
                .map_err(|_| (FIELD, format!("{v:?} is not an IPv6 CIDR")))
        })
        .transpose()?;
    match (on, subnet6) {
        (Some(true), s) => Ok(Some(s)),
        (_, Some(s)) => Err((
            FIELD,
            format!("{s} given without default_bridge_ipv6 = true"),
        )),
        _ => Ok(None),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |field: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            problem,
        };
        let mut c = Config {
            state_dir: file.state_dir,
            bpffs_root: file.bpffs_root,
            socket: file.socket,
            uplinks: file.uplinks.unwrap_or_default(),
            ..Config::default()
        };
        if let Some(n) = file.max_connections {
            if !(1..=MAX_CONNECTIONS).contains(&n) {
                return Err(invalid(
                    "max_connections",
                    format!("{n} is not between 1 and {MAX_CONNECTIONS}"),
                ));
            }
            c.max_connections = n;
        }
        if let Some(s) = file.interval_seconds {
            if !(1..=3600).contains(&s) {
                return Err(invalid(
                    "interval_seconds",
                    format!("{s} is not between 1 and 3600"),
                ));
            }
            c.interval = Duration::from_secs(s);
        }
        c.host_cgroup = match file.host_cgroup.as_deref() {
            None => Setting::Default,
            Some(v) => Setting::parse(v, |p| Ok::<_, String>(PathBuf::from(p)))
                .map_err(|p| invalid("host_cgroup", p))?,
        };
        c.metrics = match file.metrics_address.as_deref() {
            None => Setting::Default,
            Some(v) => Setting::parse(v, |a| {
                a.parse()
                    .map_err(|_| format!("{a:?} is not IP:PORT (or \"off\")"))
            })
            .map_err(|p| invalid("metrics_address", p))?,
        };
        c.docker_socket = match file.docker_socket.as_deref() {
            None => Setting::Default,
            Some(v) => Setting::parse(v, |p| {
                if p.starts_with('/') {
                    Ok(PathBuf::from(p))
                } else {
                    Err(format!("{p:?} is not an absolute path (or \"off\")"))
                }
            })
            .map_err(|p| invalid("docker_socket", p))?,
        };
        let ct = file.conntrack;
        for (field, value, slot) in [
            (
                "conntrack.tcp_established",
                ct.tcp_established,
                &mut c.timeouts.tcp_established,
            ),
            ("conntrack.tcp_syn", ct.tcp_syn, &mut c.timeouts.tcp_syn),
            (
                "conntrack.tcp_closing",
                ct.tcp_closing,
                &mut c.timeouts.tcp_closing,
            ),
            ("conntrack.other", ct.other, &mut c.timeouts.other),
        ] {
            if let Some(v) = value {
                if v == 0 {
                    return Err(invalid(field, "0 would expire every flow at once".into()));
                }
                *slot = Duration::from_secs(v);
            }
        }
        if let Some(on) = file.fast_path {
            c.nat.fast_path = u32::from(on);
        }
        c.default_bridge_ipv6 =
            default_bridge_ipv6(file.default_bridge_ipv6, file.default_bridge_subnet6)
                .map_err(|(field, problem)| invalid(field, problem))?;
        if let Some(p) = file.masquerade.port_min {
            c.nat.snat_port_min = p;
        }
        if let Some(p) = file.masquerade.port_max {
            c.nat.snat_port_max = p;
        }
        c.dns = dns_settings(file.dns, &invalid)?;
        c.maps = map_sizes(file.maps, &invalid)?;
        c.cluster = ClusterSettings::parse(
            file.cluster_store.as_deref(),
            file.cluster_advertise.as_deref(),
            file.cluster,
        )
        .map_err(|source| ConfigError::Cluster {
            path: path.to_owned(),
            source,
        })?;
        if c.nat.snat_port_min == 0 || c.nat.snat_port_min > c.nat.snat_port_max {
            return Err(invalid(
                "masquerade.port_min",
                format!(
                    "the range {}-{} is empty or starts at 0",
                    c.nat.snat_port_min, c.nat.snat_port_max
                ),
            ));
        }
        Ok(c)
    }
}

/// `[maps]`: each size within [`limits::MIN_SIZE`]..=[`limits::MAX_SIZE`].
fn map_sizes(
    file: MapsFile,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<MapSizes, ConfigError> {
    let mut sizes = MapSizes::default();
    for (field, value) in [
        ("maps.conntrack_tcp", file.conntrack_tcp),
        ("maps.conntrack_other", file.conntrack_other),
        ("maps.conntrack6_tcp", file.conntrack6_tcp),
        ("maps.conntrack6_other", file.conntrack6_other),
        ("maps.published_ports", file.published_ports),
        ("maps.filter_keys", file.filter_keys),
        ("maps.sock_revnat", file.sock_revnat),
    ] {
        let Some(v) = value else { continue };
        if !(limits::MIN_SIZE..=limits::MAX_SIZE).contains(&v) {
            return Err(invalid(
                field,
                format!(
                    "{v} is not between {} and {}",
                    limits::MIN_SIZE,
                    limits::MAX_SIZE
                ),
            ));
        }
        *sizes.slot(field.trim_start_matches("maps.")) = Some(v);
    }
    Ok(sizes)
}

/// `[dns]`: None when `enabled = false`; paths must be absolute.
fn dns_settings(
    file: DnsFile,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Option<DnsSettings>, ConfigError> {
    if file.enabled == Some(false) {
        return Ok(None);
    }
    let mut s = DnsSettings::default();
    for (field, value, slot) in [
        ("dns.resolv_conf", file.resolv_conf, &mut s.resolv_conf),
        ("dns.netns_etc", file.netns_etc, &mut s.netns_etc),
    ] {
        if let Some(p) = value {
            if !p.is_absolute() {
                return Err(invalid(
                    field,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
            *slot = p;
        }
    }
    if let Some(n) = file.cache_size {
        if n > 65536 {
            return Err(invalid("dns.cache_size", format!("{n} is more than 65536")));
        }
        s.cache_size = n;
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_field_parses() {
        let c = Config::parse(
            Path::new("t.toml"),
            r#"
            state_dir = "/s"
            bpffs_root = "/sys/fs/bpf/x"
            uplinks = ["eth1"]
            interval_seconds = 5
            host_cgroup = "none"
            metrics_address = "127.0.0.1:9000"
            [conntrack]
            tcp_closing = 3
            [masquerade]
            port_min = 40000
            port_max = 40100
            [dns]
            resolv_conf = "/tmp/r.conf"
            cache_size = 0
            "#,
        )
        .unwrap();
        let dns = c.dns.clone().expect("dns on");
        assert_eq!(dns.resolv_conf, PathBuf::from("/tmp/r.conf"));
        assert_eq!(
            (dns.cache_size, dns.netns_etc),
            (0, PathBuf::from("/etc/netns"))
        );
        let off = Config::parse(Path::new("o.toml"), "[dns]\nenabled = false\n").unwrap();
        assert_eq!(off.dns, None);
        let bad = Config::parse(Path::new("b.toml"), "[dns]\nnetns_etc = \"rel\"\n").unwrap_err();
        assert!(bad.to_string().contains("dns.netns_etc"), "{bad}");
        assert_eq!(c.state_dir, Some(PathBuf::from("/s")));
        assert_eq!(c.uplinks, vec!["eth1"]);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.host_cgroup, Setting::Off);
        assert_eq!(c.metrics, Setting::Value("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(c.timeouts.tcp_closing, Duration::from_secs(3));
        assert_eq!(c.timeouts.tcp_syn, Duration::from_secs(60));
        assert_eq!((c.nat.snat_port_min, c.nat.snat_port_max), (40000, 40100));
        assert_eq!(c.nat.fast_path, 1, "on unless the file says otherwise");
        assert_eq!(
            Config::parse(Path::new("e.toml"), "").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn the_default_bridge_gets_ipv6_when_asked() {
        let parse = |t: &str| Config::parse(Path::new("v6.toml"), t).map(|c| c.default_bridge_ipv6);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("default_bridge_ipv6 = false").unwrap(), None);
        assert_eq!(parse("default_bridge_ipv6 = true").unwrap(), Some(None));
        assert_eq!(
            parse("default_bridge_ipv6 = true\ndefault_bridge_subnet6 = \"fd00:7::/64\"").unwrap(),
            Some(Some("fd00:7::/64".parse().unwrap()))
        );
        for (text, needle) in [
            (
                "default_bridge_subnet6 = \"fd00:7::/64\"",
                "given without default_bridge_ipv6 = true",
            ),
            (
                "default_bridge_ipv6 = true\ndefault_bridge_subnet6 = \"fd00:7::/200\"",
                "field `default_bridge_subnet6`: \"fd00:7::/200\" is not an IPv6 CIDR",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn cluster_settings_from_the_file_and_flags() {
        let c = Config::parse(
            Path::new("c.toml"),
            "cluster_store = \"etcd://10.1.0.1:2379\"\ncluster_advertise = \"10.1.0.2\"\n\
             [cluster]\nvxlan_port = 8472\nlease_ttl_seconds = 5\n",
        )
        .unwrap();
        let paths = c.paths(PathFlags::default());
        let a = c.agent(paths.clone(), AgentFlags::default()).unwrap();
        let cl = a.cluster.expect("cluster on");
        assert_eq!(cl.store.members, vec!["10.1.0.1:2379"]);
        assert_eq!(
            (cl.vxlan_port, cl.lease_ttl),
            (8472, Duration::from_secs(5))
        );
        let flags = AgentFlags {
            cluster_store: Some("etcd://e1:2379,e2:2379".parse().unwrap()),
            ..AgentFlags::default()
        };
        let cl = c.agent(paths, flags).unwrap().cluster.unwrap();
        assert_eq!(cl.store.members, vec!["e1:2379", "e2:2379"]);
        for (text, needle) in [
            (
                "cluster_store = \"consul://x\"",
                "cluster_store \"consul://x\"",
            ),
            ("[cluster]\nvxlan_port = 0", "cluster.vxlan_port"),
            (
                "[cluster]\nlease_ttl_seconds = 1",
                "cluster.lease_ttl_seconds \"1\"",
            ),
            ("[cluster]\nbogus = 1", "bogus"),
        ] {
            let e = Config::parse(Path::new("c.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let no_adv = Config::parse(Path::new("c.toml"), "cluster_store = \"etcd://h\"").unwrap();
        let e = no_adv
            .agent(no_adv.paths(PathFlags::default()), AgentFlags::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster_advertise"), "{e}");
    }

    #[test]
    fn fast_path_setting() {
        let parse = |t: &str| Config::parse(Path::new("f.toml"), t).map(|c| c.nat.fast_path);
        assert_eq!(parse("").unwrap(), 1);
        assert_eq!(parse("fast_path = true").unwrap(), 1);
        assert_eq!(parse("fast_path = false").unwrap(), 0);
        let e = parse("fast_path = \"off\"").unwrap_err().to_string();
        assert!(e.starts_with("f.toml: ") && e.contains("fast_path"), "{e}");
    }

    #[test]
    fn max_connections_setting() {
        let parse = |t: &str| Config::parse(Path::new("m.toml"), t).map(|c| c.max_connections);
        assert_eq!(parse("").unwrap(), crate::api::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(parse("max_connections = 1000").unwrap(), 1000);
        for bad in ["0", "20000"] {
            let e = parse(&format!("max_connections = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("max_connections") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn docker_socket_setting() {
        let parse = |t: &str| Config::parse(Path::new("d.toml"), t).map(|c| c.docker_socket);
        assert_eq!(parse("").unwrap(), Setting::Default);
        assert_eq!(parse("docker_socket = \"off\"").unwrap(), Setting::Off);
        assert_eq!(parse("docker_socket = \"\"").unwrap(), Setting::Off);
        assert_eq!(
            parse("docker_socket = \"/run/docker/plugins/dp.sock\"").unwrap(),
            Setting::Value(PathBuf::from("/run/docker/plugins/dp.sock"))
        );
        let e = parse("docker_socket = \"dp.sock\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `docker_socket`: \"dp.sock\""), "{e}");
    }

    #[test]
    fn one_word_for_off() {
        for field in ["host_cgroup", "metrics_address", "docker_socket"] {
            for word in ["off", "none", ""] {
                let c = Config::parse(Path::new("o.toml"), &format!("{field} = {word:?}"))
                    .unwrap_or_else(|e| panic!("{field} = {word:?}: {e}"));
                let off = match field {
                    "host_cgroup" => c.host_cgroup == Setting::Off,
                    "metrics_address" => c.metrics == Setting::Off,
                    _ => c.docker_socket == Setting::Off,
                };
                assert!(off, "{field} = {word:?}");
            }
        }
    }

    #[test]
    fn flags_go_over_the_file() {
        let file = Config::parse(
            Path::new("m.toml"),
            "uplinks = [\"eth1\"]\ninterval_seconds = 5\nhost_cgroup = \"/cg\"\n\
             docker_socket = \"/d.sock\"\nmetrics_address = \"off\"\nfast_path = false\n\
             [conntrack]\ntcp_syn = 7\n",
        )
        .unwrap();
        let paths = file.paths(PathFlags {
            state_dir: Some("/s".into()),
            ..PathFlags::default()
        });
        assert_eq!(paths.state_dir, PathBuf::from("/s"));
        assert_eq!(paths.socket, PathBuf::from(crate::api::DEFAULT_SOCKET));
        let a = file.agent(paths.clone(), AgentFlags::default()).unwrap();
        assert_eq!(a.ifaces, vec!["eth1"]);
        assert_eq!(a.interval, Duration::from_secs(5));
        assert_eq!(a.host_cgroup, Some(PathBuf::from("/cg")));
        assert_eq!(a.docker_socket, Some(PathBuf::from("/d.sock")));
        assert_eq!(a.metrics, None);
        assert_eq!(a.nat.fast_path, 0);
        assert_eq!(a.timeouts.tcp_syn, Duration::from_secs(7));
        let a = file
            .agent(
                paths,
                AgentFlags {
                    ifaces: vec!["eth2".into()],
                    interval_seconds: Some(1),
                    timeouts: TimeoutFlags {
                        tcp_syn: Some(3),
                        ..TimeoutFlags::default()
                    },
                    host_cgroup: Some(Setting::Off),
                    docker_socket: Some(Setting::Off),
                    fast_path: Some(true),
                    ..AgentFlags::default()
                },
            )
            .unwrap();
        assert_eq!(a.ifaces, vec!["eth2"]);
        assert_eq!(a.interval, Duration::from_secs(1));
        assert_eq!((a.host_cgroup, a.docker_socket), (None, None));
        assert_eq!(a.nat.fast_path, 1);
        assert_eq!(a.timeouts.tcp_syn, Duration::from_secs(3));
        let d = Config::default()
            .agent(
                Config::default().paths(PathFlags::default()),
                AgentFlags {
                    host_cgroup: Some(Setting::Off),
                    ..AgentFlags::default()
                },
            )
            .unwrap();
        assert_eq!(d.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
        assert_eq!(
            d.docker_socket,
            Some(PathBuf::from(crate::frontends::docker::DEFAULT_SOCKET))
        );
    }

    #[test]
    fn map_sizes_setting() {
        let parse = |t: &str| Config::parse(Path::new("s.toml"), t).map(|c| c.maps);
        assert_eq!(parse("").unwrap(), MapSizes::default());
        let s = parse("[maps]\nconntrack_tcp = 1024\nfilter_keys = 16\nsock_revnat = 16777216")
            .unwrap();
        assert_eq!(
            (
                s.conntrack_tcp,
                s.filter_keys,
                s.sock_revnat,
                s.conntrack_other
            ),
            (Some(1024), Some(16), Some(1 << 24), None)
        );
        // The agent gets every size: the file's, else the object's.
        let c = Config::parse(Path::new("s.toml"), "[maps]\nconntrack_tcp = 1024").unwrap();
        let a = c
            .agent(
                c.paths(PathFlags::default()),
                AgentFlags {
                    host_cgroup: Some(Setting::Off),
                    ..AgentFlags::default()
                },
            )
            .unwrap();
        assert_eq!(a.maps.conntrack_tcp, Some(1024));
        assert_eq!(
            a.maps.conntrack_other,
            Some(dataplane_common::maps::CT_OTHER_MAX)
        );
        for (text, needle) in [
            (
                "[maps]\nconntrack_tcp = 0",
                "field `maps.conntrack_tcp`: 0 is not between 16 and 16777216",
            ),
            (
                "[maps]\npublished_ports = 16777217",
                "field `maps.published_ports`: 16777217 is not between",
            ),
            ("[maps]\nconntrack_udp = 100", "conntrack_udp"),
            ("[maps]\nfilter_keys = -1", "filter_keys"),
            ("[maps]\nsock_revnat = \"big\"", "sock_revnat"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with("s.toml: ") && e.contains(needle),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn bad_files_name_the_field() {
        for (text, needle) in [
            ("intervall_seconds = 5", "intervall_seconds"),
            (
                "interval_seconds = 0",
                "field `interval_seconds`: 0 is not between",
            ),
            ("interval_seconds = \"5\"", "interval_seconds"),
            ("metrics_address = \"localhost\"", "field `metrics_address`"),
            ("[conntrack]\ntcp_syn = 0", "field `conntrack.tcp_syn`"),
            ("[conntrack]\nudp = 5", "udp"),
            (
                "[masquerade]\nport_min = 50000\nport_max = 40000",
                "field `masquerade.port_min`",
            ),
            ("[masquerade]\nport_max = 70000", "port_max"),
        ] {
            let e = Config::parse(Path::new("bad.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("bad.toml: ") && e.contains(needle),
                "{text:?}: {e}"
            );
        }
    }
}
