//! The HTTP front: routing by service prefix, faults, authentication, idempotency, the request
//! ledger, and the `/_sandbox/*` control endpoints.

use super::faults::{FaultConfig, Outcome};
use super::legacy::{self, LegacySettings};
use super::limits::LimitConfig;
use super::state::{lock, RequestRecord, SandboxState, Service, SharedState, StoredResponse};
use super::webhooks::{self, WebhookConfig};
use super::{salesforce, stripe, twilio};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

/// The sandbox's routes over `state`.
pub fn router(state: SharedState) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// A request as the service handlers see it.
pub struct Req<'a> {
    pub method: &'a Method,
    /// The path below the service prefix, still percent-encoded (e.g. `/v1/customers`).
    pub path: &'a str,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Req<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The form-encoded body's pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.body).into_owned().collect()
    }

    /// The percent-decoded path segments.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect()
    }

    /// The token of `Authorization: Bearer <token>`.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    /// The user and password of `Authorization: Basic <base64>`.
    pub fn basic(&self) -> Option<(String, String)> {
        let value = self.header("authorization")?;
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some((user.to_string(), password.to_string()))
    }
}

/// Decodes `%XX` escapes (invalid escapes are kept as written).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const JSON: &str = "application/json";

/// A response body and status, kept as bytes so an idempotent replay is byte-for-byte.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub replayed: bool,
    pub content_type: &'static str,
    /// Sent as `Retry-After` (seconds).
    pub retry_after: Option<u64>,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            body: serde_json::to_vec(value).unwrap_or_default(),
            replayed: false,
            content_type: JSON,
            retry_after: None,
        }
    }

    /// An XML document already encoded as `content_type` says.
    pub fn xml(status: u16, body: Vec<u8>, content_type: &'static str) -> Self {
        Self {
            status,
            body,
            replayed: false,
            content_type,
            retry_after: None,
        }
    }

    pub fn html(status: u16, page: String) -> Self {
        Self {
            status,
            body: page.into_bytes(),
            replayed: false,
            content_type: "text/html; charset=utf-8",
            retry_after: None,
        }
    }

    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: Vec::new(),
            replayed: false,
            content_type: JSON,
            retry_after: None,
        }
    }

    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = status;
        if !self.body.is_empty() {
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
        }
        if self.replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The header carrying a service's idempotency key, if the service has one.
fn idempotency_header(service: Service) -> Option<&'static str> {
    match service {
        Service::Stripe => Some("idempotency-key"),
        // A sandbox extension: Twilio has no request idempotency for Messages.
        Service::Twilio => Some("i-twilio-idempotency-token"),
        // The legacy system's requests carry a sequence number in their body instead.
        Service::Salesforce | Service::Legacy => None,
    }
}

/// Which responses are kept for an idempotency key: like Stripe, results of requests that ran
/// (successes and card declines), not validation or authentication failures, not server errors.
fn keeps_result(status: u16) -> bool {
    (200..300).contains(&status) || status == 402
}

/// Method, path and the request's sorted parameters.
fn fingerprint(req: &Req<'_>) -> String {
    let mut pairs = req.form();
    pairs.sort();
    let params: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} {}?{}", req.method, req.path, params.join("&"))
}

fn fault_reply(service: Service, status: u16) -> Reply {
    if service == Service::Legacy {
        return if status == 500 {
            legacy::internal_error()
        } else {
            // What the proxy in front of it answers when it gives up waiting.
            Reply::html(
                status,
                "<html><body><h1>504 Gateway Time-out</h1></body></html>".into(),
            )
        };
    }
    let body = match (service, status) {
        (Service::Stripe, 500) => stripe::fault_body(),
        (Service::Stripe, _) => json!({"error": {"type": "api_error",
            "message": "The request timed out (sandbox fault)."}}),
        (Service::Salesforce, 500) => {
            json!([{"message": "An unexpected error occurred (sandbox fault).",
            "errorCode": "SERVER_ERROR", "fields": []}])
        }
        (Service::Salesforce, _) => json!([{"message": "Request timed out (sandbox fault).",
            "errorCode": "REQUEST_RUNNING_TOO_LONG", "fields": []}]),
        (Service::Twilio | Service::Legacy, _) => twilio::error_body(
            if status == 500 { 20500 } else { 20504 },
            if status == 500 {
                "Internal Server Error (sandbox fault)"
            } else {
                "Gateway timeout (sandbox fault)"
            },
            status,
        ),
    };
    Reply::json(status, &body)
}

