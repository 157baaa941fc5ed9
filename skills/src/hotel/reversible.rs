//! The shape most status changes of the hotel skills share: a step reads the record its saga's
//! first step recorded, writes new values to it, and its undo writes the recorded values back.

use super::records::{Booking, Room, BOOKING, ROOM};
use super::{ext, step, undo, Hotel};
use chrono::NaiveDate;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use stepwise_engine::{Step, StepContext, StepError};

/// One reversible write to a CRM record. Both directions come from a step's recorded output,
/// never from re-reading the CRM: a re-run, or the undo, would read what the step wrote itself.
pub(crate) struct Change {
    object: &'static str,
    id: String,
    /// How the outputs name the record id (`booking_id`, `room_id`) and the field they report
    /// (`status`, `check_out_date`), and which of the written fields that is.
    id_label: &'static str,
    label: &'static str,
    field: &'static str,
    to: Value,
    back: Value,
}

impl Change {
    /// A booking's status to `to`; undone to `back`.
    pub fn booking_status(booking: &Booking, to: &str, back: &str) -> Self {
        Self {
            object: BOOKING,
            id: booking.id.clone(),
            id_label: "booking_id",
            label: "status",
            field: "Status__c",
            to: json!({"Status__c": to}),
            back: json!({"Status__c": back}),
        }
    }

    /// A booking's departure day to `to`; undone to the recorded one.
    pub fn check_out_date(booking: &Booking, to: NaiveDate) -> Self {
        Self {
            object: BOOKING,
            id: booking.id.clone(),
            id_label: "booking_id",
            label: "check_out_date",
            field: "Check_Out_Date__c",
            to: json!({"Check_Out_Date__c": to}),
            back: json!({"Check_Out_Date__c": booking.check_out}),
        }
    }

    /// A room's status and current guest; undone to the recorded ones.
    pub fn room(room: &Room, status: &str, guest: Option<&str>) -> Self {
        Self {
            object: ROOM,
            id: room.id.clone(),
            id_label: "room_id",
            label: "status",
            field: "Status__c",
            to: json!({"Status__c": status, "Current_Guest__c": guest}),
            back: json!({"Status__c": room.status, "Current_Guest__c": room.current_guest}),
        }
    }

    async fn apply(&self, hotel: &Hotel) -> Result<Value, StepError> {
        self.write(hotel, &self.to).await
    }

    async fn revert(&self, hotel: &Hotel) -> Result<Value, StepError> {
        self.write(hotel, &self.back).await
    }

    async fn write(&self, hotel: &Hotel, fields: &Value) -> Result<Value, StepError> {
        hotel
            .connectors
            .crm
            .update(self.object, &self.id, fields)
            .await
            .map_err(ext)?;
        Ok(self.answer(fields))
    }

    /// What the step (or its undo) answers: `{"<id_label>": id, "<label>": value written}`.
    fn answer(&self, fields: &Value) -> Value {
        let mut output = Map::new();
        output.insert(self.id_label.into(), Value::String(self.id.clone()));
        output.insert(
            self.label.into(),
            fields.get(self.field).cloned().unwrap_or(Value::Null),
        );
        Value::Object(output)
    }
}

/// A step named `name` that applies the change `plan` reads from the saga's recorded outputs,
/// with a compensation that reverts it. The plan runs again in the compensation, so both
/// directions see the same recorded values.
pub(crate) fn reversible<F>(hotel: &Arc<Hotel>, name: &'static str, plan: F) -> Step
where
    F: Fn(&StepContext) -> Result<Change, StepError> + Send + Sync + 'static,
{
    let plan = Arc::new(plan);
    let undo_plan = plan.clone();
    undo(
        step(hotel, name, move |hotel, ctx| {
            let change = plan(&ctx);
            async move { change?.apply(&hotel).await }
        }),
        hotel,
        move |hotel, ctx, _| {
            let change = undo_plan(&ctx);
            async move { change?.revert(&hotel).await }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking() -> Booking {
        serde_json::from_value(json!({
            "Id": "a01", "Name": "BK-1", "Guest__c": "c01", "Hotel_Room__c": "r01",
            "Check_In_Date__c": "2026-01-10", "Check_Out_Date__c": "2026-01-12",
            "Status__c": "Reserved",
        }))
        .expect("a booking record")
    }

    fn room() -> Room {
        serde_json::from_value(json!({
            "Id": "r01", "Name": "101", "Status__c": "Vacant", "Current_Guest__c": null,
        }))
        .expect("a room record")
    }

    // The step outputs are recorded with every saga: these are the shapes the hand-written
    // steps answered before the builder.
    #[test]
    fn answers_keep_the_recorded_shapes() {
        let status = Change::booking_status(&booking(), "Checked In", "Reserved");
        assert_eq!(
            status.answer(&status.to),
            json!({"booking_id": "a01", "status": "Checked In"})
        );
        assert_eq!(
            status.answer(&status.back),
            json!({"booking_id": "a01", "status": "Reserved"})
        );

        let date = "2026-01-14".parse().expect("a date");
        let extend = Change::check_out_date(&booking(), date);
        assert_eq!(extend.to, json!({"Check_Out_Date__c": "2026-01-14"}));
        assert_eq!(
            extend.answer(&extend.back),
            json!({"booking_id": "a01", "check_out_date": "2026-01-12"})
        );

        let occupy = Change::room(&room(), "Occupied", Some("c01"));
        assert_eq!(
            occupy.to,
            json!({"Status__c": "Occupied", "Current_Guest__c": "c01"})
        );
        assert_eq!(
            occupy.back,
            json!({"Status__c": "Vacant", "Current_Guest__c": null})
        );
        assert_eq!(
            occupy.answer(&occupy.to),
            json!({"room_id": "r01", "status": "Occupied"})
        );
    }
}
