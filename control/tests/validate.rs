//! `keel-control validate` as an operator runs it, on files that once made the loader spin for ever.
use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec: {ports: [{port: 80}]}\n";

/// Runs `keel-control validate <dir>`, killed (and the test failed) if it takes more than 10 s.
fn validate(dir: &std::path::Path) -> Output {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_keel-control")).arg("validate").arg(dir).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("keel-control validate still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_syntax_error_is_reported_once_with_its_position_and_the_other_files_are_read() {
    let dir = std::env::temp_dir().join(format!("keel-control-validate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.yaml"), "x: [{a: 1]").unwrap();
    std::fs::write(dir.join("good.yaml"), SERVICE).unwrap();
    let output = validate(&dir);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("bad.yaml: document 1: not YAML: did not find expected ',' or '}' at line 1 column 10"), "{stderr}");
    assert!(stdout.contains("1 objects read (1 Service), 1 errors"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The traffic fixtures keel-mesh's translation tests use.
fn traffic_fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh/tests/fixtures/traffic")
}

#[test]
fn validate_counts_traffic_objects_and_names_a_bad_field() {
    let dir = std::env::temp_dir().join(format!("keel-control-traffic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(traffic_fixtures().join("topology.yaml"), dir.join("topology.yaml")).unwrap();
    std::fs::copy(traffic_fixtures().join("scenarios/dark-launch.yaml"), dir.join("dark-launch.yaml")).unwrap();
    let validate = || std::process::Command::new(env!("CARGO_BIN_EXE_keel-control")).arg("validate").arg(&dir).output().unwrap();

    let good = validate();
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}{}", String::from_utf8_lossy(&good.stderr));
    assert!(stdout.contains("7 objects read (1 DestinationRule, 3 Pod, 2 Service, 1 VirtualService), 0 errors"), "{stdout}");

    let bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: typo, namespace: istioinaction}\nspec:\n  hosts: [catalog]\n  http: [{route: [{destination: {host: catalog}, weight: 80}, {destination: {host: catalog}, weight: 30}]}]\n";
    std::fs::write(dir.join("typo.yaml"), bad).unwrap();
    let rejected = validate();
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(!rejected.status.success());
    assert!(stderr.contains("typo.yaml: VirtualService istioinaction/typo: field spec.http[0].route: the weights"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
