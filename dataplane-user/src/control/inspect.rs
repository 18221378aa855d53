//! Rendering networks the way `docker network inspect` and `docker network
//! ls` do, so scripts written for Docker read ours.

use serde_json::{json, Map, Value};

use super::{
    driver::{self, NetworkDriver as _},
    model::{Attachment, Network},
};
use crate::control::state::State;

/// One element of `docker network inspect`'s array.
pub fn network_json(state: &State, net: &Network) -> Value {
    // One IPAM entry per family, as Docker has it.
    let mut configs = Vec::new();
    if let Some(s) = net.subnet {
        configs.push(ipam_entry(
            s.to_string(),
            net.ip_range.map(|r| r.to_string()),
            net.gateway.map(|g| g.to_string()),
        ));
    }
    if let Some(s) = net.subnet6 {
        configs.push(ipam_entry(
            s.to_string(),
            net.ip_range6.map(|r| r.to_string()),
            net.gateway6.map(|g| g.to_string()),
        ));
    }

    let mut containers = Map::new();
    // Keyed by namespace, as Docker keys by container: an endpoint that
    // shares another's namespace (`container:`) is that same container.
    for ep in state
        .endpoints_of(&net.name)
        .filter(|e| !matches!(e.attachment, Attachment::Container { .. }))
    {
        let prefix = net.subnet.map(|s| s.prefix_len()).unwrap_or(32);
        let prefix6 = net.subnet6.map(|s| s.prefix_len()).unwrap_or(128);
        containers.insert(
            ep.netns.display().to_string(),
            json!({
                "Name": ep.name,
                "EndpointID": ep.id,
                "MacAddress": ep.mac.map(|m| m.to_string()).unwrap_or_default(),
                "IPv4Address": ep.ipv4.map(|ip| format!("{ip}/{prefix}")).unwrap_or_default(),
                "IPv6Address": ep.ipv6.map(|ip| format!("{ip}/{prefix6}")).unwrap_or_default(),
                // Docker shows these in `docker inspect CONTAINER`
                // (NetworkSettings.Networks.NET.Aliases).
                "Aliases": ep.aliases,
            }),
        );
    }

    json!({
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        // Docker's scope: an overlay network is the cluster's.
        "Scope": if net.driver.kind() == super::model::DriverKind::Overlay { "global" } else { "local" },
        "Driver": net.driver.name(),
        "EnableIPv4": net.enable_ipv4,
        "EnableIPv6": net.enable_ipv6,
        "IPAM": {
            "Driver": "default",
            "Options": null,
            "Config": configs,
        },
        "Internal": net.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": containers,
        "Options": options(net),
        "Labels": net.labels,
    })
}

/// One `IPAM.Config` entry: Docker leaves out what is not set.
fn ipam_entry(subnet: String, range: Option<String>, gateway: Option<String>) -> Value {
    let mut config = Map::new();
    config.insert("Subnet".into(), json!(subnet));
    if let Some(r) = range {
        config.insert("IPRange".into(), json!(r));
    }
    if let Some(g) = gateway {
        config.insert("Gateway".into(), json!(g));
    }
    Value::Object(config)
}

/// The driver options in Docker's names.
fn options(net: &Network) -> Value {
    Value::Object(driver::for_network(net).docker_options(net))
}

/// `docker network ls` rows (short id, name, driver, scope) from
/// [`network_json`] values.
pub fn ls_table(networks: &[Value]) -> String {
    let mut out = format!(
        "{:<14}{:<20}{:<10}{}\n",
        "NETWORK ID", "NAME", "DRIVER", "SCOPE"
    );
    let mut rows: Vec<(&str, &str, &str, &str)> = networks
        .iter()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or_default();
            (s("Name"), s("Id"), s("Driver"), s("Scope"))
        })
        .collect();
    rows.sort();
    for (name, id, driver, scope) in rows {
        out.push_str(&format!(
            "{:<14}{:<20}{:<10}{}\n",
            &id[..12.min(id.len())],
            name,
            driver,
            scope
        ));
    }
    out
}
