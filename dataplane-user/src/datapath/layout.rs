//! Adopting pinned maps safely: before the object is loaded onto the pins,
//! every pinned map's shape (type, key size, value size, max entries,
//! flags, from `BPF_OBJ_GET_INFO_BY_FD`) is checked against what the object
//! declares, and the pin root's layout schema ([`LAYOUT_SCHEMA`], kept in
//! the pinned array [`LAYOUT_MAP`]) against the one this binary knows.
//!
//! - schema newer than this binary's: refused ([`LayoutError::Newer`]),
//!   nothing touched;
//! - a map whose key and value layout is unchanged but whose size, flags or
//!   hash flavour (plain/LRU) differ: migrated, its entries copied into the
//!   new map (those that do not fit are counted as lost);
//! - any other difference (type, key or value size): replaced, with the
//!   number of entries lost;
//! - a migration of a configurable map (`[maps]`) into one smaller than
//!   its live entries (the size shrunk below what is in use): refused
//!   ([`LayoutError::TooSmall`]), nothing touched; dropping flows or
//!   published ports silently to honour a setting would be worse than
//!   starting with the old size until the operator frees entries or picks
//!   a size that fits;
//! - all maps as declared: adopted as they are.
//!
//! The old map is unpinned before the load and its entries kept in memory;
//! if the load fails the old map is pinned back ([`Plan::abort`]). After
//! the load the entries are copied ([`Plan::copy`]), the pinned links are
//! moved to the new programs (which use the new maps), and what the old
//! programs added in between is copied too ([`Plan::finish`]).

use std::{collections::BTreeMap, fmt, io, path::PathBuf};

use aya_obj::Object;

use super::bpffs::PinRoot;
use crate::sys::bpf::{MapShape, RawMap};

/// The layout schema of the pins this binary makes. Bump it with every
/// change to a pinned map's key or value layout, so that an older binary
/// meeting these pins refuses them instead of misreading them.
/// 0: pins made before the schema was recorded; 1: this scheme; 2: the
/// filter rules' single addresses as `HostRules` in `DP_FLT_HOST4` and
/// `DP_FLT_HOST6` (an older binary would let their packets through).
pub const LAYOUT_SCHEMA: u32 = 2;

/// The pinned array (one u32: the schema) that records [`LAYOUT_SCHEMA`].
pub const LAYOUT_MAP: &str = "DP_LAYOUT";

const ARRAY: u32 = 2;
const PERCPU_ARRAY: u32 = 6;
const HASH: u32 = 1;
const LRU_HASH: u32 = 9;
const PERCPU_HASH: u32 = 5;
const LRU_PERCPU_HASH: u32 = 10;
const PERF_EVENT_ARRAY: u32 = 4;
const RINGBUF: u32 = 27;

/// Most entries read from one map while migrating it (the biggest map is
/// sized far below this).
const MAX_COPY: usize = 1 << 22;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the pins under {path} have layout schema {found}, newer than this binary's {known}: \
         run the newer agent, or `dataplane cleanup` to start afresh (drops every flow)"
    )]
    Newer {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("the eBPF object cannot be read for its map layouts: {0}")]
    Declared(String),
    #[error("reading the pinned map {map} at {path}")]
    Open {
        map: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unpinning the map {map} at {path} to replace it")]
    Unpin {
        map: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the entries of the pinned map {map}")]
    Read {
        map: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "pinned map {map} holds {live} entries, more than its new size {max}{hint}; nothing was \
         changed"
    )]
    TooSmall {
        map: String,
        live: usize,
        max: u32,
        /// How to get out (the `[maps]` key to raise, the ways to free
        /// entries).
        hint: String,
    },
    #[error("recording the layout schema in {path}")]
    Schema {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What adopting one map did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Entries copied into a map of the new shape; `lost` did not fit.
    Migrated { copied: usize, lost: usize },
    /// A new, empty map; the old one's `lost` entries are gone.
    Replaced { lost: usize },
}

/// One pinned map that was not as declared, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adoption {
    pub map: String,
    pub old: MapShape,
    pub new: MapShape,
    pub action: Action,
}

impl fmt::Display for Adoption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (old, new) = (Shape(&self.old), Shape(&self.new));
        match self.action {
            Action::Migrated { copied, lost } => write!(
                f,
                "pinned map {} migrated from {old} to {new}: {copied} entries kept, {lost} lost",
                self.map
            ),
            Action::Replaced { lost } => write!(
                f,
                "pinned map {} replaced: its layout {old} is not this binary's {new} and cannot \
                 be converted; {lost} entries lost",
                self.map
            ),
        }
    }
}

