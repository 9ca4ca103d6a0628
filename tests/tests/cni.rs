//! keel-cni as a container runtime drives it, chained after the reference CNI plugins, and enrollment by pod UID
//! (scenarios in keel_tests::scenarios::cni).

use keel_tests::scenarios::cni::*;

#[test]
fn cni_chained_add_captures_before_returning() {
    chained_add_captures_before_returning();
}

#[test]
fn cni_add_fails_cleanly_when_keel_cannot_capture() {
    add_fails_cleanly_when_keel_cannot_capture();
}

#[test]
fn cni_enroll_by_uid_finds_cgroup_and_netns() {
    enroll_by_uid_finds_cgroup_and_netns();
}
