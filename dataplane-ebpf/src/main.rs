//! The dataplane's eBPF object: one program per attach point, sharing the maps
//! declared in [`maps`]. Packet bounds checks live only in [`parse`]; every
//! drop goes through the funnel in [`drop`], which counts a typed reason.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod drop;
mod endpoint;
mod endpoint6;
mod family;
mod fastpath;
mod filter;
mod frag;
mod hostsock;
mod icmp;
mod icmp6;
mod local;
mod local6;
mod maps;
mod nat;
mod nat6;
mod parse;
mod sock;
mod sock6;
mod stage;
mod stats;
mod tcp;
mod uplink;
mod uplink6;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach a panic, so this is
    // never executed; a loop satisfies the `!` type without extra code.
    loop {}
}

/// Kernel license: GPL-only helpers (e.g. bpf_redirect_peer, some csum
/// helpers) refuse programs under other licenses.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
