//! The CRM/PMS records the skills read and write (Salesforce-style sObjects), and the lookups
//! they share. Every query is built from SOQL literals ([`soql`]), never from raw input.

use crate::connectors::crm::soql;
use crate::connectors::CrmClient;
use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use stepwise_engine::StepError;

pub const CONTACT: &str = "Contact";
pub const ROOM: &str = "Hotel_Room__c";
pub const BOOKING: &str = "Booking__c";
pub const OPPORTUNITY: &str = "Opportunity";
pub const CASE: &str = "Case";
pub const PAYMENT_TRANSACTION: &str = "Payment_Transaction__c";
pub const SMS_NOTIFICATION: &str = "SMS_Notification__c";
pub const CASE_NOTE: &str = "Case_Note__c";
pub const STAY_SEGMENT: &str = "Stay_Segment__c";

/// Room statuses (the `Status__c` picklist of `Hotel_Room__c`).
pub mod room_status {
    pub const VACANT: &str = "Vacant";
    pub const OCCUPIED: &str = "Occupied";
    pub const CLEANING: &str = "Cleaning";
    pub const MAINTENANCE: &str = "Maintenance";
    pub const OUT_OF_SERVICE: &str = "Out of Service";
}

/// Booking statuses (the `Status__c` picklist of `Booking__c`).
pub mod booking_status {
    pub const RESERVED: &str = "Reserved";
    pub const CHECKED_IN: &str = "Checked In";
    pub const CHECKED_OUT: &str = "Checked Out";
    pub const CANCELLED: &str = "Cancelled";
    pub const NO_SHOW: &str = "No Show";
}

/// Case statuses (the `Status` picklist of `Case`): New is open, Working and Escalated in
/// progress.
pub mod case_status {
    pub const NEW: &str = "New";
    pub const WORKING: &str = "Working";
    pub const ESCALATED: &str = "Escalated";
    pub const RESOLVED: &str = "Resolved";
    pub const CLOSED: &str = "Closed";
}

/// A room status (the CRM picklist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RoomStatus {
    Vacant,
    Occupied,
    Cleaning,
    Maintenance,
    #[serde(rename = "Out of Service")]
    OutOfService,
}

impl RoomStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomStatus::Vacant => room_status::VACANT,
            RoomStatus::Occupied => room_status::OCCUPIED,
            RoomStatus::Cleaning => room_status::CLEANING,
            RoomStatus::Maintenance => room_status::MAINTENANCE,
            RoomStatus::OutOfService => room_status::OUT_OF_SERVICE,
        }
    }
}

// A case's priority (the `Priority` picklist of `Case`); no doc comment, so the input schemas
// that name it stay as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Priority {
    Low,
    Medium,
    High,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "Low",
            Priority::Medium => "Medium",
            Priority::High => "High",
            Priority::Urgent => "Urgent",
        }
    }
}

// A contact's kind (the `Contact_Type__c` picklist of `Contact`); no doc comment, so the
// input schema that names it stays as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ContactType {
    #[default]
    Guest,
    Manager,
    Vendor,
}

impl ContactType {
    pub fn as_str(self) -> &'static str {
        match self {
            ContactType::Guest => "Guest",
            ContactType::Manager => "Manager",
            ContactType::Vendor => "Vendor",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "FirstName", default)]
    pub first_name: Option<String>,
    #[serde(rename = "LastName", default)]
    pub last_name: Option<String>,
    #[serde(rename = "Email", default)]
    pub email: Option<String>,
    #[serde(rename = "Phone", default)]
    pub phone: Option<String>,
    #[serde(rename = "Contact_Type__c", default)]
    pub contact_type: Option<String>,
}

impl Contact {
    pub const FIELDS: &'static str = "Id, FirstName, LastName, Email, Phone, Contact_Type__c";

