//! Docker's libnetwork remote network driver, served by the agent: HTTP/1.1
//! POSTs with JSON bodies on a Unix socket (default
//! `/run/docker/plugins/dataplane.sock`, so `docker network create -d
//! dataplane` finds it). Each request body is parsed once into typed values
//! ([`Call`]) and carried out by the network manager under the state lock,
//! like every API request, so Docker's calls and the CLI's are serialised.
//! Docker's default IPAM keeps allocating addresses (we implement no
//! IpamDriver): CreateNetwork records its pool and gateway, CreateEndpoint
//! the address it chose. Errors answer `{"Err": "..."}` naming the field
//! and the value; unknown methods answer 404 so Docker treats optional ones
//! (DiscoverNew, ...) as not implemented. `docs/docker.md` has the mapping.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, time::Duration};

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    api,
    network::{
        ipam,
        manager::{docker_network_name, DockerPortBinding, Manager},
        model::CreateArgs,
        ports::Proto,
    },
};

/// Where the agent serves the driver unless configured otherwise; the
/// driver's name in Docker is the file name without `.sock`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/dataplane.sock";
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// No request of the protocol comes close.
const MAX_BODY: usize = 1 << 20;
const MAX_HEADER_LINES: usize = 100;
/// Docker keeps connections open between calls; an idle one is closed
/// after this long (Docker dials again).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Docker's option keys.
const GENERIC: &str = "com.docker.network.generic";
const INTERNAL: &str = "com.docker.network.internal";
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
const PORTMAP: &str = "com.docker.network.portmap";
const MAC_OPTION: &str = "com.docker.network.endpoint.macaddress";

/// A request of the protocol that failed to parse: the message names the
/// method, the field and the value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{method}: {problem}")]
pub struct BadRequest {
    pub method: String,
    pub problem: String,
}