async fn dispatch(
    State(shared): State<SharedState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if path == "/_sandbox" || path.starts_with("/_sandbox/") {
        return control(&shared, &method, &path, &query, &body).into_response();
    }
    let Some((service, rest)) = Service::route(&path) else {
        return Reply::json(
            404,
            &json!({"error": format!("no such sandbox service: {path} (try /stripe, /salesforce, /twilio, /legacy, /_sandbox)")}),
        )
        .into_response();
    };
    let key = idempotency_header(service)
        .and_then(|name| headers.get(name))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // The service's own limits come first: a request over one is refused unprocessed.
    let mut session = None;
    {
        let mut state = lock(&shared);
        let refused = if service == Service::Legacy {
            match Session::take(&shared, &mut state) {
                Some(taken) => {
                    session = Some(taken);
                    None
                }
                None => Some(legacy::too_many_sessions(1)),
            }
        } else {
            state
                .limits
                .admit(service, std::time::Instant::now())
                .err()
                .map(|seconds| rate_limited(service, seconds))
        };
        if let Some(reply) = refused {
            state.limits.breach(service);
            state.record(RequestRecord {
                service,
                method: method.to_string(),
                path: path.clone(),
                idempotency_key: key.clone(),
                replayed: false,
                status: reply.status,
                fault: Some("limit"),
            });
            return reply.into_response();
        }
    }
    let (decision, slow) = {
        let mut state = lock(&shared);
        let slow = if service == Service::Legacy && method == Method::POST {
            state.legacy.draw_latency()
        } else {
            std::time::Duration::ZERO
        };
        (state.faults.decide(service, method.as_str(), &path), slow)
    };
    let outcome = decision.outcome;
    let record = |status: u16, replayed: bool| RequestRecord {
        service,
        method: method.to_string(),
        path: path.clone(),
        idempotency_key: key.clone(),
        replayed,
        status,
        fault: outcome.name(),
    };
    let latency = decision.latency + slow;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match outcome {
        Outcome::Error => {
            lock(&shared).record(record(500, false));
            drop(session);
            return fault_reply(service, 500).into_response();
        }
        Outcome::Timeout(hold) => {
            // Recorded first: the client usually gives up before the answer.
            lock(&shared).record(record(504, false));
            tokio::time::sleep(hold).await;
            return fault_reply(service, 504).into_response();
        }
        Outcome::Pass
        | Outcome::EffectThenError
        | Outcome::EffectThenTimeout(_)
        | Outcome::Reset => {}
    }

    let req = Req {
        method: &method,
        path: rest,
        query,
        headers: &headers,
        body: &body,
    };
    let reply = {
        let mut state = lock(&shared);
        let reply = respond(&mut state, service, &req, key.as_deref());
        // The ledger shows what the client was answered; `fault` says the effect happened.
        let seen = match outcome {
            Outcome::EffectThenError => 500,
            Outcome::EffectThenTimeout(_) => 504,
            _ => reply.status,
        };
        state.record(record(seen, reply.replayed));
        webhooks::flush(&mut state);
        reply
    };
    let response = match outcome {
        Outcome::EffectThenError => fault_reply(service, 500).into_response(),
        Outcome::EffectThenTimeout(hold) => {
            tokio::time::sleep(hold).await;
            fault_reply(service, 504).into_response()
        }
        Outcome::Reset => cut_off(reply),
        Outcome::Pass | Outcome::Error | Outcome::Timeout(_) => reply.into_response(),
    };
    drop(session);
    response
}

/// A session of the legacy system, held while its request is served (also when the client
/// goes away mid-request and the handler is dropped).
struct Session(SharedState);

