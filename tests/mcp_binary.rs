//! The real `stepwise mcp` binary: driven over stdio by an rmcp client as a child process, and
//! over streamable HTTP with a token made by `stepwise tokens create`.
#![allow(clippy::unwrap_used)]

mod common;

use common::database_url;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::process::{Command, Stdio};
use std::time::Duration;
use stepwise_engine::{PgStore, SagaDetail, SagaFilter};
use stepwise_mcp::{AuditFilter, AuditRecord, AuditStore, TokenStore};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Every saga's detail, read through the engine's store.
async fn every_saga(pool: &PgPool) -> Vec<SagaDetail> {
    let store = PgStore::new(pool.clone());
    let filter = SagaFilter {
        limit: 1000,
        ..SagaFilter::default()
    };
    let mut details = Vec::new();
    for summary in store.list(&filter).await.unwrap() {
        details.push(store.detail(summary.id).await.unwrap().unwrap());
    }
    details
}

/// The audit rows, newest first, read through the facade's audit store.
async fn audit(pool: &PgPool) -> Vec<AuditRecord> {
    AuditStore::new(pool.clone())
        .query(&AuditFilter::default())
        .await
        .unwrap()
}

fn call_params(tool: &str, args: Value) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(tool.to_string());
    params.arguments = args.as_object().cloned();
    params
}

fn stdio_server(url: &str, principal: Option<&str>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .arg("mcp")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env("STEPWISE_MCP_WAIT_MS", "10000")
        .kill_on_drop(true);
    match principal {
        Some(p) => command.env("STEPWISE_PRINCIPAL", p),
        None => command.env_remove("STEPWISE_PRINCIPAL"),
    };
    command
}

#[sqlx::test(migrations = false)]
async fn stdio_serves_a_desktop_client_with_an_in_process_worker(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let transport = TokioChildProcess::new(stdio_server(&url, None)).unwrap();
    let client = ().serve(transport).await.unwrap();
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "stepwise");
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    assert!(names.contains(&"synthetic_chain".to_string()), "{names:?}");
    assert!(names.contains(&"retry_saga".to_string()), "{names:?}");

    let result = client
        .call_tool(call_params(
            "synthetic_chain",
            json!({"steps": 2, "idempotency_key": "stdio-1"}),
        ))
        .await
        .unwrap();
    let s = result.structured_content.clone().unwrap();
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["steps_done"], 2);
    client.cancel().await.unwrap();

    let sagas = every_saga(&pool).await;
    assert_eq!(sagas.len(), 1);
    assert_eq!(sagas[0].started_by, "operator:local");
    let audited = audit(&pool).await;
    assert_eq!(audited.len(), 1);
    assert_eq!(
        (audited[0].transport.as_str(), audited[0].outcome.as_str()),
        ("stdio", "ok")
    );

    // STEPWISE_PRINCIPAL picks the role: a guest has no diagnostic tool.
    let transport =
        TokioChildProcess::new(stdio_server(&url, Some("guest:ana@example.com"))).unwrap();
    let client = ().serve(transport).await.unwrap();
    let names: Vec<_> = client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(!names.contains(&"synthetic_chain".to_string()), "{names:?}");
    assert!(names.contains(&"get_saga_status".to_string()), "{names:?}");
    client.cancel().await.unwrap();
}

/// A running `stepwise mcp --http 127.0.0.1:0` and its base URL.
struct HttpServer {
    child: tokio::process::Child,
    base: String,
}

async fn http_server(url: &str) -> HttpServer {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["mcp", "--http", "127.0.0.1:0"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env("STEPWISE_MCP_WAIT_MS", "10000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("stepwise mcp: listening on http://") {
                let authority = rest.split('/').next().unwrap();
                return format!("http://{authority}");
            }
        }
        panic!("stepwise mcp exited before listening");
    })
    .await
    .expect("stepwise mcp --http listens");
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    HttpServer { child, base }
}

