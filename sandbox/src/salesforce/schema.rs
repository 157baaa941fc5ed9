//! The sObjects the sandbox serves and their fields.

/// A field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The record's own id.
    Id,
    /// A lookup to a record of the named sObject.
    Ref(&'static str),
    /// Text up to a length.
    Text(usize),
    Email,
    Phone,
    /// A restricted picklist: only these values.
    Picklist(&'static [&'static str]),
    /// A number with this many decimal places (0 means whole numbers, served as JSON integers).
    Number(u8),
    Date,
    DateTime,
    Bool,
}

impl Kind {
    /// The Salesforce describe type name.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Id => "id",
            Kind::Ref(_) => "reference",
            Kind::Text(n) if n > 255 => "textarea",
            Kind::Text(_) => "string",
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Picklist(_) => "picklist",
            Kind::Number(2) => "currency",
            Kind::Number(_) => "double",
            Kind::Date => "date",
            Kind::DateTime => "datetime",
            Kind::Bool => "boolean",
        }
    }

    /// Text-like kinds compare case-insensitively in SOQL.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            Kind::Text(_) | Kind::Email | Kind::Phone | Kind::Picklist(_)
        )
    }

    pub fn is_id(self) -> bool {
        matches!(self, Kind::Id | Kind::Ref(_))
    }
}

/// One field.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    /// False for the id, system dates, auto numbers and formulas.
    pub writable: bool,
    pub unique: bool,
    pub external_id: bool,
    pub default: Option<&'static str>,
}

const fn field(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
        writable: true,
        unique: false,
        external_id: false,
        default: None,
    }
}

impl Field {
    const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    const fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    /// A unique external id (upserts key on it).
    const fn external_id(mut self) -> Self {
        self.unique = true;
        self.external_id = true;
        self
    }

    const fn default(mut self, value: &'static str) -> Self {
        self.default = Some(value);
        self
    }
}

/// How an auto-number `Name` (or `CaseNumber`) is formatted.
#[derive(Debug, Clone, Copy)]
pub struct AutoNumber {
    pub field: &'static str,
    pub prefix: &'static str,
    pub width: usize,
    pub start: u64,
}

/// One sObject.
#[derive(Debug)]
pub struct ObjectSchema {
    pub name: &'static str,
    /// The first three characters of its ids.
    pub key_prefix: &'static str,
    pub fields: &'static [Field],
    pub auto_number: Option<AutoNumber>,
}