    pub fn full_name(&self) -> String {
        [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Room {
    #[serde(rename = "Id")]
    pub id: String,
    /// The room number.
    #[serde(rename = "Name")]
    pub number: String,
    #[serde(rename = "Floor__c", default)]
    pub floor: Option<f64>,
    #[serde(rename = "Room_Type__c", default)]
    pub room_type: Option<String>,
    #[serde(rename = "Status__c")]
    pub status: String,
    /// Dollars, as the CRM stores currency.
    #[serde(rename = "Nightly_Rate__c", default)]
    pub nightly_rate: Option<f64>,
    #[serde(rename = "Current_Guest__c", default)]
    pub current_guest: Option<String>,
    /// How many guests the room sleeps.
    #[serde(rename = "Max_Occupancy__c", default)]
    pub max_occupancy: Option<f64>,
}

impl Room {
    pub const FIELDS: &'static str = "Id, Name, Floor__c, Room_Type__c, Status__c, \
        Nightly_Rate__c, Current_Guest__c, Max_Occupancy__c";

    /// The nightly rate in integer cents.
    pub fn rate_cents(&self) -> i64 {
        dollars_to_cents(self.nightly_rate.unwrap_or(0.0))
    }

    pub fn floor(&self) -> i64 {
        self.floor.map_or(0, |f| f.round() as i64)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    #[serde(rename = "Id")]
    pub id: String,
    /// The booking number.
    #[serde(rename = "Name")]
    pub number: String,
    #[serde(rename = "Guest__c")]
    pub guest: String,
    #[serde(rename = "Hotel_Room__c")]
    pub room: String,
    #[serde(rename = "Check_In_Date__c")]
    pub check_in: NaiveDate,
    #[serde(rename = "Check_Out_Date__c")]
    pub check_out: NaiveDate,
    #[serde(rename = "Status__c")]
    pub status: String,
    #[serde(rename = "Opportunity__c", default)]
    pub opportunity: Option<String>,
    #[serde(rename = "External_ID__c", default)]
    pub external_id: Option<String>,
    #[serde(rename = "Number_of_Guests__c", default)]
    pub number_of_guests: Option<f64>,
    #[serde(rename = "Special_Requests__c", default)]
    pub special_requests: Option<String>,
}

impl Booking {
    pub const FIELDS: &'static str = "Id, Name, Guest__c, Hotel_Room__c, Check_In_Date__c, \
        Check_Out_Date__c, Status__c, Opportunity__c, External_ID__c, Number_of_Guests__c, \
        Special_Requests__c";

    pub fn nights(&self) -> i64 {
        (self.check_out - self.check_in).num_days()
    }

    /// The key under which room holds of this booking are kept in our own database.
    pub fn hold_ref(&self) -> String {
        self.external_id
            .clone()
            .unwrap_or_else(|| format!("crm:{}", self.id))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "CaseNumber", default)]
    pub number: Option<String>,
    #[serde(rename = "Subject", default)]
    pub subject: Option<String>,
    #[serde(rename = "Type", default)]
    pub case_type: Option<String>,
    #[serde(rename = "Priority", default)]
    pub priority: Option<String>,
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "Room__c", default)]
    pub room: Option<String>,
    #[serde(rename = "ContactId", default)]
    pub contact: Option<String>,
}

impl Case {
    pub const FIELDS: &'static str =
        "Id, CaseNumber, Subject, Type, Priority, Status, Room__c, ContactId";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentTransaction {
    #[serde(rename = "Id")]
    pub id: String,
    /// The record's number, e.g. `PT-000012`.
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    #[serde(rename = "Stripe_Transaction_ID__c", default)]
    pub stripe_id: Option<String>,
    #[serde(rename = "Amount__c", default)]
    pub amount: Option<f64>,
    #[serde(rename = "Type__c", default)]
    pub kind: Option<String>,
    #[serde(rename = "Status__c", default)]
    pub status: Option<String>,
    /// `{saga_id}:{step}` of the step that recorded it.
    #[serde(rename = "External_ID__c", default)]
    pub external_id: Option<String>,
}

impl PaymentTransaction {
    pub const FIELDS: &'static str =
        "Id, Name, Stripe_Transaction_ID__c, Amount__c, Type__c, Status__c, External_ID__c";
}

/// Nights `[start, end)` a booking spent in a room it has since left, at the rate that held
/// then (written by a mid-stay upgrade; see [`crate::hotel::bill`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaySegment {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Hotel_Room__c")]
    pub room: String,
    #[serde(rename = "Start_Date__c")]
    pub start: NaiveDate,
    #[serde(rename = "End_Date__c")]
    pub end: NaiveDate,
    /// Dollars, as the CRM stores currency.
    #[serde(rename = "Nightly_Rate__c", default)]
    pub nightly_rate: Option<f64>,
}

impl StaySegment {
    pub const FIELDS: &'static str =
        "Id, Hotel_Room__c, Start_Date__c, End_Date__c, Nightly_Rate__c";

