//! Typed access to the dataplane's maps: [`open`] gives a map by name as
//! the aya type asked for, from the pins or from a loaded object, with one
//! error type ([`MapsError`]); [`reconcile`] makes a hash map or an LPM trie
//! hold exactly the wanted entries and [`update`] takes it from one wanted
//! set to the next writing only what differs.

use std::{borrow::Borrow, collections::BTreeMap, os::fd::AsFd as _, path::PathBuf};

use aya::maps::{lpm_trie, HashMap, LpmTrie, Map, MapData, MapError, PerCpuValues};
use dataplane_common::stats::PktCounter;

use super::{bpffs::PinRoot, ebpf::Dataplane};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {0} is missing from the eBPF object")]
    NoMap(&'static str),
    #[error("opening the pinned map {map} at {path} (is the dataplane loaded?)")]
    Open {
        map: &'static str,
        path: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("counting possible CPUs")]
    Cpus(#[source] std::io::Error),
    /// A write found the map full (E2BIG from a hash, ENOSPC from a trie).
    #[error(
        "map {map} is full{}; `dataplane status` shows each map's fill",
        super::limits::key_of(map)
            .map(|k| format!(": raise `[maps] {k}` in the agent's config"))
            .unwrap_or_default()
    )]
    Full {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

impl MapsError {
    /// The map the error is about, if it is about one.
    pub fn map(&self) -> Option<&'static str> {
        match self {
            MapsError::NoMap(map)
            | MapsError::Open { map, .. }
            | MapsError::Map { map, .. }
            | MapsError::Full { map, .. } => Some(map),
            MapsError::Cpus(_) => None,
        }
    }

    /// Whether the map is not pinned at all (nothing loaded the object
    /// yet), as opposed to pinned and unreadable.
    pub fn is_not_pinned(&self) -> bool {
        matches!(self, MapsError::Open { source, .. } if is_not_found(source))
    }
}

/// Wraps an error of an operation on map `map`; a write into a full map
/// is [`MapsError::Full`].
pub fn map_err(map: &'static str) -> impl Fn(MapError) -> MapsError {
    move |e| {
        let full = matches!(&e, MapError::SyscallError(s)
            if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)));
        let source = Box::new(e);
        if full {
            MapsError::Full { map, source }
        } else {
            MapsError::Map { map, source }
        }
    }
}

/// Whether a lookup or delete failed only because the key is not there
/// (aya reports a delete's ENOENT as a syscall error).
pub fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Where a map comes from: the pins (an owned map, for readers that need
/// no loaded object) or a loaded [`Dataplane`] (borrowed from it).
pub trait Source<'a> {
    type Map;
    fn map(self, name: &'static str) -> Result<Self::Map, MapsError>;
}

impl<'a> Source<'a> for &'a PinRoot {
    type Map = Map;

    fn map(self, name: &'static str) -> Result<Map, MapsError> {
        let path = self.map(name);
        let open = |e| MapsError::Open {
            map: name,
            path: path.clone(),
            source: Box::new(e),
        };
        let data = MapData::from_pin(&path).map_err(open)?;
        Map::from_map_data(data).map_err(open)
    }
}

impl<'a> Source<'a> for &'a mut Dataplane {
    type Map = &'a mut Map;

    fn map(self, name: &'static str) -> Result<&'a mut Map, MapsError> {
        self.ebpf_mut().map_mut(name).ok_or(MapsError::NoMap(name))
    }
}

/// The map `name` as type `T`, e.g.
/// `open::<_, HashMap<_, PortKey, PortTarget>>(dp, maps::PORTS)`.
pub fn open<'a, S, T>(from: S, name: &'static str) -> Result<T, MapsError>
where
    S: Source<'a>,
    T: TryFrom<S::Map, Error = MapError>,
{
    T::try_from(from.map(name)?).map_err(map_err(name))
}

/// [`open`] from the pins, with the map's size (`max_entries`), or None
/// when it is not pinned: for readers that report what is there and must
/// not fail before anything was loaded.
pub fn open_if_pinned<T>(pins: &PinRoot, name: &'static str) -> Result<Option<(T, u32)>, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = pins.map(name);
    let data = match MapData::from_pin(&path) {
        Ok(data) => data,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => {
            return Err(MapsError::Open {
                map: name,
                path,
                source: Box::new(e),
            })
        }
    };
    let max = data.info().map_err(map_err(name))?.max_entries();
    let map = Map::from_map_data(data).map_err(map_err(name))?;
    Ok(Some((T::try_from(map).map_err(map_err(name))?, max)))
}

/// Sums one slot of a per-CPU counter array.
pub fn sum(values: &[PktCounter]) -> PktCounter {
    values.iter().fold(PktCounter::default(), |a, b| a.add(*b))
}

