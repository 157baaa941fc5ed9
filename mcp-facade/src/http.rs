//! The streamable HTTP transport's routes: `/mcp` behind bearer-token authentication, and
//! `/metrics` (Prometheus text, unauthenticated like any scrape target; it carries no saga
//! data). The binary's `stepwise serve` mounts them on one server with its other endpoints.
//!
//! A request needs a bearer token: a static token (`swt_...`, [`TokenStore`]) or, when
//! `STEPWISE_OAUTH_ISSUER` is set, an OAuth access token ([`crate::oauth`]). Without a valid
//! one it gets `401` with `WWW-Authenticate: Bearer resource_metadata="..."` (the RFC 9728
//! document at `/.well-known/oauth-protected-resource/mcp`, [`metadata_router`]); an OAuth
//! caller calling a tool its role may not call gets `403` with `error="insufficient_scope"` and
//! the scopes that would do; a principal of another region than `STEPWISE_REGION` gets `403
//! wrong_region` ([`crate::residency`]). A valid token's principal is attached to the request,
//! and the MCP server reads it from there for every call.
//!
//! Three limits guard `/mcp` ([`Limits`], docs/mcp.md, Configuration): a principal over
//! `STEPWISE_MCP_RATE_PER_SECOND` requests per second (after a burst of
//! `STEPWISE_MCP_RATE_BURST`) gets `429` with `Retry-After`; a request body larger
//! than `STEPWISE_MCP_MAX_BODY_BYTES` gets `413` (by its `Content-Length` before anything else
//! is done, or while it is read), a body cut off before its end `400`, and a principal with `STEPWISE_MCP_MAX_IN_FLIGHT` POSTs already
//! in flight gets `429` with `Retry-After` for one more (a POST is in flight until its answer,
//! streamed or not, has been sent or dropped).

use crate::auth::{AuthError, Principal, TOKEN_PREFIX};
use crate::oauth::{OAuth, OAuthConfig, TokenError, WELL_KNOWN};
use crate::residency::{Credential, Residency};
use crate::server::{Facade, StepwiseServer};
use crate::store::{PgSessionStore, TokenCheck, TokenStore};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::SessionManager;
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

/// Default of `STEPWISE_MCP_RATE_PER_SECOND`: requests one principal may make per second,
/// sustained, on one facade.
pub const DEFAULT_RATE_PER_SECOND: u32 = 20;
/// Default of `STEPWISE_MCP_RATE_BURST`: requests one principal may make at once after a pause.
pub const DEFAULT_RATE_BURST: u32 = 40;

