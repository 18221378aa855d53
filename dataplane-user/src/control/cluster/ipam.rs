//! Addresses of overlay networks, handed out across hosts: one key per
//! address (`/ipam/<net>/<ip>`), taken by a transaction that succeeds only
//! if the key does not exist yet (create_revision == 0), so no two hosts
//! ever hold one address. A host that loses the race on a candidate tries
//! the next; keys are bound to the host's lease, so a dead host's
//! addresses come free with its endpoints.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::{
    records::{
        decode, encode, endpoints_prefix, ipam_key, ipam_prefix, EndpointRecord, IpamRecord, PREFIX,
    },
    Cluster, ClusterError,
};

/// Passes over the range before giving up: each re-reads what is taken.
const PASSES: usize = 3;

impl Cluster {
    /// Takes `asked`, or the first free address of `range` (never the
    /// subnet's network, broadcast or `gateway`), for an endpoint of
    /// `network` on this host.
    pub async fn allocate(
        &self,
        network: &str,
        subnet: Ipv4Net,
        range: Ipv4Net,
        gateway: Ipv4Addr,
        asked: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, ClusterError> {
        let lease = self.lease().await?;
        let record = encode(&IpamRecord {
            host: self.id.host_id.clone(),
            endpoint: String::new(),
        });
        let usable = |ip: Ipv4Addr| {
            subnet.contains(&ip)
                && ip != subnet.network()
                && ip != subnet.broadcast()
                && ip != gateway
        };
        if let Some(ip) = asked {
            if !usable(ip) {
                return Err(ClusterError::OutOfSubnet {
                    ip,
                    network: network.to_owned(),
                    subnet: subnet.to_string(),
                });
            }
            let key = ipam_key(network, ip);
            if self
                .store
                .create_all(&[(key.clone(), record)], Some(lease))
                .await?
            {
                return Ok(ip);
            }
            let (kvs, _) = self.store.get_prefix(&key).await?;
            let host = kvs
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(k, v)| decode::<IpamRecord>(k, v).ok())
                .map_or_else(|| "another host".to_owned(), |r| r.host);
            return Err(ClusterError::AddressTaken {
                ip,
                network: network.to_owned(),
                host,
            });
        }
        for _ in 0..PASSES {
            let taken = self.taken(network).await?;
            let candidates = range
                .hosts()
                .filter(|ip| usable(*ip) && !taken.contains(ip));
            for ip in candidates {
                let pair = [(ipam_key(network, ip), record.clone())];
                if self.store.create_all(&pair, Some(lease)).await? {
                    return Ok(ip);
                }
            }
        }
        Err(ClusterError::Exhausted {
            network: network.to_owned(),
            range: range.to_string(),
        })
    }

    /// Gives an address back.
    pub async fn release(&self, network: &str, ip: Ipv4Addr) -> Result<(), ClusterError> {
        Ok(self.store.delete(&ipam_key(network, ip)).await?)
    }

