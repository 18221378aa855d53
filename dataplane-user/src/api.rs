//! The agent's API: typed requests over a Unix socket, one JSON line in,
//! one JSON line out per connection (`docs/api.md`). [`execute`] is the one
//! place a request is carried out; the agent runs it for API clients, and
//! the CLI runs it in-process when no agent answers, so both paths behave
//! the same. Every request takes the state lock for its whole duration, so
//! concurrent calls are serialised, never interleaved.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    bpffs::PinRoot,
    cni, conntrack,
    filter::{self, FilterArgs},
    nat,
    network::{
        inspect,
        manager::{Cache, ConnectArgs, Manager, NetworkError},
        model::CreateArgs,
    },
};

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
        specs: Vec<String>,
    },
    PublishRm {
        network: String,
        endpoint: String,
        specs: Vec<String>,
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
    FilterLs,
    NatLs,
    ConntrackLs,
    /// Who answers: the agent (with its pid) or the CLI itself.
    Status,
    /// CNI ADD (`dataplane-cni`, docs/cni.md).
    CniAdd {
        args: cni::AddArgs,
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

/// What a request runs against.
#[derive(Clone, Debug)]
pub struct Context {
    pub state_dir: PathBuf,
    pub pins: PinRoot,
    pub nat: dataplane_common::nat::NatConfig,
    /// Who executes: "agent" or "cli".
    pub server: &'static str,
    /// What one request's manager leaves for the next (the agent's; None
    /// in the CLI, which runs one request).
    pub cache: Option<Arc<std::sync::Mutex<Cache>>>,
}

impl Context {
    /// A manager for one request, under the state lock, from the cache if
    /// there is one. Hand it back with [`Context::done`].
    pub async fn manager(&self) -> Result<Manager, NetworkError> {
        let mut m =
            Manager::open_cached(&self.state_dir, &self.pins, self.cache.as_deref()).await?;
        m.set_nat_config(self.nat);
        Ok(m)
    }

    /// Ends a request: what the manager holds goes back into the cache,
    /// then the state lock is released.
    pub fn done(&self, m: Manager) {
        if let Some(slot) = &self.cache {
            m.keep(slot);
        }
    }
}

/// Carries out one request. Errors are the manager's, whole (with their
/// sources) in the message.
pub async fn execute(ctx: &Context, req: Request) -> Result<Value, anyhow::Error> {
    let mut m = ctx.manager().await?;
    let v = run(ctx, &mut m, req).await;
    ctx.done(m);
    v
}

async fn run(ctx: &Context, m: &mut Manager, req: Request) -> Result<Value, anyhow::Error> {
    let v = match req {
        Request::NetworkCreate { args } => {
            let net = m.create(args.parse()?).await?;
            json!({ "id": net.id, "name": net.name })
        }
        Request::NetworkLs => {
            let st = m.state();
            Value::Array(
                st.networks
                    .values()
                    .map(|n| inspect::network_json(st, n))
                    .collect(),
            )
        }
        Request::NetworkInspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                out.push(inspect::network_json(m.state(), m.network(name)?));
            }
            Value::Array(out)
        }
        Request::NetworkRm { names, force } => json!({ "removed": m.remove(&names, force).await? }),
        Request::Connect { args } => {
            let ep = m.connect(&args).await?;
            json!({ "id": ep.id, "name": ep.name, "ipv4": ep.ipv4, "mac": ep.mac, "ifname": ep.ifname })
        }
        Request::Disconnect { network, container } => {
            m.disconnect(&network, &container).await?;
            json!({})
        }
        Request::PublishAdd {
            network,
            endpoint,
            specs,
        } => {
            let added = m.publish_add(&network, &endpoint, &specs).await?;
            json!({ "published": added.iter().map(ToString::to_string).collect::<Vec<_>>() })
        }
        Request::PublishRm {
            network,
            endpoint,
            specs,
        } => {
            m.publish_rm(&network, &endpoint, &specs).await?;
            json!({})
        }
        Request::UplinkAdd { iface } => {
            m.uplink_add(&iface).await?;
            json!({})
        }
        Request::UplinkRm { iface } => {
            m.uplink_rm(&iface).await?;
            json!({})
        }
        Request::UplinkLs => json!(m.state().uplinks),
        Request::FilterAdd { args, first } => {
            let rule = m
                .filter_add(args.parse().map_err(NetworkError::from)?, first)
                .await?;
            json!({ "id": rule.id, "rule": rule.to_string() })
        }
        Request::FilterAddMany { rules, first } => {
            let specs = filter::parse_request(&rules).map_err(NetworkError::from)?;
            let added = m.filter_add_many(specs, first).await?;
            json!({ "ids": added.iter().map(|r| r.id).collect::<Vec<_>>() })
        }
        Request::FilterRm { id } => {
            m.filter_rm(id).await?;
            json!({})
        }
        Request::FilterLs => {
            let counters = filter::counters_by_id(&ctx.pins).unwrap_or_default();
            Value::Array(
                m.state()
                    .filters
                    .iter()
                    .map(|r| {
                        let c = counters.get(&r.id).copied().unwrap_or_default();
                        json!({ "id": r.id, "rule": r.to_string(), "packets": c.packets, "bytes": c.bytes })
                    })
                    .collect(),
            )
        }
        Request::NatLs => nat_ls(m, &ctx.pins)?,
        Request::ConntrackLs => serde_json::to_value(conntrack::list(&ctx.pins)?)?,
        Request::Status => json!({
            "server": ctx.server,
            "pid": std::process::id(),
            "state_dir": ctx.state_dir,
            "bpffs_root": ctx.pins.path(),
            "networks": m.state().networks.len(),
            "endpoints": m.state().endpoints.len(),
            "uplinks": m.state().uplinks,
        }),
        Request::CniAdd { args } => serde_json::to_value(m.cni_add(&args).await?)?,
        Request::CniDel { network, key } => {
            m.cni_del(&network, &key).await?;
            json!({})
        }
        Request::CniCheck { args } => json!({ "problems": m.cni_check(&args).await? }),
        Request::CniGc { args } => json!({ "removed": m.cni_gc(&args).await? }),
    };
    Ok(v)
}

