//! Typed rtnetlink access for one network namespace: links (bridge, veth,
//! macvlan; master, up/down, MTU, MAC, name, moving between namespaces,
//! deletion), IPv4 addresses and IPv4 routes of the main table.
//!
//! A [`Netlink`] is bound to the namespace it was connected in for its whole
//! life, so the agent can configure a container's namespace without ever
//! moving one of its own threads there. Callers see [`Link`], [`Ipv4Route`]
//! and `(index, address, prefix)` values, never netlink messages, and every
//! failure is a [`NetlinkError`] that says what was being done, to which
//! object, in which namespace, and keeps the kernel's errno.

use std::{fmt, fs::File, io, net::Ipv4Addr, os::fd::AsRawFd, path::Path};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::link::{
        InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
        MacVlanMode as RawMacVlanMode,
    },
    Handle, LinkMessageBuilder, LinkUnspec,
};

mod addr;
mod addr6;
mod error;
mod vxlan;

pub use addr6::Ipv6Route;
pub use error::{NetlinkError, Op};
pub use vxlan::VxlanSpec;

pub use super::names::IFNAME_MAX;
use super::names::{ifname_problem, MacAddr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "bridge", "veth", "macvlan"...; None for devices
    /// without rtnl link ops (loopback, most physical NICs).
    pub kind: Option<String>,
    /// None unless the device has a 6-byte (Ethernet) hardware address.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// IFF_UP: administratively up, whatever the carrier.
    pub up: bool,
    /// Index of the bridge (or other master) the link is enslaved to.
    pub master: Option<u32>,
}

/// A unicast route of the main table, of either family. Multipath routes
/// show neither a gateway nor an output interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route<A> {
    /// The unspecified address with `prefix_len` 0 for the default route.
    pub dst: A,
    pub prefix_len: u8,
    pub gateway: Option<A>,
    pub oif: Option<u32>,
}

/// A unicast IPv4 route of the main table.
pub type Ipv4Route = Route<Ipv4Addr>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacvlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
}

impl MacvlanMode {
    fn raw(self) -> RawMacVlanMode {
        match self {
            MacvlanMode::Private => RawMacVlanMode::Private,
            MacvlanMode::Vepa => RawMacVlanMode::Vepa,
            MacvlanMode::Bridge => RawMacVlanMode::Bridge,
            MacvlanMode::Passthru => RawMacVlanMode::Passthrough,
        }
    }
}

impl fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The names `ip link ... type macvlan mode` takes.
        f.write_str(match self {
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Passthru => "passthru",
        })
    }
}

/// An rtnetlink connection bound to one network namespace. Cloning is cheap
/// and shares the connection; the connection task ends when the last clone
/// is dropped.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
    /// How errors name the namespace: the path it was opened from, or the
    /// caller's namespace inode when connected without one.
    netns: String,
}