    pub fn rate_cents(&self) -> i64 {
        dollars_to_cents(self.nightly_rate.unwrap_or(0.0))
    }
}

/// The segments recorded for a booking, oldest first.
pub async fn stay_segments(
    crm: &CrmClient,
    booking_id: &str,
) -> Result<Vec<StaySegment>, StepError> {
    let soql = format!(
        "SELECT {} FROM Stay_Segment__c WHERE Booking__c = {} ORDER BY CreatedDate",
        StaySegment::FIELDS,
        soql::id_literal(booking_id).map_err(crm_error)?
    );
    crm.query(&soql).await.map_err(crm_error)
}

pub fn dollars_to_cents(dollars: f64) -> i64 {
    (dollars * 100.0).round() as i64
}

pub fn cents_to_dollars(cents: i64) -> f64 {
    cents as f64 / 100.0
}

/// Formats cents as `$1,234.56`-style text for messages (`-$0.05` below zero).
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let dollars = (abs / 100).to_string();
    let mut grouped = String::with_capacity(dollars.len() + dollars.len() / 3);
    for (i, digit) in dollars.chars().enumerate() {
        if i > 0 && (dollars.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}${grouped}.{:02}", abs % 100)
}

fn crm_error(error: crate::connectors::ConnectorError) -> StepError {
    error.into()
}

pub async fn contact_by_email(crm: &CrmClient, email: &str) -> Result<Option<Contact>, StepError> {
    let soql = format!(
        "SELECT {} FROM Contact WHERE Email = {} ORDER BY CreatedDate LIMIT 1",
        Contact::FIELDS,
        soql::string(&email.to_lowercase())
    );
    Ok(crm
        .query(&soql)
        .await
        .map_err(crm_error)?
        .into_iter()
        .next())
}

/// The guest contact for `email`, or a permanent `guest_not_found`.
pub async fn guest(crm: &CrmClient, email: &str) -> Result<Contact, StepError> {
    contact_by_email(crm, email).await?.ok_or_else(|| {
        StepError::permanent("guest_not_found", format!("no guest with email {email}"))
            .with_action("Check the email address, or create the guest with upsert_contact")
    })
}

/// The contact record `id`, or a permanent `guest_not_found`.
pub async fn contact_by_id(crm: &CrmClient, id: &str) -> Result<Contact, StepError> {
    let soql = format!(
        "SELECT {} FROM Contact WHERE Id = {} LIMIT 1",
        Contact::FIELDS,
        soql::id_literal(id).map_err(crm_error)?
    );
    crm.query(&soql)
        .await
        .map_err(crm_error)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            StepError::permanent("guest_not_found", format!("contact record {id} is gone"))
        })
}

pub async fn room_by_number(crm: &CrmClient, number: &str) -> Result<Option<Room>, StepError> {
    let soql = format!(
        "SELECT {} FROM Hotel_Room__c WHERE Name = {} LIMIT 1",
        Room::FIELDS,
        soql::string(number)
    );
    Ok(crm
        .query(&soql)
        .await
        .map_err(crm_error)?
        .into_iter()
        .next())
}

/// The room, or a permanent `room_not_found`.
pub async fn room(crm: &CrmClient, number: &str) -> Result<Room, StepError> {
    room_by_number(crm, number).await?.ok_or_else(|| {
        StepError::permanent("room_not_found", format!("there is no room {number}"))
            .with_action("Use search_rooms to see the hotel's rooms")
    })
}

pub async fn room_by_id(crm: &CrmClient, id: &str) -> Result<Room, StepError> {
    let soql = format!(
        "SELECT {} FROM Hotel_Room__c WHERE Id = {} LIMIT 1",
        Room::FIELDS,
        soql::id_literal(id).map_err(crm_error)?
    );
    crm.query(&soql)
        .await
        .map_err(crm_error)?
        .into_iter()
        .next()
        .ok_or_else(|| StepError::permanent("room_not_found", format!("room record {id} is gone")))
}

/// The booking with this number that belongs to the guest `email`; another guest's booking is
/// reported as not found, so its existence does not leak.
pub async fn guest_booking(
    crm: &CrmClient,
    email: &str,
    number: &str,
) -> Result<(Contact, Booking), StepError> {
    let not_found = || {
        StepError::permanent(
            "booking_not_found",
            format!("no booking {number} for {email}"),
        )
        .with_action("Check the booking number and the guest's email with list_bookings")
    };
    let contact = contact_by_email(crm, email).await?.ok_or_else(not_found)?;
    let soql = format!(
        "SELECT {} FROM Booking__c WHERE Name = {} AND Guest__c = {} LIMIT 1",
        Booking::FIELDS,
        soql::string(number),
        soql::id_literal(&contact.id).map_err(crm_error)?
    );
    let booking = crm
        .query::<Booking>(&soql)
        .await
        .map_err(crm_error)?
        .into_iter()
        .next()
        .ok_or_else(not_found)?;
    Ok((contact, booking))
}