/// The limits on `/mcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// POSTs one principal may have in flight at once.
    pub max_in_flight: usize,
    /// Requests per second one principal may make, sustained (`0`: no rate limit).
    pub rate_per_second: u32,
    /// Requests one principal may make at once after a pause.
    pub rate_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            rate_per_second: DEFAULT_RATE_PER_SECOND,
            rate_burst: DEFAULT_RATE_BURST,
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
        let rate_per_second = match std::env::var("STEPWISE_MCP_RATE_PER_SECOND") {
            Ok(text) if !text.trim().is_empty() => text.trim().parse::<u32>().map_err(|_| {
                format!(
                    "STEPWISE_MCP_RATE_PER_SECOND must be a whole number (0: no limit), not `{text}`"
                )
            })?,
            _ => DEFAULT_RATE_PER_SECOND,
        };
        let rate_burst = positive("STEPWISE_MCP_RATE_BURST", DEFAULT_RATE_BURST as usize)?;
        Ok(Self {
            max_body_bytes: positive("STEPWISE_MCP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?,
            max_in_flight: positive("STEPWISE_MCP_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT)?,
            rate_per_second,
            rate_burst: u32::try_from(rate_burst)
                .map_err(|_| "STEPWISE_MCP_RATE_BURST is too large".to_string())?,
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

/// Requests per principal per second ([`Limits::rate_per_second`], with a burst), by the GCRA
/// of the `governor` crate; per process (a fleet of N facades allows N times as much).
#[derive(Clone)]
struct Rate {
    limiter: Option<Arc<governor::DefaultKeyedRateLimiter<String>>>,
    checks: Arc<std::sync::atomic::AtomicU64>,
}

impl Rate {
    fn new(limits: &Limits) -> Self {
        let limiter = std::num::NonZeroU32::new(limits.rate_per_second).map(|per_second| {
            let burst = std::num::NonZeroU32::new(limits.rate_burst).unwrap_or(per_second);
            Arc::new(governor::RateLimiter::keyed(
                governor::Quota::per_second(per_second).allow_burst(burst),
            ))
        });
        Self {
            limiter,
            checks: Arc::default(),
        }
    }

    /// `None` when `principal` may go on; otherwise how long it must wait.
    fn check(&self, principal: &str) -> Option<std::time::Duration> {
        use governor::clock::{Clock, DefaultClock};
        let limiter = self.limiter.as_ref()?;
        // Forget principals that have been quiet long enough to be back at a full burst.
        if self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            limiter.retain_recent();
        }
        match limiter.check_key(&principal.to_string()) {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(DefaultClock::default().now())),
        }
    }
}

/// `429` with `Retry-After` when the principal is over its rate ([`Rate`]).
async fn limit_rate(State(rate): State<Rate>, request: Request, next: Next) -> Response {
    let Some(principal) = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.to_string())
    else {
        return next.run(request).await;
    };
    let Some(wait) = rate.check(&principal) else {
        return next.run(request).await;
    };
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    tracing::warn!(%principal, retry_after = seconds, "refused a request over the rate limit");
    let mut response = limit_error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "{principal} is over this server's rate limit for one caller \
             (STEPWISE_MCP_RATE_PER_SECOND, STEPWISE_MCP_RATE_BURST); retry after {seconds} s"
        ),
    );
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
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
    State(state): State<(InFlight, Limits, Arc<Facade>, HttpAuth, PgSessionStore)>,
    request: Request,
    next: Next,
) -> Response {
    let (in_flight, limits, facade, auth, sessions) = state;
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
    if let Some(principal) = parts.extensions.get::<Principal>() {
        if let Some(refused) = scope_needed(&facade, &auth, principal, &bytes) {
            return refused;
        }
    }
    if let Some(session) = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        if let Some(answer) = client_answer(&bytes) {
            return relay_answer(&sessions, session, &answer).await;
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

/// How `/mcp` authenticates: static tokens always, OAuth access tokens when configured, and
/// the deployment's region (docs/mcp.md, "OAuth" and "Data residency").
#[derive(Debug, Clone, Default)]
pub struct HttpAuth {
    pub oauth: Option<Arc<OAuth>>,
    pub residency: Residency,
}

impl HttpAuth {
    /// From `STEPWISE_OAUTH_*` and `STEPWISE_REGION`; an error names the variable.
    pub fn from_env() -> Result<Self, String> {
        let oauth = match OAuthConfig::from_env().map_err(|e| e.to_string())? {
            Some(config) => Some(Arc::new(OAuth::new(config).map_err(|e| e.to_string())?)),
            None => None,
        };
        Ok(Self {
            oauth,
            residency: Residency::from_env()?,
        })
    }
}

#[derive(Clone)]
struct AuthState {
    tokens: TokenStore,
    catalog: Arc<Registry>,
    auth: HttpAuth,
}

/// A `WWW-Authenticate: Bearer` challenge: the metadata URL when OAuth is configured (the
/// MCP authorization spec's discovery), an error code and description when a token was sent.
fn challenge(auth: &HttpAuth, error: Option<(&str, &str)>, scope: Option<&str>) -> String {
    let mut params = Vec::new();
    match &auth.oauth {
        Some(oauth) => params.push(format!(
            "resource_metadata=\"{}\"",
            oauth.config().metadata_url()
        )),
        None => params.push("realm=\"stepwise\"".to_string()),
    }
    if let Some((code, description)) = error {
        params.push(format!("error=\"{code}\""));
        params.push(format!(
            "error_description=\"{}\"",
            description.replace(['"', '\\'], "'")
        ));
    }
    if let Some(scope) = scope {
        params.push(format!("scope=\"{scope}\""));
    }
    format!("Bearer {}", params.join(", "))
}

fn with_challenge(mut response: Response, challenge: String) -> Response {
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// `401`: no token (a bare challenge, RFC 6750 section 3.1), or an invalid one
/// (`invalid_token` with why).
fn unauthorized(auth: &HttpAuth, description: &str, token_sent: bool) -> Response {
    let how = if auth.oauth.is_some() {
        "send `Authorization: Bearer <access token>` from the authorization server named by \
         the resource metadata in WWW-Authenticate, or a static token"
    } else {
        "send `Authorization: Bearer <token>` (create one with `stepwise tokens create --role \
         ROLE --subject SUBJECT`)"
    };
    let response = limit_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("{description}: {how}"),
    );
    let error = token_sent.then_some(("invalid_token", description));
    with_challenge(response, challenge(auth, error, None))
}

/// `403 insufficient_scope` naming the scopes (space-separated) that would do.
fn insufficient_scope(auth: &HttpAuth, scopes: &[String], description: &str) -> Response {
    let scope = scopes.join(" ");
    let response = (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "error": "insufficient_scope",
            "message": description,
            "scope": scope,
        })
        .to_string(),
    )
        .into_response();
    with_challenge(
        response,
        challenge(
            auth,
            Some(("insufficient_scope", description)),
            Some(&scope),
        ),
    )
}

