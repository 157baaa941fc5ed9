//! `create_booking`: holds the room, finds or creates the guest, opens the opportunity and the
//! booking, takes an optional deposit and texts a confirmation.

use crate::hotel::effects::crm::create_contact;
use crate::hotel::effects::payments::{
    charge, mark_payment_refunded, record_payment, refund, undo_possible_charge,
};
use crate::hotel::effects::room_holds::{release_hold, Held};
use crate::hotel::effects::sms::text_guest;
use crate::hotel::holds::NewHold;
use crate::hotel::records::{
    self, booking_status, room_status, Booking, ContactType, Room, BOOKING, OPPORTUNITY,
};
use crate::hotel::{
    exposure, ext, input, possibly_created, record_key, recorded, step, undo, Hotel,
};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

/// Input of `create_booking`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBookingInput {
    /// The guest's email; the guest is created if unknown.
    pub guest_email: String,
    pub guest_first_name: String,
    pub guest_last_name: String,
    /// The room to book, e.g. "204" (see search_rooms).
    pub room_number: String,
    /// First night, YYYY-MM-DD.
    pub check_in_date: NaiveDate,
    /// Departure day, YYYY-MM-DD (after check_in_date).
    pub check_out_date: NaiveDate,
    /// E.164 phone number for the confirmation text.
    #[serde(default)]
    pub guest_phone: Option<String>,
    #[serde(default)]
    pub number_of_guests: Option<u32>,
    #[serde(default)]
    pub special_requests: Option<String>,
    /// A payment method token (pm_...) to take a deposit of one night.
    #[serde(default)]
    pub payment_method_id: Option<String>,
    /// Makes a repeated call return the same booking instead of booking twice.
    pub idempotency_key: String,
}

