//! IPv6 addresses as the datapath needs them (the host's own, an uplink's
//! masquerade source), on a [`Netlink`].

use std::net::{IpAddr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::{address::AddressAttribute, AddressFamily};

use super::{Netlink, NetlinkError, Op};

impl Netlink {
    /// IPv6 addresses as `(link index, address, prefix length)`, of one link
    /// or of all. Link-local ones (fe80::/10) are left out: they name no
    /// host beyond its link, so neither published ports nor masquerade use
    /// them.
    pub async fn addrs6(
        &self,
        index: Option<u32>,
    ) -> Result<Vec<(u32, Ipv6Addr, u8)>, NetlinkError> {
        let object = || match index {
            Some(index) => format!("IPv6 addresses of link {index}"),
            None => "IPv6 addresses".to_string(),
        };
        let mut request = self.handle.address().get();
        request.message_mut().header.family = AddressFamily::Inet6;
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
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(a)) => Some(*a),
                _ => None,
            });
            if let Some(addr) = addr.filter(|a| !a.is_unicast_link_local()) {
                addrs.push((msg.header.index, addr, msg.header.prefix_len));
            }
        }
        Ok(addrs)
    }
}
