//! The libnetwork remote driver protocol as typed values: the JSON bodies
//! Docker sends, parsed once into a [`Call`] (refusals name the method, the
//! field and the value), and the JSON bodies the driver answers.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::control::{
    ipam,
    manager::{docker_network_name, DockerPortBinding},
    model::CreateArgs,
    ports::{PortMapping, Proto},
};

/// Docker's option keys.
const GENERIC: &str = "com.docker.network.generic";
const INTERNAL: &str = "com.docker.network.internal";
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
const ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";
const PORTMAP: &str = "com.docker.network.portmap";

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
        /// None on an IPv6-only network.
        ipv4: Option<Ipv4Addr>,
        /// Docker's `AddressIPv6`, on a network with IPv6.
        ipv6: Option<Ipv6Addr>,
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

// ---------------------------------------------------------------------------
// Requests.

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetworkBody {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: NetworkOptions,
    #[serde(rename = "IPv4Data", default)]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    ipv6_data: Option<Vec<IpamData>>,
}

/// The options of CreateNetwork this driver reads; the values stay JSON so
/// that a refusal can quote what Docker sent.
#[derive(Default, Deserialize)]
struct NetworkOptions {
    #[serde(rename = "com.docker.network.enable_ipv6", default)]
    enable_ipv6: Option<Value>,
    /// Docker 28's `--ipv4=false`.
    #[serde(rename = "com.docker.network.enable_ipv4", default)]
    enable_ipv4: Option<Value>,
    #[serde(rename = "com.docker.network.internal", default)]
    internal: Option<Value>,
    #[serde(rename = "com.docker.network.generic", default)]
    generic: Option<Value>,
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
    options: ExternalOptions,
}

#[derive(Default, Deserialize)]
struct ExternalOptions {
    /// JSON until parsed, so that a malformed one is refused naming it.
    #[serde(rename = "com.docker.network.portmap", default)]
    portmap: Option<Value>,
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
fn check_id(field: &str, id: &str) -> Result<String, String> {
    if id.len() >= 12 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(format!("{field} {id:?}: expected Docker's hexadecimal id"))
    }
}

fn body_of<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed JSON body: {e}"))
}

/// The network and endpoint ids of the calls that carry only those.
fn ids(body: &[u8]) -> Result<(String, String), String> {
    let b: Ids = body_of(body)?;
    Ok((
        check_id("NetworkID", &b.network_id)?,
        check_id("EndpointID", &b.endpoint_id)?,
    ))
}

impl Call {
    /// Parses one request: `method` is the URL path without its slash
    /// (`NetworkDriver.CreateNetwork`). `Ok(None)`: a method this driver
    /// does not implement.
    pub fn parse(method: &str, body: &[u8]) -> Result<Option<Call>, BadRequest> {
        Call::parse_body(method, body).map_err(|problem| BadRequest {
            method: method.to_owned(),
            problem,
        })
    }

