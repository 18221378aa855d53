//! `dataplane_user::sys::netlink` against the kernel: every Netlink is connected
//! to a namespace the test made, and what it did is checked independently
//! with `ip -j` inside that namespace.

use std::{
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use dataplane_tests::{
    ifname_prefix,
    netns::{NetNs, NETNS_DIR},
    unique_ifname, unique_name,
};
use dataplane_user::sys::netlink::{Ipv4Route, MacvlanMode, Netlink, NetlinkError};
use serde_json::Value;

async fn connect(ns: &NetNs) -> Result<Netlink> {
    Netlink::connect(Some(ns.path()))
        .await
        .with_context(|| format!("connecting to {ns}"))
}

/// `ip -j [-d] link show dev NAME` in `ns`: the one link object.
fn ip_link(ns: &NetNs, name: &str) -> Result<Value> {
    let out = ns.ip_json(&["-d", "link", "show", "dev", name])?;
    out.get(0)
        .cloned()
        .ok_or_else(|| anyhow!("`ip link show dev {name}` in {ns} printed no link: {out}"))
}

/// Names of every link `ip` sees in `ns`.
fn ip_link_names(ns: &NetNs) -> Result<Vec<String>> {
    let out = ns.ip_json(&["link", "show"])?;
    Ok(out
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect())
}

/// `(local, prefixlen)` of every IPv4 address `ip` shows on `dev` in `ns`.
fn ip_addrs(ns: &NetNs, dev: &str) -> Result<Vec<(String, u64)>> {
    let out = ns.ip_json(&["-4", "addr", "show", "dev", dev])?;
    let mut addrs = Vec::new();
    for link in out.as_array().map(Vec::as_slice).unwrap_or_default() {
        for a in link["addr_info"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let local = a["local"]
                .as_str()
                .ok_or_else(|| anyhow!("no local in {a}"))?;
            let len = a["prefixlen"]
                .as_u64()
                .ok_or_else(|| anyhow!("no prefixlen in {a}"))?;
            addrs.push((local.to_string(), len));
        }
    }
    Ok(addrs)
}

fn ip_routes(ns: &NetNs) -> Result<Vec<Value>> {
    Ok(ns
        .ip_json(&["-4", "route", "show", "table", "main"])?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

fn netns_ino() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading this thread's network namespace")?
        .ino())
}

#[tokio::test]
async fn bridge_is_created_down_with_its_mtu() -> Result<()> {
    if !dataplane_tests::require_root() {
        return Ok(());
    }
    let ns = NetNs::new("nlbr")?;
    let nl = connect(&ns).await?;
    let name = unique_ifname("br");

    let br = nl.create_bridge(&name, Some(1400)).await?;
    ensure!(br.name == name, "{br:?}");
    ensure!(br.kind.as_deref() == Some("bridge"), "{br:?}");
    ensure!(br.mtu == 1400 && !br.up && br.master.is_none(), "{br:?}");
    ensure!(br.mac.is_some(), "a bridge has an Ethernet address: {br:?}");

    let ip = ip_link(&ns, &name)?;
    ensure!(ip["mtu"] == 1400, "{ip}");
    ensure!(ip["linkinfo"]["info_kind"] == "bridge", "{ip}");
    ensure!(ip["ifindex"] == br.index, "{ip} vs {br:?}");
    ensure!(!has_flag(&ip, "UP"), "{ip}");

    ensure!(nl.link_by_index(br.index).await?.as_ref() == Some(&br));
    ensure!(nl.link_by_name(&name).await?.as_ref() == Some(&br));
    let all = nl.links().await?;
    ensure!(all.contains(&br), "{all:?}");
    ensure!(
        all.iter()
            .any(|l| l.name == "lo" && l.up && l.kind.is_none()),
        "{all:?}"
    );
    ensure!(all.len() == ip_link_names(&ns)?.len(), "{all:?}");

    nl.set_up(br.index).await?;
    ensure!(has_flag(&ip_link(&ns, &name)?, "UP"));
    ensure!(nl.link_by_index(br.index).await?.is_some_and(|l| l.up));
    nl.set_down(br.index).await?;
    ensure!(!has_flag(&ip_link(&ns, &name)?, "UP"));
    Ok(())
}

/// The container set-up the agent will do: a bridge and a veth in the host,
/// the peer moved into the container, renamed to eth0 there, given a MAC,
/// MTU, address and default route.
#[tokio::test]
async fn veth_peer_moves_into_a_container_and_is_configured_there() -> Result<()> {
    if !dataplane_tests::require_root() {
        return Ok(());
    }
    let host = NetNs::new("nlhost")?;
    let ctr = NetNs::new("nlctr")?;
    let nl_host = connect(&host).await?;
    let nl_ctr = connect(&ctr).await?;

    let br_name = unique_ifname("br");
    let host_name = unique_ifname("vh");
    let peer_name = unique_ifname("vc");
    let br = nl_host.create_bridge(&br_name, None).await?;
    let (veth_host, veth_peer) = nl_host
        .create_veth(&host_name, &peer_name, Some(1450))
        .await?;
    ensure!(veth_host.name == host_name && veth_peer.name == peer_name);
    ensure!(veth_host.kind.as_deref() == Some("veth"), "{veth_host:?}");
    ensure!(
        veth_host.mtu == 1450 && veth_peer.mtu == 1450,
        "{veth_peer:?}"
    );
    ensure!(ip_link(&host, &peer_name)?["mtu"] == 1450);

    nl_host.set_master(veth_host.index, br.index).await?;
    nl_host.set_up(veth_host.index).await?;
    nl_host.set_up(br.index).await?;
    let attached = nl_host
        .link_by_index(veth_host.index)
        .await?
        .ok_or_else(|| anyhow!("{host_name} is gone"))?;
    ensure!(
        attached.master == Some(br.index) && attached.up,
        "{attached:?}"
    );
    ensure!(ip_link(&host, &host_name)?["master"] == br_name.as_str());

    nl_host.move_to_netns(veth_peer.index, ctr.path()).await?;
    ensure!(nl_host.link_by_name(&peer_name).await?.is_none());
    ensure!(!ip_link_names(&host)?.contains(&peer_name));
    let moved = nl_ctr
        .link_by_name(&peer_name)
        .await?
        .ok_or_else(|| anyhow!("{peer_name} did not arrive in {ctr}"))?;

    nl_ctr.rename(moved.index, "eth0").await?;
    ensure!(nl_ctr.link_by_name(&peer_name).await?.is_none());
    let eth0 = nl_ctr
        .link_by_name("eth0")
        .await?
        .ok_or_else(|| anyhow!("no eth0 in {ctr}"))?;
    ensure!(eth0.index == moved.index, "{eth0:?} vs {moved:?}");

    let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
    nl_ctr.set_mac(eth0.index, mac).await?;
    nl_ctr.set_mtu(eth0.index, 1400).await?;
    nl_ctr.set_up(eth0.index).await?;

    // A name already taken is refused; the error names the link and the name.
    let taken = nl_ctr
        .rename(eth0.index, "lo")
        .await
        .err()
        .ok_or_else(|| anyhow!("renaming eth0 to lo succeeded"))?;
    ensure!(taken.is_exists(), "{taken:?}");
    let text = taken.to_string();
    ensure!(
        text.contains(&format!("link {}", eth0.index)) && text.contains("\"lo\""),
        "{text}"
    );

    let addr = Ipv4Addr::new(10, 88, 0, 2);
    let gw = Ipv4Addr::new(10, 88, 0, 1);
    nl_ctr.add_addr(eth0.index, addr, 24).await?;
    nl_ctr
        .add_route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), Some(eth0.index))
        .await?;

    // Through Netlink.
    let eth0 = nl_ctr
        .link_by_index(eth0.index)
        .await?
        .ok_or_else(|| anyhow!("eth0 is gone"))?;
    ensure!(eth0.name == "eth0" && eth0.mac == Some(mac), "{eth0:?}");
    ensure!(
        eth0.mtu == 1400 && eth0.up && eth0.master.is_none(),
        "{eth0:?}"
    );
    ensure!(eth0.kind.as_deref() == Some("veth"), "{eth0:?}");
    ensure!(nl_ctr.addrs(Some(eth0.index)).await? == vec![(eth0.index, addr, 24)]);
    let all_addrs = nl_ctr.addrs(None).await?;
    ensure!(all_addrs.contains(&(eth0.index, addr, 24)), "{all_addrs:?}");
    ensure!(
        all_addrs
            .iter()
            .any(|(_, a, len)| *a == Ipv4Addr::LOCALHOST && *len == 8),
        "lo's address is listed too: {all_addrs:?}"
    );
    let routes = nl_ctr.routes().await?;
    let default = Ipv4Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(gw),
        oif: Some(eth0.index),
    };
    let connected = Ipv4Route {
        dst: Ipv4Addr::new(10, 88, 0, 0),
        prefix_len: 24,
        gateway: None,
        oif: Some(eth0.index),
    };
    ensure!(routes.contains(&default), "{routes:?}");
    ensure!(routes.contains(&connected), "{routes:?}");
    ensure!(
        routes.iter().all(|r| r.dst != Ipv4Addr::LOCALHOST),
        "local-table routes must not be listed: {routes:?}"
    );

    // Through ip.
    let ip = ip_link(&ctr, "eth0")?;
    ensure!(ip["address"] == "02:42:ac:11:00:02", "{ip}");
    ensure!(ip["mtu"] == 1400 && has_flag(&ip, "UP"), "{ip}");
    ensure!(ip_addrs(&ctr, "eth0")? == vec![("10.88.0.2".to_string(), 24)]);
    let ip_routes_now = ip_routes(&ctr)?;
    ensure!(
        ip_routes_now
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.88.0.1" && r["dev"] == "eth0"),
        "{ip_routes_now:?}"
    );

    // A directly connected route (no gateway) is link-scoped, like `ip route add`'s.
    let direct = Ipv4Addr::new(10, 99, 0, 0);
    nl_ctr.add_route(direct, 16, None, Some(eth0.index)).await?;
    let r = ip_routes(&ctr)?
        .into_iter()
        .find(|r| r["dst"] == "10.99.0.0/16")
        .ok_or_else(|| anyhow!("10.99.0.0/16 is not in the main table"))?;
    ensure!(r["scope"] == "link" && r["dev"] == "eth0", "{r}");
    nl_ctr.del_route(direct, 16, None).await?;
    let again = nl_ctr
        .del_route(direct, 16, None)
        .await
        .err()
        .ok_or_else(|| anyhow!("deleting a deleted route succeeded"))?;
    ensure!(again.is_not_found(), "{again:?}");
    ensure!(again.to_string().contains("10.99.0.0/16"), "{again}");

    // And back out again.
    nl_ctr.del_route(Ipv4Addr::UNSPECIFIED, 0, Some(gw)).await?;
    ensure!(!nl_ctr.routes().await?.contains(&default));
    ensure!(!ip_routes(&ctr)?.iter().any(|r| r["dst"] == "default"));
    nl_ctr.del_addr(eth0.index, addr, 24).await?;
    ensure!(nl_ctr.addrs(Some(eth0.index)).await?.is_empty());
    ensure!(ip_addrs(&ctr, "eth0")?.is_empty());
    Ok(())
}

