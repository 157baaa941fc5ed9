//! Roles are data: a catalog that is not the hotel's declares its own roles (a lending library's
//! `librarian`, `patron` and `volunteer`), and the facade serves them end to end from that
//! data alone — tools per role, own-data calls, saga visibility, cancel and replay rights,
//! bearer tokens and the audit.
#![allow(clippy::unwrap_used)]

mod mcp_support;

use mcp_support::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::time::Duration;
use stepwise_engine::{
    Exposure, InputError, Registry, RegistryError, Role, Skill, SkillInput, Step,
};
use stepwise_mcp::{AuthError, Principal, TokenStore};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LoanInput {
    /// The member who borrows.
    member: String,
    /// The book's title.
    title: String,
}

impl SkillInput for LoanInput {
    fn validate(&self) -> Result<(), InputError> {
        if self.title.trim().is_empty() {
            return Err(InputError::field("title", "must not be empty"));
        }
        Ok(())
    }
}

fn library_roles(registry: &mut Registry) {
    registry
        .declare_role(
            Role::new("patron", "A library member: borrows for itself.")
                .own_sagas_only()
                .may_cancel(),
        )
        .unwrap();
    registry
        .declare_role(Role::new("librarian", "Lends to anyone, cancels loans.").may_cancel())
        .unwrap();
    registry
        .declare_role(Role::new("volunteer", "Shelves books; sees every loan."))
        .unwrap();
}

fn borrow_book(roles: &[&str]) -> Skill {
    Skill::builder::<LoanInput>("borrow_book", 1, "Lends a book to a member.")
        .exposure(Exposure::roles(roles).self_service(&["patron"], "member"))
        .step(
            Step::new("lend", |ctx| async move {
                let input: LoanInput = ctx.input()?;
                Ok(json!({"lent_to": input.member, "title": input.title}))
            })
            .compensate(|_ctx, _out| async move { Ok(json!({"returned": true})) }),
        )
        .build()
        .unwrap()
}

/// A library's catalog: no hotel role is declared.
fn library() -> Registry {
    let mut registry = Registry::new();
    library_roles(&mut registry);
    registry.register(borrow_book(&["librarian"])).unwrap();
    registry
}

