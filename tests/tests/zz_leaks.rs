//! Runs last (cargo runs test binaries one at a time, in name order): after
//! every other suite, no namespace, root-namespace link, bpffs pin, cgroup or
//! loaded program made by the tests remains.

use std::time::{Duration, Instant};

#[test]
fn nothing_made_by_the_tests_remains() {
    if !dataplane_tests::require_root() {
        return;
    }
    // The kernel frees a program whose last link went away (a deleted
    // namespace's veth, an unpinned link) from deferred work, so a program
    // may still show for a moment: look again, for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut leaks = dataplane_tests::leak::find_leaks().expect("leak check");
    while !leaks.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        leaks = dataplane_tests::leak::find_leaks().expect("leak check");
    }
    assert!(
        leaks.is_empty(),
        "left behind by the tests:\n{}",
        leaks.join("\n")
    );
}
