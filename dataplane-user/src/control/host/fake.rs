//! [`FakeHost`]: a host in memory for the manager's unit tests, which run
//! without root: the links, addresses and routes a real driver would
//! make, and namespaces by path with their interfaces.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    held_on, BridgeError, DriverError, EndpointPlan, Host, NetnsId, NetnsView, RemoteEntry,
};
use crate::{
    control::model::{Attachment, MacvlanConfig},
    sys::{
        netlink::{Ipv4Route, Ipv6Route, Link, NetlinkError, VxlanSpec},
        sockets::{self, HeldPort},
    },
};

/// A host in memory: links, addresses and routes of the host namespace,
/// and namespaces (by path) with the names of their interfaces. Driver
/// set-up makes the links a real driver would; nothing else happens.
#[derive(Debug, Default)]
pub struct FakeHost {
    inner: Mutex<FakeInner>,
}

/// What a [`FakeHost`] holds; tests read and edit it through
/// [`FakeHost::get`].
#[derive(Debug, Default)]
pub struct FakeInner {
    pub links: BTreeMap<u32, Link>,
    pub addrs: Vec<(u32, Ipv4Addr, u8)>,
    pub routes: Vec<Ipv4Route>,
    /// Namespaces by path.
    pub netns: BTreeMap<PathBuf, FakeNs>,
    pub forwarding: bool,
    /// IPv6 forwarding (`net.ipv6.conf.all.forwarding`).
    pub forwarding6: bool,
    /// IPv6 addresses of the host namespace's links.
    pub addrs6: Vec<(u32, Ipv6Addr, u8)>,
    /// Set, endpoint set-up fails with this message (as a vanished link).
    pub fail_setup: Option<String>,
    /// Host sockets holding ports, with the process each names.
    pub held: Vec<(HeldPort, String)>,
    /// How many times [`Host::port_holder`] was asked (a trial bind each on
    /// a real host).
    pub holder_asked: usize,
    /// The ephemeral range; None: [`sockets::FALLBACK_EPHEMERAL_PORTS`].
    pub ephemeral: Option<RangeInclusive<u16>>,
    /// Remote endpoints programmed on VXLAN devices, by device index.
    pub remotes: std::collections::BTreeSet<(u32, RemoteEntry)>,
    next_index: u32,
    next_ino: u64,
}

/// A namespace of a [`FakeHost`].
#[derive(Clone, Debug, Default)]
pub struct FakeNs {
    pub ino: u64,
    pub links: Vec<Link>,
    pub addrs: Vec<(u32, Ipv4Addr, u8)>,
    pub routes: Vec<Ipv4Route>,
    pub addrs6: Vec<(u32, Ipv6Addr, u8)>,
    pub routes6: Vec<Ipv6Route>,
}

impl FakeNs {
    pub fn names(&self) -> Vec<String> {
        self.links.iter().map(|l| l.name.clone()).collect()
    }
}

impl FakeInner {
    pub fn by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }

    /// Adds a link to the host namespace; returns its index.
    pub fn add_link(&mut self, name: &str, kind: Option<&str>, master: Option<u32>) -> u32 {
        self.next_index += 1;
        let index = self.next_index;
        let mut mac = [0x02, 0, 0, 0, 0, 0];
        mac[2..].copy_from_slice(&index.to_be_bytes());
        self.links.insert(
            index,
            Link {
                index,
                name: name.to_owned(),
                kind: kind.map(str::to_owned),
                mac: Some(mac),
                mtu: 1500,
                up: true,
                master,
            },
        );
        index
    }
}

impl FakeHost {
    /// A host with `lo` and an uplink `eth0` (10.0.0.2/24, the default
    /// route's interface), as a fresh machine has.
    pub fn new() -> FakeHost {
        let host = FakeHost::default();
        {
            let mut h = host.get();
            h.add_link("lo", None, None);
            let eth0 = h.add_link("eth0", None, None);
            h.addrs.push((eth0, Ipv4Addr::new(10, 0, 0, 2), 24));
            h.routes.push(Ipv4Route {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                oif: Some(eth0),
            });
            h.routes.push(Ipv4Route {
                dst: Ipv4Addr::new(10, 0, 0, 0),
                prefix_len: 24,
                gateway: None,
                oif: Some(eth0),
            });
        }
        host
    }

    /// A host process listening on (or, for UDP, bound to) `ip:port`.
    pub fn hold_port(
        &self,
        proto: crate::control::ports::Proto,
        ip: Option<std::net::IpAddr>,
        port: u16,
        who: &str,
    ) {
        let mut h = self.get();
        let inode = 1000 + h.held.len() as u64;
        h.held.push((
            HeldPort {
                tcp: proto == crate::control::ports::Proto::Tcp,
                ip,
                port,
                inode,
            },
            who.to_owned(),
        ));
    }

