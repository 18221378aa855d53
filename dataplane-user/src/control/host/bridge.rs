//! A network's Linux bridge on the real host: created (or adopted after a
//! restart) with its MAC pinned, its gateway addresses and up; and the
//! host namespace's IPv6 forwarding, which IPv6 networks need.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::sys::netlink::{Netlink, NetlinkError, VxlanSpec};

/// Creates the bridge of a network with its gateway address (if it has
/// one on the bridge), up, or checks
/// an existing one. `adopt` allows an existing bridge (the agent restoring
/// its own); otherwise an existing link of that name is someone else's.
///
/// The bridge's MAC is set explicitly (a random one for a new bridge, its
/// current one for an adopted bridge), as Docker does: a Linux bridge
/// whose MAC was never set takes the lowest of its ports' MACs, so it
/// would change as containers come and go, while containers' neighbour
/// caches and the fast path's routes (`nat::desired`) hold the gateway's
/// MAC.
pub async fn ensure_bridge(
    host: &Netlink,
    name: &str,
    gateway: Option<Ipv4Addr>,
    subnet: Option<Ipv4Net>,
    mtu: u32,
    adopt: bool,
) -> Result<Vec<String>, BridgeError> {
    let mut changed = Vec::new();
    let link = match host.link_by_name(name).await? {
        Some(l) if !adopt || l.kind.as_deref() != Some("bridge") => {
            return Err(BridgeError::InUse {
                bridge: name.to_owned(),
                kind: l.kind.unwrap_or_else(|| "unknown".to_owned()),
            })
        }
        Some(l) => {
            // Setting the MAC it has marks it as chosen; nothing changes.
            if let Some(mac) = l.mac {
                host.set_mac(l.index, mac).await?;
            }
            l
        }
        None => {
            changed.push(format!("created bridge {name}"));
            let link = host.create_bridge(name, Some(mtu)).await?;
            let pinned = async {
                host.set_mac(link.index, random_mac().map_err(BridgeError::Random)?)
                    .await
                    .map_err(BridgeError::from)
            }
            .await;
            if let Err(e) = pinned {
                let _ = host.delete_link(link.index).await;
                return Err(e);
            }
            link
        }
    };
    if let (Some(gateway), Some(subnet)) = (gateway, subnet) {
        let has_addr = host
            .addrs(Some(link.index))
            .await?
            .iter()
            .any(|(_, a, p)| *a == gateway && *p == subnet.prefix_len());
        if !has_addr {
            host.add_addr(link.index, gateway, subnet.prefix_len())
                .await?;
            changed.push(format!("added {gateway}/{} to {name}", subnet.prefix_len()));
        }
    }
    if !link.up {
        host.set_up(link.index).await?;
        changed.push(format!("set {name} up"));
    }
    Ok(changed)
}

/// Creates an overlay network's VXLAN device as a port of its bridge, up,
/// or (with `adopt`, the agent restoring its own) keeps the one there,
/// put back on the bridge and up. A device made with another VNI, port or
/// VTEP is replaced: its settings cannot change in place.
pub async fn ensure_vxlan(
    host: &Netlink,
    spec: &VxlanSpec,
    adopt: bool,
) -> Result<Vec<String>, BridgeError> {
    let name = &spec.name;
    match host.link_by_name(name).await? {
        Some(l) if !adopt || l.kind.as_deref() != Some("vxlan") => Err(BridgeError::InUse {
            bridge: name.to_owned(),
            kind: l.kind.unwrap_or_else(|| "unknown".to_owned()),
        }),
        Some(l) => {
            let mut changed = Vec::new();
            if l.master != Some(spec.master) {
                host.set_master(l.index, spec.master).await?;
                changed.push(format!("put {name} on its bridge"));
            }
            if !l.up {
                host.set_up(l.index).await?;
                changed.push(format!("set {name} up"));
            }
            Ok(changed)
        }
        None => {
            host.create_vxlan(spec).await?;
            Ok(vec![format!(
                "created vxlan {name} (VNI {}, local {}, port {})",
                spec.vni, spec.local, spec.port
            )])
        }
    }
}

