//! `search_cases`: service and maintenance cases, with their notes.

use crate::connectors::crm::soql;
use crate::hotel::records::{self, Case, Priority};
use crate::hotel::{exposure, input, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use stepwise_engine::{InputError, Query, SkillInput, StepError};

/// Input of `search_cases`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchCasesInput {
    /// Only this guest's cases (required for guests: their own email).
    #[serde(default)]
    pub guest_email: Option<String>,
    #[serde(default)]
    pub room_number: Option<String>,
    /// New, Working, Escalated, Resolved or Closed.
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
                None | Some("New" | "Working" | "Escalated" | "Resolved" | "Closed") => Ok(()),
                Some(_) => Err(InputError::field(
                    "status",
                    "must be New, Working, Escalated, Resolved or Closed",
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
    /// Notes added with manage_case, oldest first.
    pub notes: Vec<NoteView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NoteView {
    pub note: String,
    /// Who added it.
    pub author: Option<String>,
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CasesOutput {
    pub cases: Vec<CaseView>,
}

pub(super) fn search_cases(hotel: &Arc<Hotel>) -> Query {
    let hotel = hotel.clone();
    Query::new(
        "search_cases",
        "Lists service and maintenance cases, filtered by guest, room, status or priority.",
        exposure::guest_self_staff_manager(),
        move |input: SearchCasesInput| {
            let hotel = hotel.clone();
            crate::hotel::errors::acted(async move {
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
                let mut notes = notes_of(&hotel, &cases).await?;
                Ok(CasesOutput {
                    cases: cases
                        .into_iter()
                        .map(|c| CaseView {
                            notes: notes.remove(&c.id).unwrap_or_default(),
                            case_number: c.number,
                            subject: c.subject,
                            case_type: c.case_type,
                            priority: c.priority,
                            status: c.status,
                        })
                        .collect(),
                })
            })
        },
    )
}

/// The notes of `cases`, by case id, oldest first (one query for all of them).
async fn notes_of(
    hotel: &Hotel,
    cases: &[Case],
) -> Result<HashMap<String, Vec<NoteView>>, StepError> {
    #[derive(Deserialize)]
    struct Note {
        #[serde(rename = "Case__c")]
        case: String,
        #[serde(rename = "Body__c", default)]
        body: Option<String>,
        #[serde(rename = "Author__c", default)]
        author: Option<String>,
        #[serde(rename = "CreatedDate", default)]
        created: Option<String>,
    }
    let mut by_case: HashMap<String, Vec<NoteView>> = HashMap::new();
    if cases.is_empty() {
        return Ok(by_case);
    }
    let ids = cases
        .iter()
        .map(|c| soql::id_literal(&c.id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StepError::from)?;
    let soql = format!(
        "SELECT Case__c, Body__c, Author__c, CreatedDate FROM Case_Note__c \
         WHERE Case__c IN ({}) ORDER BY CreatedDate LIMIT 2000",
        ids.join(", ")
    );
    let notes: Vec<Note> = hotel
        .connectors
        .crm
        .query(&soql)
        .await
        .map_err(StepError::from)?;
    for note in notes {
        by_case.entry(note.case).or_default().push(NoteView {
            note: note.body.unwrap_or_default(),
            author: note.author,
            created_at: note.created,
        });
    }
    Ok(by_case)
}
