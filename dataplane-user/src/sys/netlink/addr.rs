//! IPv4 addresses and routes of the main table, on a [`Netlink`].

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
            RouteType,
        },
        AddressFamily,
    },
    AddressMessageBuilder, RouteMessageBuilder,
};

use super::{Ipv4Route, Netlink, NetlinkError, Op, Route};

impl Netlink {
    /// Adds `addr/prefix_len` to link `index`. An address already there is an
    /// error ([`NetlinkError::is_exists`]), not silently kept.
    pub async fn add_addr(
        &self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        validate_prefix(addr, prefix_len, false)?;
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), prefix_len)
            .execute()
            .await
            .map_err(|e| {
                self.fail(
                    Op::AddAddr,
                    format!("{addr}/{prefix_len} to link {index}"),
                    e,
                )
            })
    }

    pub async fn del_addr(
        &self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        validate_prefix(addr, prefix_len, false)?;
        let message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(addr, prefix_len)
            .build();
        self.handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(|e| {
                self.fail(
                    Op::DelAddr,
                    format!("{addr}/{prefix_len} from link {index}"),
                    e,
                )
            })
    }

    /// IPv4 addresses as `(link index, address, prefix length)`, of one link
    /// or of all.
    pub async fn addrs(
        &self,
        index: Option<u32>,
    ) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError> {
        self.dump_addrs(AddressFamily::Inet, "IPv4", index, ipv4_of)
            .await
    }

    /// The addresses of one family (`what` names it in errors) as `(link
    /// index, address, prefix length)`, of one link or of all: each message
    /// of the kernel's dump (it dumps only the family asked for) that
    /// `pick` takes.
    pub(super) async fn dump_addrs<A>(
        &self,
        family: AddressFamily,
        what: &str,
        index: Option<u32>,
        pick: impl Fn(&AddressMessage) -> Option<A>,
    ) -> Result<Vec<(u32, A, u8)>, NetlinkError> {
        let object = || match index {
            Some(index) => format!("{what} addresses of link {index}"),
            None => format!("{what} addresses"),
        };
        let mut request = self.handle.address().get();
        request.message_mut().header.family = family;
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let mut stream = request.execute();
        let mut addrs = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| self.fail(Op::ListAddrs, object(), e))?
        {
            if let Some(addr) = pick(&msg) {
                addrs.push((msg.header.index, addr, msg.header.prefix_len));
            }
        }
        Ok(addrs)
    }

    /// Unicast IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<Ipv4Route>, NetlinkError> {
        let object = || "IPv4 routes of the main table".to_string();
        // A bare header: without strict checking the kernel ignores filters
        // in a dump request and sends every table, so filtering is done here.
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let mut stream = self.handle.route().get(request).execute();
        let mut routes = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| self.fail(Op::ListRoutes, object(), e))?
        {
            if let Some(route) = main_table_route(&msg) {
                routes.push(route);
            }
        }
        Ok(routes)
    }

    /// The interfaces that carry an IPv4 default route of the main table,
    /// each once, in the kernel's order: what `/proc/net/route` lists with
    /// destination and mask 0, from the route dump instead of that file.
    pub async fn default_route_ifaces(&self) -> Result<Vec<String>, NetlinkError> {
        let mut out: Vec<String> = Vec::new();
        for oif in self
            .routes()
            .await?
            .iter()
            .filter(|r| r.prefix_len == 0)
            .filter_map(|r| r.oif)
        {
            if let Some(link) = self.link_by_index(oif).await? {
                if !out.contains(&link.name) {
                    out.push(link.name);
                }
            }
        }
        Ok(out)
    }

    /// Adds a unicast route to the main table; `prefix_len` 0 (with `dst`
    /// 0.0.0.0) is the default route. Without a gateway the route is
    /// link-scoped (directly connected), as `ip route add` makes it.
    pub async fn add_route(
        &self,
        dst: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        oif: Option<u32>,
    ) -> Result<(), NetlinkError> {
        validate_prefix(dst, prefix_len, true)?;
        let mut builder =
            RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, prefix_len);
        match gateway {
            Some(gateway) => builder = builder.gateway(gateway),
            None => builder = builder.scope(RouteScope::Link),
        }
        if let Some(oif) = oif {
            builder = builder.output_interface(oif);
        }
        self.handle
            .route()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| {
                self.fail(
                    Op::AddRoute,
                    route_display(dst, prefix_len, gateway, oif),
                    e,
                )
            })
    }

    /// Deletes a unicast route of the main table, whatever its scope and
    /// protocol. With `gateway` None the first route to `dst/prefix_len` goes.
    pub async fn del_route(
        &self,
        dst: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), NetlinkError> {
        validate_prefix(dst, prefix_len, true)?;
        // RT_SCOPE_NOWHERE and protocol 0 are the kernel's wildcards for a
        // delete, as `ip route del` sends them.
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix_len)
            .scope(RouteScope::NoWhere)
            .protocol(RouteProtocol::Unspec);
        if let Some(gateway) = gateway {
            builder = builder.gateway(gateway);
        }
        self.handle
            .route()
            .del(builder.build())
            .execute()
            .await
            .map_err(|e| {
                self.fail(
                    Op::DelRoute,
                    route_display(dst, prefix_len, gateway, None),
                    e,
                )
            })
    }
}

