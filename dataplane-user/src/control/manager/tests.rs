//! The manager against a [`RecordingDatapath`] and a [`FakeHost`]: what a
//! user would check after each command (the state, what the datapath was
//! asked to hold, the error naming the field and value), without root.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use dataplane_common::nat::PortKey;

use super::{
    docker_network_name, docker_veth_names, ConnectArgs, ConnectRequest, ConnectTo,
    DockerPortBinding, Manager, NetworkError, PublishSpecs, EPHEMERAL_PORTS,
};
use crate::{
    control::{
        cni::{AddArgs, AttachmentKey, CheckArgs, GcArgs, NetworkSpec},
        filter_rules::FilterArgs,
        host::FakeHost,
        model::{Attachment, CreateArgs, Endpoint, Network},
        ports::{Proto, PublishSpec},
        state::State,
    },
    datapath::RecordingDatapath,
};

type M = Manager<RecordingDatapath, FakeHost>;

mod delta;
mod overlay;
mod v6;

/// A state directory of its own, removed at the end of the test.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "dataplane-manager-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(dir: &Dir) -> M {
    open_on(dir, FakeHost::new()).await
}

async fn open_on(dir: &Dir, host: FakeHost) -> M {
    Manager::open_with(&dir.0, RecordingDatapath::default(), host)
        .await
        .expect("open")
}

fn create_args(name: &str, subnet: Option<&str>) -> CreateArgs {
    CreateArgs {
        name: name.into(),
        driver: "bridge".into(),
        subnet: subnet.map(Into::into).into_iter().collect(),
        ..CreateArgs::default()
    }
}

async fn create(m: &mut M, name: &str, subnet: Option<&str>) -> Result<Network, NetworkError> {
    m.create(create_args(name, subnet).parse().expect("parse"))
        .await
}

fn args(network: &str, netns: &str) -> ConnectArgs {
    ConnectArgs {
        network: network.into(),
        netns: Some(netns.into()),
        ..ConnectArgs::default()
    }
}

/// A manager with network `n1` (172.18.0.0/16) and namespaces c1, c2.
async fn with_net(dir: &Dir) -> M {
    let m = open(dir).await;
    m.host().add_netns("c1");
    m.host().add_netns("c2");
    let mut m = m;
    create(&mut m, "n1", Some("172.18.0.0/16"))
        .await
        .expect("create n1");
    m
}

async fn connect(m: &mut M, a: ConnectArgs) -> Endpoint {
    m.connect(&a).await.expect("connect")
}

/// What a refusal must leave alone: the state, the datapath's calls, the
/// host's links.
type Snapshot = (State, Vec<String>, Vec<String>);

fn snapshot(m: &M) -> Snapshot {
    (
        m.state().clone(),
        m.datapath().calls.clone(),
        m.host()
            .get()
            .links
            .values()
            .map(|l| l.name.clone())
            .collect(),
    )
}

/// Asserts `r` failed with a message containing every one of `words`, and
/// that nothing changed since `before`.
fn refused<T: std::fmt::Debug>(
    m: &M,
    before: &Snapshot,
    r: Result<T, NetworkError>,
    words: &[&str],
) {
    let e = r.expect_err("refused").to_string();
    for w in words {
        assert!(e.contains(w), "{e:?} should name {w:?}");
    }
    assert_eq!(&snapshot(m), before, "a refused request changed something");
}

fn port_key(port: u16) -> PortKey {
    PortKey {
        addr: [0; 4],
        port: port.to_be_bytes(),
        proto: 6,
        _pad: 0,
    }
}

/// The bridge device of a bridge network.
fn bridge_of(net: &Network) -> String {
    let driver = crate::control::driver::for_network(net);
    crate::control::driver::NetworkDriver::bridge(&driver)
        .expect("a bridge network")
        .to_owned()
}

// ---- networks ----

#[tokio::test]
async fn first_open_creates_the_predefined_networks() {
    let dir = Dir::new();
    let m = open(&dir).await;
    let names: Vec<&str> = m.state().networks.keys().map(String::as_str).collect();
    assert_eq!(names, ["bridge", "host", "none"]);
    let bridge = m.network("bridge").unwrap();
    assert_eq!(bridge.subnet.unwrap().to_string(), "172.17.0.0/16");
    let br = bridge_of(bridge);
    assert!(m.host().get().by_name(&br).is_some(), "{br} made");
    assert!(m.host().get().forwarding);
    assert_eq!(m.datapath().count("apply_nat"), 1);
    assert_eq!(m.datapath().nat.subnets.len(), 1);
    assert!(dir.0.join("state.json").exists());
}

#[tokio::test]
async fn create_picks_the_next_free_subnet_and_makes_the_bridge() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    let net = create(&mut m, "n1", None).await.unwrap();
    assert_eq!(net.subnet.unwrap().to_string(), "172.18.0.0/16");
    assert_eq!(net.gateway, Some(Ipv4Addr::new(172, 18, 0, 1)));
    let br = bridge_of(&net);
    assert_eq!(br, format!("br-{}", &net.id[..12]));
    let h = m.host().get();
    let link = h.by_name(&br).expect("bridge made");
    assert!(h
        .addrs
        .contains(&(link.index, Ipv4Addr::new(172, 18, 0, 1), 16)));
    drop(h);
    assert_eq!(m.datapath().nat.subnets.len(), 2);
    assert_eq!(m.network(&net.id[..6]).unwrap().name, "n1", "by id prefix");
}

#[tokio::test]
async fn create_refuses_a_duplicate_name() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let r = create(&mut m, "n1", None).await;
    refused(&m, &before, r, &["network n1", "already exists"]);
}

#[tokio::test]
async fn create_refuses_an_overlapping_subnet() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let r = create(&mut m, "n2", Some("172.18.5.0/24")).await;
    refused(&m, &before, r, &["172.18.5.0/24", "network n1"]);
}

#[tokio::test]
async fn create_refuses_the_subnet_of_an_uplink() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    let before = snapshot(&m);
    let r = create(&mut m, "n2", Some("10.0.0.0/16")).await;
    refused(&m, &before, r, &["--subnet 10.0.0.0/16", "uplink eth0"]);
}

#[test]
fn create_refuses_a_reserved_subnet_at_the_boundary() {
    let e = create_args("n2", Some("127.0.0.0/16"))
        .parse()
        .unwrap_err()
        .to_string();
    assert!(e.contains("--subnet 127.0.0.0/16"), "{e}");
}

#[tokio::test]
async fn create_refuses_a_bridge_name_in_use() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().get().add_link("mybr", Some("veth"), None);
    let mut a = create_args("n2", None);
    a.options = vec!["com.docker.network.bridge.name=mybr".into()];
    let before = snapshot(&m);
    let r = m.create(a.parse().unwrap()).await;
    refused(&m, &before, r, &["mybr", "veth"]);
}

#[tokio::test]
async fn rm_refuses_a_predefined_network() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    let before = snapshot(&m);
    let r = m.remove(&["bridge".into()], false).await;
    refused(&m, &before, r, &["network bridge", "pre-defined"]);
}

#[tokio::test]
async fn rm_refuses_an_unknown_network() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    let before = snapshot(&m);
    let r = m.remove(&["nope".into()], false).await;
    refused(&m, &before, r, &["network nope", "no such network"]);
}

