//! `get_booking` and `list_bookings`: a guest's bookings.

use crate::connectors::crm::soql;
use crate::hotel::records::{self, booking_status, Booking, Contact, Room};
use crate::hotel::{exposure, input, Hotel};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use stepwise_engine::{InputError, Query, SkillInput, StepError};

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
    pub stay: Stay,
    pub room_number: String,
    pub room_type: String,
    pub check_in_date: NaiveDate,
    pub check_out_date: NaiveDate,
    pub total_nights: i64,
    pub guest_email: String,
    pub guest_name: String,
}

impl BookingView {
    fn new(booking: Booking, guest: &Contact, guest_email: &str, room: Room) -> Self {
        Self {
            stay: Stay::of(&booking.status),
            total_nights: booking.nights(),
            booking_number: booking.number,
            status: booking.status,
            room_number: room.number,
            room_type: room.room_type.unwrap_or_default(),
            check_in_date: booking.check_in,
            check_out_date: booking.check_out,
            guest_email: guest_email.to_lowercase(),
            guest_name: guest.full_name(),
        }
    }
}

pub(super) fn get_booking(hotel: &Arc<Hotel>) -> Query {
    let hotel = hotel.clone();
    Query::new(
        "get_booking",
        "Shows one of a guest's bookings: room, dates, nights and status.",
        exposure::guest_self_staff_manager(),
        move |input: GetBookingInput| {
            let hotel = hotel.clone();
            crate::hotel::errors::acted(async move {
                let crm = &hotel.connectors.crm;
                let (guest, booking): (_, Booking) =
                    records::guest_booking(crm, &input.guest_email, &input.booking_number).await?;
                let room = records::room_by_id(crm, &booking.room).await?;
                Ok(BookingView::new(booking, &guest, &input.guest_email, room))
            })
        },
    )
}

/// Input of `list_bookings`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListBookingsInput {
    /// Whose bookings (guests: left out, it is their own).
    #[serde(default)]
    pub guest_email: Option<String>,
    /// Only this booking, e.g. BK-000012 (staff: instead of an email).
    #[serde(default)]
    pub booking_number: Option<String>,
    /// At most this many (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl SkillInput for ListBookingsInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            self.guest_email
                .as_deref()
                .map_or(Ok(()), |e| input::email("guest_email", e)),
            self.booking_number
                .as_deref()
                .map_or(Ok(()), |n| input::booking_number("booking_number", n)),
            match (&self.guest_email, &self.booking_number) {
                (None, None) => Err(InputError::field(
                    "guest_email",
                    "give the guest's email or a booking number",
                )),
                _ => Ok(()),
            },
            match self.limit {
                Some(0) | Some(101..) => Err(InputError::field("limit", "must be 1 to 100")),
                _ => Ok(()),
            },
        ])
    }
}

/// Where a booking stands for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stay {
    /// Reserved, not yet arrived.
    Upcoming,
    /// Checked in.
    InHouse,
    /// Checked out, cancelled or a no-show.
    Past,
}

impl Stay {
    fn of(status: &str) -> Self {
        match status {
            booking_status::RESERVED => Stay::Upcoming,
            booking_status::CHECKED_IN => Stay::InHouse,
            _ => Stay::Past,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BookingsOutput {
    /// Newest check-in first.
    pub bookings: Vec<BookingView>,
}

pub(super) fn list_bookings(hotel: &Arc<Hotel>) -> Query {
    let hotel = hotel.clone();
    Query::new(
        "list_bookings",
        "Lists a guest's bookings, newest first, each upcoming, in_house or past. Guests see \
         their own; staff give guest_email or booking_number.",
        exposure::guest_self_staff_manager(),
        move |input: ListBookingsInput| {
            let hotel = hotel.clone();
            crate::hotel::errors::acted(async move { list(&hotel, input).await })
        },
    )
}

async fn list(hotel: &Hotel, input: ListBookingsInput) -> Result<BookingsOutput, StepError> {
    let crm = &hotel.connectors.crm;
    let mut conditions = Vec::new();
    if let Some(email) = &input.guest_email {
        // An unknown guest has no bookings; saying so does not reveal another guest's.
        let Some(guest) = records::contact_by_email(crm, email).await? else {
            return Ok(BookingsOutput {
                bookings: Vec::new(),
            });
        };
        conditions.push(format!(
            "Guest__c = {}",
            soql::id_literal(&guest.id).map_err(StepError::from)?
        ));
    }
    if let Some(number) = &input.booking_number {
        conditions.push(format!("Name = {}", soql::string(number)));
    }
    let soql = format!(
        "SELECT {} FROM Booking__c WHERE {} ORDER BY Check_In_Date__c DESC LIMIT {}",
        Booking::FIELDS,
        conditions.join(" AND "),
        input.limit.unwrap_or(20)
    );
    let bookings: Vec<Booking> = crm.query(&soql).await.map_err(StepError::from)?;
    let mut guests: HashMap<String, Contact> = HashMap::new();
    let mut listed = Vec::with_capacity(bookings.len());
    for booking in bookings {
        if !guests.contains_key(&booking.guest) {
            let guest = records::contact_by_id(crm, &booking.guest).await?;
            guests.insert(booking.guest.clone(), guest);
        }
        let guest = &guests[&booking.guest];
        let email = guest.email.clone().unwrap_or_default();
        let room = records::room_by_id(crm, &booking.room).await?;
        listed.push(BookingView::new(booking, guest, &email, room));
    }
    Ok(BookingsOutput { bookings: listed })
}
