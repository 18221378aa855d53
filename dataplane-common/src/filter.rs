//! DOCKER-USER-style filter rules as the uplink's ingress program evaluates
//! them: at a cost that does not grow with the number of rules for traffic
//! no rule singles out.
//!
//! Rules sit at positions 0..[`MAX_RULES`] in evaluation order. Each match
//! dimension (source address, in-interface, destination port, network) has a
//! map from the packet's value in that dimension to a [`RuleBits`]: the rules
//! that dimension lets through. The source has two maps per address family:
//! an LPM trie of CIDRs ([`FilterSrcData`] or [`FilterSrc6Data`]) and, for
//! the single addresses /32 and /128 rules name, a hash ([`FilterHostKey`]
//! or [`FilterHostKey6`]) of the few rules each adds to its enclosing
//! region ([`HostRules`]); a rule naming a source of one family is absent
//! from the other family's source maps, so it never matches there.
//!
//! The program intersects the four sets; the lowest position left is the
//! first rule matching in every dimension, i.e. the first match in rule
//! order. Its [`FilterAction`] decides, its counter slot counts.
//!
//! A [`RuleBits`] is a two-level bitmap: [`RULE_WORDS`] 64-bit words of rule
//! bits and a summary with one bit per word saying which words are non-zero.
//! The program ANDs the four summaries first (four words each) and only then
//! looks at the words they all have ([`Scan`]), lowest first; traffic
//! that no rule names specifically (the usual case: a rule set of /32
//! sources, and a packet from none of them) ends at the summaries, and a
//! packet from a named address adds a test of its few [`HostRules`].
//!
//! Every key carries a generation (0 or 1) and [`FilterConfig`] names the
//! live one. The agent writes a whole new rule set into the other generation
//! and then flips [`FilterConfig::gen`] with one array update, so a packet
//! never sees half of an old rule set ANDed with half of a new one (rule
//! positions shift when a rule is inserted or removed, and a mixed lookup
//! would pick an unrelated rule).

use core::fmt;

use bytemuck::{Pod, Zeroable};

/// Words of rule bits in a [`RuleBits`]. 240 rather than 256: a value of
/// 240 words and their summary (1952 bytes) plus the kernel's per-element
/// header (LPM trie node or hash element, about 50 bytes) still fits a
/// 2 KiB allocation, where 256 words would take 4 KiB per map entry.
pub const RULE_WORDS: usize = 240;

/// Summary words: one bit per word of rule bits.
pub const SUMMARY_WORDS: usize = RULE_WORDS.div_ceil(64);

/// Most rules a rule set can hold: the width of [`RuleBits`] (15 360).
pub const MAX_RULES: u32 = (RULE_WORDS * 64) as u32;

/// Generations of rule sets kept side by side: the live one and the one
/// being written.
pub const GENERATIONS: u32 = 2;

/// The rules a dimension lets through: bit `i` (bit `i % 64` of word
/// `i / 64`) is the rule at position `i`, and bit `w` of the summary
/// (bit `w % 64` of `summary[w / 64]`) is set exactly when word `w` is not
/// zero. Changed only through its methods, which keep the two in step.
///
/// The program reads it in place, through the pointer the map lookup
/// returns: at 1952 bytes it does not fit the 512-byte BPF stack.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct RuleBits {
    pub summary: [u64; SUMMARY_WORDS],
    pub words: [u64; RULE_WORDS],
}
const _: () = assert!(size_of::<RuleBits>() == 1952);
const _: () = assert!(MAX_RULES as usize == 64 * RULE_WORDS);
const _: () = assert!(RULE_WORDS <= 64 * SUMMARY_WORDS);
// The bench's and issue 6's 10 000 rules fit.
const _: () = assert!(MAX_RULES >= 10_000);

impl RuleBits {
    pub const EMPTY: RuleBits = RuleBits {
        summary: [0; SUMMARY_WORDS],
        words: [0; RULE_WORDS],
    };

    /// The set of `positions` (those past [`MAX_RULES`] ignored).
    #[must_use]
    pub fn from_positions(positions: &[u32]) -> RuleBits {
        let mut b = RuleBits::EMPTY;
        for p in positions {
            b.set(*p);
        }
        b
    }

