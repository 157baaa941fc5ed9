//! The legacy housekeeping and maintenance system ("HKS 3.2", 2004) under
//! `/legacy/housekeeping`: SOAP 1.1, document/literal, the way such systems really look.
//!
//! - `GET /legacy/housekeeping?wsdl` -> the WSDL (`housekeeping.wsdl` beside this file), its
//!   `soap:address` pointing at the host asked.
//! - `POST /legacy/housekeeping` with `Content-Type: text/xml`, a `SOAPAction` naming the
//!   operation (`"urn:dewy-resort:housekeeping:2004#CreateTask"`), and a WS-Security
//!   `UsernameToken` (PasswordText) in the SOAP header. Operations: `CreateTask`, `CancelTask`,
//!   `FindTasks` (by the caller's `Reference`), `GetRoomStatus`.
//! - Its own codes: room status `VC`/`VD`/`OC`/`OD`/`OOO`/`OOS` (derived from the CRM's rooms and
//!   the open cleaning tasks), task types `CLN`/`INS`/`REP`, task status `OPN`/`DON`/`CAN`,
//!   priorities 1 (urgent) to 4; dates `DD.MM.YYYY`; text in ISO-8859-1 both ways (requests are
//!   read as ISO-8859-1 whatever they declare, answers declare and use it).
//! - Mutating calls carry a `SequenceNo`: the same number (per user) with the same content is
//!   answered again from the journal, byte for byte, without a second effect (the ledger marks it
//!   `replayed`); with other content -> fault `HK-105`.
//! - Errors are SOAP Faults with `detail/hk:HKError {Code, Text, RetryAfter?}`: `soap:Client`
//!   `HK-001` authentication, `HK-002` SOAPAction, `HK-003` malformed, `HK-102` room unknown,
//!   `HK-103` invalid date or value, `HK-104` task unknown, `HK-105` sequence number reused,
//!   `HK-106` task already done, `HK-107` task already cancelled (HTTP 500, do not repeat);
//!   `soap:Server` `HK-200` "try again" sent with HTTP **200**, `HK-503` night batch running and
//!   `HK-429` too many sessions (HTTP 500 with `RetryAfter` seconds, no effect), `HK-999`
//!   internal error (HTTP 500, from fault injection: may have taken effect).
//! - Slow: each request takes a draw of `latency_ms` (default 100-400 ms) while it holds its
//!   session. `POST /_sandbox/legacy {"latency_ms":[0,0],"try_again_next":1,"busy_next":1,
//!   "busy_retry_after_s":1}` changes that and makes the next requests answer "try again" or
//!   "night batch running" ([`LegacySettings`]).
//!
//! Tasks are listed in the ledger under `objects.legacy_tasks`.

use super::server::{Reply, Req};
use super::state::{SandboxState, SplitMix};
use axum::http::Method;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// The system's XML namespace.
pub const NS: &str = "urn:dewy-resort:housekeeping:2004";
/// SOAP 1.1's envelope namespace.
pub const SOAP_ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// What every answer is sent as.
pub const XML: &str = "text/xml; charset=ISO-8859-1";
/// The path the service answers at (below the sandbox root).
pub const PATH: &str = "/legacy/housekeeping";

const WSDL: &str = include_str!("housekeeping.wsdl");
const WSDL_ADDRESS: &str = "http://localhost/legacy/housekeeping";

/// How the system behaves, as posted to and returned by `/_sandbox/legacy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacySettings {
    /// Each request is held a uniform draw in `[min, max]` milliseconds (holding its session).
    #[serde(default = "default_latency")]
    pub latency_ms: [u64; 2],
    /// The next N requests are answered "try again" (`HK-200`) with HTTP 200, without effect.
    #[serde(default)]
    pub try_again_next: u32,
    /// The next N requests are answered "night batch running" (`HK-503`), without effect.
    #[serde(default)]
    pub busy_next: u32,
    /// The `RetryAfter` seconds of `HK-503`.
    #[serde(default = "one")]
    pub busy_retry_after_s: u32,
}

fn default_latency() -> [u64; 2] {
    [100, 400]
}

fn one() -> u32 {
    1
}

impl Default for LegacySettings {
    fn default() -> Self {
        Self {
            latency_ms: default_latency(),
            try_again_next: 0,
            busy_next: 0,
            busy_retry_after_s: 1,
        }
    }
}

