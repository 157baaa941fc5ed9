//! A client of the hotel's legacy housekeeping and maintenance system: SOAP 1.1 over HTTP
//! POST with `SOAPAction`, WS-Security `UsernameToken` authentication, ISO-8859-1 XML
//! (docs/skills.md, "The legacy housekeeping system").
//!
//! The skills see typed records only: [`HousekeepingTask`] with our priorities and dates, and
//! room statuses in the CRM's words ([`RoomReading`]). Every conversion (charset, `DD.MM.YYYY`,
//! the system's codes, sequence numbers, fault classification) is in [`codec`]; the documents
//! are the typed structs of [`soap`], written and read by quick-xml's serde support.
//!
//! Idempotency: each write carries a `SequenceNo` derived from the step's idempotency key, so a
//! retried step (after a timeout that hid a success) is answered from the system's journal
//! without a second task; each task also carries the key as its `Reference`, which
//! [`HousekeepingClient::find_tasks`] looks up (how an undo finds a task whose creation answer
//! was lost).

pub mod codec;
pub mod soap;

use super::config::ServiceConfig;
use super::error::{ConnectorError, Outcome, Service};
use super::limits::{self, SharedLimits};
use crate::hotel::records::Priority;
use chrono::NaiveDate;
use codec::{TaskKind, TaskStatus};
use quick_xml::events::{BytesDecl, Event};
use serde::{Deserialize, Serialize};
use soap::{Answer, Envelope, Request};
use std::time::Duration;

/// The path of the service below the system's base URL.
pub const SERVICE_PATH: &str = "/housekeeping";

#[derive(Debug, Clone)]
pub struct HousekeepingClient {
    http: reqwest::Client,
    url: String,
    username: String,
    password: String,
    /// The shared limits (its 2 concurrent sessions) asked before every call, if any.
    limits: Option<SharedLimits>,
}

/// A task in the legacy system, in our terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HousekeepingTask {
    pub task_no: String,
    pub room_number: String,
    pub kind: TaskKind,
    pub priority: Priority,
    pub due_date: NaiveDate,
    pub remark: String,
    pub reference: String,
    pub status: TaskStatus,
}

/// A task to create.
#[derive(Debug, Clone)]
pub struct NewTask<'a> {
    pub room_number: &'a str,
    pub kind: TaskKind,
    pub priority: Priority,
    pub due_date: NaiveDate,
    pub remark: &'a str,
}

/// What a cancel found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub task_no: String,
    /// It was cancelled before (the system's `HK-107`): nothing changed now.
    pub already: bool,
}

/// A room's status as the legacy system sees it, in the CRM's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomReading {
    pub room_number: String,
    /// `Vacant`, `Occupied`, `Cleaning`, `Maintenance` or `Out of Service`.
    pub status: String,
    /// The system's own code (`VC`, `VD`, `OC`, `OD`, `OOO`, `OOS`).
    pub code: String,
    pub open_tasks: u32,
}

impl HousekeepingClient {
    /// `config.base_url` is the system's root (e.g. the sandbox's `/legacy`); the credential is
    /// the WS-Security password of `username`.
    pub fn new(http: reqwest::Client, config: &ServiceConfig, username: &str) -> Self {
        Self {
            http,
            url: format!("{}{SERVICE_PATH}", config.base_url.trim_end_matches('/')),
            username: username.to_string(),
            password: config.credential.clone(),
            limits: None,
        }
    }