fn nat_ls(m: &Manager, pins: &PinRoot) -> Result<Value, anyhow::Error> {
    let state = m.state();
    let mut rows = Vec::new();
    for ep in state.endpoints.values() {
        for p in &ep.published {
            rows.push((ep, *p));
        }
    }
    rows.sort_by_key(|(_, p)| (p.proto, p.host_port, p.host_ip));
    let counters = nat::port_counters(pins, rows.iter().map(|(_, p)| p.stats_index))?;
    let dnat: Vec<Value> = rows
        .iter()
        .map(|(ep, p)| {
            let c = counters.get(&p.stats_index).copied().unwrap_or_default();
            json!({
                "proto": p.proto.name(),
                "host": p.host(),
                "container": format!("{}:{}", ep.ipv4.map(|i| i.to_string()).unwrap_or_default(), p.container_port),
                "endpoint": ep.name,
                "network": ep.network,
                "packets": c.packets,
                "bytes": c.bytes,
            })
        })
        .collect();
    let snat: Vec<Value> = state
        .networks
        .values()
        .filter_map(|n| n.subnet.filter(|_| n.bridge.is_some()).map(|s| (n, s)))
        .map(|(n, s)| {
            json!({
                "network": n.name,
                "subnet": s.to_string(),
                "masquerade": n.masquerade && !n.internal,
                "internal": n.internal,
            })
        })
        .collect();
    Ok(json!({ "dnat": dnat, "snat": snat, "uplinks": state.uplinks }))
}

/// Creates the socket: its directory if needed, any stale socket file
/// replaced, mode 0600 so only root can connect.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let io = |source| ApiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves requests until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()>,
) {
    accept_loop(listener, ctx, shutdown, "API", |stream, ctx| async move {
        if let Err(e) = handle(stream, &ctx).await {
            tracing::warn!("API connection: {e:#}");
        }
    })
    .await;
}

/// Accepts connections until `shutdown` resolves, each served by `conn` in
/// its own task (the state lock serialises their effects). The agent's API
/// and Docker's driver socket both run on it; `conn` reports its own errors.
pub async fn accept_loop<F, Fut>(
    listener: UnixListener,
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()>,
    what: &'static str,
    conn: F,
) where
    F: Fn(UnixStream, Context) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(conn(stream, ctx.clone()));
                }
                Err(e) => tracing::warn!("{what} accept: {e}"),
            },
        }
    }
}

async fn handle(stream: UnixStream, ctx: &Context) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(
        IO_TIMEOUT,
        BufReader::new(read.take(MAX_REQUEST as u64)).read_line(&mut line),
    )
    .await??;
    let response = if n == 0 || !line.ends_with('\n') {
        Response::Error {
            error: format!("request: one JSON line of at most {MAX_REQUEST} bytes expected"),
        }
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => match execute(ctx, req).await {
                Ok(result) => Response::Ok { result },
                Err(e) => Response::Error {
                    error: format!("{e:#}"),
                },
            },
            Err(e) => Response::Error {
                error: format!("request: {e}"),
            },
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, write.write_all(&out)).await??;
    Ok(())
}

/// Sends a request to the agent at `path`. `Ok(None)`: nobody listens there
/// (no socket file, or a stale one), so the caller may run it in-process.
pub async fn call(path: &Path, req: &Request) -> Result<Option<Value>, ApiError> {
    let io = |source| ApiError::Io {
        path: path.to_owned(),
        source,
    };
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io(e)),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|source| ApiError::Answer {
        path: path.to_owned(),
        source,
    })?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    tokio::time::timeout(CALL_TIMEOUT, BufReader::new(read).read_line(&mut answer))
        .await
        .map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from the agent",
            ))
        })?
        .map_err(io)?;
    match serde_json::from_str::<Response>(&answer).map_err(|source| ApiError::Answer {
        path: path.to_owned(),
        source,
    })? {
        Response::Ok { result } => Ok(Some(result)),
        Response::Error { error } => Err(ApiError::Failed(error)),
    }
}