/// A guest's booking that is still live (reserved or checked in), with its room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveBooking {
    pub guest: Contact,
    pub booking: Booking,
    pub room: Room,
}

/// The guest's booking `number`, refused with `booking_not_active` unless it is reserved or
/// checked in.
pub async fn live_booking(
    crm: &CrmClient,
    email: &str,
    number: &str,
) -> Result<LiveBooking, StepError> {
    let (guest, booking) = guest_booking(crm, email, number).await?;
    if booking.status != booking_status::RESERVED && booking.status != booking_status::CHECKED_IN {
        return Err(StepError::permanent(
            "booking_not_active",
            format!("booking {} is {}", booking.number, booking.status),
        ));
    }
    let room = room_by_id(crm, &booking.room).await?;
    Ok(LiveBooking {
        guest,
        booking,
        room,
    })
}

/// Bookings of a guest in one status, oldest check-in first.
pub async fn guest_bookings_in_status(
    crm: &CrmClient,
    contact_id: &str,
    status: &str,
) -> Result<Vec<Booking>, StepError> {
    let soql = format!(
        "SELECT {} FROM Booking__c WHERE Guest__c = {} AND Status__c = {} \
         ORDER BY Check_In_Date__c LIMIT 20",
        Booking::FIELDS,
        soql::id_literal(contact_id).map_err(crm_error)?,
        soql::string(status)
    );
    crm.query(&soql).await.map_err(crm_error)
}

/// Live bookings (Reserved or Checked In) of a room overlapping `[from, to)`, other than
/// `except` (a booking id).
pub async fn overlapping_bookings(
    crm: &CrmClient,
    room_id: &str,
    from: NaiveDate,
    to: NaiveDate,
    except: Option<&str>,
) -> Result<Vec<Booking>, StepError> {
    let soql = format!(
        "SELECT {} FROM Booking__c WHERE Hotel_Room__c = {} \
         AND Status__c IN ('Reserved', 'Checked In') \
         AND Check_In_Date__c < {} AND Check_Out_Date__c > {} LIMIT 10",
        Booking::FIELDS,
        soql::id_literal(room_id).map_err(crm_error)?,
        soql::date(to),
        soql::date(from)
    );
    let bookings: Vec<Booking> = crm.query(&soql).await.map_err(crm_error)?;
    Ok(bookings
        .into_iter()
        .filter(|b| Some(b.id.as_str()) != except)
        .collect())
}