struct Shape<'a>(&'a MapShape);

impl fmt::Display for Shape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        write!(
            f,
            "(type {}, key {} B, value {} B, max_entries {}, flags {:#x})",
            type_name(s.map_type),
            s.key_size,
            s.value_size,
            s.max_entries,
            s.flags
        )
    }
}

fn type_name(t: u32) -> String {
    match t {
        HASH => "hash".into(),
        ARRAY => "array".into(),
        PERF_EVENT_ARRAY => "perf_event_array".into(),
        PERCPU_HASH => "percpu_hash".into(),
        PERCPU_ARRAY => "percpu_array".into(),
        LRU_HASH => "lru_hash".into(),
        LRU_PERCPU_HASH => "lru_percpu_hash".into(),
        11 => "lpm_trie".into(),
        RINGBUF => "ringbuf".into(),
        other => format!("#{other}"),
    }
}

/// The shapes the object declares for those of `names` it has, as the
/// loader will create them (ring buffers rounded to pages, perf arrays sized to the CPUs).
pub fn declared(object: &[u8], names: &[&str]) -> Result<BTreeMap<String, MapShape>, LayoutError> {
    let obj = Object::parse(object).map_err(|e| LayoutError::Declared(e.to_string()))?;
    let mut out = BTreeMap::new();
    for name in names {
        // A name the object lacks has nothing to check (the loader ignores
        // its pin path too).
        let Some(m) = obj.maps.get(*name) else {
            continue;
        };
        let mut shape = MapShape {
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
            flags: m.map_flags(),
        };
        if shape.map_type == RINGBUF {
            shape.value_size = 0;
            shape.max_entries = ringbuf_size(shape.max_entries);
        }
        if shape.map_type == PERF_EVENT_ARRAY && shape.max_entries == 0 {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| LayoutError::Read {
                map: (*name).to_owned(),
                source: e,
            })?;
            shape.max_entries = u32::try_from(cpus).unwrap_or(u32::MAX);
        }
        out.insert((*name).to_owned(), shape);
    }
    Ok(out)
}

/// aya's rounding of a ring buffer's size: whole pages, a power of two.
fn ringbuf_size(bytes: u32) -> u32 {
    if bytes == 0 {
        return 0;
    }
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    page * bytes.div_ceil(page).next_power_of_two()
}

/// Whether entries of `old` can be written into a map shaped `new`.
fn convertible(old: &MapShape, new: &MapShape) -> bool {
    let family = |t| match t {
        LRU_HASH => HASH,
        LRU_PERCPU_HASH => PERCPU_HASH,
        t => t,
    };
    old.key_size == new.key_size
        && old.value_size == new.value_size
        && family(old.map_type) == family(new.map_type)
        && !matches!(new.map_type, RINGBUF | PERF_EVENT_ARRAY)
}

/// One map unpinned to make way for a new one.
struct Pending {
    name: String,
    path: PathBuf,
    old: RawMap,
    new: MapShape,
    /// The entries to copy (empty when replacing).
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    migrate: bool,
    /// What replacing loses.
    live: usize,
    /// Entries written into the new map so far.
    copied: usize,
}

/// The maps set aside before a load, to migrate after it (or pin back).
pub struct Plan {
    pins: PinRoot,
    pending: Vec<Pending>,
    /// The schema found recorded (None: none).
    recorded: Option<u32>,
}

/// Checks the pins under `pins` against `want` (see the module docs) and
/// sets aside every map that is not as declared: after this, the loader
/// finds only maps it can adopt, or none.
pub fn prepare(pins: &PinRoot, want: &BTreeMap<String, MapShape>) -> Result<Plan, LayoutError> {
    let recorded = recorded_schema(pins)?;
    if let Some(found) = recorded.filter(|s| *s > LAYOUT_SCHEMA) {
        return Err(LayoutError::Newer {
            path: pins.path().to_owned(),
            found,
            known: LAYOUT_SCHEMA,
        });
    }
    let mut plan = Plan {
        pins: pins.clone(),
        pending: Vec::new(),
        recorded,
    };
    for (name, shape) in want {
        match set_aside(pins, name, shape) {
            Ok(Some(p)) => plan.pending.push(p),
            Ok(None) => {}
            Err(e) => {
                // The maps set aside so far go back: nothing changed.
                plan.abort();
                return Err(e);
            }
        }
    }
    Ok(plan)
}

