//! Real dockerd (Debian's docker.io 20.10) inside a fake host, as
//! /work/shared/design/real-runtimes.md describes: started with
//! `nsenter --net=<fake host>` (not `ip netns exec`, which hides the cgroup
//! mounts), its own data root, exec root, API socket and pidfile on vfs, and
//! an image imported from a busybox-static rootfs (no registry here). Its
//! remote network driver is this run's agent, found through a plugin socket
//! of this run's own name under /run/docker/plugins. Everything goes on drop
//! (also on panic): containers, networks, the daemon and its directories,
//! and the plugin socket.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, netns::NetNs, unique_name};

/// The image every test container runs.
pub const IMAGE: &str = "dpt-bb:local";
/// What `/www/index.html` in the image says.
pub const INDEX: &str = "hello from docker\n";
/// Docker commands (import, run, network create) may take this long.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(90);
/// Where dockerd looks for remote drivers by name.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";
/// Debian's client, of the daemon's own version (a newer client may be
/// first on PATH).
const CLIENT: &str = "/usr/bin/docker";
const DAEMON_START: Duration = Duration::from_secs(60);
const DAEMON_STOP: Duration = Duration::from_secs(20);
const TOOLS: [&str; 5] = ["dockerd", "containerd", "runc", "busybox", CLIENT];

/// Whether dockerd can run here: the tools `cargo xtask setup` installs.
/// Missing: panics under `CI=true`, otherwise prints `SKIPPED` and returns
/// false (like [`crate::require_root`]).
pub fn require_docker() -> bool {
    crate::require_tools("docker test", &TOOLS)
}

/// A plugin name of this run's own: the agent serves
/// `/run/docker/plugins/<name>.sock`, and `docker network create -d <name>`
/// finds it.
pub struct PluginSocket {
    pub name: String,
    pub path: PathBuf,
}

impl PluginSocket {
    pub fn new(tag: &str) -> Result<PluginSocket> {
        std::fs::create_dir_all(PLUGIN_DIR).with_context(|| format!("creating {PLUGIN_DIR}"))?;
        let name = unique_name(tag);
        let path = Path::new(PLUGIN_DIR).join(format!("{name}.sock"));
        Ok(PluginSocket { name, path })
    }
}

impl Drop for PluginSocket {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("PluginSocket drop: {}: {e}", self.path.display());
            }
        }
    }
}

pub struct Dockerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    /// A dockerd of the test's own in `host`, with [`IMAGE`] imported.
    pub fn start(host: &NetNs, tag: &str) -> Result<Dockerd> {
        let dir = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&dir)?;
        let mut d = Dockerd { dir, child: None };
        d.spawn(host)
            .with_context(|| format!("starting dockerd in {}", d.dir.display()))?;
        d.import().context("importing the test image")?;
        Ok(d)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn spawn(&mut self, host: &NetNs) -> Result<()> {
        let d = &self.dir;
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", host.path().display()))
            .arg("--")
            .arg("dockerd")
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("--storage-driver")
            .arg("vfs")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("spawning dockerd")?);
        let deadline = Instant::now() + DAEMON_START;
        while Instant::now() < deadline {
            if self.socket().exists()
                && self
                    .run(&["version", "--format", "{{.Server.Version}}"])
                    .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("dockerd exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "dockerd did not answer within {DAEMON_START:?}:\n{}",
            self.log()
        )
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn import(&self) -> Result<()> {
        let tar = crate::busybox_tarball(
            &self.dir,
            &["sh", "httpd", "ip", "nc", "cat", "sleep"],
            INDEX,
        )?;
        self.run(&["import", &tar.display().to_string(), IMAGE])?;
        Ok(())
    }

    /// `docker ARGS` against this daemon; stdout, or an error with stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let host = format!("unix://{}", self.socket().display());
        let mut argv = vec![CLIENT, "-H", &host];
        argv.extend_from_slice(args);
        cmd::run_timeout(&argv, DOCKER_TIMEOUT)
    }

    /// `docker ARGS` that must fail; its stderr and stdout.
    pub fn fail(&self, args: &[&str]) -> Result<String> {
        let host = format!("unix://{}", self.socket().display());
        let mut argv = vec![CLIENT, "-H", &host];
        argv.extend_from_slice(args);
        let out = cmd::output(&argv, DOCKER_TIMEOUT)?;
        if out.success() {
            bail!(
                "{} succeeded but should have failed:\n{}",
                cmd::display(&argv),
                out.stdout
            );
        }
        Ok(format!("{}{}", out.stderr, out.stdout))
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // dockerd's own pid (nsenter execs it, so it is the child's).
        let pid = i32::try_from(child.id()).unwrap_or(0);
        if pid > 0 {
            // SAFETY: kill(2) on a child this process started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + DAEMON_STOP;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    eprintln!(
                        "Dockerd drop: dockerd did not stop within {DAEMON_STOP:?}; killing it"
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        match self.run(&["ps", "-aq"]) {
            Ok(ids) => {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut argv = vec!["rm", "-f"];
                    argv.extend(ids);
                    if let Err(e) = self.run(&argv) {
                        eprintln!("Dockerd drop: rm: {e:#}");
                    }
                }
            }
            Err(e) => eprintln!("Dockerd drop: ps: {e:#}"),
        }
        if let Err(e) = self.run(&["network", "prune", "-f"]) {
            eprintln!("Dockerd drop: network prune: {e:#}");
        }
        self.stop();
        // Mounts left under the exec root or data root (a container's shm
        // after a failed rm) would make the removal fail.
        let _ = cmd::output(
            &[
                "umount",
                "-R",
                "-l",
                &self.dir.join("exec").display().to_string(),
            ],
            cmd::DEFAULT_TIMEOUT,
        );
        let _ = cmd::output(
            &[
                "umount",
                "-R",
                "-l",
                &self.dir.join("data").display().to_string(),
            ],
            cmd::DEFAULT_TIMEOUT,
        );
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("Dockerd drop: removing {}: {e}", self.dir.display());
        }
    }
}