impl Netlink {
    /// A connection bound to the network namespace at `netns` (a path such as
    /// /var/run/netns/NAME or /proc/PID/ns/net), or to the namespace of the
    /// thread polling this future when None. Must run inside a tokio runtime.
    ///
    /// A netlink socket belongs to the namespace it was created in, so with a
    /// path the socket is created on a short-lived thread that enters the
    /// namespace; no runtime thread ever changes namespace.
    pub async fn connect(netns: Option<&Path>) -> Result<Netlink, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(NetlinkError::NoRuntime)?;
        let Some(path) = netns else {
            let netns = current_netns_description();
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|source| NetlinkError::Socket {
                    netns: netns.clone(),
                    source,
                })?;
            runtime.spawn(connection);
            return Ok(Netlink { handle, netns });
        };

        let netns = format!("network namespace {}", path.display());
        // Opened here so a bad path fails before a thread is started.
        let file = File::open(path).map_err(|source| NetlinkError::OpenNetns {
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_runtime = runtime.clone();
        std::thread::Builder::new()
            .name("netlink-connect".into())
            .spawn(move || {
                // Dropping the result when the caller gave up closes the socket.
                let _ = tx.send(open_in_netns(&file, &thread_runtime));
            })
            .map_err(|source| NetlinkError::Thread {
                netns: netns.clone(),
                source,
            })?;
        // Awaited rather than joined so a current-thread runtime keeps running
        // its other tasks meanwhile.
        let (connection, handle) = rx
            .await
            .map_err(|_| NetlinkError::ThreadLost {
                netns: netns.clone(),
            })?
            .map_err(|e| match e {
                OpenError::Enter(source) => NetlinkError::EnterNetns {
                    path: path.to_path_buf(),
                    source,
                },
                OpenError::Socket(source) => NetlinkError::Socket {
                    netns: netns.clone(),
                    source,
                },
            })?;
        runtime.spawn(connection);
        Ok(Netlink { handle, netns })
    }

    /// How errors from this connection name its namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let object = || "links".to_string();
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| self.fail(Op::ListLinks, object(), e))?
        {
            links.push(self.parse_link(Op::ListLinks, object, msg)?);
        }
        Ok(links)
    }

    /// The link called `name`, or None when there is none. A name no link
    /// can have (empty, over [`IFNAME_MAX`] bytes...) is an error instead.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        validate_ifname(name)?;
        let object = || format!("link {name:?}");
        let request = self.handle.link().get().match_name(name);
        self.get_link(request, object).await
    }

    /// The link with index `index`, or None when there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        // Index 0 means "no index" to the kernel, which would then want a name.
        if index == 0 {
            return Ok(None);
        }
        let object = || format!("link {index}");
        let request = self.handle.link().get().match_index(index);
        self.get_link(request, object).await
    }

    /// Creates a bridge. Like every `create_*`, the new link is down:
    /// callers bring it up once it is configured.
    pub async fn create_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link, NetlinkError> {
        validate_ifname(name)?;
        let object = || format!("{name:?}");
        // LinkBridge::new would also bring the bridge up.
        let mut builder = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Bridge)
            .name(name.to_string());
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        self.handle
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| self.fail(Op::CreateBridge, object(), e))?;
        self.created(Op::CreateBridge, name, object).await
    }

    /// Creates a veth pair in this namespace; returns (host end, peer end).
    /// `mtu` applies to both ends.
    pub async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: Option<u32>,
    ) -> Result<(Link, Link), NetlinkError> {
        validate_ifname(name)?;
        validate_ifname(peer)?;
        let object = || format!("{name:?} <-> {peer:?}");
        let mut peer_builder = LinkUnspec::new_with_name(peer);
        let mut builder = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string());
        if let Some(mtu) = mtu {
            peer_builder = peer_builder.mtu(mtu);
            builder = builder.mtu(mtu);
        }
        let message = builder
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_builder.build())))
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| self.fail(Op::CreateVeth, object(), e))?;
        let host = self.created(Op::CreateVeth, name, object).await?;
        let peer = self.created(Op::CreateVeth, peer, object).await?;
        Ok((host, peer))
    }

    /// Creates a veth pair whose host end `name` is on bridge `master` and
    /// down (the caller brings it up when the end is ready), and whose peer is made directly inside the namespace at
    /// `peer_netns` with its final name and MAC: no later move between
    /// namespaces, which costs the kernel an RCU grace period. Returns the
    /// host end.
    pub async fn create_veth_into(
        &self,
        name: &str,
        master: u32,
        peer: &str,
        peer_netns: &Path,
        peer_mac: [u8; 6],
        mtu: u32,
    ) -> Result<Link, NetlinkError> {
        validate_ifname(name)?;
        validate_ifname(peer)?;
        let file = File::open(peer_netns).map_err(|source| NetlinkError::OpenNetns {
            path: peer_netns.to_path_buf(),
            source,
        })?;
        let object = || format!("{name:?} <-> {peer:?} in {}", peer_netns.display());
        // `file` outlives the request, so the fd stays valid until the kernel
        // has read it.
        let peer_builder = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .address(peer_mac.to_vec())
            .setns_by_fd(file.as_raw_fd());
        let message = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .controller(master)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_builder.build())))
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| self.fail(Op::CreateVeth, object(), e))?;
        drop(file);
        self.created(Op::CreateVeth, name, object).await
    }

    /// Creates a macvlan on the link `parent` (which must be in this
    /// namespace).
    pub async fn create_macvlan(
        &self,
        name: &str,
        parent: u32,
        mode: MacvlanMode,
        mtu: Option<u32>,
    ) -> Result<Link, NetlinkError> {
        validate_ifname(name)?;
        let object = || format!("{name:?} on link {parent} (mode {mode})");
        let mut builder = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::MacVlan)
            .name(name.to_string())
            .link(parent)
            .set_info_data(InfoData::MacVlan(vec![InfoMacVlan::Mode(mode.raw())]));
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        self.handle
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| self.fail(Op::CreateMacvlan, object(), e))?;
        self.created(Op::CreateMacvlan, name, object).await
    }

    /// Enslaves link `index` to the bridge (or other master) `master`.
    pub async fn set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).controller(master).build();
        self.change_link(message, Op::SetMaster, || {
            format!("link {index} to link {master}")
        })
        .await
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.change_link(message, Op::SetUp, || format!("link {index}"))
            .await
    }

    pub async fn set_down(&self, index: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).down().build();
        self.change_link(message, Op::SetDown, || format!("link {index}"))
            .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.change_link(message, Op::SetMtu, || format!("link {index} to {mtu}"))
            .await
    }

    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.change_link(message, Op::SetMac, || {
            format!("link {index} to {}", MacAddr(mac))
        })
        .await
    }

    /// Renames link `index`. Keep the link down: kernels before 6.2 refuse
    /// to rename a running link (EBUSY), and later ones log that they did.
    pub async fn rename(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        validate_ifname(name)?;
        let message = LinkUnspec::new_with_index(index).name(name).build();
        self.change_link(message, Op::Rename, || format!("link {index} to {name:?}"))
            .await
    }

    /// Moves link `index` into the network namespace at `netns`. The link
    /// may get another index there, so callers look it up by name through a
    /// [`Netlink`] connected to that namespace.
    pub async fn move_to_netns(&self, index: u32, netns: &Path) -> Result<(), NetlinkError> {
        let file = File::open(netns).map_err(|source| NetlinkError::OpenNetns {
            path: netns.to_path_buf(),
            source,
        })?;
        // `file` outlives the request, so the fd stays valid until the kernel
        // has read it.
        let message = LinkUnspec::new_with_index(index)
            .setns_by_fd(file.as_raw_fd())
            .build();
        self.change_link(message, Op::MoveToNetns, || {
            format!("link {index} to network namespace {}", netns.display())
        })
        .await
    }

    /// Deletes link `index` (for a veth, both ends).
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| self.fail(Op::DeleteLink, format!("link {index}"), e))
    }

    async fn get_link(
        &self,
        request: rtnetlink::LinkGetRequest,
        object: impl Fn() -> String,
    ) -> Result<Option<Link>, NetlinkError> {
        let mut stream = request.execute();
        match stream.try_next().await {
            Ok(Some(msg)) => self.parse_link(Op::GetLink, object, msg).map(Some),
            Ok(None) => Ok(None),
            Err(e) => {
                let err = self.fail(Op::GetLink, object(), e);
                if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Reads back a link that `op` has just created.
    async fn created(
        &self,
        op: Op,
        name: &str,
        object: impl Fn() -> String,
    ) -> Result<Link, NetlinkError> {
        let request = self.handle.link().get().match_name(name);
        let link = self.get_link(request, &object).await.map_err(|e| match e {
            // The lookup is part of `op`; say so rather than "look up".
            NetlinkError::Kernel {
                errno,
                source,
                netns,
                ..
            } => NetlinkError::Kernel {
                op,
                object: object(),
                netns,
                errno,
                source,
            },
            other => other,
        })?;
        link.ok_or_else(|| NetlinkError::Inconsistent {
            op,
            object: object(),
            netns: self.netns.clone(),
            detail: "the new link is gone before it could be read back",
        })
    }

    async fn change_link(
        &self,
        message: LinkMessage,
        op: Op,
        object: impl Fn() -> String,
    ) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(|e| self.fail(op, object(), e))
    }

    fn parse_link(
        &self,
        op: Op,
        object: impl Fn() -> String,
        msg: LinkMessage,
    ) -> Result<Link, NetlinkError> {
        let mut name = None;
        let mut kind = None;
        let mut mac = None;
        let mut mtu = 0;
        let mut master = None;
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n),
                LinkAttribute::Mtu(m) => mtu = m,
                LinkAttribute::Controller(m) if m != 0 => master = Some(m),
                LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    kind = infos.into_iter().find_map(|info| match info {
                        LinkInfo::Kind(k) => Some(k.to_string()),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        let name = name.ok_or_else(|| NetlinkError::Inconsistent {
            op,
            object: object(),
            netns: self.netns.clone(),
            detail: "the kernel described a link without a name",
        })?;
        Ok(Link {
            index: msg.header.index,
            name,
            kind,
            mac,
            mtu,
            up: msg.header.flags.contains(LinkFlags::Up),
            master,
        })
    }

    fn fail(&self, op: Op, object: String, err: rtnetlink::Error) -> NetlinkError {
        let netns = self.netns.clone();
        match err {
            rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => {
                let errno = msg.raw_code().abs();
                NetlinkError::Kernel {
                    op,
                    object,
                    netns,
                    errno,
                    source: io::Error::from_raw_os_error(errno),
                }
            }
            other => NetlinkError::Request {
                op,
                object,
                netns,
                source: Box::new(other),
            },
        }
    }
}

enum OpenError {
    Enter(io::Error),
    Socket(io::Error),
}

type Opened = (
    rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
    Handle,
);

/// Runs on a thread of its own, which it moves into the namespace for the
/// rest of its (short) life.
fn open_in_netns(file: &File, runtime: &tokio::runtime::Handle) -> Result<Opened, OpenError> {
    // SAFETY: setns on an fd we own; CLONE_NEWNET makes the kernel check it
    // is a network namespace, and only this thread moves.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(OpenError::Enter(io::Error::last_os_error()));
    }
    // The socket registers with the reactor of the runtime entered here.
    let _guard = runtime.enter();
    let (connection, handle, _) = rtnetlink::new_connection().map_err(OpenError::Socket)?;
    Ok((connection, handle))
}

fn current_netns_description() -> String {
    match std::fs::read_link("/proc/thread-self/ns/net") {
        Ok(target) => format!("network namespace {}", target.display()),
        Err(_) => "the caller's network namespace".to_string(),
    }
}

/// The checks the kernel's dev_valid_name makes, so a bad name fails with
/// the name in the message instead of a bare EINVAL.
fn validate_ifname(name: &str) -> Result<(), NetlinkError> {
    match ifname_problem(name) {
        Some(reason) => Err(NetlinkError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::{
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
        AddressFamily,
    };

    use super::{
        addr::{main_table_route, validate_prefix},
        *,
    };

    #[test]
    fn names_the_kernel_would_refuse_are_refused_with_the_name() {
        for bad in ["", "sixteen-bytes-xx", ".", "..", "a/b", "a:b", "a b"] {
            let err = validate_ifname(bad).err();
            assert!(
                matches!(&err, Some(NetlinkError::InvalidName { name, .. }) if name == bad),
                "{bad:?}: {err:?}"
            );
        }
        let msg = validate_ifname("sixteen-bytes-xx")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("\"sixteen-bytes-xx\"") && msg.contains("16"),
            "{msg}"
        );
        for good in ["eth0", "fifteen-bytes-x", "br-1.100", "veth@x"] {
            assert!(validate_ifname(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn route_destinations_must_be_networks() {
        assert!(validate_prefix(Ipv4Addr::new(10, 0, 0, 0), 24, true).is_ok());
        assert!(validate_prefix(Ipv4Addr::UNSPECIFIED, 0, true).is_ok());
        assert!(validate_prefix(Ipv4Addr::new(10, 0, 0, 1), 32, true).is_ok());
        assert!(validate_prefix(Ipv4Addr::new(10, 0, 0, 1), 24, true).is_err());
        assert!(validate_prefix(Ipv4Addr::new(10, 0, 0, 1), 24, false).is_ok());
        assert!(validate_prefix(Ipv4Addr::new(10, 0, 0, 1), 33, false).is_err());
    }

    #[test]
    fn errno_classification() {
        let kernel = |op, errno| NetlinkError::Kernel {
            op,
            object: "link 7".into(),
            netns: "network namespace /run/netns/x".into(),
            errno,
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(kernel(Op::DeleteLink, libc::ENODEV).is_not_found());
        assert!(kernel(Op::DelRoute, libc::ESRCH).is_not_found());
        assert!(kernel(Op::DelAddr, libc::EADDRNOTAVAIL).is_not_found());
        assert!(!kernel(Op::SetMac, libc::EADDRNOTAVAIL).is_not_found());
        assert!(kernel(Op::AddAddr, libc::EEXIST).is_exists());
        assert!(!kernel(Op::AddAddr, libc::EEXIST).is_not_found());
        assert_eq!(
            kernel(Op::DeleteLink, libc::ENODEV).to_string(),
            "cannot delete link 7 in network namespace /run/netns/x"
        );
    }

    #[test]
    fn only_unicast_main_table_ipv4_routes_are_reported() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.kind = RouteType::Unicast;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.destination_prefix_length = 24;
        msg.attributes = vec![
            RouteAttribute::Table(254),
            RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 1, 0, 0))),
            RouteAttribute::Oif(3),
        ];
        assert_eq!(
            main_table_route(&msg),
            Some(Ipv4Route {
                dst: Ipv4Addr::new(10, 1, 0, 0),
                prefix_len: 24,
                gateway: None,
                oif: Some(3)
            })
        );
        let mut local = msg.clone();
        local.attributes[0] = RouteAttribute::Table(255);
        assert_eq!(main_table_route(&local), None);
        let mut blackhole = msg;
        blackhole.header.kind = RouteType::BlackHole;
        assert_eq!(main_table_route(&blackhole), None);
    }

    /// The route dump finds the interfaces `/proc/net/route` lists with a
    /// default route (the file it replaces), in this test's namespace.
    #[tokio::test(flavor = "multi_thread")]
    async fn default_route_ifaces_agree_with_proc_net_route() {
        let table = std::fs::read_to_string("/proc/net/route").expect("/proc/net/route");
        let mut want: Vec<String> = Vec::new();
        for l in table.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 7
                && f[1] == "00000000"
                && f[7] == "00000000"
                && !want.contains(&f[0].to_owned())
            {
                want.push(f[0].to_owned());
            }
        }
        let nl = Netlink::connect(None).await.expect("connect");
        let got = nl.default_route_ifaces().await.expect("default routes");
        assert_eq!(got, want);
    }
}
