//! The seam to the key-value store ([`ClusterStore`]): the few operations
//! the cluster needs (prefix reads, create-if-absent transactions, leases,
//! prefix watches). [`EtcdStore`] is the real one (the `etcd-client`
//! crate); [`MemStore`] keeps a store in memory for the manager's unit
//! tests, with etcd's semantics for what the cluster relies on.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use super::config::{EtcdTls, StoreUrl};

/// A lease id (etcd's).
pub type LeaseId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster store {members}: {source}")]
    Etcd {
        members: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("cluster store {members}: no answer within {timeout:?}")]
    Timeout { members: String, timeout: Duration },
    #[error("reading {path} (cluster TLS)")]
    Tls {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster store: lease {0:x} expired")]
    LeaseGone(LeaseId),
}

/// One change a watch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// A prefix read: the pairs and the store's revision at the read.
pub type Snapshot = (Vec<(String, Vec<u8>)>, i64);

/// What the cluster asks of the store.
#[async_trait]
pub trait ClusterStore: Send + Sync {
    /// Every key under `prefix`, with the revision of the read.
    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError>;
    /// Writes every pair if none of the keys exists (one transaction
    /// comparing each key's create_revision with 0); false if one did.
    async fn create_all(
        &self,
        pairs: &[(String, Vec<u8>)],
        lease: Option<LeaseId>,
    ) -> Result<bool, StoreError>;
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError>;
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// One keep-alive; [`StoreError::LeaseGone`] when it expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Changes under `prefix` after revision `after`, in order, until the
    /// receiver is dropped; the channel closes when the watch breaks.
    async fn watch(
        &self,
        prefix: &str,
        after: i64,
    ) -> Result<mpsc::Receiver<WatchEvent>, StoreError>;
}

/// How long one request to the store may take before it counts as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// etcd v3 through `etcd-client`.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    members: String,
}

impl EtcdStore {
    /// Connects lazily-tolerant: the members are dialled now, and an error
    /// here means none answered.
    pub async fn connect(url: &StoreUrl, tls: Option<&EtcdTls>) -> Result<EtcdStore, StoreError> {
        let members = url.members.join(",");
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), REQUEST_TIMEOUT);
        let scheme = match tls {
            Some(tls) => {
                opts = opts.with_tls(tls_options(tls)?);
                "https"
            }
            None => "http",
        };
        let endpoints: Vec<String> = url
            .members
            .iter()
            .map(|m| format!("{scheme}://{m}"))
            .collect();
        let client = Client::connect(endpoints, Some(opts))
            .await
            .map_err(|source| StoreError::Etcd {
                members: members.clone(),
                source,
            })?;
        Ok(EtcdStore { client, members })
    }

    fn fail(&self, source: etcd_client::Error) -> StoreError {
        StoreError::Etcd {
            members: self.members.clone(),
            source,
        }
    }

    /// `f` on a clone of the client, bounded by [`REQUEST_TIMEOUT`].
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(REQUEST_TIMEOUT, f(self.client.clone())).await {
            Ok(r) => r.map_err(|e| self.fail(e)),
            Err(_) => Err(StoreError::Timeout {
                members: self.members.clone(),
                timeout: REQUEST_TIMEOUT,
            }),
        }
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Tls {
        path: path.display().to_string(),
        source,
    })
}

fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, StoreError> {
    let mut o = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        o = o.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(o)
}

fn lease_put(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|l| PutOptions::new().with_lease(l))
}

#[async_trait]
impl ClusterStore for EtcdStore {
    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let r = self
            .call(|mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        let rev = r.header().map_or(0, |h| h.revision());
        let kvs = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect();
        Ok((kvs, rev))
    }

