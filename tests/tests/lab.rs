//! The lab harness and podapp, verified for real (needs root); all but the two-keel test run without keel.

use keel_tests::scenarios::selftest;

#[test]
fn lab_self_test() {
    selftest::lab_self_test();
}

#[test]
fn lab_cleans_up_after_panic() {
    selftest::lab_cleans_up_after_panic();
}

#[test]
fn two_node_lab_self_test() {
    selftest::two_node_lab_self_test();
}

#[test]
fn two_node_lab_cleans_up_after_panic() {
    selftest::two_node_lab_cleans_up_after_panic();
}

/// Needs keel and keel-control (KEEL_BIN, KEEL_CONTROL_BIN) besides podapp.
#[test]
fn two_node_keels_follow_one_control_plane() {
    selftest::two_node_keels_follow_one_control_plane();
}
