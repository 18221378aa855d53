//! Overlay networks against an in-memory cluster store: two managers on
//! fake hosts share one [`MemStore`]; `network create -d overlay`, the
//! other host's adoption, addresses across hosts, endpoint records, the
//! remote entries the watch programs, and `network rm` refused while the
//! other host has endpoints.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use super::{args, connect, open, Dir, M};
use crate::control::{
    cluster::{
        records::{self, Key},
        sync::{program_remotes, Programmed, View},
        Cluster, ClusterStore as _, Identity, MemStore,
    },
    host::RemoteEntry,
    model::{CreateArgs, DriverConfig},
};

fn cluster(store: &MemStore, n: u8) -> Arc<Cluster> {
    Arc::new(Cluster::new(
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
    ))
}

fn overlay_args(name: &str, subnet: Option<&str>) -> CreateArgs {
    CreateArgs {
        name: name.into(),
        driver: "overlay".into(),
        subnet: subnet.map(Into::into).into_iter().collect(),
        ..CreateArgs::default()
    }
}

async fn host(dir: &Dir, store: &MemStore, n: u8) -> M {
    let mut m = open(dir).await;
    m.set_cluster(Some(cluster(store, n)));
    m.host().add_netns("c1");
    m
}

async fn view(store: &MemStore) -> View {
    let (kvs, _) = store.get_prefix(records::PREFIX).await.unwrap();
    View::from_pairs(&kvs)
}

#[tokio::test]
async fn overlay_needs_a_cluster_and_a_subnet() {
    let dir = Dir::new();
    let mut m = open(&dir).await;
    let e = m
        .create(overlay_args("ov", Some("10.0.9.0/24")).parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no cluster store") && e.contains("cluster_store"),
        "{e}"
    );
    m.set_cluster(Some(cluster(&MemStore::default(), 1)));
    let e = m
        .create(overlay_args("ov", None).parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("network ov") && e.contains("--subnet"), "{e}");
    assert!(!m.state().networks.contains_key("ov"));
}