impl SkillInput for CreateBookingInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("guest_email", &self.guest_email),
            input::person_name("guest_first_name", &self.guest_first_name),
            input::person_name("guest_last_name", &self.guest_last_name),
            input::room_number("room_number", &self.room_number),
            input::stay(self.check_in_date, self.check_out_date).map(|_| ()),
            self.guest_phone
                .as_deref()
                .map_or(Ok(()), |p| input::phone("guest_phone", p)),
            self.special_requests
                .as_deref()
                .map_or(Ok(()), |t| input::text("special_requests", t, 1000)),
            self.payment_method_id
                .as_deref()
                .map_or(Ok(()), |p| input::payment_method("payment_method_id", p)),
            match self.number_of_guests {
                Some(0) | Some(11..) => {
                    Err(InputError::field("number_of_guests", "must be 1 to 10"))
                }
                _ => Ok(()),
            },
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CreateBookingOutput {
    pub booking_number: String,
    pub booking_id: String,
    pub room_number: String,
    pub room_type: String,
    pub floor: i64,
    pub check_in_date: NaiveDate,
    pub check_out_date: NaiveDate,
    pub total_nights: i64,
    /// Nights x nightly rate, in cents.
    pub total_amount: i64,
    pub guest_email: String,
    pub guest_id: String,
    pub status: String,
    /// The deposit's payment intent, when one was taken.
    pub deposit_payment_intent_id: Option<String>,
    pub deposit_amount: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoomChecked {
    room: Room,
    nights: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuestRecord {
    contact_id: String,
    created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpportunityRecord {
    opportunity_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BookingRecord {
    booking_id: String,
    booking_number: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposit {
    payment_intent_id: Option<String>,
    amount: i64,
}

/// The CRM external id of the booking a `create_booking` saga creates (also the key of its
/// room holds).
fn booking_ref(ctx: &StepContext) -> String {
    crate::connectors::external_id(&format!("{}/create_booking_record", ctx.saga_id))
}

pub fn create_booking(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<CreateBookingInput>(
        "create_booking",
        2,
        "Books a room for a guest (creating the guest if new) with an optional one-night \
         deposit, never double-booking a room; on failure it refunds the deposit, cancels the \
         booking and releases the room.",
    )
    .exposure(exposure::guest_self_staff_manager())
    .output::<CreateBookingOutput>()
    .step(step(hotel, "check_room", check_room))
    .step(undo(
        step(hotel, "hold_room", hold_room),
        hotel,
        release_hold,
    ))
    .step(step(hotel, "find_or_create_guest", find_or_create_guest))
    .step(undo(
        step(hotel, "create_opportunity", create_opportunity),
        hotel,
        lose_opportunity,
    ))
    .step(undo(
        step(hotel, "create_booking_record", create_booking_record),
        hotel,
        cancel_booking_record,
    ))
    .step(undo(
        step(hotel, "take_deposit", take_deposit),
        hotel,
        refund_deposit,
    ))
    // Its own step: if recording failed after the charge, the charge step has succeeded and
    // its compensation refunds it.
    .step(undo(
        step(hotel, "record_deposit", record_deposit),
        hotel,
        mark_payment_refunded,
    ))
    .step(step(hotel, "send_confirmation", send_confirmation))
    // The booking's no-show timer (docs/skills.md, "No-shows"): last, once the booking stands.
    .step(step(hotel, "arm_no_show", arm_no_show))
    .finish(finish_create)
    .build()
}

fn finish_create(input: &Value, outputs: &std::collections::BTreeMap<String, Value>) -> Value {
    let get = |step: &str, key: &str| outputs.get(step).and_then(|o| o.get(key)).cloned();
    let room = get("check_room", "room").unwrap_or_default();
    let nights = get("check_room", "nights").unwrap_or_default();
    let rate = room
        .get("Nightly_Rate__c")
        .and_then(Value::as_f64)
        .map_or(0, records::dollars_to_cents);
    json!({
        "booking_number": get("create_booking_record", "booking_number"),
        "booking_id": get("create_booking_record", "booking_id"),
        "room_number": room.get("Name"),
        "room_type": room.get("Room_Type__c"),
        "floor": room.get("Floor__c").and_then(Value::as_f64).map(|f| f.round() as i64),
        "check_in_date": input.get("check_in_date"),
        "check_out_date": input.get("check_out_date"),
        "total_nights": nights,
        "total_amount": nights.as_i64().unwrap_or(0) * rate,
        "guest_email": input.get("guest_email").and_then(Value::as_str).map(str::to_lowercase),
        "guest_id": get("find_or_create_guest", "contact_id"),
        "status": booking_status::RESERVED,
        "deposit_payment_intent_id": get("take_deposit", "payment_intent_id"),
        "deposit_amount": get("take_deposit", "payment_intent_id")
            .filter(|v| !v.is_null())
            .and(get("take_deposit", "amount")),
    })
}

/// The room exists, is bookable, and the CRM shows no overlapping live booking.
async fn check_room(hotel: Arc<Hotel>, ctx: StepContext) -> Result<RoomChecked, StepError> {
    let input: CreateBookingInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let room = records::room(crm, &input.room_number).await?;
    if room.status == room_status::OUT_OF_SERVICE {
        return Err(StepError::permanent(
            "room_unavailable",
            format!("room {} is out of service", room.number),
        )
        .with_action("Pick another room (search_rooms lists them)"));
    }
    let overlapping = records::overlapping_bookings(
        crm,
        &room.id,
        input.check_in_date,
        input.check_out_date,
        None,
    )
    .await?;
    if let Some(other) = overlapping.first() {
        return Err(StepError::permanent(
            "room_unavailable",
            format!(
                "room {} is already booked from {} to {}",
                room.number, other.check_in, other.check_out
            ),
        )
        .with_action("Pick other dates or another room (search_rooms lists them)"));
    }
    let nights = (input.check_out_date - input.check_in_date).num_days();
    Ok(RoomChecked { room, nights })
}

/// Holds the room in our own database: the exclusion constraint refuses a racing booking.
async fn hold_room(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Held, StepError> {
    let input: CreateBookingInput = ctx.input()?;
    let booking_ref = booking_ref(&ctx);
    hotel
        .take_hold(&NewHold {
            hold_key: &ctx.idempotency_key,
            booking_ref: &booking_ref,
            room_number: &input.room_number,
            from: input.check_in_date,
            to: input.check_out_date,
            saga_id: ctx.saga_id,
        })
        .await?;
    Ok(Held {
        hold_key: ctx.idempotency_key.clone(),
        booking_ref,
        released_earlier_at: None,
    })
}

async fn find_or_create_guest(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<GuestRecord, StepError> {
    let input: CreateBookingInput = ctx.input()?;
    if let Some(contact) =
        records::contact_by_email(&hotel.connectors.crm, &input.guest_email).await?
    {
        return Ok(GuestRecord {
            contact_id: contact.id,
            created: false,
        });
    }
    let (contact_id, created) = create_contact(
        &hotel,
        &input.guest_email,
        &input.guest_first_name,
        &input.guest_last_name,
        ContactType::Guest,
        input.guest_phone.as_deref(),
    )
    .await?;
    Ok(GuestRecord {
        contact_id,
        created,
    })
}

async fn create_opportunity(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<OpportunityRecord, StepError> {
    let input: CreateBookingInput = ctx.input()?;
    let checked: RoomChecked = ctx.output("check_room")?;
    let guest: GuestRecord = ctx.output("find_or_create_guest")?;
    let amount = records::cents_to_dollars(checked.nights * checked.room.rate_cents());
    let upserted = hotel
        .connectors
        .crm
        .upsert(
            OPPORTUNITY,
            "External_ID__c",
            &record_key(&ctx),
            &json!({
                "Name": format!("Stay {} {}-{}", checked.room.number, input.check_in_date, input.check_out_date),
                "StageName": "Booking Confirmed",
                "CloseDate": input.check_in_date,
                "Amount": amount,
                "Contact__c": guest.contact_id,
            }),
        )
        .await
        .map_err(ext)?;
    Ok(OpportunityRecord {
        opportunity_id: upserted.id,
    })
}

async fn lose_opportunity(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let opportunity_id = if ctx.possibly_done {
        // Its answer was lost: the upsert may have created it under its external id.
        match possibly_created(&hotel, &ctx, OPPORTUNITY).await? {
            Some(id) => id,
            None => return Ok(json!({"closed": false, "reason": "no opportunity was created"})),
        }
    } else {
        recorded::<OpportunityRecord>(output)?.opportunity_id
    };
    hotel
        .connectors
        .crm
        .update(
            OPPORTUNITY,
            &opportunity_id,
            &json!({"StageName": "Closed Lost"}),
        )
        .await
        .map_err(ext)?;
    Ok(json!({"opportunity_id": opportunity_id, "stage": "Closed Lost"}))
}

async fn create_booking_record(
    hotel: Arc<Hotel>,
    ctx: StepContext,
) -> Result<BookingRecord, StepError> {
    let input: CreateBookingInput = ctx.input()?;
    let checked: RoomChecked = ctx.output("check_room")?;
    let guest: GuestRecord = ctx.output("find_or_create_guest")?;
    let opportunity: OpportunityRecord = ctx.output("create_opportunity")?;
    let crm = &hotel.connectors.crm;
    let mut fields = json!({
        "Guest__c": guest.contact_id,
        "Hotel_Room__c": checked.room.id,
        "Opportunity__c": opportunity.opportunity_id,
        "Check_In_Date__c": input.check_in_date,
        "Check_Out_Date__c": input.check_out_date,
        "Status__c": booking_status::RESERVED,
        "Number_of_Guests__c": input.number_of_guests.unwrap_or(1),
    });
    if let (Some(requests), Some(map)) = (&input.special_requests, fields.as_object_mut()) {
        map.insert("Special_Requests__c".into(), requests.clone().into());
    }
    let upserted = crm
        .upsert(BOOKING, "External_ID__c", &booking_ref(&ctx), &fields)
        .await
        .map_err(ext)?;
    let booking: Booking = crm.get(BOOKING, &upserted.id).await.map_err(ext)?;
    Ok(BookingRecord {
        booking_id: booking.id,
        booking_number: booking.number,
    })
}

async fn cancel_booking_record(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let crm = &hotel.connectors.crm;
    let record: BookingRecord = if ctx.possibly_done {
        // Its answer was lost: the upsert may have created it under its external id.
        let Some(id) = possibly_created(&hotel, &ctx, BOOKING).await? else {
            return Ok(json!({"cancelled": false, "reason": "no booking was created"}));
        };
        let booking: Booking = crm.get(BOOKING, &id).await.map_err(ext)?;
        BookingRecord {
            booking_id: booking.id,
            booking_number: booking.number,
        }
    } else {
        recorded(output)?
    };
    crm.update(
        BOOKING,
        &record.booking_id,
        &json!({"Status__c": booking_status::CANCELLED}),
    )
    .await
    .map_err(ext)?;
    Ok(json!({"booking_number": record.booking_number, "status": booking_status::CANCELLED}))
}

/// One night's deposit, when a payment method was given.
async fn take_deposit(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Deposit, StepError> {
    let input: CreateBookingInput = ctx.input()?;
    let Some(payment_method) = input.payment_method_id.as_deref() else {
        return Ok(Deposit {
            payment_intent_id: None,
            amount: 0,
        });
    };
    let checked: RoomChecked = ctx.output("check_room")?;
    let booking: BookingRecord = ctx.output("create_booking_record")?;
    let amount = checked.room.rate_cents();
    let name = format!("{} {}", input.guest_first_name, input.guest_last_name);
    let payment = charge(
        &hotel,
        &ctx,
        &input.guest_email,
        &name,
        payment_method,
        amount,
        &format!("Deposit for booking {}", booking.booking_number),
        &booking.booking_number,
    )
    .await?;
    Ok(Deposit {
        payment_intent_id: Some(payment.id),
        amount,
    })
}

/// Records the deposit in the CRM (`Payment_Transaction__c`, keyed by this step).
async fn record_deposit(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let deposit: Deposit = ctx.output("take_deposit")?;
    let Some(payment_intent_id) = deposit.payment_intent_id else {
        return Ok(json!({"payment_transaction_id": null, "reason": "no deposit was taken"}));
    };
    let booking: BookingRecord = ctx.output("create_booking_record")?;
    let id = record_payment(
        &hotel,
        &ctx,
        &booking.booking_id,
        &payment_intent_id,
        deposit.amount,
        "Payment",
    )
    .await?;
    Ok(json!({"payment_transaction_id": id}))
}

async fn refund_deposit(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    if ctx.possibly_done {
        return undo_possible_charge(&hotel, &ctx).await;
    }
    let deposit: Deposit = recorded(output)?;
    match deposit.payment_intent_id {
        None => Ok(json!({"refunded": false, "reason": "no deposit was taken"})),
        Some(payment_intent) => {
            let refund = refund(&hotel, &payment_intent, None, &ctx.idempotency_key).await?;
            Ok(
                json!({"refund_id": refund.id, "amount": refund.amount, "payment_intent_id": payment_intent}),
            )
        }
    }
}

/// Texts the guest a confirmation when a phone number was given. A number the SMS service
/// rejects does not undo the booking: the outcome is recorded in the output instead.
async fn send_confirmation(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: CreateBookingInput = ctx.input()?;
    let Some(phone) = input.guest_phone.as_deref() else {
        return Ok(json!({"sent": false, "reason": "no phone number given"}));
    };
    let booking: BookingRecord = ctx.output("create_booking_record")?;
    let body = format!(
        "Dewy Resort: booking {} confirmed, room {}, {} to {}.",
        booking.booking_number, input.room_number, input.check_in_date, input.check_out_date
    );
    text_guest(&hotel, &ctx, phone, &body, Some(&booking.booking_id)).await
}

/// Starts the booking's no-show timer (`mark_no_show`), keyed by the booking's reference.
async fn arm_no_show(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: CreateBookingInput = ctx.input()?;
    let booking: BookingRecord = ctx.output("create_booking_record")?;
    crate::hotel::no_show::arm(
        &hotel.sagas,
        &booking_ref(&ctx),
        &booking.booking_number,
        &input.guest_email.to_lowercase(),
    )
    .await
}
