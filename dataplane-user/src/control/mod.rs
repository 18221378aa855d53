//! Docker's network model on the kernel: networks (bridge, macvlan, host,
//! none), endpoints in network namespaces, IPAM, and the persisted state that
//! ties them together. [`manager::Manager`] is the one entry point; the
//! drivers behind it are chosen in one place ([`driver`]). The manager
//! reaches the kernel through two seams: [`crate::datapath::Datapath`] (the eBPF
//! maps and programs) and [`host::Host`] (links, namespaces, sysctls), each
//! with the real implementation and one for tests. Strings from the front
//! doors become typed requests (`manager::ConnectRequest`, [`names`]) once.

pub mod cluster;
pub mod cni;
pub mod desired;
pub mod driver;
pub mod filter_rules;
pub mod host;
pub mod inspect;
pub mod ipam;
pub mod manager;
pub mod model;
pub mod names;
pub mod names_dns;
pub mod ports;
pub mod state;
