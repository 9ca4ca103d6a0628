//! keel's HBONE server, on the wire (scenarios in keel_tests::scenarios::hbone_wire).

use keel_tests::scenarios::hbone_wire::independent_client_speaks_hbone_to_keel;

#[test]
fn independent_hbone_client_gets_the_reference_behaviour() {
    independent_client_speaks_hbone_to_keel();
}

#[test]
fn two_nodes_carry_pod_traffic_over_mtls_under_policy() {
    keel_tests::scenarios::mesh_mtls::cross_node_mtls_and_policies();
}

#[test]
fn virtual_services_and_destination_rules_route_http_across_nodes() {
    keel_tests::scenarios::traffic_management::virtual_services_and_destination_rules_take_effect();
}

#[test]
fn http_authorization_policies_are_enforced_per_request_by_the_destination() {
    keel_tests::scenarios::l7_authorization::http_policies_are_enforced_per_request_by_the_destination();
}

#[test]
fn request_authentication_jwts_are_verified_by_the_destination() {
    keel_tests::scenarios::l7_authorization::jwts_are_verified_by_the_destination_and_name_the_request_principal();
}

#[test]
fn an_ingress_gateway_serves_virtual_services_bound_to_it_over_hbone() {
    keel_tests::scenarios::gateway::an_ingress_gateway_serves_virtual_services_bound_to_it_over_hbone();
}

#[test]
fn an_ingress_gateway_terminates_tls_by_sni_with_certificates_from_rotating_secrets() {
    keel_tests::scenarios::gateway_tls::an_ingress_gateway_terminates_tls_by_sni_with_certificates_from_rotating_secrets();
}

#[test]
fn an_ingress_gateway_passes_tls_through_by_sni_and_relays_tcp_routes() {
    keel_tests::scenarios::gateway_tls::an_ingress_gateway_passes_tls_through_by_sni_and_relays_tcp_routes();
}
