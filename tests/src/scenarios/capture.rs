//! Capture scenarios: what keel must intercept, and what it must leave alone.

use super::*;
use crate::lab::{Backend, Keel, Lab, Pod, ServeMode};
use std::net::SocketAddr;

const PORT: u16 = 8080;

/// Recognises an original destination keel must not have recorded.
type DstMatch<'a> = Box<dyn Fn(&str) -> bool + 'a>;

/// An outbound entry for `from`'s connection `sent` to `dst` (echo: the same bytes both ways).
fn outbound_echo<'a>(from: &'a Pod, dst: SocketAddr, sent: &Sent) -> Expect<'a> {
    Expect {
        direction: "outbound",
        pod: from,
        original_destination: dst,
        source_port: sent.local_port(),
        bytes_sent: sent.bytes,
        bytes_received: Some(sent.bytes),
    }
}

/// Client pod → server pod echo of 1 B, 64 KiB and 50 MiB (half-closed, checksummed), each listed by keel as an
/// outbound connection from the client to the server's address with the exact byte counts.
pub fn outbound_captured(backend: Backend) {
    with_lab("outbound", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(backend, &[])?;
        keel.enroll(&client)?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        let dst = server.addr(PORT);
        let before = keel.stats()?;
        let mut total = 0;
        for bytes in [1, 64 * KIB, 50 * MIB] {
            let sent = send_ok(&client, dst, bytes, ServeMode::Echo)?;
            expect_captured(&keel, &outbound_echo(&client, dst, &sent)).with_context(|| format!("{bytes}-byte echo"))?;
            total += bytes;
        }
        let after = keel.stats()?;
        expect_delta_at_least(&before, &after, "/connections/outbound/opened", 3)?;
        expect_delta_at_least(&before, &after, "/connections/outbound/bytes_sent", total)?;
        expect_delta_at_least(&before, &after, "/connections/outbound/bytes_received", total)?;
        if backend == Backend::Ebpf {
            expect_delta_at_least(&before, &after, "/ebpf/connect4/captured", 3)?;
        }
        // The admin port serves the same counters.
        let (status, body) = keel.admin_get("/stats")?;
        let admin: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("admin /stats ({status}) is not JSON: {body}"))?;
        if status != 200 || crate::lab::counter(&admin, "/connections/outbound/opened")? < 3 {
            bail!("admin /stats answered {status}: {body}");
        }
        let (status, body) = keel.admin_get("/metrics")?;
        if status != 200 || body.trim().is_empty() {
            bail!("admin /metrics answered {status}: {body:?}");
        }
        Ok(())
    })
}

/// A NON-enrolled client reaches an enrolled server: keel records an inbound entry in the server pod whose
/// original destination is the server's address and whose source is the real client, and no outbound entry.
pub fn inbound_captured(backend: Backend) {
    with_lab("inbound", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(backend, &[])?;
        keel.enroll(&server)?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        let dst = server.addr(PORT);
        let before = keel.stats()?;
        for bytes in [1, MIB] {
            let sent = send_ok(&client, dst, bytes, ServeMode::Echo)?;
            let c = expect_captured(
                &keel,
                &Expect {
                    direction: "inbound",
                    pod: &server,
                    original_destination: dst,
                    source_port: sent.local_port(),
                    bytes_sent: bytes,
                    bytes_received: Some(bytes),
                },
            )?;
            if c.source != sent.local {
                bail!("inbound entry source {} is not the client's address {}", c.source, sent.local);
            }
        }
        let after = keel.stats()?;
        expect_delta_at_least(&before, &after, "/connections/inbound/opened", 2)?;
        expect_delta_at_least(&before, &after, "/connections/inbound/bytes_sent", MIB + 1)?;
        if backend == Backend::Ebpf {
            expect_delta_at_least(&before, &after, "/ebpf/sk_lookup/captured", 2)?;
        }
        expect_not_captured(&keel, "an outbound connection of a non-enrolled client", |c| c.direction == "outbound")
    })
}

