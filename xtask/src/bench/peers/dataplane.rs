//! `dataplane`: ours. The real release binary drives the fake host through
//! `--netns`, a state directory, bpffs root and API socket of the bench's
//! own (as tests/src/cli.rs does): `uplink add`, `network create`,
//! `connect ... -p`, then the agent is started on that state and the N
//! extra mappings (one `publish_add` API request carrying all N specs) and the N
//! filter rules (one `filter_add_many` request over the agent's socket) are
//! installed. No iptables or nftables rule exists in this fake host.
//!
//! On an IPv6 topology the network is dual-stack (`network create --ipv6`
//! with an IPv4 and a ULA subnet, as Docker's is): `-p` publishes on the
//! host's IPv6 address too, the containers leave through NAT66 masquerade,
//! and the N filter rules are IPv6 /128 sources.
//!
//! The filter engine holds at most `MAX_RULES` (15 360) rules: for a larger
//! N the bench installs that many and says so in the install note.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{extra_sources, extras, measured, one_more, Install, Peer};
use crate::bench::{
    family::Family,
    hostlocal::{Cgroup, HostLocal},
    topology::{other_net, unique_name, Proc, Topology, UPLINK},
    workloads::Workload,
};

/// Most filter rules the dataplane holds: dataplane-common's `MAX_RULES`
/// (xtask does not depend on that crate). Were it to shrink, the agent
/// would refuse the request with a message naming the count.
pub const MAX_FILTER_RULES: usize = 15_360;
const NETWORK: &str = "benchnet";
const OTHER_NETWORK: &str = "benchnet2";
/// How long the agent may take to open its socket.
const AGENT_START: Duration = Duration::from_secs(20);

pub struct Dataplane {
    bin: PathBuf,
    state: PathBuf,
    pins: PathBuf,
    socket: PathBuf,
    /// The agent's and the CLI's `--config`: `[maps]` sized for N when the
    /// defaults are too small, or one given ([`Dataplane::with_config`]);
    /// None: `/dev/null`, every setting at its default. Removed on drop.
    config: Option<PathBuf>,
    host: Option<PathBuf>,
    agent: Option<Proc>,
    /// The host-local clients' cgroup (removed after the agent stopped).
    cgroup: Option<Cgroup>,
}

/// Most specs the CLI figure passes on one command line (10 000 of
/// about 20 bytes fit the kernel's argument limits; 100 000 do not).
const CLI_SPECS_MAX: usize = 20_000;

/// Entries of `DP_PORTS` (and counter slots) without a config.
const DEFAULT_PUBLISHED_PORTS: usize = 65_536;

impl Dataplane {
    pub fn new(root: &Path) -> Result<Dataplane> {
        let bin = root.join("target/release/dataplane");
        if !bin.is_file() {
            bail!("{} not found (cargo xtask bench builds it)", bin.display());
        }
        let state = std::env::temp_dir().join(unique_name("state"));
        Ok(Dataplane {
            bin,
            socket: state.with_extension("sock"),
            config: None,
            state,
            pins: Path::new("/sys/fs/bpf").join(unique_name("pins")),
            host: None,
            agent: None,
            cgroup: None,
        })
    }

    /// Runs the CLI and the agent with this configuration file.
    pub fn with_config(mut self, path: &Path) -> Dataplane {
        self.config = Some(path.to_owned());
        self
    }

    /// The bpffs directory holding this instance's pinned maps.
    pub fn pins(&self) -> &Path {
        &self.pins
    }

