//! `publish add/rm` write only their own ports' entries (the delta path):
//! after any mix of them the datapath holds what a full recompute from the
//! state gives, and a refused request changes nothing.

use super::{args, connect, create_args, open, refused, snapshot, Dir, M};
use crate::control::{desired, manager::publish::PortIndex};

/// A dual-stack `routed` network (published ports also open ports, in both
/// families) with endpoints c1 and c2.
async fn routed_pair(dir: &Dir) -> M {
    let mut m = open(dir).await;
    m.host().add_netns("c1");
    m.host().add_netns("c2");
    let mut a = create_args("r", Some("10.70.0.0/24"));
    a.subnet.push("fd00:70::/64".into());
    a.ipv6 = true;
    a.options = vec!["com.docker.network.bridge.gateway_mode_ipv4=routed".into()];
    m.create(a.parse().expect("parse")).await.expect("create r");
    let mut a = args("r", "c1");
    a.publish = vec!["7000:70".parse().unwrap()];
    connect(&mut m, a).await;
    connect(&mut m, args("r", "c2")).await;
    m
}

/// The maps as a full recompute from the state makes them.
async fn full(m: &M) -> crate::datapath::nat::Desired {
    desired::desired(m.state(), m.host())
        .await
        .expect("desired")
}

#[tokio::test]
async fn the_delta_path_holds_what_a_full_recompute_gives() {
    let dir = Dir::new();
    let mut m = routed_pair(&dir).await;
    let full_before = m.datapath().count("apply_nat") + m.datapath().count("apply_nat_changes");
    let steps: [(&str, &str, &[&str]); 9] = [
        ("add", "c1", &["8080:80", "8081:80"]),
        ("add", "c2", &["9000-9002:90-92/udp", "127.0.0.1:8090:81"]),
        ("add", "c1", &["[::1]:8443:443", "8444:443"]),
        // 8081:80 still opens container port 80: its open entry stays.
        ("rm", "c1", &["8080:80"]),
        ("add", "c2", &["91"]),
        ("rm", "c2", &["9001:91/udp", "127.0.0.1:8090:81"]),
        ("rm", "c1", &["[::1]:8443:443"]),
        ("add", "c1", &["8080:80"]),
        ("rm", "c1", &["7000:70", "8081:80", "8444:443"]),
    ];
    for (i, (op, ep, specs)) in steps.into_iter().enumerate() {
        let specs: Vec<String> = specs.iter().map(|s| (*s).to_owned()).collect();
        match op {
            "add" => drop(m.publish_add("r", ep, &specs).await.expect("add")),
            _ => m.publish_rm("r", ep, &specs).await.expect("rm"),
        }
        assert_eq!(m.datapath().nat, full(&m).await, "step {i}: {op} {specs:?}");
        // The port allocator's index, kept across the steps, is the one
        // the state gives.
        let kept = m.ports.as_ref().map(PortIndex::canonical);
        if i > 0 {
            assert_eq!(kept, Some(PortIndex::of(m.state()).canonical()), "step {i}");
        }
    }
    let dp = m.datapath();
    assert_eq!(
        dp.count("apply_nat_delta"),
        steps.len(),
        "every step a delta"
    );
    assert_eq!(
        dp.count("apply_nat") + dp.count("apply_nat_changes"),
        full_before,
        "no full recompute"
    );
    assert!(!dp.nat.ports6.is_empty() && !dp.nat.open_ports6.is_empty());
    // What the removals took away is purged: their flows must not follow
    // the old entries.
    let purged: Vec<u16> = dp
        .purged
        .mappings
        .iter()
        .map(|(k, _, _)| u16::from_be_bytes(k.port))
        .collect();
    for port in [8080, 8081, 7000, 8444, 9001] {
        assert!(purged.contains(&port), "{port} purged: {purged:?}");
    }
    // A restart (a full reconcile, from the journal's state) publishes
    // the same ports (on a new fake host, so the links' maps differ).
    let held = std::mem::take(&mut m.datapath_mut().nat);
    drop(m);
    let again = full(&open(&dir).await).await;
    assert_eq!(
        (held.ports, held.ports6, held.open_ports, held.open_ports6),
        (
            again.ports,
            again.ports6,
            again.open_ports,
            again.open_ports6
        )
    );
}

#[tokio::test]
async fn a_refused_delta_changes_nothing() {
    let dir = Dir::new();
    let mut m = routed_pair(&dir).await;
    m.publish_add("r", "c1", &["8080:80".into()]).await.unwrap();
    let nat = full(&m).await;
    let before = snapshot(&m);
    let r = m.publish_add("r", "c2", &["8080:81".into()]).await;
    refused(&m, &before, r, &["--publish", "8080", "endpoint c1"]);
    let r = m.publish_add("ghost", "c1", &["8090:80".into()]).await;
    refused(&m, &before, r, &["network ghost"]);
    let r = m.publish_rm("ghost", "c1", &["8080:80".into()]).await;
    refused(&m, &before, r, &["network ghost"]);
    let r = m.publish_rm("r", "c2", &["8080:80".into()]).await;
    refused(&m, &before, r, &["8080", "does not publish it"]);
    assert_eq!(m.datapath().nat, nat);
}