/// One zeroed counter per possible CPU, to reset a per-CPU slot.
pub fn zeroed_counters() -> Result<PerCpuValues<PktCounter>, MapsError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Cpus(e))?;
    PerCpuValues::try_from(vec![PktCounter::default(); cpus]).map_err(MapsError::Cpus)
}

/// Writes `values` (each `vlen` bytes as the kernel lays them out: per-CPU
/// arrays take one 8-byte aligned value per possible CPU) at `indices` of
/// the array `map` (named `name` in errors), in batches; false, with
/// nothing written, where the kernel has no batch updates for it (the
/// caller writes one entry at a time).
pub fn set_array_batch(
    map: &MapData,
    name: &'static str,
    indices: &[u32],
    values: &[u8],
    vlen: usize,
) -> Result<bool, MapsError> {
    let keys: Vec<u8> = indices.iter().flat_map(|i| i.to_ne_bytes()).collect();
    crate::sys::bpf::update_batch(map.fd().as_fd(), &keys, values, (4, vlen)).map_err(|io_error| {
        map_err(name)(MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_batch",
            io_error,
        }))
    })
}

/// The bytes of per-CPU `values` as [`set_array_batch`] takes them.
pub fn per_cpu_bytes<V: aya::Pod>(values: &PerCpuValues<V>, out: &mut Vec<u8>) {
    let slot = size_of::<V>().div_ceil(8) * 8;
    for v in values.iter() {
        let start = out.len();
        out.extend_from_slice(bytes_of(v));
        out.resize(start + slot, 0);
    }
}

/// Every entry of a [`KeyedMap`], by key.
pub type Entries<M> = BTreeMap<<M as KeyedMap>::Key, <M as KeyedMap>::Value>;

/// A map listed, read and written by key: hash maps by their key, LPM
/// tries by (prefix length, data). `get` is an exact lookup or None.
pub trait KeyedMap {
    type Key: Ord;
    type Value: PartialEq;
    fn keys(&self) -> Result<Vec<Self::Key>, MapError>;
    /// Every entry, read in batches (`BPF_MAP_LOOKUP_BATCH`, one call per
    /// 256 KiB rather than two per entry); None where the map cannot (an
    /// LPM trie, an old kernel): [`Self::keys`] and [`Self::get`] then.
    fn entries(&self) -> Result<Option<Entries<Self>>, MapError> {
        Ok(None)
    }
    fn get(&self, key: &Self::Key) -> Option<Self::Value>;
    fn insert(&mut self, key: &Self::Key, value: &Self::Value) -> Result<(), MapError>;
    fn remove(&mut self, key: &Self::Key) -> Result<(), MapError>;
    /// Writes every entry: one at a time unless the map can take them in
    /// batches (a hash map: `BPF_MAP_UPDATE_BATCH`, one call per 256 KiB
    /// instead of one per entry).
    fn insert_all(&mut self, entries: &[(&Self::Key, &Self::Value)]) -> Result<(), MapError> {
        for (k, v) in entries {
            self.insert(k, v)?;
        }
        Ok(())
    }
}

