//! The streamable HTTP transport's routes: `/mcp` behind bearer-token authentication, and
//! `/metrics` (Prometheus text, unauthenticated like any scrape target; it carries no saga
//! data). The binary's `stepwise serve` mounts them on one server with its other endpoints.
//!
//! A request without a valid token gets `401` with `WWW-Authenticate: Bearer`; a valid token's
//! principal is attached to the request, and the MCP server reads it from there for every call.
//!
//! Two limits guard `/mcp` ([`Limits`], docs/mcp.md, Configuration): a request body larger
//! than `STEPWISE_MCP_MAX_BODY_BYTES` gets `413` (by its `Content-Length` before anything else
//! is done, or while it is read), a body cut off before its end `400`, and a principal with `STEPWISE_MCP_MAX_IN_FLIGHT` POSTs already
//! in flight gets `429` with `Retry-After` for one more (a POST is in flight until its answer,
//! streamed or not, has been sent or dropped).

use crate::auth::{AuthError, Principal};
use crate::server::{Facade, StepwiseServer};
use crate::store::TokenStore;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use stepwise_engine::Registry;
use tokio_util::sync::CancellationToken;

/// Default of `STEPWISE_MCP_MAX_BODY_BYTES`: 1 MiB, far above any tool call's arguments.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default of `STEPWISE_MCP_MAX_IN_FLIGHT`: POSTs one principal may have in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// The limits on `/mcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// POSTs one principal may have in flight at once.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl Limits {
    /// `STEPWISE_MCP_MAX_BODY_BYTES` and `STEPWISE_MCP_MAX_IN_FLIGHT`, or their defaults; a
    /// value that is not a positive integer is an error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        fn positive(name: &str, default: usize) -> Result<usize, String> {
            match std::env::var(name) {
                Ok(text) if !text.trim().is_empty() => match text.trim().parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!("{name} must be a positive integer, not `{text}`")),
                },
                _ => Ok(default),
            }
        }
        Ok(Self {
            max_body_bytes: positive("STEPWISE_MCP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?,
            max_in_flight: positive("STEPWISE_MCP_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT)?,
        })
    }
}

/// A JSON error answer of the limits: `{"error": code, "message": ...}`.
fn limit_error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": code, "message": message }).to_string(),
    )
        .into_response()
}

/// `413` for a body whose `Content-Length` is over the limit, before it is read or the token
/// checked. A body without a length (chunked) is counted as it is read, after the token
/// ([`limit_in_flight`]).
async fn limit_body(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(length) if length > limits.max_body_bytes as u64 => limit_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is {length} bytes; this server accepts at most {} \
                 (STEPWISE_MCP_MAX_BODY_BYTES)",
                limits.max_body_bytes
            ),
        ),
        _ => next.run(request).await,
    }
}

/// POSTs in flight per principal.
#[derive(Clone)]
struct InFlight {
    max: usize,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// One POST in flight: counted until dropped (with the answer's body).
struct InFlightGuard {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl InFlight {
    fn enter(&self, principal: &str) -> Option<InFlightGuard> {
        let mut counts = match self.counts.lock() {
            Ok(counts) => counts,
            Err(poisoned) => poisoned.into_inner(),
        };
        let count = counts.entry(principal.to_string()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(InFlightGuard {
            counts: self.counts.clone(),
            principal: principal.to_string(),
        })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counts = match self.counts.lock() {
            Ok(counts) => counts,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(count) = counts.get_mut(&self.principal) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}

/// A principal's POST: `429` with `Retry-After` if it has `max` in flight already; otherwise
/// counted until the answer's body has been sent or dropped (an SSE answer streams while the
/// call runs). Its body is read here, within the limit: over it is `413`, and a body that
/// cannot be read (the client stopped sending before its `Content-Length`) is `400`, not an
/// error of the server.
async fn limit_in_flight(
    State(state): State<(InFlight, Limits)>,
    request: Request,
    next: Next,
) -> Response {
    let (in_flight, limits) = state;
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let Some(principal) = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.to_string())
    else {
        return next.run(request).await;
    };
    let Some(guard) = in_flight.enter(&principal) else {
        tracing::warn!(%principal, max = in_flight.max, "refused a request over the in-flight limit");
        let mut response = limit_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "{principal} already has {} requests in flight, the most this server allows \
                 one caller (STEPWISE_MCP_MAX_IN_FLIGHT); wait for an answer, then retry",
                in_flight.max
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let (parts, body) = request.into_parts();
    let mut chunks = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) if bytes.len() + chunk.len() > limits.max_body_bytes => {
                return limit_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the request body is over {} bytes, the most this server accepts \
                         (STEPWISE_MCP_MAX_BODY_BYTES)",
                        limits.max_body_bytes
                    ),
                );
            }
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(e) => {
                return limit_error(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    format!("the request body could not be read to its end: {e}"),
                );
            }
        }
    }
    let request = Request::from_parts(parts, Body::from(bytes));
    let (parts, body) = next.run(request).await.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

#[derive(Clone)]
struct AuthState {
    tokens: TokenStore,
    catalog: Arc<Registry>,
}

fn unauthorized(description: &str) -> Response {
    let challenge = format!(
        "Bearer realm=\"stepwise\", error=\"invalid_token\", error_description=\"{description}\""
    );
    let mut response = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "error": "unauthorized",
            "message": format!("{description}: send `Authorization: Bearer <token>` (create one with `stepwise tokens create --role ROLE --subject SUBJECT`)")
        })
        .to_string(),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

