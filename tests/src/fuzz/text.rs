//! Mutations of the text the front doors read (API request lines, Docker's
//! plugin bodies, CNI configurations, the TOML config, rules files, state
//! files): byte-level damage (flips, cuts, inserts, splices) and JSON-aware
//! replacements of one value by a hostile one, from valid seeds. Seeded
//! (`Rng`): a failing input is reproduced by its seed and index.

use serde_json::Value;

use super::rng::Rng;

/// Values a parser must refuse or take without harm.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "\0",
    "-1",
    "0",
    "65536",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e309",
    "NaN",
    "true",
    "null",
    "[]",
    "{}",
    "\"",
    "\\",
    "{{{{{{{{",
    "]]]]",
    "../../../../etc/passwd",
    "/proc/self/ns/net",
    "0.0.0.0/0",
    "::/0",
    "10.0.0.0/33",
    "300.1.1.1",
    "10.0.0.1/8",
    "fe80::1%eth0",
    "1:2:3:4:5:6:7:8:9",
    "8080:80/sctp",
    "0-65535:80",
    "65535-1:80",
    "[::1]:8080:80",
    "eth0\neth1",
    "a\u{202e}b",
    "\u{feff}",
    "dp0",
    "bridge",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

/// A hostile JSON value: one of [`HOSTILE`] as a string or parsed, a huge
/// number or string, a deep nest, or a value of the wrong type.
pub fn hostile_value(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => Value::String(rng.pick(HOSTILE).to_owned()),
        1 => serde_json::from_str(rng.pick(HOSTILE)).unwrap_or(Value::Null),
        2 => Value::from(rng.next_u64()),
        3 => Value::from(-(rng.below(1 << 20) as i64)),
        4 => Value::String("x".repeat(rng.pick(&[256, 4096, 70_000]))),
        5 => {
            let mut v = Value::Null;
            for _ in 0..rng.pick(&[8, 64, 200]) {
                v = Value::Array(vec![v]);
            }
            v
        }
        6 => Value::Bool(rng.chance(50)),
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// `seed` with one of its values (at any depth) replaced by a hostile one,
/// removed, or given a hostile sibling field.
pub fn mutate_json(rng: &mut Rng, seed: &Value) -> Value {
    let mut v = seed.clone();
    // A random path down (as a JSON pointer), stopping anywhere.
    let mut pointer = String::new();
    let mut at = &v;
    for _ in 0..6 {
        let step = match at {
            Value::Object(m) if !m.is_empty() && rng.chance(70) => {
                let key = m
                    .keys()
                    .nth(rng.below(m.len()))
                    .cloned()
                    .unwrap_or_default();
                let next = &m[&key];
                (key.replace('~', "~0").replace('/', "~1"), next)
            }
            Value::Array(a) if !a.is_empty() && rng.chance(70) => {
                let i = rng.below(a.len());
                (i.to_string(), &a[i])
            }
            _ => break,
        };
        pointer.push('/');
        pointer.push_str(&step.0);
        at = step.1;
    }
    let Some(node) = v.pointer_mut(&pointer) else {
        return v;
    };
    match (rng.below(4), &mut *node) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let key = m.keys().nth(rng.below(m.len())).cloned();
            if let Some(k) = key {
                m.remove(&k);
            }
        }
        (1, Value::Object(m)) => {
            let name = rng.pick(&["Options", "extra", "\u{0}", "ports", "name", ""]);
            m.insert(name.to_owned(), hostile_value(rng));
        }
        _ => *node = hostile_value(rng),
    }
    v
}

/// `seed` damaged at the byte level: flips, cuts, inserted hostile text,
/// a repeated chunk, or spliced with `other`.
pub fn mutate_bytes(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(3) {
        let at = if b.is_empty() {
            0
        } else {
            rng.below(b.len() + 1)
        };
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(at),
            2 => {
                let text = rng.pick(HOSTILE).as_bytes().to_vec();
                b.splice(at..at, text);
            }
            3 if at < b.len() => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let chunk = b[at..end].to_vec();
                b.splice(at..at, chunk);
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                b.truncate(at);
                b.extend_from_slice(&other[from..]);
            }
            _ => {
                let n = 1 + rng.below(8);
                let junk = rng.bytes(n);
                b.splice(at..at, junk);
            }
        }
    }
    b
}

/// `seed` with one string, number or boolean (at any depth) replaced by a
/// hostile value of the same type: what gets past a typed decoder to the
/// checks behind it.
pub fn mutate_json_typed(rng: &mut Rng, seed: &Value) -> Value {
    let mut v = seed.clone();
    let mut leaves = Vec::new();
    collect_leaves(&v, String::new(), &mut leaves);
    if leaves.is_empty() {
        return v;
    }
    let pointer = leaves.swap_remove(rng.below(leaves.len()));
    if let Some(node) = v.pointer_mut(&pointer) {
        *node = match node {
            Value::String(_) => Value::String(rng.pick(HOSTILE).to_owned()),
            Value::Number(_) => {
                Value::from(rng.pick(&[0, 1, 65_535, 65_536, u64::from(u32::MAX), u64::MAX]))
            }
            Value::Bool(b) => Value::Bool(!*b),
            _ => Value::Null,
        };
    }
    v
}

/// JSON pointers to every string, number and boolean under `v`.
fn collect_leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let key = k.replace('~', "~0").replace('/', "~1");
                collect_leaves(child, format!("{at}/{key}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                collect_leaves(child, format!("{at}/{i}"), out);
            }
        }
        Value::Null => {}
        _ => out.push(at),
    }
}

/// A mutated input from `seeds`: JSON-aware when the chosen seed is JSON
/// (half the time), byte-level otherwise.
pub fn mutate(rng: &mut Rng, seeds: &[&[u8]]) -> Vec<u8> {
    let seed = seeds[rng.below(seeds.len())];
    let other = seeds[rng.below(seeds.len())];
    if rng.chance(50) {
        if let Ok(v) = serde_json::from_slice::<Value>(seed) {
            let mut v = mutate_json(rng, &v);
            if rng.chance(30) {
                v = mutate_json(rng, &v);
            }
            return serde_json::to_vec(&v).unwrap_or_default();
        }
    }
    mutate_bytes(rng, seed, other)
}