#[tokio::test]
async fn rm_refuses_a_network_in_use_without_force() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    connect(&mut m, args("n1", "c1")).await;
    let before = snapshot(&m);
    let r = m.remove(&["n1".into()], false).await;
    refused(
        &m,
        &before,
        r,
        &["network n1", "1 endpoint(s)", "c1", "--force"],
    );
}

#[tokio::test]
async fn rm_force_disconnects_and_removes_the_bridge() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let ep = connect(&mut m, args("n1", "c1")).await;
    let br = bridge_of(m.network("n1").unwrap());
    assert_eq!(m.remove(&["n1".into()], true).await.unwrap(), ["n1"]);
    assert!(!m.state().networks.contains_key("n1"));
    assert!(m.state().endpoints.is_empty());
    assert!(m.host().get().by_name(&br).is_none());
    let Attachment::Veth { host_ifname } = &ep.attachment else {
        panic!("{:?}", ep.attachment)
    };
    assert!(!m.datapath().endpoints.contains(host_ifname));
    assert_eq!(m.datapath().nat.subnets.len(), 1, "only bridge's is left");
}

// ---- connect / disconnect ----

#[tokio::test]
async fn connect_allocates_address_mac_and_interface() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let ep = connect(&mut m, args("n1", "c1")).await;
    assert_eq!(ep.name, "c1");
    assert_eq!(ep.ipv4, Some(Ipv4Addr::new(172, 18, 0, 2)));
    assert_eq!(
        ep.mac.map(|m| m.to_string()).as_deref(),
        Some("02:42:ac:12:00:02")
    );
    assert_eq!(ep.ifname.as_deref(), Some("eth0"));
    assert_eq!(ep.netns, PathBuf::from("/var/run/netns/c1"));
    let Attachment::Veth { host_ifname } = &ep.attachment else {
        panic!("{:?}", ep.attachment)
    };
    assert!(m.datapath().endpoints.contains(host_ifname));
    assert!(m.host().get().by_name(host_ifname).is_some());
    assert_eq!(m.state().endpoints.get(&ep.id), Some(&ep));
    // A second one gets the next address.
    let ep2 = connect(&mut m, args("n1", "c2")).await;
    assert_eq!(ep2.ipv4, Some(Ipv4Addr::new(172, 18, 0, 3)));
}

#[tokio::test]
async fn connect_takes_the_given_ip_mac_name_and_ifname() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut a = args("n1", "c1");
    a.ip = Some("172.18.9.9".into());
    a.mac = Some("02:00:00:00:00:09".into());
    a.name = Some("web".into());
    a.ifname = Some("net1".into());
    let ep = connect(&mut m, a).await;
    assert_eq!(ep.ipv4, Some(Ipv4Addr::new(172, 18, 9, 9)));
    assert_eq!(
        ep.mac.map(|m| m.to_string()).as_deref(),
        Some("02:00:00:00:00:09")
    );
    assert_eq!(ep.name, "web");
    assert_eq!(ep.ifname.as_deref(), Some("net1"));
}

#[tokio::test]
async fn connect_refuses_an_unknown_network() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let r = m.connect(&args("nope", "c1")).await;
    refused(&m, &before, r, &["network nope"]);
}

#[tokio::test]
async fn connect_refuses_an_unknown_netns() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let r = m.connect(&args("n1", "ghost")).await;
    refused(
        &m,
        &before,
        r,
        &["netns ghost", "no such network namespace"],
    );
}

#[tokio::test]
async fn connect_refuses_without_a_netns() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let mut a = args("n1", "c1");
    a.netns = None;
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["network n1", "NETNS is required"]);
}

#[tokio::test]
async fn connect_refuses_a_duplicate_endpoint_name() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    connect(&mut m, args("n1", "c1")).await;
    let before = snapshot(&m);
    let mut a = args("n1", "c2");
    a.name = Some("c1".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["network n1", "endpoint named c1"]);
}

#[tokio::test]
async fn connect_refuses_a_namespace_already_connected() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    connect(&mut m, args("n1", "c1")).await;
    // The same namespace by another path.
    m.host().alias_netns(
        &PathBuf::from("/var/run/netns/c1"),
        &PathBuf::from("/proc/42/ns/net"),
    );
    let before = snapshot(&m);
    let r = m.connect(&args("n1", "/proc/42/ns/net")).await;
    refused(
        &m,
        &before,
        r,
        &["/proc/42/ns/net", "already connected", "c1"],
    );
}

#[tokio::test]
async fn connect_refuses_a_bad_ifname_and_a_bad_name() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let mut a = args("n1", "c1");
    a.ifname = Some("a/b".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["--ifname a/b"]);
    let mut a = args("n1", "c1");
    a.name = Some("-x".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["--name \"-x\""]);
}

#[tokio::test]
async fn connect_refuses_an_ifname_taken_in_the_namespace() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let mut a = args("n1", "c1");
    a.ifname = Some("lo".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["--ifname lo", "c1"]);
}

#[tokio::test]
async fn connect_refuses_an_ip_outside_the_subnet() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let mut a = args("n1", "c1");
    a.ip = Some("10.9.9.9".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["--ip 10.9.9.9", "172.18.0.0/16"]);
    let mut a = args("n1", "c1");
    a.ip = Some("not-an-ip".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["--ip not-an-ip"]);
}

#[tokio::test]
async fn connect_refuses_an_ip_taken() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    connect(&mut m, args("n1", "c1")).await;
    let before = snapshot(&m);
    let mut a = args("n1", "c2");
    a.ip = Some("172.18.0.2".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["--ip 172.18.0.2", "endpoint c1"]);
    let mut a = args("n1", "c2");
    a.ip = Some("172.18.0.1".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["--ip 172.18.0.1", "the gateway"]);
}

#[tokio::test]
async fn connect_refuses_a_bad_mac() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let mut a = args("n1", "c1");
    a.mac = Some("zz:00".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["zz:00"]);
}

#[tokio::test]
async fn connect_none_refuses_an_ip_and_makes_loopback_only() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let mut a = args("none", "c1");
    a.ip = Some("172.18.0.5".into());
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["none", "--ip", "null"]);
    let ep = connect(&mut m, args("none", "c1")).await;
    assert_eq!(ep.attachment, Attachment::Loopback);
    assert_eq!(ep.ipv4, None);
}

#[tokio::test]
async fn connect_host_makes_nothing() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let links = snapshot(&m).2;
    let ep = connect(&mut m, args("host", "c1")).await;
    assert_eq!(ep.attachment, Attachment::Host);
    assert_eq!(snapshot(&m).2, links, "no host link made");
    assert_eq!(m.host().get().netns[&ep.netns].names(), ["lo"]);
}

