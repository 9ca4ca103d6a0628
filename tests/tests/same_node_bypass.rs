//! Same-node bypass: authorized L4 traffic between two pods of one node carried by the kernel, keel accountable for
//! it (scenario in keel_tests::scenarios::same_node_bypass).

#[test]
fn same_node_bypass_grants_accounts_revokes_and_fails_closed() {
    keel_tests::scenarios::same_node_bypass::same_node_bypass();
}
