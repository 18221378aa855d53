//! The agent's cluster task: keeps this host's lease alive, reads the
//! whole store once per session and then follows its watch, and after
//! each batch of changes brings this host in line: overlay networks made
//! or removed (through the manager), this host's endpoints published
//! again after a lost lease or a restart, and the VXLAN devices' entries
//! for every remote endpoint added or removed. A broken session (store
//! down, watch closed, lease gone) starts again with a full read, so the
//! host converges to the store whatever it missed; what is programmed
//! stays meanwhile, so existing flows keep forwarding.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use dataplane_common::nat::NatConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    now_rfc3339,
    records::{self, decode, EndpointRecord, Key, NetworkRecord},
    store::WatchEvent,
    Cluster,
};
use crate::{
    control::{
        host::{Host, RemoteEntry},
        manager::{Cache, Manager},
    },
    datapath::bpffs::PinRoot,
    sys::{error_chain, names::MacAddr, netlink::Netlink},
};

/// What the task needs to open the manager as the API does.
#[derive(Clone, Debug)]
pub struct SyncContext {
    pub state_dir: PathBuf,
    pub pins: PinRoot,
    pub nat: NatConfig,
    pub cache: Arc<Mutex<Cache>>,
}

/// The store as this host last read it: networks by name, endpoints by
/// key.
#[derive(Debug, Default)]
pub struct View {
    pub networks: BTreeMap<String, NetworkRecord>,
    pub endpoints: BTreeMap<String, EndpointRecord>,
}

impl View {
    pub fn from_pairs(kvs: &[(String, Vec<u8>)]) -> View {
        let mut v = View::default();
        for (k, value) in kvs {
            v.put(k, value);
        }
        v
    }

    /// One watch event; a record that does not decode is logged and left
    /// out (one bad writer must not stop the others' records).
    pub fn apply(&mut self, ev: &WatchEvent) {
        match ev {
            WatchEvent::Put { key, value } => self.put(key, value),
            WatchEvent::Delete { key } => match Key::parse(key) {
                Key::Network(n) => {
                    self.networks.remove(&n);
                }
                Key::Endpoint { .. } => {
                    self.endpoints.remove(key);
                }
                _ => {}
            },
        }
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        match Key::parse(key) {
            Key::Network(n) => match decode(key, value) {
                Ok(r) => {
                    self.networks.insert(n, r);
                }
                Err(e) => warn!("{}", error_chain(&e)),
            },
            Key::Endpoint { .. } => match decode(key, value) {
                Ok(r) => {
                    self.endpoints.insert(key.to_owned(), r);
                }
                Err(e) => warn!("{}", error_chain(&e)),
            },
            _ => {}
        }
    }

    /// The remote endpoints of `network` as its VXLAN device needs them.
    pub fn remotes(&self, network: &str, me: &str) -> BTreeSet<RemoteEntry> {
        self.endpoints
            .values()
            .filter(|e| e.network == network && e.host != me)
            .filter_map(|e| {
                Some(RemoteEntry {
                    ip: e.ip,
                    mac: e.mac.parse::<MacAddr>().ok()?.octets(),
                    vtep: e.vtep,
                })
            })
            .collect()
    }
}

/// What this host programmed on each VXLAN device (by index).
pub type Programmed = BTreeMap<u32, BTreeSet<RemoteEntry>>;

/// Brings the entries of the VXLAN devices `nets` (network name, device
/// name) in line with `view`: adds what is missing, removes what went.
/// Returns what failed; a failed entry is tried again next time.
pub async fn program_remotes<H: Host>(
    host: &H,
    nets: &[(String, String)],
    view: &View,
    me: &str,
    programmed: &mut Programmed,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (network, vxlan) in nets {
        let index = match host.link_by_name(vxlan).await {
            Ok(Some(l)) => l.index,
            Ok(None) => continue,
            Err(e) => {
                errors.push(error_chain(&e));
                continue;
            }
        };
        seen.insert(index);
        let want = view.remotes(network, me);
        if let std::collections::btree_map::Entry::Vacant(slot) = programmed.entry(index) {
            // First look at this device in this process: what an earlier
            // agent left that is no longer wanted must go too.
            match stale_entries(host, index, &want).await {
                Ok(stale) => {
                    slot.insert(stale);
                }
                Err(e) => errors.push(e),
            }
        }
        let have = programmed.entry(index).or_default();
        for gone in have.difference(&want).copied().collect::<Vec<_>>() {
            match host.set_remote(index, gone, false).await {
                Ok(()) => {
                    have.remove(&gone);
                }
                Err(e) => errors.push(error_chain(&e)),
            }
        }
        for new in want.difference(have).copied().collect::<Vec<_>>() {
            match host.set_remote(index, new, true).await {
                Ok(()) => {
                    have.insert(new);
                }
                Err(e) => errors.push(error_chain(&e)),
            }
        }
    }
    programmed.retain(|index, _| seen.contains(index));
    errors
}

