//! Room holds in our own PostgreSQL (`hotel.room_holds`): the exclusion constraint on room and
//! date range is what makes double booking impossible, whatever the CRM says and however many
//! bookings race. A hold is taken under a step's idempotency key, so a re-run step finds its
//! own hold instead of colliding with it.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::types::PgRange;
use std::ops::Bound;
use stepwise_engine::DbPool;
use stepwise_engine::{PgStore, SagaStatus, StepError};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Holds {
    pool: DbPool,
    /// The engine's store, asked for the status of the sagas that took holds (the engine's
    /// tables are its own).
    sagas: PgStore,
}

/// One hold to take.
#[derive(Debug, Clone)]
pub struct NewHold<'a> {
    pub hold_key: &'a str,
    pub booking_ref: &'a str,
    pub room_number: &'a str,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub saga_id: Uuid,
}

const EXCLUSION_VIOLATION: &str = "23P01";

impl Holds {
    pub fn new(pool: impl Into<DbPool>) -> Self {
        let pool = pool.into();
        Self {
            sagas: PgStore::new(pool.clone()),
            pool,
        }
    }

    /// Holds the room for `[from, to)`; `room_unavailable` (permanent) when another live hold
    /// overlaps.
    pub async fn take(&self, hold: &NewHold<'_>) -> Result<(), StepError> {
        let nights = PgRange {
            start: Bound::Included(hold.from),
            end: Bound::Excluded(hold.to),
        };
        let result = sqlx::query(
            "INSERT INTO hotel.room_holds (hold_key, booking_ref, room_number, nights, saga_id)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (hold_key) DO UPDATE SET released_at = NULL
             WHERE hotel.room_holds.released_at IS NOT NULL",
        )
        .bind(hold.hold_key)
        .bind(hold.booking_ref)
        .bind(hold.room_number)
        .bind(nights)
        .bind(hold.saga_id)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(EXCLUSION_VIOLATION) => {
                Err(StepError::permanent(
                    "room_unavailable",
                    format!(
                        "room {} is already booked for some of the nights {} to {}",
                        hold.room_number, hold.from, hold.to
                    ),
                )
                .with_action("Pick other dates or another room (search_rooms lists them)"))
            }
            Err(e) => Err(database_error(e)),
        }
    }

    /// Releases the hold taken under `hold_key` (no-op when absent or already released).
    pub async fn release(&self, hold_key: &str) -> Result<u64, StepError> {
        sqlx::query(
            "UPDATE hotel.room_holds SET released_at = now()
             WHERE hold_key = $1 AND released_at IS NULL",
        )
        .bind(hold_key)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(database_error)
    }

    /// Releases every live hold of a booking, except those of room `keep_room`. Returns the
    /// release time (the same for every hold released here), for [`Holds::restore_booking`].
    /// `except_key` spares the hold a re-run step took itself.
    pub async fn release_booking(
        &self,
        booking_ref: &str,
        keep_room: Option<&str>,
        except_key: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, StepError> {
        let released: Vec<(DateTime<Utc>,)> = sqlx::query_as(
            "UPDATE hotel.room_holds SET released_at = now()
             WHERE booking_ref = $1 AND released_at IS NULL
               AND ($2::text IS NULL OR room_number <> $2)
               AND ($3::text IS NULL OR hold_key <> $3)
             RETURNING released_at",
        )
        .bind(booking_ref)
        .bind(keep_room)
        .bind(except_key)
        .fetch_all(&self.pool)
        .await
        .map_err(database_error)?;
        Ok(released.first().map(|(at,)| *at))
    }

    /// Re-takes the holds of a booking that [`Holds::release_booking`] released at `at` (a
    /// compensation); `room_unavailable` if someone took the nights in between.
    pub async fn restore_booking(
        &self,
        booking_ref: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StepError> {
        let result = sqlx::query(
            "UPDATE hotel.room_holds SET released_at = NULL
             WHERE booking_ref = $1 AND released_at = $2",
        )
        .bind(booking_ref)
        .bind(at)
        .execute(&self.pool)
        .await;
        match result {
            Ok(r) => Ok(r.rows_affected()),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(EXCLUSION_VIOLATION) => {
                Err(StepError::permanent(
                    "room_unavailable",
                    "the room was booked by someone else in the meantime",
                ))
            }
            Err(e) => Err(database_error(e)),
        }
    }

    /// Live holds overlapping `hold` whose saga has ended (completed): candidates for
    /// reconciliation with the CRM. Holds of sagas still running are never candidates.
    pub async fn settled_conflicts(
        &self,
        hold: &NewHold<'_>,
    ) -> Result<Vec<(i64, String)>, StepError> {
        let nights = PgRange {
            start: Bound::Included(hold.from),
            end: Bound::Excluded(hold.to),
        };
        let overlapping: Vec<(i64, String, Uuid)> = sqlx::query_as(
            "SELECT id, booking_ref, saga_id FROM hotel.room_holds
             WHERE room_number = $1 AND nights && $2 AND released_at IS NULL",
        )
        .bind(hold.room_number)
        .bind(nights)
        .fetch_all(&self.pool)
        .await
        .map_err(database_error)?;
        let saga_ids: Vec<Uuid> = overlapping.iter().map(|(_, _, saga)| *saga).collect();
        let statuses = self.sagas.saga_statuses(&saga_ids).await.map_err(|e| {
            StepError::retryable("database_unavailable", format!("room holds: {e}"))
        })?;
        Ok(overlapping
            .into_iter()
            .filter(|(_, _, saga)| statuses.get(saga) == Some(&SagaStatus::Completed))
            .map(|(id, booking_ref, _)| (id, booking_ref))
            .collect())
    }

    /// Rooms with a live hold on some of the nights `[from, to)` that still counts: one whose
    /// saga has not completed. A completed saga's holds are settled in the CRM (its booking is
    /// live there, or the hold is stale and the next booking releases it), so availability asks
    /// the CRM about those.
    pub async fn rooms_held(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<String>, StepError> {
        let nights = PgRange {
            start: Bound::Included(from),
            end: Bound::Excluded(to),
        };
        let held: Vec<(String, Uuid)> = sqlx::query_as(
            "SELECT room_number, saga_id FROM hotel.room_holds
             WHERE nights && $1 AND released_at IS NULL",
        )
        .bind(nights)
        .fetch_all(&self.pool)
        .await
        .map_err(database_error)?;
        let saga_ids: Vec<Uuid> = held.iter().map(|(_, saga)| *saga).collect();
        let statuses = self.sagas.saga_statuses(&saga_ids).await.map_err(|e| {
            StepError::retryable("database_unavailable", format!("room holds: {e}"))
        })?;
        Ok(held
            .into_iter()
            .filter(|(_, saga)| statuses.get(saga) != Some(&SagaStatus::Completed))
            .map(|(room, _)| room)
            .collect())
    }

    /// Releases one hold by id (reconciliation of a hold whose booking is gone).
    pub async fn release_id(&self, id: i64) -> Result<(), StepError> {
        sqlx::query(
            "UPDATE hotel.room_holds SET released_at = now() WHERE id = $1 AND released_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(database_error)
    }

    /// Live holds of a room (for tests and diagnostics): `(booking_ref, from, to)`.
    pub async fn live(
        &self,
        room_number: &str,
    ) -> Result<Vec<(String, NaiveDate, NaiveDate)>, StepError> {
        let rows: Vec<(String, PgRange<NaiveDate>)> = sqlx::query_as(
            "SELECT booking_ref, nights FROM hotel.room_holds
             WHERE room_number = $1 AND released_at IS NULL ORDER BY nights",
        )
        .bind(room_number)
        .fetch_all(&self.pool)
        .await
        .map_err(database_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|(booking, range)| match (range.start, range.end) {
                (Bound::Included(from), Bound::Excluded(to)) => Some((booking, from, to)),
                _ => None,
            })
            .collect())
    }
}

fn database_error(error: sqlx::Error) -> StepError {
    StepError::retryable("database_unavailable", format!("room holds: {error}"))
}