/// The JSON-RPC message of a streamable HTTP response: plain JSON, or the first `data:` event
/// that carries a result or error.
async fn rpc_body(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    if let Ok(value) = serde_json::from_str::<Value>(&text) {
        return value;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC response in {text}"))
}

#[sqlx::test(migrations = false)]
async fn http_requires_a_bearer_token_and_serves_calls_with_one(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let created = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args([
            "tokens",
            "create",
            "--role",
            "operator",
            "--subject",
            "ci",
            "--json",
        ])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["principal"], "operator:ci");
    // Stored (as its hash only: the facade's own tests check its table) for operator:ci.
    let stored = TokenStore::new(pool.clone()).list().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].role.as_str(), stored[0].subject.as_str()),
        ("operator", "ci")
    );
    assert_eq!(created["id"], json!(stored[0].id));

    let mut server = http_server(&url).await;
    let mcp = format!("{}/mcp", server.base);
    let http = reqwest::Client::new();
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "stepwise-tests", "version": "0"}}
    });
    let post = |body: &Value| {
        http.post(&mcp)
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Type", "application/json")
            .json(body)
    };

    // Without a token, or with a wrong one: 401 and a Bearer challenge.
    for request in [
        post(&initialize),
        post(&initialize).bearer_auth("swt_not-a-token"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let challenge = response
            .headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    }

    // With the token: initialize, then a tool call.
    let response = post(&initialize).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string());
    let init = rpc_body(response).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "stepwise", "{init}");
    let with_session = |request: reqwest::RequestBuilder| {
        let request = request
            .bearer_auth(&token)
            .header("MCP-Protocol-Version", "2025-06-18");
        match &session {
            Some(id) => request.header("Mcp-Session-Id", id),
            None => request,
        }
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = with_session(post(&initialized)).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    let call = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "synthetic_chain", "arguments": {"steps": 2, "idempotency_key": "http-1"}}
    });
    let response = with_session(post(&call)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = rpc_body(response).await;
    let s = &body["result"]["structuredContent"];
    assert_eq!(s["status"], "completed", "{body}");
    assert_eq!(body["result"]["isError"], false);

    let audited = audit(&pool).await;
    assert_eq!(audited.len(), 1);
    assert_eq!(
        (audited[0].principal.as_str(), audited[0].transport.as_str()),
        ("operator:ci", "http")
    );

    // Operators query the audit from the command line.
    let audit = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["audit", "--tool", "synthetic_chain", "--json"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let audit: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let calls = audit["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{audit}");
    assert_eq!(calls[0]["principal"], "operator:ci");
    assert_eq!(calls[0]["outcome"], "ok");
    assert_eq!(calls[0]["saga_id"], s["saga_id"]);
    let listed = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["tokens", "list", "--json"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["tokens"][0]["subject"], "ci");
    assert!(
        !listed.to_string().contains(&token),
        "tokens list never shows a token"
    );

    // A revoked token no longer works.
    let id = created["id"].as_str().unwrap();
    let revoked = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["tokens", "revoke", id])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(revoked.status.success());
    let response = with_session(post(&call)).send().await.unwrap();
    assert_eq!(response.status(), 401);

    // Metrics beside /mcp.
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("stepwise_"), "{text}");

    server.child.start_kill().unwrap();
    let _ = server.child.wait().await;
}

