//! `upsert_contact`: find a contact by email, or create it.

use crate::hotel::effects::crm::create_contact;
use crate::hotel::records::{self, ContactType};
use crate::hotel::{exposure, input, step, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

/// Input of `upsert_contact`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertContactInput {
    /// The contact's email; contacts are found by it.
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// Guest (default), Manager or Vendor.
    #[serde(default)]
    pub contact_type: ContactType,
    /// E.164 phone number, e.g. +15551234567.
    #[serde(default)]
    pub phone: Option<String>,
    /// Makes a repeated call return the same result instead of acting twice.
    pub idempotency_key: String,
}

impl SkillInput for UpsertContactInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            input::email("email", &self.email),
            input::person_name("first_name", &self.first_name),
            input::person_name("last_name", &self.last_name),
            self.phone
                .as_deref()
                .map_or(Ok(()), |p| input::phone("phone", p)),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ContactOutput {
    pub contact_id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub contact_type: String,
    /// True when this call created the contact.
    pub created: bool,
}

pub fn upsert_contact(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<UpsertContactInput>(
        "upsert_contact",
        1,
        "Finds a hotel contact (guest, manager or vendor) by email or creates it if not found; \
         nothing to undo.",
    )
    .exposure(exposure::staff_manager())
    .output::<ContactOutput>()
    .step(step(hotel, "upsert_contact", run))
    .finish(|_, outputs| outputs.get("upsert_contact").cloned().unwrap_or_default())
    .build()
}

async fn run(hotel: Arc<Hotel>, ctx: StepContext) -> Result<ContactOutput, StepError> {
    let input: UpsertContactInput = ctx.input()?;
    let found = records::contact_by_email(&hotel.connectors.crm, &input.email).await?;
    if let Some(contact) = found {
        return Ok(ContactOutput {
            contact_id: contact.id.clone(),
            email: input.email.to_lowercase(),
            first_name: contact.first_name.clone().unwrap_or_default(),
            last_name: contact.last_name.clone().unwrap_or_default(),
            contact_type: contact.contact_type.clone().unwrap_or_default(),
            created: false,
        });
    }
    let upserted = create_contact(
        &hotel,
        &input.email,
        &input.first_name,
        &input.last_name,
        input.contact_type,
        input.phone.as_deref(),
    )
    .await?;
    Ok(ContactOutput {
        contact_id: upserted.0,
        email: input.email.to_lowercase(),
        first_name: input.first_name,
        last_name: input.last_name,
        contact_type: input.contact_type.as_str().to_string(),
        created: upserted.1,
    })
}
