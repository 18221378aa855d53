//! The control plane's reading of the host's typed names
//! ([`crate::sys::names`]): the refusals it reports name the flag a user
//! gave (`--ifname`, `--mac`), and an endpoint's MAC must be unicast.

use std::fmt;

pub use crate::sys::names::{IfName, MacAddr};

/// A string that is not an interface name (see [`IfName`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: not a valid interface name (1-15 bytes, no '/', ':' or white space)")]
pub struct BadIfName(pub String);

/// An interface name, or why it is not one.
pub fn ifname(name: &str) -> Result<IfName, BadIfName> {
    IfName::new(name).map_err(|_| BadIfName(name.to_owned()))
}

/// A string that is not a unicast MAC address.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub struct MalformedMac {
    value: String,
}

impl fmt::Display for MalformedMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--mac {}: not a MAC address (expected six hex bytes like 02:42:ac:11:00:02)",
            self.value
        )
    }
}

/// A MAC address an interface can have: multicast (group) addresses are
/// refused.
pub fn unicast_mac(value: &str) -> Result<MacAddr, MalformedMac> {
    value
        .parse::<MacAddr>()
        .ok()
        .filter(|m| !m.is_multicast())
        .ok_or_else(|| MalformedMac {
            value: value.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::{ifname, unicast_mac};

    #[test]
    fn interface_names() {
        for ok in ["eth0", "a", "veth1234567890a", "net-1.x_y"] {
            assert!(ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "veth1234567890ab",
        ] {
            let e = ifname(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn mac_addresses_round_trip_and_refuse_multicast() {
        let m = unicast_mac("02:42:AC:11:00:02").unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        for bad in [
            "01:00:5e:00:00:01",
            "02:42:ac:11:00",
            "02:42:ac:11:00:0g",
            "2:42:ac:11:00:02",
        ] {
            let e = unicast_mac(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
