//! Hitless upgrade: `keel run --takeover` under load, for both capture backends (keel_tests::scenarios::upgrade).

use keel_tests::lab::Backend::{Ebpf, Iptables};
use keel_tests::scenarios::upgrade::{a_ten_minute_stream_outlives_three_keels, keel_takes_over_without_refusing_a_connection};

#[test]
fn keel_takes_over_without_refusing_a_connection_ebpf() {
    keel_takes_over_without_refusing_a_connection(Ebpf);
}

#[test]
fn keel_takes_over_without_refusing_a_connection_iptables() {
    keel_takes_over_without_refusing_a_connection(Iptables);
}

#[test]
fn a_ten_minute_stream_outlives_three_keels_ebpf() {
    a_ten_minute_stream_outlives_three_keels(Ebpf);
}
