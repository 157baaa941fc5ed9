//! Helpers of the front-desk tests: the real `stepwise mcp` binary over stdio (with its
//! in-process worker) against an in-process sandbox, one child process per principal.
#![allow(dead_code, clippy::unwrap_used)]

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use sqlx::PgPool;
use std::net::SocketAddr;
use stepwise_sandbox::{Sandbox, SandboxHandle};

pub type Client = RunningService<RoleClient, ()>;

/// A database with every migration applied and a sandbox of the hotel's systems.
pub struct Desk {
    pub pool: PgPool,
    pub database_url: String,
    pub sandbox: SandboxHandle,
}

impl Desk {
    pub async fn open(pool: PgPool, database_url: String) -> Self {
        stepwise::app::migrate(&pool)
            .await
            .expect("migrations apply");
        let sandbox = Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), 11)
            .await
            .unwrap();
        Self {
            pool,
            database_url,
            sandbox,
        }
    }

    /// `stepwise mcp` over stdio acting as `principal` (e.g. `guest:ana@example.com`).
    pub async fn client(&self, principal: &str) -> Client {
        self.client_with(principal, &[]).await
    }

    /// [`Desk::client`] with more environment variables (e.g. `STEPWISE_NO_SHOW_CUTOFF`).
    pub async fn client_with(&self, principal: &str, env: &[(&str, &str)]) -> Client {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepwise"));
        command.envs(env.iter().copied());
        command
            .arg("mcp")
            .env("DATABASE_URL", &self.database_url)
            .env("STEPWISE_SANDBOX_URL", self.sandbox.base_url())
            .env("STEPWISE_PRINCIPAL", principal)
            .env("RUST_LOG", "warn")
            .env("STEPWISE_MCP_WAIT_MS", "20000")
            .kill_on_drop(true);
        ().serve(TokioChildProcess::new(command).unwrap())
            .await
            .unwrap()
    }

    pub async fn ledger(&self) -> Value {
        reqwest::get(format!("{}/_sandbox/ledger", self.sandbox.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

pub async fn call(client: &Client, tool: &str, args: Value) -> CallToolResult {
    let mut params = CallToolRequestParams::new(tool.to_string());
    params.arguments = args.as_object().cloned();
    client.call_tool(params).await.unwrap()
}

pub fn structured(result: &CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structured content")
}

pub fn is_error(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
}

/// The error object of a refused call, with its code, field and action.
pub fn error_of(result: &CallToolResult) -> Value {
    assert!(is_error(result), "expected a tool error: {result:?}");
    structured(result)["error"].clone()
}