/// A macvlan network: its parent checked at create, no device of its own,
/// an endpoint is a child of the parent inside the namespace, and nothing
/// of it reaches the NAT maps.
#[tokio::test]
async fn macvlan_networks_check_the_parent_and_attach_children() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut a = create_args("mv", Some("10.9.0.0/24"));
    a.driver = "macvlan".into();
    a.options = vec!["parent=eth9".into()];
    let before = snapshot(&m);
    let r = m.create(a.parse().unwrap()).await;
    refused(&m, &before, r, &["parent eth9", "network mv"]);
    a.options = vec!["parent=eth0".into(), "macvlan_mode=private".into()];
    let net = m.create(a.parse().unwrap()).await.unwrap();
    assert_eq!(
        net.driver,
        crate::control::model::DriverConfig::Macvlan(crate::control::model::MacvlanConfig {
            parent: "eth0".into(),
            mode: crate::control::model::MacvlanMode::Private,
        })
    );
    assert_eq!(snapshot(&m).2, before.2, "no device made");
    let ep = connect(&mut m, args("mv", "c1")).await;
    assert_eq!(ep.attachment, Attachment::Macvlan);
    assert_eq!(ep.ipv4, Some(Ipv4Addr::new(10, 9, 0, 2)));
    assert_eq!(m.host().get().netns[&ep.netns].names(), ["lo", "eth0"]);
    assert_eq!(m.datapath().nat.subnets.len(), 2, "bridge and n1 only");
    let shown = crate::control::inspect::network_json(m.state(), &net);
    assert_eq!(shown["Driver"], "macvlan");
    assert_eq!(shown["Options"]["parent"], "eth0");
    assert_eq!(shown["Options"]["macvlan_mode"], "private");
}

#[tokio::test]
async fn connect_container_shares_the_namespace_of_an_endpoint() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let owner = connect(&mut m, args("n1", "c1")).await;
    let shared = connect(
        &mut m,
        ConnectArgs {
            network: "container:c1".into(),
            ..ConnectArgs::default()
        },
    )
    .await;
    assert_eq!(shared.name, "c1-shared");
    assert_eq!(shared.netns, owner.netns);
    assert_eq!(shared.ipv4, owner.ipv4);
    assert_eq!(
        shared.attachment,
        Attachment::Container {
            endpoint: owner.id.clone()
        }
    );
    // Disconnecting the owner takes the sharer with it.
    m.disconnect("n1", "c1").await.unwrap();
    assert!(m.state().endpoints.is_empty());
}

#[tokio::test]
async fn connect_container_refuses_an_unknown_endpoint_and_an_ip() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    connect(&mut m, args("n1", "c1")).await;
    let before = snapshot(&m);
    let r = m
        .connect(&ConnectArgs {
            network: "container:ghost".into(),
            ..ConnectArgs::default()
        })
        .await;
    refused(&m, &before, r, &["container:ghost"]);
    let r = m
        .connect(&ConnectArgs {
            network: "container:c1".into(),
            ip: Some("172.18.0.9".into()),
            ..ConnectArgs::default()
        })
        .await;
    refused(&m, &before, r, &["container:c1", "--ip"]);
}

#[tokio::test]
async fn connect_undoes_the_veth_when_the_datapath_refuses() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    m.datapath_mut().fail.insert("attach_endpoint");
    let (state, _, links) = snapshot(&m);
    let r = m.connect(&args("n1", "c1")).await;
    let e = crate::sys::error_chain(&r.unwrap_err());
    assert!(e.contains("attach_endpoint: injected failure"), "{e}");
    let (state2, _, links2) = snapshot(&m);
    assert_eq!(state, state2);
    assert_eq!(links, links2, "the veth is gone again");
}

#[tokio::test]
async fn disconnect_removes_the_endpoint_and_purges_its_flows() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut a = args("n1", "c1");
    a.publish = vec!["8080:80".parse().unwrap()];
    let ep = connect(&mut m, a).await;
    let Attachment::Veth { host_ifname } = &ep.attachment else {
        panic!("{:?}", ep.attachment)
    };
    // By namespace path.
    m.disconnect("n1", "/var/run/netns/c1").await.unwrap();
    assert!(m.state().endpoints.is_empty());
    assert!(m.host().get().by_name(host_ifname).is_none());
    assert!(!m.datapath().endpoints.contains(host_ifname));
    assert!(m.datapath().nat.ports.is_empty());
    assert!(m.datapath().purged.addrs.contains(&[172, 18, 0, 2]));
    assert_eq!(m.datapath().purged.mappings.len(), 1);
}

#[tokio::test]
async fn disconnect_on_a_full_disk_tears_nothing_down() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let ep = connect(&mut m, args("n1", "c1")).await;
    let Attachment::Veth { host_ifname } = &ep.attachment else {
        panic!("{:?}", ep.attachment)
    };
    crate::control::state::fail_writes(Some(0));
    let r = m.disconnect("n1", "c1").await;
    crate::control::state::fail_writes(None);
    let e = r.expect_err("the record cannot be written");
    assert!(e.to_string().contains("state"), "{e}");
    // State and kernel agree: the endpoint is recorded and still there.
    assert!(m.state().endpoints.contains_key(&ep.id));
    assert!(m.host().get().by_name(host_ifname).is_some());
    assert!(m.datapath().endpoints.contains(host_ifname));
    drop(m);
    let mut m = open(&dir).await;
    assert!(
        m.state().endpoints.contains_key(&ep.id),
        "the next start sees it"
    );
    m.disconnect("n1", "c1").await.expect("room again");
    assert!(m.host().get().by_name(host_ifname).is_none());
}

#[tokio::test]
async fn disconnect_refuses_an_unknown_endpoint() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let r = m.disconnect("n1", "ghost").await;
    refused(&m, &before, r, &["network n1", "no endpoint ghost"]);
}

// ---- publish ----

#[tokio::test]
async fn publish_at_connect_and_later_reaches_the_ports_map() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut a = args("n1", "c1");
    a.publish = vec!["8080:80".parse().unwrap()];
    connect(&mut m, a).await;
    let added = m
        .publish_add("n1", "c1", &["9090-9091:90-91/tcp".into()])
        .await
        .unwrap();
    assert_eq!(added.len(), 2);
    let ports = &m.datapath().nat.ports;
    assert_eq!(ports.len(), 3);
    let t = ports.get(&port_key(9091)).expect("9091 published");
    assert_eq!(t.addr, [172, 18, 0, 2]);
    assert_eq!(u16::from_be_bytes(t.port), 91);
    let ep = m.state().endpoints.values().next().unwrap();
    let slots: Vec<u32> = ep.published.iter().map(|p| p.stats_index).collect();
    assert_eq!(slots, [0, 1, 2], "each mapping its own counter slot");
}

#[tokio::test]
async fn publish_refuses_a_port_another_endpoint_publishes() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut a = args("n1", "c1");
    a.publish = vec!["8080:80".parse().unwrap()];
    connect(&mut m, a).await;
    connect(&mut m, args("n1", "c2")).await;
    let before = snapshot(&m);
    let r = m.publish_add("n1", "c2", &["8080:81".into()]).await;
    refused(
        &m,
        &before,
        r,
        &["--publish", "8080", "endpoint c1 on network n1"],
    );
    let mut a = args("n1", "c2");
    a.name = Some("c3".into());
    a.publish = vec!["8080:80".parse().unwrap()];
    m.host().add_netns("c3");
    let before = snapshot(&m);
    let r = m.connect(&args_with(a, "c3")).await;
    refused(&m, &before, r, &["8080", "endpoint c1"]);
}

fn args_with(mut a: ConnectArgs, netns: &str) -> ConnectArgs {
    a.netns = Some(netns.into());
    a
}

