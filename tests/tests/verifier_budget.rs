//! How much of the verifier's budget each tc program takes: the kernel
//! refuses a program whose check walks more than 1 000 000 instructions,
//! and the count grows with every branch a change adds. Each program must
//! stay under half of it, so a change that multiplies the verifier's work
//! fails here, with the count, rather than on a kernel that walks a little
//! more. (Before the IPv6 programs ran in stages, `dp_uplink_in6` took
//! 961 606; see `dataplane-ebpf/src/stage.rs`.)

use dataplane_tests::BpffsDir;
use dataplane_user::datapath::ebpf::Dataplane;

const LIMIT: u32 = 1_000_000;

const PROGRAMS: [&str; 8] = [
    "dp_uplink_in",
    "dp_uplink_out",
    "dp_from_container",
    "dp_local_out",
    "dp_uplink_in6",
    "dp_uplink_out6",
    "dp_from_container6",
    "dp_local_out6",
];

#[test]
fn every_tc_program_stays_under_half_the_verifier_budget() {
    if !dataplane_tests::require_root() {
        return;
    }
    let dir = BpffsDir::new("vbudget").expect("bpffs dir");
    let mut dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
    let mut counts = Vec::new();
    for name in PROGRAMS {
        let prog = dp
            .tc_program(name)
            .unwrap_or_else(|e| panic!("the verifier refuses {name}: {e:?}"));
        let info = prog.info().expect("program info");
        let n = info
            .verified_instruction_count()
            .expect("the kernel reports verified instructions");
        counts.push((name, n));
    }
    eprintln!("verified instructions: {counts:?}");
    for (name, n) in counts {
        assert!(
            n < LIMIT / 2,
            "{name}: the verifier walked {n} instructions, over half its {LIMIT} budget"
        );
    }
}
