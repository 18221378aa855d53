//! The `CNI_*` environment of a request, checked ([`parse_env`]): the
//! command, the attachment it concerns, the namespace and `CNI_ARGS`.

use std::net::Ipv4Addr;

use super::{config::Refusal, AttachmentKey, CniError};
use crate::control::model::{valid_ifname, valid_name};

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    /// The first spec version that has this command.
    pub(super) fn since(self) -> &'static str {
        match self {
            Command::Add | Command::Del | Command::Version => "0.3.0",
            Command::Check => "0.4.0",
            Command::Gc | Command::Status => "1.1.0",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// The `CNI_*` variables a command needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// ADD, DEL, CHECK.
    pub key: Option<AttachmentKey>,
    /// ADD and CHECK always; DEL when the namespace still exists.
    pub netns: Option<String>,
    /// `IP=` of `CNI_ARGS` (a static address).
    pub ip: Option<Ipv4Addr>,
    /// `K8S_POD_NAME=` of `CNI_ARGS` (podman's container name too): a DNS
    /// name of the container.
    pub pod_name: Option<String>,
}

fn env_err(msg: String) -> CniError {
    Refusal::Env(msg).into()
}

/// Reads the environment through `var` (so tests need not touch the
/// process's own).
pub fn parse_env(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let cmd = var("CNI_COMMAND").unwrap_or_default();
    let command = Command::parse(&cmd).ok_or_else(|| {
        env_err(format!(
            "CNI_COMMAND {cmd:?}: expected ADD, DEL, CHECK, VERSION, GC or STATUS"
        ))
    })?;
    let mut env = Env {
        command,
        key: None,
        netns: None,
        ip: None,
        pod_name: None,
    };
    if matches!(command, Command::Version | Command::Gc | Command::Status) {
        return Ok(env);
    }
    let container_id = var("CNI_CONTAINERID").unwrap_or_default();
    if !valid_name(&container_id) {
        return Err(env_err(format!(
            "CNI_CONTAINERID {container_id:?}: must be non-empty, start with a letter or digit \
             and contain only [a-zA-Z0-9_.-]"
        )));
    }
    let ifname = var("CNI_IFNAME").unwrap_or_default();
    if !valid_ifname(&ifname) {
        return Err(env_err(format!(
            "CNI_IFNAME {ifname:?}: not a valid interface name (1-15 bytes, no '/', ':' or white space)"
        )));
    }
    let netns = var("CNI_NETNS").filter(|n| !n.is_empty());
    match (&netns, command) {
        (None, Command::Add | Command::Check) => {
            return Err(env_err(format!(
                "CNI_NETNS is required for {} (the container's network namespace path)",
                command.name()
            )))
        }
        (Some(n), _) if !n.starts_with('/') => {
            return Err(env_err(format!(
                "CNI_NETNS {n:?}: expected an absolute path such as /proc/PID/ns/net"
            )))
        }
        _ => {}
    }
    let cni_args = var("CNI_ARGS").unwrap_or_default();
    env.ip = parse_cni_args(&cni_args)?;
    env.pod_name = cni_args
        .split(';')
        .find_map(|p| p.strip_prefix("K8S_POD_NAME="))
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    env.key = Some(AttachmentKey {
        container_id,
        ifname,
    });
    env.netns = netns;
    Ok(env)
}

