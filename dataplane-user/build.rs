//! Builds the eBPF object (`dataplane-ebpf`, bin `dataplane`) with the nightly
//! toolchain and bpf-linker, into OUT_DIR, where `src/ebpf.rs` embeds it.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../dataplane-ebpf");
    // aya-build watches the eBPF crate; the object also compiles the shared
    // map types, so a change there must rebuild it too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../dataplane-common")
    );
    aya_build::build_ebpf(
        [Package {
            name: "dataplane-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
