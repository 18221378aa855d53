//! VXLAN devices and the static entries an overlay network programs on
//! them: forwarding database entries (a remote MAC behind a remote VTEP,
//! `bridge fdb append ... dst`) and permanent neighbour entries (a remote
//! IP's MAC, which the device's ARP proxy answers from).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::RouteType,
        AddressFamily,
    },
    LinkVxlan,
};

use super::{validate_ifname, Link, Netlink, NetlinkError, Op};
use crate::sys::names::MacAddr;

/// What a VXLAN device is made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// The UDP destination port (4789, IANA's).
    pub port: u16,
    /// The source address of the outer packets (this host's VTEP).
    pub local: Ipv4Addr,
    /// The bridge the device is a port of.
    pub master: u32,
    pub mtu: u32,
}

impl Netlink {
    /// Creates a VXLAN device with no learning (every remote entry is
    /// static, from the cluster store), the ARP proxy on (answers from its
    /// neighbour entries instead of flooding), no L2/L3-miss callouts, a
    /// port of `spec.master`, up.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<Link, NetlinkError> {
        validate_ifname(&spec.name)?;
        let object = || format!("{:?} (VNI {}, port {})", spec.name, spec.vni, spec.port);
        let message = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .local(spec.local)
            .learning(false)
            .proxy(true)
            .l2miss(false)
            .l3miss(false)
            .mtu(spec.mtu)
            .controller(spec.master)
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| self.fail(Op::CreateVxlan, object(), e))?;
        self.created(Op::CreateVxlan, &spec.name, object).await
    }

    /// `bridge fdb replace MAC dev DEV dst VTEP self permanent`: frames to
    /// `mac` leave `index` encapsulated to `vtep`.
    pub async fn fdb_add(
        &self,
        index: u32,
        mac: [u8; 6],
        vtep: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let object = || format!("fdb {} dst {vtep} on link {index}", MacAddr(mac));
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(IpAddr::V4(vtep))
            .replace()
            .execute()
            .await
            .map_err(|e| self.fail(Op::AddFdb, object(), e))
    }

    /// Removes the fdb entry of `mac` to `vtep` on `index`.
    pub async fn fdb_del(
        &self,
        index: u32,
        mac: [u8; 6],
        vtep: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let object = || format!("fdb {} dst {vtep} on link {index}", MacAddr(mac));
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.header.kind = RouteType::Unspec;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                vtep,
            )));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(|e| self.fail(Op::DelFdb, object(), e))
    }

    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    pub async fn neigh_add(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let object = || format!("neighbour {ip} lladdr {} on link {index}", MacAddr(mac));
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| self.fail(Op::AddNeigh, object(), e))
    }

    /// The permanent IPv4 neighbour entries on link `index`: `(IP, MAC)`.
    pub async fn permanent_neighbours(
        &self,
        index: u32,
    ) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetlinkError> {
        let object = || format!("neighbours of link {index}");
        let mut stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| self.fail(Op::ListNeigh, object(), e))?
        {
            if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &msg.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        mac = <[u8; 6]>::try_from(&l[..]).ok()
                    }
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((ip, mac));
            }
        }
        Ok(out)
    }

    /// Removes the neighbour entry of `ip` on `index`.
    pub async fn neigh_del(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        let object = || format!("neighbour {ip} on link {index}");
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.kind = RouteType::Unspec;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(|e| self.fail(Op::DelNeigh, object(), e))
    }
}
