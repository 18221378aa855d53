//! The host's resolvers, where names that are no network's go: the
//! `nameserver` lines of the host's resolv.conf, read again when the file
//! changes, behind hickory's resolver (its bounded cache, timeouts and TCP
//! fallback). The agent asks them from the host's namespace, so loopback
//! resolvers (systemd-resolved's 127.0.0.53) work as they are.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hickory_resolver::{
    config::{NameServerConfigGroup, ResolverConfig, ResolverOpts},
    TokioAsyncResolver,
};

use super::FileStamp;

/// How long one upstream may take to answer, per attempt.
const TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPTS: usize = 2;

/// The `nameserver` addresses of a resolv.conf's text, in order (a scope
/// suffix such as `%eth0` is dropped; unparsable lines are skipped, as
/// libc does).
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            addr.split('%').next()?.parse().ok()
        })
        .collect()
}

/// A resolver over `servers` (None when there are none).
pub fn resolver(servers: &[IpAddr], cache_size: usize) -> Option<Arc<TokioAsyncResolver>> {
    if servers.is_empty() {
        return None;
    }
    let config = ResolverConfig::from_parts(
        None,
        Vec::new(),
        NameServerConfigGroup::from_ips_clear(servers, 53, true),
    );
    let mut opts = ResolverOpts::default();
    opts.timeout = TIMEOUT;
    opts.attempts = ATTEMPTS;
    opts.cache_size = cache_size;
    // Names come fully qualified from the client's query: no search list,
    // no /etc/hosts of the host, CNAME chains kept in the answer.
    opts.ndots = 0;
    opts.use_hosts_file = false;
    opts.preserve_intermediates = true;
    Some(Arc::new(TokioAsyncResolver::tokio(config, opts)))
}

/// The resolv.conf being watched, and what it said last.
pub struct Watched {
    pub path: PathBuf,
    stamp: Option<FileStamp>,
    pub servers: Vec<IpAddr>,
}

impl Watched {
    pub fn new(path: &Path) -> Watched {
        Watched {
            path: path.to_owned(),
            stamp: None,
            servers: Vec::new(),
        }
    }

    /// Reads the file again if it changed since the last call: the new
    /// nameservers, or None when nothing changed. A file that is gone
    /// or unreadable means no nameservers.
    pub fn changed(&mut self) -> Option<&[IpAddr]> {
        let stamp = FileStamp::of(&self.path);
        if self.stamp.is_some() && stamp == self.stamp {
            return None;
        }
        self.stamp = stamp;
        self.servers = std::fs::read_to_string(&self.path)
            .map(|t| nameservers(&t))
            .unwrap_or_default();
        Some(&self.servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_in_order() {
        let text = "# comment\nsearch lan\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n\
                    nameserver bogus\noptions edns0\nnameserver 10.0.0.1 # x\n";
        let got: Vec<String> = nameservers(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["127.0.0.53", "fe80::1", "10.0.0.1"]);
    }
}
