//! Upgrades onto pinned maps: a pin root holding maps of another layout
//! (made here by hand, as an older or newer release would have left them)
//! is adopted as docs/reliability.md says: migrated with its entries where
//! the key and value layout is unchanged, replaced with a log line naming
//! the map, both layouts and the entries lost otherwise, refused when its
//! schema is newer than this binary's. Each load then verifies the
//! programs, so the maps it settled on are the ones they expect.

use dataplane_common::maps;
use dataplane_tests::BpffsDir;
use dataplane_user::{
    datapath::{
        ebpf::{Dataplane, LoadError, OBJECT},
        endpoints::ENDPOINT_PROGRAM,
        layout::{self, Action, LAYOUT_SCHEMA},
        stats,
    },
    sys::bpf::{MapShape, RawMap},
};

fn declared(name: &str) -> MapShape {
    layout::declared(OBJECT, &[name]).expect("object parses")[name]
}

/// A map of `shape` pinned under `name`, holding `entries` keys 0..n with
/// `fill` bytes as values (array keys are u32 indices; hash keys are the
/// index in the first 4 bytes, zero-padded).
fn pin_bogus(dir: &BpffsDir, name: &str, shape: MapShape, entries: u32, fill: u8) -> RawMap {
    let map = RawMap::create(name, shape).expect("create the bogus map");
    let value = vec![fill; map.value_len().expect("value length")];
    for i in 0..entries {
        let mut key = vec![0u8; shape.key_size as usize];
        key[..4].copy_from_slice(&i.to_ne_bytes());
        map.update(&key, &value).expect("fill the bogus map");
    }
    map.pin(&dir.pins().map(name)).expect("pin the bogus map");
    map
}

/// Loads the object onto `dir` and verifies the programs that use the
/// conntrack and counter maps.
fn load_and_verify(dir: &BpffsDir) -> Result<Dataplane, LoadError> {
    let mut dp = Dataplane::load(dir.pins())?;
    dp.tc_program(stats::PROGRAM)?;
    dp.tc_program(ENDPOINT_PROGRAM)?;
    Ok(dp)
}

fn pinned_shape(dir: &BpffsDir, name: &str) -> MapShape {
    RawMap::from_pin(&dir.pins().map(name))
        .expect("pinned")
        .shape()
}

#[test]
fn a_conntrack_map_with_a_bigger_value_is_replaced_with_a_clear_line() {
    let dir = BpffsDir::new("pins-bigger").unwrap();
    let want = declared(maps::CT_TCP);
    let bogus = MapShape {
        value_size: want.value_size + 8,
        max_entries: 64,
        ..want
    };
    drop(pin_bogus(&dir, maps::CT_TCP, bogus, 3, 0xab));
    let dp = load_and_verify(&dir).expect("loads after replacing the map");
    let [a] = dp.adopted() else {
        panic!("one map adopted: {:?}", dp.adopted());
    };
    assert_eq!(a.map, maps::CT_TCP);
    assert_eq!(a.action, Action::Replaced { lost: 3 });
    let line = a.to_string();
    eprintln!("{line}");
    assert!(line.contains("DP_CT_TCP replaced"), "{line}");
    assert!(
        line.contains(&format!("value {} B", want.value_size + 8)),
        "{line}"
    );
    assert!(line.contains("3 entries lost"), "{line}");
    assert_eq!(pinned_shape(&dir, maps::CT_TCP), want);
    drop(dp);
    let again = load_and_verify(&dir).expect("second load");
    assert!(again.adopted().is_empty(), "{:?}", again.adopted());
}

#[test]
fn a_fresh_pin_root_records_the_schema() {
    let dir = BpffsDir::new("pins-fresh").unwrap();
    assert_eq!(layout::recorded_schema(dir.pins()).unwrap(), None);
    let dp = load_and_verify(&dir).expect("load");
    assert!(dp.adopted().is_empty());
    assert_eq!(
        layout::recorded_schema(dir.pins()).unwrap(),
        Some(LAYOUT_SCHEMA)
    );
}

#[test]
fn a_map_with_a_smaller_value_is_replaced_not_a_verifier_dump() {
    let dir = BpffsDir::new("pins-smaller").unwrap();
    let want = declared(maps::CT_TCP);
    let bogus = MapShape {
        value_size: want.value_size - 4,
        ..want
    };
    drop(pin_bogus(&dir, maps::CT_TCP, bogus, 2, 1));
    let dp = load_and_verify(&dir).expect("loads after replacing the map");
    assert_eq!(dp.adopted().len(), 1, "{:?}", dp.adopted());
    assert_eq!(dp.adopted()[0].action, Action::Replaced { lost: 2 });
    assert_eq!(pinned_shape(&dir, maps::CT_TCP), want);
}

#[test]
fn a_map_of_the_wrong_type_is_replaced() {
    let dir = BpffsDir::new("pins-type").unwrap();
    let want = declared(maps::CT_OTHER);
    let bogus = MapShape {
        map_type: 2, // array
        key_size: 4,
        value_size: want.value_size,
        max_entries: 16,
        flags: 0,
    };
    drop(pin_bogus(&dir, maps::CT_OTHER, bogus, 0, 0));
    let dp = load_and_verify(&dir).expect("loads after replacing the map");
    assert_eq!(dp.adopted().len(), 1, "{:?}", dp.adopted());
    let line = dp.adopted()[0].to_string();
    eprintln!("{line}");
    assert!(
        line.contains("DP_CT_OTHER replaced") && line.contains("type array"),
        "{line}"
    );
    assert_eq!(pinned_shape(&dir, maps::CT_OTHER), want);
}

