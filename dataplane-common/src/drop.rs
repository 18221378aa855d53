//! Typed drop reasons, shared by the eBPF drop funnel and the agent's reports.

/// Why a program dropped a packet. The value is the index into the per-CPU
/// drop counter array, so it must stay dense and below [`DropReason::COUNT`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A header ran past the end of the packet.
    Truncated = 0,
    /// IPv4 header length field below 20 bytes or past the packet end.
    BadIhl = 1,
    /// IPv4 version field not 4 on an IPv4 ethertype.
    BadVersion = 2,
    /// Masquerade found no free source port for the destination.
    SnatExhausted = 3,
    /// A conntrack entry could not be written (map full of live entries).
    CtInsert = 4,
    /// Rewriting the packet failed (helper error).
    Rewrite = 5,
    /// Egress from an `--internal` network.
    Internal = 6,
    /// A container sent with a source address that is not its own.
    Spoofed = 7,
    /// A container addressed an endpoint of another network directly.
    Isolated = 8,
    /// Endpoints of a network with `enable_icc=false` addressed each other.
    IccDisabled = 9,
    /// A filter rule (DOCKER-USER, `dataplane filter`) said drop.
    Filtered = 10,
    /// A packet from outside (an uplink) addressed to 127.0.0.0/8: never
    /// translated, whatever is published on 127.0.0.1 or 0.0.0.0 (the
    /// kernel's martian check, done before DNAT could bypass it).
    LoopbackDestination = 11,
    /// A packet from outside whose source is loopback, the host's own
    /// address or a managed subnet (forged; the stack's rp_filter is
    /// skipped by the fast path, so the uplink does its job).
    MartianSource = 12,
    /// TCP flags no connection sends (SYN+FIN, SYN+RST, NULL, Xmas...).
    TcpInvalidFlags = 13,
    /// A SYN that would start a translated flow has a bad TCP checksum.
    TcpBadChecksum = 14,
    /// A TCP segment of a tracked flow outside its window (a blind RST).
    TcpOutOfWindow = 15,
    /// A non-first fragment whose first fragment was not seen: it cannot
    /// be translated, and must not leave with an internal address.
    FragmentUntracked = 16,
    /// A packet from outside (an uplink not trusted by the network) to a
    /// container's address or the bridge's gateway address, on a network
    /// whose gateway mode does not let it in (`nat`: direct-access
    /// protection; `routed`: a port no container published).
    DirectAccess = 17,
    /// An IPv6 packet with more extension headers than the parser walks,
    /// to or from a managed subnet: its upper layer cannot be checked or
    /// translated.
    Ipv6ExtHeaders = 18,
}

impl DropReason {
    pub const ALL: [DropReason; 19] = [
        DropReason::Truncated,
        DropReason::BadIhl,
        DropReason::BadVersion,
        DropReason::SnatExhausted,
        DropReason::CtInsert,
        DropReason::Rewrite,
        DropReason::Internal,
        DropReason::Spoofed,
        DropReason::Isolated,
        DropReason::IccDisabled,
        DropReason::Filtered,
        DropReason::LoopbackDestination,
        DropReason::MartianSource,
        DropReason::TcpInvalidFlags,
        DropReason::TcpBadChecksum,
        DropReason::TcpOutOfWindow,
        DropReason::FragmentUntracked,
        DropReason::DirectAccess,
        DropReason::Ipv6ExtHeaders,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadIhl => "bad-ihl",
            DropReason::BadVersion => "bad-ip-version",
            DropReason::SnatExhausted => "snat-ports-exhausted",
            DropReason::CtInsert => "conntrack-insert-failed",
            DropReason::Rewrite => "rewrite-failed",
            DropReason::Internal => "internal-network-egress",
            DropReason::Spoofed => "spoofed-source",
            DropReason::Isolated => "network-isolation",
            DropReason::IccDisabled => "icc-disabled",
            DropReason::Filtered => "filtered",
            DropReason::LoopbackDestination => "loopback-destination",
            DropReason::MartianSource => "martian-source",
            DropReason::TcpInvalidFlags => "tcp-invalid-flags",
            DropReason::TcpBadChecksum => "tcp-bad-checksum",
            DropReason::TcpOutOfWindow => "tcp-out-of-window",
            DropReason::FragmentUntracked => "fragment-untracked",
            DropReason::DirectAccess => "direct-access",
            DropReason::Ipv6ExtHeaders => "ipv6-extension-headers",
        }
    }

    pub const fn from_u32(v: u32) -> Option<DropReason> {
        match v {
            0 => Some(DropReason::Truncated),
            1 => Some(DropReason::BadIhl),
            2 => Some(DropReason::BadVersion),
            3 => Some(DropReason::SnatExhausted),
            4 => Some(DropReason::CtInsert),
            5 => Some(DropReason::Rewrite),
            6 => Some(DropReason::Internal),
            7 => Some(DropReason::Spoofed),
            8 => Some(DropReason::Isolated),
            9 => Some(DropReason::IccDisabled),
            10 => Some(DropReason::Filtered),
            11 => Some(DropReason::LoopbackDestination),
            12 => Some(DropReason::MartianSource),
            13 => Some(DropReason::TcpInvalidFlags),
            14 => Some(DropReason::TcpBadChecksum),
            15 => Some(DropReason::TcpOutOfWindow),
            16 => Some(DropReason::FragmentUntracked),
            17 => Some(DropReason::DirectAccess),
            18 => Some(DropReason::Ipv6ExtHeaders),
            _ => None,
        }
    }
}
