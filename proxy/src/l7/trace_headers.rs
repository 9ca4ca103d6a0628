//! Request identity and trace context, as Envoy in Istio sets them: an `x-request-id` (kept when the client sent
//! one), and the W3C `traceparent` and B3 headers with keel as a new span of the caller's trace (or the first
//! span of a new trace), so an app that forwards the headers gets its calls joined into one trace.
use http::{HeaderMap, HeaderValue};
use rand::Rng as _;

const REQUEST_ID: &str = "x-request-id";
const TRACEPARENT: &str = "traceparent";
const B3_TRACE: &str = "x-b3-traceid";
const B3_SPAN: &str = "x-b3-spanid";
const B3_PARENT: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

fn random_hex<const N: usize>() -> String {
    hex(&rand::rng().random::<[u8; N]>())
}

fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The incoming `traceparent`'s trace id and flags, when it is well formed.
fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = value.split('-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else { return None };
    let hexy = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexy(version, 2) && *version != "ff" && hexy(trace, 32) && hexy(parent, 16) && hexy(flags, 2) && *trace != "0".repeat(32))
        .then(|| (trace.to_ascii_lowercase(), flags.to_string()))
}

/// Sets the request id and trace headers; returns the request id.
pub fn prepare(headers: &mut HeaderMap) -> String {
    let request_id = match get(headers, REQUEST_ID) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => {
            let id = uuid_v4();
            set(headers, REQUEST_ID, &id);
            id
        }
    };
    let span = random_hex::<8>();
    let b3_trace = get(headers, B3_TRACE).map(str::to_owned);
    let (trace, flags) = match get(headers, TRACEPARENT).and_then(parse_traceparent) {
        Some(found) => found,
        None => match &b3_trace {
            // A 64-bit B3 trace id widens to 128 bits with leading zeros.
            Some(t) if (t.len() == 16 || t.len() == 32) && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (format!("{t:0>32}").to_ascii_lowercase(), if get(headers, B3_SAMPLED) == Some("0") { "00" } else { "01" }.to_owned())
            }
            _ => (random_hex::<16>(), "01".to_owned()),
        },
    };
    set(headers, TRACEPARENT, &format!("00-{trace}-{span}-{flags}"));
    match b3_trace {
        Some(_) => {
            if let Some(parent) = get(headers, B3_SPAN).map(str::to_owned) {
                set(headers, B3_PARENT, &parent);
            }
            set(headers, B3_SPAN, &span);
        }
        None => {
            set(headers, B3_TRACE, &trace);
            set(headers, B3_SPAN, &span);
            set(headers, B3_SAMPLED, if flags == "00" { "0" } else { "1" });
        }
    }
    request_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_request_gets_an_id_and_a_new_trace() {
        let mut h = HeaderMap::new();
        let id = prepare(&mut h);
        assert_eq!(h[REQUEST_ID], id.as_str());
        assert_eq!(id.len(), 36);
        let (trace, flags) = parse_traceparent(get(&h, TRACEPARENT).unwrap()).unwrap();
        assert_eq!(flags, "01");
        assert_eq!(h[B3_TRACE], trace.as_str());
        assert_eq!(&get(&h, TRACEPARENT).unwrap()[36..52], get(&h, B3_SPAN).unwrap());
    }

    #[test]
    fn an_incoming_trace_is_continued_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        h.insert(TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        h.insert(B3_TRACE, HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"));
        h.insert(B3_SPAN, HeaderValue::from_static("00f067aa0ba902b7"));
        assert_eq!(prepare(&mut h), "abc");
        let tp = get(&h, TRACEPARENT).unwrap();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !tp.contains("00f067aa0ba902b7"), "{tp}");
        assert_eq!(h[B3_PARENT], "00f067aa0ba902b7");
        assert_ne!(h[B3_SPAN], "00f067aa0ba902b7");
    }
}
