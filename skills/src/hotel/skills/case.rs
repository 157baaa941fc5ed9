//! `manage_case`: the front desk's case job on a service or maintenance case: add a note,
//! change its priority or status (legal moves only), escalate it to the manager on duty.

use crate::connectors::crm::soql;
use crate::hotel::effects::sms::text_guest;
use crate::hotel::records::{self, case_status, Case, Contact, Priority, CASE, CASE_NOTE};
use crate::hotel::{exposure, ext, input, record_key, recorded, step, undo, Hotel};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{InputError, Skill, SkillError, SkillInput, StepContext, StepError};

/// A status a case can be moved to (the CRM's `Status` picklist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CaseStatus {
    Working,
    Resolved,
    Closed,
}

impl CaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Working => case_status::WORKING,
            CaseStatus::Resolved => case_status::RESOLVED,
            CaseStatus::Closed => case_status::CLOSED,
        }
    }

    /// The statuses a case may move to this one from: New -> Working -> Resolved -> Closed,
    /// an Escalated case being worked on like a Working one.
    fn legal_from(self) -> &'static [&'static str] {
        match self {
            CaseStatus::Working => &[case_status::NEW],
            CaseStatus::Resolved => &[case_status::WORKING, case_status::ESCALATED],
            CaseStatus::Closed => &[case_status::RESOLVED],
        }
    }
}

/// The legal next statuses of a case in `status` (for error messages).
fn legal_next(status: &str) -> Vec<&'static str> {
    [
        CaseStatus::Working,
        CaseStatus::Resolved,
        CaseStatus::Closed,
    ]
    .into_iter()
    .filter(|to| to.legal_from().contains(&status))
    .map(CaseStatus::as_str)
    .collect()
}

/// Input of `manage_case`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManageCaseInput {
    /// The case, e.g. 00001001 (search_cases lists them).
    pub case_number: String,
    /// Set when acting for the guest who opened the case: then only a note, on her own case.
    #[serde(default)]
    pub guest_email: Option<String>,
    /// A note to add to the case.
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Working (from New), Resolved (from Working or Escalated), Closed (from Resolved).
    #[serde(default)]
    pub status: Option<CaseStatus>,
    /// Marks the case Escalated and texts the manager on duty.
    #[serde(default)]
    pub escalate: bool,
    /// Who acts (set from the caller).
    #[serde(default)]
    pub acted_by: Option<String>,
    pub idempotency_key: String,
}

impl SkillInput for ManageCaseInput {
    fn validate(&self) -> Result<(), InputError> {
        input::all([
            case_number(&self.case_number),
            self.guest_email
                .as_deref()
                .map_or(Ok(()), |e| input::email("guest_email", e)),
            self.note
                .as_deref()
                .map_or(Ok(()), |n| input::text("note", n, 4000)),
            if self.note.is_none()
                && self.priority.is_none()
                && self.status.is_none()
                && !self.escalate
            {
                Err(InputError::field(
                    "note",
                    "give at least one of note, priority, status or escalate",
                ))
            } else {
                Ok(())
            },
            if self.escalate && self.status.is_some() {
                Err(InputError::field(
                    "status",
                    "escalate sets the status itself (Escalated); leave status out",
                ))
            } else {
                Ok(())
            },
            match (&self.guest_email, self.priority, self.status, self.escalate) {
                (Some(_), None, None, false) | (None, _, _, _) => Ok(()),
                (Some(_), _, _, _) => Err(InputError::field(
                    "guest_email",
                    "for a guest's own case only a note can be added; the front desk changes \
                     priority, status and escalation",
                )),
            },
            self.acted_by
                .as_deref()
                .map_or(Ok(()), |e| input::text("acted_by", e, 255)),
            input::idempotency_key(&self.idempotency_key),
        ])
    }
}

fn case_number(value: &str) -> Result<(), InputError> {
    if value.is_empty() || value.len() > 30 || !value.chars().all(|c| c.is_ascii_digit()) {
        return Err(InputError::field(
            "case_number",
            "must be a case number like 00001001",
        ));
    }
    Ok(())
}

/// What `find_case` recorded: the case as it was, which the undos restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FoundCase {
    case: Case,
}

