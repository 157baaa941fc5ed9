//! The external services the hotel skills call (payments, CRM, SMS) and the webhook secret.

use super::Check;
use crate::app::DEFAULT_SANDBOX_URL;
use std::time::Duration;
use stepwise_skills::connectors::{ConnectorConfig, ServiceConfig};

/// How long a service may take to answer the reachability probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// One service as configured: the variables that set its URL and credential.
struct Service<'a> {
    name: &'static str,
    url_var: &'static str,
    credential_var: &'static str,
    config: &'a ServiceConfig,
}

pub async fn checks(get: &dyn Fn(&str) -> Option<String>) -> Vec<Check> {
    let mut checks = match ConnectorConfig::from_lookup(get) {
        Err(e) => vec![Check::fail(
            "services",
            e.to_string(),
            "see README, Configuration",
        )],
        Ok(None) => vec![unconfigured().await],
        Ok(Some(config)) => configured(&config, get).await,
    };
    checks.push(webhook_secret(get));
    checks
}

/// Nothing configured: `demo` and `mcp` start their own sandbox; everything else expects one at
/// the default address.
async fn unconfigured() -> Check {
    let what = "no external services configured (STEPWISE_SANDBOX_URL and STEPWISE_STRIPE_URL, \
                STEPWISE_SALESFORCE_URL, STEPWISE_TWILIO_URL are unset): `demo` and `mcp` start \
                an in-process sandbox (fake Stripe, Salesforce and Twilio); `worker` and the other \
                commands use the sandbox at";
    match reachable(DEFAULT_SANDBOX_URL).await {
        Ok(()) => Check::ok(
            "services",
            format!("{what} {DEFAULT_SANDBOX_URL}, which answers"),
        ),
        Err(e) => Check::warn(
            "services",
            format!("{what} {DEFAULT_SANDBOX_URL}, where nothing answers ({e})"),
            "for a `stepwise worker`, run `stepwise sandbox` or set STEPWISE_SANDBOX_URL, or the \
             real services' URLs and credentials (README, Configuration)",
        ),
    }
}

async fn configured(config: &ConnectorConfig, get: &dyn Fn(&str) -> Option<String>) -> Vec<Check> {
    let services = [
        Service {
            name: "payments",
            url_var: "STEPWISE_STRIPE_URL",
            credential_var: "STEPWISE_STRIPE_KEY",
            config: &config.payments,
        },
        Service {
            name: "crm",
            url_var: "STEPWISE_SALESFORCE_URL",
            credential_var: "STEPWISE_SALESFORCE_TOKEN",
            config: &config.crm,
        },
        Service {
            name: "sms",
            url_var: "STEPWISE_TWILIO_URL",
            credential_var: "STEPWISE_TWILIO_AUTH_TOKEN",
            config: &config.sms,
        },
    ];
    let mut checks = Vec::new();
    for service in services {
        let real = get(service.url_var).is_some();
        let reached = reachable(&service.config.base_url).await;
        checks.push(judge_service(&service, real, get, reached));
    }
    checks
}

fn judge_service(
    service: &Service<'_>,
    real: bool,
    get: &dyn Fn(&str) -> Option<String>,
    reached: Result<(), String>,
) -> Check {
    let name = format!("service:{}", service.name);
    let url = &service.config.base_url;
    let kind = if real { "real service" } else { "sandbox" };
    if let Err(e) = reached {
        return Check::fail(
            &name,
            format!("{kind} at {url} does not answer ({e}); its steps will retry until it does"),
            format!(
                "start it, or correct {}",
                if real {
                    service.url_var
                } else {
                    "STEPWISE_SANDBOX_URL"
                }
            ),
        );
    }
    if real && get(service.credential_var).is_none() {
        return Check::fail(
            &name,
            format!(
                "real service at {url}, but {} is unset: the sandbox's test credential would be \
                 sent there",
                service.credential_var
            ),
            format!("set {}", service.credential_var),
        );
    }
    Check::ok(
        &name,
        format!("{kind} at {url} answers; credential present"),
    )
}

/// Whether an HTTP server answers at `url` (any status counts: we only ask if it is there).
async fn reachable(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    client
        .get(url)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| without_url(&e))
}