    /// Takes an address this host held before its lease ran out (its
    /// endpoint still runs): false when another host has it now.
    pub async fn reclaim(
        &self,
        network: &str,
        ip: Ipv4Addr,
        endpoint: &str,
    ) -> Result<bool, ClusterError> {
        let lease = self.lease().await?;
        let key = ipam_key(network, ip);
        let record = encode(&IpamRecord {
            host: self.id.host_id.clone(),
            endpoint: endpoint.to_owned(),
        });
        if self
            .store
            .create_all(&[(key.clone(), record.clone())], Some(lease))
            .await?
        {
            return Ok(true);
        }
        let (kvs, _) = self.store.get_prefix(&key).await?;
        let mine = kvs
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(k, v)| decode::<IpamRecord>(k, v).ok())
            .is_some_and(|r| r.host == self.id.host_id);
        if mine {
            // Ours under an older lease: bind it to the current one.
            self.store.put(&key, record, Some(lease)).await?;
        }
        Ok(mine)
    }

    /// Removes this host's endpoint records and addresses that none of
    /// `mine` (this host's endpoints now) has: left by a disconnect while
    /// the store did not answer, or by an agent killed half-way. The
    /// caller makes sure no connect of this host is under way. Returns
    /// what went.
    pub async fn forget_stale(&self, mine: &[EndpointRecord]) -> Result<Vec<String>, ClusterError> {
        let me = &self.id.host_id;
        let mut gone = Vec::new();
        let (eps, _) = self.store.get_prefix(&endpoints_prefix()).await?;
        for (k, v) in &eps {
            let Ok(e) = decode::<EndpointRecord>(k, v) else {
                continue;
            };
            if e.host == *me && !mine.iter().any(|m| m.network == e.network && m.id == e.id) {
                self.store.delete(k).await?;
                gone.push(format!("endpoint {} of {}", e.name, e.network));
            }
        }
        let prefix = format!("{PREFIX}ipam/");
        let (ips, _) = self.store.get_prefix(&prefix).await?;
        for (k, v) in &ips {
            let Some((net, ip)) = k.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else {
                continue;
            };
            let Ok(rec) = decode::<IpamRecord>(k, v) else {
                continue;
            };
            let held = mine
                .iter()
                .any(|m| m.network == net && m.ip.to_string() == ip);
            if rec.host == *me && !held {
                self.store.delete(k).await?;
                gone.push(format!("address {ip} of {net}"));
            }
        }
        Ok(gone)
    }

    /// The addresses of `network` held anywhere in the cluster.
    async fn taken(&self, network: &str) -> Result<BTreeSet<Ipv4Addr>, ClusterError> {
        let prefix = ipam_prefix(network);
        let (kvs, _) = self.store.get_prefix(&prefix).await?;
        Ok(kvs
            .iter()
            .filter_map(|(k, _)| k.strip_prefix(&prefix)?.parse().ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::control::cluster::{Identity, MemStore};

    fn host(store: &MemStore, n: u8) -> Cluster {
        Cluster::new(
            Arc::new(store.clone()),
            "memory".into(),
            Identity {
                host_id: format!("h{n}"),
                vtep: Ipv4Addr::new(192, 0, 2, n),
                vxlan_port: 4789,
                advertise_port: None,
                mtu: 1450,
                lease_ttl: Duration::from_secs(10),
            },
        )
    }

    #[tokio::test]
    async fn hosts_never_share_an_address() {
        let store = MemStore::default();
        let subnet: Ipv4Net = "10.0.9.0/29".parse().unwrap();
        let gw = Ipv4Addr::new(10, 0, 9, 1);
        let hosts: Vec<Arc<Cluster>> = (1..=3).map(|n| Arc::new(host(&store, n))).collect();
        let mut tasks = Vec::new();
        for h in &hosts {
            for _ in 0..2 {
                let h = h.clone();
                tasks.push(tokio::spawn(async move {
                    h.allocate("ov", subnet, subnet, gw, None).await
                }));
            }
        }
        let mut got = BTreeSet::new();
        let mut exhausted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(ip) => assert!(got.insert(ip), "{ip} handed out twice"),
                Err(ClusterError::Exhausted { .. }) => exhausted += 1,
                Err(e) => panic!("{e}"),
            }
        }
        // .2 to .6: five addresses for six requests.
        assert_eq!((got.len(), exhausted), (5, 1));
        let e = hosts[0]
            .allocate("ov", subnet, subnet, gw, Some(Ipv4Addr::new(10, 0, 9, 2)))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.0.9.2: already in use") && e.contains("by host h"),
            "{e}"
        );
        let e = hosts[0]
            .allocate("ov", subnet, subnet, gw, Some(gw))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a usable address"), "{e}");
        // Host 1 forgets what it holds without an endpoint; the others'
        // addresses stay.
        let before = store.keys().len();
        let gone = hosts[0].forget_stale(&[]).await.unwrap();
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert_eq!(store.keys().len(), before - 2);
    }
}