    pub fn get(&self) -> MutexGuard<'_, FakeInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A namespace at /var/run/netns/`name` with `lo`; returns its path.
    pub fn add_netns(&self, name: &str) -> PathBuf {
        let path = PathBuf::from("/var/run/netns").join(name);
        let mut h = self.get();
        h.next_ino += 1;
        let ino = 4_026_531_000 + h.next_ino;
        let lo = Link {
            index: 1,
            name: "lo".to_owned(),
            kind: None,
            mac: None,
            mtu: 65536,
            up: true,
            master: None,
        };
        h.netns.insert(
            path.clone(),
            FakeNs {
                ino,
                links: vec![lo],
                ..FakeNs::default()
            },
        );
        path
    }

    /// A second path to the namespace at `of` (as /proc/PID/ns/net is).
    pub fn alias_netns(&self, of: &Path, alias: &Path) {
        let mut h = self.get();
        if let Some(ns) = h.netns.get(of).cloned() {
            h.netns.insert(alias.to_owned(), ns);
        }
    }

    fn interfaces(&self, netns: &Path) -> Vec<String> {
        self.get()
            .netns
            .get(netns)
            .map(FakeNs::names)
            .unwrap_or_default()
    }

    fn teardown(&self, netns: &Path, ifname: Option<&str>, attachment: &Attachment) {
        let mut h = self.get();
        if let (Some(ifname), Some(ns)) = (ifname, h.netns.get_mut(netns)) {
            if matches!(attachment, Attachment::Veth { .. } | Attachment::Macvlan) {
                remove_inside(ns, ifname);
            }
        }
        if let Attachment::Veth { host_ifname } = attachment {
            h.links.retain(|_, l| l.name != *host_ifname);
        }
    }

    fn bridge(
        &self,
        name: &str,
        gateway: Option<Ipv4Addr>,
        subnet: Option<Ipv4Net>,
        adopt: bool,
    ) -> Result<Vec<String>, BridgeError> {
        let mut h = self.get();
        let mut changed = Vec::new();
        let index = match h.by_name(name) {
            Some(l) if !adopt || l.kind.as_deref() != Some("bridge") => {
                return Err(BridgeError::InUse {
                    bridge: name.to_owned(),
                    kind: l.kind.clone().unwrap_or_else(|| "unknown".to_owned()),
                })
            }
            Some(l) => l.index,
            None => {
                changed.push(format!("created bridge {name}"));
                h.add_link(name, Some("bridge"), None)
            }
        };
        let Some(subnet) = subnet else {
            return Ok(changed);
        };
        let prefix = subnet.prefix_len();
        if let Some(gateway) = gateway.filter(|g| !h.addrs.contains(&(index, *g, prefix))) {
            h.addrs.push((index, gateway, prefix));
            changed.push(format!("added {gateway}/{prefix} to {name}"));
        }
        {
            let r = Ipv4Route {
                dst: subnet.network(),
                prefix_len: prefix,
                gateway: None,
                oif: Some(index),
            };
            if !h.routes.contains(&r) {
                h.routes.push(r);
            }
        }
        Ok(changed)
    }
}

