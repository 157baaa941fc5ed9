//! `stepwise serve`, the one HTTP server: `/healthz` and `/readyz` (which follows the
//! database through an outage and checks the migrations), draining on SIGTERM, and
//! `stepwise mcp --http` as its alias.
#![allow(clippy::unwrap_used)]

mod common;

use common::{database_url, json_of, saga_count, stepwise};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running server and its base URL.
struct Server {
    child: tokio::process::Child,
    base: String,
}

/// Starts `stepwise ARGS` on `url` and waits for the line starting with `listening`.
async fn start(url: &str, args: &[&str], listening: &str, wait_ms: &str) -> Server {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env("STEPWISE_MCP_WAIT_MS", wait_ms)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let prefix = format!("{listening} http://");
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix(&prefix) {
                let authority = rest.split(['/', ' ']).next().unwrap();
                return format!("http://{authority}");
            }
        }
        panic!("stepwise exited before listening");
    })
    .await
    .expect("the server listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server { child, base }
}

async fn serve(url: &str, extra: &[&str], wait_ms: &str) -> Server {
    let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    start(url, &args, "stepwise serve: listening on", wait_ms).await
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Polls `path` until it answers `status`, for at most `within`.
async fn until_status(base: &str, path: &str, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (got, body) = get(base, path).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got} {body}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP relay in front of PostgreSQL that the test can take down (every connection cut, new
/// ones closed at once) and bring back: the server sees its database go away and return.
struct DatabaseRelay {
    port: u16,
    up: Arc<AtomicBool>,
    cut: Arc<Mutex<CancellationToken>>,
}

impl DatabaseRelay {
    async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let (up_, cut_) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up_.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let cut = cut_.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Self { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `url` with its port replaced by `port`.
fn with_port(url: &str, port: u16) -> String {
    let parsed = reqwest::Url::parse(url).unwrap();
    let mut changed = parsed.clone();
    changed.set_port(Some(port)).unwrap();
    changed.to_string()
}

#[sqlx::test(migrations = false)]
async fn readyz_follows_the_database_and_the_migrations_while_healthz_stays_up(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let url = database_url(&pool).await;
    let target_port = reqwest::Url::parse(&url).unwrap().port().unwrap_or(5432);
    let relay = DatabaseRelay::start(target_port).await;
    let server = serve(&with_port(&url, relay.port), &["--no-worker"], "1000").await;

    assert_eq!(
        get(&server.base, "/healthz").await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        get(&server.base, "/readyz").await,
        (200, json!({"status": "ready"}))
    );

    // The database goes away: not ready (with the reason), but alive.
    relay.down();
    let body = until_status(&server.base, "/readyz", 503, Duration::from_secs(10)).await;
    assert_eq!(body["status"], "unavailable", "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("unreachable") || reason.contains("did not answer"),
        "{reason}"
    );
    assert_eq!(get(&server.base, "/healthz").await.0, 200);

    // It comes back: ready again without a restart.
    relay.up();
    until_status(&server.base, "/readyz", 200, Duration::from_secs(20)).await;

    // A migration of one crate missing (as after a failed upgrade): not ready, named.
    sqlx::query("UPDATE mcp._sqlx_migrations SET success = false")
        .execute(&pool)
        .await
        .unwrap();
    let (status, body) = get(&server.base, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("schema `mcp` lacks migrations"),
        "{reason}"
    );
    sqlx::query("UPDATE mcp._sqlx_migrations SET success = true")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(get(&server.base, "/readyz").await.0, 200);
    drop(server);
}

/// Initializes an MCP session over HTTP; returns the session id, if the server uses one.
async fn initialize(http: &reqwest::Client, mcp: &str, token: &str) -> Option<String> {
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
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

fn mcp_post(
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
fn rpc_response(text: &str) -> Value {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return value;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC response in {text}"))
}

#[sqlx::test(migrations = false)]
async fn sigterm_stops_accepting_and_drains_the_request_in_flight(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let url = database_url(&pool).await;
    let created = stepwise(
        &url,
        &[
            "tokens",
            "create",
            "--role",
            "operator",
            "--subject",
            "ci",
            "--json",
        ],
    );
    assert!(created.status.success());
    let token = json_of(&created)["token"].as_str().unwrap().to_string();

    // No worker, and calls wait 3 s for their saga: a tool call is in flight that long.
    let mut server = serve(
        &url,
        &["--no-worker", "--shutdown-grace-secs", "20"],
        "3000",
    )
    .await;
    let mcp = format!("{}/mcp", server.base);
    let http = reqwest::Client::new();
    let session = initialize(&http, &mcp, &token).await;
    let call = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "synthetic_chain", "arguments": {"steps": 1, "idempotency_key": "drain-1"}}
    });
    let request = mcp_post(&http, &mcp, &token, session.as_deref(), &call);
    let sent = Instant::now();
    let in_flight = tokio::spawn(async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap(), sent.elapsed())
    });
    // The saga exists once the call is being served.
    let deadline = Instant::now() + Duration::from_secs(10);
    while saga_count(&pool).await == 0 {
        assert!(Instant::now() < deadline, "the call never started a saga");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = Pid::from_raw(server.child.id().unwrap() as i32);
    kill(pid, Signal::SIGTERM).unwrap();

    // New connections are refused soon after, while the call is still being served.
    let deadline = Instant::now() + Duration::from_secs(2);
    let authority = server.base.trim_start_matches("http://").to_string();
    while TcpStream::connect(&authority).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!in_flight.is_finished(), "the call ended before its wait");

    let (status, text, took) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{text}");
    let body = rpc_response(&text);
    let result = &body["result"]["structuredContent"];
    assert_eq!(result["status"], "pending", "{body}");
    assert!(
        took >= Duration::from_millis(2500),
        "answered after {took:?}"
    );

    let exit = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("the server exits after draining")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[sqlx::test(migrations = false)]
async fn mcp_http_is_an_alias_of_serve(pool: PgPool) {
    stepwise::app::migrate(&pool).await.unwrap();
    let url = database_url(&pool).await;
    let server = start(
        &url,
        &["mcp", "--http", "127.0.0.1:0", "--no-worker"],
        "stepwise mcp: listening on",
        "1000",
    )
    .await;
    assert_eq!(
        get(&server.base, "/healthz").await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        get(&server.base, "/readyz").await,
        (200, json!({"status": "ready"}))
    );
    let response = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("stepwise_"));
    let unauthenticated = reqwest::Client::new()
        .post(format!("{}/mcp", server.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}