impl LegacySettings {
    pub fn validate(&self) -> Result<(), String> {
        let [min, max] = self.latency_ms;
        if min > max || max > 60_000 {
            return Err(format!(
                "latency_ms must be [min, max] with min <= max <= 60000, got [{min}, {max}]"
            ));
        }
        Ok(())
    }
}

/// One task as the system keeps it (and the ledger shows it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    #[serde(rename = "TaskNo")]
    pub task_no: String,
    #[serde(rename = "RoomNo")]
    pub room_no: String,
    #[serde(rename = "TaskType")]
    pub task_type: String,
    #[serde(rename = "Priority")]
    pub priority: u8,
    /// `DD.MM.YYYY`.
    #[serde(rename = "DueDate")]
    pub due_date: String,
    #[serde(rename = "Remark")]
    pub remark: String,
    #[serde(rename = "Reference")]
    pub reference: String,
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "CancelReason")]
    pub cancel_reason: Option<String>,
    #[serde(rename = "User")]
    pub user: String,
    #[serde(rename = "SequenceNo")]
    pub sequence_no: u64,
    /// `DD.MM.YYYY HH:MM:SS` (UTC).
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
}

/// An answer kept for a sequence number.
#[derive(Debug, Clone)]
struct Journaled {
    fingerprint: String,
    status: u16,
    body: Vec<u8>,
}

/// The system's data: tasks, the sequence-number journal, settings and sessions in use.
#[derive(Debug, Clone)]
pub struct LegacyState {
    pub tasks: Vec<Task>,
    journal: HashMap<(String, u64), Journaled>,
    pub settings: LegacySettings,
    rng: SplitMix,
    next_task: u64,
    /// Requests being served now (each holds a session).
    pub sessions_in_use: u32,
}

impl LegacyState {
    pub fn new(seed: u64) -> Self {
        Self {
            tasks: Vec::new(),
            journal: HashMap::new(),
            settings: LegacySettings::default(),
            rng: SplitMix::new(seed.wrapping_add(0x4B53)),
            next_task: 0,
            sessions_in_use: 0,
        }
    }

    pub fn tasks_json(&self) -> Vec<serde_json::Value> {
        self.tasks
            .iter()
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect()
    }

    /// How long the next request is held.
    pub fn draw_latency(&mut self) -> Duration {
        let [min, max] = self.settings.latency_ms;
        let spread = max - min;
        let ms = if spread == 0 {
            min
        } else {
            min + self.rng.next_u64() % (spread + 1)
        };
        Duration::from_millis(ms)
    }
}

/// `DD.MM.YYYY`, the system's dates.
pub fn format_date(date: NaiveDate) -> String {
    date.format("%d.%m.%Y").to_string()
}

/// Reads `DD.MM.YYYY` strictly (two-digit day and month, four-digit year).
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    if b.len() != 10 || b[2] != b'.' || b[5] != b'.' {
        return None;
    }
    NaiveDate::parse_from_str(text, "%d.%m.%Y").ok()
}

fn format_time(at: DateTime<Utc>) -> String {
    at.format("%d.%m.%Y %H:%M:%S").to_string()
}

/// ISO-8859-1 bytes to text (every byte is one character).
pub fn latin1_decode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Text to ISO-8859-1 bytes; a character outside it becomes `?` (as the system stores it).
pub fn latin1_encode(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

// ----- requests (read by local names, as the system's parser does) -----

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "Header", default)]
    header: Option<Header>,
    #[serde(rename = "Body")]
    body: Body,
}

#[derive(Debug, Deserialize)]
struct Header {
    #[serde(rename = "Security", default)]
    security: Option<Security>,
}

#[derive(Debug, Deserialize)]
struct Security {
    #[serde(rename = "UsernameToken", default)]
    token: Option<UsernameToken>,
}

#[derive(Debug, Deserialize)]
struct UsernameToken {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Password", default)]
    password: Option<Password>,
}

#[derive(Debug, Deserialize)]
struct Password {
    #[serde(rename = "@Type", default)]
    kind: Option<String>,
    #[serde(rename = "$text", default)]
    value: String,
}

#[derive(Debug, Deserialize)]
struct Body {
    #[serde(rename = "$value")]
    operation: Operation,
}

#[derive(Debug, Deserialize)]
enum Operation {
    CreateTask(CreateTask),
    CancelTask(CancelTask),
    FindTasks(FindTasks),
    GetRoomStatus(GetRoomStatus),
}

