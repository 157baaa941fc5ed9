//! Every conversion between the legacy system's world and ours, in one place: ISO-8859-1 text,
//! `DD.MM.YYYY` dates, its room status codes, task types and statuses, priorities, sequence
//! numbers, and the classification of its SOAP Faults.

use super::super::error::Outcome;
use crate::hotel::records::{room_status, Priority};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The system reads and writes ISO-8859-1.
pub const CHARSET: &str = "ISO-8859-1";

/// Text to ISO-8859-1 bytes. A character the charset cannot hold becomes `?`, as the system
/// itself would store it; we send `?` rather than let the system misread UTF-8 bytes.
pub fn encode(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// ISO-8859-1 bytes to text: each byte is the character of the same number.
pub fn decode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// A date as the system writes it: `DD.MM.YYYY`.
pub fn format_date(date: NaiveDate) -> String {
    date.format("%d.%m.%Y").to_string()
}

/// A `DD.MM.YYYY` date from the system.
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    let text = text.trim();
    let b = text.as_bytes();
    if b.len() != 10 || b[2] != b'.' || b[5] != b'.' {
        return None;
    }
    NaiveDate::parse_from_str(text, "%d.%m.%Y").ok()
}

/// The CRM's room status (`Hotel_Room__c.Status__c`, what every skill works with) for the
/// system's code: `VC` vacant clean, `VD` vacant dirty (being cleaned), `OC`/`OD` occupied
/// clean/dirty, `OOO` out of order (maintenance), `OOS` out of service.
pub fn room_status_of(code: &str) -> Option<&'static str> {
    Some(match code.trim() {
        "VC" => room_status::VACANT,
        "VD" => room_status::CLEANING,
        "OC" | "OD" => room_status::OCCUPIED,
        "OOO" => room_status::MAINTENANCE,
        "OOS" => room_status::OUT_OF_SERVICE,
        _ => return None,
    })
}

/// What a task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Clean,
    Inspect,
    Repair,
}

impl TaskKind {
    pub fn code(self) -> &'static str {
        match self {
            TaskKind::Clean => "CLN",
            TaskKind::Inspect => "INS",
            TaskKind::Repair => "REP",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code.trim() {
            "CLN" => Some(TaskKind::Clean),
            "INS" => Some(TaskKind::Inspect),
            "REP" => Some(TaskKind::Repair),
            _ => None,
        }
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Open,
    Done,
    Cancelled,
}

impl TaskStatus {
    pub fn from_code(code: &str) -> Option<Self> {
        match code.trim() {
            "OPN" => Some(TaskStatus::Open),
            "DON" => Some(TaskStatus::Done),
            "CAN" => Some(TaskStatus::Cancelled),
            _ => None,
        }
    }
}

/// The system's priority: 1 (urgent) to 4 (low).
pub fn priority_code(priority: Priority) -> u8 {
    match priority {
        Priority::Urgent => 1,
        Priority::High => 2,
        Priority::Medium => 3,
        Priority::Low => 4,
    }
}

/// Our priority for the system's number (out of range reads as Low).
pub fn priority_of(code: u8) -> Priority {
    match code {
        1 => Priority::Urgent,
        2 => Priority::High,
        3 => Priority::Medium,
        _ => Priority::Low,
    }
}

/// The sequence number of a request: a stable function of the step's idempotency key (and the
/// operation), so a retried step sends the same number and the system answers it again from
/// its journal instead of acting twice. FNV-1a, 63 bits (the WSDL's `xsd:long`, positive).
pub fn sequence_number(idempotency_key: &str, operation: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in operation.bytes().chain([0]).chain(idempotency_key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash & (u64::MAX >> 1)).max(1)
}

/// The reference a task carries: the step's key, cut to the system's 80 characters (a saga id
/// and a step name fit).
pub fn reference(idempotency_key: &str) -> String {
    encode_safe(idempotency_key).chars().take(80).collect()
}

fn encode_safe(text: &str) -> String {
    decode(&encode(text))
}

/// A remark the system accepts: ISO-8859-1, at most 200 characters.
pub fn remark(text: &str) -> String {
    encode_safe(text).chars().take(200).collect()
}

/// How a fault code is classified (docs/skills.md, "The legacy housekeeping system"):
/// what the request may have done, and the step error code it becomes.
pub fn classify_fault(code: &str, write: bool) -> (Outcome, &'static str) {
    match code {
        // "Try again" (sent with HTTP 200), night batch, too many sessions: refused unprocessed.
        "HK-200" | "HK-503" => (Outcome::Retryable, "housekeeping_unavailable"),
        "HK-429" => (Outcome::Retryable, "rate_limited"),
        // An internal error: a write may have been carried out.
        "HK-999" if write => (Outcome::Unknown, "housekeeping_unavailable"),
        "HK-999" => (Outcome::Retryable, "housekeeping_unavailable"),
        "HK-102" => (Outcome::Permanent, "room_not_found"),
        "HK-001" => (Outcome::Permanent, "connector_setup"),
        "HK-104" => (Outcome::Permanent, "housekeeping_task_not_found"),
        "HK-106" => (Outcome::Permanent, "housekeeping_task_done"),
        _ => (Outcome::Permanent, "housekeeping_rejected"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_go_both_ways() {
        let date = NaiveDate::from_ymd_opt(2026, 12, 2).expect("date");
        assert_eq!(format_date(date), "02.12.2026");
        assert_eq!(parse_date(" 02.12.2026 "), Some(date));
        assert_eq!(parse_date("2.12.2026"), None);
        assert_eq!(parse_date("2026-12-02"), None);
    }

    #[test]
    fn text_is_latin1_and_what_does_not_fit_becomes_a_question_mark() {
        assert_eq!(encode("Grüße"), b"Gr\xfc\xdfe");
        assert_eq!(decode(b"Gr\xfc\xdfe"), "Grüße");
        assert_eq!(remark("Room 104 — clean ✓"), "Room 104 ? clean ?");
        assert_eq!(remark(&"x".repeat(300)).len(), 200);
    }

    #[test]
    fn room_codes_map_to_the_crm_statuses() {
        assert_eq!(room_status_of("VC"), Some(room_status::VACANT));
        assert_eq!(room_status_of("VD"), Some(room_status::CLEANING));
        assert_eq!(room_status_of("OD"), Some(room_status::OCCUPIED));
        assert_eq!(room_status_of("OOO"), Some(room_status::MAINTENANCE));
        assert_eq!(room_status_of("OOS"), Some(room_status::OUT_OF_SERVICE));
        assert_eq!(room_status_of("XX"), None);
    }

    #[test]
    fn sequence_numbers_are_stable_positive_and_differ_per_operation() {
        let a = sequence_number("saga/step", "CreateTask");
        assert_eq!(a, sequence_number("saga/step", "CreateTask"));
        assert_ne!(a, sequence_number("saga/step", "CancelTask"));
        assert_ne!(a, sequence_number("saga/other", "CreateTask"));
        assert!(a > 0 && a <= i64::MAX as u64);
    }

    #[test]
    fn priorities_round_trip() {
        for p in [
            Priority::Low,
            Priority::Medium,
            Priority::High,
            Priority::Urgent,
        ] {
            assert_eq!(priority_of(priority_code(p)), p);
        }
    }
}
