//! DOCKER-USER-style filter rules, the datapath side: compiling an ordered
//! rule list into the maps' contents ([`compile`]) and writing them
//! ([`apply`], in `apply.rs`, with the counters). The rules themselves, as
//! the state keeps them and the CLI parses them, are `crate::control::filter_rules`.
//!
//! Rules filter traffic from outside on its way to containers, after DNAT
//! (so `--dport` is the container's port, as in Docker's DOCKER-USER chain).
//! They are evaluated in order, the first match decides, no match accepts.
//!
//! The eBPF side must not walk the rules, so [`compile`] turns the ordered
//! list into per-dimension bitmaps (see `dataplane_common::filter`): for
//! each value a packet can have in a dimension (a source region, an
//! interface, a port, a network), the set of rules that dimension lets
//! through. The program ANDs one bitmap per dimension and takes the lowest
//! bit: the first rule matching in every dimension. Up to [`MAX_RULES`]
//! rules; [`compile`] does not test every rule against every source region
//! (10 000 /32 sources would be 10^8 tests) but walks each region's at most
//! 33 enclosing prefixes.
//!
//! [`apply`] writes a compiled rule set into the generation of the maps the
//! program is not reading and then switches generations with one write, so
//! no packet is judged by a mix of two rule sets. It is a full reconcile, so
//! running it twice changes nothing and stray entries are removed. Callers
//! serialise it (the CLI holds the state lock).

mod apply;
pub mod upgrade;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    hash::{DefaultHasher, Hash, Hasher},
};

pub use apply::{apply, counters, counters_by_id};
pub use dataplane_common::filter::MAX_RULES;
use dataplane_common::filter::{HostRules, RuleBits, ACTION_ACCEPT, ACTION_DROP};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{maps::MapsError, proto::Proto};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{flag} {value:?}: not an IP address or CIDR (e.g. 192.168.1.0/24 or 2001:db8::/32)")]
    Cidr { flag: &'static str, value: String },
    #[error("--src {src:?} and --not-src {not_src:?}: give at most one of them")]
    SrcAndNotSrc { src: String, not_src: String },
    #[error("--dport {value:?}: port {port:?} is not a number from 1 to 65535")]
    Port { value: String, port: String },
    #[error("--dport {value:?}: unknown protocol {proto:?} (tcp or udp)")]
    Proto { value: String, proto: String },
    #[error("--action {0:?}: expected drop or accept")]
    Action(String),
    #[error("--in {0:?}: not an interface name (1 to 15 bytes, no '/', ':' or whitespace)")]
    Iface(String),
    #[error("--in {0:?}: interface wildcards are not supported; add a rule per interface")]
    IfaceWildcard(String),
    #[error("--network {0:?}: empty network name")]
    Network(String),
    #[error("{count} filter rules: at most {MAX_RULES} are supported")]
    TooManyRules { count: usize },
    /// A rule of a `filter_add_many` request, by its index in `rules`.
    #[error("rules[{index}]")]
    InRequest {
        index: usize,
        #[source]
        source: Box<FilterError>,
    },
    #[error("filter rule id {0} appears more than once")]
    DuplicateId(u32),
    #[error("filter rule {id}: port 0 in --dport")]
    RulePort { id: u32 },
    #[error("filter rule {id}: {flag} {name:?} was not resolved to an {what}")]
    Unresolved {
        id: u32,
        flag: &'static str,
        name: String,
        what: &'static str,
    },
    #[error("filter rule {id}: resolved a {flag} the rule does not have")]
    ResolvedExtra { id: u32, flag: &'static str },
    #[error("filter rule {id}: {flag} resolved to 0, which is reserved for \"any\"")]
    ResolvedZero { id: u32, flag: &'static str },
    #[error("filter position {0}: positions run from 0 to {max}", max = MAX_RULES - 1)]
    Position(u32),
    #[error(transparent)]
    Map(#[from] MapsError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Drop,
    Accept,
}

impl Action {
    pub const fn name(self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Accept => "accept",
        }
    }

    const fn code(self) -> u32 {
        match self {
            Action::Drop => ACTION_DROP,
            Action::Accept => ACTION_ACCEPT,
        }
    }
}

/// `--src CIDR` (negate false) or `--not-src CIDR` (negate true), of
/// either family. A rule with a source condition is a rule of that
/// condition's family: `--src 2001:db8::/32` and `--not-src 2001:db8::/32`
/// alike never match an IPv4 packet (as a rule written to ip6tables alone),
/// and the other way round. A rule without one matches both families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrcMatch {
    pub cidr: IpNet,
    pub negate: bool,
}

/// A CIDR of one family, the key of that family's source regions.
trait SrcNet: Copy + Ord + Hash + Default {
    /// `net` if it is of this family.
    fn of(net: IpNet) -> Option<Self>;
    fn len(&self) -> u8;
    /// The prefix of `len` bits enclosing this one (host bits cleared).
    fn enclosing(&self, len: u8) -> Option<Self>;
    /// Whether `self` contains all of `other`.
    fn covers(&self, other: &Self) -> bool;
    /// A single address: a /32 or a /128.
    fn is_host(&self) -> bool;
}

macro_rules! src_net {
    ($t:ty, $variant:ident) => {
        impl SrcNet for $t {
            fn of(net: IpNet) -> Option<Self> {
                match net {
                    IpNet::$variant(n) => Some(n.trunc()),
                    _ => None,
                }
            }

            fn len(&self) -> u8 {
                self.prefix_len()
            }

            fn enclosing(&self, len: u8) -> Option<Self> {
                <$t>::new(self.network(), len).ok().map(|n| n.trunc())
            }

            fn covers(&self, other: &Self) -> bool {
                self.contains(other)
            }

            fn is_host(&self) -> bool {
                self.prefix_len() == self.max_prefix_len()
            }
        }
    };
}
src_net!(Ipv4Net, V4);
src_net!(Ipv6Net, V6);

/// What [`compile`] needs of a rule: its id (the user's handle), its
/// conditions (None: any) and its action. The rules as the state keeps them
/// (`crate::control::filter_rules::FilterRule`) implement it.
pub trait RuleConditions {
    fn id(&self) -> u32;
    /// Network name.
    fn network(&self) -> Option<&str>;
    /// Interface the packet came in on.
    fn in_iface(&self) -> Option<&str>;
    fn src(&self) -> Option<SrcMatch>;
    /// Destination port after DNAT (the container's port).
    fn dport(&self) -> Option<(u16, Proto)>;
    fn action(&self) -> Action;
}

/// What the caller resolved a rule's names to. None: the rule has no such
/// condition (wildcard). A name that does not resolve (an interface that is
/// not there now) must not become None, which would widen the rule to every
/// interface: give it a value nothing has instead (e.g. `u32::MAX` for an
/// ifindex) and recompile when it appears.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolvedRule {
    /// Index of `in_iface` in the namespace the uplink programs run in.
    pub ifindex: Option<u32>,
    /// `nat::network_key` of the network's id (never 0).
    pub network: Option<u32>,
}

