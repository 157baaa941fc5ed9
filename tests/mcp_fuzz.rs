//! Hostile input to the real `stepwise mcp --http` binary (docs/reliability.md, "MCP fuzz"):
//! a seeded generator sends calls with wrong types, missing and extra fields, huge and odd
//! Unicode strings, deep nesting, unknown tools, bad and revoked tokens, oversized, truncated
//! and cut-off bodies, bad JSON and bad JSON-RPC, bad sessions, odd task and resource reads,
//! and bursts over the per-principal in-flight limit. It checks that the server never answers
//! 5xx and never panics, that the calls refused before a handler write nothing (no saga, no
//! audit row), that every saga in the database is one a caller was told about, and that the
//! server's memory stays bounded.
//!
//! `STEPWISE_FUZZ_CALLS` sets the number of calls (default 1,500 for CI; the full run is
//! 10,000+), `STEPWISE_FUZZ_SEED` the seed (default 13). The figures are printed as one JSON
//! line starting `mcp-fuzz:`.
#![allow(clippy::unwrap_used)]

mod common;

use common::database_url;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stepwise_engine::{PgStore, SagaFilter};
use stepwise_mcp::{AuditFilter, AuditStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

/// The body limit the server under test runs with (smaller than the default, so that the
/// oversized bodies are cheap to send).
const MAX_BODY: usize = 256 * 1024;
/// The in-flight limit the server under test runs with.
const MAX_IN_FLIGHT: usize = 6;
/// Calls sent at once outside the bursts (under the in-flight limit).
const PARALLEL: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    // Refused before any handler: nothing may be written.
    BadToken,
    RevokedToken,
    OversizedBody,
    OversizedChunked,
    TruncatedJson,
    CutConnection,
    BadJson,
    BadJsonRpc,
    BadSession,
    // Reach the MCP server: only what a caller was told about may be written.
    WrongTypes,
    MissingFields,
    ExtraFields,
    OddUnicode,
    HugeStrings,
    DeepNesting,
    UnknownTool,
    OddReads,
}

const BEFORE_HANDLER: [Kind; 9] = [
    Kind::BadToken,
    Kind::RevokedToken,
    Kind::OversizedBody,
    Kind::OversizedChunked,
    Kind::TruncatedJson,
    Kind::CutConnection,
    Kind::BadJson,
    Kind::BadJsonRpc,
    Kind::BadSession,
];
const IN_HANDLER: [Kind; 8] = [
    Kind::WrongTypes,
    Kind::MissingFields,
    Kind::ExtraFields,
    Kind::OddUnicode,
    Kind::HugeStrings,
    Kind::DeepNesting,
    Kind::UnknownTool,
    Kind::OddReads,
];

/// A fresh JSON-RPC id: ids are unique within a session (a client reusing the id of a call
/// still in flight gets no answer for one of them, which is the client's error).
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `message` with its id 1, if it has that, made fresh.
fn with_fresh_id(mut message: Value) -> Value {
    if message["id"] == json!(1) {
        message["id"] = json!(next_id());
    }
    message
}

/// A session of one principal: its token and `Mcp-Session-Id`.
#[derive(Clone)]
struct Session {
    token: String,
    id: String,
}

/// What to send.
enum Wire {
    /// An HTTP POST to `/mcp` through reqwest.
    Post {
        auth: Option<Vec<u8>>,
        session: Option<String>,
        body: Vec<u8>,
    },
    /// Bytes written on a raw TCP connection, which is then half-closed.
    Raw(Vec<u8>),
}

/// What came back: an HTTP status (0: the connection ended without one) and the body.
struct Reply {
    status: u16,
    body: Vec<u8>,
    /// The start of what was sent, and how long the answer took (for the report of slow ones).
    sent: String,
    took: Duration,
}

struct Fuzz {
    rng: StdRng,
    tools: Vec<(String, Value)>,
    sessions: Vec<Session>,
    revoked: String,
    authority: String,
}