impl ObjectSchema {
    /// The field named `name`, case-insensitively (like Salesforce).
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

const ID: Field = field("Id", Kind::Id).read_only();
const CREATED: Field = field("CreatedDate", Kind::DateTime).read_only();
const MODIFIED: Field = field("LastModifiedDate", Kind::DateTime).read_only();
const EXTERNAL_ID: Field = field("External_ID__c", Kind::Text(255)).external_id();

pub const CONTACT_TYPES: &[&str] = &["Guest", "Manager", "Vendor"];
pub const ROOM_TYPES: &[&str] = &["Standard", "Deluxe", "Suite", "Penthouse"];
pub const ROOM_STATUSES: &[&str] = &[
    "Vacant",
    "Occupied",
    "Cleaning",
    "Maintenance",
    "Out of Service",
];
pub const BOOKING_STATUSES: &[&str] = &[
    "Reserved",
    "Checked In",
    "Checked Out",
    "Cancelled",
    "No Show",
];
pub const CASE_PRIORITIES: &[&str] = &["Low", "Medium", "High", "Urgent"];
pub const CASE_STATUSES: &[&str] = &["New", "Working", "Escalated", "Resolved", "Closed"];
pub const TRANSACTION_TYPES: &[&str] = &["Charge", "Payment", "Refund"];
pub const TRANSACTION_STATUSES: &[&str] =
    &["Pending", "Completed", "Failed", "Cancelled", "Refunded"];
pub const SMS_STATUSES: &[&str] = &["Queued", "Sent", "Delivered", "Failed", "Undelivered"];

pub static CONTACT: ObjectSchema = ObjectSchema {
    name: "Contact",
    key_prefix: "003",
    fields: &[
        ID,
        // Compound "FirstName LastName", computed.
        field("Name", Kind::Text(121)).read_only(),
        field("FirstName", Kind::Text(40)),
        field("LastName", Kind::Text(80)).required(),
        field("Email", Kind::Email),
        field("Phone", Kind::Phone),
        field("Contact_Type__c", Kind::Picklist(CONTACT_TYPES)).default("Guest"),
        field("Unique_Email__c", Kind::Email).external_id(),
        field("Loyalty_Number__c", Kind::Text(20)),
        field("Vendor_Specialty__c", Kind::Text(100)),
        CREATED,
        MODIFIED,
    ],
    auto_number: None,
};

pub static HOTEL_ROOM: ObjectSchema = ObjectSchema {
    name: "Hotel_Room__c",
    key_prefix: "a02",
    fields: &[
        ID,
        field("Name", Kind::Text(80)).required(),
        field("Floor__c", Kind::Number(0)),
        field("Room_Type__c", Kind::Picklist(ROOM_TYPES)).default("Standard"),
        field("Status__c", Kind::Picklist(ROOM_STATUSES)).default("Vacant"),
        field("Nightly_Rate__c", Kind::Number(2)),
        field("Max_Occupancy__c", Kind::Number(0)),
        field("Current_Guest__c", Kind::Ref("Contact")),
        CREATED,
        MODIFIED,
    ],
    auto_number: None,
};

pub static BOOKING: ObjectSchema = ObjectSchema {
    name: "Booking__c",
    key_prefix: "a01",
    fields: &[
        ID,
        field("Name", Kind::Text(80)).read_only(),
        field("Guest__c", Kind::Ref("Contact")).required(),
        field("Hotel_Room__c", Kind::Ref("Hotel_Room__c")).required(),
        field("Opportunity__c", Kind::Ref("Opportunity")),
        field("Check_In_Date__c", Kind::Date).required(),
        field("Check_Out_Date__c", Kind::Date).required(),
        // Formula: Check_Out_Date__c - Check_In_Date__c.
        field("Total_Nights__c", Kind::Number(0)).read_only(),
        field("Number_of_Guests__c", Kind::Number(0)),
        field("Special_Requests__c", Kind::Text(32_768)),
        field("Status__c", Kind::Picklist(BOOKING_STATUSES)).default("Reserved"),
        EXTERNAL_ID,
        CREATED,
        MODIFIED,
    ],
    auto_number: Some(AutoNumber {
        field: "Name",
        prefix: "BK-",
        width: 6,
        start: 1,
    }),
};

pub static OPPORTUNITY: ObjectSchema = ObjectSchema {
    name: "Opportunity",
    key_prefix: "006",
    fields: &[
        ID,
        field("Name", Kind::Text(120)).required(),
        // An unrestricted picklist in Salesforce: Dewy's stages are not all in its metadata.
        field("StageName", Kind::Text(40)).required(),
        field("CloseDate", Kind::Date),
        field("Amount", Kind::Number(2)),
        field("Contact__c", Kind::Ref("Contact")),
        field("Payment_ID__c", Kind::Text(255)),
        EXTERNAL_ID,
        CREATED,
        MODIFIED,
    ],
    auto_number: None,
};

pub static CASE: ObjectSchema = ObjectSchema {
    name: "Case",
    key_prefix: "500",
    fields: &[
        ID,
        field("CaseNumber", Kind::Text(30)).read_only(),
        field("Subject", Kind::Text(255)),
        field("Description", Kind::Text(32_000)),
        // An unrestricted picklist in Salesforce.
        field("Type", Kind::Text(40)),
        field("Priority", Kind::Picklist(CASE_PRIORITIES)).default("Medium"),
        field("Status", Kind::Picklist(CASE_STATUSES)).default("New"),
        field("Origin", Kind::Text(40)),
        field("ContactId", Kind::Ref("Contact")),
        field("Room__c", Kind::Ref("Hotel_Room__c")),
        field("Booking__c", Kind::Ref("Booking__c")),
        field("Vendor__c", Kind::Ref("Contact")),
        EXTERNAL_ID,
        CREATED,
        MODIFIED,
    ],
    auto_number: Some(AutoNumber {
        field: "CaseNumber",
        prefix: "",
        width: 8,
        start: 1001,
    }),
};

pub static PAYMENT_TRANSACTION: ObjectSchema = ObjectSchema {
    name: "Payment_Transaction__c",
    key_prefix: "a03",
    fields: &[
        ID,
        field("Name", Kind::Text(80)).read_only(),
        field("Booking__c", Kind::Ref("Booking__c")),
        field("Opportunity__c", Kind::Ref("Opportunity")),
        field("Stripe_Transaction_ID__c", Kind::Text(255)),
        field("Amount__c", Kind::Number(2)),
        field("Type__c", Kind::Picklist(TRANSACTION_TYPES)).default("Payment"),
        field("Status__c", Kind::Picklist(TRANSACTION_STATUSES)).default("Pending"),
        EXTERNAL_ID,
        CREATED,
        MODIFIED,
    ],
    auto_number: Some(AutoNumber {
        field: "Name",
        prefix: "PT-",
        width: 6,
        start: 1,
    }),
};

pub static SMS_NOTIFICATION: ObjectSchema = ObjectSchema {
    name: "SMS_Notification__c",
    key_prefix: "a04",
    fields: &[
        ID,
        field("Name", Kind::Text(80)).read_only(),
        field("To__c", Kind::Phone),
        field("Body__c", Kind::Text(1600)),
        field("Twilio_Message_SID__c", Kind::Text(64)),
        field("Status__c", Kind::Picklist(SMS_STATUSES)).default("Queued"),
        field("Case__c", Kind::Ref("Case")),
        field("Booking__c", Kind::Ref("Booking__c")),
        EXTERNAL_ID,
        CREATED,
        MODIFIED,
    ],
    auto_number: Some(AutoNumber {
        field: "Name",
        prefix: "SMS-",
        width: 6,
        start: 1,
    }),
};

/// A note on a case (Dewy's custom object: who wrote what, when).
pub static CASE_NOTE: ObjectSchema = ObjectSchema {
    name: "Case_Note__c",
    key_prefix: "a05",
    fields: &[
        ID,
        field("Name", Kind::Text(80)).read_only(),
        field("Case__c", Kind::Ref("Case")).required(),
        field("Body__c", Kind::Text(4000)).required(),
        field("Author__c", Kind::Text(255)),
        EXTERNAL_ID,
        CREATED,
        MODIFIED,
    ],
    auto_number: Some(AutoNumber {
        field: "Name",
        prefix: "CN-",
        width: 6,
        start: 1,
    }),
};

/// The nights a booking spent in a room it has since left (a mid-stay upgrade or room move),
/// at the rate that held then: the bill charges those nights by it, the rest by the booking's
/// current room.
pub static STAY_SEGMENT: ObjectSchema = ObjectSchema {
    name: "Stay_Segment__c",
    key_prefix: "a06",
    fields: &[
        ID,
        field("Name", Kind::Text(80)).read_only(),
        field("Booking__c", Kind::Ref("Booking__c")).required(),
        field("Hotel_Room__c", Kind::Ref("Hotel_Room__c")).required(),
        field("Start_Date__c", Kind::Date).required(),
        field("End_Date__c", Kind::Date).required(),
        field("Nightly_Rate__c", Kind::Number(2)).required(),
        EXTERNAL_ID,
        CREATED,
        MODIFIED,
    ],
    auto_number: Some(AutoNumber {
        field: "Name",
        prefix: "SEG-",
        width: 6,
        start: 1,
    }),
};

/// Every sObject, in ledger order.
pub static OBJECTS: [&ObjectSchema; 9] = [
    &HOTEL_ROOM,
    &CONTACT,
    &BOOKING,
    &OPPORTUNITY,
    &CASE,
    &PAYMENT_TRANSACTION,
    &SMS_NOTIFICATION,
    &CASE_NOTE,
    &STAY_SEGMENT,
];

/// The sObject named `name` (exact API name, case-insensitive like Salesforce).
pub fn object(name: &str) -> Option<&'static ObjectSchema> {
    OBJECTS
        .iter()
        .copied()
        .find(|o| o.name.eq_ignore_ascii_case(name))
}