/// One driver call, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Activate,
    GetCapabilities,
    CreateNetwork {
        network_id: String,
        args: CreateArgs,
    },
    DeleteNetwork {
        network_id: String,
    },
    CreateEndpoint {
        network_id: String,
        endpoint_id: String,
        ipv4: Ipv4Addr,
        /// Docker's (`--mac-address`); None: we choose one and answer it.
        mac: Option<[u8; 6]>,
    },
    DeleteEndpoint {
        network_id: String,
        endpoint_id: String,
    },
    EndpointOperInfo {
        network_id: String,
        endpoint_id: String,
    },
    Join {
        network_id: String,
        endpoint_id: String,
        sandbox: PathBuf,
    },
    Leave {
        network_id: String,
        endpoint_id: String,
    },
    ProgramExternalConnectivity {
        network_id: String,
        endpoint_id: String,
        bindings: Vec<DockerPortBinding>,
    },
    RevokeExternalConnectivity {
        network_id: String,
        endpoint_id: String,
    },
    /// DiscoverNew / DiscoverDelete: node discovery, nothing to do locally.
    Discover,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetworkBody {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamData {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    gateway: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ids {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateEndpointBody {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    interface: Option<InterfaceBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InterfaceBody {
    #[serde(default)]
    address: String,
    #[serde(rename = "AddressIPv6", default)]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JoinBody {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    sandbox_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ExternalBody {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    options: BTreeMap<String, Value>,
}

/// libnetwork's `types.PortBinding` as JSON.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PortBindingBody {
    proto: u8,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    port: u16,
    #[serde(default)]
    host_port: u16,
    #[serde(default)]
    host_port_end: u16,
}

/// Docker's ids: 64 hex digits; at least 12 (the short form) accepted.
fn check_id(method: &str, field: &str, id: &str) -> Result<String, BadRequest> {
    if id.len() >= 12 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(BadRequest {
            method: method.to_owned(),
            problem: format!("{field} {id:?}: expected Docker's hexadecimal id"),
        })
    }
}

impl Call {
    /// Parses one request: `method` is the URL path without its slash
    /// (`NetworkDriver.CreateNetwork`). `Ok(None)`: a method this driver
    /// does not implement.
    pub fn parse(method: &str, body: &[u8]) -> Result<Option<Call>, BadRequest> {
        let bad = |problem: String| BadRequest {
            method: method.to_owned(),
            problem,
        };
        fn body_of<'a, T: Deserialize<'a>>(method: &str, body: &'a [u8]) -> Result<T, BadRequest> {
            serde_json::from_slice(body).map_err(|e| BadRequest {
                method: method.to_owned(),
                problem: format!("malformed JSON body: {e}"),
            })
        }
        let ids = |body: &[u8]| -> Result<(String, String), BadRequest> {
            let b: Ids = body_of(method, body)?;
            Ok((
                check_id(method, "NetworkID", &b.network_id)?,
                check_id(method, "EndpointID", &b.endpoint_id)?,
            ))
        };
        let call = match method {
            "Plugin.Activate" => Call::Activate,
            "NetworkDriver.GetCapabilities" => Call::GetCapabilities,
            "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => Call::Discover,
            "NetworkDriver.CreateNetwork" => {
                let b: CreateNetworkBody = body_of(method, body)?;
                let network_id = check_id(method, "NetworkID", &b.network_id)?;
                if b.options.get(ENABLE_IPV6).and_then(Value::as_bool) == Some(true)
                    || b.ipv6_data.as_ref().is_some_and(|v| !v.is_empty())
                {
                    return Err(bad(format!(
                        "Options[{ENABLE_IPV6}] / IPv6Data: IPv6 is not supported by the dataplane (create the network without --ipv6)"
                    )));
                }
                let pools = b.ipv4_data.unwrap_or_default();
                let [pool] = pools.as_slice() else {
                    return Err(bad(format!(
                        "IPv4Data: {} pools; the dataplane takes exactly one (one --subnet, Docker's default IPAM)",
                        pools.len()
                    )));
                };
                let subnet: Ipv4Net = pool.pool.parse().map_err(|_| {
                    bad(format!(
                        "IPv4Data[0].Pool {:?}: not an IPv4 subnet",
                        pool.pool
                    ))
                })?;
                let gateway = if pool.gateway.is_empty() {
                    None
                } else {
                    let g: Ipv4Net = pool.gateway.parse().map_err(|_| {
                        bad(format!(
                            "IPv4Data[0].Gateway {:?}: not an IPv4 address/prefix",
                            pool.gateway
                        ))
                    })?;
                    Some(g.addr().to_string())
                };
                let internal = match b.options.get(INTERNAL) {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(v)) => *v,
                    Some(v) => {
                        return Err(bad(format!(
                            "Options[{INTERNAL}] {v}: expected true or false"
                        )))
                    }
                };
                let mut options = Vec::new();
                match b.options.get(GENERIC) {
                    None | Some(Value::Null) => {}
                    Some(Value::Object(m)) => {
                        for (k, v) in m {
                            let Some(v) = v.as_str() else {
                                return Err(bad(format!(
                                    "Options[{GENERIC}][{k}] {v}: expected a string (docker network create -o {k}=VALUE)"
                                )));
                            };
                            options.push(format!("{k}={v}"));
                        }
                    }
                    Some(v) => {
                        return Err(bad(format!(
                            "Options[{GENERIC}] {v}: expected an object of driver options"
                        )))
                    }
                }
                Call::CreateNetwork {
                    args: CreateArgs {
                        name: docker_network_name(&network_id),
                        driver: "bridge".into(),
                        subnet: Some(subnet.to_string()),
                        gateway,
                        ip_range: None,
                        internal,
                        mtu: None,
                        options,
                        labels: Vec::new(),
                    },
                    network_id,
                }
            }
            "NetworkDriver.DeleteNetwork" => {
                let b: Ids = body_of(method, body)?;
                Call::DeleteNetwork {
                    network_id: check_id(method, "NetworkID", &b.network_id)?,
                }
            }
            "NetworkDriver.CreateEndpoint" => {
                let b: CreateEndpointBody = body_of(method, body)?;
                let network_id = check_id(method, "NetworkID", &b.network_id)?;
                let endpoint_id = check_id(method, "EndpointID", &b.endpoint_id)?;
                let iface = b.interface.ok_or_else(|| {
                    bad("Interface: missing; the dataplane needs the address Docker's IPAM assigned".into())
                })?;
                if !iface.address_ipv6.is_empty() {
                    return Err(bad(format!(
                        "Interface.AddressIPv6 {:?}: IPv6 is not supported by the dataplane",
                        iface.address_ipv6
                    )));
                }
                let addr: Ipv4Net = iface.address.parse().map_err(|_| {
                    bad(format!(
                        "Interface.Address {:?}: expected IPv4 address/prefix (the dataplane needs Docker's IPAM to assign one)",
                        iface.address
                    ))
                })?;
                let mac = if iface.mac_address.is_empty() {
                    None
                } else {
                    Some(ipam::parse_mac(&iface.mac_address).map_err(|_| {
                        bad(format!(
                            "Interface.MacAddress {:?}: not a MAC address",
                            iface.mac_address
                        ))
                    })?)
                };
                Call::CreateEndpoint {
                    network_id,
                    endpoint_id,
                    ipv4: addr.addr(),
                    mac,
                }
            }
            "NetworkDriver.DeleteEndpoint" => {
                let (network_id, endpoint_id) = ids(body)?;
                Call::DeleteEndpoint {
                    network_id,
                    endpoint_id,
                }
            }
            "NetworkDriver.EndpointOperInfo" => {
                let (network_id, endpoint_id) = ids(body)?;
                Call::EndpointOperInfo {
                    network_id,
                    endpoint_id,
                }
            }
            "NetworkDriver.Join" => {
                let b: JoinBody = body_of(method, body)?;
                if !b.sandbox_key.starts_with('/') {
                    return Err(bad(format!(
                        "SandboxKey {:?}: expected the path of a network namespace",
                        b.sandbox_key
                    )));
                }
                Call::Join {
                    network_id: check_id(method, "NetworkID", &b.network_id)?,
                    endpoint_id: check_id(method, "EndpointID", &b.endpoint_id)?,
                    sandbox: PathBuf::from(b.sandbox_key),
                }
            }
            "NetworkDriver.Leave" => {
                let (network_id, endpoint_id) = ids(body)?;
                Call::Leave {
                    network_id,
                    endpoint_id,
                }
            }
            "NetworkDriver.ProgramExternalConnectivity" => {
                let b: ExternalBody = body_of(method, body)?;
                let bindings = match b.options.get(PORTMAP) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => parse_portmap(v).map_err(bad)?,
                };
                Call::ProgramExternalConnectivity {
                    network_id: check_id(method, "NetworkID", &b.network_id)?,
                    endpoint_id: check_id(method, "EndpointID", &b.endpoint_id)?,
                    bindings,
                }
            }
            "NetworkDriver.RevokeExternalConnectivity" => {
                let (network_id, endpoint_id) = ids(body)?;
                Call::RevokeExternalConnectivity {
                    network_id,
                    endpoint_id,
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(call))
    }
}

/// `com.docker.network.portmap`: IPv6 host addresses are left out (the
/// dataplane is IPv4 only); anything else malformed is an error naming the
/// entry.
fn parse_portmap(v: &Value) -> Result<Vec<DockerPortBinding>, String> {
    let entries: Vec<PortBindingBody> = serde_json::from_value(v.clone())
        .map_err(|e| format!("Options[{PORTMAP}]: malformed: {e}"))?;
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let field = |f: &str| format!("Options[{PORTMAP}][{i}].{f}");
        let proto = match e.proto {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            p => {
                return Err(format!(
                    "{} {p}: only tcp (6) and udp (17) ports can be published",
                    field("Proto")
                ))
            }
        };
        let host_ip = match e.host_ip.as_str() {
            "" => None,
            s => match s.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => (!ip.is_unspecified()).then_some(ip),
                Ok(std::net::IpAddr::V6(_)) => continue,
                Err(_) => return Err(format!("{} {s:?}: not an IP address", field("HostIP"))),
            },
        };
        if e.port == 0 {
            return Err(format!("{} 0: not a port", field("Port")));
        }
        if e.host_port_end != 0 && e.host_port_end < e.host_port {
            return Err(format!(
                "{} {}: below HostPort {}",
                field("HostPortEnd"),
                e.host_port_end,
                e.host_port
            ));
        }
        out.push(DockerPortBinding {
            proto,
            host_ip,
            host_port: e.host_port,
            host_port_end: e.host_port_end.max(e.host_port),
            container_port: e.port,
        });
    }
    Ok(out)
}

