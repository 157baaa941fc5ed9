//! A step's room hold (in our own database, see `hotel::holds`) and its release. Two recorded
//! shapes exist: a plain hold (`extend_stay`, `upgrade_room`) and a booking's hold that may
//! have released the booking's earlier holds (`create_booking`, `manage_booking`).

use crate::hotel::{recorded, Hotel};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{StepContext, StepError};

/// A hold taken under the step's idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HoldTaken {
    pub hold_key: String,
}

/// Undoes a step that recorded a [`HoldTaken`].
pub(crate) async fn release(
    hotel: Arc<Hotel>,
    _ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let taken: HoldTaken = recorded(output)?;
    let released = hotel.holds.release(&taken.hold_key).await?;
    Ok(json!({"released_hold": taken.hold_key, "released": released}))
}

/// A booking's hold, and when taking it released the booking's earlier holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Held {
    pub hold_key: String,
    pub booking_ref: String,
    /// When this step released the booking's earlier holds (restored by its compensation).
    #[serde(default)]
    pub released_earlier_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Undoes a step that recorded a [`Held`]: releases the hold and restores the earlier ones.
pub(crate) async fn release_hold(
    hotel: Arc<Hotel>,
    _ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let held: Held = recorded(output)?;
    let released = hotel.holds.release(&held.hold_key).await?;
    let restored = match held.released_earlier_at {
        Some(at) => hotel.holds.restore_booking(&held.booking_ref, at).await?,
        None => 0,
    };
    Ok(
        json!({"released_hold": held.hold_key, "released": released, "restored_earlier_holds": restored}),
    )
}
