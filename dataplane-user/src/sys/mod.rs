//! The host below the dataplane: links, addresses and routes over rtnetlink
//! ([`netlink`]) and network namespaces ([`netns`]).

pub mod netlink;
pub mod netns;
