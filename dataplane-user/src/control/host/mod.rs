//! The host as the manager and its drivers see it ([`Host`]): links,
//! addresses and routes of the host namespace, the drivers' kernel steps
//! (a bridge, a veth on it, a macvlan child, loopback) and an endpoint's
//! teardown, namespaces by path, the forwarding sysctls (IPv4, and IPv6
//! for networks with IPv6), and
//! what the NAT maps should hold given the host's links. The real one is
//! [`Netlink`] (the host namespace's rtnetlink connection, with procfs for
//! the host's own sockets and ephemeral port range); [`FakeHost`]
//! keeps a host in memory for tests that run without root. The real
//! kernel steps live here (`bridge.rs`, `netns.rs`), below the drivers that
//! ask for them.

use std::{
    future::Future,
    net::{Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use ipnet::{Ipv4Net, Ipv6Net};

use super::model::{Attachment, MacvlanConfig, Network};
use crate::{
    datapath::{nat::NatError, EndpointJob},
    sys::{
        netlink::{Ipv4Route, Ipv6Route, Link, Netlink, NetlinkError, VxlanSpec},
        sockets::{self, HeldPort},
    },
};

mod bridge;
mod fake;
mod netns;

pub use bridge::{enable_forwarding6, ensure_bridge, ensure_bridge6, ensure_vxlan, BridgeError};
pub use fake::{FakeHost, FakeInner, FakeNs};
pub use netns::{attach_macvlan, attach_veth, loopback_up, teardown_endpoint};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error("bridge {bridge} of network {network} does not exist (run the agent to restore it)")]
    BridgeMissing { network: String, bridge: String },
    #[error("macvlan parent {parent} of network {network} does not exist in the host namespace")]
    ParentMissing { network: String, parent: String },
    #[error("{ifname} moved into {netns} but is not found there")]
    Vanished { ifname: String, netns: String },
    #[error("{netns}: setting {what} (is IPv6 enabled in the kernel?)")]
    NetnsSysctl {
        netns: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching the endpoint programs")]
    Programs(#[source] NatError),
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
    /// None on an IPv6-only network.
    pub ipv4: Option<Ipv4Addr>,
    /// The endpoint's IPv6 address, on a network with IPv6.
    pub ipv6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    /// Random suffix for host-side names (`veth<hex>`).
    pub suffix: &'a str,
    /// The endpoint programs for a veth's host end (see [`HostEndPrograms`]).
    pub programs: &'a HostEndPrograms,
}

/// The host-side veth name of an endpoint whose names end in `suffix`.
pub fn host_veth_name(suffix: &str) -> String {
    format!("veth{suffix}")
}

/// The endpoint programs' attachment to a veth's host end, prepared by the
/// manager on the datapath (programs verified). [`attach_veth`] runs it
/// once the veth exists, before it configures the namespace, and brings
/// the host end up only after both: a container's link has no carrier
/// before its programs are there. On the down veth the qdisc and filters
/// take ~0.2 ms (no RCU grace period, no queues to deactivate), so it runs
/// in line rather than on a thread of its own.
#[derive(Default)]
pub struct HostEndPrograms(std::sync::Mutex<Option<EndpointJob>>);

impl HostEndPrograms {
    pub fn new(job: EndpointJob) -> HostEndPrograms {
        HostEndPrograms(std::sync::Mutex::new(Some(job)))
    }

    /// The job, once: None when there is none or it was taken.
    pub fn take(&self) -> Option<EndpointJob> {
        self.0.lock().ok().and_then(|mut j| j.take())
    }

    /// Runs the job, if there is one, on this thread (which is in the
    /// agent's namespace).
    pub fn run(&self) -> Result<(), DriverError> {
        match self.take() {
            Some(job) => job().map_err(DriverError::Programs),
            None => Ok(()),
        }
    }
}

/// Identity of a namespace file (device, inode): two paths to one
/// namespace agree.
pub type NetnsId = (u64, u64);

/// One interface inside a namespace, as [`Host::netns_view`] reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsView {
    pub link: Option<Link>,
    /// The link's addresses: `(link index, address, prefix length)`.
    pub addrs: Vec<(u32, Ipv4Addr, u8)>,
    pub routes: Vec<Ipv4Route>,
    /// The link's global IPv6 addresses (when `with_addrs`).
    pub addrs6: Vec<(u32, Ipv6Addr, u8)>,
    pub routes6: Vec<Ipv6Route>,
}

/// A remote endpoint of an overlay network as its VXLAN device needs it:
/// its IP's MAC (a neighbour entry the device's ARP proxy answers from)
/// and that MAC's VTEP (a static forwarding entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteEntry {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub vtep: Ipv4Addr,
}