async fn authenticate(
    State(state): State<AuthState>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let Some(token) = token else {
        return unauthorized("a bearer token is required");
    };
    match state.tokens.authenticate(&token, &state.catalog).await {
        Ok(Some(principal)) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Ok(None) => unauthorized("the token is unknown or revoked"),
        // A token made for a role this server's catalog does not declare (any more).
        Err(e @ AuthError::UnknownRole { .. }) => {
            tracing::warn!(error = %e, "refused a token whose role is not declared");
            unauthorized("the token's role is not known to this server")
        }
        Err(e) => {
            tracing::error!(error = %e, "could not check a bearer token");
            (StatusCode::SERVICE_UNAVAILABLE, "could not check the token").into_response()
        }
    }
}

async fn metrics(State(facade): State<Arc<Facade>>) -> Response {
    let text = stepwise_engine::metrics::render_prometheus_with_queue(
        facade.engine().store(),
        facade.engine().clock().now(),
    )
    .await;
    (
        [(header::CONTENT_TYPE, stepwise_engine::metrics::CONTENT_TYPE)],
        Body::from(text),
    )
        .into_response()
}

/// `/mcp` behind bearer-token authentication and [`Limits`]. `allowed_hosts` are the `Host` values it
/// accepts (DNS-rebinding protection): `None` for loopback names only (rmcp's default),
/// `Some(empty)` for any. Cancelling `sessions` ends every MCP session and in-flight call, so
/// a server cancels it only after it has drained its requests.
pub fn mcp_router(
    facade: Arc<Facade>,
    allowed_hosts: Option<Vec<String>>,
    sessions: CancellationToken,
    limits: Limits,
) -> Router {
    let mut config = StreamableHttpServerConfig::default();
    config.cancellation_token = sessions;
    config.max_request_body_bytes = limits.max_body_bytes;
    match allowed_hosts {
        Some(hosts) if hosts.is_empty() => config = config.disable_allowed_hosts(),
        Some(hosts) => config = config.with_allowed_hosts(hosts),
        None => {}
    }
    let for_sessions = facade.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(StepwiseServer::per_request(for_sessions.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let auth = AuthState {
        tokens: TokenStore::new(facade.engine().store().pool().clone()),
        catalog: facade.engine().registry().clone(),
    };
    let in_flight = InFlight {
        max: limits.max_in_flight,
        counts: Arc::default(),
    };
    // The last layer added runs first: the body's size, then the token, then the count.
    Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(
            (in_flight, limits),
            limit_in_flight,
        ))
        .layer(middleware::from_fn_with_state(auth, authenticate))
        .layer(middleware::from_fn_with_state(limits, limit_body))
}

/// `/metrics`: the engine's Prometheus metrics, with the queue gauges sampled on every scrape.
pub fn metrics_router(facade: Arc<Facade>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(facade)
}

/// The `Host` values `/mcp` accepts when bound to `bound`: `STEPWISE_MCP_ALLOWED_HOSTS`
/// (comma-separated) when set; otherwise loopback names when bound to loopback, and any host
/// when bound beyond (the operator chose to expose it, and every request needs a token anyway).
pub fn allowed_hosts_from_env(bound: SocketAddr) -> Option<Vec<String>> {
    match std::env::var("STEPWISE_MCP_ALLOWED_HOSTS") {
        Ok(list) if !list.trim().is_empty() => Some(
            list.split(',')
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
        ),
        _ if bound.ip().is_loopback() => None,
        _ => Some(Vec::new()),
    }
}
