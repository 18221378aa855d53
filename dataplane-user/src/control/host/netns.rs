//! The kernel side of endpoints on the real host ([`Netlink`]): a veth
//! pair born in the container's namespace, a macvlan child moved there,
//! loopback, and their teardown. The drivers reach these through
//! [`Host`](crate::control::host::Host); set-up that fails half-way removes
//! what it created.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use super::{DriverError, EndpointPlan};
use crate::{
    control::model::{Attachment, MacvlanConfig, MacvlanMode},
    sys::netlink::{self, Netlink},
};

/// A veth pair: `host_ifname` a port of the bridge at `bridge`, the other
/// end born in the namespace, named and addressed (fewer round trips, and
/// no move between namespaces).
pub async fn attach_veth(
    host: &Netlink,
    plan: &EndpointPlan<'_>,
    host_ifname: &str,
    bridge: u32,
) -> Result<(), DriverError> {
    let host_end = host
        .create_veth_into(
            host_ifname,
            bridge,
            plan.ifname,
            plan.netns,
            plan.mac,
            plan.network.mtu,
        )
        .await?;
    let result = async {
        // The host end comes up (and the link gets its carrier) only after
        // the programs are attached and the namespace is configured.
        plan.programs.run()?;
        configure_inside(plan, plan.ifname).await?;
        host.set_up(host_end.index).await?;
        Ok(())
    }
    .await;
    undo_on_error(host, host_end.index, result).await
}

/// A macvlan child of the link at `parent`, made under a temporary name in
/// the host namespace, then moved into the container's and configured.
pub async fn attach_macvlan(
    host: &Netlink,
    plan: &EndpointPlan<'_>,
    parent: u32,
    cfg: &MacvlanConfig,
) -> Result<(), DriverError> {
    let tmp = format!("mvtmp{}", plan.suffix);
    let link = host
        .create_macvlan(&tmp, parent, to_nl_mode(cfg.mode), Some(plan.network.mtu))
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
    undo_on_error(host, link.index, result).await
}

/// Loopback up in the namespace at `netns`.
pub async fn loopback_up(netns: &Path) -> Result<(), DriverError> {
    let ns = Netlink::connect(Some(netns)).await?;
    lo_up(&ns).await
}

fn to_nl_mode(mode: MacvlanMode) -> netlink::MacvlanMode {
    match mode {
        MacvlanMode::Bridge => netlink::MacvlanMode::Bridge,
        MacvlanMode::Private => netlink::MacvlanMode::Private,
        MacvlanMode::Vepa => netlink::MacvlanMode::Vepa,
        MacvlanMode::Passthru => netlink::MacvlanMode::Passthru,
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

async fn lo_up(ns: &Netlink) -> Result<(), DriverError> {
    if let Some(lo) = ns.link_by_name("lo").await? {
        if !lo.up {
            ns.set_up(lo.index).await?;
        }
    }
    Ok(())
}

/// Inside the namespace: the final name, MAC and MTU (unless the link was
/// made with them: `tmp_name` is already the final name), address, up,
/// loopback up, and a default route via the gateway (per family) unless the namespace
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
    let net = plan.network;
    if let Some(ip) = plan.ipv4 {
        let prefix = net.subnet.map(|s| s.prefix_len()).unwrap_or(32);
        ns.add_addr(link.index, ip, prefix).await?;
    }
    if let Some(ip) = plan.ipv6 {
        ipv6_on_inside(plan.netns, plan.ifname).await?;
        // IFA_F_NODAD: usable at once, never tentative (see add_addr6).
        let prefix = net.subnet6.map(|s| s.prefix_len()).unwrap_or(128);
        ns.add_addr6(link.index, ip, prefix).await?;
    }
    ns.set_up(link.index).await?;
    lo_up(&ns).await?;
    if net.internal {
        return Ok(());
    }
    if let (Some(gw), Some(_)) = (net.gateway, plan.ipv4) {
        let has_default = ns.routes().await?.iter().any(|r| r.prefix_len == 0);
        if !has_default {
            ns.add_route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), Some(link.index))
                .await?;
        }
    }
    if let (Some(gw), Some(_)) = (net.gateway6, plan.ipv6) {
        let has_default = ns.routes6().await?.iter().any(|r| r.prefix_len == 0);
        if !has_default {
            ns.add_route6(Ipv6Addr::UNSPECIFIED, 0, Some(gw), Some(link.index))
                .await?;
        }
    }
    Ok(())
}

/// IPv6 on for `ifname` inside the namespace at `netns`, with duplicate
/// address detection off: a namespace may make new links with
/// `disable_ipv6` (Docker turns it on in containers of IPv4-only
/// networks), and DAD would hold the link-local address tentative. The
/// sysctls are the namespace's, so they are written from a thread of its
/// own that entered it (never a runtime thread).
async fn ipv6_on_inside(netns: &Path, ifname: &str) -> Result<(), DriverError> {
    let (netns, ifname) = (netns.to_owned(), ifname.to_owned());
    let shown = netns.display().to_string();
    let join = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> Result<(), (String, std::io::Error)> {
            crate::sys::netns::enter(&netns).map_err(|e| ("setns".to_owned(), e))?;
            for (key, value) in [("disable_ipv6", "0"), ("accept_dad", "0")] {
                let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{key}");
                std::fs::write(&path, value)
                    .map_err(|e| (format!("net.ipv6.conf.{ifname}.{key}={value}"), e))?;
            }
            Ok(())
        })
        .join()
    })
    .await;
    let fail = |what: String, source| DriverError::NetnsSysctl {
        netns: shown.clone(),
        what,
        source,
    };
    match join {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err((what, e)))) => Err(fail(what, e)),
        Ok(Err(_)) | Err(_) => Err(fail(
            "IPv6 sysctls".to_owned(),
            std::io::Error::other("the thread setting them panicked"),
        )),
    }
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
