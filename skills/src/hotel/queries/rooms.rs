//! `search_rooms`: the hotel's rooms, and with dates only those free for the whole stay, each
//! with the stay's total price.

use crate::connectors::crm::soql;
use crate::hotel::records::{self, room_status, Room, RoomStatus};
use crate::hotel::{calendar, input, Hotel};
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use stepwise_engine::{Exposure, InputError, Query, SkillInput, StepError};

/// The room types, as the CRM spells them.
const ROOM_TYPES: [&str; 4] = ["Standard", "Deluxe", "Suite", "Penthouse"];

/// Input of `search_rooms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRoomsInput {
    /// First night, YYYY-MM-DD; with check_out_date, only rooms free for the whole stay.
    #[serde(default)]
    pub check_in_date: Option<NaiveDate>,
    /// Departure day, YYYY-MM-DD (at most 30 nights after check_in_date).
    #[serde(default)]
    pub check_out_date: Option<NaiveDate>,
    /// Only rooms that sleep this many.
    #[serde(default)]
    pub number_of_guests: Option<u32>,
    /// Standard, Deluxe, Suite or Penthouse.
    #[serde(default)]
    pub room_type: Option<String>,
    /// Cents per night, at most.
    #[serde(default)]
    pub max_nightly_rate: Option<u32>,
    /// Today's status (without dates).
    #[serde(default)]
    pub status: Option<RoomStatus>,
    #[serde(default)]
    pub floor: Option<u32>,
    /// At most this many rooms (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl SearchRoomsInput {
    /// The stay asked about, when both dates are given.
    fn stay(&self) -> Option<(NaiveDate, NaiveDate)> {
        self.check_in_date.zip(self.check_out_date)
    }
}

impl SkillInput for SearchRoomsInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            match (self.check_in_date, self.check_out_date) {
                (Some(from), Some(to)) => input::stay(from, to).map(|_| ()),
                (Some(_), None) => Err(InputError::field(
                    "check_out_date",
                    "is needed with check_in_date",
                )),
                (None, Some(_)) => Err(InputError::field(
                    "check_in_date",
                    "is needed with check_out_date",
                )),
                (None, None) => Ok(()),
            },
            match &self.room_type {
                Some(kind) if !ROOM_TYPES.contains(&kind.as_str()) => Err(InputError::field(
                    "room_type",
                    "must be Standard, Deluxe, Suite or Penthouse",
                )),
                _ => Ok(()),
            },
            match self.number_of_guests {
                Some(0) | Some(11..) => {
                    Err(InputError::field("number_of_guests", "must be 1 to 10"))
                }
                _ => Ok(()),
            },
            match self.limit {
                Some(0) | Some(101..) => Err(InputError::field("limit", "must be 1 to 100")),
                _ => Ok(()),
            },
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomView {
    pub room_number: String,
    pub floor: i64,
    pub room_type: String,
    /// Today's status.
    pub status: String,
    /// Cents per night.
    pub nightly_rate: i64,
    /// How many guests the room sleeps.
    pub max_occupancy: i64,
    /// Nights x nightly rate in cents, when dates were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_price: Option<i64>,
}