/// A hash dimension: the rules without a condition in it (`any`, stored
/// under the reserved key) and, per value some rule names, the rules that
/// hold for that value (`any` included, so the program needs one lookup
/// when the value is named and falls back to `any` when it is not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dimension<K: Ord> {
    pub any: RuleBits,
    /// Boxed, like every bitmap kept in a map here: at 1952 bytes, moving
    /// them around inside a B-tree dominated compile time.
    pub by_key: BTreeMap<K, Box<RuleBits>>,
}

impl<K: Ord> Default for Dimension<K> {
    fn default() -> Self {
        Dimension {
            any: RuleBits::EMPTY,
            by_key: BTreeMap::new(),
        }
    }
}

impl<K: Ord> Dimension<K> {
    /// What the program finds for `key`.
    pub fn lookup(&self, key: &K) -> &RuleBits {
        self.by_key.get(key).map_or(&self.any, |b| b)
    }

    fn build(conds: impl Iterator<Item = Option<K>>) -> Dimension<K> {
        let mut d = Dimension::default();
        for (pos, cond) in (0u32..).zip(conds) {
            match cond {
                None => d.any.set(pos),
                Some(k) => d.by_key.entry(k).or_default().set(pos),
            }
        }
        for bits in d.by_key.values_mut() {
            bits.or_assign(&d.any);
        }
        d
    }
}

/// One family's source regions (the trie's entries, with their bitmaps)
/// and single addresses (the hash's, with what each adds).
pub type Sources<N> = (BTreeMap<N, Box<RuleBits>>, BTreeMap<N, HostRules>);

