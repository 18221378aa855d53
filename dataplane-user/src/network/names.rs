//! Typed names with one validator each: an interface name ([`IfName`]) and
//! an interface's MAC address ([`MacAddr`]). Strings become these once, at
//! the front doors; the manager never checks a name twice.

use std::{fmt, str::FromStr};

/// A Linux interface name: 1 to 15 bytes (IFNAMSIZ less the NUL), no '/',
/// ':' or white space, not "." or ".." (the kernel's `dev_valid_name`, plus
/// ':' which alias names use).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

/// A string that is not an interface name (see [`IfName`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: not a valid interface name (1-15 bytes, no '/', ':' or white space)")]
pub struct BadIfName(pub String);

impl IfName {
    /// The one interface-name check.
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 15
            && !name.contains(['/', ':'])
            && !name.contains(char::is_whitespace)
            && name != "."
            && name != ".."
    }

    pub fn new(name: &str) -> Result<IfName, BadIfName> {
        if IfName::is_valid(name) {
            Ok(IfName(name.to_owned()))
        } else {
            Err(BadIfName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = BadIfName;
    fn from_str(s: &str) -> Result<IfName, BadIfName> {
        IfName::new(s)
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}

/// A unicast Ethernet address, written `02:42:ac:11:00:02`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// A string that is not a unicast MAC address.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("--mac {value}: not a MAC address (expected six hex bytes like 02:42:ac:11:00:02)")]
pub struct MalformedMac {
    value: String,
}

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = MalformedMac;
    fn from_str(value: &str) -> Result<MacAddr, MalformedMac> {
        let err = || MalformedMac {
            value: value.to_owned(),
        };
        let parts: Vec<&str> = value.split(':').collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut mac = [0u8; 6];
        for (slot, part) in mac.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        // Multicast MACs cannot be an interface's address.
        if mac[0] & 1 == 1 {
            return Err(err());
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::{IfName, MacAddr};

    #[test]
    fn interface_names() {
        for ok in ["eth0", "a", "veth1234567890a", "net-1.x_y"] {
            assert!(IfName::new(ok).is_ok(), "{ok}");
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
            let e = IfName::new(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn mac_addresses_round_trip_and_refuse_multicast() {
        let m: MacAddr = "02:42:AC:11:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        for bad in [
            "01:00:5e:00:00:01",
            "02:42:ac:11:00",
            "02:42:ac:11:00:0g",
            "2:42:ac:11:00:02",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