impl Session {
    /// Takes a session unless the limit of `/_sandbox/limits` is reached.
    fn take(shared: &SharedState, state: &mut SandboxState) -> Option<Session> {
        if let Some(limit) = state.limits.sessions() {
            if state.legacy.sessions_in_use >= limit {
                return None;
            }
        }
        state.legacy.sessions_in_use += 1;
        Some(Session(shared.clone()))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.legacy.sessions_in_use = state.legacy.sessions_in_use.saturating_sub(1);
    }
}

/// The 429 of a REST service over its rate limit, in the service's error shape.
fn rate_limited(service: Service, seconds: u64) -> Reply {
    let body = match service {
        Service::Stripe => json!({"error": {"type": "invalid_request_error", "code": "rate_limit",
            "message": "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests."}}),
        Service::Salesforce => {
            json!([{"message": "Too many requests: the API rate limit was exceeded.",
            "errorCode": "REQUEST_LIMIT_EXCEEDED", "fields": []}])
        }
        Service::Twilio | Service::Legacy => twilio::error_body(20429, "Too Many Requests", 429),
    };
    let mut reply = Reply::json(429, &body);
    reply.retry_after = Some(seconds);
    reply
}

/// Authenticates `req`, then replays its idempotent result or runs it (storing the result).
fn respond(state: &mut SandboxState, service: Service, req: &Req<'_>, key: Option<&str>) -> Reply {
    let authenticated = match service {
        Service::Stripe => stripe::authenticate(req),
        Service::Salesforce => salesforce::authenticate(req),
        Service::Twilio => twilio::authenticate(req),
        // WS-Security in the SOAP header, checked by the system itself.
        Service::Legacy => Ok(()),
    };
    if let Err(reply) = authenticated {
        return reply;
    }
    let idempotent = key
        .map(str::to_string)
        .filter(|_| *req.method == Method::POST && service != Service::Salesforce);
    if let Some(key) = &idempotent {
        if key.is_empty() || key.chars().count() > 255 {
            return match service {
                Service::Stripe => stripe::invalid_idempotency_key(key),
                _ => Reply::json(
                    400,
                    &twilio::error_body(
                        20001,
                        "Idempotency tokens must be 1 to 255 characters",
                        400,
                    ),
                ),
            };
        }
    }
    let print = fingerprint(req);
    if let Some(key) = &idempotent {
        if let Some(stored) = state.idempotency.get(&(service, key.clone())) {
            return if stored.fingerprint == print {
                Reply {
                    status: stored.status,
                    body: stored.body.clone(),
                    replayed: true,
                    content_type: JSON,
                    retry_after: None,
                }
            } else if service == Service::Stripe {
                stripe::idempotency_conflict(key)
            } else {
                twilio::idempotency_conflict(key)
            };
        }
    }
    let reply = match service {
        Service::Stripe => stripe::handle(state, req),
        Service::Salesforce => salesforce::handle(state, req),
        Service::Twilio => twilio::handle(state, req),
        Service::Legacy => legacy::handle(state, req),
    };
    if let Some(key) = idempotent {
        if keeps_result(reply.status) {
            state.idempotency.insert(
                (service, key),
                StoredResponse {
                    fingerprint: print,
                    status: reply.status,
                    body: reply.body.clone(),
                },
            );
        }
    }
    reply
}