#[tokio::test]
async fn publish_refuses_a_conflict_within_one_request() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    connect(&mut m, args("n1", "c1")).await;
    let before = snapshot(&m);
    let r = m
        .publish_add("n1", "c1", &["8080:80".into(), "8080:81".into()])
        .await;
    refused(&m, &before, r, &["8080", "this command"]);
}

#[tokio::test]
async fn publish_refuses_malformed_specs() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    connect(&mut m, args("n1", "c1")).await;
    let before = snapshot(&m);
    for (spec, word) in [
        ("80:80/sctp", "sctp"),
        ("0:80", "\"0\""),
        ("x.y:80:80", "x.y"),
        ("90-80:80", "backwards"),
    ] {
        let r = m.publish_add("n1", "c1", &[spec.into()]).await;
        refused(&m, &before, r, &["--publish", spec, word]);
    }
}

#[tokio::test]
async fn publish_rm_removes_and_refuses_what_is_not_published() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut a = args("n1", "c1");
    a.publish = vec!["8080:80".parse().unwrap(), "8081:81".parse().unwrap()];
    connect(&mut m, a).await;
    let before = snapshot(&m);
    let r = m.publish_rm("n1", "c1", &["8082:82".into()]).await;
    refused(&m, &before, r, &["8082", "endpoint c1 does not publish it"]);
    m.publish_rm("n1", "c1", &["8080:80".into()]).await.unwrap();
    let ports = &m.datapath().nat.ports;
    assert!(!ports.contains_key(&port_key(8080)));
    assert!(ports.contains_key(&port_key(8081)));
    assert_eq!(m.datapath().purged.mappings.len(), 1);
}

#[tokio::test]
async fn publish_refuses_an_unknown_endpoint_and_a_non_veth_one() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    connect(&mut m, args("none", "c1")).await;
    let before = snapshot(&m);
    let r = m.publish_add("n1", "ghost", &["80:80".into()]).await;
    refused(&m, &before, r, &["network n1", "ghost"]);
    let r = m.publish_add("none", "c1", &["80:80".into()]).await;
    refused(&m, &before, r, &["--publish", "null"]);
}

// ---- filters ----

fn drop_from(src: &str) -> crate::control::filter_rules::FilterSpec {
    FilterArgs {
        src: Some(src.into()),
        action: "drop".into(),
        ..FilterArgs::default()
    }
    .parse()
    .unwrap()
}

#[tokio::test]
async fn filter_add_and_rm_reach_the_datapath() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let a = m.filter_add(drop_from("10.1.0.0/16"), false).await.unwrap();
    let b = m.filter_add(drop_from("10.2.0.0/16"), true).await.unwrap();
    assert_eq!((a.id, b.id), (1, 2));
    let ids: Vec<u32> = m.state().filters.iter().map(|r| r.id).collect();
    assert_eq!(ids, [2, 1], "--first goes first");
    assert_eq!(m.datapath().filter_rules, Some(2));
    m.filter_rm(1).await.unwrap();
    assert_eq!(m.datapath().filter_rules, Some(1));
    m.filter_add_many(
        vec![drop_from("10.3.0.0/16"), drop_from("10.4.0.0/16")],
        false,
    )
    .await
    .unwrap();
    m.filter_rm_many(&[4, 2]).await.unwrap();
    let ids: Vec<u32> = m.state().filters.iter().map(|r| r.id).collect();
    assert_eq!(ids, [3], "both gone in one change");
    assert_eq!(m.datapath().filter_rules, Some(1));
}

#[tokio::test]
async fn filter_refuses_an_unknown_id_and_network() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let before = snapshot(&m);
    let r = m.filter_rm(7).await;
    refused(&m, &before, r, &["filter 7", "no such rule"]);
    m.filter_add(drop_from("10.9.0.0/16"), false).await.unwrap();
    let before = snapshot(&m);
    let r = m.filter_rm_many(&[1, 8]).await;
    refused(&m, &before, r, &["filter 8", "no such rule"]);
    let mut spec = drop_from("10.1.0.0/16");
    spec.network = Some("ghost".into());
    let r = m.filter_add(spec.clone(), false).await;
    refused(&m, &before, r, &["network ghost"]);
    let r = m
        .filter_add_many(vec![drop_from("10.0.0.0/8"), spec], false)
        .await;
    refused(&m, &before, r, &["rules[1]"]);
}

// ---- uplinks ----

#[tokio::test]
async fn uplink_add_and_rm_attach_and_detach() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.uplink_add("eth0").await.unwrap();
    assert_eq!(m.state().uplinks, ["eth0"]);
    assert!(m.datapath().uplinks.contains("eth0"));
    assert_eq!(m.datapath().nat.uplinks.len(), 1);
    m.uplink_rm("eth0").await.unwrap();
    assert!(m.state().uplinks.is_empty());
    assert!(m.datapath().uplinks.is_empty());
    assert!(m.datapath().nat.uplinks.is_empty());
}

#[tokio::test]
async fn uplink_refuses_unknown_duplicate_and_not_an_uplink() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    let before = snapshot(&m);
    let r = m.uplink_add("wlan9").await;
    refused(&m, &before, r, &["uplink wlan9", "no such interface"]);
    let r = m.uplink_rm("eth0").await;
    refused(&m, &before, r, &["uplink eth0", "not an uplink"]);
    m.uplink_add("eth0").await.unwrap();
    let before = snapshot(&m);
    let r = m.uplink_add("eth0").await;
    refused(&m, &before, r, &["uplink eth0", "already added"]);
}

// ---- reconcile after a restart ----

/// A manager with a network, an uplink, and endpoint c1 publishing 8080,
/// given back as its host with the state left in `dir`.
async fn populated(dir: &Dir) -> (FakeHost, Endpoint, String) {
    let mut m = with_net(dir).await;
    m.uplink_add("eth0").await.unwrap();
    let mut a = args("n1", "c1");
    a.publish = vec!["8080:80".parse().unwrap()];
    let ep = connect(&mut m, a).await;
    let br = bridge_of(m.network("n1").unwrap());
    let (_, host) = m.into_parts();
    (host, ep, br)
}

fn veth(ep: &Endpoint) -> String {
    match &ep.attachment {
        Attachment::Veth { host_ifname } => host_ifname.clone(),
        a => panic!("{a:?}"),
    }
}

#[tokio::test]
async fn a_restart_reapplies_the_datapath_in_full() {
    let dir = Dir::new();
    let (host, ep, _) = populated(&dir).await;
    let mut m = open_on(&dir, host).await;
    assert!(m.datapath().calls.is_empty(), "opening changes nothing");
    assert_eq!(m.state().endpoints.get(&ep.id), Some(&ep));
    assert_eq!(m.reconcile().await.unwrap(), Vec::<String>::new());
    let dp = m.datapath();
    assert!(dp.uplinks.contains("eth0"));
    assert!(dp.endpoints.contains(&veth(&ep)));
    assert_eq!(dp.count("apply_nat"), 1, "in full: {:?}", dp.calls);
    assert!(dp.nat.ports.contains_key(&port_key(8080)));
    assert_eq!(dp.nat.subnets.len(), 2);
}

