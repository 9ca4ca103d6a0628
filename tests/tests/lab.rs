//! The lab harness and podapp, verified for real without keel (needs root).

use keel_tests::scenarios::selftest;

#[test]
fn lab_self_test() {
    selftest::lab_self_test();
}

#[test]
fn lab_cleans_up_after_panic() {
    selftest::lab_cleans_up_after_panic();
}
