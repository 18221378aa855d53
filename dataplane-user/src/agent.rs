//! The agent's life: [`Agent::run`] starts its parts in order (networks,
//! then the datapath, then the sockets that let others ask for changes),
//! keeps every long-lived task in one set, and stops them all through one
//! cancellation token when SIGINT/SIGTERM arrives; then it detaches what it
//! attached. The settings come resolved from [`crate::config`].

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tokio::{
    signal::unix::{signal, SignalKind},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    api::{self, check_iface, ApiError, IfaceError},
    config::AgentConfig,
    control::{
        cluster::{self, Cluster},
        driver::{self, NetworkDriver as _},
        manager::{Cache, Manager, NetworkError},
        model::Network,
        state,
    },
    datapath::{
        bpffs::PinRoot,
        conntrack,
        ebpf::{detach_tc, Dataplane, Direction, LoadError},
        host_local, limits, stats,
    },
    frontends::{dns, docker, metrics},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("installing the {0} handler")]
    Signal(&'static str, #[source] std::io::Error),
    #[error("listing the routes to find the uplinks")]
    Routes(#[source] crate::sys::netlink::NetlinkError),
    #[error("no interface given (--iface) and no default route to find an uplink from")]
    NoUplink,
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Locked(#[from] state::StateError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    HostCgroup(#[from] host_local::SockError),
    #[error(transparent)]
    Api(ApiError),
    #[error("docker_socket")]
    DockerSocket(#[source] ApiError),
    #[error(transparent)]
    Cluster(#[from] cluster::StartError),
    #[error("metrics_address {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The agent, configured; [`Agent::run`] runs it until a signal stops it.
pub struct Agent {
    config: AgentConfig,
}

/// At most one log line per full map or resource drop reason in this
/// time (the tick may be every second).
const LIMIT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What the agent attached itself, so it detaches exactly that on its way
/// out (what it adopted stays, as does everything pinned for the
/// datapath).
type Attached = Vec<(String, Direction)>;

impl Agent {
    pub fn new(config: AgentConfig) -> Agent {
        Agent { config }
    }

    fn pins(&self) -> &PinRoot {
        &self.config.paths.pins
    }

    fn state_dir(&self) -> &Path {
        &self.config.paths.state_dir
    }

    /// Runs until SIGINT or SIGTERM, then stops every task and detaches
    /// what this agent attached. A start-up step that fails undoes the
    /// attachments made before it.
    pub async fn run(self) -> Result<(), AgentError> {
        // First: a second agent on this state must not touch the sockets,
        // pins or state of the one running.
        let _lock = state::AgentLock::take(self.state_dir())?;
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        // Handlers first: a stop requested during start-up is then seen once
        // start-up is done, instead of killing the agent half-way through it.
        tasks.spawn(stop_on_signal(stop.clone())?);
        let ifaces = if self.config.ifaces.is_empty() {
            default_route_ifaces().await?
        } else {
            self.config.ifaces.clone()
        };
        // The maps first, at the configured sizes: every later load (the
        // manager's, the CLI's) takes the sizes this one records.
        let mut dp = Dataplane::load_sized(self.pins(), &self.config.nat, &self.config.maps)?;
        let (cache, bridge) = self.open_networks(&ifaces).await?;
        if ifaces.is_empty() {
            return Err(AgentError::NoUplink);
        }
        for i in &ifaces {
            check_iface(i)?;
        }
        spawn_ebpf_log(&mut dp, &mut tasks, stop.clone());
        let attached = self.attach(&mut dp, &ifaces)?;
        if let Some(b) = bridge {
            print_welcome(&b);
        }
        let cluster = match &self.config.cluster {
            Some(cfg) => match cluster::start(cfg).await {
                Ok(c) => Some(c),
                Err(e) => {
                    detach_all(self.pins(), &attached);
                    return Err(e.into());
                }
            },
            None => None,
        };
        if let Err(e) = self.serve(&mut tasks, &stop, &cache, cluster).await {
            stop.cancel();
            tasks.shutdown().await;
            self.remove_sockets();
            detach_all(self.pins(), &attached);
            return Err(e);
        }
        self.tick(&stop).await;
        info!("stopping: detaching what this agent attached");
        stop.cancel();
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                warn!("agent task: {e}");
            }
        }
        self.remove_sockets();
        detach_all(self.pins(), &attached);
        Ok(())
    }

    /// Networks first: after a reboot the bridges are gone and the state
    /// says what to restore. Returns the cache the API and Docker's driver
    /// share (a request costs what it changes, not a reload of the state
    /// and the eBPF object), and the default network if there is one.
    async fn open_networks(
        &self,
        ifaces: &[String],
    ) -> Result<(Arc<Mutex<Cache>>, Option<Network>), AgentError> {
        let mut manager = Manager::open(self.state_dir(), self.pins()).await?;
        manager.set_nat_config(self.config.nat);
        for c in manager.reconcile().await? {
            info!("reconciled: {c}");
        }
        if let Some(subnet6) = self.config.default_bridge_ipv6 {
            for c in manager.default_bridge_ipv6(subnet6).await? {
                info!("default bridge: {c}");
            }
        }
        // A first start makes the interfaces it watches the uplinks, so the
        // default network has egress (Docker masquerades out of any
        // interface).
        if manager.state().uplinks.is_empty() {
            for iface in ifaces {
                manager.uplink_add(iface).await?;
                info!(
                    iface,
                    "uplink added: published ports and masquerade through it"
                );
            }
        }
        let bridge = manager.network("bridge").ok().cloned();
        let cache = Arc::new(Mutex::new(Cache::default()));
        // Verified now rather than on the first container's connect.
        manager.preload_endpoint_program()?;
        manager.keep(&cache); // releases the state lock for CLI calls
        Ok((cache, bridge))
    }

    /// Attaches the statistics program to every uplink and the host-local
    /// hooks; all or nothing.
    fn attach(&self, dp: &mut Dataplane, ifaces: &[String]) -> Result<Attached, AgentError> {
        let pins = self.pins();
        let mut attached = Vec::new();
        for iface in ifaces {
            for dir in [Direction::Ingress, Direction::Egress] {
                match stats::attach(dp, iface, dir) {
                    Ok(pin) => {
                        info!(iface, direction = dir.name(), pin = %pin.display(), "attached {}", stats::PROGRAM);
                        attached.push((iface.clone(), dir));
                    }
                    Err(LoadError::AlreadyAttached { path, .. }) => {
                        info!(iface, direction = dir.name(), pin = %path.display(), "already attached; adopting");
                    }
                    Err(e) => {
                        detach_all(pins, &attached);
                        return Err(e.into());
                    }
                }
            }
        }
        if let Some(cg) = &self.config.host_cgroup {
            match host_local::attach(dp, pins, cg) {
                Ok(_) => info!(cgroup = %cg.display(), "host-local published ports on"),
                Err(host_local::SockError::AlreadyAttached { .. }) => {
                    info!(cgroup = %cg.display(), "host-local published ports already on; adopting")
                }
                Err(e) => {
                    detach_all(pins, &attached);
                    return Err(e.into());
                }
            }
        }
        Ok(attached)
    }

    /// The API, then Docker's driver and the metrics, each a task that
    /// ends when `stop` is cancelled.
    async fn serve(
        &self,
        tasks: &mut JoinSet<()>,
        stop: &CancellationToken,
        cache: &Arc<Mutex<Cache>>,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<(), AgentError> {
        let ctx = api::Context {
            state_dir: self.state_dir().to_owned(),
            pins: self.pins().clone(),
            nat: self.config.nat,
            server: "agent",
            cache: Some(cache.clone()),
            cluster: cluster.clone(),
        };
        if let Some(c) = cluster.clone() {
            let id = c.identity();
            info!(host = %id.host_id, vtep = %id.vtep, mtu = id.mtu, "cluster store: overlay networks on");
            let sync = cluster::sync::SyncContext {
                state_dir: self.state_dir().to_owned(),
                pins: self.pins().clone(),
                nat: self.config.nat,
                cache: cache.clone(),
            };
            tasks.spawn(cluster::sync::run(c, sync, stop.clone()));
        }
        // Bound before "agent running" is logged: whoever waits for that
        // line (tests, scripts) can connect at once.
        let socket = &self.config.paths.socket;
        let listener = api::bind(socket).map_err(AgentError::Api)?;
        info!(bpffs = %self.pins().path().display(), state = %self.state_dir().display(), "agent running; counters with `dataplane stats show`, Ctrl-C to stop");
        let max = self.config.max_connections;
        tasks.spawn(api::serve_with(
            listener,
            ctx.clone(),
            max,
            stop.clone().cancelled_owned(),
        ));
        info!(socket = %socket.display(), "API listening");
        if let Some(path) = &self.config.docker_socket {
            let listener = api::bind(path).map_err(AgentError::DockerSocket)?;
            info!(socket = %path.display(), "Docker network driver listening (docker network create -d {})",
                path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default());
            tasks.spawn(docker::serve_with(
                listener,
                ctx,
                max,
                stop.clone().cancelled_owned(),
            ));
        }
        if let Some(settings) = &self.config.dns {
            // After the networks are restored (open_networks), so every
            // gateway it listens on exists; names come from the state.
            tasks.spawn(dns::serve(
                settings.clone(),
                self.state_dir().to_owned(),
                Some(cache.clone()),
                stop.clone(),
            ));
        }
        if let Some(addr) = self.config.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Metrics { addr, source })?;
            info!(%addr, "Prometheus metrics on /metrics");
            let dir = self.state_dir().to_owned();
            let state = move || -> Result<state::State, String> {
                let mut store = state::StateStore::open(&dir).map_err(|e| format!("{e:#}"))?;
                Ok(store
                    .load()
                    .map_err(|e| format!("{e:#}"))?
                    .unwrap_or_default())
            };
            let serving = metrics::serve_with(
                listener,
                self.pins().clone(),
                state,
                cluster,
                max,
                stop.clone().cancelled_owned(),
            );
            tasks.spawn(async move {
                if let Err(e) = serving.await {
                    warn!("metrics: {:#}", anyhow::Error::from(e));
                }
            });
        }
        Ok(())
    }

    /// Until `stop`: every interval, log the counters, collect idle
    /// conntrack entries and warn about full maps and resource drops. The
    /// map walks run on a blocking thread: the runtime has one thread, and
    /// a full conntrack table takes long to walk, which would stall every
    /// request (`status` too) meanwhile.
    async fn tick(&self, stop: &CancellationToken) {
        let pins = self.pins();
        let mut tick = tokio::time::interval(self.config.interval);
        // A GC longer than the interval is not followed by a burst of them.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut memory = limits::DropMemory::default();
        let mut rate = limits::RateLimit::new(LIMIT_LOG_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (p, timeouts, mut mem) = (pins.clone(), self.config.timeouts, memory.clone());
            // At the lowest priority: the walks must not take CPU from the
            // traffic (sys::sched).
            let walked = tokio::task::spawn_blocking(move || {
                crate::sys::sched::in_background(|| {
                    let gc = conntrack::gc_with(&p, &timeouts, conntrack::Pairs::WhenFull);
                    // The tables the GC walked are not walked again.
                    let known = gc.as_ref().map(|r| r.counts()).unwrap_or_default();
                    let known: Vec<(&str, usize)> = known
                        .into_iter()
                        .filter(|(name, _)| !name.is_empty())
                        .collect();
                    let report = limits::read_known(&p, &mut mem, &known);
                    (gc, report, mem)
                })
            });
            let (gc, report) = tokio::select! {
                () = stop.cancelled() => break,
                done = walked => match done {
                    Ok((gc, report, mem)) => {
                        memory = mem;
                        (gc, report)
                    }
                    Err(e) => {
                        warn!("conntrack gc task: {e}");
                        continue;
                    }
                },
            };
            match report {
                Ok(r) => {
                    let now = std::time::Instant::now();
                    for w in &r.warnings {
                        if rate.allow(&w.subject, now) {
                            warn!("limits: {w}");
                        }
                    }
                }
                Err(e) => warn!("limits: {:#}", anyhow::Error::from(e)),
            }
            match gc {
                Ok(r) => {
                    if r.removed > 0 {
                        info!(scanned = r.scanned, removed = r.removed, "conntrack gc");
                    }
                    if r.unpaired > 0 && rate.allow("unpaired", std::time::Instant::now()) {
                        warn!(
                            unpaired = r.unpaired,
                            "limits: conntrack entries without their pair: a full table \
                             evicted live flows (`dataplane status` shows the fill)"
                        );
                    }
                }
                Err(e) => warn!("conntrack gc: {:#}", anyhow::Error::from(e)),
            }
            match stats::read(pins) {
                Ok(snap) => {
                    let line: Vec<String> = snap
                        .protocols
                        .iter()
                        .filter(|(_, c)| c.packets > 0)
                        .map(|(n, c)| format!("{n}={}/{}B", c.packets, c.bytes))
                        .collect();
                    info!(counters = %line.join(" "), "stats");
                }
                Err(e) => warn!("reading counters: {:#}", anyhow::Error::from(e)),
            }
        }
    }

    /// The socket files, which outlive their listeners.
    fn remove_sockets(&self) {
        let sockets: [Option<&PathBuf>; 2] = [
            Some(&self.config.paths.socket),
            self.config.docker_socket.as_ref(),
        ];
        for path in sockets.into_iter().flatten() {
            if let Err(e) = std::fs::remove_file(path) {
                warn!("removing {}: {e}", path.display());
            }
        }
    }
}

/// A task that cancels `stop` on SIGINT or SIGTERM (or ends with it). The
/// handlers are installed before this returns.
fn stop_on_signal(
    stop: CancellationToken,
) -> Result<impl std::future::Future<Output = ()>, AgentError> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| AgentError::Signal("SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| AgentError::Signal("SIGINT", e))?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => stop.cancel(),
            _ = term.recv() => stop.cancel(),
            () = stop.cancelled() => {}
        }
    })
}