    fn parse_body(method: &str, body: &[u8]) -> Result<Option<Call>, String> {
        let call = match method {
            "Plugin.Activate" => Call::Activate,
            "NetworkDriver.GetCapabilities" => Call::GetCapabilities,
            "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => Call::Discover,
            "NetworkDriver.CreateNetwork" => create_network(body)?,
            "NetworkDriver.DeleteNetwork" => {
                let b: Ids = body_of(body)?;
                Call::DeleteNetwork {
                    network_id: check_id("NetworkID", &b.network_id)?,
                }
            }
            "NetworkDriver.CreateEndpoint" => create_endpoint(body)?,
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
            "NetworkDriver.Join" => join(body)?,
            "NetworkDriver.Leave" => {
                let (network_id, endpoint_id) = ids(body)?;
                Call::Leave {
                    network_id,
                    endpoint_id,
                }
            }
            "NetworkDriver.ProgramExternalConnectivity" => {
                let b: ExternalBody = body_of(body)?;
                let bindings = match &b.options.portmap {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => parse_portmap(v)?,
                };
                Call::ProgramExternalConnectivity {
                    network_id: check_id("NetworkID", &b.network_id)?,
                    endpoint_id: check_id("EndpointID", &b.endpoint_id)?,
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

fn create_network(body: &[u8]) -> Result<Call, String> {
    let b: CreateNetworkBody = body_of(body)?;
    let network_id = check_id("NetworkID", &b.network_id)?;
    let ipv6 = flag(ENABLE_IPV6, b.options.enable_ipv6.as_ref(), false)?;
    let ipv4 = flag(ENABLE_IPV4, b.options.enable_ipv4.as_ref(), true)?;
    let mut subnet = Vec::new();
    let mut gateway = Vec::new();
    if ipv4 {
        let (s, g) = one_pool::<Ipv4Net>("IPv4Data", b.ipv4_data.unwrap_or_default())?;
        subnet.push(s);
        gateway.extend(g);
    }
    let pools6 = b.ipv6_data.unwrap_or_default();
    match (ipv6, pools6.is_empty()) {
        (true, _) => {
            // Docker's IPAM always hands a pool with --ipv6 (a ULA /64
            // of its own when none was given).
            let (s, g) = one_pool::<Ipv6Net>("IPv6Data", pools6)?;
            subnet.push(s);
            gateway.extend(g);
        }
        (false, true) => {}
        (false, false) => {
            return Err(format!(
                "IPv6Data: pools given but Options[{ENABLE_IPV6}] is not true"
            ))
        }
    }
    let internal = match b.options.internal {
        None | Some(Value::Null) => false,
        Some(Value::Bool(v)) => v,
        Some(v) => return Err(format!("Options[{INTERNAL}] {v}: expected true or false")),
    };
    Ok(Call::CreateNetwork {
        args: CreateArgs {
            name: docker_network_name(&network_id),
            driver: "bridge".into(),
            subnet,
            gateway,
            ip_range: Vec::new(),
            ipv6,
            ipv4: Some(ipv4),
            internal,
            mtu: None,
            options: generic_options(b.options.generic)?,
            labels: Vec::new(),
        },
        network_id,
    })
}

/// A boolean option of CreateNetwork (absent or null: `default`).
fn flag(key: &str, v: Option<&Value>, default: bool) -> Result<bool, String> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        // Docker sends some options as strings ("true").
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(v) => Err(format!("Options[{key}] {v}: expected true or false")),
    }
}

/// The one pool of `IPv4Data` or `IPv6Data` (Docker's default IPAM, one
/// `--subnet` per family): the subnet, and the gateway's address without
/// its prefix length.
fn one_pool<N>(field: &str, pools: Vec<IpamData>) -> Result<(String, Option<String>), String>
where
    N: std::str::FromStr + std::fmt::Display,
    N: Into<ipnet::IpNet>,
{
    let [pool] = pools.as_slice() else {
        return Err(format!(
            "{field}: {} pools; the dataplane takes exactly one (one --subnet per family, Docker's default IPAM)",
            pools.len()
        ));
    };
    let family = if field == "IPv6Data" { "IPv6" } else { "IPv4" };
    let subnet: N = pool
        .pool
        .parse()
        .map_err(|_| format!("{field}[0].Pool {:?}: not an {family} subnet", pool.pool))?;
    let gateway = if pool.gateway.is_empty() {
        None
    } else {
        let g: N = pool.gateway.parse().map_err(|_| {
            format!(
                "{field}[0].Gateway {:?}: not an {family} address/prefix",
                pool.gateway
            )
        })?;
        Some(g.into().addr().to_string())
    };
    Ok((subnet.to_string(), gateway))
}

/// `docker network create -o K=V` as Docker passes them: an object of
/// strings.
fn generic_options(generic: Option<Value>) -> Result<Vec<String>, String> {
    let mut options = Vec::new();
    match generic {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    return Err(format!(
                        "Options[{GENERIC}][{k}] {v}: expected a string (docker network create -o {k}=VALUE)"
                    ));
                };
                options.push(format!("{k}={v}"));
            }
        }
        Some(v) => {
            return Err(format!(
                "Options[{GENERIC}] {v}: expected an object of driver options"
            ))
        }
    }
    Ok(options)
}