/// Unpins `name` if it is not shaped `shape`, keeping what a migration or
/// the log line needs; None when it is as declared or not pinned.
fn set_aside(pins: &PinRoot, name: &str, shape: &MapShape) -> Result<Option<Pending>, LayoutError> {
    let path = pins.map(name);
    let old = match RawMap::from_pin(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LayoutError::Open {
                map: name.to_owned(),
                path,
                source,
            })
        }
    };
    if old.shape() == *shape {
        return Ok(None);
    }
    let migrate = convertible(&old.shape(), shape);
    let entries = entries(&old).map_err(|source| LayoutError::Read {
        map: name.to_owned(),
        source,
    })?;
    let live = entries.len();
    // Only a size the operator sets is refused; a map this binary made
    // smaller migrates what fits and counts the rest as lost.
    let configured = super::limits::key_of(name);
    if let Some(key) = configured.filter(|_| migrate && live > shape.max_entries as usize) {
        return Err(LayoutError::TooSmall {
            map: name.to_owned(),
            live,
            max: shape.max_entries,
            hint: format!(
                ": set `[maps] {key}` to at least {live}, or let flows expire (`dataplane \
                 conntrack gc`) or remove entries first"
            ),
        });
    }
    std::fs::remove_file(&path).map_err(|source| LayoutError::Unpin {
        map: name.to_owned(),
        path: path.clone(),
        source,
    })?;
    Ok(Some(Pending {
        name: name.to_owned(),
        path,
        old,
        new: *shape,
        entries: if migrate { entries } else { Vec::new() },
        migrate,
        live,
        copied: 0,
    }))
}

/// The live entries of a map: every key of a hash or trie, the non-zero
/// slots of an array; nothing of a ring buffer or perf array.
fn entries(map: &RawMap) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let shape = map.shape();
    if matches!(shape.map_type, RINGBUF | PERF_EVENT_ARRAY) || shape.key_size == 0 {
        return Ok(Vec::new());
    }
    let limit = (shape.max_entries as usize).min(MAX_COPY);
    let mut out = Vec::new();
    for key in map.keys(limit)? {
        let Some(value) = map.lookup(&key)? else {
            continue; // deleted meanwhile
        };
        let array = matches!(shape.map_type, ARRAY | PERCPU_ARRAY);
        if array && value.iter().all(|b| *b == 0) {
            continue;
        }
        out.push((key, value));
    }
    Ok(out)
}

impl Plan {
    /// Whether the load found every pinned map as declared.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// After a successful load (the new maps are pinned): copies the
    /// migrated entries into them. Programs attached earlier still use the
    /// old maps until their links are moved to the new programs; then
    /// [`Plan::finish`] copies what they added meanwhile.
    pub fn copy(&mut self) -> Result<(), LayoutError> {
        for p in self.pending.iter_mut().filter(|p| p.migrate) {
            let new = open_new(p)?;
            p.copied = std::mem::take(&mut p.entries)
                .iter()
                .filter(|(k, v)| new.update(k, v).is_ok())
                .count();
        }
        Ok(())
    }

    /// Copies the entries the old programs made after [`Plan::copy`] (hash
    /// maps: those not in the new map yet; counters in arrays keep the
    /// first copy), records the schema (if it was not this one already),
    /// and says what happened to each map set aside.
    pub fn finish(self) -> Result<Vec<Adoption>, LayoutError> {
        let mut done = Vec::new();
        for p in self.pending {
            let action = if p.migrate {
                let mut late = 0;
                if !matches!(p.old.shape().map_type, ARRAY | PERCPU_ARRAY) {
                    let new = open_new(&p)?;
                    let read_err = |source| LayoutError::Read {
                        map: p.name.clone(),
                        source,
                    };
                    for (k, v) in entries(&p.old).map_err(read_err)? {
                        if new.insert_new(&k, &v).unwrap_or(false) {
                            late += 1;
                        }
                    }
                }
                Action::Migrated {
                    copied: p.copied + late,
                    lost: p.live.saturating_sub(p.copied),
                }
            } else {
                Action::Replaced { lost: p.live }
            };
            done.push(Adoption {
                map: p.name,
                old: p.old.shape(),
                new: p.new,
                action,
            });
        }
        if !done.is_empty() || self.recorded != Some(LAYOUT_SCHEMA) {
            record_schema(&self.pins)?;
        }
        Ok(done)
    }

