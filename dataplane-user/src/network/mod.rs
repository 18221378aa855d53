//! Docker's network model on the kernel: networks (bridge, macvlan, host,
//! none), endpoints in network namespaces, IPAM, and the persisted state that
//! ties them together. [`manager::Manager`] is the one entry point; the
//! drivers behind it are chosen in one place ([`driver`]).

pub mod datapath;
pub mod driver;
pub mod host;
pub mod inspect;
pub mod ipam;
pub mod manager;
pub mod model;
pub mod names;
pub mod ports;
