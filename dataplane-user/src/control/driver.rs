//! Kernel set-up per driver, chosen in one place ([`setup_endpoint`],
//! [`teardown_endpoint`]): a veth pair on a bridge, a macvlan child of a
//! parent link, loopback only (`none`), or nothing (`host`, `container:`).
//!
//! Set-up that fails half-way removes what it created; teardown is best
//! effort and returns every error instead of stopping at the first.

use std::{net::Ipv4Addr, path::Path};

use ipnet::Ipv4Net;

use super::model::{Attachment, MacvlanMode, Network};
use crate::sys::netlink::{self, Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("bridge {bridge} of network {network} does not exist (run the agent to restore it)")]
    BridgeMissing { network: String, bridge: String },
    #[error("macvlan parent {parent} of network {network} does not exist in the host namespace")]
    ParentMissing { network: String, parent: String },
    #[error("{ifname} moved into {netns} but is not found there")]
    Vanished { ifname: String, netns: String },
    #[error("{what} (and undoing it failed: {undo})")]
    Rollback {
        what: Box<DriverError>,
        undo: String,
    },
}

/// What the kernel side of one endpoint needs.
pub struct EndpointPlan<'a> {
    pub network: &'a Network,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub ipv4: Ipv4Addr,
    pub mac: [u8; 6],
    /// Random suffix for host-side names (veth<hex>).
    pub suffix: &'a str,
}

fn to_nl_mode(mode: MacvlanMode) -> netlink::MacvlanMode {
    match mode {
        MacvlanMode::Bridge => netlink::MacvlanMode::Bridge,
        MacvlanMode::Private => netlink::MacvlanMode::Private,
        MacvlanMode::Vepa => netlink::MacvlanMode::Vepa,
        MacvlanMode::Passthru => netlink::MacvlanMode::Passthru,
    }
}

/// Creates the bridge of a network with its gateway address, up, or checks
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
    gateway: Ipv4Addr,
    subnet: Ipv4Net,
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
    if !link.up {
        host.set_up(link.index).await?;
        changed.push(format!("set {name} up"));
    }
    Ok(changed)
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
}

/// Creates the endpoint's links and returns its attachment record.
pub async fn setup_endpoint(
    host: &Netlink,
    plan: &EndpointPlan<'_>,
) -> Result<Attachment, DriverError> {
    let net = plan.network;
    match net.driver {
        super::model::DriverKind::Bridge => {
            let bridge = net.bridge.clone().unwrap_or_default();
            let br =
                host.link_by_name(&bridge)
                    .await?
                    .ok_or_else(|| DriverError::BridgeMissing {
                        network: net.name.clone(),
                        bridge: bridge.clone(),
                    })?;
            let host_ifname = format!("veth{}", plan.suffix);
            // The container's end is born in its namespace, named and
            // addressed: fewer round trips, and no move between namespaces.
            let host_end = host
                .create_veth_into(
                    &host_ifname,
                    br.index,
                    plan.ifname,
                    plan.netns,
                    plan.mac,
                    net.mtu,
                )
                .await?;
            let result = configure_inside(plan, plan.ifname).await;
            undo_on_error(host, host_end.index, result).await?;
            Ok(Attachment::Veth { host_ifname })
        }
        super::model::DriverKind::Macvlan => {
            let cfg = net
                .macvlan
                .clone()
                .unwrap_or_else(|| super::model::MacvlanConfig {
                    parent: String::new(),
                    mode: MacvlanMode::Bridge,
                });
            let parent = host.link_by_name(&cfg.parent).await?.ok_or_else(|| {
                DriverError::ParentMissing {
                    network: net.name.clone(),
                    parent: cfg.parent.clone(),
                }
            })?;
            let tmp = format!("mvtmp{}", plan.suffix);
            let link = host
                .create_macvlan(&tmp, parent.index, to_nl_mode(cfg.mode), Some(net.mtu))
                .await?;
            let result = async {
                host.move_to_netns(link.index, plan.netns).await?;
                configure_inside(plan, &tmp).await
            }
            .await;
            if result.is_err() {
                // Once moved, the child lives in the namespace; remove it there.
                if let Ok(ns) = Netlink::connect(Some(plan.netns)).await {
                    for name in [tmp.as_str(), plan.ifname] {
                        if let Ok(Some(l)) = ns.link_by_name(name).await {
                            let _ = ns.delete_link(l.index).await;
                        }
                    }
                }
            }
            undo_on_error(host, link.index, result).await?;
            Ok(Attachment::Macvlan)
        }
        super::model::DriverKind::Null => {
            let ns = Netlink::connect(Some(plan.netns)).await?;
            loopback_up(&ns).await?;
            Ok(Attachment::Loopback)
        }
        super::model::DriverKind::Host => Ok(Attachment::Host),
    }
}

