//! The seed: a Dewy-Resort-like hotel, dated relative to the sandbox's "today" (UTC).
//!
//! Which guest is in which state is fixed for every seed (tests and the demo rely on it; see
//! [`SEEDED_GUESTS`] and [`BOOKINGS`]); the seed number varies only incidental data: loyalty
//! numbers, how far back the history stays lie, and the random parts of Stripe/Twilio ids.

use super::salesforce::schema::{self, ObjectSchema};
use super::salesforce::SfError;
use super::state::{SandboxState, SplitMix};
use chrono::{Duration, NaiveDate};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// A seeded room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeededRoom {
    /// The room number, `Hotel_Room__c.Name`.
    pub number: &'static str,
    pub floor: u32,
    pub room_type: &'static str,
    pub status: &'static str,
    pub nightly_rate_cents: i64,
    pub max_occupancy: u32,
}

const fn room(
    number: &'static str,
    floor: u32,
    room_type: &'static str,
    status: &'static str,
) -> SeededRoom {
    let (nightly_rate_cents, max_occupancy) = match room_type.as_bytes()[0] {
        b'S' if room_type.len() == 8 => (12_900, 2), // Standard
        b'D' => (18_900, 3),                         // Deluxe
        b'S' => (28_900, 4),                         // Suite
        _ => (48_900, 6),                            // Penthouse
    };
    SeededRoom {
        number,
        floor,
        room_type,
        status,
        nightly_rate_cents,
        max_occupancy,
    }
}

/// The 22 rooms: Occupied 9, Vacant 8, Cleaning 2, Maintenance 2, Out of Service 1.
/// Rates: Standard 129.00, Deluxe 189.00, Suite 289.00, Penthouse 489.00.
pub const ROOMS: &[SeededRoom] = &[
    room("101", 1, "Standard", "Occupied"),
    room("102", 1, "Standard", "Vacant"),
    room("103", 1, "Standard", "Vacant"),
    room("104", 1, "Standard", "Occupied"),
    room("105", 1, "Deluxe", "Occupied"),
    room("106", 1, "Deluxe", "Cleaning"),
    room("201", 2, "Standard", "Vacant"),
    room("202", 2, "Standard", "Vacant"),
    room("203", 2, "Deluxe", "Occupied"),
    room("204", 2, "Deluxe", "Vacant"),
    room("205", 2, "Deluxe", "Maintenance"),
    room("206", 2, "Suite", "Occupied"),
    room("301", 3, "Deluxe", "Occupied"),
    room("302", 3, "Deluxe", "Cleaning"),
    room("303", 3, "Suite", "Occupied"),
    room("304", 3, "Suite", "Vacant"),
    room("305", 3, "Suite", "Out of Service"),
    room("401", 4, "Suite", "Occupied"),
    room("402", 4, "Suite", "Vacant"),
    room("403", 4, "Penthouse", "Occupied"),
    room("404", 4, "Penthouse", "Maintenance"),
    room("405", 4, "Penthouse", "Vacant"),
];

/// Where a seeded guest stands on the sandbox's "today".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestState {
    /// Checked in, checking out on a later day.
    CheckedIn,
    /// Checked in, due to check out today (the checkout demo).
    CheckedInDepartingToday,
    /// A Reserved booking starting today on a Vacant room (the check-in demo).
    ArrivingToday,
    /// A Reserved booking starting today on a room still in Cleaning: check-in is refused
    /// until the room is set Vacant.
    ArrivingTodayRoomNotReady,
    /// Only future Reserved bookings (and past stays).
    FutureReservation,
}

/// A seeded guest contact (`Contact_Type__c` = Guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeededGuest {
    pub first_name: &'static str,
    pub last_name: &'static str,
    pub email: &'static str,
    pub phone: &'static str,
    pub state: GuestState,
    /// The room of the current or today's booking, if any.
    pub room_number: Option<&'static str>,
}

const fn guest(
    first_name: &'static str,
    last_name: &'static str,
    email: &'static str,
    phone: &'static str,
    state: GuestState,
    room_number: Option<&'static str>,
) -> SeededGuest {
    SeededGuest {
        first_name,
        last_name,
        email,
        phone,
        state,
        room_number,
    }
}

