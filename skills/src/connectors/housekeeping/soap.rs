//! The SOAP 1.1 documents of the legacy system, as typed serde structs written and read by
//! quick-xml (no XML is put together from strings). Requests are written with the system's
//! prefixes (`soapenv`, `wsse`, `hk`); answers are read by local names.

use serde::{Deserialize, Serialize};

/// The system's namespace (the WSDL's `targetNamespace`).
pub const NS: &str = "urn:dewy-resort:housekeeping:2004";
pub const SOAP_ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
pub const PASSWORD_TEXT: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText";

// ----- requests -----

#[derive(Debug, Serialize)]
#[serde(rename = "soapenv:Envelope")]
pub struct Envelope<'a> {
    #[serde(rename = "@xmlns:soapenv")]
    pub soapenv: &'static str,
    #[serde(rename = "@xmlns:wsse")]
    pub wsse: &'static str,
    #[serde(rename = "@xmlns:hk")]
    pub hk: &'static str,
    #[serde(rename = "soapenv:Header")]
    pub header: Header<'a>,
    #[serde(rename = "soapenv:Body")]
    pub body: Body<'a>,
}

impl<'a> Envelope<'a> {
    pub fn new(username: &'a str, password: &'a str, request: Request<'a>) -> Self {
        Self {
            soapenv: SOAP_ENV,
            wsse: WSSE,
            hk: NS,
            header: Header {
                security: Security {
                    must_understand: "1",
                    token: UsernameToken {
                        username,
                        password: Password {
                            kind: PASSWORD_TEXT,
                            value: password,
                        },
                    },
                },
            },
            body: Body { request },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Header<'a> {
    #[serde(rename = "wsse:Security")]
    pub security: Security<'a>,
}

#[derive(Debug, Serialize)]
pub struct Security<'a> {
    #[serde(rename = "@soapenv:mustUnderstand")]
    pub must_understand: &'static str,
    #[serde(rename = "wsse:UsernameToken")]
    pub token: UsernameToken<'a>,
}

#[derive(Debug, Serialize)]
pub struct UsernameToken<'a> {
    #[serde(rename = "wsse:Username")]
    pub username: &'a str,
    #[serde(rename = "wsse:Password")]
    pub password: Password<'a>,
}

#[derive(Debug, Serialize)]
pub struct Password<'a> {
    #[serde(rename = "@Type")]
    pub kind: &'static str,
    #[serde(rename = "$text")]
    pub value: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Body<'a> {
    #[serde(rename = "$value")]
    pub request: Request<'a>,
}

/// One operation's request element.
#[derive(Debug, Serialize)]
pub enum Request<'a> {
    #[serde(rename = "hk:CreateTask")]
    CreateTask(CreateTask),
    #[serde(rename = "hk:CancelTask")]
    CancelTask(CancelTask),
    #[serde(rename = "hk:FindTasks")]
    FindTasks(FindTasks<'a>),
    #[serde(rename = "hk:GetRoomStatus")]
    GetRoomStatus(GetRoomStatus<'a>),
}

impl Request<'_> {
    /// The operation's name, as `SOAPAction` carries it after the namespace.
    pub fn operation(&self) -> &'static str {
        match self {
            Request::CreateTask(_) => "CreateTask",
            Request::CancelTask(_) => "CancelTask",
            Request::FindTasks(_) => "FindTasks",
            Request::GetRoomStatus(_) => "GetRoomStatus",
        }
    }

    /// Whether the operation changes something.
    pub fn writes(&self) -> bool {
        matches!(self, Request::CreateTask(_) | Request::CancelTask(_))
    }
}

#[derive(Debug, Serialize)]
pub struct CreateTask {
    #[serde(rename = "hk:SequenceNo")]
    pub sequence_no: u64,
    #[serde(rename = "hk:RoomNo")]
    pub room_no: String,
    #[serde(rename = "hk:TaskType")]
    pub task_type: &'static str,
    #[serde(rename = "hk:Priority")]
    pub priority: u8,
    /// `DD.MM.YYYY`.
    #[serde(rename = "hk:DueDate")]
    pub due_date: String,
    #[serde(rename = "hk:Remark")]
    pub remark: String,
    #[serde(rename = "hk:Reference")]
    pub reference: String,
}

#[derive(Debug, Serialize)]
pub struct CancelTask {
    #[serde(rename = "hk:SequenceNo")]
    pub sequence_no: u64,
    #[serde(rename = "hk:TaskNo")]
    pub task_no: String,
    #[serde(rename = "hk:Reason")]
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct FindTasks<'a> {
    #[serde(rename = "hk:Reference")]
    pub reference: &'a str,
}

#[derive(Debug, Serialize)]
pub struct GetRoomStatus<'a> {
    #[serde(rename = "hk:RoomNo")]
    pub room_no: &'a str,
}

// ----- answers -----

#[derive(Debug, Deserialize)]
pub struct AnswerEnvelope {
    #[serde(rename = "Body")]
    pub body: AnswerBody,
}

#[derive(Debug, Deserialize)]
pub struct AnswerBody {
    #[serde(rename = "$value")]
    pub answer: Answer,
}

#[derive(Debug, Deserialize)]
pub enum Answer {
    CreateTaskResponse(OneTask),
    CancelTaskResponse(OneTask),
    FindTasksResponse(TaskList),
    GetRoomStatusResponse(RoomStatus),
    Fault(Fault),
}

#[derive(Debug, Deserialize)]
pub struct OneTask {
    #[serde(rename = "Task")]
    pub task: Task,
}

#[derive(Debug, Deserialize)]
pub struct TaskList {
    #[serde(rename = "Task", default)]
    pub tasks: Vec<Task>,
}

#[derive(Debug, Deserialize)]
pub struct Task {
    #[serde(rename = "TaskNo")]
    pub task_no: String,
    #[serde(rename = "RoomNo")]
    pub room_no: String,
    #[serde(rename = "TaskType")]
    pub task_type: String,
    #[serde(rename = "Priority")]
    pub priority: u8,
    #[serde(rename = "DueDate")]
    pub due_date: String,
    #[serde(rename = "Remark", default)]
    pub remark: String,
    #[serde(rename = "Reference", default)]
    pub reference: String,
    #[serde(rename = "Status")]
    pub status: String,
}

#[derive(Debug, Deserialize)]
pub struct RoomStatus {
    #[serde(rename = "RoomNo")]
    pub room_no: String,
    #[serde(rename = "StatusCode")]
    pub status_code: String,
    #[serde(rename = "OpenTasks", default)]
    pub open_tasks: u32,
}

#[derive(Debug, Deserialize)]
pub struct Fault {
    #[serde(rename = "faultcode")]
    pub fault_code: String,
    #[serde(rename = "faultstring")]
    pub fault_string: String,
    #[serde(rename = "detail", default)]
    pub detail: Option<FaultDetail>,
}

#[derive(Debug, Deserialize)]
pub struct FaultDetail {
    #[serde(rename = "HKError", default)]
    pub error: Option<HkError>,
}

#[derive(Debug, Deserialize)]
pub struct HkError {
    #[serde(rename = "Code")]
    pub code: String,
    #[serde(rename = "Text", default)]
    pub text: String,
    #[serde(rename = "RetryAfter", default)]
    pub retry_after: Option<u64>,
}