/// The entries on device `index` that no wanted endpoint has (by IP and
/// MAC), with their VTEP unknown (removal then takes the MAC's entry
/// whatever its VTEP).
async fn stale_entries<H: Host>(
    host: &H,
    index: u32,
    want: &BTreeSet<RemoteEntry>,
) -> Result<BTreeSet<RemoteEntry>, String> {
    let there = host
        .remote_entries(index)
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(there
        .into_iter()
        .filter(|e| !want.iter().any(|w| w.ip == e.ip && w.mac == e.mac))
        .collect())
}

/// Runs until `stop`: sessions with the store, each started again after
/// a failure (backing off up to 10 s).
pub async fn run(cluster: Arc<Cluster>, ctx: SyncContext, stop: CancellationToken) {
    let host = match Netlink::connect(None).await {
        Ok(h) => h,
        Err(e) => return warn!("cluster sync: {}", error_chain(&e)),
    };
    let mut programmed = Programmed::new();
    let mut backoff = Duration::from_millis(500);
    while !stop.is_cancelled() {
        match session(&cluster, &ctx, &host, &mut programmed, &stop).await {
            Ok(()) => break,
            Err(e) => {
                warn!("cluster sync: {e}; starting again in {backoff:?}");
                cluster.note(Err(e));
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One session: register, read everything, publish this host's
/// endpoints, converge, then follow the watch and keep the lease alive.
/// Ok when stopped; Err (as text) when the session broke.
async fn session(
    cluster: &Arc<Cluster>,
    ctx: &SyncContext,
    host: &Netlink,
    programmed: &mut Programmed,
    stop: &CancellationToken,
) -> Result<(), String> {
    let text = |e: super::ClusterError| error_chain(&e);
    cluster.lease().await.map_err(text)?;
    let (kvs, rev) = cluster
        .store()
        .get_prefix(records::PREFIX)
        .await
        .map_err(|e| error_chain(&e))?;
    let mut rx: mpsc::Receiver<WatchEvent> = cluster
        .store()
        .watch(records::PREFIX, rev)
        .await
        .map_err(|e| error_chain(&e))?;
    let mut view = View::from_pairs(&kvs);
    let mut local = None;
    converge(cluster, ctx, host, &view, programmed, &mut local, true).await?;
    cluster.note(Ok(()));
    info!(host = %cluster.identity().host_id, networks = view.networks.len(), endpoints = view.endpoints.len(), "cluster in sync");
    let mut tick = tokio::time::interval(cluster.identity().lease_ttl / 3);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => cluster.keep_alive().await.map_err(text)?,
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    return Err("the store's watch closed".into());
                };
                let mut n = 1;
                view.apply(&ev);
                while let Ok(ev) = rx.try_recv() {
                    view.apply(&ev);
                    n += 1;
                }
                cluster.with_status(|s| s.watch_events += n);
                converge(cluster, ctx, host, &view, programmed, &mut local, false).await?;
            }
        }
    }
}

/// This host's overlay networks as the last converge left them: name ->
/// (id, VXLAN device).
pub type Local = BTreeMap<String, (String, String)>;

/// This host after `view`: networks adopted or dropped, (with `publish`)
/// this host's endpoints written again, remote entries programmed. The
/// manager (and with it the state lock, which API requests wait for) is
/// opened only when the view's networks differ from `local` or for
/// `publish`: a batch of endpoint changes costs netlink calls alone.
async fn converge(
    cluster: &Arc<Cluster>,
    ctx: &SyncContext,
    host: &Netlink,
    view: &View,
    programmed: &mut Programmed,
    local: &mut Option<Local>,
    publish: bool,
) -> Result<(), String> {
    let me = cluster.identity().host_id.clone();
    let same = local.as_ref().is_some_and(|l| {
        l.len() == view.networks.len()
            && view
                .networks
                .iter()
                .all(|(n, r)| l.get(n).is_some_and(|(id, _)| *id == r.id))
    });
    if publish || !same {
        *local = Some(with_manager(cluster, ctx, view, publish).await?);
    }
    let nets: Vec<(String, String)> = local
        .iter()
        .flatten()
        .map(|(n, (_, vx))| (n.clone(), vx.clone()))
        .collect();
    let errors = program_remotes(host, &nets, view, &me, programmed).await;
    for e in &errors {
        warn!("overlay entries: {e}");
    }
    let entries: usize = programmed.values().map(BTreeSet::len).sum();
    cluster.with_status(|s| {
        s.last_sync = Some(now_rfc3339());
        s.networks = view.networks.keys().cloned().collect();
        s.programmed = entries;
    });
    Ok(())
}

