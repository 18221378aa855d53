//! The host below the dataplane: links, addresses and routes over rtnetlink
//! ([`netlink`]), network namespaces ([`netns`]) and the typed names of
//! interfaces and MAC addresses ([`names`]).

pub mod names;
pub mod netlink;
pub mod netns;