    /// Adds the rule at `pos`; positions past [`MAX_RULES`] are ignored.
    #[inline(always)]
    pub fn set(&mut self, pos: u32) {
        if pos < MAX_RULES {
            let w = (pos / 64) as usize;
            self.words[w] |= 1 << (pos % 64);
            self.summary[w / 64] |= 1 << (w % 64);
        }
    }

    /// Removes the rule at `pos`; positions past [`MAX_RULES`] are ignored.
    #[inline(always)]
    pub fn clear(&mut self, pos: u32) {
        if pos < MAX_RULES {
            let w = (pos / 64) as usize;
            self.words[w] &= !(1 << (pos % 64));
            if self.words[w] == 0 {
                self.summary[w / 64] &= !(1 << (w % 64));
            }
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn contains(&self, pos: u32) -> bool {
        pos < MAX_RULES && self.words[(pos / 64) as usize] & (1 << (pos % 64)) != 0
    }

    /// Adds every rule of `other`.
    pub fn or_assign(&mut self, other: &RuleBits) {
        for (s, o) in self.summary.iter_mut().zip(&other.summary) {
            *s |= o;
        }
        for (w, o) in self.words.iter_mut().zip(&other.words) {
            *w |= o;
        }
    }

    #[inline(always)]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.summary.iter().all(|s| *s == 0)
    }

    /// The lowest position in the set: the first rule in evaluation order.
    #[must_use]
    pub fn first(&self) -> Option<u32> {
        first_common(self, self, self, self)
    }

    /// The positions in the set, in order.
    pub fn positions(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..).zip(self.words.iter()).flat_map(|(w, word)| {
            let mut rest = *word;
            core::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                Some(w * 64 + bit)
            })
        })
    }
}

impl Default for RuleBits {
    fn default() -> Self {
        RuleBits::EMPTY
    }
}

/// The positions, not 240 words of mostly zeros.
impl fmt::Debug for RuleBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.positions()).finish()
    }
}

/// `x.trailing_zeros()` (x not 0), as a value the verifier knows is below
/// 64. LLVM expands `trailing_zeros` on BPF into a table lookup, which the
/// verifier only knows as some byte (0..=255): as a word index that reads
/// past the value. LLVM knows the result is below 64 and would drop a plain
/// `& 63`, so the value goes through `black_box` first, past which LLVM
/// cannot see and the mask stays.
#[inline(always)]
fn lowest_bit(x: u64) -> usize {
    core::hint::black_box(x.trailing_zeros() as usize) & 63
}

/// Steps a [`Scan`] may take: one per word of rule bits it tests, one per
/// summary word it moves on to. The bound of the program's `bpf_loop`.
pub const SCAN_STEPS: u32 = (RULE_WORDS + SUMMARY_WORDS) as u32;

/// A search for the lowest position in four sets, one [`Scan::step`] at a
/// time: the program runs the steps in a `bpf_loop` callback, userspace in
/// [`first_common`]. Lives on the program's stack, so it stays small.
///
/// The summaries' AND names the words all four sets have; only those are
/// read, lowest first, and the first non-zero AND of a word is the answer.
/// When the summaries do not meet, no word is read at all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Words of summary word `word` that all four summaries have and that
    /// are not tested yet.
    pub candidates: u64,
    /// The summary word being worked through, 0..[`SUMMARY_WORDS`].
    pub word: u32,
    /// The answer once found; [`Scan::NONE`] until then.
    pub found: u32,
}

impl Scan {
    pub const NONE: u32 = u32::MAX;

    /// A search that starts at summary word 0; None when the summaries do
    /// not meet at all (a packet no rule names): nothing is left to read.
    #[inline(always)]
    #[must_use]
    pub fn new(a: &RuleBits, b: &RuleBits, c: &RuleBits, d: &RuleBits) -> Option<Scan> {
        let mut any = 0;
        for i in 0..SUMMARY_WORDS {
            any |= a.summary[i] & b.summary[i] & c.summary[i] & d.summary[i];
        }
        (any != 0).then_some(Scan {
            candidates: a.summary[0] & b.summary[0] & c.summary[0] & d.summary[0],
            word: 0,
            found: Scan::NONE,
        })
    }