fn odd_strings() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "\u{0}".into(),
        "a\u{0}b".into(),
        "\u{202E}gnp.exe".into(),
        "\u{200B}\u{200C}\u{200D}\u{FEFF}".into(),
        "e\u{301}\u{301}\u{301}\u{301}\u{301}".into(),
        "🙂‍↔️👩🏽‍🚀🏳️‍🌈".into(),
        "\u{FFFD}\u{FFFF}\u{10FFFF}".into(),
        "𝕳𝖔𝖙𝖊𝖑".into(),
        "'; DROP TABLE mcp.audit; --".into(),
        "../../../../etc/passwd".into(),
        "%s%n%x".into(),
        "\r\n\r\nX-Injected: 1".into(),
        "ﷺ".repeat(40),
        "Ω≈ç√∫˜µ≤≥÷".into(),
        "\u{1F600}".repeat(1000),
        "null".into(),
        "saga://".into(),
        "guest:ana@example.com".into(),
    ]
}

impl Fuzz {
    fn odd(&mut self) -> String {
        let pool = odd_strings();
        match self.rng.random_range(0..4) {
            0 => {
                // Random scalar values from every plane.
                let n = self.rng.random_range(1..64);
                (0..n)
                    .filter_map(|_| char::from_u32(self.rng.random_range(0..0x11_0000)))
                    .collect()
            }
            _ => pool[self.rng.random_range(0..pool.len())].clone(),
        }
    }

    fn huge(&mut self) -> String {
        let n = self.rng.random_range(8_000..60_000);
        let unit = ["x", "é", "🙂", "\u{0}", "ﷺ", "\\", "\""][self.rng.random_range(0..7)];
        unit.repeat(n / unit.len())
    }

    /// A value of some JSON type other than `expected` (a JSON Schema type name).
    fn wrong_value(&mut self, expected: &str) -> Value {
        let candidates: Vec<Value> = vec![
            json!(null),
            json!(true),
            json!(-1),
            json!(1.5e300),
            json!(i64::MIN),
            json!(u64::MAX),
            json!("not what you want"),
            json!([]),
            json!([1, "two", null]),
            json!({}),
            json!({"nested": {"deeper": [true]}}),
        ];
        loop {
            let v = candidates[self.rng.random_range(0..candidates.len())].clone();
            let fits = match expected {
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "array" => v.is_array(),
                "object" => v.is_object(),
                "null" => v.is_null(),
                _ => false,
            };
            if !fits {
                return v;
            }
        }
    }

    fn any_value(&mut self) -> Value {
        match self.rng.random_range(0..6) {
            0 => json!(self.odd()),
            1 => json!(self.rng.random::<i64>()),
            2 => json!(self.rng.random::<bool>()),
            3 => json!(null),
            4 => json!([self.odd(), self.rng.random::<f64>()]),
            _ => json!({ self.odd(): self.odd() }),
        }
    }

    fn nested(&mut self) -> String {
        let depth = [64, 127, 128, 129, 500, 5_000, 40_000][self.rng.random_range(0..7)];
        if self.rng.random() {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
        }
    }

    fn tool(&mut self) -> (String, Value) {
        self.tools[self.rng.random_range(0..self.tools.len())].clone()
    }

    fn session(&mut self) -> Session {
        self.sessions[self.rng.random_range(0..self.sessions.len())].clone()
    }

