//! The agent's DNS responder (docs/dns.md), aardvark-dns's way: one UDP
//! and one TCP socket on each named network's gateway address, port 53,
//! in the host's namespace. The socket a query came in on is the network
//! it asks about, so names stay within their network; other names go to the
//! host's resolvers ([`upstream`]).
//!
//! [`serve`] polls: the agent's state as its last request left it (its
//! in-memory cache; without one, the state files, read under the state
//! lock), the host's resolv.conf, and the sockets each network should
//! have. Names come from the persisted state, so a restarted agent has them
//! all before its first socket opens.

mod handler;
pub mod netns_files;
pub mod upstream;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use hickory_resolver::TokioAsyncResolver;
use hickory_server::ServerFuture;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::{
    manager::Cache,
    names_dns::NameTable,
    state::{State, StateStore},
};

/// How often the state files and resolv.conf are looked at: a name made by
/// `connect` answers within this.
const POLL: Duration = Duration::from_millis(200);

/// How long a TCP client may stay idle.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's DNS settings (`[dns]` in its configuration file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// The host's resolvers, watched for changes.
    pub resolv_conf: PathBuf,
    /// Where named namespaces get their resolv.conf (`ip netns exec`).
    pub netns_etc: PathBuf,
    /// Upstream answers kept, at most.
    pub cache_size: usize,
}

impl Default for DnsSettings {
    fn default() -> DnsSettings {
        DnsSettings {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            netns_etc: PathBuf::from("/etc/netns"),
            cache_size: 1024,
        }
    }
}

/// The responder's counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub queries: AtomicU64,
    /// Answered from the networks' names (NXDOMAIN under our domain too).
    pub answered: AtomicU64,
    /// Handed to the host's resolvers.
    pub forwarded: AtomicU64,
    /// SERVFAIL, REFUSED, NOTIMP and answers that could not be sent.
    pub failures: AtomicU64,
}

pub static COUNTERS: Counters = Counters {
    queries: AtomicU64::new(0),
    answered: AtomicU64::new(0),
    forwarded: AtomicU64::new(0),
    failures: AtomicU64::new(0),
};

impl Counters {
    /// (name, help, value) of each counter.
    pub fn read(&self) -> [(&'static str, &'static str, u64); 4] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                "dataplane_dns_queries_total",
                "DNS queries received.",
                v(&self.queries),
            ),
            (
                "dataplane_dns_answers_total",
                "DNS queries answered from the networks' names.",
                v(&self.answered),
            ),
            (
                "dataplane_dns_forwards_total",
                "DNS queries forwarded to the host's resolvers.",
                v(&self.forwarded),
            ),
            (
                "dataplane_dns_failures_total",
                "DNS queries answered with a failure (SERVFAIL, REFUSED, NOTIMP) or not answered.",
                v(&self.failures),
            ),
        ]
    }
}

/// A file as last seen: a change of any of these means read it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

/// What every network's handler reads: the names of this moment, the
/// upstream resolver, and the round-robin turn.
#[derive(Default)]
pub(crate) struct Shared {
    table: RwLock<Arc<NameTable>>,
    upstream: RwLock<Option<Arc<TokioAsyncResolver>>>,
    turn: AtomicUsize,
}