fn bearer_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// How much of a refused request's body is read (for at most a second) before answering: a
/// client that sent a small body (a JSON-RPC message) keeps its connection; an unread body would
/// make the server close it under a client about to reuse it.
const REFUSED_BODY_DRAIN: usize = 64 * 1024;

/// Authenticates (see [`authenticate_request`]); a refused request's small body is read first,
/// so the refusal arrives on a connection that stays usable.
async fn authenticate(State(state): State<AuthState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match check_request(&state, &parts.headers).await {
        Ok((principal, credential)) => {
            let mut request = Request::from_parts(parts, body);
            request.extensions_mut().insert(principal);
            request.extensions_mut().insert(credential);
            next.run(request).await
        }
        Err(refusal) => {
            let drain = axum::body::to_bytes(body, REFUSED_BODY_DRAIN);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
            refusal
        }
    }
}

/// The request's principal and how it was authenticated, or the refusal to answer.
async fn check_request(
    state: &AuthState,
    headers: &axum::http::HeaderMap,
) -> Result<(Principal, Credential), Response> {
    let auth = &state.auth;
    let Some(token) = bearer_token(headers) else {
        return Err(unauthorized(auth, "a bearer token is required", false));
    };
    let (principal, region, credential) = match (&auth.oauth, token.starts_with(TOKEN_PREFIX)) {
        (Some(oauth), false) => match oauth.validate(&token, &state.catalog).await {
            Ok(grant) => (grant.principal, grant.region, Credential::OAuth),
            Err(TokenError::Invalid(why)) => {
                tracing::info!(reason = %why, "refused an access token");
                return Err(unauthorized(auth, &why, true));
            }
            Err(TokenError::InsufficientScope {
                scopes,
                description,
            }) => return Err(insufficient_scope(auth, &scopes, &description)),
            Err(TokenError::Unavailable(why)) => {
                return Err(limit_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    why,
                ));
            }
        },
        _ => match state.tokens.check(&token, &state.catalog).await {
            Ok(TokenCheck::Valid { principal, region }) => {
                (principal, region, Credential::StaticToken)
            }
            Ok(TokenCheck::Unknown) => {
                return Err(unauthorized(auth, "the token is unknown", true));
            }
            Ok(TokenCheck::Revoked) => {
                return Err(unauthorized(auth, "the token has been revoked", true));
            }
            Ok(TokenCheck::Expired) => {
                return Err(unauthorized(auth, "the token has expired", true));
            }
            // A token made for a role this server's catalog does not declare (any more).
            Err(e @ AuthError::UnknownRole { .. }) => {
                tracing::warn!(error = %e, "refused a token whose role is not declared");
                return Err(unauthorized(
                    auth,
                    "the token's role is not known to this server",
                    true,
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "could not check a bearer token");
                return Err(limit_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "could not check the token just now; try again".to_string(),
                ));
            }
        },
    };
    if let Err(why) = auth.residency.admits(region.as_deref(), credential) {
        tracing::warn!(%principal, region = ?region, "refused a principal of another region");
        return Err(limit_error(StatusCode::FORBIDDEN, "wrong_region", why));
    }
    Ok((principal, credential))
}

/// The tools a JSON-RPC body calls (`tools/call`, one message or a batch).
fn called_tools(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let messages = match value {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    messages
        .iter()
        .filter(|m| m.get("method").and_then(|v| v.as_str()) == Some("tools/call"))
        .filter_map(|m| m.pointer("/params/name").and_then(|v| v.as_str()))
        .map(str::to_string)
        .collect()
}

/// For an OAuth caller, `403 insufficient_scope` when the body calls a tool its role may not
/// call but another role may: the MCP authorization spec's step-up, naming the scopes that
/// would do. Unknown tools and static tokens are left to the tool's own error.
fn scope_needed(
    facade: &Facade,
    auth: &HttpAuth,
    principal: &Principal,
    body: &[u8],
) -> Option<Response> {
    let oauth = auth.oauth.as_ref()?;
    for tool in called_tools(body) {
        if facade.catalog().allows(&tool, principal.role()) != Some(false) {
            continue;
        }
        let scopes: Vec<String> = facade
            .catalog()
            .roles_for(&tool)
            .iter()
            .map(|role| oauth.config().scope_for(role))
            .collect();
        if scopes.is_empty() {
            continue;
        }
        let description = format!(
            "{principal} may not call `{tool}`: it needs one of the scopes {}",
            scopes.join(", ")
        );
        return Some(insufficient_scope(auth, &scopes, &description));
    }
    None
}

/// A client's answer to a server request: a JSON-RPC response or error (an `id` with `result`
/// or `error`, no `method`).
fn client_answer(body: &[u8]) -> Option<serde_json::Value> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let is_answer = value.get("method").is_none()
        && value.get("id").is_some()
        && (value.get("result").is_some() || value.get("error").is_some());
    is_answer.then_some(value)
}