/// The `reset` fault's answer: the status line, the headers with the full `Content-Length`,
/// half of the body, then the connection is dropped (the client sees the answer break off).
fn cut_off(reply: Reply) -> Response {
    // A 204 has no body to break off: it is sent as a 200 promising one byte.
    let status = if reply.status == 204 {
        200
    } else {
        reply.status
    };
    let declared = reply.body.len().max(1);
    let sent = Bytes::from(reply.body[..reply.body.len() / 2].to_vec());
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(sent),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset (sandbox fault)",
        )),
    ];
    let mut response = Response::new(Body::from_stream(futures::stream::iter(chunks)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
    response
}

/// `/_sandbox/health`, `/_sandbox/ledger`, `/_sandbox/faults`, `/_sandbox/reset`,
/// `/_sandbox/webhooks`, `/_sandbox/3ds/{id}` and
/// `/_sandbox/stripe/payment_intents/{id}/authenticate`.
fn control(
    shared: &SharedState,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Reply {
    let path = path.trim_end_matches('/');
    match (method, path) {
        (&Method::GET, "/_sandbox/webhooks") => {
            Reply::json(200, &webhook_settings(lock(shared).webhooks.config()))
        }
        (&Method::POST, "/_sandbox/webhooks") => set_webhooks(shared, body),
        (&Method::GET, p) if p.starts_with("/_sandbox/3ds/") => {
            let id = &p["/_sandbox/3ds/".len()..];
            challenge_page(shared, id)
        }
        (&Method::POST, p) if p.starts_with("/_sandbox/3ds/") => {
            let id = &p["/_sandbox/3ds/".len()..];
            let outcome = query
                .iter()
                .rev()
                .find(|(k, _)| k == "outcome")
                .map(|(_, v)| v.as_str());
            let from_body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let outcome = outcome.or_else(|| from_body.get("outcome").and_then(Value::as_str));
            authenticate(shared, id, outcome)
        }
        (&Method::GET, "/_sandbox/health") => Reply::json(200, &json!({"status": "ok"})),
        (&Method::GET, "/_sandbox/limits") => Reply::json(
            200,
            &serde_json::to_value(lock(shared).limits.config()).unwrap_or(Value::Null),
        ),
        (&Method::POST, "/_sandbox/limits") => {
            let config: LimitConfig = match settings_body(body, "limits") {
                Ok(config) => config,
                Err(reply) => return reply,
            };
            let mut state = lock(shared);
            match state.limits.set(config) {
                Ok(()) => {
                    tracing::info!(config = ?state.limits.config(), "sandbox limits set");
                    Reply::json(
                        200,
                        &serde_json::to_value(state.limits.config()).unwrap_or(Value::Null),
                    )
                }
                Err(message) => Reply::json(400, &json!({"error": message})),
            }
        }
        (&Method::GET, "/_sandbox/legacy") => Reply::json(
            200,
            &serde_json::to_value(&lock(shared).legacy.settings).unwrap_or(Value::Null),
        ),
        (&Method::POST, "/_sandbox/legacy") => {
            let settings: LegacySettings = match settings_body(body, "legacy settings") {
                Ok(settings) => settings,
                Err(reply) => return reply,
            };
            if let Err(message) = settings.validate() {
                return Reply::json(400, &json!({"error": message}));
            }
            let mut state = lock(shared);
            state.legacy.settings = settings;
            Reply::json(
                200,
                &serde_json::to_value(&state.legacy.settings).unwrap_or(Value::Null),
            )
        }
        (&Method::GET, "/_sandbox/ledger") => Reply::json(200, &lock(shared).ledger()),
        (&Method::GET, "/_sandbox/faults") => {
            let config = lock(shared).faults.config().clone();
            Reply::json(200, &serde_json::to_value(config).unwrap_or(Value::Null))
        }
        (&Method::POST, "/_sandbox/faults") => {
            let config: FaultConfig = if body.iter().all(u8::is_ascii_whitespace) {
                FaultConfig::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(config) => config,
                    Err(e) => {
                        return Reply::json(
                            400,
                            &json!({"error": format!("invalid fault settings: {e}")}),
                        )
                    }
                }
            };
            let mut state = lock(shared);
            match state.faults.set(config) {
                Ok(()) => {
                    let config = state.faults.config().clone();
                    tracing::info!(?config, "sandbox faults set");
                    Reply::json(200, &serde_json::to_value(config).unwrap_or(Value::Null))
                }
                Err(message) => Reply::json(400, &json!({"error": message})),
            }
        }
        (&Method::POST, "/_sandbox/reset") => {
            let mut state = lock(shared);
            state.reset();
            tracing::info!(seed = state.seed, "sandbox reset");
            Reply::json(
                200,
                &json!({"status": "reset", "seed": state.seed, "today": state.today}),
            )
        }
        (&Method::POST, p) if p.starts_with("/_sandbox/stripe/payment_intents/") => {
            let id = p
                .trim_start_matches("/_sandbox/stripe/payment_intents/")
                .strip_suffix("/authenticate");
            let Some(id) = id.filter(|id| !id.is_empty() && !id.contains('/')) else {
                return Reply::json(
                    404,
                    &json!({"error": format!("no such sandbox endpoint: {method} {path}")}),
                );
            };
            let outcome: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            authenticate(shared, id, outcome.get("outcome").and_then(Value::as_str))
        }
        _ => Reply::json(
            404,
            &json!({"error": format!("no such sandbox endpoint: {method} {path}")}),
        ),
    }
}

/// A JSON settings body (empty means the defaults), or the 400 naming what is wrong.
fn settings_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    what: &str,
) -> Result<T, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| Reply::json(400, &json!({"error": format!("invalid {what}: {e}")})))
}

