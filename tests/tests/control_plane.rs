//! keel driven by a config directory: through keel-control over delta ADS, and through keel's local mode
//! (scenarios in keel_tests::scenarios::control_plane).

use keel_tests::scenarios::control_plane::{vip_traffic_follows_config, Source};

#[test]
fn control_plane_drives_vip_traffic_and_its_loss_keeps_it_flowing() {
    vip_traffic_follows_config(Source::ControlPlane);
}

#[test]
fn local_config_dir_drives_vip_traffic() {
    vip_traffic_follows_config(Source::LocalDir);
}

#[test]
fn registry_only_refuses_unknown_addresses_and_service_entry_dns_is_followed() {
    keel_tests::scenarios::egress::registry_only_refuses_unknown_addresses_and_service_entry_dns_is_followed();
}

#[test]
fn tls_origination_reaches_an_https_server_outside_the_mesh() {
    keel_tests::scenarios::egress::tls_origination_reaches_an_https_server_outside_the_mesh();
}
