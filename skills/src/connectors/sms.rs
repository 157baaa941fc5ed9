//! A Twilio-style SMS client (the Messages resource).
//!
//! Twilio's Messages API has no request idempotency of its own; the client sends the step's key
//! as `I-Twilio-Idempotency-Token`, which the sandbox honours like Stripe's `Idempotency-Key`.
//! Against the real Twilio the skills also record each message in the CRM
//! (`SMS_Notification__c`, upserted by the same key) before reporting success.

use super::config::{ConnectorConfig, ServiceConfig};
use super::error::{read_body, ConnectorError, Service};
use super::limits::{self, Permit, SharedLimits};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct SmsClient {
    http: reqwest::Client,
    base_url: String,
    account_sid: String,
    auth_token: String,
    from: String,
    /// The shared rate limits asked before every call, if any.
    limits: Option<SharedLimits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub sid: String,
    pub status: String,
    pub to: String,
}

impl SmsClient {
    pub fn new(http: reqwest::Client, config: &ServiceConfig) -> Self {
        Self {
            http,
            base_url: config.base_url.clone(),
            account_sid: String::new(),
            auth_token: config.credential.clone(),
            from: String::new(),
            limits: None,
        }
    }

    /// The same client, asking `limits` before every call.
    pub fn with_limits(mut self, limits: SharedLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    async fn permit(&self) -> Result<Permit, ConnectorError> {
        limits::permit(self.limits.as_ref(), Service::Sms).await
    }

    /// Sets the account and sender from the whole configuration.
    pub fn with_account(mut self, config: &ConnectorConfig) -> Self {
        self.account_sid = config.twilio_account_sid.clone();
        self.from = config.sms_from.clone();
        self
    }

    /// Sends a text message to an E.164 number.
    pub async fn send(
        &self,
        to: &str,
        body: &str,
        idempotency_key: &str,
    ) -> Result<Message, ConnectorError> {
        let sid: String = self
            .account_sid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let url = format!("{}/2010-04-01/Accounts/{sid}/Messages.json", self.base_url);
        let _permit = self.permit().await?;
        let response = self
            .http
            .post(url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .header("I-Twilio-Idempotency-Token", idempotency_key)
            .form(&[("To", to), ("From", self.from.as_str()), ("Body", body)])
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Sms, true, e))?;
        let answer = read_body(Service::Sms, true, response).await?;
        let (status, value) = (answer.status, answer.body);
        if (200..300).contains(&status) {
            return serde_json::from_value(value).map_err(|e| ConnectorError::Decode {
                service: Service::Sms,
                message: e.to_string(),
            });
        }
        // Twilio errors: {"code":21211,"message","more_info","status"}
        let code = value
            .get("code")
            .map(|c| match c {
                Value::Number(n) => format!("twilio_{n}"),
                other => other.as_str().unwrap_or("twilio_error").to_string(),
            })
            .unwrap_or_else(|| format!("http_{status}"));
        Err(ConnectorError::Api {
            service: Service::Sms,
            status,
            code,
            message: value
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("SMS request failed")
                .to_string(),
            body: value,
            write: true,
            retry_after: answer.retry_after,
        })
    }
}
