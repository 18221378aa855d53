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
    let mut config = Map::new();
    if let Some(s) = net.subnet {
        config.insert("Subnet".into(), json!(s.to_string()));
    }
    if let Some(r) = net.ip_range {
        config.insert("IPRange".into(), json!(r.to_string()));
    }
    if let Some(g) = net.gateway {
        config.insert("Gateway".into(), json!(g.to_string()));
    }
    let configs: Vec<Value> = if config.is_empty() {
        Vec::new()
    } else {
        vec![Value::Object(config)]
    };

    let mut containers = Map::new();
    // Keyed by namespace, as Docker keys by container: an endpoint that
    // shares another's namespace (`container:`) is that same container.
    for ep in state
        .endpoints_of(&net.name)
        .filter(|e| !matches!(e.attachment, Attachment::Container { .. }))
    {
        let prefix = net.subnet.map(|s| s.prefix_len()).unwrap_or(32);
        containers.insert(
            ep.netns.display().to_string(),
            json!({
                "Name": ep.name,
                "EndpointID": ep.id,
                "MacAddress": ep.mac.map(|m| m.to_string()).unwrap_or_default(),
                "IPv4Address": ep.ipv4.map(|ip| format!("{ip}/{prefix}")).unwrap_or_default(),
                "IPv6Address": "",
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
        "Scope": "local",
        "Driver": net.driver.name(),
        "EnableIPv6": false,
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
