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
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
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
            _ => None,
        }
    }
}
