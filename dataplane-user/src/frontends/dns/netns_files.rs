//! `/etc/netns/<name>/resolv.conf` for named namespaces (iproute2's way:
//! `ip netns exec NAME` bind-mounts it over /etc/resolv.conf) on networks
//! with names: `nameserver <gateway>` per such network, our search domain.
//! Only files that carry [`MARK`] are ever rewritten or removed, so a file
//! the administrator wrote stays; CNI and Docker endpoints are left to
//! their runtimes (the CNI result carries the DNS settings instead).

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use tracing::warn;

use crate::control::{model::Attachment, names_dns::NameTable, state::State};

/// The first line of every file the agent writes.
pub const MARK: &str = "# Written by the dataplane agent (docs/dns.md); removed with the endpoint.";

/// Where named namespaces live (`ip netns add`), both spellings.
const NETNS_DIRS: [&str; 2] = ["/var/run/netns", "/run/netns"];

/// The namespace name of `path` when it is a named one.
fn netns_name(path: &Path) -> Option<String> {
    let parent = path.parent()?;
    NETNS_DIRS
        .iter()
        .any(|d| parent == Path::new(d))
        .then(|| path.file_name()?.to_str().map(str::to_owned))?
}

/// The files there should be: namespace name to its nameservers, in
/// endpoint order.
pub fn wanted(state: &State, table: &NameTable) -> BTreeMap<String, Vec<IpAddr>> {
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let cni: Vec<&str> = state
        .cni_attachments
        .iter()
        .map(|a| a.endpoint.as_str())
        .collect();
    for ep in state.endpoints.values() {
        let Some(names) = table.networks.get(&ep.network) else {
            continue;
        };
        if matches!(ep.attachment, Attachment::Container { .. }) || cni.contains(&ep.name.as_str())
        {
            continue;
        }
        let Some(ns) = netns_name(&ep.netns) else {
            continue;
        };
        let servers = out.entry(ns).or_default();
        if !servers.contains(&names.server) {
            servers.push(names.server);
        }
    }
    out
}

fn content(servers: &[IpAddr]) -> String {
    let mut text = format!("{MARK}\n");
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    text.push_str(&format!("search {}\n", crate::control::names_dns::DOMAIN));
    text
}

fn ours(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(MARK))
}

/// Brings the files under `root` in line with `wanted`: writes what is
/// missing or different (unless a file of someone else is there), removes
/// the agent's files no longer wanted. Best effort: failures are logged.
pub fn sync(root: &Path, wanted: &BTreeMap<String, Vec<IpAddr>>) {
    for (ns, servers) in wanted {
        let dir = root.join(ns);
        let path = dir.join("resolv.conf");
        let text = content(servers);
        match std::fs::read_to_string(&path) {
            Ok(t) if t == text => continue,
            Ok(t) if !t.starts_with(MARK) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!("{}: {e}", path.display());
                continue;
            }
        }
        if let Err(e) = write(&dir, &path, &text) {
            warn!("writing {}: {e}", path.display());
        }
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path().join("resolv.conf");
        if wanted.contains_key(&name) || !ours(&path) {
            continue;
        }
        if let Err(e) = std::fs::remove_file(&path) {
            warn!("removing {}: {e}", path.display());
        }
        // The directory goes only when nothing else is in it.
        let _ = std::fs::remove_dir(entry.path());
    }
}

/// Written beside and renamed, so `ip netns exec` never reads half a file.
fn write(dir: &Path, path: &PathBuf, text: &str) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".resolv.conf.dataplane");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_kept_and_removed() {
        let root = std::env::temp_dir().join(format!("dp-netns-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let gw = IpAddr::V4(std::net::Ipv4Addr::new(172, 18, 0, 1));
        let mut want = BTreeMap::from([("c1".to_owned(), vec![gw])]);
        std::fs::create_dir_all(root.join("mine")).unwrap();
        std::fs::write(root.join("mine/resolv.conf"), "nameserver 9.9.9.9\n").unwrap();
        want.insert("mine".into(), vec![gw]);
        sync(&root, &want);
        let c1 = std::fs::read_to_string(root.join("c1/resolv.conf")).unwrap();
        assert!(c1.contains("nameserver 172.18.0.1\n"), "{c1}");
        assert_eq!(
            std::fs::read_to_string(root.join("mine/resolv.conf")).unwrap(),
            "nameserver 9.9.9.9\n"
        );
        sync(&root, &BTreeMap::new());
        assert!(!root.join("c1").exists());
        assert!(root.join("mine/resolv.conf").exists());
        assert_eq!(netns_name(Path::new("/run/netns/x")).as_deref(), Some("x"));
        assert_eq!(netns_name(Path::new("/proc/1/ns/net")), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