/// A mapping in Docker's `types.PortBinding` JSON.
fn binding_json(m: &crate::network::ports::PortMapping, container_ip: Option<Ipv4Addr>) -> Value {
    json!({
        "Proto": m.proto.number(),
        "IP": container_ip.map(|i| i.to_string()).unwrap_or_default(),
        "Port": m.container_port,
        "HostIP": m.host_ip.map(|i| i.to_string()).unwrap_or_else(|| "0.0.0.0".into()),
        "HostPort": m.host_port,
        "HostPortEnd": m.host_port,
    })
}

/// What a call answers: HTTP status and JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    fn err(status: u16, message: String) -> Reply {
        Reply {
            status,
            body: json!({ "Err": message }),
        }
    }
}

/// Parses and carries out one request.
pub async fn dispatch(ctx: &api::Context, method: &str, body: &[u8]) -> Reply {
    match Call::parse(method, body) {
        Ok(Some(call)) => match execute(ctx, call).await {
            Ok(v) => Reply::ok(v),
            // Docker puts the method in front of the message itself.
            Err(e) => Reply::err(500, format!("dataplane: {e:#}")),
        },
        Ok(None) => Reply::err(
            404,
            format!("dataplane: {method}: not implemented by this driver"),
        ),
        Err(e) => Reply::err(400, format!("dataplane: {}", e.problem)),
    }
}

