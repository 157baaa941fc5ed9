//! `stepwise skills`.

use super::print_json;
use crate::exit::CliError;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::json;

pub async fn run(json: bool) -> Result<(), CliError> {
    // Listing needs no database: the registry is compiled in.
    let registry = stepwise_skills::catalog()
        .map_err(|e| CliError::failed(format!("built-in skills are inconsistent: {e}")))?;
    let skills = registry.all();
    if json {
        let skills: Vec<_> = skills
            .iter()
            .map(|s| {
                json!({
                    "name": s.name(),
                    "version": s.version(),
                    "kind": "saga",
                    "description": s.description(),
                    "input_schema": s.input_schema(),
                    "output_schema": s.output_schema(),
                    "steps": s.step_names(),
                    "roles": s.exposure().roles,
                    "self_service_roles": s.exposure().self_service_roles,
                })
            })
            .chain(registry.queries().iter().map(|q| {
                json!({
                    "name": q.name(),
                    "version": 1,
                    "kind": "query",
                    "description": q.description(),
                    "input_schema": q.input_schema(),
                    "output_schema": q.output_schema(),
                    "steps": [],
                    "roles": q.exposure().roles,
                    "self_service_roles": q.exposure().self_service_roles,
                })
            }))
            .collect();
        return print_json(&json!({ "skills": skills }));
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["skill", "version", "kind", "steps", "description"]);
    for s in &skills {
        let names = s.step_names();
        let steps = if names.len() > 6 {
            format!(
                "{} … {} ({} steps)",
                names[0],
                names[names.len() - 1],
                names.len()
            )
        } else {
            names.join(" → ")
        };
        table.add_row(vec![
            s.name().to_string(),
            s.version().to_string(),
            "saga".into(),
            steps,
            s.description().to_string(),
        ]);
    }
    for q in registry.queries() {
        table.add_row(vec![
            q.name().to_string(),
            "1".into(),
            "query".into(),
            "-".into(),
            q.description().to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}