/// Everything the manager asks of the host. Futures are `Send`: the agent
/// runs the manager on a multi-threaded runtime.
pub trait Host: Send + Sync {
    fn links(&self) -> impl Future<Output = Result<Vec<Link>, NetlinkError>> + Send;
    fn link_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Link>, NetlinkError>> + Send;
    fn link_by_index(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Option<Link>, NetlinkError>> + Send;
    fn delete_link(&self, index: u32) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn set_master(
        &self,
        index: u32,
        master: u32,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn set_up(&self, index: u32) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn set_mac(
        &self,
        index: u32,
        mac: [u8; 6],
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// A veth pair in the host namespace: (host end, peer end).
    fn create_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: Option<u32>,
    ) -> impl Future<Output = Result<(Link, Link), NetlinkError>> + Send;
    /// `(link index, address, prefix length)` of one link or of all.
    fn addrs(
        &self,
        index: Option<u32>,
    ) -> impl Future<Output = Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError>> + Send;
    /// IPv6 addresses, link-local ones left out, as [`Host::addrs`].
    fn addrs6(
        &self,
        index: Option<u32>,
    ) -> impl Future<Output = Result<Vec<(u32, Ipv6Addr, u8)>, NetlinkError>> + Send;
    fn routes(&self) -> impl Future<Output = Result<Vec<Ipv4Route>, NetlinkError>> + Send;
    /// See [`bridge::ensure_bridge`].
    fn ensure_bridge(
        &self,
        name: &str,
        gateway: Option<Ipv4Addr>,
        subnet: Option<Ipv4Net>,
        mtu: u32,
        adopt: bool,
    ) -> impl Future<Output = Result<Vec<String>, BridgeError>> + Send;
    /// See [`bridge::ensure_bridge6`].
    fn ensure_bridge6(
        &self,
        name: &str,
        gateway: Option<Ipv6Addr>,
        subnet: Ipv6Net,
    ) -> impl Future<Output = Result<Vec<String>, BridgeError>> + Send;
    /// See [`bridge::enable_forwarding6`].
    fn enable_forwarding6(&self) -> impl Future<Output = Result<Vec<String>, BridgeError>> + Send;
    /// The bridge driver's endpoint: a veth pair, `host_ifname` a port of
    /// the bridge at index `bridge`, the other end configured inside the
    /// namespace (see [`netns::attach_veth`]).
    fn attach_veth(
        &self,
        plan: &EndpointPlan<'_>,
        host_ifname: &str,
        bridge: u32,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// The macvlan driver's endpoint: a child of the link at index
    /// `parent`, configured inside the namespace (see
    /// [`netns::attach_macvlan`]).
    fn attach_macvlan(
        &self,
        plan: &EndpointPlan<'_>,
        parent: u32,
        cfg: &MacvlanConfig,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// The overlay driver's VXLAN device, a port of its bridge; one that
    /// exists already is kept when `adopt` (see [`bridge::ensure_vxlan`]).
    fn ensure_vxlan(
        &self,
        spec: &VxlanSpec,
        adopt: bool,
    ) -> impl Future<Output = Result<Vec<String>, BridgeError>> + Send;
    /// Adds (`present`) or removes a remote endpoint's entries on the
    /// VXLAN device at `vxlan`.
    fn set_remote(
        &self,
        vxlan: u32,
        entry: RemoteEntry,
        present: bool,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// The remote entries on the VXLAN device at `vxlan` as the kernel
    /// has them (from its permanent neighbours; the VTEP is not read back:
    /// unspecified), to find those an earlier agent left.
    fn remote_entries(
        &self,
        vxlan: u32,
    ) -> impl Future<Output = Result<Vec<RemoteEntry>, NetlinkError>> + Send;
    /// Loopback up in the namespace at `netns` (the `none` network).
    fn loopback_up(&self, netns: &Path) -> impl Future<Output = Result<(), DriverError>> + Send;
    /// See [`netns::teardown_endpoint`].
    fn teardown_endpoint(
        &self,
        netns: &Path,
        ifname: Option<&str>,
        attachment: &Attachment,
    ) -> impl Future<Output = Vec<String>> + Send;
    /// Names of the interfaces inside the namespace at `netns`.
    fn netns_links(
        &self,
        netns: &Path,
    ) -> impl Future<Output = Result<Vec<String>, NetlinkError>> + Send;
    /// One interface of the namespace at `netns`, with its addresses
    /// (when `with_addrs`), and the namespace's routes: what CNI ADD
    /// reports and CHECK compares.
    fn netns_view(
        &self,
        netns: &Path,
        ifname: &str,
        with_addrs: bool,
    ) -> impl Future<Output = Result<NetnsView, NetlinkError>> + Send;
    /// The namespace at `path`, if it exists.
    fn netns_id(&self, path: &Path) -> Option<NetnsId>;
    /// Turns on IPv4 forwarding in the host namespace.
    fn enable_forwarding(&self) -> std::io::Result<()>;
    /// Host sockets holding ports, both families: listening TCP, bound UDP.
    /// The host socket holding `port` (TCP or UDP) on `ip` (None: every
    /// address of both families), if one does.
    fn port_holder(
        &self,
        tcp: bool,
        ip: Option<std::net::IpAddr>,
        port: u16,
    ) -> std::io::Result<Option<HeldPort>>;
    /// Every (TCP?, port) some host socket is bound to, read at once (see
    /// `sys::sockets::bound_ports`), for a request of many ports: a port
    /// outside it is held by nothing, so [`Self::port_holder`] is asked
    /// about the others only.
    fn bound_ports(&self) -> std::io::Result<std::collections::HashSet<(bool, u16)>>;
    /// `name (pid N)` of the process holding the socket with this inode.
    fn socket_owner(&self, inode: u64) -> Option<String>;
    /// Where a port published without a host port is picked from.
    fn ephemeral_ports(&self) -> RangeInclusive<u16>;
}

/// Whether a socket on `h`'s address takes packets for `ip`: either side
/// on every address, or both on the same one.
fn held_on(h: &HeldPort, ip: Option<std::net::IpAddr>) -> bool {
    h.ip.is_none() || ip.is_none() || h.ip == ip
}

impl Host for Netlink {
    async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        Netlink::links(self).await
    }
    async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Netlink::link_by_name(self, name).await
    }
    async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        Netlink::link_by_index(self, index).await
    }
    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        Netlink::delete_link(self, index).await
    }
    async fn set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        Netlink::set_master(self, index, master).await
    }
    async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        Netlink::set_up(self, index).await
    }
    async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        Netlink::set_mac(self, index, mac).await
    }
    async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: Option<u32>,
    ) -> Result<(Link, Link), NetlinkError> {
        Netlink::create_veth(self, name, peer, mtu).await
    }
    async fn addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError> {
        Netlink::addrs(self, index).await
    }
    async fn addrs6(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv6Addr, u8)>, NetlinkError> {
        Netlink::addrs6(self, index).await
    }
    async fn routes(&self) -> Result<Vec<Ipv4Route>, NetlinkError> {
        Netlink::routes(self).await
    }
    async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Option<Ipv4Addr>,
        subnet: Option<Ipv4Net>,
        mtu: u32,
        adopt: bool,
    ) -> Result<Vec<String>, BridgeError> {
        ensure_bridge(self, name, gateway, subnet, mtu, adopt).await
    }
    async fn ensure_bridge6(
        &self,
        name: &str,
        gateway: Option<Ipv6Addr>,
        subnet: Ipv6Net,
    ) -> Result<Vec<String>, BridgeError> {
        ensure_bridge6(self, name, gateway, subnet).await
    }
    async fn enable_forwarding6(&self) -> Result<Vec<String>, BridgeError> {
        enable_forwarding6(self).await
    }
    async fn attach_veth(
        &self,
        plan: &EndpointPlan<'_>,
        host_ifname: &str,
        bridge: u32,
    ) -> Result<(), DriverError> {
        attach_veth(self, plan, host_ifname, bridge).await
    }
    async fn attach_macvlan(
        &self,
        plan: &EndpointPlan<'_>,
        parent: u32,
        cfg: &MacvlanConfig,
    ) -> Result<(), DriverError> {
        attach_macvlan(self, plan, parent, cfg).await
    }
    async fn ensure_vxlan(
        &self,
        spec: &VxlanSpec,
        adopt: bool,
    ) -> Result<Vec<String>, BridgeError> {
        ensure_vxlan(self, spec, adopt).await
    }
    async fn set_remote(
        &self,
        vxlan: u32,
        e: RemoteEntry,
        present: bool,
    ) -> Result<(), NetlinkError> {
        if present {
            self.neigh_add(vxlan, e.ip, e.mac).await?;
            self.fdb_add(vxlan, e.mac, e.vtep).await
        } else {
            let gone = |r: Result<(), NetlinkError>| match r {
                Err(e) if !e.is_not_found() => Err(e),
                _ => Ok(()),
            };
            gone(self.fdb_del(vxlan, e.mac, e.vtep).await)?;
            gone(self.neigh_del(vxlan, e.ip).await)
        }
    }
    async fn remote_entries(&self, vxlan: u32) -> Result<Vec<RemoteEntry>, NetlinkError> {
        Ok(self
            .permanent_neighbours(vxlan)
            .await?
            .into_iter()
            .map(|(ip, mac)| RemoteEntry {
                ip,
                mac,
                vtep: Ipv4Addr::UNSPECIFIED,
            })
            .collect())
    }
    async fn loopback_up(&self, netns: &Path) -> Result<(), DriverError> {
        loopback_up(netns).await
    }
    async fn teardown_endpoint(
        &self,
        netns: &Path,
        ifname: Option<&str>,
        attachment: &Attachment,
    ) -> Vec<String> {
        teardown_endpoint(self, netns, ifname, attachment).await
    }
    async fn netns_links(&self, netns: &Path) -> Result<Vec<String>, NetlinkError> {
        let ns = Netlink::connect(Some(netns)).await?;
        Ok(ns.links().await?.into_iter().map(|l| l.name).collect())
    }
    async fn netns_view(
        &self,
        netns: &Path,
        ifname: &str,
        with_addrs: bool,
    ) -> Result<NetnsView, NetlinkError> {
        let ns = Netlink::connect(Some(netns)).await?;
        let link = ns.link_by_name(ifname).await?;
        let (addrs, addrs6) = match &link {
            Some(l) if with_addrs => (
                ns.addrs(Some(l.index)).await?,
                ns.addrs6(Some(l.index)).await?,
            ),
            _ => (Vec::new(), Vec::new()),
        };
        Ok(NetnsView {
            link,
            addrs,
            routes: ns.routes().await?,
            addrs6,
            routes6: ns.routes6().await?,
        })
    }
    fn netns_id(&self, path: &Path) -> Option<NetnsId> {
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    fn enable_forwarding(&self) -> std::io::Result<()> {
        // Docker turns on IPv4 forwarding for its bridges; so do we, in
        // the namespace the agent runs in (the host).
        let path = "/proc/sys/net/ipv4/ip_forward";
        match std::fs::read_to_string(path) {
            Ok(v) if v.trim() == "1" => Ok(()),
            _ => std::fs::write(path, "1"),
        }
    }
    fn port_holder(
        &self,
        tcp: bool,
        ip: Option<std::net::IpAddr>,
        port: u16,
    ) -> std::io::Result<Option<HeldPort>> {
        if !sockets::port_taken(tcp, ip, port)? {
            return Ok(None);
        }
        // Held: which socket, for the refusal's text (a connection using
        // the port is not in the listeners procfs shows: no inode).
        let found = sockets::held_ports()?
            .into_iter()
            .find(|h| h.tcp == tcp && h.port == port && held_on(h, ip));
        Ok(Some(found.unwrap_or(HeldPort {
            tcp,
            ip,
            port,
            inode: 0,
        })))
    }
    fn bound_ports(&self) -> std::io::Result<std::collections::HashSet<(bool, u16)>> {
        sockets::bound_ports()
    }
    fn socket_owner(&self, inode: u64) -> Option<String> {
        sockets::socket_owner(inode)
    }
    fn ephemeral_ports(&self) -> RangeInclusive<u16> {
        sockets::ephemeral_ports()
    }
}
