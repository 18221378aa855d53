//! Pins made before [`HostRules`] (layout schema 1) keep every address a
//! /32 or /128 rule names with its whole bitmap in `DP_FLT_SRC_HOST` and
//! `DP_FLT_SRC6_HOST`, which this build's programs do not read. Before the
//! links move to the new programs, the live generation's entries are
//! written the new way (what the address adds to its region in
//! `DP_FLT_HOST4`/`DP_FLT_HOST6`, or its whole bitmap as a full-length
//! prefix in the trie when that does not fit), so no packet from a blocked
//! address slips through between the upgrade and the agent's next write of
//! the rules; then the old maps are unpinned.

use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData};
use dataplane_common::{
    filter::{
        src6_data, src_data, FilterConfig, FilterHostKey, FilterHostKey6, HostRules, RuleBits,
        GENERATIONS, SRC_GEN_BITS,
    },
    maps,
};

use crate::datapath::{
    bpffs::PinRoot,
    maps::{is_not_found, map_err, open, open_if_pinned, MapsError},
};

/// Why the older pins' filter maps could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("unpinning the converted filter map {path}")]
    Unpin {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Map(#[from] MapsError),
}

/// What an address's whole bitmap `bits` adds to its region's `region`,
/// when that is all it does (it takes no rule away) and fits a
/// [`HostRules`]; None otherwise.
pub fn host_rules(bits: &RuleBits, region: &RuleBits) -> Option<HostRules> {
    if region.positions().any(|p| !bits.contains(p)) {
        return None;
    }
    let own: Vec<u32> = bits.positions().filter(|p| !region.contains(*p)).collect();
    HostRules::new(&own)
}

/// Converts both families' old host maps, if pinned, and unpins them.
/// Returns how many live entries were converted.
pub fn convert_v1_hosts(pins: &PinRoot) -> Result<usize, UpgradeError> {
    let [old4, old6] = maps::FILTER_SRC_HOST_V1;
    let v4 = convert(
        pins,
        [old4, maps::FILTER_HOST, maps::FILTER_SRC],
        |live, k: &FilterHostKey| (k.gen == live).then(|| src_data(live, k.addr)),
        32,
    )?;
    let v6 = convert(
        pins,
        [old6, maps::FILTER_HOST6, maps::FILTER_SRC6],
        |live, k: &FilterHostKey6| (k.gen == live).then(|| src6_data(live, k.addr)),
        128,
    )?;
    Ok(v4 + v6)
}

fn open_old<K: aya::Pod>(
    pins: &PinRoot,
    name: &'static str,
) -> Result<Option<HashMap<MapData, K, RuleBits>>, UpgradeError> {
    Ok(open_if_pinned::<HashMap<MapData, K, RuleBits>>(pins, name)?.map(|(m, _)| m))
}

fn live_gen(pins: &PinRoot) -> Result<u32, UpgradeError> {
    let name = maps::FILTER_CONFIG;
    let cfg: aya::maps::Array<MapData, FilterConfig> = open(pins, name)?;
    Ok(cfg.get(&0, 0).map_err(map_err(name))?.gen % GENERATIONS)
}

/// One family (`names`: the old map, the host hash, the trie), if its old
/// map is pinned: each entry of the live generation (`data` gives its trie
/// key data, None for the other generation's) becomes a host entry or a
/// full-length prefix (`addr_bits`) in the trie; then the old map is
/// unpinned.
fn convert<K, D>(
    pins: &PinRoot,
    [old_name, host_name, trie_name]: [&'static str; 3],
    data: impl Fn(u32, &K) -> Option<D>,
    addr_bits: u32,
) -> Result<usize, UpgradeError>
where
    K: aya::Pod,
    D: aya::Pod,
{
    let Some(old) = open_old::<K>(pins, old_name)? else {
        return Ok(0);
    };
    let live = live_gen(pins)?;
    let mut hosts: HashMap<MapData, K, HostRules> = open(pins, host_name)?;
    let mut trie: LpmTrie<MapData, D, RuleBits> = open(pins, trie_name)?;
    let mut done = 0;
    for entry in old.iter() {
        let (k, bits) = entry.map_err(map_err(old_name))?;
        let Some(d) = data(live, &k) else {
            continue;
        };
        let key = Key::new(SRC_GEN_BITS + addr_bits, d);
        // The address is not in the trie yet: its longest match there is
        // its region.
        let region = match trie.get(&key, 0) {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => RuleBits::EMPTY,
            Err(e) => return Err(map_err(trie_name)(e).into()),
        };
        match host_rules(&bits, &region) {
            Some(r) => hosts.insert(k, r, 0).map_err(map_err(host_name))?,
            None => trie.insert(&key, bits, 0).map_err(map_err(trie_name))?,
        }
        done += 1;
    }
    unpin(pins, old_name)?;
    Ok(done)
}

fn unpin(pins: &PinRoot, name: &'static str) -> Result<(), UpgradeError> {
    let path = pins.map(name);
    match std::fs::remove_file(&path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(UpgradeError::Unpin { path, source })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(positions: &[u32]) -> RuleBits {
        RuleBits::from_positions(positions)
    }

    #[test]
    fn an_address_that_only_adds_rules_becomes_a_host_entry() {
        let region = bits(&[3, 9]);
        let r = host_rules(&bits(&[1, 3, 9, 12]), &region).expect("fits");
        assert_eq!(r.positions(), [1, 12]);
        // Takes rule 9 away (a --not-src naming it): its whole bitmap.
        assert_eq!(host_rules(&bits(&[1, 3]), &region), None);
        // More rules of its own than a host entry holds.
        let many: Vec<u32> = (20..28).collect();
        assert_eq!(host_rules(&bits(&many), &RuleBits::EMPTY), None);
    }
}
