//! Shared by the tests that run `stepwise serve` as a process and speak MCP to it over HTTP
//! with plain requests (tests/oauth.rs, tests/serve_fleet.rs).
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The line `stepwise serve` prints once it listens.
pub const LISTENING: &str = "stepwise serve: listening on";

/// A running `stepwise serve` and its base URL.
pub struct Server {
    pub child: tokio::process::Child,
    pub base: String,
}

impl Server {
    pub fn mcp(&self) -> String {
        format!("{}/mcp", self.base)
    }
}

/// Starts `stepwise serve --addr 127.0.0.1:0 EXTRA` on `url` with `envs`, and waits until it
/// listens.
pub async fn serve(url: &str, extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let prefix = format!("{LISTENING} http://");
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix(&prefix) {
                let authority = rest.split(['/', ' ']).next().unwrap();
                return format!("http://{authority}");
            }
            eprintln!("serve: {line}");
        }
        panic!("stepwise serve exited before listening");
    })
    .await
    .expect("the server listens");
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("serve: {line}");
        }
    });
    Server { child, base }
}

/// A POST of one JSON-RPC message to `mcp`, as a streamable HTTP client sends it.
pub fn mcp_post(
    http: &reqwest::Client,
    mcp: &str,
    token: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let request = http
        .post(mcp)
        .bearer_auth(token)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .json(body);
    match session {
        Some(id) => request.header("Mcp-Session-Id", id),
        None => request,
    }
}

/// The JSON-RPC response in a plain JSON or server-sent-events body.
pub fn rpc_response(text: &str) -> Value {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return value;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC response in {text}"))
}

/// `initialize` + `notifications/initialized` with `capabilities`; the session id, if any.
pub async fn initialize(
    http: &reqwest::Client,
    mcp: &str,
    token: &str,
    capabilities: Value,
) -> Option<String> {
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": capabilities,
                   "clientInfo": {"name": "stepwise-tests", "version": "0"}}
    });
    let response = mcp_post(http, mcp, token, None, &initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string());
    response.text().await.unwrap();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = mcp_post(http, mcp, token, session.as_deref(), &initialized)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    session
}

/// A `tools/call` in `session`: the HTTP status and the JSON-RPC response (or the body).
pub async fn call_tool(
    http: &reqwest::Client,
    mcp: &str,
    token: &str,
    session: Option<&str>,
    id: u64,
    name: &str,
    arguments: Value,
) -> (u16, Value) {
    let call = json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": name, "arguments": arguments}
    });
    let response = mcp_post(http, mcp, token, session, &call)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    if status == 200 {
        (status, rpc_response(&text))
    } else {
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}