#[tokio::test]
async fn a_restart_repairs_a_lost_bridge_and_endpoint() {
    let dir = Dir::new();
    let (host, ep, br) = populated(&dir).await;
    {
        let mut h = host.get();
        // Reboot-like: the bridge went, and the veth with it; the
        // namespace lives on. Plus a stray veth from a crashed connect.
        h.links.retain(|_, l| l.name != br && l.name != veth(&ep));
        h.netns
            .get_mut(&ep.netns)
            .unwrap()
            .links
            .retain(|l| l.name != "eth0");
    }
    let mut m = open_on(&dir, host).await;
    let changed = m.reconcile().await.unwrap();
    assert!(
        changed.iter().any(|c| c == &format!("created bridge {br}")),
        "{changed:?}"
    );
    assert!(
        changed
            .iter()
            .any(|c| c == "set up endpoint c1 on n1 again"),
        "{changed:?}"
    );
    let h = m.host().get();
    let bridge = h.by_name(&br).expect("bridge back").index;
    assert_eq!(h.by_name(&veth(&ep)).and_then(|l| l.master), Some(bridge));
    drop(h);
    assert!(m.datapath().endpoints.contains(&veth(&ep)));
}

#[tokio::test]
async fn a_restart_removes_a_veth_no_endpoint_owns() {
    let dir = Dir::new();
    let (host, _, br) = populated(&dir).await;
    {
        let mut h = host.get();
        let b = h.by_name(&br).unwrap().index;
        h.add_link("vethdead", Some("veth"), Some(b));
    }
    let mut m = open_on(&dir, host).await;
    let changed = m.reconcile().await.unwrap();
    assert_eq!(changed, ["removed vethdead, a veth no endpoint owns"]);
    assert!(m.host().get().by_name("vethdead").is_none());
}

#[tokio::test]
async fn a_second_manager_sees_what_the_first_persisted() {
    let dir = Dir::new();
    let (host, ep, _) = populated(&dir).await;
    let mut m = open_on(&dir, host).await;
    m.disconnect("n1", "c1").await.unwrap();
    let (_, host) = m.into_parts();
    let m = open_on(&dir, host).await;
    assert!(!m.state().endpoints.contains_key(&ep.id));
    assert_eq!(m.state().uplinks, ["eth0"]);
}

// ---- typed requests ----

#[test]
fn connect_args_parse_once_and_name_the_field() {
    let a = ConnectArgs {
        network: "n1".into(),
        netns: Some("c1".into()),
        ip: Some("172.18.0.9".into()),
        ip6: None,
        mac: Some("02:00:00:00:00:09".into()),
        name: Some("web".into()),
        ifname: Some("net1".into()),
        publish: vec!["8080-8081:80-81/udp".parse().unwrap()],
        aliases: vec!["Web.Front".into(), "web.front".into(), "db".into()],
    };
    let r = a.parse().unwrap();
    assert_eq!(r.network, ConnectTo::Network("n1".into()));
    assert_eq!(r.ip, Some(Ipv4Addr::new(172, 18, 0, 9)));
    assert_eq!(r.mac.unwrap().to_string(), "02:00:00:00:00:09");
    assert_eq!(r.ifname.unwrap().as_str(), "net1");
    assert_eq!(r.publish.len(), 2);
    assert_eq!(r.aliases, ["web.front", "db"]);
    let shared = ConnectArgs {
        network: "container:web".into(),
        ..ConnectArgs::default()
    };
    assert_eq!(
        shared.parse().unwrap().network,
        ConnectTo::Container("web".into())
    );
    for (field, bad, word) in [
        ("ip", "1.2.3", "--ip 1.2.3"),
        ("mac", "01:00:5e:00:00:01", "--mac 01:00:5e:00:00:01"),
        ("ifname", "a b", "--ifname a b"),
        ("name", "_x", "--name \"_x\""),
        ("publish", "80:80/sctp", "--publish 80:80/sctp"),
    ] {
        let mut a = args("n1", "c1");
        match field {
            "ip" => a.ip = Some(bad.into()),
            "mac" => a.mac = Some(bad.into()),
            "ifname" => a.ifname = Some(bad.into()),
            "name" => a.name = Some(bad.into()),
            _ => {
                // A spec is parsed where it comes in (clap, the API's JSON).
                let e = bad.parse::<PublishSpec>().unwrap_err().to_string();
                assert!(e.contains(word), "{field}: {e}");
                continue;
            }
        }
        let e = a.parse().unwrap_err().to_string();
        assert!(e.contains(word), "{field}: {e}");
    }
}

#[tokio::test]
async fn connect_takes_a_typed_request() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut req = ConnectRequest::to_network("n1", Some("c1".into()));
    req.ip = Some(Ipv4Addr::new(172, 18, 3, 3));
    req.publish = ["7070:70".to_owned()].mappings().unwrap();
    let ep = m.connect(req).await.unwrap();
    assert_eq!(ep.ipv4, Some(Ipv4Addr::new(172, 18, 3, 3)));
    assert!(m.datapath().nat.ports.contains_key(&port_key(7070)));
}

// ---- CNI ----

fn cni_add(container: &str, netns: &str) -> AddArgs {
    AddArgs {
        network: "cni0".into(),
        create: Some(NetworkSpec {
            subnet: Some("10.88.0.0/16".into()),
            ..NetworkSpec::default()
        }),
        key: AttachmentKey {
            container_id: container.into(),
            ifname: "eth0".into(),
        },
        netns: format!("/var/run/netns/{netns}"),
        ip: None,
        ip6: None,
        mac: None,
        publish: vec!["8088:80".into()],
        aliases: vec!["Web".into(), "bad_name".into()],
    }
}

#[tokio::test]
async fn cni_add_creates_the_network_and_check_finds_it_whole() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("p1");
    let r = m.cni_add(&cni_add("0123456789abcdef", "p1")).await.unwrap();
    assert_eq!(r.endpoint, "0123456789ab-eth0");
    assert_eq!(r.ipv4, Ipv4Addr::new(10, 88, 0, 2));
    assert_eq!(r.prefix_len, 16);
    assert!(r.default_route);
    assert_eq!(m.state().cni_attachments.len(), 1);
    assert!(m.datapath().nat.ports.contains_key(&port_key(8088)));
    let check = CheckArgs {
        network: "cni0".into(),
        key: cni_add("0123456789abcdef", "p1").key,
        netns: "/var/run/netns/p1".into(),
        address: Some("10.88.0.2/16".into()),
        routes: vec![("0.0.0.0/0".into(), Some(Ipv4Addr::new(10, 88, 0, 1)))],
        publish: vec!["8088:80".into()],
    };
    assert_eq!(m.cni_check(&check).await.unwrap(), Vec::<String>::new());
    let mut wrong = check.clone();
    wrong.publish = vec!["8089:80".into()];
    let problems = m.cni_check(&wrong).await.unwrap();
    assert!(problems.iter().any(|p| p.contains("8089")), "{problems:?}");
}

#[tokio::test]
async fn cni_add_twice_is_refused_and_del_is_idempotent() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("p1");
    let add = cni_add("0123456789abcdef", "p1");
    m.cni_add(&add).await.unwrap();
    let before = snapshot(&m);
    let r = m.cni_add(&add).await;
    refused(
        &m,
        &before,
        r,
        &["container 0123456789abcdef", "DEL it first"],
    );
    m.cni_del("cni0", &add.key).await.unwrap();
    assert!(m.state().endpoints.is_empty());
    assert!(m.state().cni_attachments.is_empty());
    assert!(m.datapath().nat.ports.is_empty());
    m.cni_del("cni0", &add.key).await.unwrap();
}

