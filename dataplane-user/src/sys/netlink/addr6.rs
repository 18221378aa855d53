//! IPv6 addresses and routes of the main table, on a [`Netlink`]: what an
//! IPv6 network's bridge and endpoints need (an address without duplicate
//! address detection, the default route via the gateway).

use std::net::{IpAddr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
        route::{RouteAddress, RouteMessage},
        AddressFamily,
    },
    RouteMessageBuilder,
};

use super::{Netlink, NetlinkError, Op};

/// A unicast IPv6 route of the main table.
pub type Ipv6Route = super::Route<Ipv6Addr>;

impl Netlink {
    /// Adds `addr/prefix_len` to link `index` with IFA_F_NODAD: the
    /// address is usable at once, never tentative (the dataplane hands
    /// out unique addresses; DAD would only delay the first packets by a
    /// second or more). An address already there is an error
    /// ([`NetlinkError::is_exists`]).
    pub async fn add_addr6(
        &self,
        index: u32,
        addr: Ipv6Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let object = || format!("{addr}/{prefix_len} to link {index}");
        if prefix_len > 128 {
            return Err(NetlinkError::InvalidPrefix {
                value: format!("{addr}/{prefix_len}"),
                reason: "the prefix length is over 128",
            });
        }
        let mut request = self
            .handle
            .address()
            .add(index, IpAddr::V6(addr), prefix_len);
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        request
            .execute()
            .await
            .map_err(|e| self.fail(Op::AddAddr, object(), e))
    }

    /// Global (not link-local) IPv6 addresses as `(link index, address,
    /// prefix length)`, of one link or of all.
    pub async fn addrs6(
        &self,
        index: Option<u32>,
    ) -> Result<Vec<(u32, Ipv6Addr, u8)>, NetlinkError> {
        let global = |msg: &AddressMessage| {
            (msg.header.scope == AddressScope::Universe)
                .then(|| ipv6_of(msg))
                .flatten()
        };
        self.dump_addrs(AddressFamily::Inet6, "IPv6", index, global)
            .await
    }

    /// Unicast IPv6 routes of the main table.
    pub async fn routes6(&self) -> Result<Vec<Ipv6Route>, NetlinkError> {
        let object = || "IPv6 routes of the main table".to_string();
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet6;
        let mut stream = self.handle.route().get(request).execute();
        let mut routes = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| self.fail(Op::ListRoutes, object(), e))?
        {
            if let Some(route) = main_table_route6(&msg) {
                routes.push(route);
            }
        }
        Ok(routes)
    }

    /// Adds a unicast IPv6 route to the main table; `prefix_len` 0 is the
    /// default route.
    pub async fn add_route6(
        &self,
        dst: Ipv6Addr,
        prefix_len: u8,
        gateway: Option<Ipv6Addr>,
        oif: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut builder =
            RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(dst, prefix_len);
        if let Some(gateway) = gateway {
            builder = builder.gateway(gateway);
        }
        if let Some(oif) = oif {
            builder = builder.output_interface(oif);
        }
        let mut object = if prefix_len == 0 {
            "default (IPv6)".to_string()
        } else {
            format!("{dst}/{prefix_len}")
        };
        if let Some(gateway) = gateway {
            object.push_str(&format!(" via {gateway}"));
        }
        self.handle
            .route()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| self.fail(Op::AddRoute, object, e))
    }
}

fn ipv6_of(msg: &AddressMessage) -> Option<Ipv6Addr> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V6(a)) | AddressAttribute::Local(IpAddr::V6(a)) => {
            Some(*a)
        }
        _ => None,
    })
}

fn main_table_route6(msg: &RouteMessage) -> Option<Ipv6Route> {
    super::addr::main_table(
        msg,
        AddressFamily::Inet6,
        Ipv6Addr::UNSPECIFIED,
        |a| match a {
            RouteAddress::Inet6(a) => Some(*a),
            _ => None,
        },
    )
}
