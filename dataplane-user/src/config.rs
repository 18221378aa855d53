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
//! host_cgroup = "/sys/fs/cgroup"          # host-local published ports; "none": off;
//!                                         # default: the cgroup v2 root
//! metrics_address = "127.0.0.1:9641"      # Prometheus /metrics; "none": off
//! docker_socket = "/run/docker/plugins/dataplane.sock"  # Docker's remote network
//!                                         # driver `dataplane`; "off" or "": off
//! fast_path = true                        # translated flows skip the bridge and
//!                                         # the host stack; false: they do not
//!
//! [conntrack]                             # idle timeouts, seconds
//! tcp_established = 21600
//! tcp_syn = 60
//! tcp_closing = 10
//! other = 60                              # UDP and ICMP
//!
//! [masquerade]                            # source ports for SNAT; default: the
//! port_min = 61000                        # ports above the host's ephemeral range
//! port_max = 65535                        # (`ip_local_port_range`), see below
//! ```
//!
//! Masquerade must not take a port the host's own connections pick, or a
//! container's flow and one of the host's could share a tuple (the replies
//! of one go to the other). Unless `[masquerade]` names a bound, its range
//! is derived from the host's `net.ipv4.ip_local_port_range` as read in the
//! host's network namespace ([`snat_range_beside`]): the ports above it, or
//! failing that the ports between 1024 and it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use dataplane_common::nat::NatConfig;
use serde::Deserialize;

use crate::conntrack::Timeouts;

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
    #[serde(default)]
    conntrack: ConntrackFile,
    #[serde(default)]
    masquerade: MasqueradeFile,
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

/// Where host-local access or metrics go: off, the default, or a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting<T> {
    Off,
    Default,
    Value(T),
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
    /// Masquerade ports as configured, or the fixed defaults until
    /// [`Config::resolve_nat`] derives them from the host.
    pub nat: NatConfig,
    /// Whether `[masquerade]` names a port bound: then the range is the
    /// user's, not derived from the host's ephemeral range.
    pub snat_ports_set: bool,
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
            snat_ports_set: false,
        }
    }
}