/// `CNI_ARGS` (`K=V;K=V`): `IP` is a static address; the runtimes' pod
/// labels are ignored; any other key is an error unless `IgnoreUnknown`
/// is set (the CNI convention).
fn parse_cni_args(s: &str) -> Result<Option<Ipv4Addr>, CniError> {
    const IGNORED: [&str; 4] = [
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
    ];
    let mut pairs = Vec::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| env_err(format!("CNI_ARGS {part:?}: expected KEY=VALUE")))?;
        pairs.push((k, v));
    }
    let ignore_unknown = pairs.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("IgnoreUnknown") && matches!(*v, "1" | "true" | "True")
    });
    let mut ip = None;
    for (k, v) in pairs {
        if k == "IP" {
            ip = Some(
                v.parse::<Ipv4Addr>()
                    .map_err(|_| env_err(format!("CNI_ARGS IP={v}: not an IPv4 address")))?,
            );
        } else if !(k.eq_ignore_ascii_case("IgnoreUnknown")
            || IGNORED.contains(&k)
            || ignore_unknown)
        {
            return Err(env_err(format!(
                "CNI_ARGS {k}: unknown key (known: IP, IgnoreUnknown; IgnoreUnknown=1 ignores others)"
            )));
        }
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::frontends::cni::code;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_env(|k| m.get(k).cloned())
    }

    /// The CNI_* variables with hostile values in every combination
    /// (seeded, 5 000 environments): parsed, or refused naming the variable,
    /// never a panic (issue 18: the front doors fuzzed).
    #[test]
    fn hostile_environments_are_refused_naming_the_variable() {
        let vars = [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ];
        let long = "a".repeat(4096);
        let values = [
            "",
            "ADD",
            "DEL",
            "CHECK",
            "VERSION",
            "GC",
            "STATUS",
            "add",
            "abc123",
            "-x",
            ".",
            "/run/netns/x",
            "relative/path",
            "/",
            "eth0",
            "eth0:1",
            "a/b",
            "sixteen-bytes-ok",
            "IP=10.0.0.5",
            "IP=10.0.0.300",
            "IP=fd00::5;K8S_POD_NAME=p",
            "IP=;IP=",
            ";;;",
            "K8S_POD_NAME=",
            "\0",
            "\u{202e}",
            " ",
            "a b",
            &long,
        ];
        let mut x: u64 = 0x5eed_0c01;
        let mut next = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for i in 0..5000 {
            let mut m: HashMap<&str, &str> = HashMap::new();
            for v in vars {
                if next(4) != 0 {
                    m.insert(v, values[next(values.len())]);
                }
            }
            let result =
                std::panic::catch_unwind(|| parse_env(|k| m.get(k).map(|v| (*v).to_owned())));
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains("CNI_"), "case {i}: {msg} for {m:?}");
                }
                Err(_) => panic!("case {i}: parse_env panicked on {m:?}"),
            }
        }
    }

    const BASE: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = BASE
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter(|(_, val)| !val.is_empty()).copied());
        v
    }

    #[test]
    fn environment_is_checked_with_code_4() {
        let e = env(&BASE).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns.as_deref(), Some("/run/netns/x"));
        for (over, needle) in [
            (vec![("CNI_COMMAND", "FROB")], "CNI_COMMAND \"FROB\""),
            (vec![("CNI_NETNS", "")], "CNI_NETNS is required for ADD"),
            (vec![("CNI_NETNS", "relative")], "CNI_NETNS \"relative\""),
            (vec![("CNI_CONTAINERID", "")], "CNI_CONTAINERID \"\""),
            (
                vec![("CNI_IFNAME", "has/slash")],
                "CNI_IFNAME \"has/slash\"",
            ),
            (vec![("CNI_ARGS", "FOO=1")], "CNI_ARGS FOO: unknown key"),
            (vec![("CNI_ARGS", "IP=1.2.3")], "CNI_ARGS IP=1.2.3"),
            (vec![("CNI_ARGS", "novalue")], "CNI_ARGS \"novalue\""),
        ] {
            let err = env(&with(&over)).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{err}");
            assert!(
                err.msg.contains(needle),
                "{:?} should contain {needle:?}",
                err.msg
            );
        }
        // DEL may come after the namespace is gone.
        let e = env(&with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")])).unwrap();
        assert_eq!(e.netns, None);
        let e = env(&with(&[(
            "CNI_ARGS",
            "IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=x;IP=10.1.0.9",
        )]))
        .unwrap();
        assert_eq!(e.ip, Some(Ipv4Addr::new(10, 1, 0, 9)));
        // VERSION needs nothing else.
        let e = env(&[("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(e.key, None);
    }
}
