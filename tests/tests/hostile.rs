//! Hostile peers and a hostile (silent) control plane: keel stays up, bounded, and keeps legitimate traffic
//! flowing (scenario in keel_tests::scenarios::hostile).

#[test]
fn hostile_peers_are_bounded() {
    keel_tests::scenarios::hostile::hostile_peers_are_bounded();
}