impl<M, K, V> KeyedMap for HashMap<M, K, V>
where
    M: Borrow<MapData> + std::borrow::BorrowMut<MapData>,
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    type Key = K;
    type Value = V;

    fn keys(&self) -> Result<Vec<K>, MapError> {
        HashMap::keys(self).collect()
    }

    fn entries(&self) -> Result<Option<Entries<Self>>, MapError> {
        let fail = |io_error| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error,
            })
        };
        let fd = aya::maps::IterableMap::<K, V>::map(self).fd().as_fd();
        let raw = crate::sys::bpf::RawMap::from_fd(fd).map_err(fail)?;
        let shape = raw.shape();
        if shape.key_size as usize != size_of::<K>() || shape.value_size as usize != size_of::<V>()
        {
            return Ok(None);
        }
        let mut out = BTreeMap::new();
        // Twice the size: a walk racing deletes may see a key twice, never
        // more entries than that.
        let limit = 2 * shape.max_entries as usize;
        let read = raw
            .for_each_batched(limit, |k, v| {
                // SAFETY: both are Pod types of exactly these sizes (checked
                // above against the map's shape); unaligned reads of bytes.
                let (k, v) = unsafe {
                    (
                        std::ptr::read_unaligned(k.as_ptr().cast::<K>()),
                        std::ptr::read_unaligned(v.as_ptr().cast::<V>()),
                    )
                };
                out.insert(k, v);
            })
            .map_err(fail)?;
        Ok(read.map(|_| out))
    }

    fn get(&self, key: &K) -> Option<V> {
        HashMap::get(self, key, 0).ok()
    }

    fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        HashMap::insert(self, key, value, 0)
    }

    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        HashMap::remove(self, key)
    }

    fn insert_all(&mut self, entries: &[(&K, &V)]) -> Result<(), MapError> {
        if entries.len() < BATCH_FROM {
            for (k, v) in entries {
                HashMap::insert(self, *k, *v, 0)?;
            }
            return Ok(());
        }
        // Packed a chunk at a time into buffers used again: 10 000 filter
        // bitmaps are 20 MB, which one buffer would copy and fault in.
        let sizes = (size_of::<K>(), size_of::<V>());
        let per_chunk = (crate::sys::bpf::BATCH_BYTES / (sizes.0 + sizes.1)).max(1);
        let mut keys = Vec::with_capacity(per_chunk.min(entries.len()) * sizes.0);
        let mut values = Vec::with_capacity(per_chunk.min(entries.len()) * sizes.1);
        for (i, chunk) in entries.chunks(per_chunk).enumerate() {
            keys.clear();
            values.clear();
            for (k, v) in chunk {
                keys.extend_from_slice(bytes_of(*k));
                values.extend_from_slice(bytes_of(*v));
            }
            let fd = aya::maps::IterableMap::<K, V>::map(self).fd().as_fd();
            match crate::sys::bpf::update_batch(fd, &keys, &values, sizes) {
                Ok(true) => {}
                // No batch updates here (known at the first chunk): one
                // entry at a time.
                Ok(false) if i == 0 => {
                    for (k, v) in entries {
                        HashMap::insert(self, *k, *v, 0)?;
                    }
                    return Ok(());
                }
                Ok(false) => {
                    for (k, v) in chunk {
                        HashMap::insert(self, *k, *v, 0)?;
                    }
                }
                Err(io_error) => {
                    return Err(MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error,
                    }))
                }
            }
        }
        Ok(())
    }
}

/// Entries from which [`KeyedMap::insert_all`] writes a hash map in
/// batches (below, packing them costs more than the calls it saves).
pub const BATCH_FROM: usize = 16;

/// The bytes of a plain-data value, as the kernel reads a key or value.
pub fn bytes_of<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: `aya::Pod` types are plain data without padding bytes the
    // kernel could not read; the slice covers exactly the value.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
}

impl<M, K, V> KeyedMap for LpmTrie<M, K, V>
where
    M: Borrow<MapData> + std::borrow::BorrowMut<MapData>,
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    type Key = (u32, K);
    type Value = V;

    fn keys(&self) -> Result<Vec<(u32, K)>, MapError> {
        LpmTrie::keys(self)
            .map(|k| k.map(|k| (k.prefix_len(), k.data())))
            .collect()
    }

    /// Always None: a trie lookup is longest-prefix, not exact (it may
    /// answer with an enclosing entry), so every wanted entry is written.
    fn get(&self, _: &(u32, K)) -> Option<V> {
        None
    }

    fn insert(&mut self, (len, data): &(u32, K), value: &V) -> Result<(), MapError> {
        LpmTrie::insert(self, &lpm_trie::Key::new(*len, *data), value, 0)
    }

    fn remove(&mut self, (len, data): &(u32, K)) -> Result<(), MapError> {
        LpmTrie::remove(self, &lpm_trie::Key::new(*len, *data))
    }
}

/// Makes `map` hold exactly `want`, reading what it holds now, except the
/// entries `keep` says to leave alone (another generation the programs are
/// reading). Deletes come first, so the map never needs room for both the
/// old and the new entries; only entries that differ are written.
pub fn reconcile<M, V>(
    map: &mut M,
    name: &'static str,
    want: &BTreeMap<M::Key, V>,
    keep: impl Fn(&M::Key) -> bool,
) -> Result<(), MapsError>
where
    M: KeyedMap,
    V: Borrow<M::Value>,
{
    // Read in batches where the map allows: the values then need no
    // lookup each (a rule set written again over 10 000 entries).
    let entries = map.entries().map_err(map_err(name))?;
    let have: Vec<M::Key> = match entries {
        Some(_) => Vec::new(),
        None => map.keys().map_err(map_err(name))?,
    };
    let keys: Vec<&M::Key> = match &entries {
        Some(e) => e.keys().collect(),
        None => have.iter().collect(),
    };
    for k in keys.iter().filter(|k| !keep(k) && !want.contains_key(k)) {
        match map.remove(k) {
            // Gone meanwhile: what was wanted.
            Err(e) if !is_not_found(&e) => return Err(map_err(name)(e)),
            _ => {}
        }
    }
    // A key the map did not hold is written without reading it first
    // (a rule set installed afresh is all new keys).
    let held: std::collections::BTreeSet<&M::Key> = keys.iter().copied().collect();
    let writes: Vec<(&M::Key, &M::Value)> = want
        .iter()
        .map(|(k, v)| (k, v.borrow()))
        .filter(|(k, v)| {
            !held.contains(k)
                || match &entries {
                    Some(e) => e.get(*k) != Some(*v),
                    None => map.get(k).as_ref() != Some(*v),
                }
        })
        .collect();
    map.insert_all(&writes).map_err(map_err(name))
}

