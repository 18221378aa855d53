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
//! [masquerade]                            # source ports for SNAT
//! port_min = 32768
//! port_max = 60999
//! ```

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
    pub nat: NatConfig,
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
}