impl Host for FakeHost {
    async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        Ok(self.get().links.values().cloned().collect())
    }
    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.get().by_name(name).cloned())
    }
    async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        Ok(self.get().links.get(&index).cloned())
    }
    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let mut h = self.get();
        h.links.remove(&index);
        h.addrs.retain(|(i, _, _)| *i != index);
        h.addrs6.retain(|(i, _, _)| *i != index);
        Ok(())
    }
    async fn set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        if let Some(l) = self.get().links.get_mut(&index) {
            l.master = Some(master);
        }
        Ok(())
    }
    async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        if let Some(l) = self.get().links.get_mut(&index) {
            l.up = true;
        }
        Ok(())
    }
    async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        if let Some(l) = self.get().links.get_mut(&index) {
            l.mac = Some(mac);
        }
        Ok(())
    }
    async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        _mtu: Option<u32>,
    ) -> Result<(Link, Link), NetlinkError> {
        let mut h = self.get();
        let a = h.add_link(name, Some("veth"), None);
        let b = h.add_link(peer, Some("veth"), None);
        Ok((h.links[&a].clone(), h.links[&b].clone()))
    }
    async fn addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError> {
        let h = self.get();
        Ok(h.addrs
            .iter()
            .filter(|(i, _, _)| index.is_none_or(|x| x == *i))
            .copied()
            .collect())
    }
    async fn addrs6(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv6Addr, u8)>, NetlinkError> {
        let h = self.get();
        Ok(h.addrs6
            .iter()
            .filter(|(i, _, _)| index.is_none_or(|x| x == *i))
            .copied()
            .collect())
    }
    async fn routes(&self) -> Result<Vec<Ipv4Route>, NetlinkError> {
        Ok(self.get().routes.clone())
    }
    async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Option<Ipv4Addr>,
        subnet: Option<Ipv4Net>,
        _mtu: u32,
        adopt: bool,
    ) -> Result<Vec<String>, BridgeError> {
        self.bridge(name, gateway, subnet, adopt)
    }
    async fn ensure_bridge6(
        &self,
        name: &str,
        gateway: Option<Ipv6Addr>,
        subnet: Ipv6Net,
    ) -> Result<Vec<String>, BridgeError> {
        let mut h = self.get();
        let Some(index) = h.by_name(name).map(|l| l.index) else {
            return Ok(Vec::new());
        };
        let prefix = subnet.prefix_len();
        match gateway.filter(|g| !h.addrs6.contains(&(index, *g, prefix))) {
            Some(g) => {
                h.addrs6.push((index, g, prefix));
                Ok(vec![format!("added {g}/{prefix} to {name}")])
            }
            None => Ok(Vec::new()),
        }
    }
    async fn ensure_vxlan(
        &self,
        spec: &VxlanSpec,
        adopt: bool,
    ) -> Result<Vec<String>, BridgeError> {
        let mut h = self.get();
        match h.by_name(&spec.name) {
            Some(l) if !adopt || l.kind.as_deref() != Some("vxlan") => Err(BridgeError::InUse {
                bridge: spec.name.clone(),
                kind: l.kind.clone().unwrap_or_default(),
            }),
            Some(_) => Ok(Vec::new()),
            None => {
                h.add_link(&spec.name, Some("vxlan"), Some(spec.master));
                Ok(vec![format!("created vxlan {}", spec.name)])
            }
        }
    }
    async fn set_remote(
        &self,
        vxlan: u32,
        entry: RemoteEntry,
        present: bool,
    ) -> Result<(), NetlinkError> {
        let mut h = self.get();
        if present {
            h.remotes.insert((vxlan, entry));
        } else if entry.vtep.is_unspecified() {
            // As the kernel does without a destination: whatever the VTEP.
            h.remotes
                .retain(|(i, e)| !(*i == vxlan && e.ip == entry.ip && e.mac == entry.mac));
        } else {
            h.remotes.remove(&(vxlan, entry));
        }
        Ok(())
    }
    async fn remote_entries(&self, vxlan: u32) -> Result<Vec<RemoteEntry>, NetlinkError> {
        Ok(self
            .get()
            .remotes
            .iter()
            .filter(|(i, _)| *i == vxlan)
            .map(|(_, e)| RemoteEntry {
                vtep: Ipv4Addr::UNSPECIFIED,
                ..*e
            })
            .collect())
    }
    async fn enable_forwarding6(&self) -> Result<Vec<String>, BridgeError> {
        let mut h = self.get();
        let was = std::mem::replace(&mut h.forwarding6, true);
        Ok(if was {
            Vec::new()
        } else {
            vec!["net.ipv6.conf.all.forwarding=1".to_owned()]
        })
    }
    async fn attach_veth(
        &self,
        plan: &EndpointPlan<'_>,
        host_ifname: &str,
        bridge: u32,
    ) -> Result<(), DriverError> {
        {
            let h = self.get();
            fail_setup(&h, plan)?;
        }
        plan.programs.run()?;
        let mut h = self.get();
        h.add_link(host_ifname, Some("veth"), Some(bridge));
        if let Some(ns) = h.netns.get_mut(plan.netns) {
            add_inside(ns, plan);
        }
        Ok(())
    }
    async fn attach_macvlan(
        &self,
        plan: &EndpointPlan<'_>,
        _parent: u32,
        _cfg: &MacvlanConfig,
    ) -> Result<(), DriverError> {
        let mut h = self.get();
        fail_setup(&h, plan)?;
        if let Some(ns) = h.netns.get_mut(plan.netns) {
            add_inside(ns, plan);
        }
        Ok(())
    }
    async fn loopback_up(&self, _netns: &Path) -> Result<(), DriverError> {
        match &self.get().fail_setup {
            Some(why) => Err(DriverError::Vanished {
                ifname: "lo".to_owned(),
                netns: why.clone(),
            }),
            None => Ok(()),
        }
    }
    async fn teardown_endpoint(
        &self,
        netns: &Path,
        ifname: Option<&str>,
        attachment: &Attachment,
    ) -> Vec<String> {
        self.teardown(netns, ifname, attachment);
        Vec::new()
    }
    async fn netns_links(&self, netns: &Path) -> Result<Vec<String>, NetlinkError> {
        Ok(self.interfaces(netns))
    }
    async fn netns_view(
        &self,
        netns: &Path,
        ifname: &str,
        with_addrs: bool,
    ) -> Result<NetnsView, NetlinkError> {
        let h = self.get();
        let Some(ns) = h.netns.get(netns) else {
            return Ok(NetnsView::default());
        };
        let link = ns.links.iter().find(|l| l.name == ifname).cloned();
        let (addrs, addrs6) = match &link {
            Some(l) if with_addrs => (
                ns.addrs
                    .iter()
                    .filter(|(i, _, _)| *i == l.index)
                    .copied()
                    .collect(),
                ns.addrs6
                    .iter()
                    .filter(|(i, _, _)| *i == l.index)
                    .copied()
                    .collect(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        Ok(NetnsView {
            link,
            addrs,
            routes: ns.routes.clone(),
            addrs6,
            routes6: ns.routes6.clone(),
        })
    }
    fn netns_id(&self, path: &Path) -> Option<NetnsId> {
        self.get().netns.get(path).map(|ns| (4, ns.ino))
    }
    fn enable_forwarding(&self) -> std::io::Result<()> {
        self.get().forwarding = true;
        Ok(())
    }
    fn port_holder(
        &self,
        tcp: bool,
        ip: Option<std::net::IpAddr>,
        port: u16,
    ) -> std::io::Result<Option<HeldPort>> {
        let mut h = self.get();
        h.holder_asked += 1;
        Ok(h.held
            .iter()
            .map(|(h, _)| h)
            .find(|h| h.tcp == tcp && h.port == port && held_on(h, ip))
            .cloned())
    }
    fn bound_ports(&self) -> std::io::Result<std::collections::HashSet<(bool, u16)>> {
        Ok(self
            .get()
            .held
            .iter()
            .map(|(s, _)| (s.tcp, s.port))
            .collect())
    }
    fn socket_owner(&self, inode: u64) -> Option<String> {
        let h = self.get();
        h.held
            .iter()
            .find(|(s, _)| s.inode == inode)
            .map(|(_, who)| who.clone())
    }
    fn ephemeral_ports(&self) -> RangeInclusive<u16> {
        self.get()
            .ephemeral
            .clone()
            .unwrap_or(sockets::FALLBACK_EPHEMERAL_PORTS)
    }
}

/// Set, [`FakeInner::fail_setup`] fails an endpoint's set-up (as a
/// vanished link).
fn fail_setup(h: &FakeInner, plan: &EndpointPlan<'_>) -> Result<(), DriverError> {
    match &h.fail_setup {
        Some(why) => Err(DriverError::Vanished {
            ifname: plan.ifname.to_owned(),
            netns: why.clone(),
        }),
        None => Ok(()),
    }
}

/// What a driver's set-up makes inside the namespace: the interface with
/// its MAC and address, and the default route unless there is one or the
/// network is internal.
fn add_inside(ns: &mut FakeNs, plan: &EndpointPlan<'_>) {
    let index = ns.links.iter().map(|l| l.index).max().unwrap_or(1) + 1;
    ns.links.push(Link {
        index,
        name: plan.ifname.to_owned(),
        kind: Some("veth".to_owned()),
        mac: Some(plan.mac),
        mtu: plan.network.mtu,
        up: true,
        master: None,
    });
    let net = plan.network;
    if let Some(ip) = plan.ipv4 {
        let prefix = net.subnet.map(|s| s.prefix_len()).unwrap_or(32);
        ns.addrs.push((index, ip, prefix));
        if let Some(gw) = net.gateway {
            if !net.internal && !ns.routes.iter().any(|r| r.prefix_len == 0) {
                ns.routes.push(Ipv4Route {
                    dst: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    gateway: Some(gw),
                    oif: Some(index),
                });
            }
        }
    }
    if let Some(ip) = plan.ipv6 {
        let prefix = net.subnet6.map(|s| s.prefix_len()).unwrap_or(128);
        ns.addrs6.push((index, ip, prefix));
        let has_default = ns.routes6.iter().any(|r| r.prefix_len == 0);
        if let (Some(gw), false, false) = (net.gateway6, net.internal, has_default) {
            ns.routes6.push(Ipv6Route {
                dst: Ipv6Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(gw),
                oif: Some(index),
            });
        }
    }
}

fn remove_inside(ns: &mut FakeNs, ifname: &str) {
    let Some(index) = ns.links.iter().find(|l| l.name == ifname).map(|l| l.index) else {
        return;
    };
    ns.links.retain(|l| l.index != index);
    ns.addrs.retain(|(i, _, _)| *i != index);
    ns.routes.retain(|r| r.oif != Some(index));
    ns.addrs6.retain(|(i, _, _)| *i != index);
    ns.routes6.retain(|r| r.oif != Some(index));
}