#[sqlx::test(migrations = false)]
async fn an_undeclared_role_is_a_usage_error_listing_the_known_roles(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let known = "(known roles: guest, manager, operator, staff)";
    let token = Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(["tokens", "create", "--role", "admin", "--subject", "ci"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(token.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&token.stderr);
    assert!(stderr.contains("unknown role `admin`"), "{stderr}");
    assert!(stderr.contains(known), "{stderr}");
    let tokens = TokenStore::new(pool.clone()).list().await.unwrap();
    assert!(tokens.is_empty(), "no token for an unknown role");

    let session = stdio_server(&url, Some("manger:mia"))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(session.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&session.stderr);
    assert!(
        stderr.contains("STEPWISE_PRINCIPAL: unknown role `manger`"),
        "{stderr}"
    );
    assert!(stderr.contains(known), "{stderr}");
}

/// The stderr lines `stepwise mcp --http` wrote before it listened, with `env` set and every
/// external-service variable removed unless `env` sets it.
async fn stderr_until_listening(url: &str, env: &[(&str, &str)]) -> Vec<String> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"));
    command
        .args(["mcp", "--http", "127.0.0.1:0", "--no-worker"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for name in [
        "STEPWISE_SANDBOX_URL",
        "STEPWISE_STRIPE_URL",
        "STEPWISE_SALESFORCE_URL",
        "STEPWISE_TWILIO_URL",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let before = tokio::time::timeout(Duration::from_secs(60), async {
        let mut before = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("stepwise mcp: listening on") {
                return before;
            }
            before.push(line);
        }
        panic!("stepwise mcp exited before listening: {before:?}");
    })
    .await
    .expect("stepwise mcp --http listens");
    child.kill().await.unwrap();
    before
}

#[sqlx::test(migrations = false)]
async fn without_service_urls_mcp_warns_that_the_external_systems_are_a_sandbox(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;

    let stderr = stderr_until_listening(&url, &[]).await;
    let warning = stderr
        .iter()
        .find(|line| line.contains("WARN") && line.contains("sandbox"))
        .unwrap_or_else(|| panic!("no sandbox warning: {stderr:?}"));
    for words in [
        "payments",
        "CRM/PMS",
        "SMS",
        "nothing real is charged",
        "STEPWISE_STRIPE_URL",
        "STEPWISE_SALESFORCE_URL",
        "STEPWISE_TWILIO_URL",
        "STEPWISE_SANDBOX_URL",
    ] {
        assert!(warning.contains(words), "{words} missing: {warning}");
    }

    // Over stdio too (its first words on stderr at RUST_LOG=warn).
    let mut stdio = stdio_server(&url, None);
    for name in [
        "STEPWISE_SANDBOX_URL",
        "STEPWISE_STRIPE_URL",
        "STEPWISE_SALESFORCE_URL",
        "STEPWISE_TWILIO_URL",
    ] {
        stdio.env_remove(name);
    }
    let mut child = stdio
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("stepwise mcp warns within a minute")
        .unwrap()
        .unwrap_or_default();
    child.kill().await.unwrap();
    assert!(
        first.contains("WARN") && first.contains("in-memory sandbox"),
        "{first}"
    );

    // Pointed at a sandbox on purpose: nothing to warn about.
    let stderr =
        stderr_until_listening(&url, &[("STEPWISE_SANDBOX_URL", "http://127.0.0.1:8787")]).await;
    assert!(
        !stderr.iter().any(|line| line.contains("in-memory sandbox")),
        "{stderr:?}"
    );
}

/// The audit's tools, oldest first.
async fn audit_tools(pool: &PgPool) -> Vec<String> {
    let mut tools: Vec<String> = audit(pool).await.into_iter().map(|r| r.tool).collect();
    tools.reverse();
    tools
}

/// `stepwise audit prune` removes the audit rows older than its cutoff (a dry run only counts);
/// `stepwise sagas prune` removes them at its own cutoff unless `--keep-audit`.
#[sqlx::test(migrations = false)]
async fn audit_prune_and_sagas_prune_remove_only_old_audit_rows(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let url = database_url(&pool).await;
    let now = chrono::Utc::now();
    let ages = [400, 200, 100, 60, 40, 1];
    sqlx::query("SELECT mcp.ensure_audit_partitions($1, $2)")
        .bind(now - chrono::Duration::days(400))
        .bind(now)
        .execute(&pool)
        .await
        .unwrap();
    for days in ages {
        sqlx::query(
            "INSERT INTO mcp.audit (at, principal, transport, tool, outcome, duration_ms)
             VALUES ($1, 'operator:ci', 'http', $2, 'ok', 1)",
        )
        .bind(now - chrono::Duration::days(days))
        .bind(format!("{days}d"))
        .execute(&pool)
        .await
        .unwrap();
    }
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_stepwise"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };

    let dry = run(&[
        "audit",
        "prune",
        "--older-than",
        "90d",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(dry["rows"], 3, "{dry}");
    assert_eq!(audit_tools(&pool).await.len(), 6);
    let pruned = run(&["audit", "prune", "--older-than", "90d", "--json"]);
    assert_eq!(pruned["rows"], 3, "{pruned}");
    assert!(
        !pruned["partitions_dropped"].as_array().unwrap().is_empty(),
        "{pruned}"
    );
    assert_eq!(audit_tools(&pool).await, vec!["60d", "40d", "1d"]);

    let kept = run(&[
        "sagas",
        "prune",
        "--older-than",
        "50d",
        "--keep-audit",
        "--json",
    ]);
    assert_eq!(kept["audit"], Value::Null, "{kept}");
    assert_eq!(audit_tools(&pool).await, vec!["60d", "40d", "1d"]);
    let with_sagas = run(&["sagas", "prune", "--older-than", "30d", "--json"]);
    assert_eq!(with_sagas["audit"]["rows"], 2, "{with_sagas}");
    assert_eq!(audit_tools(&pool).await, vec!["1d"]);
}
