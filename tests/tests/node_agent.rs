//! keel's node agent (`keel run --kubernetes`) against the Kubernetes API stand-in (scenarios in
//! keel_tests::scenarios::node_agent).

use keel_tests::scenarios::node_agent::*;

#[test]
fn node_agent_captures_exactly_the_ambient_pods_of_its_node() {
    captures_exactly_the_ambient_pods_of_its_node();
}
