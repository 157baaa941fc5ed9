//! Connectors: HTTP clients for the hotel's external systems.
//!
//! - [`payments`]: Stripe-style payments (customers, payment intents, refunds);
//! - [`crm`]: a Salesforce-style CRM/PMS (sObject REST and a SOQL subset);
//! - [`sms`]: Twilio-style SMS (the Messages resource);
//! - [`housekeeping`]: the legacy housekeeping and maintenance system (SOAP 1.1, WS-Security,
//!   ISO-8859-1, `DD.MM.YYYY`, its own codes and faults).
//!
//! Each client takes a base URL and credentials from [`ConnectorConfig`], so the same code talks
//! to the sandbox (`STEPWISE_SANDBOX_URL`, or one started in-process) or to the real services.
//! Every failure is a [`ConnectorError`] classified once, here: timeouts, connection errors,
//! 5xx, 408, 409 (a concurrent request with the same idempotency key) and 429 are retryable;
//! other 4xx are permanent business errors such as `card_declined`. Every mutating call
//! carries the step's idempotency key (Stripe's `Idempotency-Key`, a Salesforce external id,
//! Twilio's `I-Twilio-Idempotency-Token`), so a step re-run after a crash has no second effect.

pub mod config;
pub mod crm;
pub mod error;
pub mod housekeeping;
pub mod limits;
pub mod payments;
pub mod sms;

pub use config::{ConnectorConfig, ServiceConfig};
pub use crm::CrmClient;
pub use error::ConnectorError;
pub use housekeeping::HousekeepingClient;
pub use payments::PaymentsClient;
pub use sms::SmsClient;

/// The clients, built from one configuration.
#[derive(Debug, Clone)]
pub struct Connectors {
    pub payments: PaymentsClient,
    pub crm: CrmClient,
    pub sms: SmsClient,
    pub housekeeping: HousekeepingClient,
}

impl Connectors {
    pub fn new(config: &ConnectorConfig) -> Result<Self, ConnectorError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("stepwise/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConnectorError::Setup(e.to_string()))?;
        Ok(Self {
            payments: PaymentsClient::new(http.clone(), &config.payments),
            crm: CrmClient::new(http.clone(), &config.crm),
            sms: SmsClient::new(http.clone(), &config.sms).with_account(config),
            housekeeping: HousekeepingClient::new(
                http,
                &config.housekeeping,
                &config.housekeeping_user,
            ),
        })
    }
}

impl Connectors {
    /// The same clients, each asking `limits` before every call, so that every worker sharing
    /// its PostgreSQL respects the external systems' limits together ([`limits`]).
    pub fn with_shared_limits(mut self, limits: limits::SharedLimits) -> Self {
        self.payments = self.payments.with_limits(limits.clone());
        self.crm = self.crm.with_limits(limits.clone());
        self.sms = self.sms.with_limits(limits.clone());
        self.housekeeping = self.housekeeping.with_limits(limits);
        self
    }
}

/// Turns a step idempotency key (`{saga_id}/{step}`) into a value usable as a Salesforce
/// external id in a URL path segment.
pub fn external_id(idempotency_key: &str) -> String {
    idempotency_key.replace('/', ":")
}
