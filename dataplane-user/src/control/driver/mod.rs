//! The network drivers: what differs between a bridge, a macvlan, an
//! overlay, the `host` and the `none` network ([`NetworkDriver`]), one file per driver,
//! and the one place a network's driver is chosen ([`for_network`]).
//!
//! Drivers act on the kernel only through [`Host`], so the manager's logic
//! runs against a fake host in tests. Set-up that fails half-way removes
//! what it created; teardown is best effort and returns every error instead
//! of stopping at the first.

use std::future::Future;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use super::{
    host::Host,
    model::{Attachment, DriverConfig, DriverKind, Network},
};

mod bridge;
mod host;
mod macvlan;
mod null;
mod overlay;

pub use bridge::Bridge;
pub use host::HostNet;
pub use macvlan::Macvlan;
pub use null::Null;
pub use overlay::Overlay;

/// The kernel side the drivers ask for is the host's (`control::host`).
pub use super::host::{
    attach_macvlan, attach_veth, ensure_bridge, host_veth_name, loopback_up, teardown_endpoint,
    BridgeError, DriverError, EndpointPlan, HostEndPrograms,
};

/// How the fast path treats a network's subnet (`DP_SUBNETS`): only
/// networks whose traffic passes the host's routing (bridges) have one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetPolicy {
    /// The network's subnets, one per family it has.
    pub subnet: Option<Ipv4Net>,
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// Traffic leaving through an uplink is masqueraded (never for an
    /// internal network).
    pub masquerade: bool,
    pub icc: bool,
    /// Gateway mode `nat`: direct access from outside is dropped.
    pub protected: bool,
    /// Gateway mode `routed`: direct access only to published container
    /// ports and ICMP.
    pub routed: bool,
}

/// What differs per driver. Kernel work goes through `H: Host`.
pub trait NetworkDriver {
    fn kind(&self) -> DriverKind;

    /// The bridge device the network's veths hang on.
    fn bridge(&self) -> Option<&str> {
        None
    }

    /// Whether an endpoint gets a link and an address of its own (and so
    /// takes `--ip`, `--mac`, `--publish` and CNI attachments).
    fn has_links(&self) -> bool;

    /// The network's subnet as the fast path sees it, if it routes it.
    fn subnet_policy(&self, _net: &Network) -> Option<SubnetPolicy> {
        None
    }

    /// Whether the network needs IPv4 forwarding in the host namespace.
    fn needs_forwarding(&self, _net: &Network) -> bool {
        false
    }

    /// The driver's options in Docker's names (`network inspect`); none
    /// unless the driver has some.
    fn docker_options(&self, _net: &Network) -> Map<String, Value> {
        Map::new()
    }

    /// Makes (or checks) the network's kernel side at `network create`;
    /// returns what it changed. A driver with no kernel side of its own
    /// (`host`, `null`) makes nothing.
    fn create<H: Host>(
        &self,
        _host: &H,
        _net: &Network,
    ) -> impl Future<Output = Result<Vec<String>, DriverError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Makes the kernel side match after a restart, adopting what the
    /// dataplane made before; returns what it changed.
    fn restore<H: Host>(
        &self,
        _host: &H,
        _net: &Network,
    ) -> impl Future<Output = Result<Vec<String>, DriverError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Removes the network's kernel side. Best effort: every failure is
    /// returned, and what is already gone is not one.
    fn remove<H: Host>(&self, _host: &H) -> impl Future<Output = Vec<String>> + Send {
        async { Vec::new() }
    }

    /// Creates an endpoint's links and returns its attachment record.
    fn setup_endpoint<H: Host>(
        &self,
        host: &H,
        plan: &EndpointPlan<'_>,
    ) -> impl Future<Output = Result<Attachment, DriverError>> + Send;
}

/// The driver of one network, with its settings.
pub enum Driver<'a> {
    Bridge(Bridge<'a>),
    Macvlan(Macvlan<'a>),
    Host(HostNet),
    Null(Null),
    Overlay(Overlay<'a>),
}

/// The driver of `net`: the one place the choice is made.
pub fn for_network(net: &Network) -> Driver<'_> {
    match &net.driver {
        DriverConfig::Bridge(cfg) => Driver::Bridge(Bridge(cfg)),
        DriverConfig::Macvlan(cfg) => Driver::Macvlan(Macvlan(cfg)),
        DriverConfig::Host => Driver::Host(HostNet),
        DriverConfig::Null => Driver::Null(Null),
        DriverConfig::Overlay(cfg) => Driver::Overlay(Overlay(cfg)),
    }
}

/// Runs `$e` with `$d` bound to the driver inside `$self`.
macro_rules! each {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            Driver::Bridge($d) => $e,
            Driver::Macvlan($d) => $e,
            Driver::Host($d) => $e,
            Driver::Null($d) => $e,
            Driver::Overlay($d) => $e,
        }
    };
}

impl NetworkDriver for Driver<'_> {
    fn kind(&self) -> DriverKind {
        each!(self, d => d.kind())
    }
    fn bridge(&self) -> Option<&str> {
        each!(self, d => d.bridge())
    }
    fn has_links(&self) -> bool {
        each!(self, d => d.has_links())
    }
    fn subnet_policy(&self, net: &Network) -> Option<SubnetPolicy> {
        each!(self, d => d.subnet_policy(net))
    }
    fn needs_forwarding(&self, net: &Network) -> bool {
        each!(self, d => d.needs_forwarding(net))
    }
    fn docker_options(&self, net: &Network) -> Map<String, Value> {
        each!(self, d => d.docker_options(net))
    }
    async fn create<H: Host>(&self, host: &H, net: &Network) -> Result<Vec<String>, DriverError> {
        each!(self, d => d.create(host, net).await)
    }
    async fn restore<H: Host>(&self, host: &H, net: &Network) -> Result<Vec<String>, DriverError> {
        each!(self, d => d.restore(host, net).await)
    }
    async fn remove<H: Host>(&self, host: &H) -> Vec<String> {
        each!(self, d => d.remove(host).await)
    }
    async fn setup_endpoint<H: Host>(
        &self,
        host: &H,
        plan: &EndpointPlan<'_>,
    ) -> Result<Attachment, DriverError> {
        each!(self, d => d.setup_endpoint(host, plan).await)
    }
}

/// Deletes the host link named `name`; gone already is not an error.
pub(crate) async fn delete_link_named<H: Host>(host: &H, name: &str) -> Vec<String> {
    match host.link_by_name(name).await {
        Ok(Some(l)) => match host.delete_link(l.index).await {
            Ok(()) => Vec::new(),
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => vec![e.to_string()],
        },
        Ok(None) => Vec::new(),
        Err(e) => vec![e.to_string()],
    }
}

/// `com.docker.network.driver.mtu`, which every driver with links shows.
fn mtu_option(net: &Network, o: &mut Map<String, Value>) {
    o.insert(
        "com.docker.network.driver.mtu".into(),
        Value::String(net.mtu.to_string()),
    );
}
