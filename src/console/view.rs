//! Fragments shared by the pages: times, statuses, saga links, redacted JSON.

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde_json::Value;
use uuid::Uuid;

/// A timestamp: UTC in the markup, the viewer's local time once the script has run, UTC on
/// hover (`title`).
pub fn time(at: DateTime<Utc>) -> Markup {
    let iso = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let utc = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(iso) title=(utc) { (utc) } }
}

pub fn opt_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { "—" },
    }
}

/// A status badge (colour and text: the colour is never the only cue).
pub fn status(text: &str) -> Markup {
    html! { span class=(format!("status s-{text}")) { (text) } }
}

/// A link to a saga's page, labelled with its id.
pub fn saga_link(id: Uuid) -> Markup {
    html! { a.mono href=(format!("/console/sagas/{id}")) { (id) } }
}

/// Field names whose values are never shown (credentials, card data, personal secrets).
const SECRET_WORDS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "card_number",
    "cvc",
    "cvv",
    "client_secret",
    "private_key",
];

/// Whether a field of this name holds a secret.
pub fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| name.contains(w))
}

/// `value` with every secret field's value replaced by `"[redacted]"`, at any depth.
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_field(k) {
                        Value::String("[redacted]".into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s) if looks_like_secret(s) => Value::String("[redacted]".into()),
        other => other.clone(),
    }
}

/// Strings that are credentials whatever their field is called (Stripe secrets, our tokens).
fn looks_like_secret(s: &str) -> bool {
    ["sk_live_", "sk_test_", "rk_live_", "whsec_", "swt_"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// Redacted, pretty-printed JSON in a `<pre>`.
pub fn json_block(label: &str, value: Option<&Value>) -> Markup {
    match value {
        None | Some(Value::Null) => html! { p { "No " (label) "." } },
        Some(v) => {
            let text = serde_json::to_string_pretty(&redact(v)).unwrap_or_default();
            html! { pre aria-label=(label) tabindex="0" { code { (text) } } }
        }
    }
}

/// A compact, redacted one-line JSON for table cells, cut to `max` characters.
pub fn json_inline(value: &Value, max: usize) -> String {
    let text = serde_json::to_string(&redact(value)).unwrap_or_default();
    if text.chars().count() > max {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth_and_the_rest_is_kept() {
        let input = json!({
            "guest_email": "ana@example.com",
            "payment": {"card_number": "4242424242424242", "api_key": "x", "amount": 120},
            "notes": ["sk_test_abc", "fine"],
            "Authorization": "Bearer x"
        });
        let out = redact(&input);
        assert_eq!(out["guest_email"], "ana@example.com");
        assert_eq!(out["payment"]["card_number"], "[redacted]");
        assert_eq!(out["payment"]["api_key"], "[redacted]");
        assert_eq!(out["payment"]["amount"], 120);
        assert_eq!(out["notes"][0], "[redacted]");
        assert_eq!(out["notes"][1], "fine");
        assert_eq!(out["Authorization"], "[redacted]");
    }
}
