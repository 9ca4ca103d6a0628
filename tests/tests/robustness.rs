//! Bad input and failures at the edges, for both capture backends.
use keel_tests::lab::Backend;
use keel_tests::scenarios::robustness;

#[test]
fn bad_requests_are_refused_ebpf() {
    robustness::bad_requests_are_refused(Backend::Ebpf);
}
#[test]
fn bad_requests_are_refused_iptables() {
    robustness::bad_requests_are_refused(Backend::Iptables);
}

#[test]
fn refused_upstream_resets_client_ebpf() {
    robustness::refused_upstream_resets_client(Backend::Ebpf);
}
#[test]
fn refused_upstream_resets_client_iptables() {
    robustness::refused_upstream_resets_client(Backend::Iptables);
}

#[test]
fn ebpf_startup_fails_clearly_without_prerequisites() {
    robustness::ebpf_startup_fails_clearly_without_prerequisites();
}

#[test]
fn no_leaked_sockets_ebpf() {
    robustness::no_leaked_sockets(Backend::Ebpf);
}
#[test]
fn no_leaked_sockets_iptables() {
    robustness::no_leaked_sockets(Backend::Iptables);
}