/// Every filter map's desired contents, independent of generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// IPv4 source regions, the trie's entries: every IPv4 CIDR a rule
    /// names but the addresses in `hosts`, and 0.0.0.0/0.
    pub src: BTreeMap<Ipv4Net, Box<RuleBits>>,
    /// The /32s rules name whose own rules fit a [`HostRules`] (see
    /// `dataplane_common::filter`): what they add to their region's bitmap.
    pub hosts: BTreeMap<Ipv4Net, HostRules>,
    /// IPv6 source regions, the same way: every IPv6 CIDR a rule names
    /// but those in `hosts6`, and ::/0.
    pub src6: BTreeMap<Ipv6Net, Box<RuleBits>>,
    /// The /128s, as `hosts`.
    pub hosts6: BTreeMap<Ipv6Net, HostRules>,
    pub iface: Dimension<u32>,
    pub port: Dimension<(u16, Proto)>,
    pub network: Dimension<u32>,
    /// Per position: the rule's id and action; its length is the number
    /// of rules.
    pub actions: Vec<(u32, Action)>,
}

impl Compiled {
    /// Number of rules (positions 0..rules are used).
    pub fn rules(&self) -> u32 {
        self.actions.len() as u32
    }

    /// A fingerprint of everything [`apply`] writes, never 0 (the value of
    /// a fresh config). Hashes the non-zero words only.
    pub fn digest(&self) -> u64 {
        fn bits(h: &mut impl Hasher, b: &RuleBits) {
            b.summary.hash(h);
            for (w, word) in b.words.iter().enumerate().filter(|(_, w)| **w != 0) {
                (w, word).hash(h);
            }
        }
        fn dimension<K: Ord + Hash>(h: &mut impl Hasher, d: &Dimension<K>) {
            bits(h, &d.any);
            d.by_key.len().hash(h);
            for (k, b) in &d.by_key {
                k.hash(h);
                bits(h, b);
            }
        }
        let mut h = DefaultHasher::new();
        self.src.len().hash(&mut h);
        for (net, b) in &self.src {
            net.hash(&mut h);
            bits(&mut h, b);
        }
        self.hosts.len().hash(&mut h);
        for (net, r) in &self.hosts {
            (net, r.positions()).hash(&mut h);
        }
        self.src6.len().hash(&mut h);
        for (net, b) in &self.src6 {
            net.hash(&mut h);
            bits(&mut h, b);
        }
        self.hosts6.len().hash(&mut h);
        for (net, r) in &self.hosts6 {
            (net, r.positions()).hash(&mut h);
        }
        dimension(&mut h, &self.iface);
        dimension(&mut h, &self.port);
        dimension(&mut h, &self.network);
        self.actions.hash(&mut h);
        h.finish().max(1)
    }
}

/// Compiles rules (in evaluation order) into the maps' contents.
///
/// The source dimension is an LPM trie per family whose entries are every
/// CIDR of that family a rule names plus 0.0.0.0/0 (::/0). A rule whose
/// source is of the other family is in none of the family's bitmaps; a
/// rule without a source is in all of them. Within one family: An address's longest match is entry X when it lies
/// in X's *region*: X minus the more specific entries inside it. For each
/// entry the bitmap is the rules whose source condition holds for the whole
/// region, which is well defined: take an address `a` in X's region and a
/// listed CIDR Y. If Y ⊇ X, `a` ∈ Y. Otherwise Y and X are disjoint (so `a`
/// ∉ Y), or Y ⊂ X, and then Y is an entry of its own, more specific than X,
/// so `a` ∈ Y would have made Y the longest match: `a` ∉ Y. Hence `a` ∈ Y
/// exactly when Y ⊇ X, the same for every address of the region: `--src Y`
/// holds iff Y ⊇ X, `--not-src Y` iff not, rules without a source always.
///
/// So a region's bitmap starts as the rules without a source and the
/// `--not-src` rules, and only the rules naming one of X's at most 33
/// enclosing prefixes (129 for IPv6; X itself included) change it: `--src`
/// ones are added, `--not-src` ones removed. The cost is regions × (prefix
/// lengths in use, at most 33 or 129) lookups plus the rules on those
/// prefixes, not regions × rules.
pub fn compile<R: RuleConditions>(
    rules: &[R],
    resolve: impl Fn(&R) -> ResolvedRule,
) -> Result<Compiled, FilterError> {
    if rules.len() > MAX_RULES as usize {
        return Err(FilterError::TooManyRules { count: rules.len() });
    }
    let mut ids = BTreeSet::new();
    let mut resolved = Vec::with_capacity(rules.len());
    for r in rules {
        if !ids.insert(r.id()) {
            return Err(FilterError::DuplicateId(r.id()));
        }
        // State files are input too: CLI parsing never lets port 0 through.
        if matches!(r.dport(), Some((0, _))) {
            return Err(FilterError::RulePort { id: r.id() });
        }
        let res = resolve(r);
        check_resolved(r.id(), "--in", "interface", r.in_iface(), res.ifindex)?;
        check_resolved(r.id(), "--network", "network", r.network(), res.network)?;
        resolved.push(res);
    }

    let (src, hosts) = source_regions(rules);
    let (src6, hosts6) = source_regions(rules);
    Ok(Compiled {
        src,
        hosts,
        src6,
        hosts6,
        iface: Dimension::build(resolved.iter().map(|r| r.ifindex)),
        port: Dimension::build(rules.iter().map(|r| r.dport())),
        network: Dimension::build(resolved.iter().map(|r| r.network)),
        actions: rules.iter().map(|r| (r.id(), r.action())).collect(),
    })
}

