//! The after-suite check that tests left nothing behind: named namespaces,
//! root-namespace links, bpffs entries and cgroups (directly under the cgroup
//! v2 mount) starting with [`PREFIX`], and dataplane (`dp_*`) programs still
//! loaded.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{cmd, PREFIX};

/// Name prefix of the dataplane's BPF programs.
pub const PROG_PREFIX: &str = "dp_";
pub const BPFFS: &str = "/sys/fs/bpf";
/// bpffs is walked this deep; pinned trees are shallow, and a bound keeps a
/// strange mount from making the check slow.
const BPFFS_MAX_DEPTH: usize = 6;

/// Everything any harness user left behind, as human-readable lines. Empty
/// means clean. Errors when a check cannot run (e.g. bpftool missing).
pub fn find_leaks() -> Result<Vec<String>> {
    let mut leaks = find_leaks_matching(PREFIX)?;
    leaks.extend(loaded_programs()?);
    Ok(leaks)
}

/// Like [`find_leaks`] but only names that start with [`PREFIX`] and contain
/// `filter` (e.g. [`crate::run_id`], to check one process while others run).
/// Loaded programs are not checked here: their names carry no run id, so
/// another test process's live programs would look like leaks.
pub fn find_leaks_matching(filter: &str) -> Result<Vec<String>> {
    let ours = |name: &str| name.starts_with(PREFIX) && name.contains(filter);
    let mut leaks = Vec::new();

    let netns = cmd::run(&["ip", "netns", "list"]).context("listing network namespaces")?;
    leaks.extend(
        parse_netns_list(&netns)
            .into_iter()
            .filter(|n| ours(n))
            .map(|n| format!("network namespace {n}")),
    );

    let links = cmd::run(&["ip", "-j", "link", "show"]).context("listing root-namespace links")?;
    let links: Value = if links.trim().is_empty() {
        Value::Array(Vec::new())
    } else {
        serde_json::from_str(&links).context("parsing `ip -j link show`")?
    };
    for link in links.as_array().map(Vec::as_slice).unwrap_or_default() {
        if let Some(name) = link.get("ifname").and_then(Value::as_str) {
            if ours(name) {
                leaks.push(format!("link {name} in the root namespace"));
            }
        }
    }

    if bpffs_mounted()? {
        walk_bpffs(Path::new(BPFFS), 0, &ours, &mut leaks)?;
    }

    leaks.extend(cgroups(&ours)?);

    Ok(leaks)
}

/// Test cgroups (made directly under the cgroup v2 mount) still present.
/// None when no cgroup v2 is mounted: then no test could have made one.
fn cgroups(ours: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
    let mount = match dataplane_user::datapath::host_local::cgroup2_mount() {
        Ok(mount) => mount,
        Err(dataplane_user::datapath::host_local::SockError::NoCgroup2) => return Ok(Vec::new()),
        Err(e) => return Err(e).context("finding the cgroup v2 mount"),
    };
    let entries = fs::read_dir(&mount).with_context(|| format!("listing {}", mount.display()))?;
    let mut leaks = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", mount.display()))?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && ours(&entry.file_name().to_string_lossy()) {
            leaks.push(format!("cgroup {}", entry.path().display()));
        }
    }
    Ok(leaks)
}

/// Names from `ip netns list`, whose lines look like `NAME (id: 3)`.
pub fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, mountpoint, fstype) = (f.next(), f.next(), f.next());
        mountpoint == Some(BPFFS) && fstype == Some("bpf")
    }))
}

fn walk_bpffs(
    dir: &Path,
    depth: usize,
    ours: &dyn Fn(&str) -> bool,
    leaks: &mut Vec<String>,
) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        if ours(&entry.file_name().to_string_lossy()) {
            leaks.push(format!("bpffs entry {}", path.display()));
            continue;
        }
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && depth < BPFFS_MAX_DEPTH {
            walk_bpffs(&path, depth + 1, ours, leaks)?;
        }
    }
    Ok(())
}

/// `dp_*` programs still loaded in the kernel. After the suite every test
/// namespace is gone, so a loaded program means a pin, a link, a tc filter or a process
/// still holds it. (`bpftool net show` is not enough: Debian's bpftool 7.1
/// does not list tcx links.)
fn loaded_programs() -> Result<Vec<String>> {
    let out = match cmd::output(&["bpftool", "-j", "prog", "show"], cmd::DEFAULT_TIMEOUT) {
        Ok(out) if out.success() => out.stdout,
        Ok(out) => bail!(
            "`bpftool -j prog show` failed ({}): {}",
            out.status,
            out.stderr.trim()
        ),
        Err(e) => return Err(e.context("the leak check needs bpftool to list loaded programs")),
    };
    let json: Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `bpftool -j prog show`: {}", out.trim()))?;
    Ok(parse_loaded_programs(&json))
}

/// Descriptions of every `dp_*` program in `bpftool -j prog show` output (an
/// array of objects with "id" and "name").
pub fn parse_loaded_programs(json: &Value) -> Vec<String> {
    json.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let name = p.get("name").and_then(Value::as_str)?;
            let id = p.get("id").and_then(Value::as_u64).unwrap_or(0);
            name.starts_with(PROG_PREFIX).then(|| {
                format!("program {name} (id {id}) still loaded (a dataplane agent running outside the tests holds it too)")
            })
        })
        .collect()
}