fn create_endpoint(body: &[u8]) -> Result<Call, String> {
    let b: CreateEndpointBody = body_of(body)?;
    let network_id = check_id("NetworkID", &b.network_id)?;
    let endpoint_id = check_id("EndpointID", &b.endpoint_id)?;
    let iface = b.interface.ok_or_else(|| {
        "Interface: missing; the dataplane needs the address Docker's IPAM assigned".to_owned()
    })?;
    let ipv4 = if iface.address.is_empty() {
        None
    } else {
        let addr: Ipv4Net = iface.address.parse().map_err(|_| {
            format!(
                "Interface.Address {:?}: expected IPv4 address/prefix (the dataplane needs Docker's IPAM to assign one)",
                iface.address
            )
        })?;
        Some(addr.addr())
    };
    let ipv6 = if iface.address_ipv6.is_empty() {
        None
    } else {
        let addr: Ipv6Net = iface.address_ipv6.parse().map_err(|_| {
            format!(
                "Interface.AddressIPv6 {:?}: expected IPv6 address/prefix",
                iface.address_ipv6
            )
        })?;
        Some(addr.addr())
    };
    if ipv4.is_none() && ipv6.is_none() {
        return Err(
            "Interface.Address and Interface.AddressIPv6: both empty; the dataplane needs Docker's IPAM to assign one"
                .to_owned(),
        );
    }
    let mac = if iface.mac_address.is_empty() {
        None
    } else {
        Some(ipam::parse_mac(&iface.mac_address).map_err(|_| {
            format!(
                "Interface.MacAddress {:?}: not a MAC address",
                iface.mac_address
            )
        })?)
    };
    Ok(Call::CreateEndpoint {
        network_id,
        endpoint_id,
        ipv4,
        ipv6,
        mac,
    })
}

/// Whether `entries` binds `e`'s ports on every IPv4 address too.
fn has_v4_twin(entries: &[PortBindingBody], e: &PortBindingBody) -> bool {
    entries.iter().any(|o| {
        matches!(o.host_ip.as_str(), "" | "0.0.0.0")
            && (o.proto, o.port, o.host_port, o.host_port_end)
                == (e.proto, e.port, e.host_port, e.host_port_end)
    })
}

fn join(body: &[u8]) -> Result<Call, String> {
    let b: JoinBody = body_of(body)?;
    if !b.sandbox_key.starts_with('/') {
        return Err(format!(
            "SandboxKey {:?}: expected the path of a network namespace",
            b.sandbox_key
        ));
    }
    Ok(Call::Join {
        network_id: check_id("NetworkID", &b.network_id)?,
        endpoint_id: check_id("EndpointID", &b.endpoint_id)?,
        sandbox: PathBuf::from(b.sandbox_key),
    })
}

/// `com.docker.network.portmap`; anything malformed is an error naming the
/// entry. Docker sends `-p 8080:80` on a dual-stack network as two
/// bindings, on 0.0.0.0 and on `::`: one mapping on every address (of both
/// families) stands for the pair, so the `::` one is dropped when its
/// 0.0.0.0 twin is there.
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
                Ok(std::net::IpAddr::V4(ip)) => (!ip.is_unspecified()).then_some(ip.into()),
                Ok(std::net::IpAddr::V6(ip)) if ip.is_unspecified() && has_v4_twin(&entries, e) => {
                    continue
                }
                Ok(ip) => Some(ip),
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

// ---------------------------------------------------------------------------
// Answers.