    /// The running agent's process id.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Proc::id)
    }

    fn command(&self, args: &[&str]) -> Result<Command> {
        let host = self.host.as_ref().context("dataplane used before setup")?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--netns")
            .arg(host)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--bpffs-root")
            .arg(&self.pins)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(self.config.as_deref().unwrap_or(Path::new("/dev/null")))
            .args(args);
        Ok(cmd)
    }

    /// `dataplane ARGS`, stdout on success.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        stdout_of(args, self.command(args)?.output())
    }

    fn timed_cli(&self, args: &[&str]) -> Result<Duration> {
        let t = Instant::now();
        self.cli(args)?;
        Ok(t.elapsed())
    }

    /// One request over the agent's socket (docs/api.md): one JSON line
    /// out, one back.
    pub fn api(&self, request: &Value) -> Result<Value> {
        self.api_line(request, &Self::line(request)?)
    }

    /// `request` as the one line the socket takes.
    fn line(request: &Value) -> Result<Vec<u8>> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        Ok(line)
    }

    /// [`Self::api`] of a request already written out (`line`, of
    /// `request`): what a timed request sends, as `nft -f` is timed reading
    /// a file already written.
    fn api_line(&self, request: &Value, line: &[u8]) -> Result<Value> {
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(line)?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer)?;
        // A request of 100 000 specs is shown by its start (and only when
        // it failed: writing it out again costs milliseconds).
        let shown = || -> String { request.to_string().chars().take(300).collect() };
        let v: Value = serde_json::from_str(&answer)
            .with_context(|| format!("agent answered {answer:?} to {}", shown()))?;
        if let Some(e) = v.get("error") {
            bail!("agent refused {}: {e}", shown());
        }
        Ok(v)
    }

    /// Starts the agent on this state (bounded wait for its socket).
    pub fn start_agent(&mut self) -> Result<()> {
        let mut argv: Vec<String> = Vec::new();
        let cmd = self.command(&[
            "agent",
            "--iface",
            UPLINK,
            "--interval",
            "10",
            "--host-cgroup",
            "none",
        ])?;
        argv.push(cmd.get_program().to_string_lossy().into_owned());
        argv.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut agent = Proc::spawn(&argv)?;
        let deadline = Instant::now() + AGENT_START;
        loop {
            agent.check_alive()?;
            if self.api(&json!({"op": "status"})).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not answer on {} within {AGENT_START:?}",
                    self.socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.agent = Some(agent);
        Ok(())
    }

    /// Sets up the dataplane's own network in a fresh fake host (no
    /// containers), for the control-plane measurement.
    pub fn prepare_network(&mut self, topo: &Topology) -> Result<()> {
        self.host = Some(topo.host.path());
        self.cli(&["uplink", "add", UPLINK])?;
        let v4 = Family::V4.addrs();
        let mut args = vec![
            "network".to_owned(),
            "create".into(),
            "--subnet".into(),
            v4.subnet.into(),
            "--gateway".into(),
            v4.gateway.to_string(),
        ];
        if topo.family == Family::V6 {
            let v6 = Family::V6.addrs();
            args.extend([
                "--ipv6".into(),
                "--subnet".into(),
                v6.subnet.into(),
                "--gateway".into(),
                v6.gateway.to_string(),
            ]);
        }
        args.push(NETWORK.into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args)?;
        Ok(())
    }

    /// The cross-network workloads' second network (IPv4) and its one
    /// endpoint, `other`: isolated from the first, as Docker's are.
    fn connect_other(&self, topo: &Topology) -> Result<()> {
        let (subnet, gw, ip) = (
            other_net::SUBNET,
            other_net::GATEWAY.to_string(),
            other_net::CONTAINER.to_string(),
        );
        self.cli(&[
            "network",
            "create",
            "--subnet",
            subnet,
            "--gateway",
            &gw,
            OTHER_NETWORK,
        ])?;
        let ns = topo.other.path();
        let ns = ns.to_string_lossy();
        self.cli(&[
            "connect",
            OTHER_NETWORK,
            &ns,
            "--name",
            "other",
            "--ip",
            &ip,
        ])?;
        Ok(())
    }

    /// `connect` of `ns` as endpoint `name` with the topology's addresses
    /// (both families on an IPv6 topology) and the given `-p` specs.
    fn connect(
        &self,
        topo: &Topology,
        ns: &Path,
        name: &str,
        ip4: IpAddr,
        ip6: IpAddr,
        specs: &[String],
    ) -> Result<()> {
        let mut args = vec![
            "connect".to_owned(),
            NETWORK.to_owned(),
            ns.to_string_lossy().into_owned(),
            "--name".into(),
            name.into(),
            "--ip".into(),
            ip4.to_string(),
        ];
        if topo.family == Family::V6 {
            args.extend(["--ip6".into(), ip6.to_string()]);
        }
        for spec in specs {
            args.extend(["-p".into(), spec.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args)?;
        Ok(())
    }
}

impl Peer for Dataplane {
    fn name(&self) -> &'static str {
        "dataplane"
    }

    fn setup(&mut self, topo: &Topology, n: usize) -> Result<Install> {
        // Room for N mappings and their counters in both families.
        if n + 16 > DEFAULT_PUBLISHED_PORTS / 2 {
            let path = self.state.with_extension("toml");
            let size = (2 * (n + 16)).next_power_of_two();
            std::fs::write(&path, format!("[maps]\npublished_ports = {size}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            self.config = Some(path);
        }
        self.prepare_network(topo)?;
        let (v4, v6) = (Family::V4.addrs(), Family::V6.addrs());
        self.connect(topo, &topo.idle.path(), "idle", v4.idle, v6.idle, &[])?;
        self.connect_other(topo)?;
        let specs: Vec<String> = measured(topo.family).iter().map(|m| m.spec()).collect();
        self.connect(
            topo,
            &topo.container.path(),
            "web",
            v4.container,
            v6.container,
            &specs,
        )?;
        self.start_agent()?;

        let mut total = Duration::ZERO;
        let specs: Vec<String> = extras(n, topo.family).iter().map(|m| m.spec()).collect();
        let mut publish_time = Duration::ZERO;
        if !specs.is_empty() {
            // Through the API: N specs do not fit one command line at
            // 100 000.
            let request = json!({"op": "publish_add", "network": NETWORK, "endpoint": "idle", "specs": specs});
            let line = Self::line(&request)?;
            let t = Instant::now();
            let v = self.api_line(&request, &line)?;
            publish_time = t.elapsed();
            let added = v["ok"]["result"]["published"]
                .as_array()
                .map_or(0, Vec::len);
            if added != specs.len() {
                bail!("publish_add added {added} of {} mappings: {v}", specs.len());
            }
            total += publish_time;
        }
        let sources = extra_sources(n.min(MAX_FILTER_RULES), topo.family);
        let host_len = topo.family.host_len();
        let mut filter_time = Duration::ZERO;
        let mut rule_ids = Vec::new();
        if !sources.is_empty() {
            let rules: Vec<Value> = sources
                .iter()
                .map(|src| json!({"src": format!("{src}/{host_len}"), "action": "drop"}))
                .collect();
            // The request is the caller's data: written out before the
            // clock starts.
            let request = json!({"op": "filter_add_many", "rules": rules, "first": false});
            let line = Self::line(&request)?;
            let t = Instant::now();
            let v = self.api_line(&request, &line)?;
            filter_time = t.elapsed();
            rule_ids = v["ok"]["result"]["ids"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let added = rule_ids.len();
            if added != sources.len() {
                bail!(
                    "filter_add_many added {added} of {} rules: {v}",
                    sources.len()
                );
            }
        }
        total += filter_time;
        let mut note = format!(
            "{n} mappings in one `publish_add` API request ({:.1} ms); {} filter rules in one `filter_add_many` API request ({:.1} ms)",
            publish_time.as_secs_f64() * 1e3,
            sources.len(),
            filter_time.as_secs_f64() * 1e3,
        );
        // The same N mappings through the CLI, one process: removed (one
        // API request) and published again by one `publish add` carrying
        // every spec, when they fit one command line.
        let cli_mappings = if !specs.is_empty() && specs.len() <= CLI_SPECS_MAX {
            self.api(
                &json!({"op": "publish_rm", "network": NETWORK, "endpoint": "idle", "specs": specs}),
            )?;
            let mut args = vec!["publish", "add", NETWORK, "idle"];
            args.extend(specs.iter().map(String::as_str));
            let t = self.timed_cli(&args)?;
            note.push_str(&format!(
                "; the {n} mappings again through the CLI, one `publish add` process: {:.1} ms",
                t.as_secs_f64() * 1e3
            ));
            Some(t)
        } else {
            None
        };
        // The rules the same way: removed (one request) and added again by
        // one `filter add --from-file`.
        let cli_rules = if rule_ids.is_empty() {
            None
        } else {
            self.api(&json!({"op": "filter_rm_many", "ids": rule_ids}))?;
            let path = self.state.with_extension("rules");
            let text: String = sources
                .iter()
                .map(|src| format!("--src {src}/{host_len} --action drop\n"))
                .collect();
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            let file = path.to_string_lossy().into_owned();
            let t = self.timed_cli(&["filter", "add", "--from-file", &file])?;
            note.push_str(&format!(
                "; the {} rules again through the CLI, one `filter add --from-file` process: {:.1} ms",
                sources.len(),
                t.as_secs_f64() * 1e3
            ));
            Some(t)
        };
        let (cli_add, cli_rm) = self.add_remove_cli()?;
        note.push_str(&format!(
            "; one more mapping through the CLI (process start included): add {:.2} ms, remove {:.2} ms",
            cli_add.as_secs_f64() * 1e3,
            cli_rm.as_secs_f64() * 1e3
        ));
        if n > MAX_FILTER_RULES {
            note.push_str(&format!(
                "; the filter engine holds at most {MAX_FILTER_RULES} rules, so {MAX_FILTER_RULES} of {n}"
            ));
        }
        Ok(Install {
            total,
            mappings: publish_time,
            note: Some(note),
            cli_mappings,
            cli_rules,
        })
    }

    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        // Through the API, as a container engine would call it (the CLI adds
        // a process start; the bench prints that figure too).
        let spec = one_more(topo.family).spec();
        let req =
            |op: &str| json!({"op": op, "network": NETWORK, "endpoint": "idle", "specs": [spec]});
        let t = Instant::now();
        self.api(&req("publish_add"))?;
        let add = t.elapsed();
        let t = Instant::now();
        self.api(&req("publish_rm"))?;
        Ok(Some((add, t.elapsed())))
    }

    /// The cgroup sock_addr hooks on a cgroup of the bench's own (the
    /// agent runs with `--host-cgroup none`: the default, the cgroup v2
    /// root, would be every process of the machine).
    fn host_local(&mut self, topo: &Topology) -> Result<Option<HostLocal>> {
        if topo.family != Family::V4 {
            return Ok(None);
        }
        let cg = Cgroup::new()?;
        self.api(&json!({"op": "local_attach", "cgroup": cg.path}))?;
        let hl = HostLocal {
            cgroup: Some(cg.path.clone()),
            note: "cgroup sock_addr hooks (connect4 translates at the socket), no process".into(),
            ..HostLocal::default()
        };
        self.cgroup = Some(cg);
        Ok(Some(hl))
    }

    /// Hairpin and across networks: the endpoint program DNATs a
    /// container's connection to a published address, keeping the
    /// client's address, and redirects the answers straight back into the
    /// client's veth.
    fn skips(&self, _w: &Workload) -> Option<&'static str> {
        None
    }
}

impl Dataplane {
    /// One add and remove through the CLI (process start included).
    pub fn add_remove_cli(&self) -> Result<(Duration, Duration)> {
        // The spec names ports only, so it is the same for both families.
        let spec = one_more(Family::V4).spec();
        Ok((
            self.timed_cli(&["publish", "add", NETWORK, "idle", &spec])?,
            self.timed_cli(&["publish", "rm", NETWORK, "idle", &spec])?,
        ))
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        // The agent first (it holds the state lock), then everything the
        // dataplane made, then our directories.
        self.agent = None;
        if self.host.is_some() {
            if let Err(e) = self.cli(&["cleanup"]) {
                eprintln!("bench: dataplane cleanup: {e:#}");
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
        for dir in [&self.state, &self.pins] {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("bench: removing {}: {e}", dir.display());
                }
            }
        }
    }
}

/// The stdout of `dataplane ARGS` once it ran (`out`), or an error with
/// its status and stderr.
pub fn stdout_of(args: &[&str], out: std::io::Result<std::process::Output>) -> Result<String> {
    let out = out.with_context(|| format!("running dataplane {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "dataplane {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
