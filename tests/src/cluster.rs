//! Several hosts on one underlay, for overlay networks (docs/overlay.md):
//! an underlay namespace with a bridge ([`Underlay`]), a real etcd in a
//! namespace of its own on it ([`Etcd`], data in a temp dir), and fake
//! hosts, each a namespace on the underlay with its own agent, state
//! directory, API socket and bpffs pins ([`ClusterHost`]). Everything is
//! removed on drop (also on panic): the processes are killed first, then
//! their namespaces and files go.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cli::Cli,
    netns::{self, NetNs},
    unique_ifname, unique_name,
};

/// The underlay: a namespace with a bridge every host and etcd hang on.
pub struct Underlay {
    pub ns: NetNs,
    bridge: String,
}

impl Underlay {
    pub fn new() -> Result<Underlay> {
        let ns = NetNs::new("ul")?;
        let bridge = "br0".to_owned();
        ns.exec(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        netns::link_up(&ns, &bridge)?;
        Ok(Underlay { ns, bridge })
    }

    /// `ns` on the underlay: a veth `ifname` in `ns` with `cidr`, its
    /// peer a port of the bridge.
    pub fn attach(&self, ns: &NetNs, ifname: &str, cidr: &str) -> Result<()> {
        let port = unique_ifname("ul");
        netns::veth_pair(&self.ns, &port, ns, ifname)?;
        self.ns
            .exec(&["ip", "link", "set", &port, "master", &self.bridge])?;
        netns::add_addr(ns, ifname, cidr)
    }
}

/// How long etcd may take to serve.
const ETCD_START: Duration = Duration::from_secs(30);

/// A CA, a server certificate for etcd (its IP in the SAN) and a client
/// certificate, made with `openssl` in a directory removed on drop.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn new(server_ip: &str) -> Result<Certs> {
        let certs = Certs {
            dir: std::env::temp_dir().join(unique_name("certs")),
        };
        std::fs::create_dir_all(&certs.dir)?;
        let p = |f: &str| certs.path(f).display().to_string();
        let ssl = |args: &[&str]| -> Result<()> {
            let mut argv = vec!["openssl"];
            argv.extend_from_slice(args);
            crate::cmd::run_timeout(&argv, Duration::from_secs(30)).map(drop)
        };
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=dpt-ca",
            "-keyout",
            &p("ca-key.pem"),
            "-out",
            &p("ca.pem"),
        ])?;
        for (name, ext) in [
            (
                "server",
                format!("subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth"),
            ),
            ("client", "extendedKeyUsage=clientAuth".to_owned()),
        ] {
            std::fs::write(certs.path(&format!("{name}.ext")), ext)?;
            ssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=dpt-{name}"),
                "-keyout",
                &p(&format!("{name}-key.pem")),
                "-out",
                &p(&format!("{name}.csr")),
            ])?;
            ssl(&[
                "x509",
                "-req",
                "-in",
                &p(&format!("{name}.csr")),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca-key.pem"),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &p(&format!("{name}.ext")),
                "-out",
                &p(&format!("{name}.pem")),
            ])?;
        }
        Ok(certs)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The `[cluster]` lines of an agent using the client certificate.
    pub fn agent_config(&self) -> String {
        format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            self.path("ca.pem").display(),
            self.path("client.pem").display(),
            self.path("client-key.pem").display()
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A single-member etcd in its own namespace on the underlay, serving
/// clients on `addr`:2379 (over TLS with client certificates when given
/// [`Certs`]); killed and its data removed on drop.
pub struct Etcd {
    child: Option<Child>,
    pub ns: NetNs,
    pub addr: String,
    data: PathBuf,
    tls: Option<PathBuf>,
}

impl Etcd {
    /// `cidr`: its address on the underlay (e.g. 10.77.0.10/24).
    pub fn start(underlay: &Underlay, cidr: &str) -> Result<Etcd> {
        Etcd::start_with(underlay, cidr, None)
    }

    /// [`Etcd::start`], over TLS with `certs` (client certificates
    /// required).
    pub fn start_with(underlay: &Underlay, cidr: &str, certs: Option<&Certs>) -> Result<Etcd> {
        let ns = NetNs::new("etcd")?;
        underlay.attach(&ns, "eth0", cidr)?;
        let addr = cidr.split('/').next().unwrap_or(cidr).to_owned();
        let data = std::env::temp_dir().join(unique_name("etcd"));
        let mut etcd = Etcd {
            child: None,
            ns,
            addr,
            data,
            tls: certs.map(|c| c.dir.clone()),
        };
        etcd.run()?;
        Ok(etcd)
    }

    /// `etcd://ADDR:2379`, as `cluster_store` takes it.
    pub fn url(&self) -> String {
        format!("etcd://{}:2379", self.addr)
    }

    /// Starts the process (on the same data) and waits, bounded, until it
    /// serves clients.
    pub fn run(&mut self) -> Result<()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}:2379", self.addr);
        let peer = "http://127.0.0.1:2380";
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name(), "etcd", "--name", "dpt"])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("dpt={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.tls {
            cmd.arg("--cert-file")
                .arg(dir.join("server.pem"))
                .arg("--key-file")
                .arg(dir.join("server-key.pem"))
                .arg("--trusted-ca-file")
                .arg(dir.join("ca.pem"))
                .arg("--client-cert-auth");
        }
        // SAFETY: prctl is async-signal-safe and affects only the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("spawning etcd (package etcd-server)")?;
        let stderr = child.stderr.take().context("etcd's stderr")?;
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + ETCD_START;
        let mut log = Vec::new();
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let ready = line.contains("ready to serve client requests");
            log.push(line);
            if ready {
                // Keep draining so etcd never blocks on a full pipe.
                thread::spawn(move || while rx.recv().is_ok() {});
                return Ok(());
            }
        }
        self.stop();
        bail!(
            "etcd did not serve within {ETCD_START:?}:\n{}",
            log.join("\n")
        )
    }

    /// Kills the process (the data stays for [`Etcd::run`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A host of the cluster: a namespace on the underlay (`eth0`, its