impl Operation {
    fn name(&self) -> &'static str {
        match self {
            Operation::CreateTask(_) => "CreateTask",
            Operation::CancelTask(_) => "CancelTask",
            Operation::FindTasks(_) => "FindTasks",
            Operation::GetRoomStatus(_) => "GetRoomStatus",
        }
    }
}

#[derive(Debug, Deserialize)]
struct CreateTask {
    #[serde(rename = "SequenceNo")]
    sequence_no: u64,
    #[serde(rename = "RoomNo")]
    room_no: String,
    #[serde(rename = "TaskType")]
    task_type: String,
    #[serde(rename = "Priority")]
    priority: u8,
    #[serde(rename = "DueDate")]
    due_date: String,
    #[serde(rename = "Remark", default)]
    remark: String,
    #[serde(rename = "Reference", default)]
    reference: String,
}

#[derive(Debug, Deserialize)]
struct CancelTask {
    #[serde(rename = "SequenceNo")]
    sequence_no: u64,
    #[serde(rename = "TaskNo")]
    task_no: String,
    #[serde(rename = "Reason", default)]
    reason: String,
}

#[derive(Debug, Deserialize)]
struct FindTasks {
    #[serde(rename = "Reference")]
    reference: String,
}

#[derive(Debug, Deserialize)]
struct GetRoomStatus {
    #[serde(rename = "RoomNo")]
    room_no: String,
}

// ----- answers -----

#[derive(Debug, Serialize)]
#[serde(rename = "soap:Envelope")]
struct OutEnvelope {
    #[serde(rename = "@xmlns:soap")]
    soap: &'static str,
    #[serde(rename = "@xmlns:hk")]
    hk: &'static str,
    #[serde(rename = "soap:Body")]
    body: OutBody,
}

#[derive(Debug, Serialize)]
struct OutBody {
    #[serde(rename = "$value")]
    answer: Answer,
}

#[derive(Debug, Serialize)]
enum Answer {
    #[serde(rename = "hk:CreateTaskResponse")]
    Created(OneTask),
    #[serde(rename = "hk:CancelTaskResponse")]
    Cancelled(OneTask),
    #[serde(rename = "hk:FindTasksResponse")]
    Found(TaskList),
    #[serde(rename = "hk:GetRoomStatusResponse")]
    RoomStatus(RoomStatusOut),
    #[serde(rename = "soap:Fault")]
    Fault(FaultOut),
}

#[derive(Debug, Serialize)]
struct OneTask {
    #[serde(rename = "hk:Task")]
    task: TaskOut,
}

#[derive(Debug, Serialize)]
struct TaskList {
    #[serde(rename = "hk:Task")]
    tasks: Vec<TaskOut>,
}

#[derive(Debug, Serialize)]
struct TaskOut {
    #[serde(rename = "hk:TaskNo")]
    task_no: String,
    #[serde(rename = "hk:RoomNo")]
    room_no: String,
    #[serde(rename = "hk:TaskType")]
    task_type: String,
    #[serde(rename = "hk:Priority")]
    priority: u8,
    #[serde(rename = "hk:DueDate")]
    due_date: String,
    #[serde(rename = "hk:Remark")]
    remark: String,
    #[serde(rename = "hk:Reference")]
    reference: String,
    #[serde(rename = "hk:Status")]
    status: String,
}