/// One family's source regions and their bitmaps (see [`compile`]), and
/// the single addresses kept out of them: those only `--src` rules name,
/// at most [`HOST_RULES`](dataplane_common::filter::HOST_RULES) of them, whose rules are their enclosing
/// region's plus these (the enclosing prefixes of an address but itself
/// are those of its longest match in the trie, and each rule has one
/// source, so the address's own rules only add to that region's bitmap).
/// Any other single address is a region of its own, with its whole bitmap.
fn source_regions<N: SrcNet, R: RuleConditions>(rules: &[R]) -> Sources<N> {
    // Rules whose source condition holds outside every listed CIDR of the
    // family, and the rules naming each CIDR.
    let mut outside = RuleBits::EMPTY;
    let mut naming: StdHashMap<N, Vec<(u32, bool)>> = StdHashMap::new();
    for (pos, r) in (0u32..).zip(rules) {
        match r.src() {
            None => outside.set(pos),
            Some(s) => {
                // The other family's rules: in no bitmap of this one.
                let Some(cidr) = N::of(s.cidr) else {
                    continue;
                };
                if s.negate {
                    outside.set(pos);
                }
                naming.entry(cidr).or_default().push((pos, s.negate));
            }
        }
    }
    let mut hosts = BTreeMap::new();
    let mut regions = BTreeSet::from([N::default()]);
    for (cidr, named) in &naming {
        let own = cidr.is_host() && named.iter().all(|(_, negate)| !negate);
        let mut positions: Vec<u32> = named.iter().map(|(pos, _)| *pos).collect();
        positions.sort_unstable();
        match own.then(|| HostRules::new(&positions)).flatten() {
            Some(r) => {
                hosts.insert(*cidr, r);
            }
            None => {
                regions.insert(*cidr);
            }
        }
    }
    // Only the prefix lengths some region uses can enclose a region (10 000
    // /32 rules: one lookup per region, not 33).
    let lens: BTreeSet<u8> = regions.iter().map(N::len).collect();
    let regions = regions
        .into_iter()
        .map(|region| {
            let mut bits = Box::new(outside);
            for &len in lens.range(..=region.len()) {
                let Some(enclosing) = region.enclosing(len) else {
                    continue;
                };
                for &(pos, negate) in naming.get(&enclosing).into_iter().flatten() {
                    // The named CIDR is `enclosing`, which covers the
                    // region: `--src` holds there, `--not-src` does not.
                    if enclosing.covers(&region) != negate {
                        bits.set(pos);
                    } else {
                        bits.clear(pos);
                    }
                }
            }
            (region, bits)
        })
        .collect();
    (regions, hosts)
}

/// A named condition must resolve, to something other than the wildcard
/// key; an absent one must not resolve.
fn check_resolved(
    id: u32,
    flag: &'static str,
    what: &'static str,
    name: Option<&str>,
    value: Option<u32>,
) -> Result<(), FilterError> {
    match (name, value) {
        (Some(name), None) => Err(FilterError::Unresolved {
            id,
            flag,
            name: name.to_owned(),
            what,
        }),
        (None, Some(_)) => Err(FilterError::ResolvedExtra { id, flag }),
        (Some(_), Some(0)) => Err(FilterError::ResolvedZero { id, flag }),
        _ => Ok(()),
    }
}
