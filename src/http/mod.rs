//! The one HTTP server of `stepwise serve`: a router composed from parts (`/mcp`, `/metrics`,
//! `/healthz`, `/readyz`, and whatever else a command mounts), the client's address as the
//! proxy rule allows ([`proxy`]), and a graceful shutdown: stop accepting, let in-flight requests
//! finish within a grace period, then return.

pub mod health;
pub mod proxy;
pub mod stripe_webhook;

use axum::Router;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting and waits at
/// most `grace` for the requests in flight (connections still open after it are dropped).
/// `trust` decides whether `X-Forwarded-*` headers are believed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    trust: proxy::TrustProxy,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let app = proxy::layer(router, trust);
    let signal = stop.clone();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { signal.cancelled().await });
    let mut server = tokio::spawn(server.into_future());
    tokio::select! {
        served = &mut server => return joined(served),
        _ = stop.cancelled() => {}
    }
    match tokio::time::timeout(grace, &mut server).await {
        Ok(served) => joined(served),
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs_f64(),
                "requests still open after the grace period are dropped"
            );
            server.abort();
            Ok(())
        }
    }
}

fn joined(served: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    served.unwrap_or_else(|e| {
        Err(std::io::Error::other(format!(
            "the server task failed: {e}"
        )))
    })
}