#[tokio::test]
async fn cni_add_refuses_bad_runtime_input_and_leaves_nothing() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut add = cni_add("0123456789abcdef", "c1");
    add.network = "n1".into();
    add.create = None;
    add.ip = Some("10.0.0.999".into());
    let before = snapshot(&m);
    let r = m.cni_add(&add).await;
    refused(&m, &before, r, &["--ip 10.0.0.999"]);
    add.ip = None;
    add.network = "ghost".into();
    let r = m.cni_add(&add).await;
    refused(&m, &before, r, &["network ghost", "ipam.subnet"]);
}

#[tokio::test]
async fn cni_gc_removes_what_the_runtime_no_longer_lists() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("p1");
    m.host().add_netns("p2");
    let keep = cni_add("aaaaaaaaaaaa0001", "p1");
    let mut stale = cni_add("bbbbbbbbbbbb0002", "p2");
    stale.publish.clear();
    m.cni_add(&keep).await.unwrap();
    m.cni_add(&stale).await.unwrap();
    let gone = m
        .cni_gc(&GcArgs {
            network: "cni0".into(),
            valid: vec![keep.key.clone()],
        })
        .await
        .unwrap();
    assert_eq!(gone, ["bbbbbbbbbbbb0002/eth0"]);
    assert_eq!(m.state().endpoints.len(), 1);
    assert_eq!(
        m.state().cni_attachments[0].container_id,
        "aaaaaaaaaaaa0001"
    );
}

// ---- Docker ----

const NID: &str = "5f2c1e0a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";
const EID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

#[tokio::test]
async fn docker_endpoint_lifecycle_publishes_typed_bindings() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    let req = create_args(&docker_network_name(NID), Some("10.99.0.0/24"))
        .parse()
        .unwrap();
    m.docker_create_network(NID, req).await.unwrap();
    let ep = m
        .docker_create_endpoint(NID, EID, (Some(Ipv4Addr::new(10, 99, 0, 2)), None), None)
        .await
        .unwrap();
    assert_eq!(
        ep.mac.map(|m| m.to_string()).as_deref(),
        Some("02:42:0a:63:00:02")
    );
    m.host().add_netns("sb");
    let join = m
        .docker_join(NID, EID, &PathBuf::from("/var/run/netns/sb"))
        .await
        .unwrap();
    assert_eq!(join.src_name, docker_veth_names(EID).1);
    assert_eq!(join.gateway, Some(Ipv4Addr::new(10, 99, 0, 1)));
    let binding = DockerPortBinding {
        proto: Proto::Tcp,
        host_ip: Some(Ipv4Addr::UNSPECIFIED.into()),
        host_port: 0,
        host_port_end: 0,
        container_port: 80,
    };
    // The first port of the range is someone else's: the next one.
    m.host().add_netns("c9");
    let mut other = args("bridge", "c9");
    other.publish = vec![format!("{}:80", EPHEMERAL_PORTS.start()).parse().unwrap()];
    connect(&mut m, other).await;
    let got = m
        .docker_program_external(NID, EID, &[binding])
        .await
        .unwrap();
    let port = EPHEMERAL_PORTS.start() + 1;
    assert_eq!(got[0].host_port, port);
    assert_eq!(got[0].host_ip, None, "0.0.0.0 is every address");
    assert!(m.datapath().nat.ports.contains_key(&port_key(port)));
    // A fixed port someone holds is refused, naming the holder.
    let before = snapshot(&m);
    let taken = DockerPortBinding {
        host_port: *EPHEMERAL_PORTS.start(),
        host_port_end: *EPHEMERAL_PORTS.start(),
        ..binding
    };
    let r = m.docker_program_external(NID, EID, &[taken]).await;
    refused(
        &m,
        &before,
        r,
        &["portmap", "endpoint c9 on network bridge"],
    );
    m.docker_revoke_external(NID, EID).await.unwrap();
    assert_eq!(m.datapath().nat.ports.len(), 1, "c9's only");
    m.docker_leave(NID, EID).await.unwrap();
    m.docker_delete_endpoint(NID, EID).await.unwrap();
    assert!(!m.state().endpoints.contains_key(EID));
    m.docker_delete_network(NID).await.unwrap();
    assert!(m.docker_network(NID).is_err());
}

#[tokio::test]
async fn a_failed_map_write_makes_the_next_change_reconcile_in_full() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    m.datapath_mut().fail.insert("apply_nat_changes");
    let mut a = args("n1", "c1");
    a.publish = vec!["8080:80".parse().unwrap()];
    let e = m.connect(&a).await.unwrap_err();
    assert!(crate::sys::error_chain(&e).contains("injected"));
    // As today: the state is written before the maps (see `persist`), so
    // the endpoint stays recorded though connect took its veth back; the
    // next reconcile sets it up again (see the restart tests).
    assert_eq!(m.state().endpoints.len(), 1);
    m.datapath_mut().fail.clear();
    let full = m.datapath().count("apply_nat");
    m.uplink_add("eth0").await.unwrap();
    assert_eq!(m.datapath().count("apply_nat"), full + 1, "in full");
    assert_eq!(
        m.datapath().nat.ports.len(),
        m.state()
            .endpoints
            .values()
            .map(|e| e.published.len())
            .sum::<usize>(),
        "the maps hold what the state says"
    );
}

// ---- publishing as Docker does it: ephemeral and pick-one ports, host sockets ----

fn udp_key(port: u16) -> PortKey {
    PortKey {
        proto: 17,
        ..port_key(port)
    }
}