impl RoomView {
    fn new(room: Room, nights: Option<i64>) -> Self {
        Self {
            floor: room.floor(),
            nightly_rate: room.rate_cents(),
            max_occupancy: room.max_occupancy.map_or(0, |n| n.round() as i64),
            total_price: nights.map(|n| n * room.rate_cents()),
            room_number: room.number,
            room_type: room.room_type.unwrap_or_default(),
            status: room.status,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomsOutput {
    /// Nights of the stay asked about, when dates were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nights: Option<i64>,
    pub rooms: Vec<RoomView>,
}

/// The whole hotel fits one page; availability is decided on it before the limit applies.
const ALL_ROOMS: u32 = 2000;

pub(super) fn search_rooms(hotel: &Arc<Hotel>) -> Query {
    let hotel = hotel.clone();
    Query::new(
        "search_rooms",
        "Finds rooms. With check_in_date and check_out_date: only rooms free for every night \
         (bookings, holds, maintenance considered), each with total_price; book one with \
         create_booking.",
        Exposure::roles(&["guest", "staff", "manager", "operator"]).open_world(),
        move |input: SearchRoomsInput| {
            let hotel = hotel.clone();
            crate::hotel::errors::acted(async move { search(&hotel, input).await })
        },
    )
}

async fn search(hotel: &Hotel, input: SearchRoomsInput) -> Result<RoomsOutput, StepError> {
    let stay = input.stay();
    if let Some((from, _)) = stay {
        let today = calendar::local_date(hotel.time_zone(), chrono::Utc::now());
        if from < today {
            return Err(StepError::permanent(
                "invalid_input",
                format!("`check_in_date`: {from} is in the past (today is {today})"),
            )
            .with_action("Ask the guest for dates from today on."));
        }
    }
    let limit = input.limit.unwrap_or(20) as usize;
    let rooms = matching_rooms(hotel, &input, stay.map_or(limit as u32, |_| ALL_ROOMS)).await?;
    let Some((from, to)) = stay else {
        return Ok(RoomsOutput {
            nights: None,
            rooms: rooms.into_iter().map(|r| RoomView::new(r, None)).collect(),
        });
    };
    let taken = rooms_taken(hotel, from, to).await?;
    let nights = (to - from).num_days();
    Ok(RoomsOutput {
        nights: Some(nights),
        rooms: rooms
            .into_iter()
            .filter(|room| !taken.contains(room))
            .take(limit)
            .map(|room| RoomView::new(room, Some(nights)))
            .collect(),
    })
}

/// Rooms matching the filters other than dates; with dates, never a room under maintenance
/// or out of service (nobody knows when it returns).
async fn matching_rooms(
    hotel: &Hotel,
    input: &SearchRoomsInput,
    limit: u32,
) -> Result<Vec<Room>, StepError> {
    let mut conditions = Vec::new();
    if let Some(status) = input.status {
        conditions.push(format!("Status__c = {}", soql::string(status.as_str())));
    }
    if input.stay().is_some() {
        conditions.push(format!(
            "Status__c NOT IN ({}, {})",
            soql::string(room_status::MAINTENANCE),
            soql::string(room_status::OUT_OF_SERVICE)
        ));
    }
    if let Some(floor) = input.floor {
        conditions.push(format!("Floor__c = {floor}"));
    }
    if let Some(kind) = &input.room_type {
        conditions.push(format!("Room_Type__c = {}", soql::string(kind)));
    }
    if let Some(guests) = input.number_of_guests {
        conditions.push(format!("Max_Occupancy__c >= {guests}"));
    }
    if let Some(cents) = input.max_nightly_rate {
        conditions.push(format!(
            "Nightly_Rate__c <= {}",
            records::cents_to_dollars(i64::from(cents))
        ));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let soql = format!(
        "SELECT {} FROM Hotel_Room__c{filter} ORDER BY Name LIMIT {limit}",
        Room::FIELDS
    );
    hotel
        .connectors
        .crm
        .query(&soql)
        .await
        .map_err(StepError::from)
}

/// What is not free for some night of a stay: rooms with a live booking in the CRM (by id)
/// and rooms held for a booking still being made in our own database (by number).
struct Taken {
    booked_ids: BTreeSet<String>,
    held_numbers: BTreeSet<String>,
}

impl Taken {
    fn contains(&self, room: &Room) -> bool {
        self.booked_ids.contains(&room.id) || self.held_numbers.contains(&room.number)
    }
}

async fn rooms_taken(hotel: &Hotel, from: NaiveDate, to: NaiveDate) -> Result<Taken, StepError> {
    #[derive(Deserialize)]
    struct BookedRoom {
        #[serde(rename = "Hotel_Room__c")]
        room: String,
    }
    let soql = format!(
        "SELECT Hotel_Room__c FROM Booking__c WHERE Status__c IN ('Reserved', 'Checked In') \
         AND Check_In_Date__c < {} AND Check_Out_Date__c > {} LIMIT {ALL_ROOMS}",
        soql::date(to),
        soql::date(from)
    );
    let booked: Vec<BookedRoom> = hotel
        .connectors
        .crm
        .query(&soql)
        .await
        .map_err(StepError::from)?;
    Ok(Taken {
        booked_ids: booked.into_iter().map(|b| b.room).collect(),
        held_numbers: hotel
            .holds
            .rooms_held(from, to)
            .await?
            .into_iter()
            .collect(),
    })
}
