//! Resource limits, visible: a conntrack size set in the agent's `[maps]`
//! is the pinned map's size (`bpftool map show`, `dataplane status`);
//! filling the table with real masqueraded flows shows its fill and a WARN
//! line in `status` and `dataplane_map_pressure` in the metrics; a new
//! size is migrated into at the next start, one below the live entries is
//! refused and changes nothing. `status` answers while the agent cleans a
//! full table.

use std::{
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use dataplane_common::{
    ct::{CtEntry, CtKey, CtState},
    maps,
};
use dataplane_tests::{
    cli::{stop_agent, Cli},
    netns::NetNs,
};
use dataplane_user::{control::state::State, frontends::metrics};
use serde_json::Value;

/// The config of every agent of this test, with `size` entries for the
/// IPv4 UDP/ICMP conntrack table.
fn config(size: u32) -> String {
    format!("metrics_address = \"off\"\n[maps]\nconntrack_other = {size}\n")
}

fn max_entries(cli: &Cli, map: &str) -> u64 {
    let path = cli.pins.path().join(map);
    let out = dataplane_tests::cmd::run(&[
        "bpftool",
        "-j",
        "map",
        "show",
        "pinned",
        path.to_str().expect("utf-8 path"),
    ])
    .expect("bpftool map show");
    let v: Value = serde_json::from_str(&out).expect("bpftool JSON");
    v["max_entries"].as_u64().expect("max_entries")
}

/// `status --format json`'s fill of `map`: (entries, max_entries,
/// entries it holds before it evicts).
fn fill(cli: &Cli, map: &str) -> (u64, u64, u64) {
    let s = cli
        .json(&["status", "--format", "json"])
        .expect("status json");
    let row = s["limits"]["maps"]
        .as_array()
        .expect("limits.maps")
        .iter()
        .find(|r| r["map"] == map)
        .cloned()
        .unwrap_or_else(|| panic!("{map} not in status: {s}"));
    (
        row["entries"].as_u64().expect("entries"),
        row["max_entries"].as_u64().expect("max"),
        row["usable"].as_u64().expect("usable"),
    )
}

/// UDP datagrams from `n` source ports of the container to the client:
/// each is a masqueraded flow, two conntrack entries.
fn flows(ctr: &NetNs, dst: SocketAddr, n: usize) {
    ctr.run_in(move || {
        for _ in 0..n {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.send_to(b"fill", dst).expect("send");
        }
    })
    .expect("netns");
}

#[test]
fn a_small_conntrack_table_shows_its_size_and_warns_when_full() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, mut cli) = Cli::uplinked("limits", Some(&config(64))).expect("fake host");
    let (agent, log) = cli.start_agent(&fh.uplink).expect("agent");
    // The CLI's `uplink add` made the maps at the object's sizes: the
    // agent migrated the table into one of the configured size.
    assert!(
        log.contains("pinned map DP_CT_OTHER migrated"),
        "the resize is logged:\n{log}"
    );
    assert_eq!(max_entries(&cli, maps::CT_OTHER), 64);
    let (entries, max, usable) = fill(&cli, maps::CT_OTHER);
    assert_eq!((entries, max), (0, 64));
    // An LRU table evicts before it is full (the kernel keeps free
    // entries aside per CPU).
    assert!((32..=64).contains(&usable), "{usable}");
    let text = cli.run(&["status"]).expect("status");
    assert!(
        text.contains("conntrack other DP_CT_OTHER") && text.contains("0/64 (0%)"),
        "{text}"
    );

    let ctr = NetNs::new("lim").expect("netns");
    cli.run(&["connect", "bridge", ctr.name()])
        .expect("connect");
    let dst = SocketAddr::from((fh.client_ip, 9));
    let _sink = fh
        .client
        .run_in(move || UdpSocket::bind(dst))
        .expect("netns")
        .expect("sink");
    // 50 flows are 100 entries for 64 slots; a few rounds, bounded, in
    // case the LRU lists of another CPU kept some slots free.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = (0, 0, 0);
    for _ in 0..10 {
        flows(&ctr, dst, 50);
        seen = fill(&cli, maps::CT_OTHER);
        if seen.0 * 100 >= 90 * seen.2 || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(seen.0 * 100 >= 90 * seen.2, "the table filled: {seen:?}");
    let text = cli.run(&["status"]).expect("status");
    eprintln!("{text}");
    assert!(
        text.contains("WARN map DP_CT_OTHER is")
            && text.contains("the oldest flows are being evicted")
            && text.contains("raise `[maps] conntrack_other`"),
        "{text}"
    );
    let rendered = metrics::render(cli.pins.pins(), &State::default()).expect("render");
    let pressure = rendered
        .lines()
        .find(|l| l.starts_with("dataplane_map_pressure{map=\"DP_CT_OTHER\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no pressure for DP_CT_OTHER:\n{rendered}"));
    assert!(
        (pressure - seen.0 as f64 / 64.0).abs() < 0.2 && pressure > 0.45,
        "pressure {pressure}, status saw {seen:?}"
    );
    assert!(
        rendered.contains("dataplane_map_max_entries{map=\"DP_CT_OTHER\"} 64"),
        "{rendered}"
    );
    // The LRU evicts an idle flow's two entries together (they were made
    // together and never touched since), so nothing is left unpaired here:
    // a flow loses one entry only when one direction is live and the other
    // idle. The count is reported when there is one.
    let gc = cli.run(&["conntrack", "gc"]).expect("conntrack gc");
    assert!(gc.starts_with("scanned "), "{gc}");
    // One entry alone (as eviction leaves it), live: counted, kept.
    let mut table: aya::maps::HashMap<aya::maps::MapData, CtKey, CtEntry> =
        dataplane_user::datapath::maps::open(cli.pins.pins(), maps::CT_OTHER).expect("open");
    let key = CtKey {
        saddr: [198, 51, 100, 7],
        daddr: fh.host_ip.octets(),
        sport: 5000u16.to_be_bytes(),
        dport: 5001u16.to_be_bytes(),
        proto: 17,
        ..CtKey::default()
    };
    let now = dataplane_user::datapath::conntrack::monotonic_ns();
    let alone = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        ..CtEntry::default()
    };
    table.insert(key, alone, 0).expect("insert");
    let gc = cli.run(&["conntrack", "gc"]).expect("conntrack gc");
    assert!(
        gc.contains("without their pair (a full table evicted live flows)"),
        "{gc}"
    );
    assert!(stop_agent(agent, libc::SIGTERM).expect("stop").success());

    // A load without the agent (the CLI's manager) sizes the maps as the
    // agent recorded, not as the object says.
    cli.run(&["publish", "add", "bridge", ctr.name(), "8081:81"])
        .expect("publish without the agent");
    assert_eq!(max_entries(&cli, maps::CT_OTHER), 64);

    // Smaller than what is live: refused, the table as it was.
    let live = fill(&cli, maps::CT_OTHER).0;
    assert!(live > 16, "{live} entries live");
    cli.set_config(&config(16)).expect("config");
    let e = cli
        .start_agent(&fh.uplink)
        .expect_err("a start that shrinks below the live entries fails")
        .to_string();
    assert!(
        e.contains("pinned map DP_CT_OTHER holds")
            && e.contains("more than its new size 16")
            && e.contains("`[maps] conntrack_other`"),
        "{e}"
    );
    assert_eq!(max_entries(&cli, maps::CT_OTHER), 64);
    // Bigger: migrated, the flows kept.
    cli.set_config(&config(128)).expect("config");
    let (agent, log) = cli.start_agent(&fh.uplink).expect("agent");
    assert!(log.contains("pinned map DP_CT_OTHER migrated"), "{log}");
    assert_eq!(max_entries(&cli, maps::CT_OTHER), 128);
    let (kept, max, _) = fill(&cli, maps::CT_OTHER);
    assert_eq!(max, 128);
    assert!(kept >= live.saturating_sub(4), "kept {kept} of {live}");
    assert!(stop_agent(agent, libc::SIGTERM).expect("stop").success());
    cli.run(&["cleanup"]).expect("cleanup");
}