    fn call_body(&mut self, name: &str, arguments: Value) -> Vec<u8> {
        let id = next_id();
        serde_json::to_vec(&json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}
        }))
        .unwrap()
    }

    fn in_session(&mut self, body: Vec<u8>) -> Wire {
        let session = self.session();
        Wire::Post {
            auth: Some(format!("Bearer {}", session.token).into_bytes()),
            session: Some(session.id),
            body,
        }
    }

    /// Properties of a tool's input schema, and its required ones.
    fn shape(schema: &Value) -> (Vec<(String, String)>, Vec<String>) {
        let props = schema["properties"]
            .as_object()
            .map(|p| {
                p.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v["type"].as_str().unwrap_or("string").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let required = schema["required"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        (props, required)
    }

    fn generate(&mut self, kind: Kind) -> Wire {
        match kind {
            Kind::BadToken => {
                let (name, _) = self.tool();
                let body = self.call_body(&name, json!({}));
                let token = self.odd();
                let auth: Option<Vec<u8>> = match self.rng.random_range(0..8) {
                    0 => None,
                    1 => Some(b"Bearer".to_vec()),
                    2 => Some(b"Bearer ".to_vec()),
                    3 => Some(format!("Basic {}", self.odd()).into_bytes()),
                    4 => Some(format!("Bearer swt_{}", Uuid::new_v4()).into_bytes()),
                    5 => Some(format!("Bearer {}", "A".repeat(8_000)).into_bytes()),
                    6 => Some(vec![
                        b'B', b'e', b'a', b'r', b'e', b'r', b' ', 0xff, 0xfe, 0x80,
                    ]),
                    _ => Some(format!("Bearer {token}").into_bytes()),
                };
                let session = self.session().id;
                Wire::Post {
                    auth,
                    session: Some(session),
                    body,
                }
            }
            Kind::RevokedToken => {
                let (name, _) = self.tool();
                let body = self.call_body(&name, json!({"idempotency_key": "revoked"}));
                let session = self.session().id;
                Wire::Post {
                    auth: Some(format!("Bearer {}", self.revoked).into_bytes()),
                    session: Some(session),
                    body,
                }
            }
            Kind::OversizedBody => {
                let (name, _) = self.tool();
                let pad = "p".repeat(MAX_BODY + self.rng.random_range(1..200_000));
                let body = self.call_body(&name, json!({ "pad": pad }));
                self.in_session(body)
            }
            Kind::OversizedChunked => {
                let session = self.session();
                let chunks = MAX_BODY / 16_384 + self.rng.random_range(2..8);
                let mut raw = format!(
                    "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
                     Mcp-Session-Id: {}\r\nMCP-Protocol-Version: 2025-06-18\r\n\
                     Content-Type: application/json\r\n\
                     Accept: application/json, text/event-stream\r\n\
                     Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                    self.authority, session.token, session.id
                )
                .into_bytes();
                let head = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"x\",\"arguments\":{\"pad\":\"";
                raw.extend_from_slice(format!("{:x}\r\n", head.len()).as_bytes());
                raw.extend_from_slice(head);
                raw.extend_from_slice(b"\r\n");
                for _ in 0..chunks {
                    raw.extend_from_slice(b"4000\r\n");
                    raw.extend_from_slice(&[b'p'; 16_384]);
                    raw.extend_from_slice(b"\r\n");
                }
                raw.extend_from_slice(b"0\r\n\r\n");
                Wire::Raw(raw)
            }
            Kind::TruncatedJson => {
                let (name, schema) = self.tool();
                let (props, _) = Self::shape(&schema);
                let mut args = Map::new();
                for (p, _) in props {
                    args.insert(p, json!(self.odd()));
                }
                let body = self.call_body(&name, Value::Object(args));
                let cut = self.rng.random_range(0..body.len().max(1));
                self.in_session(body[..cut].to_vec())
            }
            Kind::CutConnection => {
                let session = self.session();
                let (name, _) = self.tool();
                let body = self.call_body(&name, json!({"idempotency_key": "cut"}));
                let claimed = body.len() + self.rng.random_range(1..10_000);
                let sent = self.rng.random_range(0..body.len());
                let mut raw = format!(
                    "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
                     Mcp-Session-Id: {}\r\nMCP-Protocol-Version: 2025-06-18\r\n\
                     Content-Type: application/json\r\n\
                     Accept: application/json, text/event-stream\r\n\
                     Content-Length: {claimed}\r\n\r\n",
                    self.authority, session.token, session.id
                )
                .into_bytes();
                raw.extend_from_slice(&body[..sent]);
                Wire::Raw(raw)
            }
            Kind::BadJson => {
                let choices: Vec<Vec<u8>> = vec![
                    b"".to_vec(),
                    b"{".to_vec(),
                    b"}".to_vec(),
                    b"null".to_vec(),
                    b"[]".to_vec(),
                    b"\"tools/call\"".to_vec(),
                    b"1e999999".to_vec(),
                    b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"".to_vec(),
                    b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}".to_vec(),
                    vec![0xff, 0xfe, 0x00, 0x7b],
                    b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"\\ud800\"}}".to_vec(),
                    b"{\"a\":1,\"a\":2}".to_vec(),
                    (0..self.rng.random_range(1..512))
                        .map(|_| self.rng.random::<u8>())
                        .collect(),
                    self.nested().into_bytes(),
                ];
                let body = choices[self.rng.random_range(0..choices.len())].clone();
                self.in_session(body)
            }
            Kind::BadJsonRpc => {
                let odd = self.odd();
                let choices = vec![
                    json!({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}),
                    json!({"id": 1, "method": "tools/list"}),
                    json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "x"}}),
                    json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/list"}),
                    json!({"jsonrpc": "2.0", "id": [1], "method": "tools/list"}),
                    json!({"jsonrpc": "2.0", "id": 1.5, "method": "tools/list"}),
                    json!({"jsonrpc": "2.0", "id": null, "method": "tools/list"}),
                    json!({"jsonrpc": "2.0", "id": 1, "method": 42}),
                    json!({"jsonrpc": "2.0", "id": 1, "method": odd}),
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1, 2]}),
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": "x"}),
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}),
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}}),
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 7}}),
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_rooms", "arguments": [1]}}),
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_rooms", "arguments": "x"}}),
                    json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
                    json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "x"}}),
                    json!([]),
                    json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]),
                    json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "nope"}}),
                    json!({"jsonrpc": "2.0", "method": "notifications/unknown"}),
                    json!({"jsonrpc": "2.0", "id": u64::MAX, "method": "ping", "params": {"_meta": odd_strings()}}),
                ];
                let body = serde_json::to_vec(&with_fresh_id(
                    choices[self.rng.random_range(0..choices.len())].clone(),
                ))
                .unwrap();
                self.in_session(body)
            }
            Kind::BadSession => {
                let session = self.session();
                let body = self.call_body("search_rooms", json!({}));
                let id = match self.rng.random_range(0..4) {
                    0 => None,
                    1 => Some(Uuid::new_v4().to_string()),
                    2 => Some(format!("{}x", session.id)),
                    _ => Some("../".repeat(100)),
                };
                Wire::Post {
                    auth: Some(format!("Bearer {}", session.token).into_bytes()),
                    session: id,
                    body,
                }
            }
            Kind::WrongTypes => {
                let (name, schema) = self.tool();
                let (props, _) = Self::shape(&schema);
                let mut args = Map::new();
                for (p, ty) in &props {
                    args.insert(p.clone(), self.wrong_value(ty));
                }
                if props.is_empty() {
                    args.insert("unexpected".into(), json!([null]));
                }
                let body = self.call_body(&name, Value::Object(args));
                self.in_session(body)
            }
            Kind::MissingFields => {
                let (name, schema) = self.tool();
                let (props, required) = Self::shape(&schema);
                let mut args = Map::new();
                for (p, ty) in &props {
                    if required.contains(p) && self.rng.random_bool(0.5) {
                        continue;
                    }
                    let v = match ty.as_str() {
                        "integer" | "number" => json!(self.rng.random_range(-5..50)),
                        "boolean" => json!(true),
                        _ => json!(self.odd()),
                    };
                    args.insert(p.clone(), v);
                }
                let arguments = if self.rng.random_bool(0.1) {
                    Value::Null
                } else {
                    Value::Object(args)
                };
                let body = self.call_body(&name, arguments);
                self.in_session(body)
            }
            Kind::ExtraFields => {
                let (name, schema) = self.tool();
                let (props, _) = Self::shape(&schema);
                let mut args = Map::new();
                for (p, _) in &props {
                    args.insert(p.clone(), self.any_value());
                }
                for _ in 0..self.rng.random_range(1..20) {
                    let key = self.odd();
                    let value = self.any_value();
                    args.insert(key, value);
                }
                let body = self.call_body(&name, Value::Object(args));
                self.in_session(body)
            }
            Kind::OddUnicode => {
                let (name, schema) = self.tool();
                let (props, _) = Self::shape(&schema);
                let mut args = Map::new();
                for (p, _) in &props {
                    args.insert(p.clone(), json!(self.odd()));
                }
                let body = self.call_body(&name, Value::Object(args));
                self.in_session(body)
            }
            Kind::HugeStrings => {
                let (name, schema) = self.tool();
                let (props, _) = Self::shape(&schema);
                let mut args = Map::new();
                for (p, _) in props.iter().take(3) {
                    args.insert(p.clone(), json!(self.huge()));
                }
                let name = if self.rng.random_bool(0.2) {
                    self.huge()
                } else {
                    name
                };
                let body = self.call_body(&name, Value::Object(args));
                if body.len() > MAX_BODY {
                    // Keep this category under the limit: the oversized ones are their own.
                    let body =
                        self.call_body("search_rooms", json!({"status": "x".repeat(60_000)}));
                    return self.in_session(body);
                }
                self.in_session(body)
            }
            Kind::DeepNesting => {
                let (name, _) = self.tool();
                let nested = self.nested();
                let id = next_id();
                let body = format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":{},\"arguments\":{{\"deep\":{nested}}}}}}}",
                    json!(name)
                );
                self.in_session(body.into_bytes())
            }
            Kind::UnknownTool => {
                let name = match self.rng.random_range(0..4) {
                    0 => self.odd(),
                    1 => format!("tool_{}", self.rng.random::<u32>()),
                    2 => "x".repeat(self.rng.random_range(200..5_000)),
                    _ => "synthetic_chain ".into(),
                };
                let key = self.odd();
                let body = self.call_body(&name, json!({ "idempotency_key": key }));
                self.in_session(body)
            }
            Kind::OddReads => {
                let odd = self.odd();
                let id = next_id();
                let request = match self.rng.random_range(0..9) {
                    0 => json!({"method": "tasks/get", "params": {"taskId": odd}}),
                    1 => {
                        json!({"method": "tasks/get", "params": {"taskId": Uuid::now_v7().to_string()}})
                    }
                    2 => json!({"method": "tasks/cancel", "params": {"taskId": odd}}),
                    3 => {
                        json!({"method": "tasks/update", "params": {"taskId": odd, "inputResponses": {odd.clone(): {"action": "accept"}}}})
                    }
                    4 => {
                        json!({"method": "resources/read", "params": {"uri": format!("saga://{odd}")}})
                    }
                    5 => json!({"method": "resources/read", "params": {"uri": odd}}),
                    6 => {
                        json!({"method": "tools/call", "params": {"name": "get_saga_status", "arguments": {"saga_id": odd}}})
                    }
                    7 => json!({"method": "tasks/result", "params": {"taskId": odd}}),
                    _ => json!({"method": "prompts/get", "params": {"name": odd}}),
                };
                let mut request = request;
                request["jsonrpc"] = json!("2.0");
                request["id"] = json!(id);
                let body = serde_json::to_vec(&request).unwrap();
                self.in_session(body)
            }
        }
    }
}

