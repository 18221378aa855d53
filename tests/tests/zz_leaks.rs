//! Runs last (cargo runs test binaries one at a time, in name order): after
//! every other suite, no namespace, root-namespace link, bpffs pin or attached
//! program made by the tests remains.

#[test]
fn nothing_made_by_the_tests_remains() {
    if !dataplane_tests::require_root() {
        return;
    }
    let leaks = dataplane_tests::leak::find_leaks().expect("leak check");
    assert!(
        leaks.is_empty(),
        "left behind by the tests:\n{}",
        leaks.join("\n")
    );
}
