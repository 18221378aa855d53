//! DOCKER-USER-style filter rules as the uplink's ingress program evaluates
//! them: in constant time, whatever the number of rules.
//!
//! Rules sit at positions 0..[`MAX_RULES`] in evaluation order. Each match
//! dimension (source address, in-interface, destination port, network) has a
//! map from the packet's value in that dimension to a [`RuleBits`]: the rules
//! that dimension lets through. The program ANDs the four bitmaps; the lowest
//! set bit is the first rule matching in every dimension, i.e. the first
//! match in rule order. Its [`FilterAction`] decides, its counter slot counts.
//!
//! Every key carries a generation (0 or 1) and [`FilterConfig`] names the
//! live one. The agent writes a whole new rule set into the other generation
//! and then flips [`FilterConfig::gen`] with one array update, so a packet
//! never sees half of an old rule set ANDed with half of a new one (rule
//! positions shift when a rule is inserted or removed, and a mixed lookup
//! would pick an unrelated rule).

use bytemuck::{Pod, Zeroable};

/// Most rules a rule set can hold: the width of [`RuleBits`].
pub const MAX_RULES: u32 = 128;

/// Generations of rule sets kept side by side: the live one and the one
/// being written.
pub const GENERATIONS: u32 = 2;

/// The rules a dimension lets through: bit `i` (bit `i % 64` of word
/// `i / 64`) is the rule at position `i`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RuleBits {
    pub bits: [u64; 2],
}
const _: () = assert!(size_of::<RuleBits>() == 16);
const _: () = assert!(MAX_RULES as usize == 8 * size_of::<RuleBits>());

impl RuleBits {
    pub const EMPTY: RuleBits = RuleBits { bits: [0; 2] };

    /// Adds the rule at `pos`; positions past [`MAX_RULES`] are ignored.
    #[inline(always)]
    pub fn set(&mut self, pos: u32) {
        if pos < MAX_RULES {
            self.bits[(pos / 64) as usize] |= 1 << (pos % 64);
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn contains(&self, pos: u32) -> bool {
        pos < MAX_RULES && self.bits[(pos / 64) as usize] & (1 << (pos % 64)) != 0
    }

    #[inline(always)]
    #[must_use]
    pub const fn and(self, other: RuleBits) -> RuleBits {
        RuleBits {
            bits: [self.bits[0] & other.bits[0], self.bits[1] & other.bits[1]],
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn or(self, other: RuleBits) -> RuleBits {
        RuleBits {
            bits: [self.bits[0] | other.bits[0], self.bits[1] | other.bits[1]],
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.bits[0] == 0 && self.bits[1] == 0
    }

    /// The lowest position in the set: the first rule in evaluation order.
    /// Two word tests and a `trailing_zeros`, no loop over the bits.
    #[inline(always)]
    #[must_use]
    pub const fn first(&self) -> Option<u32> {
        if self.bits[0] != 0 {
            Some(self.bits[0].trailing_zeros())
        } else if self.bits[1] != 0 {
            Some(64 + self.bits[1].trailing_zeros())
        } else {
            None
        }
    }
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
}
const _: () = assert!(size_of::<FilterConfig>() == 8);

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
    FilterIfaceKey,
    FilterPortKey,
    FilterNetKey,
    FilterAction
);