    /// Tests the lowest candidate word, or moves on to the next summary word
    /// when none is left. True when the search is over: [`Scan::found`]
    /// holds the answer, or there is none. Every index is checked against
    /// its array's length before use, so the verifier sees each access in
    /// bounds.
    #[inline(always)]
    pub fn step(&mut self, a: &RuleBits, b: &RuleBits, c: &RuleBits, d: &RuleBits) -> bool {
        if self.candidates == 0 {
            let next = self.word as usize + 1;
            if next >= SUMMARY_WORDS {
                return true;
            }
            self.word = next as u32;
            self.candidates = a.summary[next] & b.summary[next] & c.summary[next] & d.summary[next];
            return false;
        }
        let w = self.word as usize * 64 + lowest_bit(self.candidates);
        if w >= RULE_WORDS {
            // Summary bits past the last word are never set.
            return true;
        }
        let m = a.words[w] & b.words[w] & c.words[w] & d.words[w];
        if m != 0 {
            self.found = w as u32 * 64 + m.trailing_zeros();
            return true;
        }
        self.candidates &= self.candidates - 1;
        false
    }

    /// The answer: the first position in all four sets.
    #[inline(always)]
    #[must_use]
    pub fn found(&self) -> Option<u32> {
        (self.found != Scan::NONE).then_some(self.found)
    }
}

/// The lowest position in all four sets: the first rule that matches in
/// every dimension: the program's evaluation ([`Scan`]), its steps run in a
/// plain loop.
#[must_use]
pub fn first_common(a: &RuleBits, b: &RuleBits, c: &RuleBits, d: &RuleBits) -> Option<u32> {
    let mut scan = Scan::new(a, b, c, d)?;
    for _ in 0..SCAN_STEPS {
        if scan.step(a, b, c, d) {
            break;
        }
    }
    scan.found()
}

/// The one entry of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FilterConfig {
    /// The live generation (0 or 1); the other one is the agent's to write.
    pub gen: u32,
    /// Rules in the live generation; 0 lets every packet through without a
    /// lookup.
    pub rules: u32,
    /// The agent's fingerprint of the live rule set, so that applying the
    /// same set again (every change to networks or ports re-applies the
    /// filters) writes nothing. The program does not read it.
    pub digest: u64,
}
const _: () = assert!(size_of::<FilterConfig>() == 16);
const _: () = assert!(size_of::<Scan>() == 16);

/// Data of a source LPM trie key: the generation (big-endian, so it is the
/// first 32 bits the trie compares) then the IPv4 address. Its prefix length
/// is `32 + CIDR prefix length`: the generation always matches in full.
pub type FilterSrcData = [u8; 8];

/// The source trie key data for `addr` in generation `gen`.
#[inline(always)]
#[must_use]
pub const fn src_data(gen: u32, addr: [u8; 4]) -> FilterSrcData {
    let g = gen.to_be_bytes();
    [g[0], g[1], g[2], g[3], addr[0], addr[1], addr[2], addr[3]]
}

/// Prefix length of a source trie key for a CIDR of `cidr_len` bits.
pub const SRC_GEN_BITS: u32 = 32;

/// Data of an IPv6 source LPM trie key: the generation (big-endian), the
/// IPv6 address, then 4 zero bytes that no prefix reaches (they make the
/// key a multiple of the value's 8-byte alignment, as trie nodes need);
/// prefix length `32 + CIDR prefix length`, as for IPv4.
pub type FilterSrc6Data = [u8; 24];

/// The IPv6 source trie key data for `addr` in generation `gen`.
#[inline(always)]
#[must_use]
pub const fn src6_data(gen: u32, addr: [u8; 16]) -> FilterSrc6Data {
    let g = gen.to_be_bytes();
    let mut out = [0; 24];
    out[0] = g[0];
    out[1] = g[1];
    out[2] = g[2];
    out[3] = g[3];
    let mut i = 0;
    while i < 16 {
        out[4 + i] = addr[i];
        i += 1;
    }
    out
}

/// Source key of a single address a /32 rule names, in a hash beside the
/// trie ([`HostRules`]). Kept out of the trie because a trie of n entries
/// also allocates about n intermediate nodes of the full value size, which
/// for 1952-byte values doubles the memory of a list of /32s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FilterHostKey {
    pub gen: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<FilterHostKey>() == 8);

/// [`FilterHostKey`]'s IPv6 twin: a /128 rule's region.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FilterHostKey6 {
    pub gen: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<FilterHostKey6>() == 20);

/// Positions a [`HostRules`] holds.
pub const HOST_RULES: usize = 7;