/// Generates `count` calls cycling through `kinds` and sends them, `PARALLEL` at a time.
async fn send_kinds(
    fuzz: &mut Fuzz,
    kinds: &[Kind],
    count: usize,
    http: &reqwest::Client,
    base: &str,
    authority: &str,
) -> Vec<(Kind, Reply)> {
    let wires: Vec<(Kind, Wire)> = (0..count)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            (kind, fuzz.generate(kind))
        })
        .collect();
    futures::stream::iter(wires)
        .map(|(kind, wire)| async move { (kind, send(http, base, authority, wire).await) })
        .buffer_unordered(PARALLEL)
        .collect()
        .await
}

/// Sends `wire` to the server; a reply without a status (the connection ended) is status 0.
async fn send(http: &reqwest::Client, base: &str, authority: &str, wire: Wire) -> Reply {
    let sent = match &wire {
        Wire::Post { body, .. } => {
            String::from_utf8_lossy(&body[..body.len().min(160)]).into_owned()
        }
        Wire::Raw(bytes) => String::from_utf8_lossy(&bytes[..bytes.len().min(160)]).into_owned(),
    };
    let started = Instant::now();
    let (status, body) = exchange(http, base, authority, wire).await;
    Reply {
        status,
        body,
        sent,
        took: started.elapsed(),
    }
}

