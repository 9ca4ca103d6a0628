//! Hitless upgrade: `keel run --takeover` under load (keel_tests::scenarios::upgrade).

#[test]
fn keel_takes_over_without_refusing_a_connection() {
    keel_tests::scenarios::upgrade::keel_takes_over_without_refusing_a_connection();
}