/// Deletes `index` in the host namespace if `result` failed; not-found means
/// the link already went with its namespace.
async fn undo_on_error(
    host: &Netlink,
    index: u32,
    result: Result<(), DriverError>,
) -> Result<(), DriverError> {
    let Err(what) = result else { return Ok(()) };
    match host.delete_link(index).await {
        Ok(()) => Err(what),
        Err(e) if e.is_not_found() => Err(what),
        Err(e) => Err(DriverError::Rollback {
            what: Box::new(what),
            undo: e.to_string(),
        }),
    }
}

async fn loopback_up(ns: &Netlink) -> Result<(), DriverError> {
    if let Some(lo) = ns.link_by_name("lo").await? {
        if !lo.up {
            ns.set_up(lo.index).await?;
        }
    }
    Ok(())
}

/// Inside the namespace: the final name, MAC and MTU (unless the link was
/// made with them: `tmp_name` is already the final name), address, up,
/// loopback up, and a default route via the gateway unless the namespace
/// has one already (a second network does not take the default route from
/// the first, as in Docker) or the network is internal (no way out).
async fn configure_inside(plan: &EndpointPlan<'_>, tmp_name: &str) -> Result<(), DriverError> {
    let ns = Netlink::connect(Some(plan.netns)).await?;
    let link = ns
        .link_by_name(tmp_name)
        .await?
        .ok_or_else(|| DriverError::Vanished {
            ifname: tmp_name.to_owned(),
            netns: plan.netns.display().to_string(),
        })?;
    if tmp_name != plan.ifname {
        ns.rename(link.index, plan.ifname).await?;
        ns.set_mac(link.index, plan.mac).await?;
        ns.set_mtu(link.index, plan.network.mtu).await?;
    }
    let prefix = plan.network.subnet.map(|s| s.prefix_len()).unwrap_or(32);
    ns.add_addr(link.index, plan.ipv4, prefix).await?;
    ns.set_up(link.index).await?;
    loopback_up(&ns).await?;
    if let Some(gw) = plan.network.gateway {
        let has_default = ns.routes().await?.iter().any(|r| r.prefix_len == 0);
        if !plan.network.internal && !has_default {
            ns.add_route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), Some(link.index))
                .await?;
        }
    }
    Ok(())
}

/// Removes an endpoint's links. Best effort: every failure is returned, and
/// links that are already gone (their namespace was deleted) are not errors.
pub async fn teardown_endpoint(
    host: &Netlink,
    netns: &Path,
    ifname: Option<&str>,
    attachment: &Attachment,
) -> Vec<String> {
    let mut errors = Vec::new();
    match attachment {
        Attachment::Veth { host_ifname } => {
            delete_in_netns(netns, ifname, &mut errors).await;
            match host.link_by_name(host_ifname).await {
                Ok(Some(l)) => match host.delete_link(l.index).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => errors.push(e.to_string()),
                },
                Ok(None) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        Attachment::Macvlan => delete_in_netns(netns, ifname, &mut errors).await,
        Attachment::Loopback | Attachment::Host | Attachment::Container { .. } => {}
    }
    errors
}

async fn delete_in_netns(netns: &Path, ifname: Option<&str>, errors: &mut Vec<String>) {
    let Some(ifname) = ifname else { return };
    if !netns.exists() {
        return;
    }
    let ns = match Netlink::connect(Some(netns)).await {
        Ok(ns) => ns,
        Err(e) => {
            errors.push(e.to_string());
            return;
        }
    };
    match ns.link_by_name(ifname).await {
        Ok(Some(l)) => match ns.delete_link(l.index).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => errors.push(e.to_string()),
        },
        Ok(None) => {}
        Err(e) => errors.push(e.to_string()),
    }
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