/// Relays a client's answer in session `session` to whichever facade sent the request it
/// answers (that facade's call is waiting for it; the load balancer may have sent the answer
/// elsewhere): kept in PostgreSQL and announced, then `202 Accepted` as for any answer.
async fn relay_answer(
    store: &PgSessionStore,
    session: &str,
    answer: &serde_json::Value,
) -> Response {
    match store.relay_answer(session, answer).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not relay a client's answer");
            limit_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "could not take the answer just now; send it again".to_string(),
            )
        }
    }
}

/// Delivers relayed answers to the sessions this process holds, until `stop`.
async fn deliver_relayed_answers(
    store: PgSessionStore,
    manager: Arc<LocalSessionManager>,
    stop: CancellationToken,
) {
    loop {
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            listener = store.listen() => match listener {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for relayed MCP answers; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        loop {
            let notification = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.recv() => n,
            };
            let Ok(notification) = notification else {
                break;
            };
            let Ok(id) = notification.payload().parse::<i64>() else {
                continue;
            };
            let (session, message) = match store.answer(id).await {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read a relayed MCP answer");
                    continue;
                }
            };
            let session: Arc<str> = session.into();
            if !manager.has_session(&session).await.unwrap_or(false) {
                continue;
            }
            match serde_json::from_value::<ClientJsonRpcMessage>(message) {
                Ok(message) => {
                    if let Err(e) = manager.accept_message(&session, message).await {
                        tracing::info!(error = %e, "a relayed MCP answer found no request");
                    }
                }
                Err(e) => tracing::info!(error = %e, "a relayed MCP answer is malformed"),
            }
        }
    }
}

/// `GET /.well-known/oauth-protected-resource[/path]`: the RFC 9728 metadata, when OAuth is
/// configured (`404` otherwise: static tokens need no discovery).
async fn resource_metadata(State(state): State<(HttpAuth, Arc<Registry>)>) -> Response {
    let (auth, catalog) = state;
    match &auth.oauth {
        Some(oauth) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            oauth.config().metadata(&catalog).to_string(),
        )
            .into_response(),
        None => limit_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this server is not configured for OAuth (STEPWISE_OAUTH_ISSUER is unset); use a \
             static token"
                .to_string(),
        ),
    }
}

/// The protected-resource metadata routes: the bare well-known path and the path for the
/// resource `/mcp` (RFC 9728 section 3.1).
pub fn metadata_router(facade: &Facade, auth: HttpAuth) -> Router {
    Router::new()
        .route(WELL_KNOWN, get(resource_metadata))
        .route(&format!("{WELL_KNOWN}/mcp"), get(resource_metadata))
        .with_state((auth, facade.engine().registry().clone()))
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
    auth: HttpAuth,
) -> Router {
    let mut config = StreamableHttpServerConfig::default();
    config.cancellation_token = sessions;
    config.max_request_body_bytes = limits.max_body_bytes;
    match allowed_hosts {
        Some(hosts) if hosts.is_empty() => config = config.disable_allowed_hosts(),
        Some(hosts) => config = config.with_allowed_hosts(hosts),
        None => {}
    }
    // Sessions live in PostgreSQL, so any facade of a fleet restores one another began.
    let store = PgSessionStore::new(facade.engine().store().clone());
    config.session_store = Some(Arc::new(store.clone()));
    let manager = Arc::new(LocalSessionManager::default());
    tokio::spawn(deliver_relayed_answers(
        store.clone(),
        manager.clone(),
        config.cancellation_token.clone(),
    ));
    let for_sessions = facade.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(StepwiseServer::per_request(for_sessions.clone())),
        manager,
        config,
    );
    let auth_state = AuthState {
        tokens: TokenStore::new(facade.engine().store().pool().clone()),
        catalog: facade.engine().registry().clone(),
        auth: auth.clone(),
    };
    let in_flight = InFlight {
        max: limits.max_in_flight,
        counts: Arc::default(),
    };
    // The last layer added runs first: the body's size, then the token, then the rate, then
    // the count.
    Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(
            (in_flight, limits, facade.clone(), auth, store),
            limit_in_flight,
        ))
        .layer(middleware::from_fn_with_state(
            Rate::new(&limits),
            limit_rate,
        ))
        .layer(middleware::from_fn_with_state(auth_state, authenticate))
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
