//! CNI results: the ADD result built from what the agent set up, extending
//! a chained plugin's `prevResult` (kept whole, so fields of other plugins
//! and newer spec versions pass through), and what CHECK reads back from
//! `prevResult`.

use std::net::Ipv4Addr;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{code, config::version_tuple, AddResult, CniError};

/// The ADD result: `prev` (or an empty result) with this plugin's host and
/// container interfaces, address, default route and `dns` appended.
pub fn add_result(
    version: &str,
    prev: Option<&Value>,
    dns: Option<&Value>,
    added: &AddResult,
) -> Value {
    let mut out = match prev {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    out.insert("cniVersion".into(), Value::String(version.to_owned()));
    let mut interfaces = take_array(&mut out, "interfaces");
    if let Some(host) = &added.host_ifname {
        interfaces.push(to_value(Interface {
            name: host.clone(),
            mac: added.host_mac.clone(),
            sandbox: None,
        }));
    }
    let index = interfaces.len();
    interfaces.push(to_value(Interface {
        name: added.ifname.clone(),
        mac: Some(added.mac.clone()),
        sandbox: Some(added.netns.clone()),
    }));
    let mut ips = take_array(&mut out, "ips");
    // 0.3.x and 0.4.0 results name the address family.
    let old = version_tuple(version) < version_tuple("1.0.0");
    if !added.ipv4.is_unspecified() {
        ips.push(to_value(IpConfig {
            address: format!("{}/{}", added.ipv4, added.prefix_len),
            interface: index,
            gateway: added.gateway.map(|gw| gw.to_string()),
            version: old.then_some("4"),
        }));
    }
    if let Some((ip, len)) = added.ipv6 {
        ips.push(to_value(IpConfig {
            address: format!("{ip}/{len}"),
            interface: index,
            gateway: added.gateway6.map(|gw| gw.to_string()),
            version: old.then_some("6"),
        }));
    }
    let mut routes = take_array(&mut out, "routes");
    if let (true, Some(gw)) = (added.default_route, added.gateway) {
        routes.push(to_value(Route {
            dst: "0.0.0.0/0".into(),
            gw: gw.to_string(),
        }));
    }
    if let (true, Some(gw)) = (added.default_route6, added.gateway6) {
        routes.push(to_value(Route {
            dst: "::/0".into(),
            gw: gw.to_string(),
        }));
    }
    out.insert("interfaces".into(), Value::Array(interfaces));
    out.insert("ips".into(), Value::Array(ips));
    if !routes.is_empty() {
        out.insert("routes".into(), Value::Array(routes));
    }
    // A DNS setting of an earlier plugin wins; then the configuration's;
    // then the agent's responder on the gateway (docs/dns.md).
    if !out.contains_key("dns") {
        if let Some(d) = dns {
            out.insert("dns".into(), d.clone());
        } else if let Some(server) = added.dns_server {
            out.insert(
                "dns".into(),
                serde_json::json!({
                    "nameservers": [server.to_string()],
                    "search": [crate::control::names_dns::DOMAIN],
                }),
            );
        }
    }
    Value::Object(out)
}

/// The spec's `interfaces` entry.
#[derive(Serialize)]
struct Interface {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<String>,
}

/// The spec's `ips` entry.
#[derive(Serialize)]
struct IpConfig {
    address: String,
    interface: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
}

/// The spec's `routes` entry.
#[derive(Serialize)]
struct Route {
    dst: String,
    gw: String,
}

/// Entries of the result, which holds other plugins' entries as JSON too.
fn to_value(entry: impl Serialize) -> Value {
    // Strings and numbers only: serialising cannot fail.
    serde_json::to_value(entry).unwrap_or_default()
}

fn take_array(m: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match m.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// What an earlier ADD reported for one interface (CHECK compares it with
/// the live namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    pub address: Option<String>,
    pub routes: Vec<(String, Option<Ipv4Addr>)>,
}

/// Finds `ifname` (with a sandbox) in `prev` and the address and routes
/// reported with it. A result without that interface is not ours: code 7.
pub fn reported(prev: &Value, ifname: &str) -> Result<Reported, CniError> {
    let bad = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
    let interfaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let index = interfaces
        .iter()
        .position(|i| {
            i.get("name").and_then(Value::as_str) == Some(ifname) && i.get("sandbox").is_some()
        })
        .ok_or_else(|| {
            bad(format!(
                "prevResult: no interface {ifname} in a sandbox (not the result of this plugin's ADD)"
            ))
        })?;
    let mut out = Reported::default();
    let mut gateways = Vec::new();
    for ip in prev
        .get("ips")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let on_ours = ip
            .get("interface")
            .and_then(Value::as_u64)
            .is_some_and(|i| i == index as u64);
        let Some(addr) = ip.get("address").and_then(Value::as_str) else {
            return Err(bad(format!("prevResult.ips {ip}: no address")));
        };
        if on_ours && addr.contains('.') {
            out.address = Some(addr.to_owned());
            if let Some(gw) = ip.get("gateway").and_then(Value::as_str) {
                gateways.push(gw.parse::<Ipv4Addr>().map_err(|_| {
                    bad(format!(
                        "prevResult.ips gateway {gw:?}: not an IPv4 address"
                    ))
                })?);
            }
        }
    }
    for r in prev
        .get("routes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let dst = r
            .get("dst")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("prevResult.routes {r}: no dst")))?;
        // IPv6 routes (ours included) are not compared.
        if !dst.contains('.') {
            continue;
        }
        let gw = match r.get("gw").and_then(Value::as_str) {
            Some(g) => Some(
                g.parse::<Ipv4Addr>()
                    .map_err(|_| bad(format!("prevResult.routes gw {g:?}: not an IPv4 address")))?,
            ),
            None => None,
        };
        // Ours: IPv4 routes through our gateway (other plugins' routes are
        // theirs to check).
        if dst.contains('.') && gw.is_some_and(|g| gateways.contains(&g)) {
            out.routes.push((dst.to_owned(), gw));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn added() -> AddResult {
        AddResult {
            endpoint: "abc-eth0".into(),
            network: "dpnet".into(),
            ifname: "eth0".into(),
            mac: "02:42:0a:4d:00:02".into(),
            ipv4: Ipv4Addr::new(10, 77, 0, 2),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
            default_route: true,
            ipv6: None,
            gateway6: None,
            default_route6: false,
            host_ifname: Some("veth1234567".into()),
            host_mac: Some("aa:bb:cc:dd:ee:ff".into()),
            netns: "/run/netns/c1".into(),
            dns_server: None,
        }
    }

    #[test]
    fn a_dual_stack_result_has_both_addresses_and_default_routes() {
        let mut a = added();
        a.ipv6 = Some(("fd00:77::2".parse().unwrap(), 64));
        a.gateway6 = Some("fd00:77::1".parse().unwrap());
        a.default_route6 = true;
        let r = add_result("1.0.0", None, None, &a);
        assert_eq!(
            r["ips"],
            json!([
                {"address": "10.77.0.2/24", "gateway": "10.77.0.1", "interface": 1},
                {"address": "fd00:77::2/64", "gateway": "fd00:77::1", "interface": 1}
            ])
        );
        assert_eq!(
            r["routes"],
            json!([
                {"dst": "0.0.0.0/0", "gw": "10.77.0.1"},
                {"dst": "::/0", "gw": "fd00:77::1"}
            ])
        );
        assert_eq!(
            add_result("0.4.0", None, None, &a)["ips"][1]["version"],
            "6"
        );
        // IPv6 only: no IPv4 entry at all.
        a.ipv4 = Ipv4Addr::UNSPECIFIED;
        a.gateway = None;
        let r = add_result("1.0.0", None, None, &a);
        assert_eq!(r["ips"].as_array().map(Vec::len), Some(1));
        assert_eq!(r["routes"], json!([{"dst": "::/0", "gw": "fd00:77::1"}]));
        // CHECK reads such a result back: the IPv6 route is skipped.
        let rep = reported(&add_result("1.0.0", None, None, &added_dual()), "eth0").unwrap();
        assert_eq!(rep.address.as_deref(), Some("10.77.0.2/24"));
        assert_eq!(rep.routes.len(), 1);
    }

    fn added_dual() -> AddResult {
        let mut a = added();
        a.ipv6 = Some(("fd00:77::2".parse().unwrap(), 64));
        a.gateway6 = Some("fd00:77::1".parse().unwrap());
        a.default_route6 = true;
        a
    }

    #[test]
    fn a_1_0_0_result_has_the_spec_fields() {
        let r = add_result(
            "1.0.0",
            None,
            Some(&json!({"nameservers": ["10.77.0.1"]})),
            &added(),
        );
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "veth1234567", "mac": "aa:bb:cc:dd:ee:ff"},
                    {"name": "eth0", "mac": "02:42:0a:4d:00:02", "sandbox": "/run/netns/c1"}
                ],
                "ips": [{"address": "10.77.0.2/24", "gateway": "10.77.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}],
                "dns": {"nameservers": ["10.77.0.1"]}
            })
        );
        // 0.4.0 names the family; no default route means no routes.
        let mut a = added();
        a.default_route = false;
        let r = add_result("0.4.0", None, None, &a);
        assert_eq!(r["ips"][0]["version"], "4");
        assert!(r.get("routes").is_none() && r.get("dns").is_none());
    }

    #[test]
    fn a_previous_result_is_extended_not_replaced() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "sandbox": "/run/netns/c1"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["1.1.1.1"]},
            "custom": {"kept": true}
        });
        let r = add_result(
            "1.0.0",
            Some(&prev),
            Some(&json!({"nameservers": ["9.9.9.9"]})),
            &added(),
        );
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["interfaces"][0]["name"], "lo");
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["ips"][1]["address"], "10.77.0.2/24");
        assert_eq!(r["dns"]["nameservers"][0], "1.1.1.1");
        assert_eq!(r["custom"]["kept"], true);
        // CHECK reads our part back out.
        let rep = reported(&r, "eth0").unwrap();
        assert_eq!(rep.address.as_deref(), Some("10.77.0.2/24"));
        assert_eq!(
            rep.routes,
            vec![("0.0.0.0/0".to_owned(), Some(Ipv4Addr::new(10, 77, 0, 1)))]
        );
        let e = reported(&r, "eth9").unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("no interface eth9"), "{e}");
    }
}