/// The sObject whose ids start with `id`'s key prefix.
pub fn object_of_id(id: &str) -> Option<&'static ObjectSchema> {
    OBJECTS
        .iter()
        .copied()
        .find(|o| id.starts_with(o.key_prefix))
}

/// Salesforce's 18-character id: the 15-character case-sensitive id plus a 3-character suffix
/// encoding which of its letters are upper case.
pub fn id18(id15: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let bytes = id15.as_bytes();
    let mut suffix = String::new();
    for chunk in bytes.chunks(5).take(3) {
        let mut bits = 0usize;
        for (i, b) in chunk.iter().enumerate() {
            if b.is_ascii_uppercase() {
                bits |= 1 << i;
            }
        }
        suffix.push(char::from(ALPHABET[bits]));
    }
    format!("{id15}{suffix}")
}

/// The 18-character form of a 15- or 18-character id, or `None` if it is not one.
pub fn normalize_id(id: &str) -> Option<String> {
    if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        15 => Some(id18(id)),
        18 if id18(&id[..15]) == id => Some(id.to_string()),
        _ => None,
    }
}

/// The id of the `n`th record of `schema`.
pub fn make_id(schema: &ObjectSchema, n: u64) -> String {
    id18(&format!("{}Dw{:010}", schema.key_prefix, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_salesforce_checksum() {
        // A documented pair: 001A0000006Vm9r -> 001A0000006Vm9rIAC.
        assert_eq!(id18("001A0000006Vm9r"), "001A0000006Vm9rIAC");
        let id = make_id(&CONTACT, 7);
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("003"));
        assert_eq!(normalize_id(&id[..15]), Some(id.clone()));
        assert_eq!(normalize_id(&id), Some(id.clone()));
        assert_eq!(normalize_id("003' OR Id != '"), None);
    }

    #[test]
    fn every_object_has_an_id_and_system_dates() {
        for object in OBJECTS {
            for name in ["Id", "CreatedDate", "LastModifiedDate"] {
                assert!(object.field(name).is_some(), "{} lacks {name}", object.name);
            }
        }
    }
}
