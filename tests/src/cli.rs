//! Driving the `dataplane` binary as a user would, inside a fake host: every
//! call runs with `--netns <host>` and a state directory and bpffs root of
//! this test's own, both removed on drop.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{netns::NetNs, unique_name, BpffsDir};

/// A state directory under the system temp dir, removed on drop.
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    pub fn new(tag: &str) -> StateDir {
        StateDir {
            path: std::env::temp_dir().join(unique_name(tag)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        // An agent's socket beside the state directory (see `Cli`).
        let _ = std::fs::remove_file(self.path.with_extension("sock"));
        // A config file beside it (`Cli::set_config`).
        let _ = std::fs::remove_file(self.path.with_extension("toml"));
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("StateDir drop: removing {}: {e}", self.path.display());
            }
        }
    }
}

/// The CLI bound to one host namespace.
pub struct Cli {
    host: PathBuf,
    pub state: StateDir,
    pub pins: BpffsDir,
    /// The API socket an agent started with this CLI listens on (never the
    /// system's).
    pub socket: PathBuf,
    /// The config file every command reads (`/dev/null` unless
    /// [`Cli::set_config`]).
    config: PathBuf,
}

impl Cli {
    /// The state as stored (state.json with its journal replayed, under the
    /// state lock), as JSON: what the next agent start will see.
    pub fn stored_state(&self) -> Result<Value> {
        let mut store = dataplane_user::control::state::StateStore::open(self.state.path())?;
        let state = store.load()?.context("no state stored yet")?;
        Ok(serde_json::to_value(state)?)
    }

    pub fn new(host: &NetNs, tag: &str) -> Result<Cli> {
        let state = StateDir::new(tag);
        let socket = state.path().with_extension("sock");
        Ok(Cli {
            host: host.path().to_owned(),
            state,
            pins: BpffsDir::new(tag)?,
            socket,
            config: PathBuf::from("/dev/null"),
        })
    }

    /// Makes every later command read `text` as its config file (kept
    /// beside the state directory, removed with it).
    pub fn set_config(&mut self, text: &str) -> Result<()> {
        let path = self.state.path().with_extension("toml");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        self.config = path;
        Ok(())
    }

    /// The command with the test's global flags, for callers that spawn it.
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        Ok(self.command_of(&crate::dataplane_bin()?, args))
    }

    /// [`Cli::command`] with another `dataplane` binary (an earlier
    /// release's, for the upgrade test).
    pub fn command_of(&self, bin: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("--netns")
            .arg(&self.host)
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--bpffs-root")
            .arg(self.pins.path())
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .args(args);
        cmd
    }

    /// Runs `dataplane ARGS`; stdout on success, an error with the exit
    /// status, stdout and stderr otherwise.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)?
            .output()
            .with_context(|| format!("running dataplane {args:?}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "dataplane {args:?}: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Runs a command that must fail, returning its stderr.
    pub fn fail(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args)?.output()?;
        if out.status.success() {
            bail!(
                "dataplane {args:?} succeeded but should have failed:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let out = self.run(args)?;
        serde_json::from_str(&out)
            .with_context(|| format!("dataplane {args:?} printed no JSON: {out}"))
    }

    /// Packets dropped for `reason` (its name in `stats show`), 0 when none.
    pub fn drops(&self, reason: &str) -> u64 {
        let stats = self
            .json(&["stats", "show", "--format", "json"])
            .expect("stats show");
        stats["drops"][reason]["packets"].as_u64().unwrap_or(0)
    }

    /// Every conntrack entry, as `conntrack ls --format json` prints it.
    pub fn flows(&self) -> Vec<Value> {
        self.json(&["conntrack", "ls", "--format", "json"])
            .expect("conntrack ls")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A fake host whose uplink the dataplane manages through this CLI
    /// (`config`: the CLI's config file, None for the defaults).
    pub fn uplinked(tag: &str, config: Option<&str>) -> Result<(crate::topo::FakeHost, Cli)> {
        let fh = crate::topo::FakeHost::new(false)?;
        let mut cli = Cli::new(&fh.host, tag)?;
        if let Some(text) = config {
            cli.set_config(text)?;
        }
        cli.run(&["uplink", "add", &fh.uplink])?;
        Ok((fh, cli))
    }
}

/// How long an agent may take to say it runs.
const AGENT_START: Duration = Duration::from_secs(20);

impl Cli {
    /// Starts `dataplane agent` with `uplink` (no host-local hooks: those
    /// would attach to a cgroup of the whole machine) and waits, bounded,
    /// until it logs that it runs. Returns the process and what it logged
    /// up to then. The agent dies with the thread that started it
    /// (PDEATHSIG), so a killed test cannot leave it behind.
    /// Docker's remote driver is off: its default socket is a path of the
    /// whole machine ([`Cli::start_agent_with`] serves it elsewhere).
    pub fn start_agent(&self, uplink: &str) -> Result<(Child, String)> {
        self.start_agent_with(uplink, &["--docker-socket", "off"])
    }

    /// [`Cli::start_agent`] with more `dataplane agent` arguments.
    pub fn start_agent_with(&self, uplink: &str, extra: &[&str]) -> Result<(Child, String)> {
        self.start_agent_of(&crate::dataplane_bin()?, uplink, extra)
    }

    /// [`Cli::start_agent_with`] with another `dataplane` binary.
    pub fn start_agent_of(
        &self,
        bin: &Path,
        uplink: &str,
        extra: &[&str],
    ) -> Result<(Child, String)> {
        let mut args = vec![
            "agent",
            "--iface",
            uplink,
            "--interval",
            "1",
            "--host-cgroup",
            "off",
        ];
        args.extend_from_slice(extra);
        let mut cmd = self.command_of(bin, &args);
        // SAFETY: prctl is async-signal-safe and affects only the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning the agent")?;
        let stderr = child.stderr.take().context("the agent's stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // Drained to the end even when nobody listens: a closed pipe
            // would break the agent's logging.
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + AGENT_START;
        let mut log = Vec::new();
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let running = line.contains("agent running");
            log.push(line);
            if running {
                return Ok((child, log.join("\n")));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "the agent did not start within {AGENT_START:?}:\n{}",
            log.join("\n")
        )
    }
}

/// Sends `signal` to an agent and waits for it to end.
pub fn stop_agent(mut child: Child, signal: i32) -> Result<ExitStatus> {
    let pid = i32::try_from(child.id()).context("pid")?;
    // SAFETY: kill(2) on a child this process started.
    unsafe { libc::kill(pid, signal) };
    child.wait().context("waiting for the agent")
}

/// One API request written straight to an agent's socket (docs/api.md), as
/// any client would, bounded in time: the result, or the agent's error
/// message (or the I/O failure).
pub fn api(socket: &Path, request: &Value) -> std::result::Result<Value, String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{request}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer:?}"))?;
    match (v.get("ok"), v.get("error")) {
        (Some(ok), _) => Ok(ok["result"].clone()),
        (_, Some(err)) => Err(err["error"].as_str().unwrap_or_default().to_owned()),
        _ => Err(answer),
    }
}