impl From<&Task> for TaskOut {
    fn from(t: &Task) -> Self {
        Self {
            task_no: t.task_no.clone(),
            room_no: t.room_no.clone(),
            task_type: t.task_type.clone(),
            priority: t.priority,
            due_date: t.due_date.clone(),
            remark: t.remark.clone(),
            reference: t.reference.clone(),
            status: t.status.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
struct RoomStatusOut {
    #[serde(rename = "hk:RoomNo")]
    room_no: String,
    #[serde(rename = "hk:StatusCode")]
    status_code: &'static str,
    #[serde(rename = "hk:OpenTasks")]
    open_tasks: usize,
}

#[derive(Debug, Serialize)]
struct FaultOut {
    faultcode: &'static str,
    faultstring: String,
    detail: Detail,
}

#[derive(Debug, Serialize)]
struct Detail {
    #[serde(rename = "hk:HKError")]
    error: HkError,
}

#[derive(Debug, Serialize)]
struct HkError {
    #[serde(rename = "hk:Code")]
    code: &'static str,
    #[serde(rename = "hk:Text")]
    text: String,
    #[serde(rename = "hk:RetryAfter", skip_serializing_if = "Option::is_none")]
    retry_after: Option<u32>,
}

/// A fault the system answers.
#[derive(Debug, Clone)]
pub struct Fault {
    pub code: &'static str,
    pub text: String,
    pub retry_after: Option<u32>,
}

impl Fault {
    fn new(code: &'static str, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            retry_after: None,
        }
    }

    /// `HK-2xx`..`HK-9xx` are the server's; the rest the client's.
    fn server_side(&self) -> bool {
        matches!(self.code, "HK-200" | "HK-429" | "HK-503" | "HK-999")
    }

    /// "Try again" comes with HTTP 200 (the system's own quirk); every other fault with 500.
    fn status(&self) -> u16 {
        if self.code == "HK-200" {
            200
        } else {
            500
        }
    }

    pub fn into_reply(self) -> Reply {
        let status = self.status();
        let faultcode = if self.server_side() {
            "soap:Server"
        } else {
            "soap:Client"
        };
        let answer = Answer::Fault(FaultOut {
            faultcode,
            faultstring: self.text.clone(),
            detail: Detail {
                error: HkError {
                    code: self.code,
                    text: self.text,
                    retry_after: self.retry_after,
                },
            },
        });
        envelope(status, answer)
    }
}

/// The fault of a request over the session limit (`HK-429`, retry after `seconds`).
pub fn too_many_sessions(seconds: u32) -> Reply {
    Fault {
        code: "HK-429",
        text: "TOO MANY SESSIONS - MAX SESSIONS IN USE".into(),
        retry_after: Some(seconds),
    }
    .into_reply()
}

/// The answer of an injected server error (`HK-999`).
pub fn internal_error() -> Reply {
    Fault::new("HK-999", "INTERNAL ERROR - CONTACT SYSTEM ADMINISTRATOR").into_reply()
}

fn envelope(status: u16, answer: Answer) -> Reply {
    let document = OutEnvelope {
        soap: SOAP_ENV,
        hk: NS,
        body: OutBody { answer },
    };
    let text = match quick_xml::se::to_string(&document) {
        Ok(text) => text,
        Err(e) => {
            tracing::error!(error = %e, "legacy: cannot write an answer");
            return Reply::xml(500, Vec::new(), XML);
        }
    };
    let mut body = latin1_encode("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n");
    body.extend(latin1_encode(&text));
    Reply::xml(status, body, XML)
}

/// The WSDL, its address pointing at `host`.
fn wsdl(req: &Req<'_>) -> Reply {
    let host = req.header("host").unwrap_or("localhost");
    let document = WSDL.replace(WSDL_ADDRESS, &format!("http://{host}{PATH}"));
    Reply::xml(200, latin1_encode(&document), XML)
}

/// Serves one request below `/legacy` (the sandbox's server has held it for its latency and
/// counted its session).
pub fn handle(state: &mut SandboxState, req: &Req<'_>) -> Reply {
    if req.path != "/housekeeping" {
        return Reply::html(
            404,
            format!(
                "<html><body><h1>404 Not Found</h1><p>{}</p></body></html>",
                req.path
            ),
        );
    }
    if *req.method == Method::GET
        && req
            .query
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("wsdl"))
    {
        return wsdl(req);
    }
    if *req.method != Method::POST {
        return Reply::html(
            405,
            "<html><body><h1>405 Method Not Allowed</h1></body></html>".into(),
        );
    }
    match serve(state, req) {
        Ok(reply) => reply,
        Err(fault) => fault.into_reply(),
    }
}

fn serve(state: &mut SandboxState, req: &Req<'_>) -> Result<Reply, Fault> {
    let text = latin1_decode(req.body);
    let envelope: Envelope = quick_xml::de::from_str(&text)
        .map_err(|e| Fault::new("HK-003", format!("MALFORMED REQUEST: {e}")))?;
    let user = authenticate(&envelope)?;
    let operation = envelope.body.operation;
    let action = req
        .header("soapaction")
        .map(|a| a.trim().trim_matches('"').to_string())
        .unwrap_or_default();
    let expected = format!("{NS}#{}", operation.name());
    if action != expected {
        return Err(Fault::new(
            "HK-002",
            format!(
                "SOAPACTION '{action}' DOES NOT MATCH OPERATION {}",
                operation.name()
            ),
        ));
    }
    let legacy = &mut state.legacy;
    if legacy.settings.try_again_next > 0 {
        legacy.settings.try_again_next -= 1;
        return Err(Fault::new("HK-200", "SYSTEM BUSY - PLEASE TRY AGAIN"));
    }
    if legacy.settings.busy_next > 0 {
        legacy.settings.busy_next -= 1;
        return Err(Fault {
            code: "HK-503",
            text: "NIGHT BATCH RUNNING - TRY LATER".into(),
            retry_after: Some(legacy.settings.busy_retry_after_s),
        });
    }
    // What a sequence number stands for: the operation and its content.
    let (sequence, print) = match &operation {
        Operation::CreateTask(c) => (
            Some(c.sequence_no),
            format!(
                "CreateTask|{}|{}|{}|{}|{}|{}",
                c.room_no, c.task_type, c.priority, c.due_date, c.remark, c.reference
            ),
        ),
        Operation::CancelTask(c) => (
            Some(c.sequence_no),
            format!("CancelTask|{}|{}", c.task_no, c.reason),
        ),
        Operation::FindTasks(_) | Operation::GetRoomStatus(_) => (None, String::new()),
    };
    if let Some(sequence) = sequence {
        if let Some(done) = legacy.journal.get(&(user.clone(), sequence)) {
            if done.fingerprint != print {
                return Err(Fault::new(
                    "HK-105",
                    format!("SEQUENCE NUMBER {sequence} ALREADY USED FOR ANOTHER REQUEST"),
                ));
            }
            let mut reply = Reply::xml(done.status, done.body.clone(), XML);
            reply.replayed = true;
            return Ok(reply);
        }
    }
    let reply = match operation {
        Operation::CreateTask(c) => create(state, &user, c),
        Operation::CancelTask(c) => cancel(state, c),
        Operation::FindTasks(f) => Ok(find(state, &f.reference)),
        Operation::GetRoomStatus(g) => room_status(state, &g.room_no),
    };
    // Results of requests that ran are journaled (faults about the request too: the number is
    // spent), so a repeated number answers the same.
    let reply = reply.unwrap_or_else(Fault::into_reply);
    if let Some(sequence) = sequence {
        state.legacy.journal.insert(
            (user, sequence),
            Journaled {
                fingerprint: print,
                status: reply.status,
                body: reply.body.clone(),
            },
        );
    }
    Ok(reply)
}

fn authenticate(envelope: &Envelope) -> Result<String, Fault> {
    let token = envelope
        .header
        .as_ref()
        .and_then(|h| h.security.as_ref())
        .and_then(|s| s.token.as_ref());
    let denied = || {
        Fault::new(
            "HK-001",
            "AUTHENTICATION FAILED - WS-SECURITY USERNAMETOKEN REQUIRED",
        )
    };
    let token = token.ok_or_else(denied)?;
    let password = token.password.as_ref().ok_or_else(denied)?;
    let text_kind = password
        .kind
        .as_deref()
        .is_none_or(|k| k.ends_with("#PasswordText"));
    if token.username.trim().is_empty() || password.value.is_empty() || !text_kind {
        return Err(denied());
    }
    Ok(token.username.trim().to_string())
}

fn room_exists(state: &SandboxState, room_no: &str) -> Option<String> {
    let schema = super::salesforce::schema::object("Hotel_Room__c")?;
    state
        .salesforce
        .all(schema)
        .find(|r| r.get("Name").and_then(serde_json::Value::as_str) == Some(room_no))
        .and_then(|r| r.get("Status__c").and_then(serde_json::Value::as_str))
        .map(str::to_string)
}

fn create(state: &mut SandboxState, user: &str, c: CreateTask) -> Result<Reply, Fault> {
    let room_no = c.room_no.trim().to_string();
    if room_exists(state, &room_no).is_none() {
        return Err(Fault::new("HK-102", format!("ROOM {room_no} UNKNOWN")));
    }
    if !matches!(c.task_type.as_str(), "CLN" | "INS" | "REP") {
        return Err(Fault::new(
            "HK-103",
            format!("INVALID TASK TYPE {}", c.task_type),
        ));
    }
    if !(1..=4).contains(&c.priority) {
        return Err(Fault::new(
            "HK-103",
            format!("INVALID PRIORITY {}", c.priority),
        ));
    }
    let Some(due) = parse_date(c.due_date.trim()) else {
        return Err(Fault::new(
            "HK-103",
            format!("INVALID DATE {} (DD.MM.YYYY)", c.due_date),
        ));
    };
    if c.remark.chars().count() > 200 || c.reference.chars().count() > 80 {
        return Err(Fault::new("HK-103", "REMARK OR REFERENCE TOO LONG"));
    }
    let now = state.now();
    let legacy = &mut state.legacy;
    legacy.next_task += 1;
    let task = Task {
        task_no: format!("{}", 4_700_000 + legacy.next_task),
        room_no,
        task_type: c.task_type,
        priority: c.priority,
        due_date: format_date(due),
        remark: c.remark,
        reference: c.reference,
        status: "OPN".into(),
        cancel_reason: None,
        user: user.to_string(),
        sequence_no: c.sequence_no,
        created_at: format_time(now),
    };
    let answer = Answer::Created(OneTask {
        task: TaskOut::from(&task),
    });
    legacy.tasks.push(task);
    Ok(envelope(200, answer))
}

fn cancel(state: &mut SandboxState, c: CancelTask) -> Result<Reply, Fault> {
    let task_no = c.task_no.trim();
    let Some(task) = state.legacy.tasks.iter_mut().find(|t| t.task_no == task_no) else {
        return Err(Fault::new("HK-104", format!("TASK {task_no} UNKNOWN")));
    };
    match task.status.as_str() {
        "DON" => return Err(Fault::new("HK-106", format!("TASK {task_no} ALREADY DONE"))),
        "CAN" => {
            return Err(Fault::new(
                "HK-107",
                format!("TASK {task_no} ALREADY CANCELLED"),
            ))
        }
        _ => {}
    }
    task.status = "CAN".into();
    task.cancel_reason = Some(c.reason);
    let answer = Answer::Cancelled(OneTask {
        task: TaskOut::from(&*task),
    });
    Ok(envelope(200, answer))
}

fn find(state: &SandboxState, reference: &str) -> Reply {
    let tasks = state
        .legacy
        .tasks
        .iter()
        .filter(|t| !reference.is_empty() && t.reference == reference)
        .map(TaskOut::from)
        .collect();
    envelope(200, Answer::Found(TaskList { tasks }))
}

fn room_status(state: &SandboxState, room_no: &str) -> Result<Reply, Fault> {
    let room_no = room_no.trim();
    let Some(status) = room_exists(state, room_no) else {
        return Err(Fault::new("HK-102", format!("ROOM {room_no} UNKNOWN")));
    };
    let open: Vec<&Task> = state
        .legacy
        .tasks
        .iter()
        .filter(|t| t.room_no == room_no && t.status == "OPN")
        .collect();
    let dirty = open.iter().any(|t| t.task_type == "CLN");
    let code = match status.as_str() {
        "Vacant" if dirty => "VD",
        "Vacant" => "VC",
        "Cleaning" => "VD",
        "Occupied" if dirty => "OD",
        "Occupied" => "OC",
        "Maintenance" => "OOO",
        _ => "OOS",
    };
    Ok(envelope(
        200,
        Answer::RoomStatus(RoomStatusOut {
            room_no: room_no.to_string(),
            status_code: code,
            open_tasks: open.len(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_day_month_year_with_dots() {
        let date = NaiveDate::from_ymd_opt(2026, 3, 7).expect("date");
        assert_eq!(format_date(date), "07.03.2026");
        assert_eq!(parse_date("07.03.2026"), Some(date));
        assert_eq!(parse_date("7.3.2026"), None);
        assert_eq!(parse_date("2026-03-07"), None);
        assert_eq!(parse_date("31.02.2026"), None);
    }

    #[test]
    fn latin1_round_trips_and_replaces_what_it_cannot_hold() {
        assert_eq!(
            latin1_encode("Zimmer gereinigt: Ä é"),
            b"Zimmer gereinigt: \xc4 \xe9"
        );
        assert_eq!(latin1_decode(b"\xc4 \xe9"), "Ä é");
        assert_eq!(latin1_encode("ok ✓"), b"ok ?");
    }

    #[test]
    fn a_fault_is_a_soap_envelope_in_latin1() {
        let reply = Fault::new("HK-102", "ROOM 999 UNKNOWN - Ärger").into_reply();
        assert_eq!(reply.status, 500);
        let text = latin1_decode(&reply.body);
        assert!(
            text.starts_with("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>"),
            "{text}"
        );
        assert!(
            text.contains("<faultcode>soap:Client</faultcode>"),
            "{text}"
        );
        assert!(text.contains("<hk:Code>HK-102</hk:Code>"), "{text}");
        assert!(reply.body.contains(&0xC4), "Ä is one ISO-8859-1 byte");
        let again = Fault::new("HK-200", "SYSTEM BUSY - PLEASE TRY AGAIN").into_reply();
        assert_eq!(again.status, 200, "try again comes with 200");
    }
}
