//! The BPF side of the dataplane.
//!
//! - loading: the object and its pinned maps and links ([`ebpf`]), the
//!   bpffs layout ([`bpffs`]);
//! - [`maps`]: typed access to any map by name (one error type), and the
//!   one "make this map hold exactly these entries" reconcile;
//! - one module per group of maps and programs: NAT ([`nat`]), the endpoint
//!   program ([`endpoints`]), filter rules ([`filter`]), connection
//!   tracking ([`conntrack`]), counters ([`stats`]), drop events
//!   ([`events`]), host-local sockets ([`host_local`]); [`proto`] is the
//!   protocol type their keys carry.
//!
//! This layer knows the kernel and the maps, not the agent's state: it
//! imports only itself and `crate::sys`, never `crate::network`,
//! `crate::state` or the front doors (checked by the test below). What the
//! maps should hold is computed above it (`crate::nat_desired`) and handed
//! down as plain values ([`nat::Desired`], [`filter::Compiled`]).

pub mod bpffs;
pub mod conntrack;
pub mod ebpf;
pub mod endpoints;
pub mod events;
pub mod filter;
pub mod host_local;
pub mod maps;
pub mod nat;
pub mod proto;
pub mod stats;

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    /// The control plane and the front doors, and the flat re-exports that
    /// mix layers (`crate::nat`, `crate::filter`): named by neither lower
    /// layer.
    const ABOVE_DATAPATH: &[&str] = &[
        "crate::network",
        "crate::state",
        "crate::nat_desired",
        "crate::filter_rules",
        "crate::nat::",
        "crate::filter::",
        "crate::api",
        "crate::cni",
        "crate::docker",
        "crate::metrics",
        "crate::config",
    ];

    /// The datapath, which sys lies below.
    const DATAPATH: &[&str] = &["crate::datapath", "crate::ebpf", "crate::bpffs"];

    /// What a layer's code may not name: the layers above it.
    fn forbidden(layer: &str) -> impl Iterator<Item = &'static str> {
        let datapath: &[&str] = if layer == "sys" { DATAPATH } else { &[] };
        ABOVE_DATAPATH.iter().chain(datapath).copied()
    }

    fn check(dir: &Path, layer: &str, found: &mut Vec<String>) {
        for entry in fs::read_dir(dir).expect("source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                check(&path, layer, found);
                continue;
            }
            let text = fs::read_to_string(&path).expect("source file");
            // Test modules may build their fixtures from any layer.
            let lines = text.lines().take_while(|l| !l.starts_with("#[cfg(test)]"));
            // Inside `use crate::{ ... };` the paths lose their `crate::`.
            let mut in_group = false;
            for (n, line) in lines.enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                if code.starts_with("use crate::{") {
                    in_group = true;
                } else if in_group && code.starts_with("};") {
                    in_group = false;
                }
                for f in forbidden(layer) {
                    let grouped = in_group && {
                        let name = f.trim_start_matches("crate::").trim_end_matches("::");
                        code.strip_prefix(name).is_some_and(|rest| {
                            rest.starts_with("::") || rest.starts_with(',') || rest.is_empty()
                        })
                    };
                    if code.contains(f) || grouped {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, code));
                    }
                }
            }
        }
    }

    /// The datapath and sys layers import nothing from the layers above.
    #[test]
    fn lower_layers_do_not_import_upwards() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        check(&src.join("datapath"), "datapath", &mut found);
        check(&src.join("sys"), "sys", &mut found);
        assert!(found.is_empty(), "upward imports:\n{}", found.join("\n"));
    }
}