/// The 3-D Secure challenge of intent `id` played as the guest: `succeed` (the default) or
/// `fail`. The intent's webhook event is sent like any other.
fn authenticate(shared: &SharedState, id: &str, outcome: Option<&str>) -> Reply {
    if id.is_empty() || id.contains('/') {
        return Reply::json(404, &json!({"error": "no such payment intent"}));
    }
    let succeed = match outcome {
        None | Some("succeed") => true,
        Some("fail") => false,
        Some(other) => {
            return Reply::json(
                400,
                &json!({"error": format!("outcome must be succeed or fail, not {other}")}),
            )
        }
    };
    let mut state = lock(shared);
    let reply = match stripe::complete_authentication(&mut state.stripe, id, succeed) {
        Ok(intent) => Reply::json(200, &intent),
        Err((status, message)) => Reply::json(status, &json!({"error": message})),
    };
    webhooks::flush(&mut state);
    reply
}

/// A page standing in for the card issuer's 3-D Secure challenge (what the guest's browser
/// shows at `next_action.redirect_to_url.url`): two buttons posting the outcome back.
fn challenge_page(shared: &SharedState, id: &str) -> Reply {
    let state = lock(shared);
    let Some(intent) = state.stripe.payment_intents.get(id) else {
        return Reply::json(
            404,
            &json!({"error": format!("No such payment_intent: '{id}'")}),
        );
    };
    let amount = format!(
        "{}.{:02} {}",
        intent.amount / 100,
        intent.amount % 100,
        intent.currency.to_uppercase()
    );
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>3-D Secure (sandbox)</title></head>\
         <body><h1>Authenticate your payment</h1><p>Payment {id} of {amount}: status {status}.</p>\
         <form method=\"post\" action=\"/_sandbox/3ds/{id}?outcome=succeed\"><button>Complete authentication</button></form>\
         <form method=\"post\" action=\"/_sandbox/3ds/{id}?outcome=fail\"><button>Fail authentication</button></form>\
         </body></html>",
        status = intent.status
    );
    Reply::html(200, page)
}

fn webhook_settings(config: Option<&WebhookConfig>) -> Value {
    json!({
        "url": config.map(|c| c.url.clone()),
        "secret_set": config.is_some(),
        "max_attempts": webhooks::MAX_ATTEMPTS,
        "first_backoff_ms": webhooks::FIRST_BACKOFF.as_millis() as u64,
    })
}

/// `POST /_sandbox/webhooks {"url","secret"}` sets the endpoint; `{}` (or `"url": null`) stops
/// sending.
fn set_webhooks(shared: &SharedState, body: &[u8]) -> Reply {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(e) => {
                return Reply::json(
                    400,
                    &json!({"error": format!("invalid webhook settings: {e}")}),
                )
            }
        }
    };
    let config = if value.get("url").is_none_or(Value::is_null) {
        None
    } else {
        match serde_json::from_value::<WebhookConfig>(value) {
            Ok(config) => match config.validate() {
                Ok(()) => Some(config),
                Err(message) => return Reply::json(400, &json!({"error": message})),
            },
            Err(e) => {
                return Reply::json(
                    400,
                    &json!({"error": format!("invalid webhook settings: {e} (expected {{\"url\",\"secret\"}})")}),
                )
            }
        }
    };
    let mut state = lock(shared);
    tracing::info!(url = ?config.as_ref().map(|c| &c.url), "sandbox webhooks set");
    state.webhooks.set(config);
    Reply::json(200, &webhook_settings(state.webhooks.config()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_escapes_and_leaves_junk() {
        assert_eq!(percent_decode("emma%40example.com"), "emma@example.com");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }
}