impl Shared {
    /// The table of this moment (shared, not copied: one query costs a
    /// reference count).
    fn table(&self) -> Arc<NameTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn upstream(&self) -> Option<Arc<TokioAsyncResolver>> {
        self.upstream
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One network's open sockets (closed when dropped).
struct Listener {
    server: IpAddr,
    _future: ServerFuture<handler::Handler>,
}

/// Serves until `stop`. Never fails: a socket that cannot be opened yet
/// (the bridge is not up) is tried again at the next poll, and logged
/// once.
pub async fn serve(
    settings: DnsSettings,
    state_dir: PathBuf,
    cache: Option<Arc<Mutex<Cache>>>,
    stop: CancellationToken,
) {
    let shared = Arc::new(Shared::default());
    let mut listeners: BTreeMap<String, Listener> = BTreeMap::new();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut resolv = upstream::Watched::new(&settings.resolv_conf);
    let mut stamps = (None, None);
    let mut mark = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Some(servers) = resolv.changed() {
            info!(resolv_conf = %settings.resolv_conf.display(), ?servers, "DNS: the host's resolvers");
            *shared.upstream.write().unwrap_or_else(|e| e.into_inner()) =
                upstream::resolver(servers, settings.cache_size);
        }
        if let Some(cache) = &cache {
            // The agent's own state, as its last request left it: no file
            // read, no state lock (requests would wait for it).
            let fresh = {
                let c = cache.lock().unwrap_or_else(|e| e.into_inner());
                c.state_since(mark).map(|(m, state)| {
                    let table = NameTable::from_state(state);
                    let files = netns_files::wanted(state, &table);
                    (m, table, files)
                })
            };
            if let Some((m, table, files)) = fresh {
                mark = Some(m);
                *shared.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
                netns_files::sync(&settings.netns_etc, &files);
            }
            reconcile(&shared.table(), &shared, &mut listeners, &mut failed).await;
            continue;
        }
        let now = (
            FileStamp::of(&state_dir.join("state.json")),
            FileStamp::of(&state_dir.join("state.journal")),
        );
        if now != stamps {
            match load_state(&state_dir).await {
                Ok(state) => {
                    stamps = now;
                    let table = Arc::new(NameTable::from_state(&state));
                    // Names first: once a file is gone, so is its name.
                    *shared.table.write().unwrap_or_else(|e| e.into_inner()) = table.clone();
                    netns_files::sync(&settings.netns_etc, &netns_files::wanted(&state, &table));
                }
                Err(e) => warn!("DNS: reading the state: {e}"),
            }
        }
        reconcile(&shared.table(), &shared, &mut listeners, &mut failed).await;
    }
    // Dropping the servers closes their sockets.
    drop(listeners);
}

/// The state as stored, read under its lock (off the runtime: the lock
/// may wait for a writer).
async fn load_state(dir: &Path) -> Result<State, String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut store = StateStore::open(&dir).map_err(|e| format!("{e:#}"))?;
        Ok(store
            .load()
            .map_err(|e| format!("{e:#}"))?
            .unwrap_or_default())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Opens the sockets of networks that have none (or whose gateway moved),
/// closes those of networks gone.
async fn reconcile(
    table: &NameTable,
    shared: &Arc<Shared>,
    listeners: &mut BTreeMap<String, Listener>,
    failed: &mut BTreeMap<String, String>,
) {
    listeners.retain(|name, l| {
        let keep = table
            .networks
            .get(name)
            .is_some_and(|n| n.server == l.server);
        if !keep {
            info!(network = %name, server = %l.server, "DNS: closing");
        }
        keep
    });
    failed.retain(|name, _| table.networks.contains_key(name));
    for (name, names) in &table.networks {
        if listeners.contains_key(name) {
            continue;
        }
        match open(name, names.server, shared).await {
            Ok(future) => {
                info!(network = %name, server = %names.server, "DNS: answering on {}:53", names.server);
                failed.remove(name);
                listeners.insert(
                    name.clone(),
                    Listener {
                        server: names.server,
                        _future: future,
                    },
                );
            }
            Err(e) => {
                let e = e.to_string();
                if failed.get(name) != Some(&e) {
                    warn!(network = %name, server = %names.server, "DNS: cannot listen yet (retrying): {e}");
                    failed.insert(name.clone(), e);
                }
            }
        }
    }
}

async fn open(
    network: &str,
    server: IpAddr,
    shared: &Arc<Shared>,
) -> std::io::Result<ServerFuture<handler::Handler>> {
    let addr = SocketAddr::from((server, 53));
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let mut future = ServerFuture::new(handler::Handler {
        network: network.to_owned(),
        shared: shared.clone(),
    });
    future.register_socket(udp);
    future.register_listener(tcp, TCP_TIMEOUT);
    Ok(future)
}
