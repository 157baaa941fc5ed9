//! `stepwise tokens create|list|revoke`: bearer tokens for `stepwise mcp --http`.
//! A token is printed once; only its SHA-256 is stored.

use super::{parse_saga_id, print_json};
use crate::actor::cli_actor;
use crate::app::App;
use crate::exit::CliError;
use clap::Subcommand;
use serde_json::json;
use stepwise_mcp::{AuthError, Principal, TokenStore};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token acting as ROLE:SUBJECT; prints the token (only this once).
    Create {
        /// A role the catalog declares (`stepwise skills --json` shows each tool's roles):
        /// guest, staff, manager or operator with the built-in skills.
        #[arg(long)]
        role: String,
        /// Who within the role: a guest's email, a staff member's login.
        #[arg(long)]
        subject: String,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (from `tokens list`).
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: TokensCommand) -> Result<(), CliError> {
    // Parse before connecting: usage errors need no database. The role must be one the
    // catalog declares (the table accepts any name; this is where roles are checked).
    let principal = match &command {
        TokensCommand::Create { role, subject, .. } => {
            let catalog = stepwise_skills::catalog()
                .map_err(|e| CliError::failed(format!("built-in skills are inconsistent: {e}")))?;
            let principal =
                Principal::new(&catalog, role.trim(), subject.trim()).map_err(|e| match e {
                    AuthError::UnknownRole { .. } => CliError::usage(format!("--role: {e}")),
                    e => CliError::usage(format!("--subject: {e}")),
                })?;
            Some(principal)
        }
        _ => None,
    };
    let app = App::open(2).await?;
    let store = TokenStore::new(app.engine.store().pool().clone());
    let result = match (command, principal) {
        (TokensCommand::Create { json, .. }, Some(principal)) => {
            create(&store, &principal, json).await
        }
        (TokensCommand::List { json }, _) => list(&store, json).await,
        (TokensCommand::Revoke { id, json }, _) => revoke(&store, &id, json).await,
        (TokensCommand::Create { .. }, None) => {
            Err(CliError::usage("--role and --subject are required"))
        }
    };
    app.close().await;
    result
}

fn db(e: AuthError) -> CliError {
    CliError::failed(format!("{e}"))
}

async fn create(store: &TokenStore, principal: &Principal, json: bool) -> Result<(), CliError> {
    let created = store.create(principal, &cli_actor()).await.map_err(db)?;
    if json {
        print_json(&created)?;
    } else {
        println!("{}", created.token);
        eprintln!(
            "token {} acts as {}; it is shown only now. Use it as `Authorization: Bearer <token>`.",
            created.id, created.principal
        );
    }
    Ok(())
}

async fn list(store: &TokenStore, json: bool) -> Result<(), CliError> {
    let tokens = store.list().await.map_err(db)?;
    if json {
        return print_json(&json!({ "tokens": tokens }));
    }
    if tokens.is_empty() {
        println!(
            "no tokens (create one with `stepwise tokens create --role ROLE --subject SUBJECT`)"
        );
    }
    for t in tokens {
        let state = match t.revoked_at {
            Some(at) => format!("revoked {}", at.to_rfc3339()),
            None => "active".to_string(),
        };
        println!(
            "{}  {}:{}  created {} by {}  {}",
            t.id,
            t.role,
            t.subject,
            t.created_at.to_rfc3339(),
            t.created_by,
            state
        );
    }
    Ok(())
}

async fn revoke(store: &TokenStore, id: &str, json: bool) -> Result<(), CliError> {
    let id = parse_saga_id(id).map_err(|_| CliError::usage(format!("`{id}` is not a token id")))?;
    let revoked = store.revoke(id).await.map_err(db)?;
    if json {
        print_json(&json!({ "id": id, "revoked": revoked }))?;
    } else if revoked {
        println!("token {id} revoked");
    }
    if revoked {
        Ok(())
    } else {
        Err(CliError::not_found(format!("no active token {id}")))
    }
}
