//! The packet fuzzer (issue 18): every tc program driven through
//! BPF_PROG_TEST_RUN with generated and mutated frames ([`gen`]), on maps
//! configured as in real use ([`world`]), each output checked against the
//! invariants below and a small model ([`model`]):
//! - checksums valid where the input's were (IPv4 header, L4);
//! - a packet that matches no mapping leaves byte-identical (a fast-path
//!   redirect may change only MACs and TTL);
//! - a rewrite is the one the model predicts;
//! - no drop without a counted reason (drop counter deltas == SHOT verdicts);
//! - verdicts are NEXT, SHOT or REDIRECT.
//!
//! Findings are written as fixtures ([`save`], into the directory
//! `DP_FUZZ_SAVE` names); the frame sequences in `tests/fixtures/fuzz/*.hex`
//! are replayed by `tests/tests/fuzz_packets.rs` ([`fixtures`], [`replay`]).

pub mod frame;
pub mod gen;
pub mod model;
pub mod rng;
pub mod text;
pub mod world;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use dataplane_common::drop::DropReason;
use dataplane_user::datapath::{bpffs::PinRoot, ebpf::Dataplane, stats};
use frame::{Parsed, View};
use model::{Expect, Model, Prog};
use rng::Rng;

pub const NEXT: u32 = u32::MAX;
pub const SHOT: u32 = 2;
pub const REDIRECT: u32 = 7;
/// Packets between two reads of the drop counters.
const BATCH: u64 = 512;

/// One fuzz run's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub seed: u64,
    pub packets: u64,
    pub max_time: Duration,
}

/// An invariant a program's output broke.
#[derive(Clone, Debug)]
pub struct Finding {
    pub seed: u64,
    pub index: u64,
    pub program: Prog,
    pub invariant: String,
    pub frame: Vec<u8>,
    pub output: Vec<u8>,
    pub verdict: u32,
}