/// Metrics listen here unless configured: loopback only.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9641";

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &std::path::Path, text: &str) -> Result<Config, ConfigError> {
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
            Some("none") => Setting::Off,
            Some(p) => Setting::Value(PathBuf::from(p)),
        };
        c.metrics = match file.metrics_address.as_deref() {
            None => Setting::Default,
            Some("none") => Setting::Off,
            Some(a) => Setting::Value(
                a.parse()
                    .map_err(|_| invalid("metrics_address", format!("{a:?} is not IP:PORT")))?,
            ),
        };
        c.docker_socket = match file.docker_socket.as_deref() {
            None => Setting::Default,
            Some("off" | "") => Setting::Off,
            Some(p) if p.starts_with('/') => Setting::Value(PathBuf::from(p)),
            Some(p) => {
                return Err(invalid(
                    "docker_socket",
                    format!("{p:?} is not an absolute path (or \"off\")"),
                ))
            }
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
        // Either bound makes the range the user's; the other keeps its
        // historical default, so files written before the derivation mean
        // what they meant.
        c.snat_ports_set = file.masquerade.port_min.is_some() || file.masquerade.port_max.is_some();
        if let Some(p) = file.masquerade.port_min {
            c.nat.snat_port_min = p;
        }
        if let Some(p) = file.masquerade.port_max {
            c.nat.snat_port_max = p;
        }
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

/// The host's ephemeral port range (per network namespace: a process reads
/// its own namespace's value).
pub const EPHEMERAL_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Masquerade never takes a privileged port by default.
const SNAT_FLOOR: u16 = 1024;
/// Fewer free ports than this above the ephemeral range is not room
/// enough: the ports below it are taken instead.
const SNAT_MIN_PORTS: u32 = 1024;

/// Parses `ip_local_port_range` ("32768\t60999\n").
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// The default masquerade range beside the host's ephemeral range
/// `lo`..=`hi`: the ports above it when there are at least
/// [`SNAT_MIN_PORTS`] of them (61000-65535 beside Linux's default
/// 32768-60999), else those from 1024 up to it when there are that many,
/// else the larger of the two if either has a port; None when the
/// ephemeral range leaves nothing above 1023.
pub fn snat_range_beside((lo, hi): (u16, u16)) -> Option<(u16, u16)> {
    let above = (hi < u16::MAX).then(|| (hi + 1, u16::MAX));
    let below = (lo > SNAT_FLOOR).then(|| (SNAT_FLOOR, lo - 1));
    let size = |r: Option<(u16, u16)>| r.map_or(0, |(a, b)| u32::from(b) - u32::from(a) + 1);
    if size(above) >= SNAT_MIN_PORTS {
        return above;
    }
    if size(below) >= SNAT_MIN_PORTS {
        return below;
    }
    if size(above) >= size(below) {
        above
    } else {
        below
    }
}

impl Config {
    /// The NAT settings for programs loaded now: the configured ones, with
    /// the masquerade range derived from the host's ephemeral range
    /// (`ephemeral`, the text of [`EPHEMERAL_RANGE_PATH`] as read in the
    /// host's namespace) unless the file set it.
    pub fn resolve_nat(&self, ephemeral: &str) -> Result<NatConfig, ConfigError> {
        if self.snat_ports_set {
            return Ok(self.nat);
        }
        let invalid = |problem: String| ConfigError::Invalid {
            path: PathBuf::from(EPHEMERAL_RANGE_PATH),
            field: "masquerade",
            problem,
        };
        let range = parse_port_range(ephemeral)
            .ok_or_else(|| invalid(format!("{:?} is not a port range", ephemeral.trim())))?;
        let (min, max) = snat_range_beside(range).ok_or_else(|| {
            invalid(format!(
                "the host's ephemeral ports {}-{} leave none above 1023 for masquerade: \
                 set [masquerade] port_min and port_max",
                range.0, range.1
            ))
        })?;
        Ok(NatConfig {
            snat_port_min: min,
            snat_port_max: max,
            ..self.nat
        })
    }

    /// [`Config::resolve_nat`] with the range of the namespace this process
    /// is in.
    pub fn host_nat(&self) -> Result<NatConfig, ConfigError> {
        if self.snat_ports_set {
            return Ok(self.nat);
        }
        let text =
            std::fs::read_to_string(EPHEMERAL_RANGE_PATH).map_err(|source| ConfigError::Read {
                path: PathBuf::from(EPHEMERAL_RANGE_PATH),
                source,
            })?;
        self.resolve_nat(&text)
    }
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
            "#,
        )
        .unwrap();
        assert_eq!(c.state_dir, Some(PathBuf::from("/s")));
        assert_eq!(c.uplinks, vec!["eth1"]);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.host_cgroup, Setting::Off);
        assert_eq!(c.metrics, Setting::Value("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(c.timeouts.tcp_closing, Duration::from_secs(3));
        assert_eq!(c.timeouts.tcp_syn, Duration::from_secs(60));
        assert_eq!((c.nat.snat_port_min, c.nat.snat_port_max), (40000, 40100));
        assert!(c.snat_ports_set);
        assert_eq!(c.nat.fast_path, 1, "on unless the file says otherwise");
        assert_eq!(
            Config::parse(Path::new("e.toml"), "").unwrap(),
            Config::default()
        );
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

    #[test]
    fn masquerade_range_beside_the_ephemeral_ports() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range(""), None);
        // Above the host's range when there is room, else below it (never
        // under 1024), else the larger scrap, else none.
        for (ephemeral, want) in [
            ((32768, 60999), Some((61000, 65535))),
            ((40000, 50000), Some((50001, 65535))),
            ((32768, 65000), Some((1024, 32767))),
            ((10000, 65535), Some((1024, 9999))),
            ((1500, 65000), Some((65001, 65535))),
            ((1100, 65535), Some((1024, 1099))),
            ((1024, 65535), None),
            ((1, 65535), None),
        ] {
            assert_eq!(snat_range_beside(ephemeral), want, "{ephemeral:?}");
        }
    }

    #[test]
    fn masquerade_range_is_derived_unless_configured() {
        let c = Config::default();
        assert!(!c.snat_ports_set);
        let nat = c.resolve_nat("32768 60999\n").unwrap();
        assert_eq!((nat.snat_port_min, nat.snat_port_max), (61000, 65535));
        assert_eq!((nat.snat_probes, nat.fast_path), (32, 1), "the rest kept");
        let e = c.resolve_nat("1024 65535").unwrap_err().to_string();
        assert!(e.contains("set [masquerade]"), "{e}");
        let e = c.resolve_nat("nonsense").unwrap_err().to_string();
        assert!(e.contains("ip_local_port_range"), "{e}");
        // One configured bound is enough to switch the derivation off; the
        // other keeps its old default.
        let c = Config::parse(Path::new("m.toml"), "[masquerade]\nport_min = 40000").unwrap();
        let nat = c.resolve_nat("32768 60999").unwrap();
        assert_eq!((nat.snat_port_min, nat.snat_port_max), (40000, 60999));
    }
}