/// The values `change_case` wrote and the ones its undo writes back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CaseChange {
    case_id: String,
    changed: bool,
    priority: Option<String>,
    status: Option<String>,
    previous_priority: Option<String>,
    previous_status: Option<String>,
}

pub fn manage_case(hotel: &Arc<Hotel>) -> Result<Skill, SkillError> {
    Skill::builder::<ManageCaseInput>(
        "manage_case",
        1,
        "Works a service or maintenance case: adds a note, changes priority or status \
         (New -> Working -> Resolved -> Closed), or escalates it (texts the manager on duty); \
         on failure the note is removed and the case restored.",
    )
    .exposure(exposure::guest_self_staff_manager().caller_field("acted_by"))
    .step(step(hotel, "find_case", find_case))
    .step(undo(step(hotel, "add_note", add_note), hotel, remove_note))
    .step(undo(
        step(hotel, "change_case", change_case),
        hotel,
        restore_case,
    ))
    .step(step(hotel, "text_manager", text_manager))
    .finish(|input, outputs| {
        let found = outputs.get("find_case").cloned().unwrap_or_default();
        let case = found.get("case").cloned().unwrap_or_default();
        let change = outputs.get("change_case").cloned().unwrap_or_default();
        let note = outputs.get("add_note").cloned().unwrap_or_default();
        let escalation = outputs.get("text_manager").cloned().unwrap_or_default();
        json!({
            "case_number": input.get("case_number"),
            "case_id": case.get("Id"),
            "status": change.get("status"),
            "priority": change.get("priority"),
            "note_id": note.get("note_id"),
            "escalated_to": escalation.get("manager"),
            "manager_texted": escalation.get("sms").and_then(|s| s.get("sent")),
        })
    })
    .build()
}

/// The case exists (for a guest: is hers) and the asked move is legal from its status.
async fn find_case(hotel: Arc<Hotel>, ctx: StepContext) -> Result<FoundCase, StepError> {
    let input: ManageCaseInput = ctx.input()?;
    let crm = &hotel.connectors.crm;
    let not_found = || {
        StepError::permanent("case_not_found", format!("no case {}", input.case_number))
            .with_action("Check the case number with search_cases")
    };
    let soql = format!(
        "SELECT {} FROM Case WHERE CaseNumber = {} LIMIT 1",
        Case::FIELDS,
        soql::string(&input.case_number)
    );
    let case: Case = crm
        .query(&soql)
        .await
        .map_err(ext)?
        .into_iter()
        .next()
        .ok_or_else(not_found)?;
    // A guest's view: another guest's case does not exist for her.
    if let Some(email) = &input.guest_email {
        let guest = records::contact_by_email(crm, email).await?;
        if guest.map(|g| g.id) != case.contact {
            return Err(not_found());
        }
    }
    let current = case.status.clone().unwrap_or_default();
    if let Some(to) = input.status {
        if !to.legal_from().contains(&current.as_str()) {
            return Err(illegal_move(&input.case_number, &current, to.as_str()));
        }
    }
    if input.escalate && ![case_status::NEW, case_status::WORKING].contains(&current.as_str()) {
        return Err(illegal_move(
            &input.case_number,
            &current,
            case_status::ESCALATED,
        ));
    }
    Ok(FoundCase { case })
}

fn illegal_move(number: &str, from: &str, to: &str) -> StepError {
    let next = legal_next(from);
    let legal = if next.is_empty() {
        "none".to_string()
    } else {
        next.join(" or ")
    };
    StepError::permanent(
        "illegal_case_status",
        format!("`status`: case {number} is {from}; it cannot move to {to} (legal next: {legal})"),
    )
    .with_action(format!(
        "Call manage_case again with status {legal}, or leave status out"
    ))
}

/// Adds the note (keyed by the step's idempotency key, so a re-run finds it).
async fn add_note(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: ManageCaseInput = ctx.input()?;
    let Some(note) = &input.note else {
        return Ok(json!({"note_id": null}));
    };
    let found: FoundCase = ctx.output("find_case")?;
    let author = input
        .acted_by
        .clone()
        .or(input.guest_email.clone())
        .unwrap_or_default();
    let upserted = hotel
        .connectors
        .crm
        .upsert(
            CASE_NOTE,
            "External_ID__c",
            &record_key(&ctx),
            &json!({"Case__c": found.case.id, "Body__c": note, "Author__c": author}),
        )
        .await
        .map_err(ext)?;
    Ok(json!({"note_id": upserted.id}))
}