/// The last release's layout by hand: fewer drop reasons (a shorter
/// DP_DROP_STATS) and a smaller conntrack table, both with live entries.
/// The counters and the conntrack entries are carried over.
#[test]
fn an_older_layout_is_migrated_keeping_counters_and_conntrack_entries() {
    let dir = BpffsDir::new("pins-older").unwrap();
    let drops = declared(maps::DROP_STATS);
    let old_drops = MapShape {
        max_entries: drops.max_entries - 2,
        ..drops
    };
    let old_drops_map = pin_bogus(&dir, maps::DROP_STATS, old_drops, old_drops.max_entries, 7);
    let ct = declared(maps::CT_TCP);
    let old_ct = MapShape {
        max_entries: 1024,
        ..ct
    };
    let old_ct_map = pin_bogus(&dir, maps::CT_TCP, old_ct, 100, 9);
    let dp = load_and_verify(&dir).expect("loads after migrating");
    let mut got: Vec<(String, Action)> = dp
        .adopted()
        .iter()
        .map(|a| (a.map.clone(), a.action.clone()))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    for a in dp.adopted() {
        eprintln!("{a}");
    }
    assert_eq!(
        got,
        [
            (
                maps::CT_TCP.to_owned(),
                Action::Migrated {
                    copied: 100,
                    lost: 0
                }
            ),
            (
                maps::DROP_STATS.to_owned(),
                Action::Migrated {
                    copied: old_drops.max_entries as usize,
                    lost: 0
                }
            ),
        ]
    );
    let new_ct = RawMap::from_pin(&dir.pins().map(maps::CT_TCP)).unwrap();
    assert_eq!(new_ct.shape(), ct);
    for i in 0..100u32 {
        let mut key = vec![0u8; ct.key_size as usize];
        key[..4].copy_from_slice(&i.to_ne_bytes());
        assert_eq!(
            new_ct.lookup(&key).unwrap(),
            old_ct_map.lookup(&key).unwrap()
        );
    }
    let new_drops = RawMap::from_pin(&dir.pins().map(maps::DROP_STATS)).unwrap();
    assert_eq!(new_drops.shape(), drops);
    for i in 0..drops.max_entries {
        let got = new_drops.lookup(&i.to_ne_bytes()).unwrap().unwrap();
        let want = old_drops_map.lookup(&i.to_ne_bytes()).unwrap();
        match want {
            Some(old) => assert_eq!(got, old, "drop reason {i} kept"),
            None => assert!(got.iter().all(|b| *b == 0), "new drop reason {i} zero"),
        }
    }
    assert_eq!(
        layout::recorded_schema(dir.pins()).unwrap(),
        Some(LAYOUT_SCHEMA)
    );
}

#[test]
fn pins_of_a_newer_schema_are_refused_and_left_alone() {
    let dir = BpffsDir::new("pins-newer").unwrap();
    drop(load_and_verify(&dir).expect("first load"));
    layout::write_schema(dir.pins(), LAYOUT_SCHEMA + 1).unwrap();
    let ct = declared(maps::CT_TCP);
    std::fs::remove_file(dir.pins().map(maps::CT_TCP)).unwrap();
    let odd = MapShape {
        value_size: ct.value_size + 16,
        ..ct
    };
    drop(pin_bogus(&dir, maps::CT_TCP, odd, 1, 3));
    let Err(err) = Dataplane::load(dir.pins()) else {
        panic!("loaded onto pins of a newer schema");
    };
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains(&format!("layout schema {}", LAYOUT_SCHEMA + 1))
            && msg.contains(&format!("this binary's {LAYOUT_SCHEMA}")),
        "{msg}"
    );
    assert_eq!(pinned_shape(&dir, maps::CT_TCP), odd, "left alone");
}

/// A directory under bpffs this test made, removed on drop.
struct RawDir(std::path::PathBuf);

impl Drop for RawDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_pin_root_made_by_another_user_or_open_to_others_is_refused() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use dataplane_user::datapath::bpffs::PinRoot;

    let fresh = RawDir(format!("/sys/fs/bpf/{}", dataplane_tests::unique_name("pins-own")).into());
    PinRoot::new(&fresh.0).ensure().expect("a fresh root");
    let meta = std::fs::metadata(&fresh.0).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700));

    let theirs =
        RawDir(format!("/sys/fs/bpf/{}", dataplane_tests::unique_name("pins-other")).into());
    std::fs::create_dir(&theirs.0).unwrap();
    std::os::unix::fs::chown(&theirs.0, Some(65534), Some(65534)).unwrap();
    let err = PinRoot::new(&theirs.0)
        .ensure()
        .expect_err("another user's root");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains(&theirs.0.display().to_string()) && msg.contains("owned by uid 65534"),
        "{msg}"
    );
    assert!(!theirs.0.join("links").exists(), "nothing made inside it");

    let open = RawDir(format!("/sys/fs/bpf/{}", dataplane_tests::unique_name("pins-open")).into());
    std::fs::create_dir(&open.0).unwrap();
    std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let msg = PinRoot::new(&open.0)
        .ensure()
        .expect_err("world-writable root")
        .to_string();
    assert!(
        msg.contains("mode 777") && msg.contains("not writable by group or others"),
        "{msg}"
    );
    let err = Dataplane::load(&PinRoot::new(&open.0))
        .err()
        .expect("load refuses too");
    assert!(err.to_string().contains("mode 777"), "{err}");
}