/// Carries out one call under the state lock (as `api::execute` does).
pub async fn execute(ctx: &api::Context, call: Call) -> anyhow::Result<Value> {
    match call {
        Call::Activate => return Ok(json!({ "Implements": ["NetworkDriver"] })),
        Call::GetCapabilities => {
            return Ok(json!({ "Scope": "local", "ConnectivityScope": "local" }))
        }
        Call::Discover => return Ok(json!({})),
        _ => {}
    }
    let mut m = ctx.manager().await?;
    let v = run(&mut m, call).await;
    ctx.done(m);
    v
}

async fn run(m: &mut Manager, call: Call) -> anyhow::Result<Value> {
    let v = match call {
        Call::Activate | Call::GetCapabilities | Call::Discover => json!({}),
        Call::CreateNetwork { network_id, args } => {
            let net = m.docker_create_network(&network_id, args.parse()?).await?;
            tracing::info!(
                network = net.name,
                id = network_id,
                "docker: network created"
            );
            json!({})
        }
        Call::DeleteNetwork { network_id } => {
            m.docker_delete_network(&network_id).await?;
            tracing::info!(id = network_id, "docker: network deleted");
            json!({})
        }
        Call::CreateEndpoint {
            network_id,
            endpoint_id,
            ipv4,
            mac,
        } => {
            let given = mac.is_some();
            let ep = m
                .docker_create_endpoint(&network_id, &endpoint_id, ipv4, mac)
                .await?;
            if given {
                // Docker refuses an answer that repeats what it set.
                json!({})
            } else {
                json!({ "Interface": { "MacAddress": ep.mac } })
            }
        }
        Call::DeleteEndpoint {
            network_id,
            endpoint_id,
        } => {
            m.docker_delete_endpoint(&network_id, &endpoint_id).await?;
            json!({})
        }
        Call::EndpointOperInfo {
            network_id,
            endpoint_id,
        } => {
            let ep = m.docker_endpoint(&network_id, &endpoint_id)?;
            let host_ifname = match &ep.attachment {
                crate::network::model::Attachment::Veth { host_ifname } => host_ifname.clone(),
                _ => String::new(),
            };
            json!({ "Value": {
                MAC_OPTION: ep.mac,
                PORTMAP: ep.published.iter().map(|p| binding_json(p, ep.ipv4)).collect::<Vec<_>>(),
                "network": ep.network,
                "host_ifname": host_ifname,
            }})
        }
        Call::Join {
            network_id,
            endpoint_id,
            sandbox,
        } => {
            let j = m.docker_join(&network_id, &endpoint_id, &sandbox).await?;
            let mut v = json!({
                "InterfaceName": { "SrcName": j.src_name, "DstPrefix": "eth" },
                "DisableGatewayService": false,
            });
            if let Some(gw) = j.gateway {
                v["Gateway"] = json!(gw.to_string());
            }
            v
        }
        Call::Leave {
            network_id,
            endpoint_id,
        } => {
            m.docker_leave(&network_id, &endpoint_id).await?;
            json!({})
        }
        Call::ProgramExternalConnectivity {
            network_id,
            endpoint_id,
            bindings,
        } => {
            let published = m
                .docker_program_external(&network_id, &endpoint_id, &bindings)
                .await?;
            if !published.is_empty() {
                tracing::info!(
                    endpoint = &endpoint_id[..12.min(endpoint_id.len())],
                    published = %published.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    "docker: ports published"
                );
            }
            json!({})
        }
        Call::RevokeExternalConnectivity {
            network_id,
            endpoint_id,
        } => {
            m.docker_revoke_external(&network_id, &endpoint_id).await?;
            json!({})
        }
    };
    Ok(v)
}

