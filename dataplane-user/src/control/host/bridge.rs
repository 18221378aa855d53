//! A network's Linux bridge on the real host: created (or adopted after a
//! restart) with its MAC pinned, its gateway address and up.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::sys::netlink::{Netlink, NetlinkError};

/// Creates the bridge of a network with its gateway address (if it has
/// one on the bridge), up, or checks
/// an existing one. `adopt` allows an existing bridge (the agent restoring
/// its own); otherwise an existing link of that name is someone else's.
///
/// The bridge's MAC is set explicitly (a random one for a new bridge, its
/// current one for an adopted bridge), as Docker does: a Linux bridge
/// whose MAC was never set takes the lowest of its ports' MACs, so it
/// would change as containers come and go, while containers' neighbour
/// caches and the fast path's routes (`nat::desired`) hold the gateway's
/// MAC.
pub async fn ensure_bridge(
    host: &Netlink,
    name: &str,
    gateway: Option<Ipv4Addr>,
    subnet: Ipv4Net,
    mtu: u32,
    adopt: bool,
) -> Result<Vec<String>, BridgeError> {
    let mut changed = Vec::new();
    let link = match host.link_by_name(name).await? {
        Some(l) if !adopt || l.kind.as_deref() != Some("bridge") => {
            return Err(BridgeError::InUse {
                bridge: name.to_owned(),
                kind: l.kind.unwrap_or_else(|| "unknown".to_owned()),
            })
        }
        Some(l) => {
            // Setting the MAC it has marks it as chosen; nothing changes.
            if let Some(mac) = l.mac {
                host.set_mac(l.index, mac).await?;
            }
            l
        }
        None => {
            changed.push(format!("created bridge {name}"));
            let link = host.create_bridge(name, Some(mtu)).await?;
            let pinned = async {
                host.set_mac(link.index, random_mac().map_err(BridgeError::Random)?)
                    .await
                    .map_err(BridgeError::from)
            }
            .await;
            if let Err(e) = pinned {
                let _ = host.delete_link(link.index).await;
                return Err(e);
            }
            link
        }
    };
    if let Some(gateway) = gateway {
        let has_addr = host
            .addrs(Some(link.index))
            .await?
            .iter()
            .any(|(_, a, p)| *a == gateway && *p == subnet.prefix_len());
        if !has_addr {
            host.add_addr(link.index, gateway, subnet.prefix_len())
                .await?;
            changed.push(format!("added {gateway}/{} to {name}", subnet.prefix_len()));
        }
    }
    if !link.up {
        host.set_up(link.index).await?;
        changed.push(format!("set {name} up"));
    }
    Ok(changed)
}

/// A random unicast, locally administered MAC (Docker's
/// `GenerateRandomMAC`).
fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    getrandom::fill(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("getting random bytes for the bridge's MAC")]
    Random(#[source] std::io::Error),
    #[error("bridge name {bridge} is in use by a link the dataplane does not own (kind {kind})")]
    InUse { bridge: String, kind: String },
}

#[cfg(test)]
mod tests {
    use super::random_mac;

    #[test]
    fn random_macs_are_unicast_locally_administered_and_differ() {
        let a = random_mac().unwrap();
        let b = random_mac().unwrap();
        for m in [a, b] {
            assert_eq!(m[0] & 0x01, 0, "unicast: {m:02x?}");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered: {m:02x?}");
        }
        assert_ne!(a, b);
    }
}
