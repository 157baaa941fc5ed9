//! How connector failures are classified: once, where they happen (docs/skills.md,
//! "Classifying errors").
//!
//! Three kinds, as the engine's [`ErrorClass`](stepwise_engine::ErrorClass):
//! - retryable, no effect: the request was never sent (connection refused, DNS), or was refused
//!   before it was processed (429, 408, 409, 503 with `Retry-After`), or it only read;
//! - unknown, may have taken effect: a request that changes something was sent and then timed
//!   out, lost its connection while the answer was read, or got a 5xx;
//! - permanent, no effect: other 4xx (validation, declined card), an unreadable answer.

use serde_json::Value;
use std::time::Duration;
use stepwise_engine::StepError;

/// Which external system a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Payments,
    Crm,
    Sms,
    /// The legacy SOAP housekeeping system.
    Housekeeping,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Payments => "payments",
            Service::Crm => "crm",
            Service::Sms => "sms",
            Service::Housekeeping => "housekeeping",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("could not build the HTTP client: {0}")]
    Setup(String),
    /// No answer: connection refused or reset, or the request timed out.
    #[error("{service} did not answer: {message}")]
    Transport {
        service: Service,
        timed_out: bool,
        /// Whether the request may have reached the service (false: the connection was never
        /// made, so nothing was sent).
        sent: bool,
        /// Whether the request changes something (anything but a GET).
        write: bool,
        message: String,
    },
    /// The service answered with an error.
    #[error("{service} answered HTTP {status} {code}: {message}")]
    Api {
        service: Service,
        status: u16,
        code: String,
        message: String,
        body: Value,
        /// Whether the request changes something (anything but a GET).
        write: bool,
        /// The answer's `Retry-After` (a 503 with it was refused unprocessed; a 429 or such a
        /// 503 is retried then, not after the backoff).
        retry_after: Option<Duration>,
    },
    /// The service answered a SOAP Fault, classified by the connector from the fault's own code
    /// (the HTTP status says little: the legacy system sends "try again" with 200).
    #[error("{service} answered SOAP fault {code} (HTTP {status}): {message}")]
    Fault {
        service: Service,
        status: u16,
        /// The system's code, e.g. `HK-102`.
        code: String,
        message: String,
        /// What the failed request may have done.
        outcome: Outcome,
        /// The step error code it becomes, e.g. `room_not_found`.
        step_code: &'static str,
        /// When the system said to come back.
        retry_after: Option<Duration>,
    },
    /// Our own shared limit for the service (connectors/limits) has no slot soon: nothing was
    /// sent; come back after `retry_after`.
    #[error("{service}: the shared rate limit has no slot within the wait allowed (next in {retry_after:?})")]
    Limited {
        service: Service,
        retry_after: Duration,
    },
    /// The shared limits could not be read from PostgreSQL: nothing was sent.
    #[error("the shared rate limits are unavailable: {0}")]
    Limiter(String),
    /// The service answered something we cannot read.
    #[error("{service} sent an unexpected response: {message}")]
    Decode { service: Service, message: String },
}

/// What a failed request may have done: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No effect; trying again can help.
    Retryable,
    /// It may have taken effect; trying again (with the same idempotency key) can help.
    Unknown,
    /// No effect; trying again cannot help.
    Permanent,
}

impl ConnectorError {
    /// A request that got no (complete) answer. `write`: the request changes something.
    /// A connection that could not be made sent nothing (`sent` false); anything later
    /// (a timeout, a reset, a body cut off) may have reached the service.
    pub fn transport(service: Service, write: bool, error: reqwest::Error) -> Self {
        Self::Transport {
            service,
            timed_out: error.is_timeout(),
            sent: !error.is_connect(),
            write,
            message: error.to_string(),
        }
    }

    /// What the failed request may have done.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Transport { sent, write, .. } => {
                if *sent && *write {
                    Outcome::Unknown
                } else {
                    Outcome::Retryable
                }
            }
            Self::Api {
                status,
                write,
                retry_after,
                ..
            } => match status {
                408 | 409 | 429 => Outcome::Retryable,
                503 if retry_after.is_some() => Outcome::Retryable,
                500.. if *write => Outcome::Unknown,
                500.. => Outcome::Retryable,
                _ => Outcome::Permanent,
            },
            Self::Fault { outcome, .. } => *outcome,
            Self::Limited { .. } | Self::Limiter(_) => Outcome::Retryable,
            Self::Setup(_) | Self::Decode { .. } => Outcome::Permanent,
        }
    }

    /// When the service said to come back (`Retry-After`, or the fault's own), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } | Self::Fault { retry_after, .. } => *retry_after,
            Self::Limited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether trying again can help (retryable and unknown outcomes).
    pub fn is_retryable(&self) -> bool {
        self.outcome() != Outcome::Permanent
    }

    /// Whether the request may have taken effect although it failed.
    pub fn is_unknown(&self) -> bool {
        self.outcome() == Outcome::Unknown
    }

    /// The API's error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } | Self::Fault { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Fault { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<ConnectorError> for StepError {
    fn from(error: ConnectorError) -> Self {
        let message = error.to_string();
        let unknown = error.is_unknown();
        let retry_after = error.retry_after();
        let classified = |code: String, message: String| {
            let step = if unknown {
                StepError::unknown(code, message)
            } else {
                StepError::retryable(code, message)
            };
            match retry_after {
                Some(after) => step.with_retry_after(after),
                None => step,
            }
        };
        match &error {
            ConnectorError::Transport {
                service, timed_out, ..
            } => classified(
                if *timed_out {
                    "timeout".to_string()
                } else {
                    "connection_error".to_string()
                },
                message,
            )
            // Shown when the step gives up, after Stepwise's own retries.
            .with_action(format!(
                "{service} could not be reached, even after Stepwise's retries: try again later \
                 with a new idempotency_key"
            )),
            ConnectorError::Api {
                service,
                status,
                code,
                ..
            } if error.is_retryable() => {
                let code = if *status == 429 {
                    "rate_limited".to_string()
                } else {
                    format!("{service}_unavailable")
                };
                classified(code, message)
            }
            ConnectorError::Api { code, .. } => StepError::permanent(code.clone(), message),
            ConnectorError::Fault {
                service,
                code,
                step_code,
                ..
            } if error.is_retryable() => classified(
                if code == "HK-429" {
                    "rate_limited".to_string()
                } else if step_code.is_empty() {
                    format!("{service}_unavailable")
                } else {
                    (*step_code).to_string()
                },
                message,
            ),
            ConnectorError::Fault { step_code, .. } => StepError::permanent(*step_code, message),
            ConnectorError::Limited { .. } => classified("rate_limited".to_string(), message),
            ConnectorError::Limiter(_) => classified("database_unavailable".to_string(), message),
            ConnectorError::Setup(_) => StepError::permanent("connector_setup", message),
            ConnectorError::Decode { service, .. } => {
                StepError::permanent(format!("{service}_bad_response"), message)
            }
        }
    }
}

