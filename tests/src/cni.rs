//! Driving the `dataplane-cni` plugin as a container runtime does: the
//! `CNI_*` variables, the network configuration on stdin, run inside the
//! fake host (`nsenter --net=`), with a time limit; the answer parsed.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::netns::NetNs;

/// One plugin call may take this long (the agent serialises requests).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The `dataplane-cni` binary cargo built beside this test executable.
pub fn cni_bin() -> Result<PathBuf> {
    let dataplane = crate::dataplane_bin()?;
    let bin = dataplane.with_file_name("dataplane-cni");
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo xtask build`",
            bin.display()
        );
    }
    Ok(bin)
}

/// What one call printed and how it ended.
#[derive(Debug)]
pub struct Answer {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Answer {
    /// stdout parsed (Null when empty).
    pub fn json(&self) -> Result<Value> {
        if self.stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("plugin stdout is not JSON: {:?}", self.stdout))
    }

    /// The result of a call that must succeed.
    pub fn ok(&self) -> Result<Value> {
        if !self.success {
            bail!("plugin failed: {}\nstderr: {}", self.stdout, self.stderr);
        }
        self.json()
    }

    /// The error JSON of a call that must fail: `{cniVersion, code, msg,
    /// details?}`, checked for shape.
    pub fn error(&self) -> Result<Value> {
        if self.success {
            bail!("plugin succeeded but should have failed: {}", self.stdout);
        }
        let v = self.json()?;
        if !v["code"].is_u64() || !v["msg"].is_string() || !v["cniVersion"].is_string() {
            bail!("not the spec's error JSON: {v}");
        }
        Ok(v)
    }
}

/// The environment of one call.
#[derive(Clone, Debug, Default)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: &'a str,
}

/// Runs the plugin inside `host` with `call`'s variables and `stdin`.
pub fn invoke(host: &NetNs, call: &Call<'_>, stdin: &[u8]) -> Result<Answer> {
    let bin = cni_bin()?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", host.path().display()))
        .arg("--")
        .arg(&bin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env(
            "CNI_NETNS",
            call.netns
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", bin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawning dataplane-cni")?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .context("writing the plugin's stdin")?;
    }
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CALL_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "dataplane-cni {} did not finish within {CALL_TIMEOUT:?}",
                call.command
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Answer {
        success: status.success(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// `conf` as stdin, with `prevResult` set when given.
pub fn with_prev(conf: &Value, prev: Option<&Value>) -> Vec<u8> {
    let mut c = conf.clone();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c.to_string().into_bytes()
}