/// The manager's part of [`converge`]: networks made or removed, (with
/// `publish`) this host's records published and its left-overs removed;
/// returns this host's overlay networks.
async fn with_manager(
    cluster: &Arc<Cluster>,
    ctx: &SyncContext,
    view: &View,
    publish: bool,
) -> Result<Local, String> {
    let mut m = Manager::open_cached(&ctx.state_dir, &ctx.pins, Some(&ctx.cache))
        .await
        .map_err(|e| error_chain(&e))?;
    m.set_nat_config(ctx.nat);
    m.set_cluster(Some(cluster.clone()));
    let done = async {
        networks(cluster, &mut m, view).await?;
        if publish {
            // Under the state lock (the manager is open): no connect of
            // this host is half-way, so an address of this host that no
            // endpoint holds is really left over.
            let mine = m.overlay_endpoints();
            publish_mine(cluster, &mine).await?;
            let stale = cluster
                .forget_stale(&mine)
                .await
                .map_err(|e| error_chain(&e))?;
            for s in stale {
                info!("cluster: removed this host's left-over {s}");
            }
        }
        Ok::<_, String>(
            m.overlay_networks()
                .into_iter()
                .map(|(n, o)| (n.name.clone(), (n.id.clone(), o.vxlan.clone())))
                .collect(),
        )
    }
    .await;
    m.keep(&ctx.cache);
    done
}

/// This host's overlay networks made or removed to match the store. The
/// view can lag behind this host's own changes (a `network create` here
/// lands before its watch event), so a difference is checked against a
/// fresh read of the store before anything is made or removed.
async fn networks(cluster: &Cluster, m: &mut Manager, view: &View) -> Result<(), String> {
    let differs = |m: &Manager, nets: &BTreeMap<String, NetworkRecord>| {
        let here = m.overlay_networks();
        here.len() != nets.len()
            || here
                .iter()
                .any(|(n, _)| nets.get(&n.name).map(|r| &r.id) != Some(&n.id))
    };
    if !differs(m, &view.networks) {
        return Ok(());
    }
    let fresh: BTreeMap<String, NetworkRecord> = cluster
        .networks()
        .await
        .map_err(|e| error_chain(&e))?
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    for rec in fresh.values() {
        let here = m.state().networks.get(&rec.name).map(|n| n.id.clone());
        if here.as_deref() == Some(rec.id.as_str()) {
            continue;
        }
        match m.adopt_overlay(rec).await {
            Ok(_) => {
                info!(network = %rec.name, vni = rec.vni, "overlay network adopted from the cluster")
            }
            Err(e) => warn!("overlay network {}: {}", rec.name, error_chain(&e)),
        }
    }
    let gone: Vec<(String, String)> = m
        .overlay_networks()
        .into_iter()
        .filter(|(n, _)| fresh.get(&n.name).map(|r| &r.id) != Some(&n.id))
        .map(|(n, _)| (n.name.clone(), n.id.clone()))
        .collect();
    for (name, id) in gone {
        match m.drop_overlay(&name, &id).await {
            Ok(()) => info!(network = %name, "overlay network removed from the cluster"),
            Err(e) => warn!("overlay network {name}: {}", error_chain(&e)),
        }
    }
    Ok(())
}

/// This host's endpoints and addresses, bound to its current lease (after
/// a restart or a lost lease). An address another host took meanwhile is
/// reported: that endpoint is not published.
async fn publish_mine(cluster: &Cluster, mine: &[EndpointRecord]) -> Result<(), String> {
    for ep in mine {
        let ours = cluster
            .reclaim(&ep.network, ep.ip, &ep.id)
            .await
            .map_err(|e| error_chain(&e))?;
        if !ours {
            warn!(network = %ep.network, endpoint = %ep.name, ip = %ep.ip, "address taken by another host while this one was away; not published");
            continue;
        }
        cluster
            .put_endpoint(ep)
            .await
            .map_err(|e| error_chain(&e))?;
    }
    Ok(())
}
