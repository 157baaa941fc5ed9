//! `get_booking` and `list_bookings`: a guest's bookings.

use crate::hotel::records::{self, Booking};
use crate::hotel::{exposure, input, Hotel};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use stepwise_engine::{InputError, Query, SkillInput};

/// Input of `get_booking`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetBookingInput {
    /// The guest the booking belongs to.
    pub guest_email: String,
    pub booking_number: String,
}

impl SkillInput for GetBookingInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("guest_email", &self.guest_email),
            input::booking_number("booking_number", &self.booking_number),
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BookingView {
    pub booking_number: String,
    pub status: String,
    pub room_number: String,
    pub room_type: String,
    pub check_in_date: NaiveDate,
    pub check_out_date: NaiveDate,
    pub total_nights: i64,
    pub guest_email: String,
    pub guest_name: String,
}

pub(super) fn get_booking(hotel: &Arc<Hotel>) -> Query {
    let hotel = hotel.clone();
    Query::new(
        "get_booking",
        "Shows one of a guest's bookings: room, dates, nights and status.",
        exposure::guest_self_staff_manager(),
        move |input: GetBookingInput| {
            let hotel = hotel.clone();
            async move {
                let crm = &hotel.connectors.crm;
                let (guest, booking): (_, Booking) =
                    records::guest_booking(crm, &input.guest_email, &input.booking_number).await?;
                let room = records::room_by_id(crm, &booking.room).await?;
                Ok(BookingView {
                    total_nights: booking.nights(),
                    booking_number: booking.number,
                    status: booking.status,
                    room_number: room.number,
                    room_type: room.room_type.unwrap_or_default(),
                    check_in_date: booking.check_in,
                    check_out_date: booking.check_out,
                    guest_email: input.guest_email.to_lowercase(),
                    guest_name: guest.full_name(),
                })
            }
        },
    )
}
