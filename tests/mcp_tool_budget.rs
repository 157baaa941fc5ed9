//! What `tools/list` costs an agent's context, per role, counted with a real tokenizer
//! (o200k_base, the one of current OpenAI models) over the exact JSON the server sends. Every
//! role must stay under the budget docs/mcp.md states ("What tools/list costs"), and so must
//! every single tool; the counts are printed (`-- --nocapture`) for that page.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use std::sync::Arc;
use stepwise_engine::Role;
use stepwise_mcp::tools::Catalog;
use stepwise_mcp::Principal;
use tiktoken_rs::CoreBPE;

/// The whole `tools/list` answer per role, about 5% above what it measured when set (docs/mcp.md
/// gives the measured counts). A role not named here (a catalog's own) gets the operator's.
const ROLE_BUDGETS: [(&str, usize); 4] = [
    ("guest", 9_200),
    ("staff", 10_800),
    ("manager", 11_900),
    ("operator", 14_400),
];
/// One tool: its name, description, input and output schemas and annotations.
const TOOL_BUDGET: usize = 1_000;

fn role_budget(role: &str) -> usize {
    ROLE_BUDGETS
        .iter()
        .find(|(name, _)| *name == role)
        .map_or(ROLE_BUDGETS[3].1, |(_, budget)| *budget)
}

fn tokens(bpe: &CoreBPE, value: &serde_json::Value) -> usize {
    bpe.encode_with_special_tokens(&serde_json::to_string(value).unwrap())
        .len()
}

// The catalog's lazy pool needs a runtime, though it never connects.
#[tokio::test]
async fn every_roles_tool_list_fits_the_token_budget_docs_mcp_states() {
    let bpe = tiktoken_rs::o200k_base().unwrap();
    let registry = Arc::new(stepwise_skills::catalog().unwrap());
    let catalog = Catalog::new(registry.clone());
    let mut roles: Vec<String> = registry
        .roles()
        .iter()
        .map(|r| r.name().to_string())
        .collect();
    roles.sort();
    assert!(roles.iter().any(|r| r == Role::OPERATOR) && roles.len() >= 4);

    let mut over = Vec::new();
    println!("| role | tools | tokens | largest tool |");
    println!("|---|---:|---:|---|");
    for role in &roles {
        let principal = Principal::new(&registry, role, "budget@example.com").unwrap();
        let tools = catalog.tools_for(&principal);
        assert!(!tools.is_empty(), "role {role} sees no tool");
        let list = tokens(&bpe, &json!({ "tools": tools }));
        let mut largest = ("", 0);
        for tool in &tools {
            let n = tokens(&bpe, &serde_json::to_value(tool).unwrap());
            if n > largest.1 {
                largest = (tool.name.as_ref(), n);
            }
            if n > TOOL_BUDGET {
                over.push(format!(
                    "{role}: tool {} has {n} tokens (budget {TOOL_BUDGET})",
                    tool.name
                ));
            }
        }
        println!(
            "| {role} | {} | {list} | {} ({}) |",
            tools.len(),
            largest.0,
            largest.1
        );
        let budget = role_budget(role);
        if list > budget {
            over.push(format!(
                "{role}: tools/list has {list} tokens (budget {budget})"
            ));
        }
    }
    assert!(
        over.is_empty(),
        "over the token budget:\n{}",
        over.join("\n")
    );
}
