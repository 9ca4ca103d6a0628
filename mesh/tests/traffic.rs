//! The traffic-management scenarios of *Istio in Action* (tests/fixtures/traffic/scenarios, each on top of
//! topology.yaml) load, pass every check without a warning, and read as the typed values the L7 engine needs;
//! `keel-control validate` counts VirtualServices and DestinationRules and names a bad field.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use keel_mesh::{
    objects::{DestinationRule, HashKey, HeaderMatch, HttpAction, Object, SimpleLb, StringMatch, VirtualService},
    source::{load_text, Loaded},
    translate::{translate, Mesh},
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/traffic")
}

fn scenario_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("scenarios")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// The topology and one scenario, loaded as `keel-control` loads a directory; every object must be valid.
fn load_scenario(name: &str) -> Vec<Object> {
    let mut loaded = Loaded::default();
    for file in [fixtures().join("topology.yaml"), fixtures().join("scenarios").join(format!("{name}.yaml"))] {
        load_text(&file, &std::fs::read_to_string(&file).unwrap(), &mut loaded);
    }
    assert!(loaded.errors.is_empty(), "{name}: {:#?}", loaded.errors);
    loaded.objects.into_iter().map(|(_, o)| o).collect()
}

fn virtual_service(objects: &[Object]) -> &VirtualService {
    objects.iter().find_map(|o| if let Object::VirtualService(vs) = o { Some(vs) } else { None }).expect("a VirtualService")
}

fn destination_rule(objects: &[Object]) -> &DestinationRule {
    objects.iter().find_map(|o| if let Object::DestinationRule(dr) = o { Some(dr) } else { None }).expect("a DestinationRule")
}

#[test]
fn every_scenario_loads_and_translates_without_errors_or_warnings() {
    let files = scenario_files();
    assert_eq!(files.len(), 9, "{files:?}");
    for file in files {
        let name = file.file_stem().unwrap().to_str().unwrap().to_owned();
        let objects = load_scenario(&name);
        let resources = translate(&Mesh::default(), &objects).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(resources.warnings.is_empty(), "{name}: {:?}", resources.warnings);
        assert!(objects.iter().any(|o| matches!(o, Object::VirtualService(_) | Object::DestinationRule(_))), "{name}");
    }
}

#[test]
fn dark_launch_routes_the_cohort_header_to_the_v2_subset() {
    let objects = load_scenario("dark-launch");
    let subsets: Vec<&str> = destination_rule(&objects).spec.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(subsets, ["version-v1", "version-v2"]);
    let http = &virtual_service(&objects).spec.http;
    assert_eq!(http[0].matches[0].headers["x-istio-cohort"], HeaderMatch::Value(StringMatch::Exact("internal".into())));
    let HttpAction::Route(to_v2) = http[0].action().unwrap() else { panic!("not a route") };
    assert_eq!(to_v2[0].destination.subset.as_deref(), Some("version-v2"));
    assert!(http[1].matches.is_empty(), "the catch-all comes last");
}

#[test]
fn canary_splits_80_20() {
    let objects = load_scenario("canary-80-20");
    let weights: Vec<i32> = virtual_service(&objects).spec.http[0].route.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [80, 20]);
}

#[test]
fn retries_fault_and_timeouts_read_as_durations_and_shares() {
    let retries = virtual_service(&load_scenario("retries")).spec.http[0].retries.clone().unwrap();
    assert_eq!(retries.attempts, 3);
    assert_eq!(retries.conditions().collect::<Vec<_>>(), ["5xx"]);
    assert_eq!(retries.per_try_timeout.unwrap().get(), Duration::from_millis(300));

    let delayed = virtual_service(&load_scenario("fault-delay-timeout")).spec.http[0].clone();
    let delay = delayed.fault.as_ref().unwrap().delay.as_ref().unwrap();
    assert_eq!((delay.fixed_delay.get(), delay.percentage.unwrap().value), (Duration::from_secs(2), 100.0));
    assert_eq!(delayed.timeout.unwrap().get(), Duration::from_secs(1));

    let aborted = virtual_service(&load_scenario("fault-abort")).spec.http[0].fault.clone().unwrap().abort.unwrap();
    assert_eq!((aborted.http_status, aborted.percentage.unwrap().value), (Some(503), 50.0));

    let mirrored = virtual_service(&load_scenario("mirror")).spec.http[0].clone();
    assert_eq!(mirrored.mirror.as_ref().unwrap().subset.as_deref(), Some("version-v2"));
    assert_eq!(mirrored.mirror_percentage.unwrap().value, 100.0);
}

#[test]
fn load_balancing_connection_pool_and_outlier_detection_read_as_typed_settings() {
    let least = destination_rule(&load_scenario("least-request")).spec.traffic_policy.clone().unwrap();
    assert_eq!(least.load_balancer.unwrap().simple, Some(SimpleLb::LeastRequest));

    let hashed = destination_rule(&load_scenario("consistent-hash")).spec.traffic_policy.clone().unwrap();
    let hash = hashed.load_balancer.unwrap().consistent_hash.unwrap();
    assert_eq!(hash.key(), Ok(HashKey::Header("x-user")));
    assert_eq!(hash.ring_hash.unwrap().minimum_ring_size, Some(1024));

    let breaker = destination_rule(&load_scenario("circuit-breaker")).spec.traffic_policy.clone().unwrap();
    let pool = breaker.connection_pool.unwrap();
    let (tcp, http) = (pool.tcp.unwrap(), pool.http.unwrap());
    assert_eq!((tcp.max_connections, tcp.connect_timeout.unwrap().get()), (Some(1), Duration::from_millis(500)));
    assert_eq!((http.http1_max_pending_requests, http.max_retries), (Some(1), Some(1)));
    assert_eq!(http.idle_timeout.unwrap().get(), Duration::from_millis(1500));
    let outlier = breaker.outlier_detection.unwrap();
    assert_eq!((outlier.consecutive_5xx_errors, outlier.max_ejection_percent), (Some(1), Some(100)));
    assert_eq!(outlier.base_ejection_time.unwrap().get(), Duration::from_secs(5));
    assert_eq!(breaker.port_level_settings[0].port.number, 80);
}