async fn exchange(
    http: &reqwest::Client,
    base: &str,
    authority: &str,
    wire: Wire,
) -> (u16, Vec<u8>) {
    match wire {
        Wire::Post {
            auth,
            session,
            body,
        } => {
            let mut request = http
                .post(format!("{base}/mcp"))
                .header("Accept", "application/json, text/event-stream")
                .header("Content-Type", "application/json")
                .header("MCP-Protocol-Version", "2025-06-18")
                .body(body);
            if let Some(auth) = auth {
                if let Ok(value) = reqwest::header::HeaderValue::from_bytes(&auth) {
                    request = request.header("Authorization", value);
                }
            }
            if let Some(session) = session {
                if let Ok(value) = reqwest::header::HeaderValue::from_str(&session) {
                    request = request.header("Mcp-Session-Id", value);
                }
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response
                        .bytes()
                        .await
                        .map(|b| b.to_vec())
                        .unwrap_or_default();
                    (status, body)
                }
                Err(_) => (0, Vec::new()),
            }
        }
        Wire::Raw(bytes) => {
            let exchange = async {
                let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
                // The server may answer (413) and close before all is written.
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer).await;
                Some(answer)
            };
            let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&answer);
            let status = text
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            (status, answer)
        }
    }
}

/// The JSON-RPC messages of a response body: plain JSON, or the `data:` events of an SSE one.
fn messages(body: &[u8]) -> Vec<Value> {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        return vec![value];
    }
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .collect()
}