/// Serves the driver until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    ctx: api::Context,
    shutdown: impl std::future::Future<Output = ()>,
) {
    api::accept_loop(
        listener,
        ctx,
        shutdown,
        "docker plugin",
        |stream, ctx| async move {
            if let Err(e) = connection(stream, &ctx).await {
                tracing::debug!("docker plugin connection: {e:#}");
            }
        },
    )
    .await;
}

/// An HTTP/1.1 request: method name (the path without its slash), body,
/// and whether the client asked to close the connection after it.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub path: String,
    pub body: Vec<u8>,
    pub close: bool,
}

/// Reads one request; `Ok(None)` on a clean end of the connection.
pub async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> anyhow::Result<Option<HttpRequest>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(verb), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        anyhow::bail!(
            "request line {:?}: expected METHOD PATH HTTP/1.x",
            line.trim_end()
        );
    };
    if !version.starts_with("HTTP/1.") {
        anyhow::bail!("request line {:?}: only HTTP/1.x", line.trim_end());
    }
    let mut length = 0usize;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for n in 0.. {
        if n == MAX_HEADER_LINES {
            anyhow::bail!("more than {MAX_HEADER_LINES} header lines");
        }
        let mut h = String::new();
        if r.read_line(&mut h).await? == 0 {
            anyhow::bail!("connection closed inside the headers");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            anyhow::bail!("header {h:?}: expected NAME: VALUE");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = value
                    .parse()
                    .map_err(|_| anyhow::anyhow!("Content-Length {value:?}: not a number"))?;
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if verb != "POST" {
        anyhow::bail!("{verb} {path}: the plugin protocol uses POST");
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let size = size.trim().split(';').next().unwrap_or_default();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| anyhow::anyhow!("chunk size {size:?}: not hexadecimal"))?;
            if body.len() + n > MAX_BODY {
                anyhow::bail!("body larger than {MAX_BODY} bytes");
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..]).await?;
            let mut crlf = String::new();
            r.read_line(&mut crlf).await?;
            if n == 0 {
                break;
            }
        }
    } else {
        if length > MAX_BODY {
            anyhow::bail!("Content-Length {length}: larger than {MAX_BODY} bytes");
        }
        body.resize(length, 0);
        r.read_exact(&mut body).await?;
    }
    Ok(Some(HttpRequest {
        path: path.trim_start_matches('/').to_owned(),
        body,
        close,
    }))
}