use GuestState::*;

/// The 12 guests. Stays are in [`BOOKINGS`].
pub const SEEDED_GUESTS: &[SeededGuest] = &[
    guest(
        "Emma",
        "Johnson",
        "emma.johnson@example.com",
        "+14155550101",
        CheckedInDepartingToday,
        Some("104"),
    ),
    guest(
        "Liam",
        "Smith",
        "liam.smith@example.com",
        "+14155550102",
        CheckedIn,
        Some("105"),
    ),
    guest(
        "Olivia",
        "Brown",
        "olivia.brown@example.com",
        "+14155550103",
        CheckedIn,
        Some("203"),
    ),
    guest(
        "Noah",
        "Garcia",
        "noah.garcia@example.com",
        "+14155550104",
        CheckedIn,
        Some("206"),
    ),
    guest(
        "Ava",
        "Martinez",
        "ava.martinez@example.com",
        "+14155550105",
        CheckedIn,
        Some("301"),
    ),
    guest(
        "Ethan",
        "Davis",
        "ethan.davis@example.com",
        "+14155550106",
        CheckedIn,
        Some("303"),
    ),
    guest(
        "Sophia",
        "Wilson",
        "sophia.wilson@example.com",
        "+14155550107",
        CheckedIn,
        Some("401"),
    ),
    guest(
        "Mason",
        "Anderson",
        "mason.anderson@example.com",
        "+14155550108",
        CheckedIn,
        Some("403"),
    ),
    guest(
        "Isabella",
        "Thomas",
        "isabella.thomas@example.com",
        "+14155550109",
        CheckedIn,
        Some("101"),
    ),
    guest(
        "James",
        "Taylor",
        "james.taylor@example.com",
        "+14155550110",
        ArrivingToday,
        Some("102"),
    ),
    guest(
        "Mia",
        "Moore",
        "mia.moore@example.com",
        "+14155550111",
        ArrivingTodayRoomNotReady,
        Some("302"),
    ),
    guest(
        "Lucas",
        "Jackson",
        "lucas.jackson@example.com",
        "+14155550112",
        FutureReservation,
        None,
    ),
];

/// The guest due to check out today (Standard room 104, 3 nights: 387.00).
pub const CHECKOUT_GUEST: &str = "emma.johnson@example.com";
/// The guest arriving today on Vacant room 102.
pub const CHECKIN_GUEST: &str = "james.taylor@example.com";
/// The guest arriving today whose room (302) is still Cleaning.
pub const ROOM_NOT_READY_GUEST: &str = "mia.moore@example.com";
/// A checked-in guest (room 105, until today+2) whose room is free afterwards: a stay extension fits.
pub const EXTENDABLE_GUEST: &str = "liam.smith@example.com";
/// A checked-in guest (room 101, until tomorrow) whose room is reserved from tomorrow: an
/// extension conflicts.
pub const NOT_EXTENDABLE_GUEST: &str = "isabella.thomas@example.com";
/// The manager contact.
pub const MANAGER_EMAIL: &str = "manager@dewy.example";
/// The front desk contact (also `Contact_Type__c` = Manager).
pub const FRONT_DESK_EMAIL: &str = "frontdesk@dewy.example";

/// The seeded guest with this email.
pub fn guest_by_email(email: &str) -> Option<&'static SeededGuest> {
    SEEDED_GUESTS
        .iter()
        .find(|g| g.email.eq_ignore_ascii_case(email))
}

/// The seeded room with this number.
pub fn room_by_number(number: &str) -> Option<&'static SeededRoom> {
    ROOMS.iter().find(|r| r.number == number)
}

/// A seeded booking; dates are days relative to today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeededBooking {
    pub external_id: &'static str,
    pub guest_email: &'static str,
    pub room_number: &'static str,
    pub check_in_offset_days: i64,
    pub check_out_offset_days: i64,
    pub status: &'static str,
    /// History stays move further back by a seed-dependent 0-4 days.
    pub history: bool,
}

