//! keel-control's config input: YAML documents parsed and checked into objects, the objects translated, and
//! every resource the translation emits decoded by keel's own xDS decoder, which must accept it (keel-control
//! must never send a node something the node NACKs).
#![no_main]
use std::path::Path;

use keel_fuzz::decode_and_use;
use keel_mesh::{
    source::{load_text, Loaded},
    translate::{translate, Mesh},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut loaded = Loaded::default();
    load_text(Path::new("fuzz.yaml"), text, &mut loaded);
    let objects: Vec<_> = loaded.objects.into_iter().map(|(_, o)| o).collect();
    let Ok(resources) = translate(&Mesh::default(), &objects) else { return };
    let encoded = [
        (keel_proto::ADDRESS_TYPE_URL, resources.addresses.iter().map(|(n, r)| (n, r.encode_to_vec())).collect::<Vec<_>>()),
        (keel_proto::AUTHORIZATION_TYPE_URL, resources.authorizations.iter().map(|(n, r)| (n, r.encode_to_vec())).collect()),
        (keel_proto::HTTP_AUTHORIZATION_TYPE_URL, resources.http_authorizations.iter().map(|(n, r)| (n, r.encode_to_vec())).collect()),
        (keel_proto::REQUEST_AUTHENTICATION_TYPE_URL, resources.request_authentications.iter().map(|(n, r)| (n, r.encode_to_vec())).collect()),
        (keel_proto::LISTENER_TYPE_URL, resources.listeners.iter().map(|(n, r)| (n, r.encode_to_vec())).collect()),
        (keel_proto::ROUTE_CONFIGURATION_TYPE_URL, resources.route_configurations.iter().map(|(n, r)| (n, r.encode_to_vec())).collect()),
        (keel_proto::CLUSTER_TYPE_URL, resources.clusters.iter().map(|(n, r)| (n, r.encode_to_vec())).collect()),
        (keel_proto::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, resources.cluster_load_assignments.iter().map(|(n, r)| (n, r.encode_to_vec())).collect()),
    ];
    for (type_url, resources) in encoded {
        for (name, bytes) in resources {
            if let Err(e) = keel::xds::state::decode(type_url, name, &bytes) {
                panic!("keel-control emitted a {type_url} keel refuses: {e}\n--- input ---\n{text}");
            }
            decode_and_use(type_url, &bytes);
        }
    }
});
