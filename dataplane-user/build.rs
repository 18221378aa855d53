//! Builds the eBPF object (`dataplane-ebpf`, bin `dataplane`) with the nightly
//! toolchain and bpf-linker, into OUT_DIR, where `src/ebpf.rs` embeds it.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../dataplane-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "dataplane-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
