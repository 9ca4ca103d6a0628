//! keel restart and SIGTERM cleanup, for both capture backends (scenarios in keel_tests::scenarios).

use keel_tests::lab::Backend::{Ebpf, Iptables};
use keel_tests::scenarios::lifecycle::*;

#[test]
fn restart_resumes_capture_ebpf() {
    restart_resumes_capture(Ebpf);
}
#[test]
fn restart_resumes_capture_iptables() {
    restart_resumes_capture(Iptables);
}

#[test]
fn sigterm_cleans_up_ebpf() {
    sigterm_cleans_up(Ebpf);
}
#[test]
fn sigterm_cleans_up_iptables() {
    sigterm_cleans_up(Iptables);
}

#[test]
fn crashed_keel_fails_closed() {
    keel_tests::scenarios::lifecycle::crashed_keel_fails_closed();
}