const fn booking(
    external_id: &'static str,
    guest_email: &'static str,
    room_number: &'static str,
    check_in_offset_days: i64,
    check_out_offset_days: i64,
    status: &'static str,
) -> SeededBooking {
    SeededBooking {
        external_id,
        guest_email,
        room_number,
        check_in_offset_days,
        check_out_offset_days,
        status,
        history: check_out_offset_days < 0,
    }
}

/// The bookings (booking numbers BK-000001.. follow this order), each with an Opportunity.
pub const BOOKINGS: &[SeededBooking] = &[
    booking(
        "seed-bk-01",
        "isabella.thomas@example.com",
        "101",
        -1,
        1,
        "Checked In",
    ),
    booking(
        "seed-bk-02",
        "emma.johnson@example.com",
        "104",
        -3,
        0,
        "Checked In",
    ),
    booking(
        "seed-bk-03",
        "liam.smith@example.com",
        "105",
        -2,
        2,
        "Checked In",
    ),
    booking(
        "seed-bk-04",
        "olivia.brown@example.com",
        "203",
        -1,
        3,
        "Checked In",
    ),
    booking(
        "seed-bk-05",
        "noah.garcia@example.com",
        "206",
        -4,
        1,
        "Checked In",
    ),
    booking(
        "seed-bk-06",
        "ava.martinez@example.com",
        "301",
        -2,
        1,
        "Checked In",
    ),
    booking(
        "seed-bk-07",
        "ethan.davis@example.com",
        "303",
        -5,
        2,
        "Checked In",
    ),
    booking(
        "seed-bk-08",
        "sophia.wilson@example.com",
        "401",
        -1,
        4,
        "Checked In",
    ),
    booking(
        "seed-bk-09",
        "mason.anderson@example.com",
        "403",
        -2,
        3,
        "Checked In",
    ),
    booking(
        "seed-bk-10",
        "james.taylor@example.com",
        "102",
        0,
        2,
        "Reserved",
    ),
    booking(
        "seed-bk-11",
        "mia.moore@example.com",
        "302",
        0,
        3,
        "Reserved",
    ),
    booking(
        "seed-bk-12",
        "lucas.jackson@example.com",
        "101",
        1,
        4,
        "Reserved",
    ),
    booking(
        "seed-bk-13",
        "lucas.jackson@example.com",
        "402",
        7,
        10,
        "Reserved",
    ),
    booking(
        "seed-bk-14",
        "lucas.jackson@example.com",
        "202",
        -30,
        -27,
        "Checked Out",
    ),
    booking(
        "seed-bk-15",
        "emma.johnson@example.com",
        "304",
        -60,
        -57,
        "Checked Out",
    ),
    booking(
        "seed-bk-16",
        "noah.garcia@example.com",
        "201",
        -20,
        -18,
        "Checked Out",
    ),
    booking(
        "seed-bk-17",
        "mia.moore@example.com",
        "103",
        -10,
        -8,
        "Cancelled",
    ),
    booking(
        "seed-bk-18",
        "ava.martinez@example.com",
        "204",
        -15,
        -14,
        "No Show",
    ),
    booking(
        "seed-bk-19",
        "ethan.davis@example.com",
        "304",
        14,
        17,
        "Reserved",
    ),
    booking(
        "seed-bk-20",
        "noah.garcia@example.com",
        "405",
        21,
        23,
        "Reserved",
    ),
];

/// Staff contacts: (first, last, email, phone).
const STAFF: &[(&str, &str, &str, &str)] = &[
    ("Grace", "Kim", MANAGER_EMAIL, "+14155550190"),
    ("Daniel", "Reyes", FRONT_DESK_EMAIL, "+14155550191"),
];