/// One step of walking two sorted maps side by side.
enum Diff<'a, K, V> {
    Gone(&'a K),
    Set(&'a K, &'a V),
}

/// The entries that differ between two maps, in one merge walk over both
/// (no lookups): what `old` has and `new` lacks, and what `new` has that
/// `old` has not or has with another value.
fn diff<'a, K: Ord, V: PartialEq>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> Vec<Diff<'a, K, V>> {
    let mut out = Vec::new();
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some((ok, _)), None) => {
                out.push(Diff::Gone(*ok));
                o.next();
            }
            (None, Some((nk, nv))) => {
                out.push(Diff::Set(*nk, *nv));
                n.next();
            }
            (Some((ok, ov)), Some((nk, nv))) => match ok.cmp(nk) {
                std::cmp::Ordering::Less => {
                    out.push(Diff::Gone(*ok));
                    o.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(Diff::Set(*nk, *nv));
                    n.next();
                }
                std::cmp::Ordering::Equal => {
                    if ov != nv {
                        out.push(Diff::Set(*nk, *nv));
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
    out
}

/// Takes `map` from `old` (what it was last set to) to `new`: one syscall
/// per entry that differs, none for the rest.
pub fn update<M: KeyedMap>(
    map: &mut M,
    name: &'static str,
    old: &BTreeMap<M::Key, M::Value>,
    new: &BTreeMap<M::Key, M::Value>,
) -> Result<(), MapsError> {
    // Removals first (room for the writes in a full map), then the writes
    // together (batched where the map allows).
    let mut writes = Vec::new();
    for d in diff(old, new) {
        match d {
            Diff::Gone(k) => match map.remove(k) {
                // Gone already (an expired endpoint, a cleanup): nothing to do.
                Err(e) if !is_not_found(&e) => return Err(map_err(name)(e)),
                _ => {}
            },
            Diff::Set(k, v) => writes.push((k, v)),
        }
    }
    map.insert_all(&writes).map_err(map_err(name))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aya::maps::{Array, MapData};

    use super::{diff, open, open_if_pinned, Diff, PinRoot};

    /// A write into a full map names the map and the setting to raise.
    #[test]
    fn a_full_map_says_which_setting_to_raise() {
        let full = |errno| {
            super::map_err(dataplane_common::maps::PORTS)(aya::maps::MapError::SyscallError(
                aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: std::io::Error::from_raw_os_error(errno),
                },
            ))
        };
        assert_eq!(
            full(libc::E2BIG).to_string(),
            "map DP_PORTS is full: raise `[maps] published_ports` in the agent's config; \
             `dataplane status` shows each map's fill"
        );
        assert!(matches!(full(libc::EPERM), super::MapsError::Map { .. }));
    }

    /// A map nobody pinned: None from `open_if_pinned`, an error that says
    /// so from `open`. (The bpf syscall may be closed to other users.)
    #[test]
    fn a_map_not_pinned_is_none_or_not_pinned() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let pins = PinRoot::new(std::env::temp_dir().join("dataplane-no-such-pins"));
        let got = open_if_pinned::<Array<MapData, u32>>(&pins, "DP_NOTHING").expect("no error");
        assert!(got.is_none());
        let Err(err) = open::<_, Array<MapData, u32>>(&pins, "DP_NOTHING") else {
            panic!("opened a map nobody pinned");
        };
        assert!(err.is_not_pinned(), "{err:?}");
        assert_eq!(err.map(), Some("DP_NOTHING"));
    }

    #[test]
    fn diff_walks_both_maps_once() {
        let old: BTreeMap<u32, u32> = [(1, 10), (2, 20), (4, 40), (6, 60)].into();
        let new: BTreeMap<u32, u32> = [(2, 20), (3, 30), (4, 41), (7, 70)].into();
        let got: Vec<String> = diff(&old, &new)
            .into_iter()
            .map(|d| match d {
                Diff::Gone(k) => format!("-{k}"),
                Diff::Set(k, v) => format!("+{k}={v}"),
            })
            .collect();
        assert_eq!(got, ["-1", "+3=30", "+4=41", "-6", "+7=70"]);
        assert!(diff(&new, &new).is_empty());
    }
}