/// The JSON body of an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Activate(Activated),
    Capabilities(Capabilities),
    /// `{}`: done, nothing to tell.
    Empty(Empty),
    CreateEndpoint(EndpointCreated),
    OperInfo(OperInfo),
    Join(Joined),
    /// `{"Err": "..."}`, with a status other than 200.
    Err(Refusal),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Activated {
    pub implements: Vec<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Capabilities {
    pub scope: &'static str,
    pub connectivity_scope: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Empty {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointCreated {
    /// None when Docker gave the MAC itself: Docker refuses an answer that
    /// repeats what it set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    pub mac_address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct OperInfo {
    pub value: OperInfoValue,
}

/// What `docker network inspect` shows of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OperInfoValue {
    #[serde(rename = "com.docker.network.endpoint.macaddress")]
    pub mac: Option<String>,
    #[serde(rename = "com.docker.network.portmap")]
    pub portmap: Vec<PortBinding>,
    pub network: String,
    pub host_ifname: String,
}

/// A mapping in libnetwork's `types.PortBinding` JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    pub proto: u8,
    #[serde(rename = "IP")]
    pub ip: String,
    pub port: u16,
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    pub host_port: u16,
    pub host_port_end: u16,
}

impl PortBinding {
    pub fn new(m: &PortMapping, container_ip: Option<Ipv4Addr>) -> PortBinding {
        PortBinding {
            proto: m.proto.number(),
            ip: container_ip.map(|i| i.to_string()).unwrap_or_default(),
            port: m.container_port,
            host_ip: m
                .host_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "0.0.0.0".into()),
            host_port: m.host_port,
            host_port_end: m.host_port,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Joined {
    pub interface_name: InterfaceName,
    pub disable_gateway_service: bool,
    /// None for internal networks: no default route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The IPv6 default route's gateway, on a network with IPv6.
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "Option::is_none")]
    pub gateway_ipv6: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    pub src_name: String,
    pub dst_prefix: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    #[serde(rename = "Err")]
    pub err: String,
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
        assert_eq!(args.subnet, ["10.99.0.0/24"]);
        assert_eq!(args.gateway, ["10.99.0.1"]);
        assert!(!args.ipv6);
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
                "IPv6Data: 0 pools",
            ),
            (
                format!(
                    r#"{{"NetworkID":"{NID}","IPv4Data":[{{"Pool":"10.0.0.0/24"}}],"IPv6Data":[{{"Pool":"fd00:1::/64"}}]}}"#
                ),
                "IPv6Data: pools given but Options[com.docker.network.enable_ipv6] is not true",
            ),
            (
                format!(
                    r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.enable_ipv6":true}},"IPv4Data":[{{"Pool":"10.0.0.0/24"}}],"IPv6Data":[{{"Pool":"10.1.0.0/24"}}]}}"#
                ),
                r#"IPv6Data[0].Pool "10.1.0.0/24": not an IPv6 subnet"#,
            ),
            (
                format!(
                    r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.enable_ipv6":"maybe"}},"IPv4Data":[{{"Pool":"10.0.0.0/24"}}]}}"#
                ),
                r#"Options[com.docker.network.enable_ipv6] "maybe": expected true or false"#,
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

    /// Docker 27's body for `docker network create --ipv6 -d dataplane`
    /// (its IPAM picked a ULA /64), and Docker 28's `--ipv4=false`.
    #[test]
    fn create_network_with_ipv6_as_docker_sends_it() {
        let body = format!(
            r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.enable_ipv4":true,"com.docker.network.enable_ipv6":true,"com.docker.network.generic":{{}}}},"IPv4Data":[{{"AddressSpace":"LocalDefault","Gateway":"172.20.0.1/16","Pool":"172.20.0.0/16"}}],"IPv6Data":[{{"AddressSpace":"LocalDefault","Gateway":"fd4d:6169:6c63:6f77::1/64","Pool":"fd4d:6169:6c63:6f77::/64"}}]}}"#
        );
        let Some(Call::CreateNetwork { args, .. }) =
            parse("NetworkDriver.CreateNetwork", &body).unwrap()
        else {
            panic!("not CreateNetwork");
        };
        assert_eq!(args.subnet, ["172.20.0.0/16", "fd4d:6169:6c63:6f77::/64"]);
        assert_eq!(args.gateway, ["172.20.0.1", "fd4d:6169:6c63:6f77::1"]);
        let req = args.parse().unwrap();
        assert!(req.enable_ipv6 && req.enable_ipv4);
        assert_eq!(
            req.subnet6.map(|s| s.to_string()).as_deref(),
            Some("fd4d:6169:6c63:6f77::/64")
        );
        assert_eq!(
            req.gateway6,
            Some("fd4d:6169:6c63:6f77::1".parse().unwrap())
        );
        let v6_only = format!(
            r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.enable_ipv4":false,"com.docker.network.enable_ipv6":true}},"IPv4Data":[],"IPv6Data":[{{"Pool":"2001:db8:5::/64","Gateway":"2001:db8:5::1/64"}}]}}"#
        );
        let Some(Call::CreateNetwork { args, .. }) =
            parse("NetworkDriver.CreateNetwork", &v6_only).unwrap()
        else {
            panic!("not CreateNetwork");
        };
        let req = args.parse().unwrap();
        assert!(req.enable_ipv6 && !req.enable_ipv4);
        assert_eq!(req.subnet, None);
    }

    #[test]
    fn create_endpoint_with_ipv6_as_docker_sends_it() {
        let body = format!(
            r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","Interface":{{"Address":"172.20.0.2/16","AddressIPv6":"fd4d:6169:6c63:6f77::2/64","MacAddress":""}},"Options":{{}}}}"#
        );
        assert_eq!(
            parse("NetworkDriver.CreateEndpoint", &body).unwrap(),
            Some(Call::CreateEndpoint {
                network_id: NID.into(),
                endpoint_id: EID.into(),
                ipv4: Some(Ipv4Addr::new(172, 20, 0, 2)),
                ipv6: Some("fd4d:6169:6c63:6f77::2".parse().unwrap()),
                mac: None,
            })
        );
        let v6_only = body.replace("172.20.0.2/16", "");
        let Some(Call::CreateEndpoint { ipv4, ipv6, .. }) =
            parse("NetworkDriver.CreateEndpoint", &v6_only).unwrap()
        else {
            panic!()
        };
        assert_eq!((ipv4, ipv6.is_some()), (None, true));
        let bad = body.replace("fd4d:6169:6c63:6f77::2/64", "nonsense");
        let err = parse("NetworkDriver.CreateEndpoint", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(r#"Interface.AddressIPv6 "nonsense": expected IPv6 address/prefix"#),
            "{err}"
        );
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
    fn a_gateway_mode_comes_through_the_generic_options() {
        let body = format!(
            r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.generic":{{"com.docker.network.bridge.gateway_mode_ipv4":"routed","com.docker.network.bridge.trusted_host_interfaces":"wg0"}}}},"IPv4Data":[{{"Pool":"10.0.0.0/24","Gateway":"10.0.0.1/24"}}]}}"#
        );
        let Some(Call::CreateNetwork { args, .. }) =
            parse("NetworkDriver.CreateNetwork", &body).unwrap()
        else {
            panic!("not CreateNetwork");
        };
        let req = args.parse().unwrap();
        assert_eq!(req.gateway_mode, crate::control::model::GatewayMode::Routed);
        assert_eq!(req.trusted_host_interfaces, ["wg0"]);
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
                ipv4: Some(Ipv4Addr::new(10, 99, 0, 2)),
                ipv6: None,
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
        assert!(
            err.contains("Interface.Address and Interface.AddressIPv6: both empty"),
            "{err}"
        );
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
                    host_ip: Some(Ipv4Addr::LOCALHOST.into()),
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
        // A binding on an IPv6 address (`-p [::1]:8081:80`), and `::`
        // without its 0.0.0.0 twin (an IPv6-only network), are kept.
        let v6 = body
            .replace(r#""HostIP":"127.0.0.1""#, r#""HostIP":"::1""#)
            .replace(
                r#""HostIP":"","HostPort":8080,"HostPortEnd":8080"#,
                r#""HostIP":"::","HostPort":8082,"HostPortEnd":8082"#,
            );
        let Some(Call::ProgramExternalConnectivity { bindings, .. }) =
            parse("NetworkDriver.ProgramExternalConnectivity", &v6).unwrap()
        else {
            panic!()
        };
        let hosts: Vec<_> = bindings.iter().map(|b| b.host_ip).collect();
        assert_eq!(
            hosts,
            [
                Some("::1".parse().unwrap()),
                Some("::".parse().unwrap()),
                None,
                Some("::".parse().unwrap())
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

    #[test]
    fn answers_serialise_as_docker_reads_them() {
        let json = |a: Answer| serde_json::to_value(a).unwrap();
        assert_eq!(
            json(Answer::Activate(Activated {
                implements: vec!["NetworkDriver"]
            })),
            serde_json::json!({"Implements": ["NetworkDriver"]})
        );
        assert_eq!(
            json(Answer::Capabilities(Capabilities {
                scope: "local",
                connectivity_scope: "local"
            })),
            serde_json::json!({"Scope": "local", "ConnectivityScope": "local"})
        );
        assert_eq!(json(Answer::Empty(Empty {})), serde_json::json!({}));
        assert_eq!(
            json(Answer::CreateEndpoint(EndpointCreated { interface: None })),
            serde_json::json!({})
        );
        assert_eq!(
            json(Answer::CreateEndpoint(EndpointCreated {
                interface: Some(EndpointInterface {
                    mac_address: Some("02:42:0a:63:00:02".into())
                })
            })),
            serde_json::json!({"Interface": {"MacAddress": "02:42:0a:63:00:02"}})
        );
        let mapping = PortMapping {
            host_ip: None,
            host_port: 8080,
            container_port: 80,
            proto: Proto::Tcp,
            stats_index: 0,
            stats_index6: None,
        };
        assert_eq!(
            json(Answer::OperInfo(OperInfo {
                value: OperInfoValue {
                    mac: Some("02:42:0a:63:00:02".into()),
                    portmap: vec![PortBinding::new(
                        &mapping,
                        Some(Ipv4Addr::new(10, 99, 0, 2))
                    )],
                    network: "docker-1b2489c5caa3".into(),
                    host_ifname: "dp1234".into(),
                }
            })),
            serde_json::json!({"Value": {
                "com.docker.network.endpoint.macaddress": "02:42:0a:63:00:02",
                "com.docker.network.portmap": [{"Proto": 6, "IP": "10.99.0.2", "Port": 80,
                    "HostIP": "0.0.0.0", "HostPort": 8080, "HostPortEnd": 8080}],
                "network": "docker-1b2489c5caa3",
                "host_ifname": "dp1234",
            }})
        );
        let join = |gateway: Option<&str>| {
            json(Answer::Join(Joined {
                interface_name: InterfaceName {
                    src_name: "dpv1".into(),
                    dst_prefix: "eth",
                },
                disable_gateway_service: false,
                gateway: gateway.map(str::to_owned),
                gateway_ipv6: None,
            }))
        };
        assert_eq!(
            join(Some("10.99.0.1")),
            serde_json::json!({"InterfaceName": {"SrcName": "dpv1", "DstPrefix": "eth"},
                "DisableGatewayService": false, "Gateway": "10.99.0.1"})
        );
        assert_eq!(
            join(None),
            serde_json::json!({"InterfaceName": {"SrcName": "dpv1", "DstPrefix": "eth"},
                "DisableGatewayService": false})
        );
        let dual = json(Answer::Join(Joined {
            interface_name: InterfaceName {
                src_name: "dpv1".into(),
                dst_prefix: "eth",
            },
            disable_gateway_service: false,
            gateway: Some("10.99.0.1".into()),
            gateway_ipv6: Some("fd00:99::1".into()),
        }));
        assert_eq!(dual["GatewayIPv6"], "fd00:99::1");
    }
}