    /// The same client, holding one of the system's sessions (shared by every worker through
    /// `limits`) for each call.
    pub fn with_limits(mut self, limits: SharedLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The service's URL (its WSDL is this with `?wsdl`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates a task; a retry with the same `idempotency_key` gets the same task back.
    pub async fn create_task(
        &self,
        task: &NewTask<'_>,
        idempotency_key: &str,
    ) -> Result<HousekeepingTask, ConnectorError> {
        let request = Request::CreateTask(soap::CreateTask {
            sequence_no: codec::sequence_number(idempotency_key, "CreateTask"),
            room_no: codec::remark(task.room_number),
            task_type: task.kind.code(),
            priority: codec::priority_code(task.priority),
            due_date: codec::format_date(task.due_date),
            remark: codec::remark(task.remark),
            reference: codec::reference(idempotency_key),
        });
        match self.call(request).await? {
            Answer::CreateTaskResponse(one) => typed(one.task),
            other => Err(unexpected(&other)),
        }
    }

    /// Cancels a task; one cancelled before is not an error (undos run more than once).
    pub async fn cancel_task(
        &self,
        task_no: &str,
        reason: &str,
        idempotency_key: &str,
    ) -> Result<Cancelled, ConnectorError> {
        let request = Request::CancelTask(soap::CancelTask {
            sequence_no: codec::sequence_number(idempotency_key, "CancelTask"),
            task_no: task_no.to_string(),
            reason: codec::remark(reason),
        });
        match self.call(request).await {
            Ok(Answer::CancelTaskResponse(one)) => Ok(Cancelled {
                task_no: one.task.task_no,
                already: false,
            }),
            Ok(other) => Err(unexpected(&other)),
            Err(error) if error.code() == Some("HK-107") => Ok(Cancelled {
                task_no: task_no.to_string(),
                already: true,
            }),
            Err(error) => Err(error),
        }
    }

    /// The tasks created under `idempotency_key` (their `Reference`).
    pub async fn find_tasks(
        &self,
        idempotency_key: &str,
    ) -> Result<Vec<HousekeepingTask>, ConnectorError> {
        let reference = codec::reference(idempotency_key);
        let request = Request::FindTasks(soap::FindTasks {
            reference: &reference,
        });
        match self.call(request).await? {
            Answer::FindTasksResponse(list) => list.tasks.into_iter().map(typed).collect(),
            other => Err(unexpected(&other)),
        }
    }

    /// A room's status as the system sees it.
    pub async fn room_status(&self, room_number: &str) -> Result<RoomReading, ConnectorError> {
        let request = Request::GetRoomStatus(soap::GetRoomStatus {
            room_no: room_number,
        });
        match self.call(request).await? {
            Answer::GetRoomStatusResponse(room) => {
                let status = codec::room_status_of(&room.status_code).ok_or_else(|| {
                    bad_response(format!("unknown room status code `{}`", room.status_code))
                })?;
                Ok(RoomReading {
                    room_number: room.room_no,
                    status: status.to_string(),
                    code: room.status_code,
                    open_tasks: room.open_tasks,
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The request document: an ISO-8859-1 declaration and the envelope, in ISO-8859-1.
    pub fn document(&self, request: Request<'_>) -> Result<Vec<u8>, ConnectorError> {
        let envelope = Envelope::new(&self.username, &self.password, request);
        let unwritable = |e: &dyn std::fmt::Display| {
            ConnectorError::Setup(format!("cannot write a SOAP request: {e}"))
        };
        let mut writer = quick_xml::Writer::new(Vec::new());
        writer
            .write_event(Event::Decl(BytesDecl::new(
                "1.0",
                Some(codec::CHARSET),
                None,
            )))
            .map_err(|e| unwritable(&e))?;
        writer
            .write_serializable("soapenv:Envelope", &envelope)
            .map_err(|e| unwritable(&e))?;
        let text = String::from_utf8(writer.into_inner()).map_err(|e| unwritable(&e))?;
        Ok(codec::encode(&text))
    }

    /// Sends one request and reads its answer; a SOAP Fault (whatever the HTTP status) becomes
    /// a classified [`ConnectorError::Fault`].
    async fn call(&self, request: Request<'_>) -> Result<Answer, ConnectorError> {
        let write = request.writes();
        let action = format!("\"{}#{}\"", soap::NS, request.operation());
        let body = self.document(request)?;
        // A session is held from the request until its answer is read.
        let permit = limits::permit(self.limits.as_ref(), Service::Housekeeping).await?;
        let answer = self.exchange(write, action, body).await;
        permit.release().await;
        answer
    }

    async fn exchange(
        &self,
        write: bool,
        action: String,
        body: Vec<u8>,
    ) -> Result<Answer, ConnectorError> {
        let response = self
            .http
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("text/xml; charset={}", codec::CHARSET),
            )
            .header("SOAPAction", action)
            .body(body)
            .send()
            .await
            .map_err(|e| ConnectorError::transport(Service::Housekeeping, write, e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|v| super::error::retry_after_value(v.to_str().unwrap_or_default()));
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ConnectorError::Transport {
                service: Service::Housekeeping,
                timed_out: e.is_timeout(),
                sent: true,
                write,
                message: format!("the answer broke off: {e}"),
            })?;
        let text = codec::decode(&bytes);
        match quick_xml::de::from_str::<soap::AnswerEnvelope>(&text) {
            Ok(envelope) => match envelope.body.answer {
                Answer::Fault(fault) => Err(fault_error(status, fault, write, retry_after)),
                answer if (200..300).contains(&status) => Ok(answer),
                _ => Err(api_error(status, &text, write, retry_after)),
            },
            // Not SOAP: a proxy's error page (e.g. 504) is classified by its status.
            Err(_) if !(200..300).contains(&status) => {
                Err(api_error(status, &text, write, retry_after))
            }
            Err(e) => Err(bad_response(format!("not a SOAP answer: {e}"))),
        }
    }
}

fn fault_error(
    status: u16,
    fault: soap::Fault,
    write: bool,
    retry_after: Option<Duration>,
) -> ConnectorError {
    let detail = fault.detail.and_then(|d| d.error);
    let code = detail
        .as_ref()
        .map(|e| e.code.trim().to_string())
        .unwrap_or_else(|| fault.fault_code.clone());
    let (outcome, step_code) = codec::classify_fault(&code, write);
    let retry_after = detail
        .as_ref()
        .and_then(|e| e.retry_after)
        .map(Duration::from_secs)
        .or(retry_after)
        .filter(|_| outcome == Outcome::Retryable);
    let message = detail
        .map(|e| e.text)
        .filter(|t| !t.trim().is_empty())
        .unwrap_or(fault.fault_string);
    ConnectorError::Fault {
        service: Service::Housekeeping,
        status,
        code,
        message,
        outcome,
        step_code,
        retry_after,
    }
}

fn api_error(
    status: u16,
    text: &str,
    write: bool,
    retry_after: Option<Duration>,
) -> ConnectorError {
    ConnectorError::Api {
        service: Service::Housekeeping,
        status,
        code: format!("http_{status}"),
        message: text.chars().take(200).collect(),
        body: serde_json::Value::Null,
        write,
        retry_after,
    }
}

fn bad_response(message: String) -> ConnectorError {
    ConnectorError::Decode {
        service: Service::Housekeeping,
        message,
    }
}

fn unexpected(answer: &Answer) -> ConnectorError {
    bad_response(format!("unexpected answer {answer:?}"))
}

/// A task from the system, in our terms.
fn typed(task: soap::Task) -> Result<HousekeepingTask, ConnectorError> {
    Ok(HousekeepingTask {
        kind: TaskKind::from_code(&task.task_type)
            .ok_or_else(|| bad_response(format!("unknown task type `{}`", task.task_type)))?,
        status: TaskStatus::from_code(&task.status)
            .ok_or_else(|| bad_response(format!("unknown task status `{}`", task.status)))?,
        due_date: codec::parse_date(&task.due_date)
            .ok_or_else(|| bad_response(format!("unreadable date `{}`", task.due_date)))?,
        priority: codec::priority_of(task.priority),
        task_no: task.task_no.trim().to_string(),
        room_number: task.room_no.trim().to_string(),
        remark: task.remark,
        reference: task.reference,
    })
}