/// Whether the booking with this external id (a hold's `booking_ref`, or `crm:{Id}`) is
/// live (Reserved or Checked In) for some of the nights `[from, to)`.
pub async fn booking_is_live(
    crm: &CrmClient,
    booking_ref: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<bool, StepError> {
    let key = match booking_ref.strip_prefix("crm:") {
        Some(id) => format!("Id = {}", soql::id_literal(id).map_err(crm_error)?),
        None => format!("External_ID__c = {}", soql::string(booking_ref)),
    };
    let soql = format!(
        "SELECT Id FROM Booking__c WHERE {key} AND Status__c IN ('Reserved', 'Checked In') \
         AND Check_In_Date__c < {} AND Check_Out_Date__c > {} LIMIT 1",
        soql::date(to),
        soql::date(from)
    );
    let found: Vec<serde_json::Value> = crm.query(&soql).await.map_err(crm_error)?;
    Ok(!found.is_empty())
}

/// The booking with this external reference (a hold's `booking_ref`: its `External_ID__c`, or
/// `crm:{Id}`), if the CRM has it.
pub async fn booking_by_ref(
    crm: &CrmClient,
    booking_ref: &str,
) -> Result<Option<Booking>, StepError> {
    let key = match booking_ref.strip_prefix("crm:") {
        Some(id) => format!("Id = {}", soql::id_literal(id).map_err(crm_error)?),
        None => format!("External_ID__c = {}", soql::string(booking_ref)),
    };
    let soql = format!(
        "SELECT {} FROM Booking__c WHERE {key} LIMIT 1",
        Booking::FIELDS
    );
    Ok(crm
        .query(&soql)
        .await
        .map_err(crm_error)?
        .into_iter()
        .next())
}

/// Completed payments recorded for a booking.
pub async fn completed_payments(
    crm: &CrmClient,
    booking_id: &str,
) -> Result<Vec<PaymentTransaction>, StepError> {
    let soql = format!(
        "SELECT {} FROM Payment_Transaction__c WHERE Booking__c = {} \
         AND Type__c = 'Payment' AND Status__c = 'Completed' ORDER BY CreatedDate",
        PaymentTransaction::FIELDS,
        soql::id_literal(booking_id).map_err(crm_error)?
    );
    crm.query(&soql).await.map_err(crm_error)
}

/// Pending extra charges (room service, minibar, ...) recorded against a booking, in cents.
pub async fn pending_charges(crm: &CrmClient, booking_id: &str) -> Result<i64, StepError> {
    Ok(pending_charge_records(crm, booking_id)
        .await?
        .iter()
        .map(|c| dollars_to_cents(c.amount.unwrap_or(0.0)))
        .sum())
}

/// The pending extra charges recorded against a booking, oldest first.
pub async fn pending_charge_records(
    crm: &CrmClient,
    booking_id: &str,
) -> Result<Vec<PaymentTransaction>, StepError> {
    let soql = format!(
        "SELECT {} FROM Payment_Transaction__c WHERE Booking__c = {} \
         AND Type__c = 'Charge' AND Status__c = 'Pending' ORDER BY CreatedDate",
        PaymentTransaction::FIELDS,
        soql::id_literal(booking_id).map_err(crm_error)?
    );
    crm.query(&soql).await.map_err(crm_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_formatted_from_cents() {
        assert_eq!(money(12_345), "$123.45");
        assert_eq!(money(5), "$0.05");
        assert_eq!(money(244_500), "$2,445.00");
        assert_eq!(money(123_456_789), "$1,234,567.89");
        assert_eq!(money(100_000), "$1,000.00");
        assert_eq!(money(-5), "-$0.05");
        assert_eq!(dollars_to_cents(189.0), 18_900);
        assert_eq!(dollars_to_cents(0.29), 29);
    }

    /// The names serde gives a record's fields, sorted.
    fn names<T: Serialize>(record: &T) -> Vec<String> {
        let mut names: Vec<String> = match serde_json::to_value(record) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            other => panic!("a record serializes to an object, not {other:?}"),
        };
        names.sort();
        names
    }

    fn listed(fields: &str) -> Vec<String> {
        let mut names: Vec<String> = fields.split(',').map(|f| f.trim().to_string()).collect();
        names.sort();
        names
    }

    // The select lists are kept as literals (they read like the SOQL they go into); this keeps
    // them equal to the serde names, so a field added to a record is also queried.
    #[test]
    fn select_lists_name_exactly_the_record_fields() {
        let day = NaiveDate::from_ymd_opt(2026, 1, 10).expect("a date");
        let contact = Contact {
            id: "c".into(),
            first_name: None,
            last_name: None,
            email: None,
            phone: None,
            contact_type: None,
        };
        let room = Room {
            id: "r".into(),
            number: "101".into(),
            floor: None,
            room_type: None,
            status: room_status::VACANT.into(),
            nightly_rate: None,
            current_guest: None,
            max_occupancy: None,
        };
        let booking = Booking {
            id: "b".into(),
            number: "BK-1".into(),
            guest: "c".into(),
            room: "r".into(),
            check_in: day,
            check_out: day,
            status: booking_status::RESERVED.into(),
            opportunity: None,
            external_id: None,
            number_of_guests: None,
            special_requests: None,
        };
        let case = Case {
            id: "k".into(),
            number: None,
            subject: None,
            case_type: None,
            priority: None,
            status: None,
            room: None,
            contact: None,
        };
        let payment = PaymentTransaction {
            id: "p".into(),
            name: None,
            stripe_id: None,
            amount: None,
            kind: None,
            status: None,
            external_id: None,
        };
        assert_eq!(names(&contact), listed(Contact::FIELDS));
        assert_eq!(names(&room), listed(Room::FIELDS));
        assert_eq!(names(&booking), listed(Booking::FIELDS));
        assert_eq!(names(&case), listed(Case::FIELDS));
        assert_eq!(names(&payment), listed(PaymentTransaction::FIELDS));
        let segment = StaySegment {
            id: "s".into(),
            room: "r".into(),
            start: day,
            end: day,
            nightly_rate: None,
        };
        assert_eq!(names(&segment), listed(StaySegment::FIELDS));
    }
}
