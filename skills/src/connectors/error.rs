//! How connector failures are classified: once, where they happen.

use serde_json::Value;
use stepwise_engine::StepError;

/// Which external system a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Payments,
    Crm,
    Sms,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Payments => "payments",
            Service::Crm => "crm",
            Service::Sms => "sms",
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
    },
    /// The service answered something we cannot read.
    #[error("{service} sent an unexpected response: {message}")]
    Decode { service: Service, message: String },
}

impl ConnectorError {
    pub fn transport(service: Service, error: reqwest::Error) -> Self {
        Self::Transport {
            service,
            timed_out: error.is_timeout(),
            message: error.to_string(),
        }
    }

    /// Whether trying again can help: timeouts, connection errors, 5xx, 408, 409, 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api { status, .. } => *status >= 500 || matches!(status, 408 | 409 | 429),
            Self::Setup(_) | Self::Decode { .. } => false,
        }
    }

    /// The API's error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<ConnectorError> for StepError {
    fn from(error: ConnectorError) -> Self {
        let message = error.to_string();
        match &error {
            ConnectorError::Transport {
                service, timed_out, ..
            } => StepError::retryable(
                if *timed_out {
                    "timeout"
                } else {
                    "connection_error"
                },
                message,
            )
            .with_action(format!(
                "{service} is unreachable; Stepwise retries automatically"
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
                StepError::retryable(code, message)
            }
            ConnectorError::Api { code, .. } => StepError::permanent(code.clone(), message),
            ConnectorError::Setup(_) => StepError::permanent("connector_setup", message),
            ConnectorError::Decode { service, .. } => {
                StepError::permanent(format!("{service}_bad_response"), message)
            }
        }
    }
}

/// Reads a response as its status and JSON body (a non-JSON body becomes a JSON string, so an
/// error page from a proxy still yields a classified [`ConnectorError::Api`]).
pub(crate) async fn read_body(
    service: Service,
    response: reqwest::Response,
) -> Result<(u16, Value), ConnectorError> {
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ConnectorError::transport(service, e))?;
    if bytes.is_empty() {
        return Ok((status, Value::Null));
    }
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ConnectorError {
        ConnectorError::Api {
            service: Service::Payments,
            status,
            code: code.into(),
            message: "m".into(),
            body: Value::Null,
        }
    }

    #[test]
    fn server_errors_rate_limits_and_timeouts_are_retryable() {
        for status in [500, 502, 503, 504, 408, 409, 429] {
            assert!(api(status, "x").is_retryable(), "{status}");
            assert!(StepError::from(api(status, "x")).is_retryable());
        }
        let timeout = ConnectorError::Transport {
            service: Service::Crm,
            timed_out: true,
            message: "deadline".into(),
        };
        let step = StepError::from(timeout);
        assert!(step.is_retryable());
        assert_eq!(step.code, "timeout");
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
