//! `/metrics` over HTTP for `stepwise worker --metrics-addr`: the engine's Prometheus metrics,
//! with the queue gauges sampled from PostgreSQL on every scrape.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use stepwise_engine::{metrics, Engine};
use tokio_util::sync::CancellationToken;

/// The routes: `GET /metrics`.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(engine)
}

async fn serve_metrics(State(engine): State<Engine>) -> impl IntoResponse {
    let body = metrics::render_prometheus_with_queue(engine.store(), engine.clock().now()).await;
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], body)
}

/// Binds `addr` and serves `/metrics` until `shutdown`; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    engine: Engine,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(engine);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics served at http://{bound}/metrics");
    Ok(bound)
}