impl Finding {
    /// The fixture file's text: a header of `# key: value` comment lines,
    /// then `program hex-frame`.
    pub fn fixture(&self) -> String {
        format!(
            "# program: {}\n# seed: {}\n# index: {}\n# invariant: {}\n# verdict: {:#x}\n# output: {}\n{} {}\n",
            self.program.name(),
            self.seed,
            self.index,
            self.invariant.replace('\n', " "),
            self.verdict,
            frame::hex(&self.output),
            self.program.name(),
            frame::hex(&self.frame)
        )
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub packets: u64,
    /// Frames the kernel's test run refused (shorter than its minimum).
    pub refused: u64,
    pub elapsed: Duration,
    pub verdicts: HashMap<u32, u64>,
    pub expectations: HashMap<&'static str, u64>,
    pub flows: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn summary(&self) -> String {
        let mut v: Vec<_> = self.verdicts.iter().collect();
        v.sort();
        let mut e: Vec<_> = self.expectations.iter().collect();
        e.sort();
        format!(
            "{} packets in {:.1}s ({:.0}/s), {} refused by the kernel, verdicts {:?}, model said {:?}, {} tracked tuples, {} findings",
            self.packets,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.refused,
            v,
            e,
            self.flows,
            self.findings.len(),
        )
    }
}

/// Loads the object on `pins`, configures it, and loads every program.
pub fn load(pins: &PinRoot) -> Result<Dataplane> {
    let mut dp = Dataplane::load(pins).context("loading the eBPF object")?;
    world::configure(pins)?;
    for p in Prog::ALL {
        dp.tc_program(p.name())
            .with_context(|| format!("loading {}", p.name()))?;
    }
    Ok(dp)
}

fn drops(pins: &PinRoot) -> Result<u64> {
    let snap = stats::read(pins).context("reading the drop counters")?;
    Ok(DropReason::ALL.iter().map(|r| snap.drop(*r).packets).sum())
}

/// Runs `frame` through `prog`: None when the kernel refuses the frame.
fn run_one(dp: &mut Dataplane, prog: Prog, frame: &[u8]) -> Result<Option<(u32, Vec<u8>)>> {
    let p = dp.tc_program(prog.name())?;
    match crate::datapath::run_tc(p, frame) {
        Ok(r) => Ok(Some(r)),
        // EINVAL: a frame below the test run's minimum for its protocol.
        Err(e) if format!("{e:?}").contains("Invalid argument") => Ok(None),
        Err(e) => Err(e),
    }
}

/// A fuzz run on a freshly loaded object.
pub fn run(pins: &PinRoot, cfg: Config) -> Result<Report> {
    let mut dp = load(pins)?;
    let mut model = Model::new();
    let mut rng = Rng::new(cfg.seed);
    let mut report = Report::default();
    let start = Instant::now();
    let mut shots_in_batch = 0u64;
    let mut drops_before = drops(pins)?;
    let mut batch_start = 0u64;
    let mut last: Vec<(Prog, Vec<u8>)> = Vec::new();
    // Frames the kernel refuses do not count: the run ends when
    // `cfg.packets` ran (bounded by twice as many generated).
    for index in 0..cfg.packets.saturating_mul(2) {
        if report.packets >= cfg.packets {
            break;
        }
        if index % 256 == 0 && start.elapsed() > cfg.max_time {
            break;
        }
        let prog = rng.pick(&Prog::ALL);
        let input = gen::frame(&mut rng, &model, prog);
        let Some((verdict, output)) = run_one(&mut dp, prog, &input)? else {
            report.refused += 1;
            continue;
        };
        report.packets += 1;
        *report.verdicts.entry(verdict).or_default() += 1;
        if verdict == SHOT {
            shots_in_batch += 1;
        }
        let (what, broken) = check(&mut model, prog, &input, verdict, &output);
        trace(index, prog, &input, verdict, &output, what);
        *report.expectations.entry(what).or_default() += 1;
        if let Some(invariant) = broken {
            let finding = Finding {
                seed: cfg.seed,
                index,
                program: prog,
                invariant,
                frame: input.clone(),
                output: output.clone(),
                verdict,
            };
            report.findings.push(finding);
        }
        last.push((prog, input));
        if index + 1 - batch_start >= BATCH || report.packets == cfg.packets {
            let now = drops(pins)?;
            if now - drops_before != shots_in_batch {
                let (p, f) = last.pop().unwrap_or((prog, Vec::new()));
                report.findings.push(Finding {
                    seed: cfg.seed,
                    index,
                    program: p,
                    invariant: format!(
                        "drop counters moved by {} over packets {batch_start}..={index}, {shots_in_batch} SHOT verdicts",
                        now - drops_before
                    ),
                    frame: f,
                    output: Vec::new(),
                    verdict: 0,
                });
            }
            drops_before = now;
            shots_in_batch = 0;
            batch_start = index + 1;
            last.clear();
        }
    }
    report.elapsed = start.elapsed();
    report.flows = model.flows();
    Ok(report)
}

const L4_BROKEN: &str = "L4 checksum broken by the program";

/// With `DP_FUZZ_TRACE=PORT,PORT`: every packet carrying both ports, as
/// it went in and came out (to follow one tuple through a run).
fn trace(index: u64, prog: Prog, input: &[u8], verdict: u32, output: &[u8], what: &str) {
    let Ok(want) = std::env::var("DP_FUZZ_TRACE") else {
        return;
    };
    let ports: Vec<u16> = want.split(',').filter_map(|p| p.parse().ok()).collect();
    let Parsed::Ip(v) = frame::parse(input) else {
        if want.contains("all") {
            eprintln!(
                "{index} {} not-ip verdict {verdict:#x} {}",
                prog.name(),
                frame::hex(input)
            );
        }
        return;
    };
    if ports.iter().all(|p| *p == v.sport || *p == v.dport) {
        let o = match frame::parse(output) {
            Parsed::Ip(o) => format!("{}:{} -> {}:{}", o.src, o.sport, o.dst, o.dport),
            _ => "-".into(),
        };
        eprintln!(
            "{index} {} proto {} {}:{} -> {}:{} verdict {verdict:#x} => {o} (model: {what}) {}",
            prog.name(),
            v.proto,
            v.src,
            v.sport,
            v.dst,
            v.dport,
            if want.contains("hex") {
                frame::hex(output)
            } else {
                String::new()
            }
        );
    }
}

/// What [`check`] made of one output: the model's kind of prediction and
/// the invariant broken (if any).
pub type Checked = (&'static str, Option<String>);

/// Checks one output. Updates the model with what passed.
pub fn check(model: &mut Model, prog: Prog, input: &[u8], verdict: u32, output: &[u8]) -> Checked {
    let (what, broken) = check_output(model, prog, input, verdict, output);
    if let (None, NEXT | REDIRECT, Parsed::Ip(v)) = (&broken, verdict, frame::parse(input)) {
        if let Parsed::Ip(out) = frame::parse(output) {
            let expect = model.predict(prog, &v);
            model.observe(prog, &v, &out, &expect);
        }
    }
    (what, broken)
}

fn check_output(
    model: &Model,
    prog: Prog,
    input: &[u8],
    verdict: u32,
    output: &[u8],
) -> (&'static str, Option<String>) {
    if ![NEXT, SHOT, REDIRECT].contains(&verdict) {
        return ("-", Some(format!("unexpected verdict {verdict:#x}")));
    }
    let v = match frame::parse(input) {
        Parsed::Ip(v) => v,
        Parsed::NotIp | Parsed::Malformed => {
            let what = "untouched (not IP or malformed)";
            if verdict != SHOT && output != input {
                return (
                    what,
                    Some("a frame that is not translatable was changed".into()),
                );
            }
            return (what, None);
        }
    };
    let expect = model.predict(prog, &v);
    let what = match expect {
        Expect::Untouched => "untouched",
        Expect::Rewrite {
            dst: None,
            src: None,
            ..
        } => "tracked untranslated",
        Expect::Rewrite {
            dst: Some(_),
            src: None,
            ..
        } => "dnat",
        Expect::Rewrite { dst: None, .. } => "snat",
        Expect::Rewrite { .. } => "dnat+snat",
        Expect::Unknown => "unknown",
    };
    if verdict == SHOT {
        return (what, None);
    }
    let out = match frame::parse(output) {
        Parsed::Ip(o) => o,
        _ => return (what, Some("a passed IP frame no longer parses".into())),
    };
    if let Some(e) = checksums(input, &v, output, &out) {
        return (what, Some(e));
    }
    (
        what,
        compare(model, &expect, input, &v, verdict, output, &out),
    )
}

fn checksums(input: &[u8], v: &View, output: &[u8], out: &View) -> Option<String> {
    if frame::ip_csum_ok(input, v) == Some(true) && frame::ip_csum_ok(output, out) != Some(true) {
        return Some("IPv4 header checksum broken by the program".into());
    }
    if frame::l4_csum_ok(input, v) == Some(true) && frame::l4_csum_ok(output, out) != Some(true) {
        return Some(L4_BROKEN.into());
    }
    None
}

fn compare(
    model: &Model,
    expect: &Expect,
    input: &[u8],
    v: &View,
    verdict: u32,
    output: &[u8],
    out: &View,
) -> Option<String> {
    let mut want = input.to_vec();
    let mut masked = Vec::new();
    if verdict == REDIRECT {
        masked.extend(frame::forward_positions(v));
        masked.extend(frame::checksum_positions(v));
    }
    match expect {
        Expect::Unknown => return None,
        Expect::Untouched => {}
        Expect::Rewrite { src, dst, .. } => {
            if let Some((addr, rule)) = src {
                if out.src != *addr || !model.port_ok(*rule, v.sport, out.sport) {
                    return Some(format!(
                        "source {}:{} expected {addr} ({rule:?}), got {}:{}",
                        v.src, v.sport, out.src, out.sport
                    ));
                }
                frame::patch(&mut want, v, true, out.src, Some(out.sport));
            }
            if let Some((addr, port)) = dst {
                frame::patch(&mut want, v, false, *addr, Some(*port));
            }
            masked.extend(frame::checksum_positions(v));
        }
    }
    let diff = frame::first_difference(&want, output, &masked)?;
    Some(format!(
        "{expect:?}: output differs from the model's at byte {diff} ({}:{} -> {}:{} became {}:{} -> {}:{})",
        v.src, v.sport, v.dst, v.dport, out.src, out.sport, out.dst, out.dport
    ))
}

/// A fixture read back: frames run in order (earlier ones set up the flow
/// state a later one needs), each checked as in a run.
#[derive(Debug)]
pub struct Fixture {
    pub name: String,
    pub frames: Vec<(Prog, Vec<u8>)>,
    /// `# expect: fail`: a reported bug, replayed to see it still fails
    /// (the test says so when it passes: the mark must go).
    pub expect_fail: bool,
}

/// Reads every `*.hex` fixture under `dir` (sorted by name): `# key:
/// value` header lines, then one `program hex-frame` line per frame.
pub fn fixtures(dir: &Path) -> Result<Vec<Fixture>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "hex"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).with_context(|| name.clone())?;
        let mut frames = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (prog, hex) = line
                .split_once(' ')
                .with_context(|| format!("{name}: expected `program hex`, got {line:?}"))?;
            let prog = Prog::from_name(prog)
                .with_context(|| format!("{name}: unknown program {prog:?}"))?;
            let frame = frame::unhex(hex)
                .with_context(|| format!("{name}: the frame of {line:?} is not hex"))?;
            frames.push((prog, frame));
        }
        let expect_fail = text.lines().any(|l| l.trim() == "# expect: fail");
        out.push(Fixture {
            name,
            frames,
            expect_fail,
        });
    }
    Ok(out)
}

