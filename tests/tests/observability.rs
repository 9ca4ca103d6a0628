//! A real Prometheus scrapes the lab's keels and keel-control; Istio's dashboard and Kiali queries, keel's health
//! metrics and keel's own dashboards are checked against what the clients sent (keel_tests::scenarios::observability).

#[test]
fn a_real_prometheus_reads_istio_dashboards_and_keel_health() {
    keel_tests::scenarios::observability::a_real_prometheus_reads_istio_dashboards_and_keel_health();
}

#[test]
fn spans_reach_an_otlp_receiver_and_an_outage_costs_nothing() {
    keel_tests::scenarios::trace_export::spans_reach_an_otlp_receiver_and_an_outage_costs_nothing();
}

#[test]
fn a_request_through_two_apps_is_one_trace_across_four_keel_hops() {
    keel_tests::scenarios::trace_export::a_request_through_two_apps_is_one_trace_across_four_keel_hops();
}
