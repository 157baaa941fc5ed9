//! A Stripe-style payments client: customers, payment intents, refunds.
//!
//! Requests are form-encoded with `Authorization: Bearer <secret key>`; every POST carries an
//! `Idempotency-Key`, so a repeated call replays the first answer instead of charging again.

use super::config::ServiceConfig;
use super::error::{ConnectorError, Service};
use super::limits::{self, Permit, SharedLimits};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct PaymentsClient {
    http: reqwest::Client,
    base_url: String,
    secret_key: String,
    /// The shared rate limits asked before every call, if any.
    limits: Option<SharedLimits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub amount: i64,
    #[serde(default)]
    pub amount_refunded: i64,
    pub currency: String,
    /// `succeeded`, `requires_action`, `requires_payment_method`, `canceled`, ...
    pub status: String,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub latest_charge: Option<String>,
    #[serde(default)]
    pub next_action: Option<Value>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub status: String,
    #[serde(default)]
    pub payment_intent: Option<String>,
}

#[derive(Debug, Deserialize)]
struct List<T> {
    data: Vec<T>,
}

/// A payment to create and confirm at once.
#[derive(Debug, Clone)]
pub struct PaymentRequest<'a> {
    /// Integer cents.
    pub amount: i64,
    pub currency: &'a str,
    pub customer: &'a str,
    /// A payment method token such as `pm_card_visa`; never a card number.
    pub payment_method: &'a str,
    pub description: &'a str,
    pub metadata: &'a [(&'a str, String)],
}

impl PaymentsClient {
    pub fn new(http: reqwest::Client, config: &ServiceConfig) -> Self {
        Self {
            http,
            base_url: config.base_url.clone(),
            secret_key: config.credential.clone(),
            limits: None,
        }
    }

    /// The same client, asking `limits` before every call.
    pub fn with_limits(mut self, limits: SharedLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    async fn permit(&self) -> Result<Permit, ConnectorError> {
        limits::permit(self.limits.as_ref(), Service::Payments).await
    }

    /// The customer with this email, or a new one (created under `idempotency_key`).
    pub async fn find_or_create_customer(
        &self,
        email: &str,
        name: &str,
        idempotency_key: &str,
    ) -> Result<Customer, ConnectorError> {
        let found: List<Customer> = self
            .get("/v1/customers", &[("email", email), ("limit", "1")])
            .await?;
        if let Some(customer) = found.data.into_iter().next() {
            return Ok(customer);
        }
        let form = vec![
            ("email".to_string(), email.to_string()),
            ("name".to_string(), name.to_string()),
        ];
        self.post("/v1/customers", &form, idempotency_key).await
    }

    /// Creates a payment intent and confirms it in one call (`confirm=true`). A declined card
    /// is an error (HTTP 402 `card_declined`); `requires_action` comes back as a status.
    pub async fn create_and_confirm(
        &self,
        request: &PaymentRequest<'_>,
        idempotency_key: &str,
    ) -> Result<PaymentIntent, ConnectorError> {
        let mut form = vec![
            ("amount".to_string(), request.amount.to_string()),
            ("currency".to_string(), request.currency.to_string()),
            ("customer".to_string(), request.customer.to_string()),
            (
                "payment_method".to_string(),
                request.payment_method.to_string(),
            ),
            ("description".to_string(), request.description.to_string()),
            ("confirm".to_string(), "true".to_string()),
        ];
        for (key, value) in request.metadata {
            form.push((format!("metadata[{key}]"), value.clone()));
        }
        self.post("/v1/payment_intents", &form, idempotency_key)
            .await
    }

    /// The payment intents whose metadata `key` is `value`, newest first (Stripe's
    /// `GET /v1/payment_intents/search`): how the undo of a charge whose answer was lost finds
    /// the payment its request may have made, by the idempotency key kept in its metadata.
    pub async fn search_by_metadata(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<PaymentIntent>, ConnectorError> {
        let query = format!(
            "metadata[{}]:{}",
            search_literal(key),
            search_literal(value)
        );
        let found: List<PaymentIntent> = self
            .get(
                "/v1/payment_intents/search",
                &[("query", query.as_str()), ("limit", "10")],
            )
            .await?;
        Ok(found.data)
    }

    pub async fn retrieve(&self, payment_intent: &str) -> Result<PaymentIntent, ConnectorError> {
        self.get(
            &format!("/v1/payment_intents/{}", segment(payment_intent)),
            &[],
        )
        .await
    }

    /// Cancels a payment intent that has not succeeded (e.g. one waiting for 3-D Secure).
    pub async fn cancel(
        &self,
        payment_intent: &str,
        idempotency_key: &str,
    ) -> Result<PaymentIntent, ConnectorError> {
        let path = format!("/v1/payment_intents/{}/cancel", segment(payment_intent));
        self.post(&path, &[], idempotency_key).await
    }

    /// Refunds `amount` cents of a payment (all that is left when `None`).
    pub async fn refund(
        &self,
        payment_intent: &str,
        amount: Option<i64>,
        reason: &str,
        idempotency_key: &str,
    ) -> Result<Refund, ConnectorError> {
        let mut form = vec![
            ("payment_intent".to_string(), payment_intent.to_string()),
            ("reason".to_string(), reason.to_string()),
        ];
        if let Some(amount) = amount {
            form.push(("amount".to_string(), amount.to_string()));
        }
        self.post("/v1/refunds", &form, idempotency_key).await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ConnectorError> {
        let _permit = self.permit().await?;
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(&self.secret_key)
            .query(query)
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Payments, false, e))?;
        read(response, false).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<T, ConnectorError> {
        let _permit = self.permit().await?;
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.secret_key)
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Payments, true, e))?;
        read(response, true).await
    }
}

/// A quoted literal of Stripe's search query language (`\\` and `'` escaped), so a value can
/// never add a clause.
fn search_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Percent-encodes an id used as a path segment (ids come from earlier responses, but a path
/// must never be steerable).
fn segment(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The answer, decoded, or its error. `write`: the request changes something.
async fn read<T: DeserializeOwned>(
    response: reqwest::Response,
    write: bool,
) -> Result<T, ConnectorError> {
    let answer = super::error::read_body(Service::Payments, write, response).await?;
    let (status, body) = (answer.status, answer.body);
    if (200..300).contains(&status) {
        return serde_json::from_value(body).map_err(|e| ConnectorError::Decode {
            service: Service::Payments,
            message: e.to_string(),
        });
    }
    // Stripe error object: {"error":{"type","code","message",...}}
    let error = body.get("error").cloned().unwrap_or(Value::Null);
    let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_string);
    Err(ConnectorError::Api {
        service: Service::Payments,
        status,
        code: text("code")
            .or_else(|| text("type"))
            .unwrap_or_else(|| format!("http_{status}")),
        message: text("message").unwrap_or_else(|| format!("HTTP {status}")),
        body,
        write,
        retry_after: answer.retry_after,
    })
}