/// Vendor contacts: (first, last, email, phone, specialty).
pub const VENDORS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "Marco",
        "Rossi",
        "dispatch@bayareaplumbing.example",
        "+14155550201",
        "Plumbing",
    ),
    (
        "Priya",
        "Patel",
        "service@brightspark.example",
        "+14155550202",
        "Electrical",
    ),
    (
        "Tom",
        "Becker",
        "jobs@coolbreezehvac.example",
        "+14155550203",
        "HVAC",
    ),
    (
        "Ana",
        "Souza",
        "ana@upliftelevators.example",
        "+14155550204",
        "Elevator",
    ),
    (
        "Ben",
        "Carter",
        "ben@cartercarpentry.example",
        "+14155550205",
        "Carpentry",
    ),
    (
        "Chloe",
        "Nguyen",
        "chloe@freshcoatpainting.example",
        "+14155550206",
        "Painting",
    ),
    (
        "Omar",
        "Haddad",
        "omar@pestfree.example",
        "+14155550207",
        "Pest Control",
    ),
    (
        "Lena",
        "Fischer",
        "lena@greenleaflandscaping.example",
        "+14155550208",
        "Landscaping",
    ),
    (
        "Diego",
        "Alvarez",
        "diego@clearwaterpools.example",
        "+14155550209",
        "Pool & Spa",
    ),
    (
        "Hannah",
        "Okafor",
        "hannah@fixitappliance.example",
        "+14155550210",
        "Appliance Repair",
    ),
    (
        "Victor",
        "Lang",
        "victor@keysafe.example",
        "+14155550211",
        "Locksmith",
    ),
];

fn stage(status: &str) -> &'static str {
    match status {
        "Reserved" => "Booking Confirmed",
        "Checked In" => "Checked In",
        "Checked Out" => "Closed Won",
        _ => "Closed Lost",
    }
}

