//! keel-control and two keels, all in `--kubernetes` mode against the Kubernetes API stand-in (scenario in
//! keel_tests::scenarios::kubernetes_mesh).

use keel_tests::scenarios::kubernetes_mesh::*;

#[test]
fn two_nodes_follow_the_kubernetes_api_alone() {
    two_nodes_follow_the_api_alone();
}

#[test]
fn an_ingress_gateway_follows_the_kubernetes_api() {
    keel_tests::scenarios::kubernetes_gateway::an_ingress_gateway_follows_the_api();
}
