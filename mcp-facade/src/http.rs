//! The streamable HTTP transport's routes: `/mcp` behind bearer-token authentication, and
//! `/metrics` (Prometheus text, unauthenticated like any scrape target; it carries no saga
//! data). The binary's `stepwise serve` mounts them on one server with its other endpoints.
//!
//! A request without a valid token gets `401` with `WWW-Authenticate: Bearer`; a valid token's
//! principal is attached to the request, and the MCP server reads it from there for every call.

use crate::auth::AuthError;
use crate::server::{Facade, StepwiseServer};
use crate::store::TokenStore;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::net::SocketAddr;
use std::sync::Arc;
use stepwise_engine::Registry;
use tokio_util::sync::CancellationToken;

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

/// `/mcp` behind bearer-token authentication. `allowed_hosts` are the `Host` values it
/// accepts (DNS-rebinding protection): `None` for loopback names only (rmcp's default),
/// `Some(empty)` for any. Cancelling `sessions` ends every MCP session and in-flight call, so
/// a server cancels it only after it has drained its requests.
pub fn mcp_router(
    facade: Arc<Facade>,
    allowed_hosts: Option<Vec<String>>,
    sessions: CancellationToken,
) -> Router {
    let mut config = StreamableHttpServerConfig::default();
    config.cancellation_token = sessions;
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
    Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(auth, authenticate))
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