/// Replays a fixture on `dp` (a freshly configured object): the first
/// invariant it breaks, if it still breaks one.
pub fn replay(dp: &mut Dataplane, pins: &PinRoot, fx: &Fixture) -> Result<Option<String>> {
    let mut model = Model::new();
    for (i, (prog, frame)) in fx.frames.iter().enumerate() {
        let before = drops(pins)?;
        let Some((verdict, output)) = run_one(dp, *prog, frame)? else {
            continue;
        };
        let (what, broken) = check(&mut model, *prog, frame, verdict, &output);
        trace(i as u64, *prog, frame, verdict, &output, what);
        let counted = drops(pins)? - before;
        if let Some(b) = broken {
            return Ok(Some(format!("frame {i} ({}): {b}", prog.name())));
        }
        if counted != u64::from(verdict == SHOT) {
            return Ok(Some(format!(
                "frame {i} ({}): drop counters moved by {counted}, verdict {verdict:#x}",
                prog.name()
            )));
        }
    }
    Ok(None)
}

/// Writes `findings` as fixtures into `dir` (one file each).
pub fn save(dir: &Path, findings: &[Finding]) -> Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    for f in findings {
        let path = dir.join(format!("{}-{}-{}.hex", f.program.name(), f.seed, f.index));
        std::fs::write(&path, f.fixture()).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}