/// A response read in full: its status, its JSON body (a non-JSON body becomes a JSON string,
/// so an error page from a proxy still yields a classified [`ConnectorError::Api`]), and
/// whether it carried `Retry-After`.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<Duration>,
}

/// Reads a response in full. A body that breaks off is a transport failure after sending.
pub(crate) async fn read_body(
    service: Service,
    write: bool,
    response: reqwest::Response,
) -> Result<Answer, ConnectorError> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|value| retry_after_value(value.to_str().unwrap_or_default()));
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ConnectorError::Transport {
            service,
            timed_out: e.is_timeout(),
            sent: true,
            write,
            message: format!("the answer broke off: {e}"),
        })?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}

/// A `Retry-After` value: delay-seconds; an HTTP date (or anything unreadable) counts as one
/// second, so the answer still says "refused, come back".
pub(crate) fn retry_after_value(value: &str) -> Duration {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ConnectorError {
        api_of(status, code, true, false)
    }

    fn api_of(status: u16, code: &str, write: bool, retry_after: bool) -> ConnectorError {
        ConnectorError::Api {
            service: Service::Payments,
            status,
            code: code.into(),
            message: "m".into(),
            body: Value::Null,
            write,
            retry_after: retry_after.then_some(Duration::from_secs(2)),
        }
    }

    fn transport(sent: bool, write: bool) -> ConnectorError {
        ConnectorError::Transport {
            service: Service::Crm,
            timed_out: sent,
            sent,
            write,
            message: "deadline".into(),
        }
    }

    #[test]
    fn refusals_before_processing_are_retryable_without_effect() {
        for status in [408, 409, 429] {
            assert_eq!(api(status, "x").outcome(), Outcome::Retryable, "{status}");
            let step = StepError::from(api(status, "x"));
            assert!(step.is_retryable() && !step.is_unknown());
        }
        assert_eq!(StepError::from(api(429, "x")).code, "rate_limited");
        assert_eq!(
            StepError::from(api_of(429, "x", true, true)).retry_after(),
            Some(Duration::from_secs(2)),
            "Retry-After becomes the step error's retry hint"
        );
        assert_eq!(retry_after_value("17"), Duration::from_secs(17));
        assert_eq!(
            retry_after_value("Wed, 21 Oct 2015 07:28:00 GMT"),
            Duration::from_secs(1)
        );
        assert_eq!(
            api_of(503, "x", true, true).outcome(),
            Outcome::Retryable,
            "503 with Retry-After was refused unprocessed"
        );
        let refused = StepError::from(transport(false, true));
        assert!(refused.is_retryable() && !refused.is_unknown());
        assert_eq!(refused.code, "connection_error");
    }

    #[test]
    fn a_write_that_got_a_5xx_or_no_answer_after_sending_has_an_unknown_outcome() {
        for status in [500, 502, 503, 504] {
            assert_eq!(api(status, "x").outcome(), Outcome::Unknown, "{status}");
            let step = StepError::from(api(status, "x"));
            assert!(step.is_unknown() && step.is_retryable());
            assert_eq!(step.to_json()["outcome"], "unknown");
        }
        let timeout = StepError::from(transport(true, true));
        assert!(timeout.is_unknown());
        assert_eq!(timeout.code, "timeout");
    }

    #[test]
    fn a_read_never_has_an_effect() {
        assert_eq!(api_of(500, "x", false, false).outcome(), Outcome::Retryable);
        assert_eq!(transport(true, false).outcome(), Outcome::Retryable);
    }

    #[test]
    fn business_errors_are_permanent_and_keep_the_api_code() {
        let step = StepError::from(api(402, "card_declined"));
        assert!(!step.is_retryable());
        assert_eq!(step.code, "card_declined");
        assert!(!StepError::from(api(400, "INVALID_FIELD")).is_retryable());
        assert!(!StepError::from(api(404, "NOT_FOUND")).is_retryable());
    }
}
