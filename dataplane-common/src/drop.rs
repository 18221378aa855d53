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
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::Truncated,
        DropReason::BadIhl,
        DropReason::BadVersion,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadIhl => "bad-ihl",
            DropReason::BadVersion => "bad-ip-version",
        }
    }

    pub const fn from_u32(v: u32) -> Option<DropReason> {
        match v {
            0 => Some(DropReason::Truncated),
            1 => Some(DropReason::BadIhl),
            2 => Some(DropReason::BadVersion),
            _ => None,
        }
    }
}