/// What went wrong, without the URL the message already names: the kind and the root cause.
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut deepest = None;
    while let Some(c) = cause {
        deepest = Some(c.to_string());
        cause = c.source();
    }
    match deepest {
        Some(root) => format!("{kind}: {root}"),
        None => kind.to_owned(),
    }
}

/// `STEPWISE_STRIPE_WEBHOOK_SECRET`: the signing secret of Stripe's webhook endpoint
/// (`POST /webhooks/stripe`, docs/operators.md "Stripe webhooks").
fn webhook_secret(get: &dyn Fn(&str) -> Option<String>) -> Check {
    const NAME: &str = "webhook_secret";
    match get("STEPWISE_STRIPE_WEBHOOK_SECRET") {
        // With real payments, a checkout waiting for 3-D Secure hears back only by webhook.
        None if get("STEPWISE_STRIPE_URL").is_some() => Check::warn(
            NAME,
            "STEPWISE_STRIPE_WEBHOOK_SECRET is unset while payments go to a real Stripe: \
             /webhooks/stripe refuses every event (503), so a checkout waiting for 3-D Secure \
             hears nothing and its payment is cancelled at the deadline",
            "add the endpoint https://YOUR-HOST/webhooks/stripe in Stripe's dashboard (events \
             payment_intent.succeeded and payment_intent.payment_failed) and set \
             STEPWISE_STRIPE_WEBHOOK_SECRET to its signing secret",
        ),
        None => Check::ok(
            NAME,
            "STEPWISE_STRIPE_WEBHOOK_SECRET is unset: fine with the sandbox (serve, mcp and demo \
             generate a secret for their in-process one); /webhooks/stripe answers 503 otherwise",
        ),
        Some(secret) if secret.starts_with("whsec_") => Check::ok(
            NAME,
            "STEPWISE_STRIPE_WEBHOOK_SECRET is set (a Stripe signing secret): /webhooks/stripe \
             verifies Stripe's signatures with it",
        ),
        Some(_) => Check::warn(
            NAME,
            "STEPWISE_STRIPE_WEBHOOK_SECRET is set but is not a Stripe signing secret (they \
             start with whsec_)",
            "copy the endpoint's signing secret from Stripe's dashboard, or unset it",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn a_real_service_needs_its_own_credential() {
        let config = ServiceConfig {
            base_url: "https://api.stripe.com".into(),
            credential: "sk_test_stepwise_sandbox".into(),
        };
        let service = Service {
            name: "payments",
            url_var: "STEPWISE_STRIPE_URL",
            credential_var: "STEPWISE_STRIPE_KEY",
            config: &config,
        };
        let none = |_: &str| None;
        let key = |name: &str| (name == "STEPWISE_STRIPE_KEY").then(|| "sk_live_x".to_owned());
        assert_eq!(
            judge_service(&service, true, &none, Ok(())).status,
            Status::Fail
        );
        assert_eq!(
            judge_service(&service, true, &key, Ok(())).status,
            Status::Ok
        );
        assert_eq!(
            judge_service(&service, false, &none, Ok(())).status,
            Status::Ok
        );
        let down = judge_service(&service, false, &key, Err("refused".into()));
        assert_eq!(down.status, Status::Fail);
        assert!(down.detail.contains("sandbox"), "{}", down.detail);
    }

    #[test]
    fn the_webhook_secret_is_explained() {
        let unset = |_: &str| None;
        let good = |_: &str| Some("whsec_abc".to_owned());
        let bad = |_: &str| Some("sk_live_oops".to_owned());
        assert_eq!(webhook_secret(&unset).status, Status::Ok);
        assert_eq!(webhook_secret(&good).status, Status::Ok);
        assert_eq!(webhook_secret(&bad).status, Status::Warn);
        let real_stripe_unsigned =
            |name: &str| (name == "STEPWISE_STRIPE_URL").then(|| "https://api.stripe.com".into());
        assert_eq!(
            webhook_secret(&real_stripe_unsigned).status,
            Status::Warn,
            "real payments need the webhook to answer a 3-D Secure wait"
        );
    }
}