    /// After a failed load: the old maps go back on their pins (replacing
    /// any new one the loader made), so nothing is lost.
    pub fn abort(self) {
        for p in self.pending {
            let _ = std::fs::remove_file(&p.path);
            if let Err(e) = p.old.pin(&p.path) {
                tracing::warn!(map = p.name, "pinning the old map back failed: {e}");
            }
        }
    }
}

fn open_new(p: &Pending) -> Result<RawMap, LayoutError> {
    RawMap::from_pin(&p.path).map_err(|source| LayoutError::Open {
        map: p.name.clone(),
        path: p.path.clone(),
        source,
    })
}

fn schema_shape() -> MapShape {
    MapShape {
        map_type: ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        flags: 0,
    }
}

/// The schema recorded under `pins`: None when nothing is recorded (no
/// pins yet, or pins from before the schema; the per-map check covers
/// those).
pub fn recorded_schema(pins: &PinRoot) -> Result<Option<u32>, LayoutError> {
    let path = pins.map(LAYOUT_MAP);
    let err = |source| LayoutError::Open {
        map: LAYOUT_MAP.to_owned(),
        path: path.clone(),
        source,
    };
    let map = match RawMap::from_pin(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    if map.shape() != schema_shape() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not the layout record: {}", Shape(&map.shape())),
        )));
    }
    let value = map.lookup(&0u32.to_ne_bytes()).map_err(err)?;
    Ok(value
        .and_then(|v| v.try_into().ok())
        .map(u32::from_ne_bytes))
}

/// Records [`LAYOUT_SCHEMA`] under `pins` (creating the record if needed).
pub fn record_schema(pins: &PinRoot) -> Result<(), LayoutError> {
    write_schema(pins, LAYOUT_SCHEMA)
}

/// Writes `schema` as the recorded one (tests use it to fake a newer
/// binary's pins).
pub fn write_schema(pins: &PinRoot, schema: u32) -> Result<(), LayoutError> {
    let path = pins.map(LAYOUT_MAP);
    let err = |source| LayoutError::Schema {
        path: path.clone(),
        source,
    };
    let map = RawMap::pinned_or_created(&path, LAYOUT_MAP, schema_shape()).map_err(err)?;
    map.update(&0u32.to_ne_bytes(), &schema.to_ne_bytes())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(map_type: u32, key: u32, value: u32, max: u32) -> MapShape {
        MapShape {
            map_type,
            key_size: key,
            value_size: value,
            max_entries: max,
            flags: 0,
        }
    }

    #[test]
    fn only_same_key_and_value_of_one_family_convert() {
        let ct = shape(LRU_HASH, 16, 32, 65536);
        assert!(convertible(&shape(LRU_HASH, 16, 32, 1024), &ct));
        assert!(convertible(&shape(HASH, 16, 32, 1024), &ct));
        assert!(!convertible(&shape(LRU_HASH, 16, 40, 65536), &ct));
        assert!(!convertible(&shape(ARRAY, 16, 32, 65536), &ct));
        let drops = shape(PERCPU_ARRAY, 4, 16, 40);
        assert!(convertible(&shape(PERCPU_ARRAY, 4, 16, 30), &drops));
        let ring = shape(RINGBUF, 0, 0, 4096);
        assert!(!convertible(&shape(RINGBUF, 0, 0, 8192), &ring));
    }

    #[test]
    fn the_log_line_names_the_map_both_layouts_and_the_loss() {
        let a = Adoption {
            map: "DP_CT_TCP".into(),
            old: shape(ARRAY, 4, 8, 1),
            new: shape(LRU_HASH, 16, 32, 65536),
            action: Action::Replaced { lost: 1 },
        };
        assert_eq!(
            a.to_string(),
            "pinned map DP_CT_TCP replaced: its layout (type array, key 4 B, value 8 B, \
             max_entries 1, flags 0x0) is not this binary's (type lru_hash, key 16 B, value \
             32 B, max_entries 65536, flags 0x0) and cannot be converted; 1 entries lost"
        );
    }

    #[test]
    fn the_object_declares_every_pinned_map() {
        let got = declared(super::super::ebpf::OBJECT, &super::super::ebpf::PINNED_MAPS)
            .expect("object parses");
        assert_eq!(got.len(), super::super::ebpf::PINNED_MAPS.len());
        assert!(got.values().all(|s| s.map_type != 0));
    }
}
