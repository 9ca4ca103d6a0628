//! keel's crash, stop, restart and uninstall, for both capture backends (scenarios in keel_tests::scenarios).

use keel_tests::lab::Backend::{Ebpf, Iptables};
use keel_tests::scenarios::lifecycle::*;

#[test]
fn restart_resumes_capture_ebpf() {
    restart_resumes_capture(Ebpf, Ending::Crash);
}
#[test]
fn restart_resumes_capture_iptables() {
    restart_resumes_capture(Iptables, Ending::Crash);
}

#[test]
fn stopped_keel_fails_closed_and_restarts_ebpf() {
    restart_resumes_capture(Ebpf, Ending::Sigterm);
}
#[test]
fn stopped_keel_fails_closed_and_restarts_iptables() {
    restart_resumes_capture(Iptables, Ending::Sigterm);
}

#[test]
fn uninstall_cleans_up_ebpf() {
    uninstall_cleans_up(Ebpf);
}
#[test]
fn uninstall_cleans_up_iptables() {
    uninstall_cleans_up(Iptables);
}

#[test]
fn crashed_keel_fails_closed() {
    keel_tests::scenarios::lifecycle::crashed_keel_fails_closed();
}