/// 2,000 short connections in a row between two enrolled pods (outbound and inbound capture on every one): no
/// failure and no 1 s stall (a SYN retransmit from a TIME_WAIT collision would show as ≥ 1 s).
pub fn short_connections(backend: Backend) {
    with_lab_alone("shortconn", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(backend, &[])?;
        keel.enroll(&client)?;
        keel.enroll(&server)?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        let before = keel.stats()?;
        let count = 2000;
        let r = client.connect_loop(server.addr(PORT), count, 16, Duration::from_secs(240))?;
        let max_ms = r["max_ms"].as_f64().unwrap_or(f64::MAX);
        if r["ok"].as_u64() != Some(count as u64) || r["failed"].as_u64() != Some(0) || max_ms >= 1000.0 {
            bail!("{count} short connections: expected all ok with max < 1000 ms, got {r}");
        }
        eprintln!("short connections ({}): {r}", backend.as_arg());
        let after = keel.stats()?;
        expect_delta_at_least(&before, &after, "/connections/outbound/opened", count as u64)?;
        expect_delta_at_least(&before, &after, "/connections/inbound/opened", count as u64)?;
        Ok(())
    })
}

/// `--exclude-outbound-port 9999 --exclude-outbound-cidr 10.244.0.200/32 --exclude-inbound-port 15021`, and
/// loopback inside a pod: all of that traffic works and none of it is in keel's list, while control
/// connections in the same lab are captured.
pub fn exclusions(backend: Backend) {
    with_lab("exclude", |lab| {
        let client = lab.add_pod("client")?; // enrolled
        let server = lab.add_pod("server")?; // not enrolled
        let far = lab.add_pod_at("far", 200)?; // not enrolled, on the excluded CIDR
        let app = lab.add_pod("app")?; // enrolled, has an excluded inbound port
        let keel = lab.start_keel(
            backend,
            &["--exclude-outbound-port", "9999", "--exclude-outbound-cidr", "10.244.0.200/32", "--exclude-inbound-port", "15021"],
        )?;
        keel.enroll(&client)?;
        keel.enroll(&app)?;
        let _s1 = server.serve(PORT, ServeMode::Echo, &[])?;
        let _s2 = server.serve(9999, ServeMode::Echo, &[])?;
        let _s3 = far.serve(PORT, ServeMode::Echo, &[])?;
        let _s4 = app.serve(15021, ServeMode::Echo, &[])?;
        let _s5 = app.serve(PORT, ServeMode::Echo, &[])?;
        let _s6 = client.serve(7070, ServeMode::Echo, &[])?;
        let loopback: SocketAddr = "127.0.0.1:7070".parse()?;

        // Excluded traffic first, then controls: once a control shows up, anything captured before it has too.
        send_ok(&client, server.addr(9999), 4 * KIB, ServeMode::Echo).context("excluded outbound port")?;
        send_ok(&client, far.addr(PORT), 4 * KIB, ServeMode::Echo).context("excluded outbound CIDR")?;
        send_ok(&server, app.addr(15021), 4 * KIB, ServeMode::Echo).context("excluded inbound port")?;
        send_ok(&client, loopback, 4 * KIB, ServeMode::Echo).context("in-pod loopback")?;

        let out = send_ok(&client, server.addr(PORT), 2 * KIB, ServeMode::Echo)?;
        expect_captured(&keel, &outbound_echo(&client, server.addr(PORT), &out)).context("control outbound")?;
        let inb = send_ok(&server, app.addr(PORT), 2 * KIB, ServeMode::Echo)?;
        expect_captured(
            &keel,
            &Expect {
                direction: "inbound",
                pod: &app,
                original_destination: app.addr(PORT),
                source_port: inb.local_port(),
                bytes_sent: 2 * KIB,
                bytes_received: Some(2 * KIB),
            },
        )
        .context("control inbound")?;

        // Loopback is matched by port alone: whatever address keel would report it with, it must not be there.
        let excluded: [(&str, DstMatch); 4] = [
            ("traffic to the excluded outbound port 9999", Box::new(|d| d == server.addr(9999).to_string())),
            ("traffic to the excluded CIDR 10.244.0.200/32", Box::new(|d| d.starts_with("10.244.0.200:"))),
            ("traffic to the excluded inbound port 15021", Box::new(|d| d.ends_with(":15021"))),
            ("loopback traffic inside a pod", Box::new(|d| d.ends_with(":7070"))),
        ];
        for (what, matches) in &excluded {
            expect_not_captured(&keel, what, |c| matches(&c.original_destination))?;
        }
        Ok(())
    })
}