#[tokio::test]
async fn two_hosts_share_an_overlay_network() {
    let store = MemStore::default();
    let (d1, d2) = (Dir::new(), Dir::new());
    let mut m1 = host(&d1, &store, 1).await;
    let mut m2 = host(&d2, &store, 2).await;
    let net = m1
        .create(overlay_args("ov", Some("10.0.9.0/24")).parse().unwrap())
        .await
        .expect("create");
    let DriverConfig::Overlay(o) = &net.driver else {
        panic!("{:?}", net.driver)
    };
    assert_eq!(
        (o.vni, o.vtep, o.port, net.mtu),
        (4096, Ipv4Addr::new(192, 0, 2, 1), 4789, 1450)
    );
    assert!(m1.host().get().by_name(&o.vxlan).is_some());
    let again = m2
        .create(overlay_args("ov", Some("10.0.10.0/24")).parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("already exists in the cluster"), "{again}");

    // A smaller --mtu holds on every host; a bigger one is capped by the
    // host's own (uplink MTU - 50).
    let mut small = overlay_args("small", Some("10.0.11.0/24"));
    small.mtu = Some("1400".into());
    assert_eq!(m1.create(small.parse().unwrap()).await.unwrap().mtu, 1400);
    let mut big = overlay_args("big", Some("10.0.12.0/24"));
    big.mtu = Some("9000".into());
    assert_eq!(m1.create(big.parse().unwrap()).await.unwrap().mtu, 1450);
    m1.remove(&["small".into(), "big".into()], false)
        .await
        .unwrap();

    // A stale view saying it is gone removes nothing: the store has it.
    m1.drop_overlay("ov", &net.id)
        .await
        .expect("drop on a stale view");
    assert!(m1.state().networks.contains_key("ov"));
    assert!(store.keys().iter().any(|k| k.ends_with("/networks/ov")));

    // Host 2 adopts it from the store, as its watch does.
    let v = view(&store).await;
    m2.adopt_overlay(&v.networks["ov"]).await.expect("adopt");
    assert_eq!(m2.state().networks["ov"].id, net.id);

    let e1 = connect(&mut m1, args("ov", "c1")).await;
    let e2 = connect(&mut m2, args("ov", "c1")).await;
    assert_eq!(e1.ipv4, Some(Ipv4Addr::new(10, 0, 9, 2)));
    assert_eq!(e2.ipv4, Some(Ipv4Addr::new(10, 0, 9, 3)));
    let eps: Vec<Key> = store.keys().iter().map(|k| Key::parse(k)).collect();
    assert_eq!(
        eps.iter()
            .filter(|k| matches!(k, Key::Endpoint { .. }))
            .count(),
        2
    );

    // What host 2's watch programs: host 1's endpoint only.
    let v = view(&store).await;
    let vx = m2.overlay_networks()[0].1.vxlan.clone();
    let mut programmed = Programmed::new();
    let errors = program_remotes(m2.host(), &[("ov".into(), vx)], &v, "h2", &mut programmed).await;
    assert!(errors.is_empty(), "{errors:?}");
    let want = RemoteEntry {
        ip: Ipv4Addr::new(10, 0, 9, 2),
        mac: e1.mac.unwrap().octets(),
        vtep: Ipv4Addr::new(192, 0, 2, 1),
    };
    let remotes: Vec<RemoteEntry> = m2.host().get().remotes.iter().map(|(_, e)| *e).collect();
    assert_eq!(remotes, vec![want]);

    // rm is refused on host 2 while host 1 has an endpoint, naming it,
    // even with --force (which disconnects only this host's), and nothing
    // is disconnected here.
    let e = m2
        .remove(&["ov".into()], true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("h1") && e.contains("disconnect them first"),
        "{e}"
    );
    assert!(m2.state().endpoints.contains_key(&e2.id));
    m1.disconnect("ov", &e1.name).await.expect("disconnect");
    // Host 1's endpoint and address are gone; host 2's watch removes the
    // entry, also in a new process (an agent restarted meanwhile) that did
    // not program it itself.
    let v = view(&store).await;
    let vx = m2.overlay_networks()[0].1.vxlan.clone();
    let mut restarted = Programmed::new();
    let errors = program_remotes(m2.host(), &[("ov".into(), vx)], &v, "h2", &mut restarted).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(m2.host().get().remotes.is_empty());
    m2.remove(&["ov".into()], true).await.expect("rm");
    assert!(
        store.keys().is_empty() || store.keys().iter().all(|k| k.contains("/hosts/")),
        "{:?}",
        store.keys()
    );
    // Host 1 follows: the network went from the store.
    let id = net.id.clone();
    m1.drop_overlay("ov", &id).await.expect("drop");
    assert!(!m1.state().networks.contains_key("ov"));
}

#[tokio::test]
async fn a_dead_hosts_endpoints_go_with_its_lease() {
    let store = MemStore::default();
    let (d1, d2) = (Dir::new(), Dir::new());
    let mut m1 = host(&d1, &store, 1).await;
    let mut m2 = host(&d2, &store, 2).await;
    m1.create(overlay_args("ov", Some("10.0.9.0/24")).parse().unwrap())
        .await
        .unwrap();
    let v = view(&store).await;
    m2.adopt_overlay(&v.networks["ov"]).await.unwrap();
    connect(&mut m1, args("ov", "c1")).await;
    let lease = m1.cluster().unwrap().lease().await.unwrap();
    store.expire(lease);
    let v = view(&store).await;
    assert!(v.endpoints.is_empty());
    // Its address is free again.
    let e = connect(&mut m2, args("ov", "c1")).await;
    assert_eq!(e.ipv4, Some(Ipv4Addr::new(10, 0, 9, 2)));
}

#[tokio::test]
async fn a_connect_while_the_store_is_down_fails_and_changes_nothing() {
    let store = MemStore::default();
    let dir = Dir::new();
    let mut m = host(&dir, &store, 1).await;
    m.create(overlay_args("ov", Some("10.0.9.0/24")).parse().unwrap())
        .await
        .unwrap();
    store.set_down(true);
    let before = (m.state().clone(), m.host().get().links.len());
    let e = m.connect(&args("ov", "c1")).await.unwrap_err().to_string();
    assert!(
        e.contains("cluster store memory") && e.contains("no answer"),
        "{e}"
    );
    assert_eq!((m.state().clone(), m.host().get().links.len()), before);
    store.set_down(false);
    let ep = connect(&mut m, args("ov", "c1")).await;
    assert_eq!(ep.ipv4, Some(Ipv4Addr::new(10, 0, 9, 2)));
}
