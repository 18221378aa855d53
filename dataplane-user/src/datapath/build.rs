//! Which build of the programs the pinned links run: a hash of the eBPF
//! object that last attached or moved them, recorded under the pin root
//! (`DP_OBJECT`, an array of one u64). A load by another build (an upgrade,
//! or a downgrade) moves every pinned link to its own programs
//! (`Dataplane::relink`, `BPF_LINK_UPDATE`: atomic per link, never a moment
//! without a program), so the new agent runs its own datapath code, not
//! the previous release's, with the flows kept in the maps they share.

use std::{io, path::PathBuf};

use super::bpffs::PinRoot;
use crate::sys::bpf::{MapShape, RawMap};

/// The record's pin name.
pub const OBJECT_MAP: &str = "DP_OBJECT";
/// `BPF_MAP_TYPE_ARRAY`.
const ARRAY: u32 = 2;

/// What failed reading or writing the record.
#[derive(Debug, thiserror::Error)]
#[error("the record of the attached programs' build at {path}")]
pub struct BuildRecordError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn shape() -> MapShape {
    MapShape {
        map_type: ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        flags: 0,
    }
}

/// FNV-1a over the object's bytes: the same object, the same hash, in any
/// process (no allocator or hasher state involved).
pub fn object_hash(object: &[u8]) -> u64 {
    object.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The recorded build; None when nothing is recorded (a new pin root, or
/// pins of a release from before the record: their links are moved).
pub fn recorded(pins: &PinRoot) -> Result<Option<u64>, BuildRecordError> {
    let path = pins.map(OBJECT_MAP);
    let err = |source| BuildRecordError {
        path: path.clone(),
        source,
    };
    let map = match RawMap::from_pin(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    if map.shape() != shape() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not the build record (another layout)",
        )));
    }
    let value = map.lookup(&0u32.to_ne_bytes()).map_err(err)?;
    Ok(value
        .and_then(|v| v.try_into().ok())
        .map(u64::from_ne_bytes))
}

/// Records `hash` as the build the links run (creating the record).
pub fn record(pins: &PinRoot, hash: u64) -> Result<(), BuildRecordError> {
    let path = pins.map(OBJECT_MAP);
    let err = |source| BuildRecordError {
        path: path.clone(),
        source,
    };
    let map = RawMap::pinned_or_created(&path, OBJECT_MAP, shape()).map_err(err)?;
    map.update(&0u32.to_ne_bytes(), &hash.to_ne_bytes())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::object_hash;

    #[test]
    fn the_hash_tells_objects_apart_and_is_stable() {
        assert_eq!(object_hash(b"abc"), object_hash(b"abc"));
        assert_ne!(object_hash(b"abc"), object_hash(b"abd"));
        // FNV-1a's published value for "a".
        assert_eq!(object_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
