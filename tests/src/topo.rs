//! The fake host: a "host" namespace standing in for the node the dataplane
//! runs on, an "external client" namespace behind its uplink, and containers
//! on bridges inside the host, so no test ever touches the root namespace.
//!
//! The harness routes but never NATs: address translation is the product's
//! job, and a harness NAT rule could make a broken product look correct.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context, Result};

use crate::{
    netns::{add_addr, add_route, default_route, link_up, set_offload, veth_pair, NetNs},
    unique_ifname,
};

/// Device name of the client's uplink and of every container's interface.
pub const INNER_DEV: &str = "eth0";

/// Host side of the uplink (TEST-NET-1; only ever inside our namespaces).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The external client.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const UPLINK_PREFIX_LEN: u8 = 24;

#[derive(Debug)]
pub struct FakeHost {
    pub host: NetNs,
    pub client: NetNs,
    /// The uplink device's name inside `host`.
    pub uplink: String,
    pub host_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
    /// The client's device towards the host (`eth0`).
    pub client_dev: String,
}

#[derive(Debug)]
pub struct Container {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    /// The host end of the container's veth, attached to the bridge.
    pub host_veth: String,
}

impl FakeHost {
    /// Host and client namespaces joined by a veth pair, host 192.0.2.1/24,
    /// client 192.0.2.2/24, forwarding on in the host. With `offload` false,
    /// tx/rx checksum offload is off on both uplink ends.
    pub fn new(offload: bool) -> Result<FakeHost> {
        let host = NetNs::new("host")?;
        let client = NetNs::new("client")?;
        let fh = FakeHost {
            host,
            client,
            uplink: unique_ifname("up"),
            host_ip: HOST_IP,
            client_ip: CLIENT_IP,
            client_dev: INNER_DEV.to_string(),
        };
        fh.build(offload)
            .with_context(|| format!("cannot build fake host {} / {}", fh.host, fh.client))?;
        Ok(fh)
    }

    fn build(&self, offload: bool) -> Result<()> {
        veth_pair(&self.host, &self.uplink, &self.client, &self.client_dev)?;
        add_addr(
            &self.host,
            &self.uplink,
            &format!("{}/{UPLINK_PREFIX_LEN}", self.host_ip),
        )?;
        add_addr(
            &self.client,
            &self.client_dev,
            &format!("{}/{UPLINK_PREFIX_LEN}", self.client_ip),
        )?;
        self.host.sysctl("net.ipv4.ip_forward", "1")?;
        if !offload {
            set_offload(&self.host, &self.uplink, false)?;
            set_offload(&self.client, &self.client_dev, false)?;
        }
        Ok(())
    }

    /// A Linux bridge inside the host carrying `gateway_cidr` (e.g.
    /// "10.88.0.1/24"), up. Returns its device name.
    pub fn add_bridge(&self, name_tag: &str, gateway_cidr: &str) -> Result<String> {
        let name = unique_ifname(name_tag);
        self.host
            .exec(&["ip", "link", "add", &name, "type", "bridge"])
            .with_context(|| format!("cannot create bridge {name} in {}", self.host))?;
        add_addr(&self.host, &name, gateway_cidr)?;
        link_up(&self.host, &name)?;
        Ok(name)
    }

    /// A container namespace with `eth0` at `cidr` (e.g. "10.88.0.2/24"),
    /// its host end attached to `bridge`, default route via `gateway`. With
    /// `offload` false, checksum offload is off on both veth ends.
    pub fn add_container(
        &self,
        bridge: &str,
        tag: &str,
        cidr: &str,
        gateway: Ipv4Addr,
        offload: bool,
    ) -> Result<Container> {
        let ip: Ipv4Addr = cidr
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|e| anyhow!("container address {cidr:?} is not IPv4/prefix: {e}"))?;
        let ns = NetNs::new(tag)?;
        let container = Container {
            ns,
            ip,
            host_veth: unique_ifname(tag),
        };
        self.wire_container(&container, bridge, cidr, gateway, offload)
            .with_context(|| {
                format!(
                    "cannot build container {} ({cidr}) on bridge {bridge}",
                    container.ns
                )
            })?;
        Ok(container)
    }

    fn wire_container(
        &self,
        c: &Container,
        bridge: &str,
        cidr: &str,
        gateway: Ipv4Addr,
        offload: bool,
    ) -> Result<()> {
        veth_pair(&self.host, &c.host_veth, &c.ns, INNER_DEV)?;
        self.host
            .exec(&["ip", "link", "set", &c.host_veth, "master", bridge])
            .with_context(|| format!("cannot attach {} to bridge {bridge}", c.host_veth))?;
        add_addr(&c.ns, INNER_DEV, cidr)?;
        default_route(&c.ns, gateway)?;
        if !offload {
            set_offload(&self.host, &c.host_veth, false)?;
            set_offload(&c.ns, INNER_DEV, false)?;
        }
        Ok(())
    }

    /// Routes `dst_cidr` from the client via the host's uplink address. The
    /// client only reaches what a test explicitly routes.
    pub fn client_route(&self, dst_cidr: &str) -> Result<()> {
        add_route(&self.client, dst_cidr, self.host_ip)
    }
}
