//! Running external tools (ip, ethtool, nsenter, ping, bpftool) with a hard
//! time limit, so a wedged tool fails the test instead of hanging the suite.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Time limit used by [`run`] and [`run_ok`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the child is polled for exit.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// After the child is gone, how long to wait for its pipes to drain. A
/// grandchild that escaped the process group could hold them open forever.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What a finished command produced. Only [`output`] hands this out, for
/// callers (like `ping`) that give meaning to a non-zero exit status.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Quotes argv for error messages so they can be pasted into a shell.
pub fn display(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
            {
                (*a).to_string()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn_reader<R: Read + Send + 'static>(mut pipe: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error just truncates the captured text; the exit status
        // still tells the caller whether the command worked.
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

fn collect(rx: Option<mpsc::Receiver<Vec<u8>>>, deadline: Instant) -> String {
    let Some(rx) = rx else {
        return String::new();
    };
    let wait = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(wait) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => "<output not drained in time>".to_string(),
    }
}

/// Runs argv and returns whatever it produced, whatever its exit status.
/// Errors only when it cannot be started or exceeds `timeout` (then its whole
/// process group is killed).
pub fn output(argv: &[&str], timeout: Duration) -> Result<Output> {
    let Some((prog, args)) = argv.split_first() else {
        bail!("cannot run an empty command line");
    };
    let shown = display(argv);
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout kills whatever the tool forked too.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let out_rx = child.stdout.take().map(spawn_reader);
    let err_rx = child.stderr.take().map(spawn_reader);

    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(e).with_context(|| format!("cannot wait for `{shown}`"));
            }
        }
        if started.elapsed() >= timeout {
            kill_group(&mut child);
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            let stderr = collect(err_rx, deadline);
            bail!(
                "`{shown}` timed out after {:.1}s and was killed; stderr: {}",
                timeout.as_secs_f64(),
                stderr.trim()
            );
        }
        thread::sleep(POLL_INTERVAL);
    };
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    Ok(Output {
        status,
        stdout: collect(out_rx, deadline),
        stderr: collect(err_rx, deadline),
    })
}

fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain syscall on the process group we created for this child.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    // Reap it; SIGKILL cannot be ignored so this returns promptly.
    let _ = child.wait();
}

/// Runs argv with `timeout`; returns stdout, or an error naming the command
/// line, its exit status and its stderr.
pub fn run_timeout(argv: &[&str], timeout: Duration) -> Result<String> {
    let out = output(argv, timeout)?;
    if !out.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(argv),
            out.status,
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

/// [`run_timeout`] with [`DEFAULT_TIMEOUT`].
pub fn run(argv: &[&str]) -> Result<String> {
    run_timeout(argv, DEFAULT_TIMEOUT)
}

/// True when argv ran to a zero exit status within [`DEFAULT_TIMEOUT`].
pub fn run_ok(argv: &[&str]) -> bool {
    output(argv, DEFAULT_TIMEOUT).is_ok_and(|o| o.success())
}