/// The programs' own log lines (aya-log, from the pinned AYA_LOGS ring
/// buffer every instance shares) join the agent's log.
fn spawn_ebpf_log(dp: &mut Dataplane, tasks: &mut JoinSet<()>, stop: CancellationToken) {
    let logger = match aya_log::EbpfLogger::init(dp.ebpf_mut()) {
        Ok(logger) => logger,
        Err(e) => return warn!("eBPF log: {e}"),
    };
    // SAFETY: the logger owns its ring buffer's fd, which stays that one
    // open fd for as long as the AsyncFd owns the logger.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match fd {
        Ok(fd) => fd,
        Err(e) => return warn!("eBPF log: {e}"),
    };
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                ready = fd.readable_mut() => match ready {
                    Ok(mut ready) => {
                        ready.get_inner_mut().flush();
                        ready.clear_ready();
                    }
                    Err(_) => break,
                },
            }
        }
    });
}

fn print_welcome(b: &Network) {
    let subnet = b.subnet.map(|s| s.to_string()).unwrap_or_default();
    eprintln!(
        "\nThe default network `bridge` ({subnet}, device {}) is ready. Try:\n  \
         ip netns add c1\n  \
         dataplane connect bridge c1 -p 8080:80\n  \
         ip netns exec c1 python3 -m http.server 80 &\n  \
         curl http://127.0.0.1:8080/\n  \
         dataplane nat ls; dataplane conntrack ls\n",
        driver::for_network(b).bridge().unwrap_or_default()
    );
}

/// Interfaces that carry an IPv4 default route.
async fn default_route_ifaces() -> Result<Vec<String>, AgentError> {
    crate::sys::netlink::Netlink::connect(None)
        .await
        .map_err(AgentError::Routes)?
        .default_route_ifaces()
        .await
        .map_err(AgentError::Routes)
}

/// Best-effort: reports every failure and carries on.
fn detach_all(pins: &PinRoot, attached: &[(String, Direction)]) {
    for (iface, dir) in attached {
        if let Err(e) = detach_tc(pins, stats::PROGRAM, iface, *dir) {
            warn!("{:#}", anyhow::Error::from(e));
        }
    }
}
