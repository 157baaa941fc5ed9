//! Where the external systems are and how to authenticate to them.

use std::time::Duration;

/// One service: its base URL (without a trailing slash) and credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub base_url: String,
    /// Stripe: the secret key; Salesforce: the OAuth access token; Twilio: the auth token.
    pub credential: String,
}

/// Configuration of every connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// e.g. `https://api.stripe.com` (paths `/v1/...` are appended).
    pub payments: ServiceConfig,
    /// e.g. `https://MyDomain.my.salesforce.com` (paths `/services/data/v60.0/...`).
    pub crm: ServiceConfig,
    /// e.g. `https://api.twilio.com` (paths `/2010-04-01/...`).
    pub sms: ServiceConfig,
    /// The legacy housekeeping system's root (the service is `/housekeeping` below it); the
    /// credential is the WS-Security password of `housekeeping_user`.
    pub housekeeping: ServiceConfig,
    pub housekeeping_user: String,
    pub twilio_account_sid: String,
    /// The sender number of text messages (E.164).
    pub sms_from: String,
    /// Per-request timeout; a timed-out read is retryable, a timed-out write has an unknown
    /// outcome (it may have taken effect).
    pub timeout: Duration,
}

/// Credentials the sandbox accepts (it checks their shape, not their value).
pub const SANDBOX_STRIPE_KEY: &str = "sk_test_stepwise_sandbox";
pub const SANDBOX_SALESFORCE_TOKEN: &str = "00Dsandbox!stepwise";
pub const SANDBOX_TWILIO_SID: &str = "ACstepwisesandbox0000000000000000";
pub const SANDBOX_TWILIO_TOKEN: &str = "stepwise-sandbox-token";
pub const SANDBOX_SMS_FROM: &str = "+15550100000";
pub const SANDBOX_HOUSEKEEPING_USER: &str = "STEPWISE";
pub const SANDBOX_HOUSEKEEPING_PASSWORD: &str = "hks-sandbox";

#[derive(Debug, thiserror::Error)]
#[error("connector configuration: {0}")]
pub struct ConfigError(pub String);

