//! The transport protocols a published port or a filter rule names.
//!
//! Defined here, in the datapath layer, because the map keys carry its
//! number; `control::ports` re-exports it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number, as the maps hold it.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => dataplane_common::net::IPPROTO_TCP,
            Proto::Udp => dataplane_common::net::IPPROTO_UDP,
        }
    }
}
