//! Types shared between the eBPF programs and the userspace agent.
//!
//! Everything here is the ABI of a BPF map or of a load-time global: `#[repr(C)]`,
//! explicit padding fields (never implicit), no `bool`, and a size assertion so
//! that a change to a layout breaks the build instead of silently desynchronising
//! the two sides. With the `user` feature the types also implement `aya::Pod`.
#![cfg_attr(not(test), no_std)]

pub mod ct;
pub mod drop;
pub mod event;
pub mod filter;
pub mod maps;
pub mod nat;
pub mod net;
pub mod sock;
pub mod stats;

/// Implements `aya::Pod` for map types when building for userspace.
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, `Copy`, has no implicit padding
            // (checked by a size assertion beside it) and every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use user_pod;