fn object(pairs: Value) -> Map<String, Value> {
    match pairs {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn create(
    state: &mut SandboxState,
    schema: &'static ObjectSchema,
    body: Value,
) -> Result<String, SfError> {
    let now = state.now();
    state.salesforce.create(schema, &object(body), now)
}

fn date(today: NaiveDate, offset: i64) -> String {
    (today + Duration::days(offset))
        .format("%Y-%m-%d")
        .to_string()
}

/// Fills an empty state with the seed.
pub fn populate(state: &mut SandboxState) -> Result<(), SfError> {
    let today = state.today;
    let mut rng = SplitMix::new(state.seed ^ 0xD1E5);
    let history_shift = (rng.next_u64() % 5) as i64;

    let mut contacts: HashMap<&str, String> = HashMap::new();
    for g in SEEDED_GUESTS {
        let loyalty = format!("DW{:06}", rng.next_u64() % 1_000_000);
        let id = create(
            state,
            &schema::CONTACT,
            json!({
                "FirstName": g.first_name, "LastName": g.last_name, "Email": g.email,
                "Phone": g.phone, "Contact_Type__c": "Guest", "Unique_Email__c": g.email,
                "Loyalty_Number__c": loyalty,
            }),
        )?;
        contacts.insert(g.email, id);
    }
    for (first, last, email, phone) in STAFF {
        let id = create(
            state,
            &schema::CONTACT,
            json!({
                "FirstName": first, "LastName": last, "Email": email, "Phone": phone,
                "Contact_Type__c": "Manager", "Unique_Email__c": email,
            }),
        )?;
        contacts.insert(email, id);
    }
    let mut vendors: HashMap<&str, String> = HashMap::new();
    for (first, last, email, phone, specialty) in VENDORS {
        let id = create(
            state,
            &schema::CONTACT,
            json!({
                "FirstName": first, "LastName": last, "Email": email, "Phone": phone,
                "Contact_Type__c": "Vendor", "Unique_Email__c": email,
                "Vendor_Specialty__c": specialty,
            }),
        )?;
        vendors.insert(specialty, id);
    }

    let mut rooms: HashMap<&str, String> = HashMap::new();
    for r in ROOMS {
        let id = create(
            state,
            &schema::HOTEL_ROOM,
            json!({
                "Name": r.number, "Floor__c": r.floor, "Room_Type__c": r.room_type,
                "Status__c": r.status, "Nightly_Rate__c": r.nightly_rate_cents as f64 / 100.0,
                "Max_Occupancy__c": r.max_occupancy,
            }),
        )?;
        rooms.insert(r.number, id);
    }

    let mut bookings: HashMap<&str, String> = HashMap::new();
    for (i, b) in BOOKINGS.iter().enumerate() {
        let shift = if b.history { history_shift } else { 0 };
        let check_in = date(today, b.check_in_offset_days - shift);
        let check_out = date(today, b.check_out_offset_days - shift);
        let nights = b.check_out_offset_days - b.check_in_offset_days;
        let (Some(guest), Some(room)) =
            (guest_by_email(b.guest_email), room_by_number(b.room_number))
        else {
            continue;
        };
        let contact = contacts.get(b.guest_email).cloned();
        let room_id = rooms.get(b.room_number).cloned();
        let opportunity = create(
            state,
            &schema::OPPORTUNITY,
            json!({
                "Name": format!("{} {} - Room {} - {check_in}", guest.first_name, guest.last_name, room.number),
                "StageName": stage(b.status), "CloseDate": check_out,
                "Amount": (nights * room.nightly_rate_cents) as f64 / 100.0,
                "Contact__c": contact,
                "Payment_ID__c": if b.status == "Checked In" { Some("PENDING_CHECKIN") } else { None },
                "External_ID__c": format!("seed-opp-{:02}", i + 1),
            }),
        )?;
        let id = create(
            state,
            &schema::BOOKING,
            json!({
                "Guest__c": contact, "Hotel_Room__c": room_id, "Opportunity__c": opportunity,
                "Check_In_Date__c": check_in, "Check_Out_Date__c": check_out,
                "Number_of_Guests__c": 1 + (i as u32 % room.max_occupancy.min(2)),
                "Status__c": b.status, "External_ID__c": b.external_id,
            }),
        )?;
        bookings.insert(b.external_id, id);
        if b.status == "Checked In" {
            let now = state.now();
            if let Some(room_id) = &room_id {
                state.salesforce.update(
                    &schema::HOTEL_ROOM,
                    room_id,
                    &object(json!({"Current_Guest__c": contact})),
                    now,
                )?;
            }
        }
    }

    let manager = contacts.get(MANAGER_EMAIL).cloned();
    let olivia = contacts.get("olivia.brown@example.com").cloned();
    let cases = [
        json!({"Subject": "Leaking shower valve", "Description": "Shower valve leaks behind the wall; water stains on the ceiling below.",
               "Type": "Maintenance", "Priority": "High", "Status": "Working", "Origin": "Internal",
               "ContactId": manager, "Room__c": rooms.get("205"), "Vendor__c": vendors.get("Plumbing"),
               "External_ID__c": "seed-case-1"}),
        json!({"Subject": "Air conditioning not cooling", "Description": "Penthouse AC blows warm air; compressor suspected.",
               "Type": "Maintenance", "Priority": "Medium", "Status": "Escalated", "Origin": "Internal",
               "ContactId": manager, "Room__c": rooms.get("404"), "Vendor__c": vendors.get("HVAC"),
               "External_ID__c": "seed-case-2"}),
        json!({"Subject": "Water damage from roof leak", "Description": "Ceiling and carpet damaged after the storm; room out of service.",
               "Type": "Facilities", "Priority": "Urgent", "Status": "Working", "Origin": "Internal",
               "ContactId": manager, "Room__c": rooms.get("305"), "Vendor__c": vendors.get("Carpentry"),
               "External_ID__c": "seed-case-3"}),
        json!({"Subject": "Extra towels and pillows", "Description": "Two extra towels and a firm pillow, please.",
               "Type": "Housekeeping", "Priority": "Low", "Status": "Closed", "Origin": "Web",
               "ContactId": olivia, "Room__c": rooms.get("203"), "Booking__c": bookings.get("seed-bk-04"),
               "External_ID__c": "seed-case-4"}),
    ];
    for case in cases {
        create(state, &schema::CASE, case)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::SandboxState;

    fn state() -> SandboxState {
        SandboxState::at(3, NaiveDate::from_ymd_opt(2026, 11, 25).expect("date"))
    }

    fn count(state: &SandboxState, schema: &ObjectSchema, field: &str, value: &str) -> usize {
        state
            .salesforce
            .all(schema)
            .filter(|r| r.get(field).and_then(Value::as_str) == Some(value))
            .count()
    }

    #[test]
    fn seed_has_every_room_status_and_the_documented_counts() {
        let mut fresh = SandboxState::at(3, NaiveDate::from_ymd_opt(2026, 11, 25).expect("date"));
        fresh.salesforce = Default::default();
        populate(&mut fresh).expect("the seed is valid");
        let state = state();
        assert_eq!(state.salesforce.all(&schema::HOTEL_ROOM).count(), 22);
        for (status, n) in [
            ("Occupied", 9),
            ("Vacant", 8),
            ("Cleaning", 2),
            ("Maintenance", 2),
            ("Out of Service", 1),
        ] {
            assert_eq!(
                count(&state, &schema::HOTEL_ROOM, "Status__c", status),
                n,
                "{status}"
            );
        }
        assert_eq!(
            count(&state, &schema::CONTACT, "Contact_Type__c", "Guest"),
            12
        );
        assert_eq!(
            count(&state, &schema::CONTACT, "Contact_Type__c", "Vendor"),
            11
        );
        assert_eq!(
            count(&state, &schema::CONTACT, "Contact_Type__c", "Manager"),
            2
        );
        assert_eq!(
            state.salesforce.all(&schema::BOOKING).count(),
            BOOKINGS.len()
        );
        assert_eq!(
            state.salesforce.all(&schema::OPPORTUNITY).count(),
            BOOKINGS.len()
        );
    }

    #[test]
    fn every_occupied_room_has_its_checked_in_guest() {
        let state = state();
        let checked_in: Vec<_> = BOOKINGS
            .iter()
            .filter(|b| b.status == "Checked In")
            .collect();
        assert_eq!(checked_in.len(), 9);
        for b in checked_in {
            assert_eq!(
                room_by_number(b.room_number).map(|r| r.status),
                Some("Occupied")
            );
            let room = state
                .salesforce
                .all(&schema::HOTEL_ROOM)
                .find(|r| r.get("Name").and_then(Value::as_str) == Some(b.room_number))
                .expect("room");
            let guest = state
                .salesforce
                .all(&schema::CONTACT)
                .find(|c| c.get("Email").and_then(Value::as_str) == Some(b.guest_email))
                .expect("guest");
            assert_eq!(room.get("Current_Guest__c"), guest.get("Id"));
        }
    }

    #[test]
    fn documented_guest_states_match_the_bookings() {
        for g in SEEDED_GUESTS {
            let current = BOOKINGS.iter().find(|b| {
                b.guest_email == g.email
                    && (b.status == "Checked In"
                        || (b.status == "Reserved" && b.check_in_offset_days == 0))
            });
            match g.state {
                CheckedIn | CheckedInDepartingToday => {
                    let b = current.expect("a stay");
                    assert_eq!(b.status, "Checked In");
                    assert_eq!(
                        b.check_out_offset_days == 0,
                        g.state == CheckedInDepartingToday,
                        "{}",
                        g.email
                    );
                }
                ArrivingToday | ArrivingTodayRoomNotReady => {
                    let b = current.expect("an arrival");
                    let status = room_by_number(b.room_number).map(|r| r.status);
                    assert_eq!(
                        status == Some("Vacant"),
                        g.state == ArrivingToday,
                        "{}",
                        g.email
                    );
                }
                FutureReservation => assert!(current.is_none()),
            }
            assert_eq!(current.map(|b| b.room_number), g.room_number, "{}", g.email);
        }
        assert_eq!(
            guest_by_email(CHECKOUT_GUEST).map(|g| g.state),
            Some(CheckedInDepartingToday)
        );
        assert_eq!(
            guest_by_email(CHECKIN_GUEST).map(|g| g.state),
            Some(ArrivingToday)
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_data() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 25).expect("date");
        let a = SandboxState::at(1, today).ledger();
        let b = SandboxState::at(1, today).ledger();
        let strip = |mut v: Value| {
            for list in v["objects"].as_object_mut().expect("objects").values_mut() {
                for o in list.as_array_mut().expect("list") {
                    if let Some(o) = o.as_object_mut() {
                        o.remove("CreatedDate");
                        o.remove("LastModifiedDate");
                    }
                }
            }
            v
        };
        assert_eq!(strip(a), strip(b), "same seed, same data");
    }
}
