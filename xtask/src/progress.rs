//! Progress on a terminal for xtask's long steps: spinners for long
//! commands and bulk installs, bars for the bench's runs and the timed soak
//! and fuzz runs. Drawn only when stderr is a terminal and `CI` is unset or
//! empty; otherwise every handle here is hidden and draws nothing, so CI
//! logs keep exactly the plain `println!` lines.

use std::{
    borrow::Cow,
    ffi::OsStr,
    io::{IsTerminal as _, Write as _},
    process::{Command, ExitStatus},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::Duration,
};

use indicatif::{ProgressBar, ProgressStyle};

const TICK: Duration = Duration::from_millis(120);

/// Whether progress is drawn at all.
pub fn shown() -> bool {
    decide(
        std::io::stderr().is_terminal(),
        std::env::var_os("CI").as_deref(),
    )
}

fn decide(stderr_is_terminal: bool, ci: Option<&OsStr>) -> bool {
    stderr_is_terminal && ci.is_none_or(OsStr::is_empty)
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants: a bad one is a bug, not worth failing a run.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A spinner with `step` and the elapsed time; call `finish_and_clear` (or
/// drop it) when the step ends.
pub fn spinner(step: impl Into<Cow<'static, str>>) -> ProgressBar {
    spinner_if(shown(), step)
}

fn spinner_if(show: bool, step: impl Into<Cow<'static, str>>) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner()
        .with_style(style("{spinner:.cyan} {msg} [{elapsed}]"))
        .with_message(step);
    pb.enable_steady_tick(TICK);
    pb
}

/// A bar over `len` steps, counted as `unit` (e.g. "runs", "s").
pub fn bar(len: u64, unit: &str) -> Bar {
    bar_if(shown(), len, unit)
}

fn bar_if(show: bool, len: u64, unit: &str) -> Bar {
    if !show {
        return Bar(ProgressBar::hidden());
    }
    let pb = ProgressBar::new(len).with_style(style(&format!(
        "{{bar:30.cyan/blue}} {{pos}}/{{len}} {unit} [{{elapsed}}, eta {{eta}}] {{msg}}"
    )));
    pb.enable_steady_tick(Duration::from_secs(1));
    if let Ok(mut active) = ACTIVE.lock() {
        *active = Some(pb.clone());
    }
    Bar(pb)
}

/// The bar lines are printed above (see [`suspend`]).
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);
/// Set while [`suspend`] runs: indicatif's suspend holds the bar's lock, so
/// a nested one must not take it again.
static SUSPENDED: AtomicBool = AtomicBool::new(false);

/// A bar that stops being drawn and stops catching [`suspend`]'s output
/// when dropped.
pub struct Bar(ProgressBar);

impl std::ops::Deref for Bar {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.0
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
        if let Ok(mut active) = ACTIVE.lock() {
            *active = None;
        }
    }
}

/// Runs `f` (which prints, or runs a step with a spinner of its own) with
/// the active bar cleared from the terminal, then draws the bar again.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SUSPENDED.store(false, Ordering::SeqCst);
        }
    }
    let active = ACTIVE.lock().ok().and_then(|a| a.clone());
    match active {
        Some(pb) if !pb.is_hidden() && !SUSPENDED.swap(true, Ordering::SeqCst) => {
            let _reset = Reset;
            pb.suspend(f)
        }
        _ => f(),
    }
}

/// Runs a long external command under a spinner named `step`. On a
/// terminal its output is captured and shown only if it fails (the spinner
/// replaces minutes of compiler or apt lines); otherwise it is inherited as
/// before.
pub fn run(cmd: &mut Command, step: &str) -> std::io::Result<ExitStatus> {
    if !shown() {
        return cmd.status();
    }
    let sp = spinner(step.to_owned());
    let out = cmd.output();
    sp.finish_and_clear();
    let out = out?;
    if !out.status.success() {
        // stdout then stderr: their interleaving is lost, their content not.
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&out.stdout);
        let _ = err.write_all(&out.stderr);
    }
    Ok(out.status)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::{bar_if, decide, spinner_if, suspend};

    #[test]
    fn shown_only_on_a_terminal_without_ci() {
        assert!(decide(true, None));
        assert!(decide(true, Some(OsStr::new(""))));
        assert!(!decide(true, Some(OsStr::new("true"))));
        assert!(!decide(true, Some(OsStr::new("1"))));
        assert!(!decide(false, None));
        assert!(!decide(false, Some(OsStr::new("true"))));
    }

    #[test]
    fn hidden_handles_draw_nothing() {
        let sp = spinner_if(false, "step");
        assert!(sp.is_hidden());
        sp.finish_and_clear();
        let b = bar_if(false, 10, "runs");
        assert!(b.is_hidden());
        b.inc(3);
        assert_eq!(b.position(), 3);
        // No bar registered: suspend just runs the closure, nested too.
        assert_eq!(suspend(|| suspend(|| 7)), 7);
    }

    #[test]
    fn run_returns_the_commands_status() {
        let mut ok = std::process::Command::new("true");
        assert!(super::run(&mut ok, "true").is_ok_and(|s| s.success()));
        let mut fails = std::process::Command::new("sh");
        fails.args(["-c", "exit 3"]);
        assert!(super::run(&mut fails, "exit 3").is_ok_and(|s| s.code() == Some(3)));
        let mut missing = std::process::Command::new("/nonexistent/command");
        assert!(super::run(&mut missing, "missing").is_err());
    }

    #[test]
    fn public_handles_are_hidden_under_ci_or_off_a_terminal() {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        assert_eq!(super::shown(), tty && !ci);
        if ci || !tty {
            assert!(super::spinner("step").is_hidden());
            assert!(super::bar(5, "runs").is_hidden());
        }
    }
}
