//! `/healthz` (the process is alive and serving) and `/readyz` (the database answers and every
//! crate's migrations this binary carries are applied), for load balancers and orchestrators.
//! `/readyz` answers `503` with a JSON `reason` otherwise, so traffic goes elsewhere while the
//! database is away and comes back by itself when it returns.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use stepwise_engine::migrations::SchemaMigrations;
use stepwise_engine::DbPool;

/// How long `/readyz` waits for the database before answering `503`: a probe must answer well
/// within a load balancer's timeout even when the pool cannot connect.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Every crate's migrations, in the order `app::migrate` applies them.
fn migration_sets() -> [SchemaMigrations; 3] {
    [
        stepwise_engine::store::MIGRATIONS,
        stepwise_skills::MIGRATIONS,
        stepwise_mcp::MIGRATIONS,
    ]
}

/// The routes: `GET /healthz`, `GET /readyz`.
pub fn router(pool: DbPool) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(pool)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(pool): State<DbPool>) -> Response {
    let checked = tokio::time::timeout(READY_TIMEOUT, check_ready(&pool)).await;
    let reason = match checked {
        Ok(Ok(())) => return Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(reason)) => reason,
        Err(_) => format!(
            "the database did not answer within {} s",
            READY_TIMEOUT.as_secs()
        ),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "unavailable", "reason": reason })),
    )
        .into_response()
}

/// `Ok` when the database answers and has every migration of every crate applied.
async fn check_ready(pool: &DbPool) -> Result<(), String> {
    for set in migration_sets() {
        let history = format!("{}._sqlx_migrations", set.schema());
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&history)
            .fetch_one(pool)
            .await
            .map_err(|e| format!("the database is unreachable: {e}"))?;
        if !exists {
            return Err(format!("schema `{}` is not migrated", set.schema()));
        }
        // The table name is one of ours (not input), so it is spliced, not bound.
        let applied: BTreeSet<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {history} WHERE success"))
                .fetch_all(pool)
                .await
                .map_err(|e| format!("cannot read {history}: {e}"))?
                .into_iter()
                .collect();
        let missing: Vec<String> = set
            .migrator()
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .filter(|m| !applied.contains(&m.version))
            .map(|m| m.version.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "schema `{}` lacks migrations {}",
                set.schema(),
                missing.join(", ")
            ));
        }
    }
    Ok(())
}