fn response(status: u16, body: &Value) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn connection(stream: UnixStream, ctx: &api::Context) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let req = match tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut read)).await {
            Err(_) | Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(r))) => r,
            Ok(Err(e)) => {
                let out = response(400, &json!({ "Err": format!("dataplane: {e:#}") }));
                let _ = tokio::time::timeout(IO_TIMEOUT, write.write_all(&out)).await;
                return Err(e);
            }
        };
        let reply = dispatch(ctx, &req.path, &req.body).await;
        if reply.status != 200 {
            tracing::warn!(method = req.path, "docker: {}", reply.body["Err"]);
        } else {
            tracing::debug!(method = req.path, "docker: ok");
        }
        tokio::time::timeout(
            IO_TIMEOUT,
            write.write_all(&response(reply.status, &reply.body)),
        )
        .await??;
        if req.close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NID: &str = "1b2489c5caa3b215f0f7b0b428119ebe1658690ffd8d5ea0ea9ea1d7859d09e7";
    const EID: &str = "60694b4834a74e9f70d20fb205e98182bd8b8d3041de1fabbd71901d3ac4f848";

    fn parse(method: &str, body: &str) -> Result<Option<Call>, BadRequest> {
        Call::parse(method, body.as_bytes())
    }

    #[test]
    fn create_network_as_docker_20_10_sends_it() {
        let body = format!(
            r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{{"com.docker.network.bridge.enable_icc":"false"}},"com.docker.network.internal":true}},"IPv4Data":[{{"AddressSpace":"LocalDefault","Gateway":"10.99.0.1/24","Pool":"10.99.0.0/24"}}],"IPv6Data":[]}}"#
        );
        let Some(Call::CreateNetwork { network_id, args }) =
            parse("NetworkDriver.CreateNetwork", &body).unwrap()
        else {
            panic!("not CreateNetwork");
        };
        assert_eq!(network_id, NID);
        assert_eq!(args.name, "docker-1b2489c5caa3");
        assert_eq!(args.subnet.as_deref(), Some("10.99.0.0/24"));
        assert_eq!(args.gateway.as_deref(), Some("10.99.0.1"));
        assert!(args.internal);
        let req = args.parse().unwrap();
        assert!(!req.icc);
    }

    #[test]
    fn create_network_errors_name_the_field() {
        let cases = [
            (
                format!(r#"{{"NetworkID":"{NID}","IPv4Data":[]}}"#),
                "IPv4Data: 0 pools",
            ),
            (
                format!(r#"{{"NetworkID":"{NID}","IPv4Data":[{{"Pool":"10.0.0.0/33"}}]}}"#),
                "IPv4Data[0].Pool \"10.0.0.0/33\"",
            ),
            (
                format!(
                    r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.enable_ipv6":true}},"IPv4Data":[{{"Pool":"10.0.0.0/24"}}]}}"#
                ),
                "IPv6 is not supported",
            ),
            (
                r#"{"NetworkID":"xyz","IPv4Data":[{"Pool":"10.0.0.0/24"}]}"#.to_owned(),
                "NetworkID \"xyz\"",
            ),
            (
                format!(
                    r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.generic":{{"mtu":1}}}},"IPv4Data":[{{"Pool":"10.0.0.0/24"}}]}}"#
                ),
                "[mtu] 1: expected a string",
            ),
            ("{".to_owned(), "malformed JSON body"),
        ];
        for (body, needle) in cases {
            let err = parse("NetworkDriver.CreateNetwork", &body)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
            assert!(err.starts_with("NetworkDriver.CreateNetwork: "), "{err}");
        }
    }

    #[test]
    fn unknown_generic_option_is_refused_by_the_create_parser() {
        let body = format!(
            r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.generic":{{"foo":"bar"}}}},"IPv4Data":[{{"Pool":"10.0.0.0/24","Gateway":"10.0.0.1/24"}}]}}"#
        );
        let Some(Call::CreateNetwork { args, .. }) =
            parse("NetworkDriver.CreateNetwork", &body).unwrap()
        else {
            panic!("not CreateNetwork");
        };
        let err = args.parse().unwrap_err().to_string();
        assert!(err.contains("-o foo"), "{err}");
    }

    #[test]
    fn create_endpoint_address_and_mac() {
        let body = format!(
            r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","Interface":{{"Address":"10.99.0.2/24","AddressIPv6":"","MacAddress":""}},"Options":{{}}}}"#
        );
        assert_eq!(
            parse("NetworkDriver.CreateEndpoint", &body).unwrap(),
            Some(Call::CreateEndpoint {
                network_id: NID.into(),
                endpoint_id: EID.into(),
                ipv4: Ipv4Addr::new(10, 99, 0, 2),
                mac: None,
            })
        );
        let body = body.replace(r#""MacAddress":"""#, r#""MacAddress":"02:42:0a:63:00:09""#);
        let Some(Call::CreateEndpoint { mac, .. }) =
            parse("NetworkDriver.CreateEndpoint", &body).unwrap()
        else {
            panic!()
        };
        assert_eq!(mac, Some([2, 0x42, 10, 99, 0, 9]));
        let no_ipam =
            format!(r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","Interface":{{"Address":""}}}}"#);
        let err = parse("NetworkDriver.CreateEndpoint", &no_ipam)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Interface.Address \"\""), "{err}");
    }

    #[test]
    fn portmap_as_docker_sends_it() {
        let body = format!(
            r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","Options":{{"com.docker.network.endpoint.exposedports":[{{"Proto":6,"Port":80}}],"com.docker.network.portmap":[{{"Proto":6,"IP":"","Port":90,"HostIP":"127.0.0.1","HostPort":9090,"HostPortEnd":9095}},{{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}},{{"Proto":17,"IP":"","Port":53,"HostIP":"","HostPort":0,"HostPortEnd":0}},{{"Proto":6,"IP":"","Port":80,"HostIP":"::","HostPort":8080,"HostPortEnd":8080}}]}}}}"#
        );
        let Some(Call::ProgramExternalConnectivity { bindings, .. }) =
            parse("NetworkDriver.ProgramExternalConnectivity", &body).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            bindings,
            vec![
                DockerPortBinding {
                    proto: Proto::Tcp,
                    host_ip: Some(Ipv4Addr::LOCALHOST),
                    host_port: 9090,
                    host_port_end: 9095,
                    container_port: 90
                },
                DockerPortBinding {
                    proto: Proto::Tcp,
                    host_ip: None,
                    host_port: 8080,
                    host_port_end: 8080,
                    container_port: 80
                },
                DockerPortBinding {
                    proto: Proto::Udp,
                    host_ip: None,
                    host_port: 0,
                    host_port_end: 0,
                    container_port: 53
                },
            ]
        );
        let sctp = body.replace(r#""Proto":17"#, r#""Proto":132"#);
        let err = parse("NetworkDriver.ProgramExternalConnectivity", &sctp)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("com.docker.network.portmap][2].Proto 132"),
            "{err}"
        );
    }

    #[test]
    fn join_and_unknown_methods() {
        let body = format!(
            r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","SandboxKey":"/var/run/docker/netns/bfd9460b5ba6","Options":{{}}}}"#
        );
        assert_eq!(
            parse("NetworkDriver.Join", &body).unwrap(),
            Some(Call::Join {
                network_id: NID.into(),
                endpoint_id: EID.into(),
                sandbox: "/var/run/docker/netns/bfd9460b5ba6".into(),
            })
        );
        assert_eq!(parse("NetworkDriver.AllocateNetwork", "{}").unwrap(), None);
        assert_eq!(parse("Plugin.Activate", "").unwrap(), Some(Call::Activate));
        let err = parse("NetworkDriver.Leave", r#"{"NetworkID":"","EndpointID":""}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("NetworkID \"\""), "{err}");
    }

    #[tokio::test]
    async fn http_requests_keep_alive_and_chunked() {
        let raw = b"POST /NetworkDriver.GetCapabilities HTTP/1.1\r\nHost: \r\nContent-Length: 2\r\n\r\n{}POST /Plugin.Activate HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let a = read_request(&mut r).await.unwrap().unwrap();
        assert_eq!(a.path, "NetworkDriver.GetCapabilities");
        assert_eq!(a.body, b"{}");
        assert!(!a.close);
        let b = read_request(&mut r).await.unwrap().unwrap();
        assert_eq!(b.path, "Plugin.Activate");
        assert_eq!(b.body, b"{}");
        assert!(b.close);
        assert!(read_request(&mut r).await.unwrap().is_none());
        let mut bad = BufReader::new(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(read_request(&mut bad).await.is_err());
        let mut big = BufReader::new(&b"POST /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"[..]);
        let err = read_request(&mut big).await.unwrap_err().to_string();
        assert!(err.contains("Content-Length 99999999"), "{err}");
    }

    #[test]
    fn responses_carry_docker_content_type() {
        let r = String::from_utf8(response(404, &json!({"Err": "x"}))).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Type: application/vnd.docker.plugins.v1.2+json\r\n"));
        assert!(r.ends_with("\r\n\r\n{\"Err\":\"x\"}"));
    }
}
