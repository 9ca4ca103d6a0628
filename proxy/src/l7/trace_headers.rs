//! Request identity and trace context, as Envoy in Istio sets them: an `x-request-id` (kept when the client sent
//! one), and the W3C `traceparent` and B3 headers with keel as a new span of the caller's trace (or the first
//! span of a new trace), so an app that forwards the headers gets its calls joined into one trace.
//!
//! This runs for every request, so ids are written into stack buffers from one draw of random bytes and the
//! header names are constants (no parsing, no `format!`, one allocation per header value set). With span export
//! on, keel's spans are the ones the headers name: the next hop's parent is keel's CLIENT span.
use http::{HeaderMap, HeaderName, HeaderValue};
use rand::Rng as _;

use crate::telemetry::traces::{RemoteParent, RequestSpans, Traces};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lowercase hex into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// A random (version 4) UUID in its 36-character text form.
fn uuid_v4(mut b: [u8; 16]) -> [u8; 36] {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    for (from, to) in [(0..4, 0..8), (4..6, 9..13), (6..8, 14..18), (8..10, 19..23), (10..16, 24..36)] {
        hex_into(&b[from], &mut out[to]);
    }
    out
}

fn get<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(name, v);
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The incoming `traceparent`'s trace id (lowercased) and flags, when it is well formed.
fn parse_traceparent(value: &str) -> Option<([u8; 32], [u8; 2])> {
    let mut parts = value.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let well_formed = parts.next().is_none()
        && is_hex(version, 2)
        && version != "ff"
        && is_hex(trace, 32)
        && is_hex(parent, 16)
        && is_hex(flags, 2)
        && trace.bytes().any(|b| b != b'0');
    well_formed.then(|| {
        let mut id = [0; 32];
        id.copy_from_slice(trace.as_bytes());
        id.make_ascii_lowercase();
        (id, [flags.as_bytes()[0], flags.as_bytes()[1]])
    })
}

/// A B3 trace id (64 or 128 bits) as a 128-bit one: a 64-bit id widens with leading zeros.
fn b3_trace_id(value: &str) -> Option<[u8; 32]> {
    if !(is_hex(value, 16) || is_hex(value, 32)) {
        return None;
    }
    let mut id = [b'0'; 32];
    id[32 - value.len()..].copy_from_slice(value.as_bytes());
    id.make_ascii_lowercase();
    Some(id)
}

/// `hex` (lowercase or not, `N` × 2 digits) as bytes.
fn from_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        *out.get_mut(i)? = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    (hex.len() == N * 2).then_some(out)
}

/// The caller's span from its headers: `traceparent` first, else B3.
fn remote_parent(headers: &HeaderMap) -> Option<RemoteParent> {
    if let Some(value) = get(headers, &TRACEPARENT) {
        if let Some((trace, flags)) = parse_traceparent(value) {
            let parent = value.split('-').nth(2)?;
            return Some(RemoteParent {
                trace_id: from_hex(&trace)?,
                span_id: from_hex(parent.as_bytes())?,
                sampled: from_hex::<1>(&flags)?[0] & 1 == 1,
            });
        }
    }
    let trace = get(headers, &B3_TRACE).and_then(b3_trace_id)?;
    let span = get(headers, &B3_SPAN).filter(|s| is_hex(s, 16))?;
    Some(RemoteParent { trace_id: from_hex(&trace)?, span_id: from_hex(span.as_bytes())?, sampled: get(headers, &B3_SAMPLED) != Some("0") })
}

/// Sets the request id and trace headers; returns the request id and, with span export on, the request's spans.
pub fn prepare(headers: &mut HeaderMap, traces: Option<&Traces>) -> (String, Option<RequestSpans>) {
    let Some(traces) = traces else { return (prepare_without_spans(headers), None) };
    let request_id = request_id(headers, rand::rng().random());
    let spans = traces.start_request(remote_parent(headers));
    let (trace, client, server, sampled) = spans.outgoing();
    let (mut trace_hex, mut client_hex, mut server_hex) = ([0u8; 32], [0u8; 16], [0u8; 16]);
    hex_into(&trace, &mut trace_hex);
    hex_into(&client, &mut client_hex);
    hex_into(&server, &mut server_hex);
    let flags = if sampled { *b"01" } else { *b"00" };
    set_trace_headers(headers, &trace_hex, &client_hex, Some(&server_hex), &flags);
    (request_id, Some(spans))
}

/// The request's `x-request-id`: the client's, else a new one (set on the request).
fn request_id(headers: &mut HeaderMap, random: [u8; 16]) -> String {
    match get(headers, &REQUEST_ID) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => {
            let id = uuid_v4(random);
            set(headers, REQUEST_ID, &id);
            String::from_utf8_lossy(&id).into_owned()
        }
    }
}

