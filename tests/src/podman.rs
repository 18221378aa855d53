//! Real podman (Debian's 4.3, CNI backend) inside a fake host, as
//! /work/shared/design/real-runtimes.md describes: a containers.conf of the
//! test's own (network_backend "cni", its plugin and conflist directories,
//! cgroupfs, file events), its own `--root`/`--runroot`/`--tmpdir` on vfs,
//! runc, every command under `nsenter --net=<fake host>`, and an image
//! imported from a busybox-static rootfs. Everything goes on drop (also on
//! panic): the containers (which runs their CNI DEL), the storage, the
//! conflists and libcni's cached results of the test's networks.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, netns::NetNs, unique_name};

/// The image every test container runs.
pub const IMAGE: &str = "localhost/dpt-bb:local";
/// What `/www/index.html` in the image says.
pub const INDEX: &str = "hello from podman\n";
/// podman commands (image import, container start) may take this long.
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(90);
/// libcni keeps every ADD result here (podman does not move it).
const CNI_CACHE: &str = "/var/lib/cni/results";
const TOOLS: [&str; 4] = ["podman", "conmon", "runc", "busybox"];

/// Whether podman can run here: the tools `cargo xtask setup` installs.
/// Missing: panics under `CI=true`, otherwise prints `SKIPPED` and returns
/// false (like [`crate::require_root`]).
pub fn require_podman() -> bool {
    crate::require_tools("podman test", &TOOLS)
}

pub struct Podman {
    dir: PathBuf,
    host: PathBuf,
    /// Networks whose conflists this instance wrote (their libcni cache
    /// entries are removed on drop).
    networks: Vec<String>,
}

impl Podman {
    /// A podman of the test's own in `host`, its CNI plugin directory
    /// holding `dataplane-cni` only, and [`IMAGE`] imported.
    pub fn new(host: &NetNs, tag: &str) -> Result<Podman> {
        let dir = std::env::temp_dir().join(unique_name(tag));
        let p = Podman {
            dir,
            host: host.path().to_owned(),
            networks: Vec::new(),
        };
        p.build()
            .with_context(|| format!("setting up podman in {}", p.dir.display()))?;
        Ok(p)
    }

    fn build(&self) -> Result<()> {
        for sub in ["cni-bin", "cni-conf", "tmp"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        // No wget: busybox-static's segfaults without a libc beside it.
        let tar = crate::busybox_tarball(
            &self.dir,
            &["sh", "httpd", "ip", "nc", "cat", "sleep"],
            INDEX,
        )?;
        symlink(
            crate::cni::cni_bin()?,
            self.dir.join("cni-bin/dataplane-cni"),
        )?;
        let d = self.dir.display();
        std::fs::write(
            self.conf_path(),
            format!(
                "[network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{d}/cni-bin\"]\n\
                 network_config_dir = \"{d}/cni-conf\"\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\n\
                 runtime = \"runc\"\n"
            ),
        )?;
        self.run(&["import", &tar.display().to_string(), IMAGE])?;
        Ok(())
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.join("containers.conf")
    }

    /// Writes `<name>.conflist`; podman sees the network `name` from now on.
    pub fn add_conflist(&mut self, name: &str, conflist: &serde_json::Value) -> Result<()> {
        std::fs::write(
            self.dir.join("cni-conf").join(format!("{name}.conflist")),
            serde_json::to_vec_pretty(conflist)?,
        )?;
        self.networks.push(name.to_owned());
        Ok(())
    }

    fn argv(&self) -> Vec<String> {
        let d = &self.dir;
        vec![
            "nsenter".into(),
            format!("--net={}", self.host.display()),
            "--".into(),
            "env".into(),
            format!("CONTAINERS_CONF={}", self.conf_path().display()),
            "podman".into(),
            "--root".into(),
            d.join("root").display().to_string(),
            "--runroot".into(),
            d.join("runroot").display().to_string(),
            "--tmpdir".into(),
            d.join("tmp").display().to_string(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// `podman ARGS` in the fake host; stdout, or an error with stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut argv = self.argv();
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        cmd::run_timeout(&argv, PODMAN_TIMEOUT)
    }

    /// `podman run -d` with the limits this machine needs (runc; rlimits
    /// under the VM's hard limits); returns the full container id.
    pub fn run_detached(&self, args: &[&str]) -> Result<String> {
        let mut full = vec![
            "run",
            "-d",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        full.extend_from_slice(args);
        let id = self.run(&full)?.trim().to_owned();
        if id.len() != 64 {
            bail!("podman run printed {id:?}, not a container id");
        }
        Ok(id)
    }

    /// libcni's cached ADD of `network` for a container (what podman will
    /// hand DEL and CHECK as `prevResult`).
    pub fn cached_result(
        &self,
        network: &str,
        id: &str,
        ifname: &str,
    ) -> Result<serde_json::Value> {
        let path = cache_path(network, id, ifname);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

pub fn cache_path(network: &str, id: &str, ifname: &str) -> PathBuf {
    Path::new(CNI_CACHE).join(format!("{network}-{id}-{ifname}"))
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Stops and removes the containers: podman runs CNI DEL for each.
        if let Err(e) = self.run(&["rm", "--all", "--force", "--time", "0"]) {
            eprintln!("Podman drop: rm --all: {e:#}");
        }
        // Anything still mounted under our directory (a container's shm
        // after a failed rm) would make the removal fail.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.display().to_string();
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&prefix))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = cmd::run(&["umount", "-l", m]);
            }
        }
        if let Ok(entries) = std::fs::read_dir(CNI_CACHE) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if self
                    .networks
                    .iter()
                    .any(|n| name.starts_with(&format!("{n}-")))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("Podman drop: removing {}: {e}", self.dir.display());
        }
    }
}