async fn tool_names(client: &Client) -> BTreeSet<String> {
    client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

async fn listed(client: &Client) -> BTreeSet<String> {
    let result = call(client, "list_sagas", json!({})).await;
    structured(&result)["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_typo_in_a_role_name_is_a_catalog_error_naming_skill_and_role() {
    let mut registry = Registry::new();
    library_roles(&mut registry);
    let error = registry.register(borrow_book(&["librarain"])).unwrap_err();
    assert!(matches!(error, RegistryError::UnknownRole { .. }));
    assert_eq!(
        error.to_string(),
        "skill `borrow_book` is exposed to role `librarain`, which is not declared (declared \
         roles: librarian, operator, patron, volunteer)"
    );
}

#[test]
fn hotel_roles_are_unknown_to_another_catalog() {
    let catalog = library();
    for hotel in ["guest:ana@example.com", "staff:frontdesk", "manager:mia"] {
        let error = Principal::parse(&catalog, hotel).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("(known roles: librarian, operator, patron, volunteer)"),
            "{error}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn a_catalog_of_its_own_roles_is_served_end_to_end(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let h = harness_with(pool.clone(), WAIT, library());

    // Tools per role, from the exposure and the roles' declared rights.
    let ana = connect(&h.facade, "patron:ana").await;
    let bob = connect(&h.facade, "patron:bob").await;
    let librarian = connect(&h.facade, "librarian:lee").await;
    let volunteer = connect(&h.facade, "volunteer:val").await;
    let operator = connect(&h.facade, "operator:local").await;
    // Every role sees status, list and provide_input (who may answer is decided per wait).
    let status_and_list = ["get_saga_status", "list_sagas", "provide_input"];
    assert_eq!(
        tool_names(&ana).await,
        set(&[
            "borrow_book",
            "cancel_saga",
            status_and_list[0],
            status_and_list[1],
            status_and_list[2]
        ])
    );
    assert_eq!(
        tool_names(&librarian).await,
        set(&[
            "borrow_book",
            "cancel_saga",
            status_and_list[0],
            status_and_list[1],
            status_and_list[2]
        ])
    );
    assert_eq!(tool_names(&volunteer).await, set(&status_and_list));
    assert_eq!(
        tool_names(&operator).await,
        set(&[
            "borrow_book",
            "cancel_saga",
            "fork_saga",
            "get_saga_status",
            "list_sagas",
            "provide_input",
            "restart_saga",
            "retry_saga"
        ])
    );
    // The patron's schema says whose data the subject field is.
    let tools = ana.list_all_tools().await.unwrap();
    let borrow = tools.iter().find(|t| t.name == "borrow_book").unwrap();
    let required = borrow.input_schema.get("required").cloned().unwrap();
    assert!(!required.as_array().unwrap().contains(&json!("member")));
    let list = tools.iter().find(|t| t.name == "list_sagas").unwrap();
    assert!(list
        .description
        .as_deref()
        .unwrap()
        .contains("only the sagas you started"));

    // A patron borrows for itself: the subject field is filled in from the principal.
    let own = call(
        &ana,
        "borrow_book",
        json!({"title": "Dune", "idempotency_key": "k-1"}),
    )
    .await;
    assert!(!is_error(&own), "{}", text(&own));
    assert_eq!(structured(&own)["status"], "completed");
    assert_eq!(structured(&own)["output"]["lend"]["lent_to"], "ana");
    let ana_saga = structured(&own)["saga_id"].as_str().unwrap().to_string();

    // ... and never for someone else.
    let for_bob = call(
        &ana,
        "borrow_book",
        json!({"member": "bob", "title": "Dune", "idempotency_key": "k-2"}),
    )
    .await;
    assert!(is_error(&for_bob));
    assert_eq!(structured(&for_bob)["error"]["code"], "forbidden");
    assert_eq!(structured(&for_bob)["error"]["field"], "member");

    // A librarian lends to anyone.
    let lent = call(
        &librarian,
        "borrow_book",
        json!({"member": "bob", "title": "Emma", "idempotency_key": "k-1"}),
    )
    .await;
    assert!(!is_error(&lent), "{}", text(&lent));
    assert_eq!(structured(&lent)["output"]["lend"]["lent_to"], "bob");
    let lee_saga = structured(&lent)["saga_id"].as_str().unwrap().to_string();

    // Own-sagas roles see their own sagas only; the others see all.
    assert_eq!(listed(&ana).await, set(&[&ana_saga]));
    assert_eq!(listed(&bob).await, BTreeSet::new());
    assert_eq!(listed(&volunteer).await, set(&[&ana_saga, &lee_saga]));
    let not_bobs = call(&bob, "get_saga_status", json!({"saga_id": ana_saga})).await;
    assert_eq!(structured(&not_bobs)["error"]["code"], "not_found");
    let seen = call(&volunteer, "get_saga_status", json!({"saga_id": ana_saga})).await;
    assert_eq!(structured(&seen)["status"], "completed");

    // Cancel and replay rights come from the role: a volunteer may not cancel, a patron may
    // not replay.
    let cancel = call(&volunteer, "cancel_saga", json!({"saga_id": lee_saga})).await;
    assert_eq!(structured(&cancel)["error"]["code"], "forbidden");
    assert!(text(&cancel).contains("the volunteer role may not call `cancel_saga`"));
    let replay = call(&ana, "restart_saga", json!({"saga_id": ana_saga})).await;
    assert_eq!(structured(&replay)["error"]["code"], "forbidden");
    // The operator is let through to the engine, which refuses to repeat a completed loan.
    let restarted = call(&operator, "restart_saga", json!({"saga_id": ana_saga})).await;
    assert_eq!(structured(&restarted)["error"]["code"], "replay_refused");
    // A patron may cancel its own saga (already ended here: nothing to cancel), not another's.
    let cancel_own = call(&ana, "cancel_saga", json!({"saga_id": ana_saga})).await;
    assert!(!is_error(&cancel_own), "{}", text(&cancel_own));
    assert_eq!(structured(&cancel_own)["cancel_requested"], false);
    let cancel_other = call(&bob, "cancel_saga", json!({"saga_id": ana_saga})).await;
    assert_eq!(structured(&cancel_other)["error"]["code"], "not_found");

    // The audit records the library's principals as they are.
    let principals: BTreeSet<String> = audit_rows(&pool)
        .await
        .into_iter()
        .map(|(principal, ..)| principal)
        .collect();
    for who in [
        "patron:ana",
        "librarian:lee",
        "volunteer:val",
        "operator:local",
    ] {
        assert!(principals.contains(who), "{principals:?}");
    }
}

#[sqlx::test(migrations = false)]
async fn tokens_carry_any_declared_role_and_only_declared_ones(pool: PgPool) {
    stepwise::app::migrate(&pool)
        .await
        .expect("migrations apply");
    let catalog = library();
    let store = TokenStore::new(pool.clone());
    let patron = Principal::parse(&catalog, "patron:ana").unwrap();
    let created = store.create(&patron, "test:runner").await.unwrap();
    assert_eq!(created.role, "patron");
    assert_eq!(created.principal, "patron:ana");
    let back = store
        .authenticate(&created.token, &catalog)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, patron);
    assert!(back.may_see_saga("patron:ana") && !back.may_see_saga("patron:bob"));

    // Served by a catalog that does not declare the role, the token is refused, not mistaken
    // for another role.
    let hotel = test_registry();
    let refused = store
        .authenticate(&created.token, &hotel)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, AuthError::UnknownRole { role, .. } if role == "patron"),
        "{refused}"
    );
    assert!(store
        .authenticate("swt_unknown", &catalog)
        .await
        .unwrap()
        .is_none());
}
