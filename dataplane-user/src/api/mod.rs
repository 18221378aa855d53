//! The agent's API: typed requests over a Unix socket, one JSON line in,
//! one JSON line out per connection (`docs/api.md`). The wire types live
//! here and in [`types`] (the answers), shared by the [`server`] (the
//! agent's socket, and [`execute`], the one place a request is carried
//! out) and the [`client`] (the CLI, which runs [`execute`] in-process when
//! no agent answers, so both paths behave the same). Every request takes
//! the state lock for its whole duration, so concurrent calls are
//! serialised, never interleaved.

pub mod client;
pub mod conns;
pub mod context;
mod datapath;
pub mod server;
pub mod types;

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::types::{TcDirection, TimeoutSecs};
pub use self::{
    client::{call, Client},
    conns::{accept_loop, InFlight, DEFAULT_MAX_CONNECTIONS},
    context::Context,
    server::{bind, execute, serve, serve_with},
};
use crate::control::{
    cni, filter_rules::FilterArgs, manager::ConnectArgs, model::CreateArgs, ports::PublishSpec,
};
pub use crate::sys::names::{check_iface, IfaceError};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/dataplane/dataplane.sock";
/// A request line longer than this is refused. The largest requests are
/// `filter_add_many` ones: `MAX_RULES` rules of every flag take about
/// 2 MiB.
const MAX_REQUEST: usize = 4 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client waits for an answer: requests wait for each other's
/// state lock, so this bounds the whole queue, not one request.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    NetworkCreate {
        args: CreateArgs,
    },
    NetworkLs,
    NetworkInspect {
        names: Vec<String>,
    },
    NetworkRm {
        names: Vec<String>,
        force: bool,
    },
    Connect {
        args: ConnectArgs,
    },
    Disconnect {
        network: String,
        container: String,
    },
    PublishAdd {
        network: String,
        endpoint: String,
        specs: Vec<PublishSpec>,
    },
    PublishRm {
        network: String,
        endpoint: String,
        specs: Vec<PublishSpec>,
    },
    UplinkAdd {
        iface: String,
    },
    UplinkRm {
        iface: String,
    },
    UplinkLs,
    FilterAdd {
        args: FilterArgs,
        first: bool,
    },
    /// Rules in the given order, all or none (`filter add --from-file`).
    FilterAddMany {
        rules: Vec<FilterArgs>,
        #[serde(default)]
        first: bool,
    },
    FilterRm {
        id: u32,
    },
    /// Rules by id, all or none (`filter rm ID...`).
    FilterRmMany {
        ids: Vec<u32>,
    },
    FilterLs,
    NatLs,
    ConntrackLs,
    /// The names a network's DNS answers (`dns ls`, docs/dns.md).
    DnsLs {
        network: String,
    },
    /// Who answers: the agent (with its pid) or the CLI itself.
    Status,
    /// The cluster of overlay networks (`cluster status`, docs/overlay.md).
    ClusterStatus,
    /// CNI ADD (`dataplane-cni`, docs/cni.md).
    CniAdd {
        /// Boxed: the largest request by far, and the enum is as big as it.
        args: Box<cni::AddArgs>,
    },
    CniDel {
        network: String,
        key: cni::AttachmentKey,
    },
    CniCheck {
        args: cni::CheckArgs,
    },
    CniGc {
        args: cni::GcArgs,
    },
    /// Attach `dp_stats` to an interface (`stats attach`).
    StatsAttach {
        iface: String,
        directions: Vec<TcDirection>,
    },
    StatsDetach {
        iface: String,
        directions: Vec<TcDirection>,
    },
    /// Host-local published ports for a cgroup (default: the cgroup v2
    /// root) (`local attach`).
    LocalAttach {
        #[serde(default)]
        cgroup: Option<PathBuf>,
    },
    LocalDetach {
        #[serde(default)]
        cgroup: Option<PathBuf>,
    },
    /// Remove conntrack entries idle past these timeouts (`conntrack gc`).
    ConntrackGc {
        timeouts: TimeoutSecs,
    },
    /// Remove everything the dataplane created (`cleanup`).
    Cleanup,
}

impl Request {
    /// The request's `op` on the wire, for messages.
    pub fn op(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("op")?.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok { result: Value },
    Error { error: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API socket {path}: malformed answer")]
    Answer {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The request was carried out and failed; the message is the agent's.
    #[error("{0}")]
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::{types::*, *};

    #[test]
    fn datapath_requests_on_the_wire() {
        for (line, want) in [
            (r#"{"op": "cleanup"}"#, Request::Cleanup),
            (
                r#"{"op": "local_attach"}"#,
                Request::LocalAttach { cgroup: None },
            ),
            (
                r#"{"op": "local_detach", "cgroup": "/sys/fs/cgroup/x"}"#,
                Request::LocalDetach {
                    cgroup: Some("/sys/fs/cgroup/x".into()),
                },
            ),
            (
                r#"{"op": "stats_attach", "iface": "eth0", "directions": ["ingress", "egress"]}"#,
                Request::StatsAttach {
                    iface: "eth0".into(),
                    directions: vec![TcDirection::Ingress, TcDirection::Egress],
                },
            ),
            (
                r#"{"op": "conntrack_gc", "timeouts": {"tcp_established": 1, "tcp_syn": 2, "tcp_closing": 3, "other": 4}}"#,
                Request::ConntrackGc {
                    timeouts: TimeoutSecs {
                        tcp_established: 1,
                        tcp_syn: 2,
                        tcp_closing: 3,
                        other: 4,
                    },
                },
            ),
        ] {
            let req: Request = serde_json::from_str(line).unwrap();
            assert_eq!(req, want, "{line}");
            let back: Request =
                serde_json::from_value(serde_json::to_value(&req).unwrap()).unwrap();
            assert_eq!(back, want);
        }
        assert_eq!(Request::Cleanup.op(), "cleanup");
        assert_eq!(Request::NetworkLs.op(), "network_ls");
    }

    #[test]
    fn answers_keep_their_wire_shape() {
        // The shapes docs/api.md gives, read into the typed answers.
        let s: Status = serde_json::from_value(serde_json::json!({
            "server": "agent", "pid": 7, "state_dir": "/s", "bpffs_root": "/b",
            "networks": 3, "endpoints": 1, "uplinks": ["eth0"]
        }))
        .unwrap();
        assert_eq!((s.server.as_str(), s.pid, s.uplinks.len()), ("agent", 7, 1));
        let c: Connected = serde_json::from_value(serde_json::json!({
            "id": "e", "name": "c1", "ipv4": "172.17.0.2", "mac": null, "ifname": "eth0"
        }))
        .unwrap();
        assert_eq!(c.ipv4, Some([172, 17, 0, 2].into()));
        assert_eq!(
            serde_json::to_value(Done {}).unwrap(),
            serde_json::json!({})
        );
        let _: Done = serde_json::from_value(serde_json::json!({})).unwrap();
        let t = TcLinks {
            links: vec![TcLink {
                iface: "eth0".into(),
                direction: TcDirection::Egress,
                pin: None,
            }],
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"links": [{"iface": "eth0", "direction": "egress"}]})
        );
    }
}