/// What a single address adds to the rules of its enclosing region: the
/// positions of the rules naming exactly that address with `--src` (a /32
/// or /128), lowest first. The address's rules are the region's bitmap
/// (the trie's longest match, which never holds the address itself) plus
/// these, so the value is 32 bytes rather than a [`RuleBits`]' 1952: a
/// DOCKER-USER list of 10 000 blocked addresses writes 320 KB, not 20 MB.
///
/// An address named by a `--not-src` rule, or by more than [`HOST_RULES`]
/// rules, does not fit: the agent stores its whole bitmap in the trie as a
/// full-length prefix instead, where the longest match finds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HostRules {
    /// Positions in use, 1..=[`HOST_RULES`].
    pub count: u32,
    /// Ascending; those past `count` are unused (0).
    pub positions: [u32; HOST_RULES],
}
const _: () = assert!(size_of::<HostRules>() == 32);

impl HostRules {
    /// The positions, ascending and distinct; None when there are none or
    /// more than [`HOST_RULES`], or one is past [`MAX_RULES`].
    #[must_use]
    pub fn new(positions: &[u32]) -> Option<HostRules> {
        if positions.is_empty()
            || positions.len() > HOST_RULES
            || positions.windows(2).any(|w| w[0] >= w[1])
            || positions.iter().any(|p| *p >= MAX_RULES)
        {
            return None;
        }
        let mut out = HostRules {
            count: positions.len() as u32,
            positions: [0; HOST_RULES],
        };
        out.positions[..positions.len()].copy_from_slice(positions);
        Some(out)
    }

    /// The positions in use.
    #[must_use]
    pub fn positions(&self) -> &[u32] {
        &self.positions[..(self.count as usize).min(HOST_RULES)]
    }

    /// The lowest of its positions that the three other dimensions' sets
    /// all hold: the first of the address's own rules that matches.
    #[inline(always)]
    #[must_use]
    pub fn first_in(&self, b: &RuleBits, c: &RuleBits, d: &RuleBits) -> Option<u32> {
        let count = self.count as usize;
        for i in 0..HOST_RULES {
            if i >= count {
                break;
            }
            let p = self.positions[i];
            if b.contains(p) && c.contains(p) && d.contains(p) {
                return Some(p);
            }
        }
        None
    }
}

/// The first rule matching in all four dimensions when the source's rules
/// are a region's bitmap plus an address's own [`HostRules`]: the lower of
/// the two answers. `region_first` is the region's answer
/// ([`first_common`] with the same three other sets).
#[inline(always)]
#[must_use]
pub fn first_with_host(
    region_first: Option<u32>,
    host: Option<&HostRules>,
    b: &RuleBits,
    c: &RuleBits,
    d: &RuleBits,
) -> Option<u32> {
    match (region_first, host.and_then(|h| h.first_in(b, c, d))) {
        (Some(r), Some(h)) => Some(r.min(h)),
        (r, h) => r.or(h),
    }
}

/// In-interface key. `ifindex` [`ANY_IFINDEX`] holds the rules without
/// `--in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FilterIfaceKey {
    pub gen: u32,
    pub ifindex: u32,
}
const _: () = assert!(size_of::<FilterIfaceKey>() == 8);

/// No interface has index 0, so it is free to mean "any".
pub const ANY_IFINDEX: u32 = 0;

/// Destination port key (after DNAT: the container's port). Port 0 with
/// protocol 0 holds the rules without `--dport`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FilterPortKey {
    pub gen: u32,
    /// Network byte order.
    pub port: [u8; 2],
    /// IANA protocol number (TCP or UDP); 0 in the wildcard key.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<FilterPortKey>() == 8);

/// Network key (`SubnetPolicy::network_id`, never 0). [`ANY_NETWORK`] holds
/// the rules without `--network`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FilterNetKey {
    pub gen: u32,
    pub network_id: u32,
}
const _: () = assert!(size_of::<FilterNetKey>() == 8);

/// Network keys are never 0, so it is free to mean "any".
pub const ANY_NETWORK: u32 = 0;

/// What the rule at a position does, in the actions array at
/// [`slot`]`(gen, position)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FilterAction {
    /// [`ACTION_ACCEPT`] or [`ACTION_DROP`]; 0 in unused slots (accept).
    pub action: u32,
    /// The rule's id, so the agent can carry counters over when positions
    /// shift and report them by rule.
    pub rule_id: u32,
}
const _: () = assert!(size_of::<FilterAction>() == 8);

