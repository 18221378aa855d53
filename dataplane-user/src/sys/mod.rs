//! The host below the dataplane: links, addresses and routes over rtnetlink
//! ([`netlink`]), network namespaces ([`netns`]) and the typed names of
//! interfaces and MAC addresses ([`names`]), and the host's own sockets and
//! ephemeral port range from procfs ([`sockets`]), the priority of the
//! agent's background work ([`sched`]), and the `cls_bpf` filters on a
//! link's ingress over a blocking netlink socket ([`tc`]).

pub mod bpf;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod sched;
pub mod sockets;
pub mod tc;

/// An error and its sources on one line, `outer: inner: innermost`: how the
/// agent reports an error to a client that sees only text (the API, the
/// Docker plugin, `/metrics`, a teardown's list of failures).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
