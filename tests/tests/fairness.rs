//! Per-pod budgets in the shared proxy (keel_tests::scenarios::fairness).

use keel_tests::lab::Backend::{Ebpf, Iptables};
use keel_tests::scenarios::fairness::{
    a_pods_bandwidth_budget_paces_it_and_spares_its_neighbour, a_pods_connection_budget_holds_it_and_spares_its_neighbour,
};

#[test]
fn a_pods_connection_budget_holds_it_and_spares_its_neighbour_ebpf() {
    a_pods_connection_budget_holds_it_and_spares_its_neighbour(Ebpf);
}

#[test]
fn a_pods_connection_budget_holds_it_and_spares_its_neighbour_iptables() {
    a_pods_connection_budget_holds_it_and_spares_its_neighbour(Iptables);
}

#[test]
fn a_pods_bandwidth_budget_paces_it_and_spares_its_neighbour_ebpf() {
    a_pods_bandwidth_budget_paces_it_and_spares_its_neighbour(Ebpf);
}

#[test]
fn a_pods_bandwidth_budget_paces_it_and_spares_its_neighbour_iptables() {
    a_pods_bandwidth_budget_paces_it_and_spares_its_neighbour(Iptables);
}
