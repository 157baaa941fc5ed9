//! The effects several skills share, each a small async function a step calls with its
//! context so the external call carries the step's idempotency key:
//!
//! - [`payments`]: charging and refunding cards, and the payment records in the CRM;
//! - [`crm`]: contacts, opportunity stages and room statuses in the CRM/PMS, with their undos;
//! - [`cases`]: opening and closing service and maintenance cases;
//! - [`housekeeping`]: tasks in the legacy housekeeping system, and their cancellation;
//! - [`sms`]: texting a guest or a vendor (best effort, never undoing the business operation);
//! - [`room_holds`]: a step's room hold in our own database and its release.

pub(crate) mod cases;
pub(crate) mod crm;
pub(crate) mod housekeeping;
pub(crate) mod payments;
pub(crate) mod room_holds;
pub(crate) mod sms;