/// Route destinations must be network addresses; the kernel would refuse
/// host bits with a bare EINVAL.
pub(super) fn validate_prefix(
    addr: Ipv4Addr,
    prefix_len: u8,
    network: bool,
) -> Result<(), NetlinkError> {
    let value = || format!("{addr}/{prefix_len}");
    if prefix_len > 32 {
        return Err(NetlinkError::InvalidPrefix {
            value: value(),
            reason: "the prefix length is over 32",
        });
    }
    let host_mask = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
    if network && u32::from(addr) & host_mask != 0 {
        return Err(NetlinkError::InvalidPrefix {
            value: value(),
            reason: "host bits are set in a route destination",
        });
    }
    Ok(())
}

/// IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
/// point-to-point links and only the fallback.
fn ipv4_of(msg: &AddressMessage) -> Option<Ipv4Addr> {
    let v4 = |a: &IpAddr| match a {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    };
    msg.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Local(a) => v4(a),
            _ => None,
        })
        .or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(a) => v4(a),
                _ => None,
            })
        })
}

pub(super) fn main_table_route(msg: &RouteMessage) -> Option<Ipv4Route> {
    main_table(
        msg,
        AddressFamily::Inet,
        Ipv4Addr::UNSPECIFIED,
        |a| match a {
            RouteAddress::Inet(a) => Some(*a),
            _ => None,
        },
    )
}

/// A unicast route of the main table of `family`, its addresses read by
/// `addr`; None for any other route.
pub(super) fn main_table<A: Copy>(
    msg: &RouteMessage,
    family: AddressFamily,
    unspecified: A,
    addr: impl Fn(&RouteAddress) -> Option<A>,
) -> Option<Route<A>> {
    if msg.header.address_family != family || msg.header.kind != RouteType::Unicast {
        return None;
    }
    // RTA_TABLE holds ids over 255, for which the header says RT_TABLE_COMPAT.
    let mut table = u32::from(msg.header.table);
    let mut dst = unspecified;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = addr(a).unwrap_or(dst),
            RouteAttribute::Gateway(a) => gateway = addr(a).or(gateway),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(Route {
        dst,
        prefix_len: msg.header.destination_prefix_length,
        gateway,
        oif,
    })
}

fn route_display(
    dst: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
) -> String {
    let mut s = if prefix_len == 0 {
        "default".to_string()
    } else {
        format!("{dst}/{prefix_len}")
    };
    if let Some(gateway) = gateway {
        s.push_str(&format!(" via {gateway}"));
    }
    if let Some(oif) = oif {
        s.push_str(&format!(" dev link {oif}"));
    }
    s
}
