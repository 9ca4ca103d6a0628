//! What keel captures and what it leaves alone, for both capture backends (scenarios in keel_tests::scenarios).

use keel_tests::lab::Backend::{Ebpf, Iptables};
use keel_tests::scenarios::capture::*;

#[test]
fn outbound_captured_ebpf() {
    outbound_captured(Ebpf);
}
#[test]
fn outbound_captured_iptables() {
    outbound_captured(Iptables);
}

#[test]
fn inbound_captured_ebpf() {
    inbound_captured(Ebpf);
}
#[test]
fn inbound_captured_iptables() {
    inbound_captured(Iptables);
}

#[test]
fn short_connections_ebpf() {
    short_connections(Ebpf);
}
#[test]
fn short_connections_iptables() {
    short_connections(Iptables);
}

#[test]
fn exclusions_ebpf() {
    exclusions(Ebpf);
}
#[test]
fn exclusions_iptables() {
    exclusions(Iptables);
}

#[test]
fn unenroll_stops_capture_ebpf() {
    unenroll_stops_capture(Ebpf);
}
#[test]
fn unenroll_stops_capture_iptables() {
    unenroll_stops_capture(Iptables);
}

#[test]
fn non_enrolled_untouched_ebpf() {
    non_enrolled_untouched(Ebpf);
}
#[test]
fn non_enrolled_untouched_iptables() {
    non_enrolled_untouched(Iptables);
}
