//! One file per hotel skill: its input, its steps and their undos, and how its output is made.
//! What several skills share lives in `hotel::effects` (payments, CRM records, SMS, cases, room
//! holds) and `hotel::records` (the CRM records and lookups).

pub mod booking;
pub mod cancel;
pub mod case;
pub mod check_in;
pub mod checkout;
pub mod contact;
pub mod extend;
pub mod maintenance;
pub mod manage;
pub mod no_show;
pub mod reverse_checkout;
pub mod room_status;
pub mod service_request;
pub mod upgrade;
