//! Read-only queries: `search_rooms`, `search_cases`, `get_booking`. Plain calls, not sagas.

use super::records::{self, Booking, Case, Priority, Room, RoomStatus};
use super::{exposure, input, Hotel};
use crate::connectors::crm::soql;
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use stepwise_engine::{Exposure, InputError, Query, SkillInput, StepError};

pub fn all(hotel: &Arc<Hotel>) -> Vec<Query> {
    vec![search_rooms(hotel), search_cases(hotel), get_booking(hotel)]
}

/// Input of `search_rooms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRoomsInput {
    #[serde(default)]
    pub status: Option<RoomStatus>,
    #[serde(default)]
    pub floor: Option<u32>,
    /// Standard, Deluxe, Suite or Penthouse.
    #[serde(default)]
    pub room_type: Option<String>,
    /// At most this many rooms (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl SkillInput for SearchRoomsInput {
    fn validate(&self) -> Result<(), InputError> {
        if let Some(kind) = &self.room_type {
            if !["Standard", "Deluxe", "Suite", "Penthouse"].contains(&kind.as_str()) {
                return Err(InputError::field(
                    "room_type",
                    "must be Standard, Deluxe, Suite or Penthouse",
                ));
            }
        }
        match self.limit {
            Some(0) | Some(101..) => Err(InputError::field("limit", "must be 1 to 100")),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomView {
    pub room_number: String,
    pub floor: i64,
    pub room_type: String,
    pub status: String,
    /// Cents per night.
    pub nightly_rate: i64,
}

impl From<Room> for RoomView {
    fn from(room: Room) -> Self {
        Self {
            floor: room.floor(),
            nightly_rate: room.rate_cents(),
            room_number: room.number,
            room_type: room.room_type.unwrap_or_default(),
            status: room.status,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomsOutput {
    pub rooms: Vec<RoomView>,
}

fn search_rooms(hotel: &Arc<Hotel>) -> Query {
    let hotel = hotel.clone();
    Query::new(
        "search_rooms",
        "Lists the hotel's rooms with floor, type, status and nightly rate, filtered by status, floor or type.",
        Exposure::roles(&["guest", "staff", "manager", "operator"]).open_world(),
        move |input: SearchRoomsInput| {
            let hotel = hotel.clone();
            async move {
                let mut conditions = Vec::new();
                if let Some(status) = input.status {
                    conditions.push(format!("Status__c = {}", soql::string(status.as_str())));
                }
                if let Some(floor) = input.floor {
                    conditions.push(format!("Floor__c = {floor}"));
                }
                if let Some(kind) = &input.room_type {
                    conditions.push(format!("Room_Type__c = {}", soql::string(kind)));
                }
                let filter = if conditions.is_empty() {
                    String::new()
                } else {
                    format!(" WHERE {}", conditions.join(" AND "))
                };
                let soql = format!(
                    "SELECT {} FROM Hotel_Room__c{filter} ORDER BY Name LIMIT {}",
                    Room::FIELDS,
                    input.limit.unwrap_or(20)
                );
                let rooms: Vec<Room> = hotel.connectors.crm.query(&soql).await.map_err(StepError::from)?;
                Ok(RoomsOutput { rooms: rooms.into_iter().map(RoomView::from).collect() })
            }
        },
    )
}

/// Input of `search_cases`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchCasesInput {
    /// Only this guest's cases (required for guests: their own email).
    #[serde(default)]
    pub guest_email: Option<String>,
    #[serde(default)]
    pub room_number: Option<String>,
    /// New, Working, Escalated or Closed.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub priority: Option<Priority>,
    #[serde(default)]
    pub limit: Option<u32>,
}

impl SkillInput for SearchCasesInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            self.guest_email
                .as_deref()
                .map_or(Ok(()), |e| input::email("guest_email", e)),
            self.room_number
                .as_deref()
                .map_or(Ok(()), |r| input::room_number("room_number", r)),
            match self.status.as_deref() {
                None | Some("New" | "Working" | "Escalated" | "Closed") => Ok(()),
                Some(_) => Err(InputError::field(
                    "status",
                    "must be New, Working, Escalated or Closed",
                )),
            },
            match self.limit {
                Some(0) | Some(101..) => Err(InputError::field("limit", "must be 1 to 100")),
                _ => Ok(()),
            },
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CaseView {
    pub case_number: Option<String>,
    pub subject: Option<String>,
    #[serde(rename = "type")]
    pub case_type: Option<String>,
    pub priority: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CasesOutput {
    pub cases: Vec<CaseView>,
}

fn search_cases(hotel: &Arc<Hotel>) -> Query {
    let hotel = hotel.clone();
    Query::new(
        "search_cases",
        "Lists service and maintenance cases, filtered by guest, room, status or priority.",
        exposure::guest_self_staff_manager(),
        move |input: SearchCasesInput| {
            let hotel = hotel.clone();
            async move {
                let crm = &hotel.connectors.crm;
                let mut conditions = Vec::new();
                if let Some(email) = &input.guest_email {
                    match records::contact_by_email(crm, email).await? {
                        Some(contact) => conditions.push(format!(
                            "ContactId = {}",
                            soql::id_literal(&contact.id).map_err(StepError::from)?
                        )),
                        None => return Ok(CasesOutput { cases: Vec::new() }),
                    }
                }
                if let Some(number) = &input.room_number {
                    match records::room_by_number(crm, number).await? {
                        Some(room) => conditions.push(format!(
                            "Room__c = {}",
                            soql::id_literal(&room.id).map_err(StepError::from)?
                        )),
                        None => return Ok(CasesOutput { cases: Vec::new() }),
                    }
                }
                if let Some(status) = &input.status {
                    conditions.push(format!("Status = {}", soql::string(status)));
                }
                if let Some(priority) = input.priority {
                    conditions.push(format!("Priority = {}", soql::string(priority.as_str())));
                }
                let filter = if conditions.is_empty() {
                    String::new()
                } else {
                    format!(" WHERE {}", conditions.join(" AND "))
                };
                let soql = format!(
                    "SELECT {} FROM Case{filter} ORDER BY CreatedDate DESC LIMIT {}",
                    Case::FIELDS,
                    input.limit.unwrap_or(20)
                );
                let cases: Vec<Case> = crm.query(&soql).await.map_err(StepError::from)?;
                Ok(CasesOutput {
                    cases: cases
                        .into_iter()
                        .map(|c| CaseView {
                            case_number: c.number,
                            subject: c.subject,
                            case_type: c.case_type,
                            priority: c.priority,
                            status: c.status,
                        })
                        .collect(),
                })
            }
        },
    )
}

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

fn get_booking(hotel: &Arc<Hotel>) -> Query {
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