impl ConnectorConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Every service served by the sandbox at `base_url`.
    pub fn sandbox(base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        Self {
            payments: ServiceConfig {
                base_url: format!("{base}/stripe"),
                credential: SANDBOX_STRIPE_KEY.into(),
            },
            crm: ServiceConfig {
                base_url: format!("{base}/salesforce"),
                credential: SANDBOX_SALESFORCE_TOKEN.into(),
            },
            sms: ServiceConfig {
                base_url: format!("{base}/twilio"),
                credential: SANDBOX_TWILIO_TOKEN.into(),
            },
            housekeeping: ServiceConfig {
                base_url: format!("{base}/legacy"),
                credential: SANDBOX_HOUSEKEEPING_PASSWORD.into(),
            },
            housekeeping_user: SANDBOX_HOUSEKEEPING_USER.into(),
            twilio_account_sid: SANDBOX_TWILIO_SID.into(),
            sms_from: SANDBOX_SMS_FROM.into(),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Reads the configuration from the environment: `STEPWISE_SANDBOX_URL` for the sandbox,
    /// then per-service overrides for real services (`STEPWISE_STRIPE_URL`,
    /// `STEPWISE_STRIPE_KEY`, `STEPWISE_SALESFORCE_URL`, `STEPWISE_SALESFORCE_TOKEN`,
    /// `STEPWISE_TWILIO_URL`, `STEPWISE_TWILIO_ACCOUNT_SID`, `STEPWISE_TWILIO_AUTH_TOKEN`,
    /// `STEPWISE_TWILIO_FROM`, `STEPWISE_HOUSEKEEPING_URL`, `STEPWISE_HOUSEKEEPING_USER`,
    /// `STEPWISE_HOUSEKEEPING_PASSWORD`, `STEPWISE_CONNECTOR_TIMEOUT_MS`). Returns `None` when neither the
    /// sandbox nor the three service URLs are set: the caller then starts a sandbox.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`ConnectorConfig::from_env`] over any source of variables (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let services = [
            "STEPWISE_STRIPE_URL",
            "STEPWISE_SALESFORCE_URL",
            "STEPWISE_TWILIO_URL",
        ];
        let mut config = match get("STEPWISE_SANDBOX_URL") {
            Some(url) => Self::sandbox(&url),
            None if services.iter().all(|name| get(name).is_some()) => Self::sandbox(""),
            None if services.iter().any(|name| get(name).is_some()) => return Err(ConfigError(
                "set all of STEPWISE_STRIPE_URL, STEPWISE_SALESFORCE_URL and STEPWISE_TWILIO_URL \
                     (or STEPWISE_SANDBOX_URL)"
                    .into(),
            )),
            None => return Ok(None),
        };
        let overrides: [(&str, &mut String); 11] = [
            ("STEPWISE_STRIPE_URL", &mut config.payments.base_url),
            ("STEPWISE_STRIPE_KEY", &mut config.payments.credential),
            ("STEPWISE_SALESFORCE_URL", &mut config.crm.base_url),
            ("STEPWISE_SALESFORCE_TOKEN", &mut config.crm.credential),
            ("STEPWISE_TWILIO_URL", &mut config.sms.base_url),
            ("STEPWISE_TWILIO_AUTH_TOKEN", &mut config.sms.credential),
            (
                "STEPWISE_TWILIO_ACCOUNT_SID",
                &mut config.twilio_account_sid,
            ),
            ("STEPWISE_TWILIO_FROM", &mut config.sms_from),
            (
                "STEPWISE_HOUSEKEEPING_URL",
                &mut config.housekeeping.base_url,
            ),
            ("STEPWISE_HOUSEKEEPING_USER", &mut config.housekeeping_user),
            (
                "STEPWISE_HOUSEKEEPING_PASSWORD",
                &mut config.housekeeping.credential,
            ),
        ];
        for (name, slot) in overrides {
            if let Some(value) = get(name) {
                *slot = value.trim_end_matches('/').to_string();
            }
        }
        if let Some(ms) = get("STEPWISE_CONNECTOR_TIMEOUT_MS") {
            let ms: u64 = ms.parse().map_err(|_| {
                ConfigError(format!(
                    "STEPWISE_CONNECTOR_TIMEOUT_MS=`{ms}` is not a number of milliseconds"
                ))
            })?;
            config.timeout = Duration::from_millis(ms);
        }
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn nothing_set_means_start_a_sandbox() {
        assert_eq!(
            ConnectorConfig::from_lookup(lookup(&[])).ok().flatten(),
            None
        );
    }

    #[test]
    fn sandbox_url_serves_every_service_under_its_prefix() {
        let config =
            ConnectorConfig::from_lookup(lookup(&[("STEPWISE_SANDBOX_URL", "http://h:1/")]))
                .ok()
                .flatten()
                .expect("configured");
        assert_eq!(config.payments.base_url, "http://h:1/stripe");
        assert_eq!(config.crm.base_url, "http://h:1/salesforce");
        assert_eq!(config.sms.base_url, "http://h:1/twilio");
        assert_eq!(config.housekeeping.base_url, "http://h:1/legacy");
    }

    #[test]
    fn real_services_need_all_three_urls() {
        let partial = ConnectorConfig::from_lookup(lookup(&[(
            "STEPWISE_STRIPE_URL",
            "https://api.stripe.com",
        )]));
        assert!(partial.is_err());
        let full = ConnectorConfig::from_lookup(lookup(&[
            ("STEPWISE_STRIPE_URL", "https://api.stripe.com"),
            ("STEPWISE_STRIPE_KEY", "sk_live_x"),
            ("STEPWISE_SALESFORCE_URL", "https://dewy.my.salesforce.com"),
            ("STEPWISE_TWILIO_URL", "https://api.twilio.com"),
            ("STEPWISE_CONNECTOR_TIMEOUT_MS", "750"),
        ]))
        .ok()
        .flatten()
        .expect("configured");
        assert_eq!(full.payments.credential, "sk_live_x");
        assert_eq!(full.crm.base_url, "https://dewy.my.salesforce.com");
        assert_eq!(full.timeout, Duration::from_millis(750));
    }
}