/// address the VTEP) with an agent of its own.
pub struct ClusterHost {
    agent: Option<Child>,
    pub cli: Cli,
    pub ns: NetNs,
    pub addr: String,
    /// The agent's log up to "agent running".
    pub log: String,
}

impl ClusterHost {
    /// Host `n` at `cidr` on the underlay, its agent on the cluster store
    /// `store` (`etcd://...`) with `extra` config lines.
    pub fn start(
        underlay: &Underlay,
        n: u32,
        cidr: &str,
        store: &str,
        extra: &str,
    ) -> Result<ClusterHost> {
        let ns = NetNs::new(&format!("h{n}"))?;
        underlay.attach(&ns, "eth0", cidr)?;
        let mut cli = Cli::new(&ns, &format!("h{n}"))?;
        cli.set_config(&format!(
            "cluster_store = \"{store}\"\ncluster_advertise = \"eth0\"\n\
             metrics_address = \"off\"\n{extra}\n"
        ))?;
        let (agent, log) = cli.start_agent("eth0")?;
        Ok(ClusterHost {
            agent: Some(agent),
            cli,
            ns,
            addr: cidr.split('/').next().unwrap_or(cidr).to_owned(),
            log,
        })
    }

    /// `cluster status --format json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        self.cli.json(&["cluster", "status", "--format", "json"])
    }

    /// Starts the agent again (same state, socket and pins) after
    /// [`ClusterHost::kill_agent`].
    pub fn restart_agent(&mut self) -> Result<()> {
        self.kill_agent();
        let (agent, log) = self.cli.start_agent("eth0")?;
        self.agent = Some(agent);
        self.log = log;
        Ok(())
    }

    /// Kills the agent (SIGKILL) and waits for it.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ClusterHost {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// Polls `f` every 100 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
