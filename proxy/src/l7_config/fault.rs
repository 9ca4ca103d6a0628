//! Fault injection from a route's `envoy.filters.http.fault` config (an HTTPFault in `typed_per_filter_config`,
//! what Istio makes of a VirtualService `fault`): a fixed delay and/or an abort, each for a percentage of
//! requests. Decided per request with one random draw per fault, as Envoy does.
use std::time::Duration;

use keel_proto::{
    fault::{fault_abort::ErrorType, HttpFault},
    fault_common::fault_delay::FaultDelaySecifier,
    types::{fractional_percent::DenominatorType, FractionalPercent},
    HTTP_FAULT_TYPE_URL,
};
use prost::Message as _;
use rand::Rng as _;

use super::limits;

/// The filter name Istio uses in `typed_per_filter_config`.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    delay: Option<(Duration, f64)>,
    abort: Option<(u16, f64)>,
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// Wait this long first (response flag DI).
    pub delay: Option<Duration>,
    /// Answer with this status instead of sending upstream (response flag FI).
    pub abort: Option<u16>,
}

/// A FractionalPercent as a fraction in 0..=1.
pub fn fraction(p: Option<&FractionalPercent>) -> f64 {
    let Some(p) = p else { return 1.0 }; // Envoy: no percentage means every request
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        _ => 100.0,
    };
    (f64::from(p.numerator) / denominator).min(1.0)
}

impl Faults {
    /// `delay 5s for 10% of requests, abort 503 for 50%`.
    pub fn describe(&self) -> String {
        let delay = self.delay.map(|(d, fraction)| format!("delay {d:?} for {}% of requests", fraction * 100.0));
        let abort = self.abort.map(|(status, fraction)| format!("abort {status} for {}% of requests", fraction * 100.0));
        [delay, abort].into_iter().flatten().collect::<Vec<_>>().join(", ")
    }

    /// Decodes a route's fault filter config; `field` names it in errors.
    pub fn decode(field: &str, any: &prost_types::Any) -> Result<Faults, String> {
        if any.type_url != HTTP_FAULT_TYPE_URL {
            return Err(format!("{field}: {} is not {HTTP_FAULT_TYPE_URL}", any.type_url));
        }
        let fault = HttpFault::decode(any.value.as_slice()).map_err(|e| format!("{field}: not an HTTPFault: {e}"))?;
        let delay = match &fault.delay {
            None => None,
            Some(d) => match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(fixed)) => {
                    Some((limits::duration(&format!("{field}.delay.fixed_delay"), fixed)?, fraction(d.percentage.as_ref())))
                }
                None => return Err(format!("{field}.delay: only fixed_delay is supported")),
            },
        };
        let abort = match &fault.abort {
            None => None,
            Some(a) => match a.error_type {
                Some(ErrorType::HttpStatus(status)) if (200..600).contains(&status) => Some((status as u16, fraction(a.percentage.as_ref()))),
                Some(ErrorType::HttpStatus(status)) => return Err(format!("{field}.abort.http_status: {status} is not 200-599")),
                Some(ErrorType::GrpcStatus(_)) | None => return Err(format!("{field}.abort: only http_status is supported")),
            },
        };
        Ok(Faults { delay, abort })
    }

    /// Rolls the dice for one request.
    pub fn decide(&self) -> Injected {
        let mut rng = rand::rng();
        Injected {
            delay: self.delay.filter(|(_, p)| rng.random::<f64>() < *p).map(|(d, _)| d),
            abort: self.abort.filter(|(_, p)| rng.random::<f64>() < *p).map(|(s, _)| s),
        }
    }
}

#[cfg(test)]
mod tests {
    use keel_proto::{fault::FaultAbort, fault_common::FaultDelay};

    use super::*;

    fn any(fault: HttpFault) -> prost_types::Any {
        prost_types::Any { type_url: HTTP_FAULT_TYPE_URL.into(), value: fault.encode_to_vec() }
    }

    fn percent(numerator: u32) -> Option<FractionalPercent> {
        Some(FractionalPercent { numerator, denominator: DenominatorType::Hundred as i32 })
    }

    #[test]
    fn delay_for_all_and_abort_for_half() {
        let faults = Faults::decode(
            "f",
            &any(HttpFault {
                delay: Some(FaultDelay {
                    percentage: percent(100),
                    fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(prost_types::Duration { seconds: 2, nanos: 0 })),
                }),
                abort: Some(FaultAbort { percentage: percent(50), error_type: Some(ErrorType::HttpStatus(503)) }),
            }),
        )
        .unwrap();
        let decisions: Vec<Injected> = (0..4000).map(|_| faults.decide()).collect();
        assert!(decisions.iter().all(|d| d.delay == Some(Duration::from_secs(2))));
        let aborted = decisions.iter().filter(|d| d.abort == Some(503)).count();
        assert!((1800..=2200).contains(&aborted), "50 % abort gave {aborted} of 4000");
    }

    #[test]
    fn bad_fault_configs_name_the_field() {
        let err = Faults::decode("routes[0].fault", &prost_types::Any { type_url: "x".into(), value: vec![] }).unwrap_err();
        assert!(err.starts_with("routes[0].fault: x is not"), "{err}");
        let grpc = any(HttpFault { abort: Some(FaultAbort { percentage: None, error_type: Some(ErrorType::GrpcStatus(14)) }), ..Default::default() });
        assert_eq!(Faults::decode("f", &grpc).unwrap_err(), "f.abort: only http_status is supported");
        let bad_status =
            any(HttpFault { abort: Some(FaultAbort { percentage: None, error_type: Some(ErrorType::HttpStatus(99)) }), ..Default::default() });
        assert!(Faults::decode("f", &bad_status).unwrap_err().contains("99 is not 200-599"));
        let delay = |seconds| {
            let fixed = FaultDelaySecifier::FixedDelay(prost_types::Duration { seconds, nanos: 0 });
            any(HttpFault { delay: Some(FaultDelay { percentage: None, fault_delay_secifier: Some(fixed) }), ..Default::default() })
        };
        assert!(Faults::decode("f", &delay(-3)).unwrap_err().starts_with("f.delay.fixed_delay: -3s"), "a negative delay was read as none");
        assert!(Faults::decode("f", &delay(i64::MAX)).unwrap_err().starts_with("f.delay.fixed_delay: "));
        let longest = Faults::decode("f", &delay(315_576_000_000)).unwrap();
        assert_eq!(longest.decide().delay, Some(limits::MAX_DURATION), "clamped: Instant::now() + delay stays in range");
    }
}
