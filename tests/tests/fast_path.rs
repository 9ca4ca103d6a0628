//! The eBPF same-node fast path (eBPF only: the iptables backend has no sockmap).

use keel_tests::scenarios::fast_path::*;

#[test]
fn fast_path_bulk_correct_ebpf() {
    fast_path_bulk_correct();
}

#[test]
fn fast_path_redirects_ebpf() {
    fast_path_redirects();
}