/// Expired TCP entries, written straight into the table (the GC's work):
/// closing flows idle since boot, past their 10 s timeout on any machine
/// up for longer. (Established ones keep 6 h, longer than a freshly booted
/// CI machine has been up: such entries were not expired there.)
fn expired_entries(cli: &Cli, n: u32) {
    let mut table: aya::maps::HashMap<aya::maps::MapData, CtKey, CtEntry> =
        dataplane_user::datapath::maps::open(cli.pins.pins(), maps::CT_TCP).expect("open");
    for i in 0..n {
        let [a, b, c, d] = i.to_be_bytes();
        let key = CtKey {
            saddr: [10, b, c, d],
            daddr: [192, 0, 2, 1],
            sport: [a, 1],
            dport: 80u16.to_be_bytes(),
            proto: 6,
            ..CtKey::default()
        };
        let entry = CtEntry {
            state: CtState::Closing as u8,
            ..CtEntry::default()
        };
        table
            .insert(key, entry, 0)
            .expect("insert an expired entry");
    }
}

#[test]
fn status_answers_while_the_agent_cleans_a_full_table() {
    if !dataplane_tests::require_root() {
        return;
    }
    const N: u32 = 200_000;
    let (fh, cli) = Cli::uplinked("limgc", None).expect("fake host");
    expired_entries(&cli, N);
    assert_eq!(fill(&cli, maps::CT_TCP).0, u64::from(N));
    let (agent, _) = cli.start_agent(&fh.uplink).expect("agent");
    // The agent's first tick starts the GC at once; `status` (and its own
    // walk of the maps) must not wait for it.
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answers = 0;
    let mut cleaned = None;
    while start.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        let s = dataplane_tests::cli::api(&cli.socket, &serde_json::json!({"op": "status"}))
            .expect("status");
        slowest = slowest.max(t.elapsed());
        answers += 1;
        let left = s["limits"]["maps"]
            .as_array()
            .and_then(|m| m.iter().find(|r| r["map"] == maps::CT_TCP))
            .and_then(|r| r["entries"].as_u64())
            .expect("DP_CT_TCP in status");
        if left == 0 {
            cleaned = Some(start.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{answers} status answers, slowest {slowest:?}, table clean after {cleaned:?}");
    let cleaned = cleaned.expect("the GC emptied the table within 60 s");
    assert!(
        answers >= 3,
        "status answered {answers} times while the GC ran"
    );
    assert!(
        slowest < cleaned / 2 && slowest < Duration::from_secs(3),
        "status took {slowest:?} while the GC took {cleaned:?}"
    );
    assert!(stop_agent(agent, libc::SIGTERM).expect("stop").success());
}

/// The batched reads behind the fill counts and the conntrack GC
/// (`RawMap::for_each_batched`) see every entry exactly once, with its
/// value, for hash maps (per-CPU and LRU too) and an LPM trie (whose
/// count comes from a key walk on a kernel without its batch reads).
#[test]
fn batched_reads_see_every_entry_once() {
    use std::collections::BTreeMap;

    use dataplane_user::sys::bpf::{MapShape, RawMap};

    if !dataplane_tests::require_root() {
        return;
    }
    const N: u32 = 10_000;
    for (map_type, name) in [(1, "hash"), (5, "percpu_hash"), (9, "lru_hash")] {
        let shape = MapShape {
            map_type,
            key_size: 4,
            value_size: 8,
            // Room to spare: an LRU map evicts before it is full.
            max_entries: N * 2,
            flags: 0,
        };
        let map = RawMap::create("dpt_batch", shape).expect("map");
        let vlen = map.value_len().expect("value size");
        let mut want = BTreeMap::new();
        for k in 0..N {
            let v: Vec<u8> = (0..vlen).map(|i| (k as usize + i) as u8).collect();
            map.update(&k.to_ne_bytes(), &v).expect("update");
            want.insert(k.to_ne_bytes().to_vec(), v);
        }
        let mut got = BTreeMap::new();
        let n = map
            .for_each_batched(usize::MAX, |k, v| {
                assert!(
                    got.insert(k.to_vec(), v.to_vec()).is_none(),
                    "{name}: key {k:?} twice"
                );
            })
            .expect("batched read")
            .unwrap_or_else(|| panic!("{name}: no batch reads"));
        assert_eq!(n, N as usize, "{name}");
        assert!(
            got == want,
            "{name}: the entries read are not the ones written"
        );
        assert_eq!(
            map.count_keys(usize::MAX).expect("count"),
            N as usize,
            "{name}"
        );
        assert_eq!(
            map.count_keys(100).expect("count"),
            100,
            "{name}: the limit"
        );
    }
    // LPM trie: key = prefix length + IPv4 address; no preallocation.
    let shape = MapShape {
        map_type: 11,
        key_size: 8,
        value_size: 4,
        max_entries: 64,
        flags: 1,
    };
    let trie = RawMap::create("dpt_trie", shape).expect("trie");
    for i in 0..10u8 {
        let mut key = 24u32.to_ne_bytes().to_vec();
        key.extend_from_slice(&[10, 0, i, 0]);
        trie.update(&key, &[i, 0, 0, 0]).expect("update");
    }
    // Batch reads of a trie are the kernel's generic ones (a key walk in
    // the kernel); older kernels have none, and then the count walks keys.
    let mut seen = 0;
    let read = trie
        .for_each_batched(usize::MAX, |_, v| {
            assert!(v[0] < 10, "{v:?}");
            seen += 1;
        })
        .expect("a trie's batch read");
    assert!(
        read.is_none_or(|n| n == 10 && seen == 10),
        "{read:?} {seen}"
    );
    assert_eq!(trie.count_keys(usize::MAX).expect("count"), 10);
}