/// `traceparent` naming `span`, and B3 with `parent` as the parent span (by default the caller's span).
fn set_trace_headers(headers: &mut HeaderMap, trace: &[u8; 32], span: &[u8; 16], parent: Option<&[u8; 16]>, flags: &[u8; 2]) {
    // `00-<trace>-<span>-<flags>`
    let mut traceparent = [b'-'; 55];
    traceparent[..2].copy_from_slice(b"00");
    traceparent[3..35].copy_from_slice(trace);
    traceparent[36..52].copy_from_slice(span);
    traceparent[53..].copy_from_slice(flags);
    set(headers, TRACEPARENT, &traceparent);
    match parent {
        Some(parent) => set(headers, B3_PARENT, parent),
        None => {
            if let Some(caller) = headers.get(&B3_SPAN).cloned().filter(|_| headers.contains_key(&B3_TRACE)) {
                headers.insert(B3_PARENT, caller);
            }
        }
    }
    set(headers, B3_TRACE, trace);
    set(headers, B3_SPAN, span);
    set(headers, B3_SAMPLED, if flags == b"00" { b"0" } else { b"1" });
}

/// Without span export: keel is one new span of the caller's trace (or the first of a new one), sampled as the
/// caller said (new traces are marked sampled: whoever exports decides).
fn prepare_without_spans(headers: &mut HeaderMap) -> String {
    // Everything random this request may need, drawn at once: a request id, a span id, a trace id.
    let random: [u8; 40] = rand::rng().random();
    let request_id = request_id(headers, random[..16].try_into().expect("16 bytes"));
    let mut span = [0u8; 16];
    hex_into(&random[16..24], &mut span);
    let b3_trace = get(headers, &B3_TRACE).and_then(b3_trace_id);
    let (trace, flags) = match get(headers, &TRACEPARENT).and_then(parse_traceparent) {
        Some(found) => found,
        None => match b3_trace {
            Some(id) => (id, if get(headers, &B3_SAMPLED) == Some("0") { *b"00" } else { *b"01" }),
            None => {
                let mut id = [0u8; 32];
                hex_into(&random[24..40], &mut id);
                (id, *b"01")
            }
        },
    };
    set_trace_headers(headers, &trace, &span, None, &flags);
    request_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_request_gets_an_id_and_a_new_trace() {
        let mut h = HeaderMap::new();
        let (id, _) = prepare(&mut h, None);
        assert_eq!(h[REQUEST_ID], id.as_str());
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4', "{id}");
        let (trace, flags) = parse_traceparent(get(&h, &TRACEPARENT).unwrap()).unwrap();
        assert_eq!(&flags, b"01");
        assert_eq!(h[B3_TRACE], trace.as_slice());
        assert_eq!(h[B3_SAMPLED], "1");
        assert_eq!(&get(&h, &TRACEPARENT).unwrap()[36..52], get(&h, &B3_SPAN).unwrap());
    }

    #[test]
    fn an_incoming_trace_is_continued_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        h.insert(TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        h.insert(B3_TRACE, HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"));
        h.insert(B3_SPAN, HeaderValue::from_static("00f067aa0ba902b7"));
        assert_eq!(prepare(&mut h, None).0, "abc");
        let tp = get(&h, &TRACEPARENT).unwrap();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !tp.contains("00f067aa0ba902b7"), "{tp}");
        assert_eq!(h[B3_PARENT], "00f067aa0ba902b7");
        assert_ne!(h[B3_SPAN], "00f067aa0ba902b7");
    }

    #[test]
    fn a_64_bit_b3_trace_widens_and_keeps_its_sampling() {
        let mut h = HeaderMap::new();
        h.insert(B3_TRACE, HeaderValue::from_static("A3CE929D0E0E4736"));
        h.insert(B3_SAMPLED, HeaderValue::from_static("0"));
        prepare(&mut h, None);
        let tp = get(&h, &TRACEPARENT).unwrap();
        assert!(tp.starts_with("00-0000000000000000a3ce929d0e0e4736-") && tp.ends_with("-00"), "{tp}");
        assert!(!h.contains_key(&B3_PARENT), "no caller span id was sent");
    }

    #[test]
    fn the_callers_span_is_read_from_traceparent_first_then_b3() {
        let mut h = HeaderMap::new();
        h.insert(B3_TRACE, HeaderValue::from_static("a3ce929d0e0e4736"));
        h.insert(B3_SPAN, HeaderValue::from_static("1122334455667788"));
        h.insert(B3_SAMPLED, HeaderValue::from_static("0"));
        let b3 = remote_parent(&h).unwrap();
        assert_eq!(b3.trace_id, [0, 0, 0, 0, 0, 0, 0, 0, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36]);
        assert_eq!((b3.span_id, b3.sampled), ([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88], false));
        h.insert(TRACEPARENT, HeaderValue::from_static("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
        let w3c = remote_parent(&h).unwrap();
        assert_eq!((w3c.trace_id[0], w3c.span_id[7], w3c.sampled), (0x4b, 0xb7, true));
        assert_eq!(remote_parent(&HeaderMap::new()), None, "no caller: a new trace");
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf9-00f0-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
