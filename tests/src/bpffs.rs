//! A bpffs pin directory unique to one test, removed on drop: unpinning the
//! links detaches the test's programs and frees its maps.

use anyhow::Context as _;
use dataplane_user::datapath::bpffs::PinRoot;

pub struct BpffsDir {
    pins: PinRoot,
}

impl BpffsDir {
    /// `/sys/fs/bpf/<unique name>`, on a bpffs mounted if none was.
    pub fn new(tag: &str) -> anyhow::Result<BpffsDir> {
        let pins = PinRoot::new(format!("/sys/fs/bpf/{}", crate::unique_name(tag)));
        pins.ensure()
            .with_context(|| format!("creating {}", pins.path().display()))?;
        Ok(BpffsDir { pins })
    }

    pub fn pins(&self) -> &PinRoot {
        &self.pins
    }

    pub fn path(&self) -> &std::path::Path {
        self.pins.path()
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        for e in self.pins.remove_all() {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            eprintln!("BpffsDir drop: {e}: {}", cause.unwrap_or_default());
        }
    }
}