pub const ACTION_ACCEPT: u32 = 1;
pub const ACTION_DROP: u32 = 2;

/// Slots of the actions and counter arrays: one per position per generation.
pub const FILTER_SLOTS: u32 = GENERATIONS * MAX_RULES;

/// Index of `pos` of generation `gen` in the actions and counter arrays.
#[inline(always)]
#[must_use]
pub const fn slot(gen: u32, pos: u32) -> u32 {
    (gen % GENERATIONS) * MAX_RULES + pos
}

crate::user_pod!(
    RuleBits,
    FilterConfig,
    FilterHostKey,
    FilterHostKey6,
    HostRules,
    FilterIfaceKey,
    FilterPortKey,
    FilterNetKey,
    FilterAction
);

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(positions: &[u32]) -> RuleBits {
        RuleBits::from_positions(positions)
    }

    /// Every set whose positions are all below `MAX_RULES`, checked
    /// against its own definition: summary bit w iff word w is non-zero.
    fn summary_is_exact(b: &RuleBits) {
        for w in 0..RULE_WORDS {
            let bit = b.summary[w / 64] & (1 << (w % 64)) != 0;
            assert_eq!(bit, b.words[w] != 0, "word {w} of {b:?}");
        }
        assert_eq!(b.summary[SUMMARY_WORDS - 1] >> (RULE_WORDS % 64), 0);
    }

    #[test]
    fn set_and_clear_keep_the_summary_in_step() {
        // Words 0, 1, 63 | 64, 156 | 239: summary words 0, 1, 2 and 3.
        let mut b = bits(&[0, 1, 64, 4095, 4096, 9_999, 10_000, MAX_RULES - 1]);
        summary_is_exact(&b);
        assert_eq!(b.summary, [0b11 | 1 << 63, 1, 1 << 28, 1 << 47]);
        b.clear(0);
        assert!(b.summary[0] & 1 != 0, "word 0 still holds position 1");
        b.clear(1);
        assert!(b.summary[0] & 1 == 0, "word 0 is empty now");
        b.clear(10_000);
        summary_is_exact(&b);
        assert!(b.contains(9_999) && !b.contains(10_000) && b.contains(MAX_RULES - 1));
        // Out of range: ignored, never a panic or a write past the words.
        b.set(MAX_RULES);
        b.clear(MAX_RULES);
        assert!(!b.contains(MAX_RULES) && !b.contains(u32::MAX));
        let all: [u32; 4] = [64, 4095, 4096, 9_999];
        assert!(b.positions().eq(all.into_iter().chain([MAX_RULES - 1])));
        for p in all {
            b.clear(p);
        }
        b.clear(MAX_RULES - 1);
        assert!(b.is_empty() && b == RuleBits::EMPTY, "{b:?}");
    }

    #[test]
    fn first_finds_the_lowest_position_across_word_boundaries() {
        assert_eq!(RuleBits::EMPTY.first(), None);
        for p in [
            0,
            5,
            63,
            64,
            127,
            128,
            4095,
            4096,
            9_999,
            10_000,
            MAX_RULES - 1,
        ] {
            assert_eq!(bits(&[p]).first(), Some(p), "{p}");
            assert_eq!(
                bits(&[p, MAX_RULES - 1]).first(),
                Some(p),
                "{p} and the last"
            );
        }
        assert_eq!(bits(&[10_001, 10_000, 12_000]).first(), Some(10_000));
    }

    #[test]
    fn first_common_is_the_lowest_position_in_all_four() {
        let everything = {
            let mut b = RuleBits::EMPTY;
            for p in 0..MAX_RULES {
                b.set(p);
            }
            b
        };
        summary_is_exact(&everything);
        // Each set has lower positions of its own; only 10 000 is shared.
        let a = bits(&[3, 700, 10_000, 15_000]);
        let b = bits(&[4, 701, 10_000, 15_000]);
        let c = bits(&[10_000, 15_000]);
        assert_eq!(first_common(&a, &b, &c, &everything), Some(10_000));
        // Summaries that meet in a word whose bits do not: the next word
        // the summaries share is tried.
        let a = bits(&[0, 9_000]);
        let b = bits(&[1, 9_000]);
        assert_eq!(first_common(&a, &b, &everything, &everything), Some(9_000));
        assert_eq!(first_common(&bits(&[0]), &bits(&[1]), &a, &b), None);
        // A set from another summary word than the others: no match.
        assert_eq!(
            first_common(
                &bits(&[64 * 64]),
                &bits(&[63 * 64]),
                &everything,
                &everything
            ),
            None
        );
        assert_eq!(
            first_common(&everything, &everything, &everything, &RuleBits::EMPTY),
            None
        );
        assert_eq!(
            first_common(&everything, &everything, &everything, &everything),
            Some(0)
        );
        let last = bits(&[MAX_RULES - 1]);
        assert_eq!(
            first_common(&last, &everything, &last, &everything),
            Some(MAX_RULES - 1)
        );
    }

    #[test]
    fn scan_steps_bound_the_worst_case() {
        // Every word is a candidate in both summaries and only the last
        // position is in both sets: 239 words tested in vain, three moves
        // to the next summary word, then the match, within SCAN_STEPS.
        let mut even = RuleBits::EMPTY;
        let mut odd = RuleBits::EMPTY;
        for p in 0..MAX_RULES {
            if p % 2 == 0 {
                even.set(p);
            } else {
                odd.set(p);
            }
        }
        assert_eq!(first_common(&even, &odd, &even, &odd), None);
        let mut last = even;
        last.set(MAX_RULES - 1);
        let mut scan = Scan::new(&last, &odd, &last, &odd).expect("summaries meet");
        let mut steps = 0;
        while !scan.step(&last, &odd, &last, &odd) {
            steps += 1;
            assert!(steps < SCAN_STEPS, "no answer within {SCAN_STEPS} steps");
        }
        assert_eq!(scan.found(), Some(MAX_RULES - 1));
        assert_eq!(steps + 1, RULE_WORDS as u32 + 3);
        assert_eq!(first_common(&last, &odd, &last, &odd), Some(MAX_RULES - 1));
    }

    #[test]
    fn source_keys_put_the_generation_first() {
        let addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        let d = src6_data(1, addr);
        assert_eq!(d[..4], [0, 0, 0, 1]);
        assert_eq!(d[4..20], addr);
        assert_eq!(d[20..], [0; 4], "padding no prefix reaches");
        assert_eq!(src_data(1, [10, 0, 0, 7]), [0, 0, 0, 1, 10, 0, 0, 7]);
        assert!(SRC_GEN_BITS as usize + 128 <= 8 * (size_of::<FilterSrc6Data>() - 4));
    }

    #[test]
    fn host_rules_hold_a_few_ascending_positions() {
        let r = HostRules::new(&[3, 70, 10_000]).expect("fits");
        assert_eq!(r.positions(), [3, 70, 10_000]);
        assert_eq!(HostRules::new(&[]), None);
        assert_eq!(HostRules::new(&[5, 5]), None, "not distinct");
        assert_eq!(HostRules::new(&[6, 5]), None, "not ascending");
        assert_eq!(HostRules::new(&[MAX_RULES]), None);
        let eight: [u32; HOST_RULES + 1] = core::array::from_fn(|i| i as u32);
        assert_eq!(HostRules::new(&eight), None);
        assert!(HostRules::new(&eight[..HOST_RULES]).is_some());
        // The first of its own the other sets hold, and against a region.
        let all = bits(&(0..100_u32).chain([10_000]).collect::<Vec<_>>());
        let not3 = bits(&[70, 10_000]);
        assert_eq!(r.first_in(&all, &all, &all), Some(3));
        assert_eq!(r.first_in(&all, &not3, &all), Some(70));
        assert_eq!(r.first_in(&bits(&[]), &all, &all), None);
        assert_eq!(
            first_with_host(Some(5), Some(&r), &all, &all, &all),
            Some(3)
        );
        assert_eq!(
            first_with_host(Some(5), Some(&r), &all, &not3, &all),
            Some(5)
        );
        assert_eq!(first_with_host(None, Some(&r), &all, &not3, &all), Some(70));
        assert_eq!(first_with_host(Some(9), None, &all, &all, &all), Some(9));
    }

    #[test]
    fn or_assign_is_the_union() {
        let mut a = bits(&[1, 9_999]);
        a.or_assign(&bits(&[2, 10_000, 9_999]));
        summary_is_exact(&a);
        assert!(a.positions().eq([1, 2, 9_999, 10_000]));
    }
}