/// The IPv6 side of a network's bridge (made by [`ensure_bridge`]): IPv6
/// on (a host may default new links to `disable_ipv6`), and the gateway
/// address, without duplicate address detection, unless it is there.
pub async fn ensure_bridge6(
    host: &Netlink,
    name: &str,
    gateway: Option<Ipv6Addr>,
    subnet: Ipv6Net,
) -> Result<Vec<String>, BridgeError> {
    let mut changed = Vec::new();
    let Some(link) = host.link_by_name(name).await? else {
        return Ok(changed);
    };
    if set_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0", |v| {
        v != "0"
    })? {
        changed.push(format!("net.ipv6.conf.{name}.disable_ipv6=0"));
    }
    let Some(gateway) = gateway else {
        return Ok(changed);
    };
    let prefix = subnet.prefix_len();
    let has_addr = host
        .addrs6(Some(link.index))
        .await?
        .iter()
        .any(|(_, a, p)| *a == gateway && *p == prefix);
    if !has_addr {
        host.add_addr6(link.index, gateway, prefix).await?;
        changed.push(format!("added {gateway}/{prefix} to {name}"));
    }
    Ok(changed)
}

/// IPv6 forwarding on in the namespace the agent runs in (the host), as
/// Docker turns it on for IPv6 networks. With forwarding on, the kernel
/// ignores router advertisements on links whose `accept_ra` is 1, so an
/// uplink that learned its default route from them would lose it when
/// the route expires: every interface carrying an IPv6 default route and
/// `accept_ra` 1 is set to 2 (accept them while forwarding).
pub async fn enable_forwarding6(host: &Netlink) -> Result<Vec<String>, BridgeError> {
    let mut changed = Vec::new();
    let mut uplinks: Vec<String> = Vec::new();
    for r in host.routes6().await?.iter().filter(|r| r.prefix_len == 0) {
        let Some(oif) = r.oif else { continue };
        if let Some(l) = host.link_by_index(oif).await? {
            if !uplinks.contains(&l.name) {
                uplinks.push(l.name);
            }
        }
    }
    for name in uplinks {
        if set_sysctl(&format!("net/ipv6/conf/{name}/accept_ra"), "2", |v| {
            v == "1"
        })? {
            changed.push(format!("net.ipv6.conf.{name}.accept_ra=2"));
        }
    }
    if set_sysctl("net/ipv6/conf/all/forwarding", "1", |v| v != "1")? {
        changed.push("net.ipv6.conf.all.forwarding=1".to_owned());
    }
    Ok(changed)
}

/// Writes `value` to /proc/sys/`key` when its current value passes
/// `change`; whether it wrote. A key that does not exist (IPv6 disabled
/// in the kernel, a link gone) is an error naming it.
fn set_sysctl(key: &str, value: &str, change: impl Fn(&str) -> bool) -> Result<bool, BridgeError> {
    let path = format!("/proc/sys/{key}");
    let err = |source| BridgeError::Sysctl {
        key: key.replace('/', "."),
        value: value.to_owned(),
        source,
    };
    let now = std::fs::read_to_string(&path).map_err(err)?;
    if !change(now.trim()) {
        return Ok(false);
    }
    std::fs::write(&path, value).map_err(err)?;
    Ok(true)
}

/// A random unicast, locally administered MAC (Docker's
/// `GenerateRandomMAC`).
fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    getrandom::fill(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("getting random bytes for the bridge's MAC")]
    Random(#[source] std::io::Error),
    #[error("bridge name {bridge} is in use by a link the dataplane does not own (kind {kind})")]
    InUse { bridge: String, kind: String },
    #[error("setting {key}={value} (is IPv6 enabled in the kernel?)")]
    Sysctl {
        key: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::random_mac;

    #[test]
    fn random_macs_are_unicast_locally_administered_and_differ() {
        let a = random_mac().unwrap();
        let b = random_mac().unwrap();
        for m in [a, b] {
            assert_eq!(m[0] & 0x01, 0, "unicast: {m:02x?}");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered: {m:02x?}");
        }
        assert_ne!(a, b);
    }
}