/// Saga ids a response told its caller about.
fn sagas_told(body: &[u8]) -> Vec<Uuid> {
    messages(body)
        .iter()
        .filter_map(|m| m["result"]["structuredContent"]["saga_id"].as_str())
        .filter_map(|s| s.parse().ok())
        .collect()
}

async fn every_saga_id(pool: &PgPool) -> BTreeSet<Uuid> {
    PgStore::new(pool.clone())
        .list(&SagaFilter {
            limit: 100_000,
            ..SagaFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

async fn audit_count(pool: &PgPool) -> usize {
    AuditStore::new(pool.clone())
        .query(&AuditFilter {
            limit: 1_000_000,
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .len()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn token(url: &str, role: &str, subject: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args([
            "tokens",
            "create",
            "--role",
            role,
            "--subject",
            subject,
            "--json",
        ])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        created["token"].as_str().unwrap().to_string(),
        created["id"].as_str().unwrap().to_string(),
    )
}

async fn open_session(http: &reqwest::Client, base: &str, token: &str) -> Session {
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "stepwise-fuzz", "version": "0"}}
    });
    let response = http
        .post(format!("{base}/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response
        .headers()
        .get("mcp-session-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let _ = response.bytes().await;
    let response = http
        .post(format!("{base}/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .header("Mcp-Session-Id", &id)
        .bearer_auth(token)
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    Session {
        token: token.to_string(),
        id,
    }
}

#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<String, usize>,
    statuses: BTreeMap<u16, usize>,
    by_kind_status: BTreeMap<String, BTreeMap<u16, usize>>,
    told: BTreeSet<Uuid>,
    server_errors: Vec<String>,
    slow: Vec<String>,
}

impl Tally {
    fn add(&mut self, kind: &str, reply: &Reply) {
        *self.by_kind.entry(kind.to_string()).or_default() += 1;
        *self.statuses.entry(reply.status).or_default() += 1;
        *self
            .by_kind_status
            .entry(kind.to_string())
            .or_default()
            .entry(reply.status)
            .or_default() += 1;
        if reply.status >= 500 {
            self.server_errors.push(format!(
                "{kind}: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)])
            ));
        }
        if reply.took > Duration::from_secs(5) || reply.status == 0 {
            self.slow.push(format!(
                "{kind}: {} after {:?}: {}",
                reply.status, reply.took, reply.sent
            ));
        }
        self.told.extend(sagas_told(&reply.body));
    }
}

#[sqlx::test(migrations = false)]
async fn hostile_calls_get_clear_refusals_and_write_nothing(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let calls: usize = std::env::var("STEPWISE_FUZZ_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500);
    let seed: u64 = std::env::var("STEPWISE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(13);
    let url = database_url(&pool).await;
    let (operator, _) = token(&url, "operator", "fuzz");
    let (guest, _) = token(&url, "guest", "fuzz@example.com");
    let (staff, _) = token(&url, "staff", "fuzz-desk");
    let (revoked, revoked_id) = token(&url, "staff", "gone");
    let out = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["tokens", "revoke", &revoked_id])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success());

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["mcp", "--http", "127.0.0.1:0"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .env("STEPWISE_MCP_WAIT_MS", "300")
        .env("STEPWISE_MCP_MAX_BODY_BYTES", MAX_BODY.to_string())
        .env("STEPWISE_MCP_MAX_IN_FLIGHT", MAX_IN_FLIGHT.to_string())
        // Thousands of calls in seconds from three principals: the rate limit (tests/oauth.rs
        // checks it) would answer most of them 429 before the parts under test see them.
        .env("STEPWISE_MCP_RATE_PER_SECOND", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let authority = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("stepwise mcp: listening on http://") {
                return rest.split('/').next().unwrap().to_string();
            }
        }
        panic!("stepwise mcp exited before listening");
    })
    .await
    .expect("stepwise mcp --http listens");
    let base = format!("http://{authority}");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let kept = stderr.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });

    // A new connection per request: the server closes one whose body it did not read (413),
    // and a pooled connection closed that way would fail the next request on it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut sessions = Vec::new();
    for t in [&operator, &guest, &staff] {
        sessions.push(open_session(&http, &base, t).await);
    }
    // The tools and their input schemas, as the operator (who has them all) lists them.
    let listed = http
        .post(format!("{base}/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .header("Mcp-Session-Id", &sessions[0].id)
        .bearer_auth(&operator)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let tools: Vec<(String, Value)> = messages(&listed)
        .into_iter()
        .find_map(|m| m["result"]["tools"].as_array().cloned())
        .unwrap()
        .into_iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["inputSchema"].clone(),
            )
        })
        .collect();
    assert!(tools.len() > 5, "{tools:?}");

    let mut fuzz = Fuzz {
        rng: StdRng::seed_from_u64(seed),
        tools,
        sessions,
        revoked,
        authority: authority.clone(),
    };
    let mut tally = Tally::default();
    let started = Instant::now();
    let rss_before = rss_kib(pid);

    // 1. Refused before any handler: not a saga, not an audit row.
    let sagas_before = every_saga_id(&pool).await;
    let audit_before = audit_count(&pool).await;
    let first = calls * 2 / 5;
    let replies = send_kinds(&mut fuzz, &BEFORE_HANDLER, first, &http, &base, &authority).await;
    for (kind, reply) in &replies {
        tally.add(&format!("{kind:?}"), reply);
        match kind {
            Kind::BadToken | Kind::RevokedToken => assert_eq!(reply.status, 401),
            Kind::OversizedBody | Kind::OversizedChunked => {
                assert!(
                    reply.status == 413 || reply.status == 0,
                    "{kind:?}: {}",
                    reply.status
                );
                if reply.status == 413 {
                    let text = String::from_utf8_lossy(&reply.body).to_lowercase();
                    assert!(
                        text.contains("too large") || text.contains("at most"),
                        "{text}"
                    );
                }
            }
            _ => {}
        }
    }
    assert_eq!(every_saga_id(&pool).await, sagas_before);
    assert_eq!(audit_count(&pool).await, audit_before);

    // 2. Calls that reach the MCP server: every saga in the database is one a caller was
    // told about.
    let second = calls - first - calls / 20;
    let replies = send_kinds(&mut fuzz, &IN_HANDLER, second, &http, &base, &authority).await;
    for (kind, reply) in &replies {
        tally.add(&format!("{kind:?}"), reply);
        assert_ne!(reply.status, 0, "{kind:?}: no answer");
    }

    // 3. Bursts over the in-flight limit: slow calls, twice the limit at once. Those over it
    // get 429 with Retry-After and start nothing.
    let operator_session = fuzz.sessions[0].clone();
    let mut burst_calls = 0;
    let mut refused = 0;
    while burst_calls < calls / 20 {
        let n = MAX_IN_FLIGHT * 2;
        let wires: Vec<Wire> = (0..n)
            .map(|_| Wire::Post {
                auth: Some(format!("Bearer {}", operator_session.token).into_bytes()),
                session: Some(operator_session.id.clone()),
                body: serde_json::to_vec(&json!({
                    "jsonrpc": "2.0", "id": next_id(), "method": "tools/call",
                    "params": {"name": "synthetic_chain", "arguments": {
                        "steps": 2, "step_sleep_ms": 150,
                        "idempotency_key": Uuid::new_v4().to_string()}}
                }))
                .unwrap(),
            })
            .collect();
        let replies: Vec<Reply> = futures::future::join_all(
            wires
                .into_iter()
                .map(|wire| send(&http, &base, &authority, wire)),
        )
        .await;
        for reply in &replies {
            tally.add("Burst", reply);
            if reply.status == 200 && sagas_told(&reply.body).is_empty() {
                eprintln!(
                    "burst reply without a saga: {}",
                    String::from_utf8_lossy(&reply.body)
                );
            }
            assert!(
                reply.status == 200 || reply.status == 429,
                "burst: {}",
                reply.status
            );
            if reply.status == 429 {
                refused += 1;
                let text = String::from_utf8_lossy(&reply.body);
                assert!(text.contains("STEPWISE_MCP_MAX_IN_FLIGHT"), "{text}");
                assert!(sagas_told(&reply.body).is_empty());
            }
        }
        burst_calls += n;
    }
    assert!(refused > 0, "no burst call was refused");

    let duration = started.elapsed();
    // Let sagas started by accepted calls finish, then look.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_after = rss_kib(pid);
    let after = every_saga_id(&pool).await;
    let unexplained: Vec<&Uuid> = after
        .iter()
        .filter(|id| !sagas_before.contains(id) && !tally.told.contains(id))
        .collect();
    let stderr_lines = stderr.lock().unwrap().clone();
    let panics: Vec<&String> = stderr_lines
        .iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    let still_running = child.try_wait().unwrap().is_none();
    let total: usize = tally.by_kind.values().sum();
    println!(
        "mcp-fuzz: {}",
        json!({
            "seed": seed,
            "calls": total,
            "by_category": tally.by_kind,
            "statuses": tally.statuses,
            "statuses_by_category": tally.by_kind_status,
            "sagas_created": after.len() - sagas_before.len(),
            "sagas_told": tally.told.len(),
            "unexplained_sagas": unexplained.len(),
            "burst_refused_429": refused,
            "server_errors_5xx": tally.server_errors.len(),
            "slow_or_unanswered": tally.slow,
            "panics": panics.len(),
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_after,
            "duration_s": duration.as_secs_f64(),
        })
    );
    assert!(tally.server_errors.is_empty(), "{:#?}", tally.server_errors);
    assert!(panics.is_empty(), "{panics:#?}");
    assert!(still_running, "the server exited: {stderr_lines:#?}");
    assert!(
        unexplained.is_empty(),
        "sagas no caller was told about: {unexplained:?}"
    );
    // Bounded: the fuzz leaves the server within 64 MiB of where it started (a leak of the
    // bodies it was sent, a few hundred MiB in a full run, would not be).
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
