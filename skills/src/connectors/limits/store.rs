//! The SQL of the shared limits (`hotel.rate_limits`, `hotel.session_slots`).

use std::time::Duration;
use stepwise_engine::DbPool;
use uuid::Uuid;

/// Creates or updates the bucket `name`: one call per `interval`, `burst` calls at once.
pub(crate) async fn declare_rate(
    pool: &DbPool,
    name: &str,
    interval: f64,
    burst: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO hotel.rate_limits (name, interval_s, burst_s) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET interval_s = EXCLUDED.interval_s,
                                          burst_s = EXCLUDED.burst_s",
    )
    .bind(name)
    .bind(interval)
    .bind(((burst - 1.0).max(0.0)) * interval)
    .execute(pool)
    .await?;
    Ok(())
}

/// Makes `name` have exactly `sessions` slots (held ones beyond it are dropped: their release
/// finds nothing).
pub(crate) async fn declare_sessions(
    pool: &DbPool,
    name: &str,
    sessions: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO hotel.session_slots (name, slot)
         SELECT $1, s FROM generate_series(0, $2 - 1) AS s
         ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .bind(sessions)
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM hotel.session_slots WHERE name = $1 AND slot >= $2")
        .bind(name)
        .bind(sessions)
        .execute(pool)
        .await?;
    Ok(())
}

/// Reserves the next slot of every bucket in `names`, unless one of them is further out than
/// `max_wait`: `Ok(wait)` until the reserved slot is due, or `Err(wait)` (nothing reserved) with
/// how long until one would be.
pub(crate) async fn reserve(
    pool: &DbPool,
    names: &[String],
    max_wait: Duration,
) -> Result<Result<Duration, Duration>, sqlx::Error> {
    let waits: Vec<f64> = sqlx::query_scalar(
        "WITH due AS (
             SELECT coalesce(bool_and(tat - make_interval(secs => burst_s)
                                      <= clock_timestamp() + make_interval(secs => $2)), true) AS ok
               FROM hotel.rate_limits WHERE name = ANY($1))
         UPDATE hotel.rate_limits r
            SET tat = greatest(r.tat, clock_timestamp()) + make_interval(secs => r.interval_s)
           FROM due
          WHERE r.name = ANY($1) AND due.ok
         RETURNING greatest(0, extract(epoch FROM (r.tat - make_interval(secs => r.interval_s + r.burst_s)
                                                   - clock_timestamp())))::float8",
    )
    .bind(names)
    .bind(max_wait.as_secs_f64())
    .fetch_all(pool)
    .await?;
    if !waits.is_empty() || names.is_empty() {
        let wait = waits.into_iter().fold(0.0_f64, f64::max);
        return Ok(Ok(Duration::from_secs_f64(wait)));
    }
    let wait: Option<f64> = sqlx::query_scalar(
        "SELECT greatest(0, max(extract(epoch FROM (tat - make_interval(secs => burst_s)
                                                    - clock_timestamp()))))::float8
           FROM hotel.rate_limits WHERE name = ANY($1)",
    )
    .bind(names)
    .fetch_one(pool)
    .await?;
    Ok(Err(Duration::from_secs_f64(wait.unwrap_or(0.0).max(0.0))))
}

/// Takes a free (or expired) slot of `name` for `holder` until `lease` from now.
pub(crate) async fn take_slot(
    pool: &DbPool,
    name: &str,
    holder: Uuid,
    lease: Duration,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE hotel.session_slots s
            SET holder = $2, expires_at = clock_timestamp() + make_interval(secs => $3)
          WHERE (s.name, s.slot) = (
                SELECT name, slot FROM hotel.session_slots
                 WHERE name = $1 AND (holder IS NULL OR expires_at < clock_timestamp())
                 ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING s.slot",
    )
    .bind(name)
    .bind(holder)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Gives a slot back (if `holder` still has it).
pub(crate) async fn release_slot(
    pool: &DbPool,
    name: &str,
    slot: i32,
    holder: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE hotel.session_slots SET holder = NULL, expires_at = NULL
          WHERE name = $1 AND slot = $2 AND holder = $3",
    )
    .bind(name)
    .bind(slot)
    .bind(holder)
    .execute(pool)
    .await?;
    Ok(())
}
