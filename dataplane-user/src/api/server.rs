//! The serving side of the API: [`execute`] carries out one request (for
//! the agent's socket and for the CLI in-process); [`serve`] answers on the
//! socket, through the accept loop all front doors share
//! ([`super::conns`]).

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{
    context::{answer, Context},
    datapath,
    types::{
        Connected, DnatRow, DnsRow, DnsTable, Done, FilterAdded, FilterIds, FilterRow, FlowRow,
        NatTable, NetworkCreated, Problems, Published, Removed, SnatRow, Status,
    },
    ApiError, InFlight, Request, Response, IO_TIMEOUT, MAX_REQUEST,
};
use crate::{
    control::{
        driver::{self, NetworkDriver as _},
        inspect,
        manager::{Manager, NetworkError},
        names_dns,
    },
    datapath::{bpffs::PinRoot, conntrack, filter, limits, nat},
};

/// Carries out one request. Errors are the manager's, whole (with their
/// sources) in the message. Requests on the datapath alone (`stats`,
/// `local`, `conntrack gc`, `cleanup`) take no manager: they work on the
/// pins, as the CLI did before it asked the agent.
pub async fn execute(ctx: &Context, req: Request) -> Result<Value, anyhow::Error> {
    let req = match datapath::execute(ctx, req).await? {
        Ok(answer) => return Ok(answer),
        Err(req) => req,
    };
    if let Request::ClusterStatus = req {
        // The store's view, not the state's: no manager, no state lock.
        let cluster = ctx.cluster.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "no cluster: the agent runs without cluster_store (or no agent answers; docs/overlay.md)"
            )
        })?;
        return answer(cluster.status().await);
    }
    let mut m = ctx.manager().await?;
    let v = run(ctx, &mut m, req).await;
    // The answer waits until the change is on disk (the error of the
    // request itself comes first).
    let durable = ctx.done(m).await;
    let v = v?;
    durable?;
    Ok(v)
}

async fn run(ctx: &Context, m: &mut Manager, req: Request) -> Result<Value, anyhow::Error> {
    match req {
        Request::NetworkCreate { args } => {
            let net = m.create(args.parse()?).await?;
            answer(NetworkCreated {
                id: net.id,
                name: net.name,
            })
        }
        Request::NetworkLs => {
            let st = m.state();
            answer(
                st.networks
                    .values()
                    .map(|n| inspect::network_json(st, n))
                    .collect::<Vec<_>>(),
            )
        }
        Request::NetworkInspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                let net = m.network(name)?;
                let mut v = inspect::network_json(m.state(), net);
                overlay_peers(ctx, net, &mut v).await;
                out.push(v);
            }
            answer(out)
        }
        Request::NetworkRm { names, force } => answer(Removed {
            removed: m.remove(&names, force).await?,
        }),
        Request::Connect { args } => {
            let ep = m.connect(&args).await?;
            answer(Connected {
                id: ep.id,
                name: ep.name,
                ipv4: ep.ipv4,
                ipv6: ep.ipv6,
                mac: ep.mac.map(|m| m.to_string()),
                ifname: ep.ifname,
            })
        }
        Request::Disconnect { network, container } => {
            m.disconnect(&network, &container).await?;
            answer(Done {})
        }
        Request::PublishAdd {
            network,
            endpoint,
            specs,
        } => {
            let added = m.publish_add(&network, &endpoint, &specs).await?;
            answer(Published {
                published: added.iter().map(ToString::to_string).collect(),
            })
        }
        Request::PublishRm {
            network,
            endpoint,
            specs,
        } => {
            m.publish_rm(&network, &endpoint, &specs).await?;
            answer(Done {})
        }
        Request::UplinkAdd { iface } => {
            m.uplink_add(&iface).await?;
            answer(Done {})
        }
        Request::UplinkRm { iface } => {
            m.uplink_rm(&iface).await?;
            answer(Done {})
        }
        Request::UplinkLs => answer(&m.state().uplinks),
        Request::NatLs => answer(nat_ls(m, &ctx.pins)?),
        Request::DnsLs { network } => answer(dns_ls(m, &network)?),
        Request::ConntrackLs => {
            // Off the runtime's one thread, as every walk of a whole table.
            let pins = ctx.pins.clone();
            let flows = tokio::task::spawn_blocking(move || conntrack::list(&pins)).await??;
            answer(flows.into_iter().map(FlowRow::from).collect::<Vec<_>>())
        }
        Request::Status => answer(Status {
            server: ctx.server.to_owned(),
            pid: std::process::id(),
            state_dir: ctx.state_dir.clone(),
            bpffs_root: ctx.pins.path().to_owned(),
            networks: m.state().networks.len(),
            endpoints: m.state().endpoints.len(),
            uplinks: m.state().uplinks.clone(),
            limits: status_limits(&ctx.pins).await?,
        }),
        req => run_more(ctx, m, req).await,
    }
}