fn host_ports(m: &M, endpoint: &str) -> Vec<String> {
    m.state()
        .endpoints
        .values()
        .find(|e| e.name == endpoint)
        .map(|e| e.published.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn publish_picks_distinct_ephemeral_ports_and_keeps_them_across_a_restart() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    m.host().get().ephemeral = Some(40000..=40003);
    m.host().hold_port(Proto::Tcp, None, 40000, "sshd (pid 7)");
    let mut a = args("n1", "c1");
    a.publish = vec![
        "80".parse().unwrap(),
        "127.0.0.1::81".parse().unwrap(),
        "80/udp".parse().unwrap(),
    ];
    connect(&mut m, a).await;
    // 40000 is a host listener's (TCP only); 40001 this command's on
    // every address, so 127.0.0.1 takes the next.
    assert_eq!(
        host_ports(&m, "c1"),
        [
            "0.0.0.0:40001->80/tcp",
            "127.0.0.1:40002->81/tcp",
            "0.0.0.0:40000->80/udp"
        ]
    );
    assert!(m.datapath().nat.ports.contains_key(&port_key(40001)));
    assert!(m.datapath().nat.ports.contains_key(&udp_key(40000)));
    // One port left, then none: refused naming the range.
    let added = m.publish_add("n1", "c1", &["90".into()]).await.unwrap();
    assert_eq!(added[0].host_port, 40003);
    connect(&mut m, args("n1", "c2")).await;
    let before = snapshot(&m);
    let r = m.publish_add("n1", "c2", &["91".into()]).await;
    refused(
        &m,
        &before,
        r,
        &[
            "--publish 0.0.0.0::91/tcp",
            "no free host port in 40000-40003",
        ],
    );
    // `publish rm -p 90` removes the port it was given.
    m.publish_rm("n1", "c1", &["90".into()]).await.unwrap();
    assert!(!m.datapath().nat.ports.contains_key(&port_key(40003)));
    // The chosen ports are the state's: a restart keeps them.
    let kept = host_ports(&m, "c1");
    drop(m);
    let m = open(&dir).await;
    assert_eq!(host_ports(&m, "c1"), kept);
}

#[tokio::test]
async fn publish_takes_the_first_free_port_of_a_host_range() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut a = args("n1", "c1");
    a.publish = vec!["8000:80".parse().unwrap()];
    connect(&mut m, a).await;
    m.host().hold_port(
        Proto::Tcp,
        Some(Ipv4Addr::LOCALHOST.into()),
        8002,
        "nginx (pid 9)",
    );
    connect(&mut m, args("n1", "c2")).await;
    m.publish_add("n1", "c2", &["8000-8010:80".into(), "8000-8010:81".into()])
        .await
        .unwrap();
    // 8000 is c1's, 8001 taken by this command, 8002 a host listener's.
    assert_eq!(
        host_ports(&m, "c2"),
        ["0.0.0.0:8001->80/tcp", "0.0.0.0:8003->81/tcp"]
    );
    // Equal-size ranges still map port by port.
    let added = m
        .publish_add("n1", "c2", &["9000-9001:90-91".into()])
        .await
        .unwrap();
    assert_eq!(
        added
            .iter()
            .map(|p| (p.host_port, p.container_port))
            .collect::<Vec<_>>(),
        [(9000, 90), (9001, 91)]
    );
    let before = snapshot(&m);
    let r = m.publish_add("n1", "c1", &["8000-8001:82".into()]).await;
    refused(
        &m,
        &before,
        r,
        &[
            "8000-8001:82",
            "no free host port in 8000-8001",
            "endpoint c2",
        ],
    );
    m.publish_rm("n1", "c2", &["8000-8010:81".into()])
        .await
        .unwrap();
    assert_eq!(
        host_ports(&m, "c2"),
        [
            "0.0.0.0:8001->80/tcp",
            "0.0.0.0:9000->90/tcp",
            "0.0.0.0:9001->91/tcp"
        ]
    );
}

#[tokio::test]
async fn publish_refuses_a_port_a_host_process_listens_on() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    m.host().hold_port(Proto::Tcp, None, 8080, "nginx (pid 42)");
    m.host().hold_port(
        Proto::Tcp,
        Some(Ipv4Addr::LOCALHOST.into()),
        9090,
        "python3 (pid 43)",
    );
    m.host()
        .hold_port(Proto::Udp, None, 5353, "avahi-daemon (pid 44)");
    let mut a = args("n1", "c1");
    a.publish = vec!["8080:80".parse().unwrap()];
    let before = snapshot(&m);
    let r = m.connect(&a).await;
    refused(
        &m,
        &before,
        r,
        &[
            "--publish 0.0.0.0:8080->80/tcp",
            "0.0.0.0:8080/tcp is in use on the host by nginx (pid 42)",
            "nothing was published",
        ],
    );
    connect(&mut m, args("n1", "c1")).await;
    for (spec, words) in [
        ("127.0.0.1:8080:80", ["0.0.0.0:8080/tcp", "nginx"]),
        ("9090:80", ["127.0.0.1:9090/tcp", "python3 (pid 43)"]),
        ("127.0.0.1:9090:80", ["127.0.0.1:9090/tcp", "python3"]),
        ("5353:53/udp", ["0.0.0.0:5353/udp", "avahi-daemon"]),
    ] {
        let before = snapshot(&m);
        let r = m.publish_add("n1", "c1", &[spec.into()]).await;
        refused(&m, &before, r, &words);
    }
    // Another address than the listener's, another protocol: free.
    m.publish_add(
        "n1",
        "c1",
        &["10.0.0.2:9090:80".into(), "5353:53/tcp".into()],
    )
    .await
    .unwrap();
    // The Docker driver asks the same allocator.
    assert_eq!(host_ports(&m, "c1").len(), 2);
}

#[tokio::test]
async fn a_request_of_many_ports_reads_the_host_sockets_once_and_refuses_the_same() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    connect(&mut m, args("n1", "c1")).await;
    m.host().hold_port(
        Proto::Tcp,
        Some(Ipv4Addr::LOCALHOST.into()),
        7010,
        "python3 (pid 43)",
    );
    m.host()
        .hold_port(Proto::Udp, None, 7005, "avahi-daemon (pid 44)");
    m.host().get().holder_asked = 0;
    // 20 ports, one of them held: the same refusal as one at a time.
    let before = snapshot(&m);
    let r = m
        .publish_add("n1", "c1", &["7000-7019:7000-7019".into()])
        .await;
    refused(
        &m,
        &before,
        r,
        &[
            "--publish 0.0.0.0:7010->7010/tcp",
            "127.0.0.1:7010/tcp is in use on the host by python3 (pid 43)",
        ],
    );
    // Only the port a socket is bound to was asked about (a trial bind on
    // a real host), not all 20; UDP 7005 is another protocol.
    assert_eq!(m.host().get().holder_asked, 1);
    m.host().get().holder_asked = 0;
    // On another address the listener does not hold it.
    let added = m
        .publish_add("n1", "c1", &["10.0.0.2:7000-7019:7000-7019".into()])
        .await
        .unwrap();
    assert_eq!(added.len(), 20);
    assert_eq!(m.host().get().holder_asked, 1);
    // UDP: the bound UDP port is refused the same way.
    let before = snapshot(&m);
    let r = m
        .publish_add("n1", "c1", &["7000-7019:7000-7019/udp".into()])
        .await;
    refused(
        &m,
        &before,
        r,
        &["0.0.0.0:7005/udp", "avahi-daemon (pid 44)"],
    );
}

#[tokio::test]
async fn one_host_port_on_distinct_host_addresses_reaches_distinct_containers() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let mut a = args("n1", "c1");
    a.publish = vec!["127.0.1.2:1716:80".parse().unwrap()];
    connect(&mut m, a).await;
    let mut a = args("n1", "c2");
    a.publish = vec!["127.0.1.3:1716:80".parse().unwrap()];
    connect(&mut m, a).await;
    let ports = &m.datapath().nat.ports;
    let at = |addr: [u8; 4]| {
        ports
            .get(&PortKey {
                addr,
                ..port_key(1716)
            })
            .map(|t| t.addr)
    };
    assert_eq!(at([127, 0, 1, 2]), Some([172, 18, 0, 2]));
    assert_eq!(at([127, 0, 1, 3]), Some([172, 18, 0, 3]));
    // Every address overlaps both.
    m.host().add_netns("c3");
    let mut a = args("n1", "c3");
    a.publish = vec!["1716:80".parse().unwrap()];
    let before = snapshot(&m);
    let r = m.connect(&a).await;
    refused(&m, &before, r, &["1716", "already publishes 127.0.1."]);
}