/// Unenrolling a pod stops capture at once: the very next connection is not in keel's list and still works.
pub fn unenroll_stops_capture(backend: Backend) {
    with_lab("unenroll", |lab| {
        let client = lab.add_pod("client")?;
        let server = lab.add_pod("server")?;
        let keel = lab.start_keel(backend, &[])?;
        keel.enroll(&client)?;
        let _srv = server.serve(PORT, ServeMode::Echo, &[])?;
        let dst = server.addr(PORT);
        let first = send_ok(&client, dst, 8 * KIB, ServeMode::Echo)?;
        expect_captured(&keel, &outbound_echo(&client, dst, &first)).context("while enrolled")?;

        keel.unenroll(&client)?;
        let before = keel.stats()?;
        let second = send_ok(&client, dst, 8 * KIB, ServeMode::Echo).context("right after unenroll")?;
        let port = second.local_port();
        expect_not_captured(&keel, "a connection made after unenroll", |c| c.pod == client.qualified() && c.source_port() == port)?;
        expect_unchanged(&before, &keel.stats()?, "/connections/outbound/opened")?;
        let pods = keel.pods()?;
        if pods.as_array().is_some_and(|p| p.iter().any(|p| p["name"] == client.name.as_str())) {
            bail!("\"pods\" still lists {} after unenroll: {pods}", client.name);
        }
        Ok(())
    })
}

/// Two non-enrolled pods talking (both ways) while another pod is enrolled: no entry, no counter moves, and no
/// rule in their namespaces.
pub fn non_enrolled_untouched(backend: Backend) {
    with_lab("untouched", |lab| {
        let a = lab.add_pod("a")?;
        let b = lab.add_pod("b")?;
        let enrolled = lab.add_pod("enrolled")?;
        let keel = lab.start_keel(backend, &[])?;
        keel.enroll(&enrolled)?;
        let _sa = a.serve(PORT, ServeMode::Echo, &[])?;
        let _sb = b.serve(PORT, ServeMode::Echo, &[])?;
        let before = keel.stats()?;
        send_ok(&a, b.addr(PORT), 64 * KIB, ServeMode::Echo)?;
        send_ok(&b, a.addr(PORT), 64 * KIB, ServeMode::Echo)?;
        let ips = [a.ip.to_string(), b.ip.to_string()];
        let touches = |c: &crate::lab::Connection| {
            ips.iter().any(|ip| c.source.starts_with(&format!("{ip}:")) || c.original_destination.starts_with(&format!("{ip}:")))
        };
        expect_not_captured(&keel, "traffic between two non-enrolled pods", touches)?;
        let after = keel.stats()?;
        for counter in ["/connections/outbound/opened", "/connections/inbound/opened"] {
            expect_unchanged(&before, &after, counter)?;
        }
        match backend {
            Backend::Ebpf => {
                for counter in ["/ebpf/connect4/captured", "/ebpf/sk_lookup/captured", "/ebpf/sk_msg/redirected"] {
                    expect_unchanged(&before, &after, counter)?;
                }
            }
            // No eBPF program runs under iptables capture, so keel has no eBPF counters to compare.
            Backend::Iptables if !after["ebpf"].is_null() => bail!("keel under iptables capture reports eBPF counters: {after}"),
            Backend::Iptables => {}
        }
        for pod in [&a, &b] {
            expect_no_keel_rules(lab, pod)?;
        }
        Ok(())
    })
}

/// Fails if the pod's iptables rule set mentions keel or redirects anything.
pub fn expect_no_keel_rules(lab: &Lab, pod: &Pod) -> Result<()> {
    let rules = lab.iptables_save(pod)?;
    let lower = rules.to_lowercase();
    if lower.contains("keel") || rules.contains("REDIRECT") || rules.contains("TPROXY") {
        bail!("iptables in pod {} holds keel rules:\n{rules}", pod.name);
    }
    Ok(())
}

/// Helper for other scenarios: an echo of `bytes` from `from` that keel must list as outbound.
pub fn captured_echo(keel: &Keel, from: &Pod, dst: SocketAddr, bytes: u64) -> Result<Sent> {
    let sent = send_ok(from, dst, bytes, ServeMode::Echo)?;
    expect_captured(keel, &outbound_echo(from, dst, &sent))?;
    Ok(sent)
}
