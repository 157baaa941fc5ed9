//! `stepwise tokens create|list|revoke`: static bearer tokens for `stepwise serve` (service
//! accounts and development; people sign in through OAuth, docs/mcp.md). A token is printed
//! once; only its SHA-256 is stored, with its expiry, last use and region.

use super::{parse_saga_id, print_json};
use crate::actor::cli_actor;
use crate::app::App;
use crate::exit::CliError;
use clap::Subcommand;
use serde_json::json;
use stepwise_mcp::{AuthError, NewToken, Principal, TokenStore};

fn parse_lifetime(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("a token's lifetime must be more than zero".to_string()),
        Err(e) => Err(format!(
            "`{text}` is not a duration like 30d, 12h or 90min: {e}"
        )),
    }
}

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
        /// How long the token is valid, e.g. `30d`, `12h`, `90min` (default: until revoked).
        #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
        expires_in: Option<std::time::Duration>,
        /// The data-residency region the token belongs to: a server whose STEPWISE_REGION
        /// differs refuses it.
        #[arg(long)]
        region: Option<String>,
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
        TokensCommand::Create {
            role,
            subject,
            region,
            ..
        } => {
            if let Some(region) = region {
                stepwise_mcp::residency::check_region_name(region)
                    .map_err(|e| CliError::usage(format!("--region: {e}")))?;
            }
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
        (
            TokensCommand::Create {
                json,
                expires_in,
                region,
                ..
            },
            Some(principal),
        ) => {
            let new = NewToken {
                principal: &principal,
                created_by: &cli_actor(),
                expires_in,
                region,
            };
            create(&store, new, json).await
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

async fn create(store: &TokenStore, new: NewToken<'_>, json: bool) -> Result<(), CliError> {
    let created = store.create_token(new).await.map_err(|e| match e {
        e @ AuthError::BadLifetime(_) => CliError::usage(format!("--expires-in: {e}")),
        e => db(e),
    })?;
    if json {
        print_json(&created)?;
    } else {
        println!("{}", created.token);
        let until = match created.expires_at {
            Some(at) => format!("until {}", at.to_rfc3339()),
            None => "until revoked".to_string(),
        };
        eprintln!(
            "token {} acts as {} {until}; it is shown only now. Use it as `Authorization: Bearer <token>`.",
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
        let state = match (t.state, t.revoked_at, t.expires_at) {
            ("revoked", Some(at), _) => format!("revoked {}", at.to_rfc3339()),
            ("expired", _, Some(at)) => format!("expired {}", at.to_rfc3339()),
            (_, _, Some(at)) => format!("active until {}", at.to_rfc3339()),
            _ => "active".to_string(),
        };
        let used = match t.last_used_at {
            Some(at) => format!("last used {}", at.to_rfc3339()),
            None => "never used".to_string(),
        };
        let region = t
            .region
            .as_deref()
            .map(|r| format!("  region {r}"))
            .unwrap_or_default();
        println!(
            "{}  {}:{}  created {} by {}  {state}  {used}{region}",
            t.id,
            t.role,
            t.subject,
            t.created_at.to_rfc3339(),
            t.created_by,
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