/// Docker's `Peers` of an overlay network: the hosts with endpoints on
/// it, from the cluster store (left out when the store does not answer:
/// inspect still shows this host's side).
async fn overlay_peers(ctx: &Context, net: &crate::control::model::Network, v: &mut Value) {
    let (Some(cluster), crate::control::model::DriverConfig::Overlay(_)) =
        (&ctx.cluster, &net.driver)
    else {
        return;
    };
    let Ok(eps) = cluster.endpoints_of(&net.name).await else {
        return;
    };
    let peers: std::collections::BTreeSet<(String, String)> = eps
        .into_iter()
        .map(|e| (e.host, e.vtep.to_string()))
        .collect();
    v["Peers"] = peers
        .into_iter()
        .map(|(name, ip)| serde_json::json!({ "Name": name, "IP": ip }))
        .collect();
}

/// [`run`]'s second half: filters and CNI.
async fn run_more(ctx: &Context, m: &mut Manager, req: Request) -> Result<Value, anyhow::Error> {
    match req {
        Request::FilterAdd { args, first } => {
            let rule = m
                .filter_add(args.parse().map_err(NetworkError::from)?, first)
                .await?;
            answer(FilterAdded {
                id: rule.id,
                rule: rule.to_string(),
            })
        }
        Request::FilterAddMany { rules, first } => {
            let specs =
                crate::control::filter_rules::parse_request(&rules).map_err(NetworkError::from)?;
            let added = m.filter_add_many(specs, first).await?;
            answer(FilterIds {
                ids: added.iter().map(|r| r.id).collect(),
            })
        }
        Request::FilterRm { id } => {
            m.filter_rm(id).await?;
            answer(Done {})
        }
        Request::FilterRmMany { ids } => {
            m.filter_rm_many(&ids).await?;
            answer(Done {})
        }
        Request::FilterLs => {
            let counters = filter::counters_by_id(&ctx.pins).unwrap_or_default();
            answer(
                m.state()
                    .filters
                    .iter()
                    .map(|r| {
                        let c = counters.get(&r.id).copied().unwrap_or_default();
                        FilterRow {
                            id: r.id,
                            rule: r.to_string(),
                            packets: c.packets,
                            bytes: c.bytes,
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        }
        Request::CniAdd { args } => answer(m.cni_add(&args).await?),
        Request::CniDel { network, key } => {
            m.cni_del(&network, &key).await?;
            answer(Done {})
        }
        Request::CniCheck { args } => answer(Problems {
            problems: m.cni_check(&args).await?,
        }),
        Request::CniGc { args } => answer(Removed {
            removed: m.cni_gc(&args).await?,
        }),
        other => Err(anyhow::anyhow!(
            "request {:?}: not one the manager carries out",
            other.op()
        )),
    }
}

/// The drop totals the previous `status` of this process saw.
static STATUS_DROPS: std::sync::Mutex<Option<limits::DropMemory>> = std::sync::Mutex::new(None);

/// `status`'s limits: the map walks run on a blocking thread, so the
/// agent's other requests and its tick go on meanwhile.
async fn status_limits(pins: &PinRoot) -> Result<limits::LimitsReport, anyhow::Error> {
    let pins = pins.clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut guard = STATUS_DROPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        limits::read(&pins, guard.get_or_insert_with(Default::default))
    })
    .await??;
    Ok(report)
}

fn nat_ls(m: &Manager, pins: &PinRoot) -> Result<NatTable, anyhow::Error> {
    let state = m.state();
    let mut rows = Vec::new();
    for ep in state.endpoints.values() {
        for p in &ep.published {
            for side in p.sides(ep.ipv4, ep.ipv6) {
                rows.push((ep, *p, side));
            }
        }
    }
    rows.sort_by(|(_, a, x), (_, b, y)| {
        (a.proto, a.host_port, a.host_ip, &x.host).cmp(&(b.proto, b.host_port, b.host_ip, &y.host))
    });
    let counters = nat::port_counters(pins, rows.iter().map(|(_, _, s)| s.stats_index))?;
    let dnat = rows
        .into_iter()
        .map(|(ep, p, side)| {
            let c = counters.get(&side.stats_index).copied().unwrap_or_default();
            DnatRow {
                proto: p.proto.name().to_owned(),
                host: side.host,
                container: side.container,
                endpoint: ep.name.clone(),
                network: ep.network.clone(),
                packets: c.packets,
                bytes: c.bytes,
            }
        })
        .collect();
    let snat = state
        .networks
        .values()
        .filter_map(|n| driver::for_network(n).subnet_policy(n).map(|p| (n, p)))
        .flat_map(|(n, p)| {
            let subnets = p.subnet.map(|s| s.to_string()).into_iter();
            subnets
                .chain(p.subnet6.map(|s| s.to_string()))
                .map(move |subnet| SnatRow {
                    network: n.name.clone(),
                    subnet,
                    masquerade: p.masquerade,
                    internal: n.internal,
                })
        })
        .collect();
    Ok(NatTable {
        dnat,
        snat,
        uplinks: state.uplinks.clone(),
    })
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

/// Serves requests until `shutdown` resolves, at most
/// [`super::DEFAULT_MAX_CONNECTIONS`] connections at once.
pub async fn serve(
    listener: UnixListener,
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_with(listener, ctx, super::DEFAULT_MAX_CONNECTIONS, shutdown).await;
}

/// [`serve`] with at most `max` connections at once (the state lock
/// serialises their effects).
pub async fn serve_with(
    listener: UnixListener,
    ctx: Context,
    max: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    super::accept_loop(listener, max, shutdown, "API", move |stream, flight| {
        let ctx = ctx.clone();
        async move {
            if let Err(e) = handle(stream, &ctx, &flight).await {
                tracing::warn!("API connection: {e:#}");
            }
        }
    })
    .await;
}

async fn handle(stream: UnixStream, ctx: &Context, flight: &InFlight) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(
        IO_TIMEOUT,
        BufReader::new(read.take(MAX_REQUEST as u64)).read_line(&mut line),
    )
    .await??;
    // From here on the connection is busy: not one to close for a newcomer.
    let _busy = flight.start();
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

/// `dns ls NETWORK`: the names the network's responder answers.
fn dns_ls(m: &Manager, network: &str) -> Result<DnsTable, anyhow::Error> {
    let net = m.network(network)?;
    if let Some(reason) = names_dns::no_names_reason(net) {
        anyhow::bail!("network {}: no names: {reason}", net.name);
    }
    let table = names_dns::NameTable::from_state(m.state());
    let names = table.networks.get(&net.name);
    Ok(DnsTable {
        network: net.name.clone(),
        server: names.map(|n| n.server),
        names: names
            .map(|n| {
                n.names
                    .iter()
                    .map(|(name, e)| DnsRow {
                        name: name.clone(),
                        addresses: e.addresses.iter().map(ToString::to_string).collect(),
                        endpoints: e.endpoints.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}