#[tokio::test]
async fn docker_bindings_use_the_hosts_ephemeral_range_and_see_host_sockets() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().get().ephemeral = Some(41000..=41001);
    m.host().hold_port(Proto::Tcp, None, 41000, "node (pid 5)");
    let req = create_args(&docker_network_name(NID), Some("10.99.0.0/24"))
        .parse()
        .unwrap();
    m.docker_create_network(NID, req).await.unwrap();
    m.docker_create_endpoint(NID, EID, (Some(Ipv4Addr::new(10, 99, 0, 2)), None), None)
        .await
        .unwrap();
    let any = DockerPortBinding {
        proto: Proto::Tcp,
        host_ip: None,
        host_port: 0,
        host_port_end: 0,
        container_port: 80,
    };
    let got = m.docker_program_external(NID, EID, &[any]).await.unwrap();
    assert_eq!(got[0].host_port, 41001);
    let fixed = DockerPortBinding {
        host_port: 41000,
        host_port_end: 41000,
        ..any
    };
    let e = m
        .docker_program_external(NID, EID, &[fixed])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("portmap") && e.contains("node (pid 5)"), "{e}");
}

// ---- gateway modes ----

#[tokio::test]
async fn gateway_modes_reach_the_subnet_flags_open_ports_and_trusted_interfaces() {
    use dataplane_common::nat::{
        TrustedIface, SUBNET_INTERNAL, SUBNET_MASQUERADE, SUBNET_PROTECTED, SUBNET_ROUTED,
    };

    use crate::control::{desired::network_key, model::GatewayMode};
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("c1");
    let tun = m.host().get().add_link("tun0", Some("tun"), None);
    let mut modes = Vec::new();
    for (name, subnet, opts) in [
        ("nat", "10.60.0.0/24", vec![]),
        (
            "unprot",
            "10.61.0.0/24",
            vec!["com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected"],
        ),
        (
            "routed",
            "10.62.0.0/24",
            vec![
                "com.docker.network.bridge.gateway_mode_ipv4=routed",
                "com.docker.network.bridge.trusted_host_interfaces=tun0:wg9",
            ],
        ),
        (
            "iso",
            "10.63.0.0/24",
            vec!["com.docker.network.bridge.gateway_mode_ipv4=isolated"],
        ),
    ] {
        let mut a = create_args(name, Some(subnet));
        a.options = opts.into_iter().map(Into::into).collect();
        let net = m.create(a.parse().expect("parse")).await.expect(name);
        modes.push(net);
    }
    let flags = |subnet: [u8; 4]| m.datapath().nat.subnets[&(subnet, 24)].0;
    assert_eq!(flags([10, 60, 0, 0]), SUBNET_MASQUERADE | SUBNET_PROTECTED);
    assert_eq!(flags([10, 61, 0, 0]), SUBNET_MASQUERADE);
    assert_eq!(flags([10, 62, 0, 0]), SUBNET_ROUTED);
    assert_eq!(flags([10, 63, 0, 0]), SUBNET_INTERNAL);
    // Isolated: internal, and the host has no address on its bridge.
    assert!(modes[3].internal);
    let iso_bridge = bridge_of(&modes[3]);
    let addrs_on_bridge = {
        let h = m.host().get();
        let index = h.by_name(&iso_bridge).expect("bridge").index;
        h.addrs.iter().filter(|(i, _, _)| *i == index).count()
    };
    assert_eq!(addrs_on_bridge, 0);
    // Trusted: the interface that exists, by index, for its network only.
    let trusted: Vec<_> = m.datapath().nat.trusted_ifaces.keys().copied().collect();
    assert_eq!(
        trusted,
        [TrustedIface {
            ifindex: tun,
            network_id: network_key(&modes[2].id),
        }]
    );
    // Routed: the container's published port is open to direct access.
    let mut a = args("routed", "c1");
    a.publish = vec!["8080:80".parse().unwrap()];
    connect(&mut m, a).await;
    let open_ports: Vec<_> = m.datapath().nat.open_ports.keys().copied().collect();
    assert_eq!(
        open_ports,
        [PortKey {
            addr: [10, 62, 0, 2],
            port: 80u16.to_be_bytes(),
            proto: 6,
            _pad: 0,
        }]
    );
    // Persisted: a restart keeps every mode and the trusted list.
    drop(m);
    let m = open(&dir).await;
    let mode = |name: &str| match &m.state().networks[name].driver {
        crate::control::model::DriverConfig::Bridge(b) => {
            (b.gateway_mode, b.trusted_host_interfaces.clone())
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(mode("nat"), (GatewayMode::Nat, vec![]));
    assert_eq!(mode("unprot").0, GatewayMode::NatUnprotected);
    assert_eq!(
        mode("routed"),
        (GatewayMode::Routed, vec!["tun0".into(), "wg9".into()])
    );
    assert_eq!(mode("iso").0, GatewayMode::Isolated);
}

#[tokio::test]
async fn cni_gateway_mode_reaches_the_network_it_creates() {
    use crate::control::model::{DriverConfig, GatewayMode};
    let dir = Dir::new();
    let mut m = open(&dir).await;
    m.host().add_netns("p1");
    m.host().add_netns("p2");
    let mut add = cni_add("0123456789abcdef", "p1");
    if let Some(spec) = add.create.as_mut() {
        spec.gateway_mode = Some("routed".into());
    }
    m.cni_add(&add).await.unwrap();
    let DriverConfig::Bridge(b) = &m.state().networks["cni0"].driver else {
        panic!("a bridge network");
    };
    assert_eq!(b.gateway_mode, GatewayMode::Routed);
    // The container port of the mapping is open to direct access.
    assert_eq!(m.datapath().nat.open_ports.len(), 1);
    // An unknown mode is refused naming it, nothing created.
    let mut bad = cni_add("fedcba9876543210", "p2");
    bad.network = "cni1".into();
    if let Some(spec) = bad.create.as_mut() {
        spec.subnet = Some("10.89.0.0/16".into());
        spec.gateway_mode = Some("bridged".into());
    }
    let before = snapshot(&m);
    let r = m.cni_add(&bad).await;
    let cause = r
        .as_ref()
        .err()
        .and_then(|e| std::error::Error::source(e))
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(cause.contains("gateway_mode_ipv4=bridged"), "{cause:?}");
    refused(&m, &before, r, &["network cni1"]);
}

// ---- DNS names ----

#[tokio::test]
async fn aliases_are_kept_checked_and_runtime_names_filtered() {
    let dir = Dir::new();
    let mut m = with_net(&dir).await;
    let ep = connect(
        &mut m,
        ConnectArgs {
            aliases: vec!["Web".into(), "web.".into(), "api".into()],
            ..args("n1", "c1")
        },
    )
    .await;
    assert_eq!(ep.aliases, ["web", "api"]);
    let before = snapshot(&m);
    let r = m
        .connect(&ConnectArgs {
            aliases: vec!["bad_alias".into()],
            ..args("n1", "c2")
        })
        .await;
    refused(&m, &before, r, &["--alias", "bad_alias"]);
    m.host().add_netns("p1");
    let added = m.cni_add(&cni_add("feedbeef0001", "p1")).await.unwrap();
    let cni_ep = m
        .state()
        .endpoints_of("cni0")
        .find(|e| e.name == added.endpoint)
        .cloned()
        .unwrap();
    assert_eq!(cni_ep.aliases, ["web"], "bad_name is no DNS name: left out");
    assert_eq!(added.dns_server, Some(Ipv4Addr::new(10, 88, 0, 1).into()));
}