#[tokio::test]
async fn macvlan_on_a_veth_parent_in_bridge_mode() -> Result<()> {
    if !dataplane_tests::require_root() {
        return Ok(());
    }
    let ns = NetNs::new("nlmv")?;
    let nl = connect(&ns).await?;
    let (parent, _) = nl
        .create_veth(&unique_ifname("pa"), &unique_ifname("pb"), None)
        .await?;
    let name = unique_ifname("mv");

    let mv = nl
        .create_macvlan(&name, parent.index, MacvlanMode::Bridge, Some(1400))
        .await?;
    ensure!(
        mv.kind.as_deref() == Some("macvlan") && mv.mtu == 1400,
        "{mv:?}"
    );
    ensure!(
        mv.mac.is_some() && mv.mac != parent.mac,
        "{mv:?} vs {parent:?}"
    );

    let ip = ip_link(&ns, &name)?;
    ensure!(ip["linkinfo"]["info_kind"] == "macvlan", "{ip}");
    ensure!(ip["linkinfo"]["info_data"]["mode"] == "bridge", "{ip}");
    ensure!(ip["link"] == parent.name.as_str(), "{ip}");
    ensure!(ip["mtu"] == 1400, "{ip}");

    let missing_parent = nl
        .create_macvlan(&unique_ifname("mv"), 999_999, MacvlanMode::Private, None)
        .await
        .err()
        .ok_or_else(|| anyhow!("a macvlan on a missing parent was created"))?;
    ensure!(
        missing_parent.to_string().contains("on link 999999"),
        "{missing_parent}"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_twice_is_not_found() -> Result<()> {
    if !dataplane_tests::require_root() {
        return Ok(());
    }
    let ns = NetNs::new("nldel")?;
    let nl = connect(&ns).await?;
    let name = unique_ifname("br");
    let br = nl.create_bridge(&name, None).await?;

    nl.delete_link(br.index).await?;
    ensure!(!ip_link_names(&ns)?.contains(&name));
    ensure!(nl.link_by_index(br.index).await?.is_none());
    ensure!(nl.link_by_name(&name).await?.is_none());

    let err = nl
        .delete_link(br.index)
        .await
        .err()
        .ok_or_else(|| anyhow!("deleting a deleted link succeeded"))?;
    ensure!(err.is_not_found() && !err.is_exists(), "{err:?}");
    let text = err.to_string();
    ensure!(
        text.contains(&format!("link {}", br.index))
            && text.contains(&ns.path().display().to_string()),
        "{text}"
    );
    let set_up = nl
        .set_up(br.index)
        .await
        .err()
        .ok_or_else(|| anyhow!("bringing up a deleted link succeeded"))?;
    ensure!(set_up.is_not_found(), "{set_up:?}");
    Ok(())
}

#[tokio::test]
async fn adding_an_address_twice_is_exists() -> Result<()> {
    if !dataplane_tests::require_root() {
        return Ok(());
    }
    let ns = NetNs::new("nladdr")?;
    let nl = connect(&ns).await?;
    let br = nl.create_bridge(&unique_ifname("br"), None).await?;
    let addr = Ipv4Addr::new(172, 30, 0, 1);

    nl.add_addr(br.index, addr, 16).await?;
    let err = nl
        .add_addr(br.index, addr, 16)
        .await
        .err()
        .ok_or_else(|| anyhow!("adding an address twice succeeded"))?;
    ensure!(err.is_exists() && !err.is_not_found(), "{err:?}");
    ensure!(err.errno() == Some(libc::EEXIST), "{err:?}");
    ensure!(err.to_string().contains("172.30.0.1/16"), "{err}");
    ensure!(ip_addrs(&ns, &br.name)? == vec![("172.30.0.1".to_string(), 16)]);

    nl.del_addr(br.index, addr, 16).await?;
    let gone = nl
        .del_addr(br.index, addr, 16)
        .await
        .err()
        .ok_or_else(|| anyhow!("deleting a deleted address succeeded"))?;
    ensure!(gone.is_not_found(), "{gone:?}");
    Ok(())
}

#[tokio::test]
async fn an_overlong_name_is_refused_with_the_name() -> Result<()> {
    if !dataplane_tests::require_root() {
        return Ok(());
    }
    let ns = NetNs::new("nlname")?;
    let nl = connect(&ns).await?;
    let prefix = ifname_prefix();
    let long = format!("{prefix}{}", "x".repeat(16 - prefix.len()));
    ensure!(long.len() == 16);
    let before = ip_link_names(&ns)?;

    let check = |err: Option<NetlinkError>, what: &str| -> Result<()> {
        let err = err.ok_or_else(|| anyhow!("{what} accepted a 16-byte name"))?;
        ensure!(
            matches!(&err, NetlinkError::InvalidName { name, .. } if *name == long),
            "{what}: {err:?}"
        );
        ensure!(err.to_string().contains(&long), "{what}: {err}");
        Ok(())
    };
    check(nl.create_bridge(&long, None).await.err(), "create_bridge")?;
    check(
        nl.create_veth(&unique_ifname("ok"), &long, None)
            .await
            .err(),
        "create_veth",
    )?;
    check(
        nl.create_macvlan(&long, 1, MacvlanMode::Bridge, None)
            .await
            .err(),
        "create_macvlan",
    )?;
    let lo = nl
        .link_by_name("lo")
        .await?
        .ok_or_else(|| anyhow!("no lo in {ns}"))?;
    check(nl.rename(lo.index, &long).await.err(), "rename")?;
    ensure!(ip_link_names(&ns)? == before, "something was created");
    Ok(())
}

#[tokio::test]
async fn connecting_to_a_missing_namespace_names_the_path() -> Result<()> {
    if !dataplane_tests::require_root() {
        return Ok(());
    }
    let path = Path::new(NETNS_DIR).join(unique_name("missing"));
    let err = Netlink::connect(Some(&path))
        .await
        .err()
        .ok_or_else(|| anyhow!("connected to {}", path.display()))?;
    ensure!(err.is_not_found(), "{err:?}");
    ensure!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    // A namespace file of another type cannot be entered as a network one.
    let uts = PathBuf::from("/proc/thread-self/ns/uts");
    match Netlink::connect(Some(&uts)).await {
        Err(e @ NetlinkError::EnterNetns { .. }) => {
            ensure!(e.to_string().contains("/proc/thread-self/ns/uts"), "{e}");
            ensure!(e.errno() == Some(libc::EINVAL), "{e:?}");
        }
        other => bail!("connect to a UTS namespace: {other:?}"),
    }
    Ok(())
}

async fn connect_leaves_the_caller_where_it_was() -> Result<()> {
    let ns = NetNs::new("nlstay")?;
    let before = netns_ino()?;
    let nl = connect(&ns).await?;
    ensure!(netns_ino()? == before, "connect moved the calling thread");

    // The connection itself works in the namespace and only there.
    let name = unique_ifname("br");
    nl.create_bridge(&name, None).await?;
    ensure!(ip_link_names(&ns)?.contains(&name));
    let here = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    ensure!(
        !here
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{name}:"))),
        "{name} showed up in the caller's namespace"
    );
    ensure!(netns_ino()? == before);
    Ok(())
}

#[tokio::test]
async fn connect_does_not_move_the_calling_thread() -> Result<()> {
    if !dataplane_tests::require_root() {
        return Ok(());
    }
    connect_leaves_the_caller_where_it_was().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_does_not_move_the_calling_thread_multi_thread() -> Result<()> {
    if !dataplane_tests::require_root() {
        return Ok(());
    }
    connect_leaves_the_caller_where_it_was().await
}