/// Undoes [`add_note`]: deletes the note it recorded.
async fn remove_note(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let found = if ctx.possibly_done {
        crate::hotel::possibly_created(&hotel, &ctx, CASE_NOTE).await?
    } else {
        output
            .get("note_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let Some(id) = found.as_deref() else {
        return Ok(json!({"removed": false}));
    };
    hotel
        .connectors
        .crm
        .delete(CASE_NOTE, id)
        .await
        .map_err(ext)?;
    Ok(json!({"removed": true, "note_id": id}))
}

/// Writes the new priority and status; the previous ones come from `find_case`'s record.
async fn change_case(hotel: Arc<Hotel>, ctx: StepContext) -> Result<CaseChange, StepError> {
    let input: ManageCaseInput = ctx.input()?;
    let found: FoundCase = ctx.output("find_case")?;
    let case = found.case;
    let status = if input.escalate {
        Some(case_status::ESCALATED.to_string())
    } else {
        input.status.map(|s| s.as_str().to_string())
    };
    let priority = input.priority.map(|p| p.as_str().to_string());
    let change = CaseChange {
        case_id: case.id.clone(),
        changed: status.is_some() || priority.is_some(),
        priority: priority.or(case.priority.clone()),
        status: status.or(case.status.clone()),
        previous_priority: case.priority,
        previous_status: case.status,
    };
    if change.changed {
        hotel
            .connectors
            .crm
            .update(
                CASE,
                &change.case_id,
                &json!({"Priority": change.priority, "Status": change.status}),
            )
            .await
            .map_err(ext)?;
    }
    Ok(change)
}

/// Undoes [`change_case`]: writes back the priority and status the case had (when the step is
/// possibly done, those `find_case` read).
async fn restore_case(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let change: CaseChange = if ctx.possibly_done {
        let case = ctx.output::<FoundCase>("find_case")?.case;
        CaseChange {
            case_id: case.id,
            changed: true,
            priority: None,
            status: None,
            previous_priority: case.priority,
            previous_status: case.status,
        }
    } else {
        recorded(output)?
    };
    if change.changed {
        hotel
            .connectors
            .crm
            .update(
                CASE,
                &change.case_id,
                &json!({"Priority": change.previous_priority, "Status": change.previous_status}),
            )
            .await
            .map_err(ext)?;
    }
    Ok(json!({"case_id": change.case_id, "status": change.previous_status}))
}

/// Escalations text the manager on duty (the first manager on file with a phone); a text is
/// best effort and never undoes the escalation.
async fn text_manager(hotel: Arc<Hotel>, ctx: StepContext) -> Result<Value, StepError> {
    let input: ManageCaseInput = ctx.input()?;
    if !input.escalate {
        return Ok(json!({"escalated": false}));
    }
    let found: FoundCase = ctx.output("find_case")?;
    let soql = format!(
        "SELECT {} FROM Contact WHERE Contact_Type__c = 'Manager' AND Phone != null \
         ORDER BY CreatedDate LIMIT 1",
        Contact::FIELDS
    );
    let managers: Vec<Contact> = hotel.connectors.crm.query(&soql).await.map_err(ext)?;
    let Some(manager) = managers.into_iter().next() else {
        return Ok(json!({"escalated": true, "manager": null, "reason": "no manager on file"}));
    };
    let Some(phone) = manager.phone.as_deref() else {
        return Ok(json!({"escalated": true, "manager": manager.email}));
    };
    let body = format!(
        "Dewy Resort: case {} escalated to you ({}, {} priority).",
        input.case_number,
        found.case.subject.as_deref().unwrap_or("no subject"),
        input
            .priority
            .map(Priority::as_str)
            .or(found.case.priority.as_deref())
            .unwrap_or("Medium"),
    );
    let sms = text_guest(&hotel, &ctx, phone, &body, None).await?;
    Ok(json!({"escalated": true, "manager": manager.email, "sms": sms}))
}
