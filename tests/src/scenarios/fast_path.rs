//! The eBPF same-node fast path (sock_ops + sk_msg sockmap splice), switched at run time: correct both ways,
//! including a bulk transfer to a slow reader (naive sockmap fails that with ENOMEM: no backpressure).

use super::*;
use crate::lab::{Backend, ServeMode};

const ECHO_PORT: u16 = 8080;
const SINK_PORT: u16 = 9090;

/// With the fast path on, then off: a 1 MiB echo and a 20 MiB send to a slow sink (1 ms per 16 KiB read) both
/// arrive intact, and keel records both with their byte counts. The 20 MiB connection is spliced (sock_ops counts
/// the splice, sk_msg its redirected messages) with the fast path on, and not with it off.
pub fn fast_path_bulk_correct() {
    with_lab("fastbulk", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(Backend::Ebpf, &[])?;
        keel.enroll(&client)?;
        keel.enroll(&server)?;
        let _echo = server.serve(ECHO_PORT, ServeMode::Echo, &[])?;
        let _sink = server.serve(SINK_PORT, ServeMode::Sink, &["--read-delay-ms", "1", "--read-chunk", "16384"])?;
        for on in [true, false] {
            keel.set_fast_path(on)?;
            let stats = keel.stats()?;
            if stats["fast_path"] != on {
                bail!("after {{\"fast_path\": {on}}} stats say fast_path = {}", stats["fast_path"]);
            }
            let label = if on { "fast path on" } else { "fast path off" };
            let echo = send_ok(&client, server.addr(ECHO_PORT), MIB, ServeMode::Echo).context(label)?;
            expect_captured(
                &keel,
                &Expect {
                    direction: "outbound",
                    pod: &client,
                    original_destination: server.addr(ECHO_PORT),
                    source_port: echo.local_port(),
                    bytes_sent: MIB,
                    bytes_received: Some(MIB),
                },
            )
            .context(label)?;
            let before = keel.stats()?;
            let bulk =
                send_ok(&client, server.addr(SINK_PORT), 20 * MIB, ServeMode::Sink).with_context(|| format!("20 MiB to a slow reader, {label}"))?;
            let after = keel.stats()?;
            // The bulk transfer went through the splice when it is on, and around it when it is off: otherwise the
            // "fast path on" half would pass with the fast path silently off (the bytes arrive either way).
            let pointers = ["/ebpf/sock_ops/redirected", "/ebpf/sk_msg/redirected"];
            if on {
                // One splice for the connection's keel→keel hop, and its first messages redirected through the
                // sockmap. Only the first: a one-way burst beyond SPLICE_BURST_LIMIT (64 KiB) leaves the fast path
                // for TCP's flow control (sk_msg has no backpressure), which is what keeps the slow reader whole.
                expect_delta_at_least(&before, &after, pointers[0], 1).context(label)?;
                expect_delta_at_least(&before, &after, pointers[1], 1).context(label)?;
            } else {
                for pointer in pointers {
                    expect_unchanged(&before, &after, pointer).context(label)?;
                }
            }
            expect_captured(
                &keel,
                &Expect {
                    direction: "outbound",
                    pod: &client,
                    original_destination: server.addr(SINK_PORT),
                    source_port: bulk.local_port(),
                    bytes_sent: 20 * MIB,
                    bytes_received: None,
                },
            )
            .context(label)?;
        }
        Ok(())
    })
}

/// With the fast path on, each connection's keel→keel hop between the two pods is spliced (`sock_ops` counts a
/// splice per connection) and a small echo exchange goes through the sockmap (`sk_msg` redirects). Switched off
/// at run time, new connections are not spliced and nothing more is redirected, yet the echo still works.
pub fn fast_path_redirects() {
    with_lab("fastredir", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(Backend::Ebpf, &[])?;
        keel.enroll(&client)?;
        keel.enroll(&server)?;
        let _echo = server.serve(ECHO_PORT, ServeMode::Echo, &[])?;
        keel.set_fast_path(true)?;
        let before = keel.stats()?;
        for _ in 0..3 {
            send_ok(&client, server.addr(ECHO_PORT), KIB, ServeMode::Echo)?;
        }
        let after = keel.stats()?;
        expect_delta_at_least(&before, &after, "/ebpf/sock_ops/redirected", 3)?;
        expect_delta_at_least(&before, &after, "/ebpf/sk_msg/redirected", 1)?;

        keel.set_fast_path(false)?;
        let before = keel.stats()?;
        for _ in 0..3 {
            send_ok(&client, server.addr(ECHO_PORT), KIB, ServeMode::Echo)?;
        }
        let after = keel.stats()?;
        for counter in ["/ebpf/sock_ops/redirected", "/ebpf/sk_msg/redirected"] {
            expect_unchanged(&before, &after, counter).context("with the fast path off")?;
        }
        Ok(())
    })
}