    async fn create_all(
        &self,
        pairs: &[(String, Vec<u8>)],
        lease: Option<LeaseId>,
    ) -> Result<bool, StoreError> {
        let when: Vec<Compare> = pairs
            .iter()
            .map(|(k, _)| Compare::create_revision(k.as_str(), CompareOp::Equal, 0))
            .collect();
        let ops: Vec<TxnOp> = pairs
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), lease_put(lease)))
            .collect();
        let txn = Txn::new().when(when).and_then(ops);
        let r = self.call(|mut c| async move { c.txn(txn).await }).await?;
        Ok(r.succeeded())
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), StoreError> {
        self.call(|mut c| async move { c.put(key, value, lease_put(lease)).await })
            .await
            .map(drop)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.call(|mut c| async move { c.delete(key, None).await })
            .await
            .map(drop)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.call(|mut c| async move {
            c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                .await
        })
        .await
        .map(drop)
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let r = self
            .call(|mut c| async move { c.lease_grant(secs, None).await })
            .await?;
        Ok(r.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let ttl = self
            .call(|mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |r| r.ttl()))
            })
            .await?;
        if ttl <= 0 {
            return Err(StoreError::LeaseGone(lease));
        }
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.call(|mut c| async move { c.lease_revoke(lease).await })
            .await
            .map(drop)
    }

    async fn watch(
        &self,
        prefix: &str,
        after: i64,
    ) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1);
        let mut stream = self
            .call(|mut c| async move { c.watch(prefix, Some(opts)).await })
            .await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled() {
                    break;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let ev = match ev.event_type() {
                        EventType::Put => WatchEvent::Put {
                            key,
                            value: kv.value().to_vec(),
                        },
                        EventType::Delete => WatchEvent::Delete { key },
                    };
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// A store in memory with etcd's rules for what the cluster uses: one
/// revision counter, create-if-absent transactions, keys bound to leases
/// (gone with [`MemStore::expire`]), prefix watches.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    kv: BTreeMap<String, (Vec<u8>, Option<LeaseId>)>,
    revision: i64,
    next_lease: LeaseId,
    leases: Vec<LeaseId>,
    watchers: Vec<(String, mpsc::Sender<WatchEvent>)>,
    /// Fail every call (the store is down).
    down: bool,
}

impl MemInner {
    fn notify(&mut self, ev: WatchEvent) {
        let key = match &ev {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => key.clone(),
        };
        self.watchers
            .retain(|(p, tx)| !key.starts_with(p.as_str()) || tx.try_send(ev.clone()).is_ok());
    }

    fn set(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) {
        self.revision += 1;
        self.kv.insert(key.to_owned(), (value.clone(), lease));
        self.notify(WatchEvent::Put {
            key: key.to_owned(),
            value,
        });
    }

    fn remove(&mut self, key: &str) {
        if self.kv.remove(key).is_some() {
            self.revision += 1;
            self.notify(WatchEvent::Delete {
                key: key.to_owned(),
            });
        }
    }
}

impl MemStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemInner>, StoreError> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.down {
            return Err(StoreError::Timeout {
                members: "memory".into(),
                timeout: REQUEST_TIMEOUT,
            });
        }
        Ok(g)
    }

    /// The lease runs out: its keys go, as etcd does after the TTL.
    pub fn expire(&self, lease: LeaseId) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.leases.retain(|l| *l != lease);
        let keys: Vec<String> =
            g.kv.iter()
                .filter(|(_, (_, l))| *l == Some(lease))
                .map(|(k, _)| k.clone())
                .collect();
        for k in keys {
            g.remove(&k);
        }
    }

    /// Takes the store down (every call fails) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).down = down;
    }

    /// Every key, for tests' checks.
    pub fn keys(&self) -> Vec<String> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.kv.keys().cloned().collect()
    }
}

#[async_trait]
impl ClusterStore for MemStore {
    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let g = self.lock()?;
        let kvs =
            g.kv.range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect();
        Ok((kvs, g.revision))
    }

    async fn create_all(
        &self,
        pairs: &[(String, Vec<u8>)],
        lease: Option<LeaseId>,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        if pairs.iter().any(|(k, _)| g.kv.contains_key(k)) {
            return Ok(false);
        }
        for (k, v) in pairs {
            g.set(k, v.clone(), lease);
        }
        Ok(true)
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), StoreError> {
        self.lock()?.set(key, value, lease);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.lock()?.remove(key);
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let keys: Vec<String> =
            g.kv.keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect();
        for k in keys {
            g.remove(&k);
        }
        Ok(())
    }

    async fn grant(&self, _ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut g = self.lock()?;
        g.next_lease += 1;
        let id = g.next_lease;
        g.leases.push(id);
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        if self.lock()?.leases.contains(&lease) {
            Ok(())
        } else {
            Err(StoreError::LeaseGone(lease))
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        drop(self.lock()?);
        self.expire(lease);
        Ok(())
    }

    async fn watch(
        &self,
        prefix: &str,
        _after: i64,
    ) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let (tx, rx) = mpsc::channel(1024);
        self.lock()?.watchers.push((prefix.to_owned(), tx));
        Ok(rx)
    }
}
