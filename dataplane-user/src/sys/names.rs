//! Typed names of the host's objects, checked once where they come in:
//! interface names ([`IfName`], the kernel's `dev_valid_name`) and MAC
//! addresses ([`MacAddr`], stored as such in the state and written as text
//! on the wire). Everything that validates an interface name or parses a
//! MAC goes through here; the control plane adds only its flag-naming
//! refusals (`control::names`).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Longest Linux interface name in bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Why the kernel would refuse `name` as an interface name, or None when
/// it would take it: the checks of `dev_valid_name`, so a bad name fails
/// with the name and the reason instead of a bare EINVAL.
pub fn ifname_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("empty".to_string())
    } else if name.len() > IFNAME_MAX {
        Some(format!(
            "{} bytes, longer than the kernel's limit of {IFNAME_MAX}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("reserved".to_string())
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Some("contains '/', ':' or whitespace".to_string())
    } else {
        None
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid interface name {name:?}: {reason}")]
pub struct InvalidIfName {
    pub name: String,
    pub reason: String,
}

/// An interface name the kernel accepts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    pub fn new(name: impl Into<String>) -> Result<IfName, InvalidIfName> {
        let name = name.into();
        match ifname_problem(&name) {
            Some(reason) => Err(InvalidIfName { name, reason }),
            None => Ok(IfName(name)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IfName {
    type Error = InvalidIfName;

    fn try_from(name: String) -> Result<IfName, InvalidIfName> {
        IfName::new(name)
    }
}

impl From<IfName> for String {
    fn from(name: IfName) -> String {
        name.0
    }
}

impl FromStr for IfName {
    type Err = InvalidIfName;

    fn from_str(name: &str) -> Result<IfName, InvalidIfName> {
        IfName::new(name)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: not a MAC address (expected six hex bytes like 02:42:ac:11:00:02)")]
pub struct InvalidMac {
    pub value: String,
}

/// A MAC address, written and read as six colon-separated hex bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether it is a group (multicast) address, which no interface has.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = InvalidMac;

    fn from_str(value: &str) -> Result<MacAddr, InvalidMac> {
        let err = || InvalidMac {
            value: value.to_owned(),
        };
        let mut mac = [0u8; 6];
        let mut parts = value.split(':');
        for slot in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(err)?;
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = InvalidMac;

    fn try_from(value: String) -> Result<MacAddr, InvalidMac> {
        value.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error(
        "interface {0:?}: not a valid interface name (1-15 bytes, no '/', ':' or white space)"
    )]
    Invalid(String),
    #[error("interface {0:?}: no such interface in this network namespace")]
    Missing(String),
}

/// A name the kernel would take that names an interface of this network
/// namespace.
pub fn check_iface(iface: &str) -> Result<(), IfaceError> {
    if ifname_problem(iface).is_some() {
        return Err(IfaceError::Invalid(iface.to_owned()));
    }
    let c = std::ffi::CString::new(iface).map_err(|_| IfaceError::Invalid(iface.to_owned()))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string; it resolves in the
    // calling thread's network namespace (unlike /sys/class/net after setns).
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        return Err(IfaceError::Missing(iface.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_the_kernel_would_refuse() {
        for bad in ["", "sixteen-bytes-xx", ".", "..", "a/b", "a:b", "a b"] {
            let err = IfName::new(bad).expect_err(bad);
            assert_eq!(err.name, bad);
        }
        for good in ["eth0", "fifteen-bytes-x", "br-0123456789", "veth.1"] {
            assert_eq!(IfName::new(good).expect(good).as_str(), good);
        }
        let json = serde_json::to_string(&IfName::new("eth0").expect("valid")).expect("json");
        assert_eq!(json, r#""eth0""#);
        assert!(serde_json::from_str::<IfName>(r#""a/b""#).is_err());
    }

    #[test]
    fn macs_read_back_as_written() {
        let mac: MacAddr = "02:42:AC:11:00:02".parse().expect("valid");
        assert_eq!(mac.octets(), [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(mac.to_string(), "02:42:ac:11:00:02");
        assert!(!mac.is_multicast());
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .expect("valid")
            .is_multicast());
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
        ] {
            let err = bad.parse::<MacAddr>().expect_err(bad);
            assert_eq!(err.value, bad);
        }
    }
}
