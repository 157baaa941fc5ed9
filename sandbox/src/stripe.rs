//! Stripe-style payments under `/stripe/v1`: customers, payment intents, refunds.
//!
//! Bodies are form-encoded (`metadata[key]=value`), errors are Stripe error objects
//! `{"error":{"type","code","message","param"}}`, unknown parameters are refused like Stripe
//! does (`parameter_unknown`). Idempotency keys are handled by the server around these handlers.

use super::server::{Reply, Req};
use super::state::{unix, IdMaker, SandboxState};
use axum::http::Method;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The Stripe objects.
#[derive(Debug, Clone)]
pub struct StripeState {
    pub customers: BTreeMap<String, Customer>,
    pub payment_intents: BTreeMap<String, PaymentIntent>,
    pub refunds: BTreeMap<String, Refund>,
    customer_ids: IdMaker,
    intent_ids: IdMaker,
    charge_ids: IdMaker,
    refund_ids: IdMaker,
    /// Events (type, payment intent) emitted by the request being handled, sent as webhooks
    /// once it is done ([`crate::webhooks`]).
    emitted: Vec<(&'static str, Value)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Customer {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub description: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub livemode: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PaymentIntent {
    pub id: String,
    pub object: &'static str,
    pub amount: i64,
    pub amount_received: i64,
    pub amount_refunded: i64,
    pub canceled_at: Option<i64>,
    pub cancellation_reason: Option<String>,
    pub capture_method: &'static str,
    pub client_secret: String,
    pub confirmation_method: &'static str,
    pub created: i64,
    pub currency: String,
    pub customer: Option<String>,
    pub description: Option<String>,
    pub last_payment_error: Option<Value>,
    pub latest_charge: Option<String>,
    pub livemode: bool,
    pub metadata: BTreeMap<String, String>,
    pub next_action: Option<Value>,
    pub payment_method: Option<String>,
    pub payment_method_types: Vec<&'static str>,
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refund {
    pub id: String,
    pub object: &'static str,
    pub amount: i64,
    pub charge: Option<String>,
    pub created: i64,
    pub currency: String,
    pub metadata: BTreeMap<String, String>,
    pub payment_intent: String,
    pub reason: Option<String>,
    pub status: &'static str,
}

/// What a test payment method does when a payment is confirmed with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Succeeds,
    Declines {
        code: &'static str,
        decline_code: &'static str,
        message: &'static str,
    },
    RequiresAction,
}

/// Stripe's test payment methods that the sandbox knows.
fn card(payment_method: &str) -> Option<Card> {
    const GENERIC: Card = Card::Declines {
        code: "card_declined",
        decline_code: "generic_decline",
        message: "Your card was declined.",
    };
    Some(match payment_method {
        "pm_card_visa" | "pm_card_mastercard" | "pm_card_amex" | "pm_card_visa_debit" => {
            Card::Succeeds
        }
        "pm_card_chargeDeclined" | "pm_card_visa_chargeDeclined" => GENERIC,
        "pm_card_chargeDeclinedInsufficientFunds" => Card::Declines {
            code: "card_declined",
            decline_code: "insufficient_funds",
            message: "Your card has insufficient funds.",
        },
        "pm_card_chargeDeclinedExpiredCard" => Card::Declines {
            code: "expired_card",
            decline_code: "expired_card",
            message: "Your card has expired.",
        },
        "pm_card_authenticationRequired" | "pm_card_threeDSecure2Required" => Card::RequiresAction,
        _ => return None,
    })
}

/// A Stripe error reply.
#[derive(Debug, Clone)]
pub struct StripeError {
    status: u16,
    body: Value,
}

impl StripeError {
    fn new(
        status: u16,
        kind: &str,
        code: Option<&str>,
        message: String,
        param: Option<&str>,
    ) -> Self {
        let mut error = json!({ "type": kind, "message": message });
        if let Some(code) = code {
            error["code"] = json!(code);
            error["doc_url"] = json!(format!(
                "https://stripe.com/docs/error-codes/{}",
                code.replace('_', "-")
            ));
        }
        if let Some(param) = param {
            error["param"] = json!(param);
        }
        Self {
            status,
            body: json!({ "error": error }),
        }
    }

    fn invalid(code: &str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            Some(code),
            message.into(),
            param,
        )
    }

    fn missing(param: &str) -> Self {
        Self::invalid(
            "parameter_missing",
            format!("Missing required param: {param}."),
            Some(param),
        )
    }

    fn no_such(what: &str, id: &str, param: &str, status: u16) -> Self {
        Self::new(
            status,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such {what}: '{id}'"),
            Some(param),
        )
    }

    fn unexpected_state(message: impl Into<String>) -> Self {
        Self::invalid("payment_intent_unexpected_state", message, None)
    }

    pub fn into_reply(self) -> Reply {
        Reply::json(self.status, &self.body)
    }
}

/// Stripe's 401 for a missing or malformed secret key.
pub fn authenticate(req: &Req<'_>) -> Result<(), Reply> {
    let key = match req.bearer() {
        Some(token) => Some(token.to_string()),
        None => req.basic().map(|(user, _)| user),
    };
    let message = match key {
        None => "You did not provide an API key. You need to provide your API key in the \
                 Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
                 YOUR_SECRET_KEY')."
            .to_string(),
        Some(key) if key.starts_with("sk_test_") && key.len() > "sk_test_".len() => return Ok(()),
        Some(key) => {
            let shown: String = key.chars().take(8).collect();
            format!("Invalid API Key provided: {shown}***")
        }
    };
    Err(StripeError::new(401, "invalid_request_error", None, message, None).into_reply())
}

/// The 400 for an idempotency key reused with other parameters.
pub fn idempotency_conflict(key: &str) -> Reply {
    StripeError::new(
        400,
        "idempotency_error",
        None,
        format!(
            "Keys for idempotent requests can only be used with the same parameters they were \
             first used with. Try using a key other than '{key}' if you meant to execute a \
             different request."
        ),
        None,
    )
    .into_reply()
}

/// The 400 for an empty or over-long idempotency key (Stripe allows up to 255 characters).
pub fn invalid_idempotency_key(key: &str) -> Reply {
    StripeError::new(
        400,
        "invalid_request_error",
        None,
        format!(
            "Invalid idempotency key: keys must be between 1 and 255 characters, got {}.",
            key.chars().count()
        ),
        None,
    )
    .into_reply()
}

/// The body of a 500 injected by faults.
pub fn fault_body() -> Value {
    json!({"error": {"type": "api_error",
        "message": "An unknown error occurred while processing your request (sandbox fault)."}})
}

/// Form parameters: plain ones, `metadata[...]`, and nested names kept as written.
struct Params {
    values: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
    has_metadata: bool,
}

impl Params {
    fn parse(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, StripeError> {
        let mut params = Params {
            values: BTreeMap::new(),
            metadata: BTreeMap::new(),
            has_metadata: false,
        };
        for (name, value) in pairs {
            if let Some(key) = name
                .strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
            {
                if !allowed.contains(&"metadata") {
                    return Err(unknown(&name));
                }
                if key.is_empty() || key.chars().count() > 40 {
                    return Err(StripeError::invalid(
                        "parameter_invalid_string",
                        "Metadata keys must be between 1 and 40 characters.",
                        Some("metadata"),
                    ));
                }
                if value.chars().count() > 500 {
                    return Err(StripeError::invalid(
                        "parameter_invalid_string",
                        format!("Metadata values can have up to 500 characters, but you passed in a value that is {} characters. Invalid value: {key}", value.chars().count()),
                        Some("metadata"),
                    ));
                }
                params.has_metadata = true;
                params.metadata.insert(key.to_string(), value);
                if params.metadata.len() > 50 {
                    return Err(StripeError::invalid(
                        "parameter_invalid_string",
                        "You can specify up to 50 keys in metadata.",
                        Some("metadata"),
                    ));
                }
                continue;
            }
            if name == "metadata" && value.is_empty() && allowed.contains(&"metadata") {
                params.has_metadata = true;
                continue;
            }
            if name == "expand[]" || name.starts_with("expand[") {
                continue;
            }
            if !allowed.contains(&name.as_str()) {
                return Err(unknown(&name));
            }
            params.values.insert(name, value);
        }
        Ok(params)
    }

    fn text(&self, name: &str) -> Option<String> {
        self.values.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn integer(&self, name: &str) -> Result<Option<i64>, StripeError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                StripeError::invalid(
                    "parameter_invalid_integer",
                    format!("Invalid integer: {v}"),
                    Some(name),
                )
            }),
        }
    }

    fn boolean(&self, name: &str) -> Result<bool, StripeError> {
        match self.values.get(name).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(StripeError::invalid(
                "parameter_invalid_boolean",
                format!("Invalid boolean: {v}"),
                Some(name),
            )),
        }
    }

    /// Metadata updates: an empty value removes the key.
    fn merge_metadata(&self, into: &mut BTreeMap<String, String>) {
        for (key, value) in &self.metadata {
            if value.is_empty() {
                into.remove(key);
            } else {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

fn unknown(name: &str) -> StripeError {
    StripeError::invalid(
        "parameter_unknown",
        format!("Received unknown parameter: {name}"),
        Some(name),
    )
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl StripeState {
    pub fn new(seed: u64) -> Self {
        Self {
            customers: BTreeMap::new(),
            payment_intents: BTreeMap::new(),
            refunds: BTreeMap::new(),
            customer_ids: IdMaker::new(seed, 1),
            intent_ids: IdMaker::new(seed, 2),
            charge_ids: IdMaker::new(seed, 3),
            refund_ids: IdMaker::new(seed, 4),
            emitted: Vec::new(),
        }
    }

    /// The events emitted since the last call.
    pub fn take_emitted(&mut self) -> Vec<(&'static str, Value)> {
        std::mem::take(&mut self.emitted)
    }

    fn emit(&mut self, kind: &'static str, id: &str) {
        if let Some(intent) = self.payment_intents.get(id) {
            let object = to_json(intent);
            self.emitted.push((kind, object));
        }
    }

    pub fn customers_json(&self) -> Vec<Value> {
        self.customers.values().map(to_json).collect()
    }

    pub fn payment_intents_json(&self) -> Vec<Value> {
        self.payment_intents.values().map(to_json).collect()
    }

    pub fn refunds_json(&self) -> Vec<Value> {
        self.refunds.values().map(to_json).collect()
    }
}

/// Handles one authenticated Stripe request (the path is below `/stripe`).
pub fn handle(state: &mut SandboxState, req: &Req<'_>) -> Reply {
    match route(state, req) {
        Ok(reply) => reply,
        Err(error) => error.into_reply(),
    }
}

fn route(state: &mut SandboxState, req: &Req<'_>) -> Result<Reply, StripeError> {
    let segments = req.segments();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method;
    let now = unix(state.now());
    let base = sandbox_base(req);
    let stripe = &mut state.stripe;
    match (method, segments.as_slice()) {
        (&Method::POST, ["v1", "customers"]) => create_customer(stripe, req, now),
        (&Method::GET, ["v1", "customers"]) => list_customers(stripe, req),
        (&Method::GET, ["v1", "customers", "search"]) => search_customers(stripe, req),
        (&Method::GET, ["v1", "customers", id]) => {
            let customer = stripe
                .customers
                .get(*id)
                .ok_or_else(|| StripeError::no_such("customer", id, "id", 404))?;
            Ok(Reply::json(200, &to_json(customer)))
        }
        (&Method::POST, ["v1", "customers", id]) => update_customer(stripe, req, id),
        (&Method::POST, ["v1", "payment_intents"]) => create_intent(stripe, req, now, &base),
        (&Method::GET, ["v1", "payment_intents", "search"]) => search_intents(stripe, req),
        (&Method::GET, ["v1", "payment_intents", id]) => {
            let intent = stripe
                .payment_intents
                .get(*id)
                .ok_or_else(|| StripeError::no_such("payment_intent", id, "intent", 404))?;
            Ok(Reply::json(200, &to_json(intent)))
        }
        (&Method::POST, ["v1", "payment_intents", id, "confirm"]) => {
            confirm_intent(stripe, req, id, &base)
        }
        (&Method::POST, ["v1", "payment_intents", id, "cancel"]) => {
            cancel_intent(stripe, req, id, now)
        }
        (&Method::POST, ["v1", "refunds"]) => create_refund(stripe, req, now),
        (&Method::GET, ["v1", "refunds", id]) => {
            let refund = stripe
                .refunds
                .get(*id)
                .ok_or_else(|| StripeError::no_such("refund", id, "id", 404))?;
            Ok(Reply::json(200, &to_json(refund)))
        }
        _ => Err(StripeError::new(
            404,
            "invalid_request_error",
            None,
            format!(
                "Unrecognized request URL ({}: {}). Please see https://stripe.com/docs or we \
                 can help at https://support.stripe.com/.",
                method, req.path
            ),
            None,
        )),
    }
}

const CUSTOMER_PARAMS: &[&str] = &["email", "name", "phone", "description", "metadata"];

fn create_customer(
    stripe: &mut StripeState,
    req: &Req<'_>,
    now: i64,
) -> Result<Reply, StripeError> {
    let params = Params::parse(req.form(), CUSTOMER_PARAMS)?;
    if let Some(email) = params.text("email") {
        if email.chars().count() > 512 || !email.contains('@') {
            return Err(StripeError::invalid(
                "email_invalid",
                format!("Invalid email address: {email}"),
                Some("email"),
            ));
        }
    }
    let customer = Customer {
        id: stripe.customer_ids.stripe("cus_", 14),
        object: "customer",
        created: now,
        description: params.text("description"),
        email: params.text("email"),
        name: params.text("name"),
        phone: params.text("phone"),
        metadata: params.metadata.clone(),
        livemode: false,
    };
    let body = to_json(&customer);
    stripe.customers.insert(customer.id.clone(), customer);
    Ok(Reply::json(200, &body))
}

fn update_customer(
    stripe: &mut StripeState,
    req: &Req<'_>,
    id: &str,
) -> Result<Reply, StripeError> {
    let params = Params::parse(req.form(), CUSTOMER_PARAMS)?;
    let customer = stripe
        .customers
        .get_mut(id)
        .ok_or_else(|| StripeError::no_such("customer", id, "id", 404))?;
    for (name, slot) in [
        ("email", &mut customer.email),
        ("name", &mut customer.name),
        ("phone", &mut customer.phone),
        ("description", &mut customer.description),
    ] {
        if params.values.contains_key(name) {
            *slot = params.text(name);
        }
    }
    if params.has_metadata {
        params.merge_metadata(&mut customer.metadata);
    }
    Ok(Reply::json(200, &to_json(customer)))
}

fn list_page(data: Vec<Value>, limit: usize, url: &str) -> Value {
    let has_more = data.len() > limit;
    let data: Vec<Value> = data.into_iter().take(limit).collect();
    json!({"object": "list", "data": data, "has_more": has_more, "url": url})
}

fn limit_param(req: &Req<'_>) -> Result<usize, StripeError> {
    match req.query_param("limit") {
        None => Ok(10),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(StripeError::invalid(
                "parameter_invalid_integer",
                "This value must be greater than or equal to 1 and less than or equal to 100.",
                Some("limit"),
            )),
        },
    }
}

fn list_customers(stripe: &StripeState, req: &Req<'_>) -> Result<Reply, StripeError> {
    for (name, _) in &req.query {
        if !["email", "limit", "expand[]"].contains(&name.as_str()) {
            return Err(unknown(name));
        }
    }
    let limit = limit_param(req)?;
    let email = req.query_param("email");
    // Newest first, like Stripe.
    let data: Vec<Value> = stripe
        .customers
        .values()
        .rev()
        .filter(|c| email.is_none_or(|e| c.email.as_deref() == Some(e)))
        .map(to_json)
        .collect();
    Ok(Reply::json(200, &list_page(data, limit, "/v1/customers")))
}

/// One `field:'value'` clause of Stripe's search query language.
#[derive(Debug, Clone, PartialEq)]
struct Clause {
    field: String,
    value: String,
}

/// Parses the subset of Stripe's search language the sandbox supports: clauses `field:'x'`
/// for the resource's `fields` (customers: `email`, `name`, `phone`; payment intents:
/// `customer`, `status`, `currency`) and `metadata['key']:'x'` (quotes `'` or `"`, `\`
/// escapes), joined by all-`AND` or all-`OR`.
fn parse_search(
    query: &str,
    resource: &str,
    fields: &[&str],
) -> Result<(Vec<Clause>, bool), String> {
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    let mut clauses = Vec::new();
    let mut connector: Option<String> = None;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let quoted = |i: &mut usize| -> Result<String, String> {
        let quote = chars.get(*i).copied().filter(|c| *c == '\'' || *c == '"');
        let Some(quote) = quote else {
            return Err(format!("expected a quoted value at position {}", *i));
        };
        *i += 1;
        let mut out = String::new();
        loop {
            match chars.get(*i) {
                None => return Err("unterminated quoted value".into()),
                Some('\\') => {
                    let escaped = chars.get(*i + 1).ok_or("unterminated escape")?;
                    out.push(*escaped);
                    *i += 2;
                }
                Some(c) if *c == quote => {
                    *i += 1;
                    return Ok(out);
                }
                Some(c) => {
                    out.push(*c);
                    *i += 1;
                }
            }
        }
    };
    loop {
        skip_ws(&mut i);
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let mut field: String = chars[start..i].iter().collect();
        if field.is_empty() {
            return Err(format!("expected a field name at position {start}"));
        }
        if field == "metadata" {
            if chars.get(i) != Some(&'[') {
                return Err("expected metadata['key']".into());
            }
            i += 1;
            let key = quoted(&mut i)?;
            if chars.get(i) != Some(&']') {
                return Err("expected ] after the metadata key".into());
            }
            i += 1;
            field = format!("metadata:{key}");
        } else if !fields.contains(&field.as_str()) {
            return Err(format!(
                "Field `{field}` is an unsupported search field for resource `{resource}`."
            ));
        }
        if chars.get(i) != Some(&':') {
            return Err(format!("expected `:` after `{field}`"));
        }
        i += 1;
        let value = quoted(&mut i)?;
        clauses.push(Clause { field, value });
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && chars[i].is_ascii_alphabetic() {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        if word != "AND" && word != "OR" {
            return Err(format!("unexpected `{word}` at position {start}"));
        }
        if connector.as_ref().is_some_and(|c| *c != word) {
            return Err("mixing AND and OR is not supported".into());
        }
        connector = Some(word);
    }
    Ok((clauses, connector.as_deref() == Some("OR")))
}

fn search_customers(stripe: &StripeState, req: &Req<'_>) -> Result<Reply, StripeError> {
    let query = req
        .query_param("query")
        .ok_or_else(|| StripeError::missing("query"))?;
    let (clauses, any) =
        parse_search(query, "customers", &["email", "name", "phone"]).map_err(|message| {
            StripeError::invalid("parameter_invalid_string", message, Some("query"))
        })?;
    let limit = limit_param(req)?;
    let matches = |c: &Customer, clause: &Clause| -> bool {
        let value = match clause.field.as_str() {
            "email" => c.email.as_deref(),
            "name" => c.name.as_deref(),
            "phone" => c.phone.as_deref(),
            other => other
                .strip_prefix("metadata:")
                .and_then(|key| c.metadata.get(key).map(String::as_str)),
        };
        value.is_some_and(|v| v.eq_ignore_ascii_case(&clause.value))
    };
    let data: Vec<Value> = stripe
        .customers
        .values()
        .rev()
        .filter(|c| {
            if any {
                clauses.iter().any(|cl| matches(c, cl))
            } else {
                clauses.iter().all(|cl| matches(c, cl))
            }
        })
        .map(to_json)
        .collect();
    let mut page = list_page(data, limit, "/v1/customers/search");
    page["object"] = json!("search_result");
    page["next_page"] = Value::Null;
    Ok(Reply::json(200, &page))
}

/// `GET /v1/payment_intents/search?query=metadata['k']:'v'`: how a client finds the intent a
/// request of its own created when the answer was lost (metadata compares exactly, like
/// Stripe's; `customer`, `status`, `currency` too). Newest first.
fn search_intents(stripe: &StripeState, req: &Req<'_>) -> Result<Reply, StripeError> {
    let query = req
        .query_param("query")
        .ok_or_else(|| StripeError::missing("query"))?;
    let (clauses, any) = parse_search(
        query,
        "payment_intents",
        &["customer", "status", "currency"],
    )
    .map_err(|message| StripeError::invalid("parameter_invalid_string", message, Some("query")))?;
    let limit = limit_param(req)?;
    let matches = |intent: &PaymentIntent, clause: &Clause| -> bool {
        let value = match clause.field.as_str() {
            "customer" => intent.customer.as_deref(),
            "status" => Some(intent.status),
            "currency" => Some(intent.currency.as_str()),
            other => other
                .strip_prefix("metadata:")
                .and_then(|key| intent.metadata.get(key).map(String::as_str)),
        };
        value == Some(clause.value.as_str())
    };
    let data: Vec<Value> = stripe
        .payment_intents
        .values()
        .rev()
        .filter(|intent| {
            if any {
                clauses.iter().any(|cl| matches(intent, cl))
            } else {
                clauses.iter().all(|cl| matches(intent, cl))
            }
        })
        .map(to_json)
        .collect();
    let mut page = list_page(data, limit, "/v1/payment_intents/search");
    page["object"] = json!("search_result");
    page["next_page"] = Value::Null;
    Ok(Reply::json(200, &page))
}

const INTENT_PARAMS: &[&str] = &[
    "amount",
    "currency",
    "customer",
    "payment_method",
    "confirm",
    "description",
    "metadata",
    "receipt_email",
    "return_url",
    "off_session",
    "statement_descriptor",
    "payment_method_types[]",
    "payment_method_types[0]",
    "automatic_payment_methods[enabled]",
    "automatic_payment_methods[allow_redirects]",
];

fn check_payment_method(pm: &str) -> Result<Card, StripeError> {
    card(pm).ok_or_else(|| StripeError::no_such("PaymentMethod", pm, "payment_method", 400))
}

/// The sandbox's own base URL as the client reached it (for `next_action` URLs).
fn sandbox_base(req: &Req<'_>) -> String {
    format!("http://{}", req.header("host").unwrap_or("127.0.0.1:8787"))
}

/// Where the guest completes (or fails) the 3-D Secure challenge of intent `id`: a sandbox page
/// that plays the card issuer (`/_sandbox/3ds/{id}`, see the crate documentation).
pub fn authentication_url(base: &str, id: &str) -> String {
    format!("{base}/_sandbox/3ds/{id}")
}

fn create_intent(
    stripe: &mut StripeState,
    req: &Req<'_>,
    now: i64,
    base: &str,
) -> Result<Reply, StripeError> {
    let params = Params::parse(req.form(), INTENT_PARAMS)?;
    let amount = params
        .integer("amount")?
        .ok_or_else(|| StripeError::missing("amount"))?;
    let currency = params
        .text("currency")
        .ok_or_else(|| StripeError::missing("currency"))?;
    let currency = currency.to_ascii_lowercase();
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_lowercase()) {
        return Err(StripeError::invalid(
            "parameter_invalid_string",
            format!("Invalid currency: {currency}. Stripe currently supports these currencies: usd, eur, gbp, ..."),
            Some("currency"),
        ));
    }
    if amount < 50 {
        return Err(StripeError::invalid(
            "amount_too_small",
            format!("Amount must be at least $0.50 {currency}"),
            Some("amount"),
        ));
    }
    if amount > 99_999_999 {
        return Err(StripeError::invalid(
            "amount_too_large",
            "Amount must be no more than $999,999.99",
            Some("amount"),
        ));
    }
    let confirm = params.boolean("confirm")?;
    params.boolean("off_session")?;
    let customer = params.text("customer");
    if let Some(id) = &customer {
        if !stripe.customers.contains_key(id) {
            return Err(StripeError::no_such("customer", id, "customer", 400));
        }
    }
    let payment_method = params.text("payment_method");
    if let Some(pm) = &payment_method {
        check_payment_method(pm)?;
    }
    if confirm && payment_method.is_none() {
        return Err(StripeError::unexpected_state(
            "You cannot confirm this PaymentIntent because it's missing a payment method. To \
             confirm the PaymentIntent, pass a payment_method.",
        ));
    }
    let id = stripe.intent_ids.stripe("pi_", 24);
    let intent = PaymentIntent {
        client_secret: format!("{id}_secret_sandbox"),
        id: id.clone(),
        object: "payment_intent",
        amount,
        amount_received: 0,
        amount_refunded: 0,
        canceled_at: None,
        cancellation_reason: None,
        capture_method: "automatic",
        confirmation_method: "automatic",
        created: now,
        currency,
        customer,
        description: params.text("description"),
        last_payment_error: None,
        latest_charge: None,
        livemode: false,
        metadata: params.metadata.clone(),
        next_action: None,
        status: if payment_method.is_some() {
            "requires_confirmation"
        } else {
            "requires_payment_method"
        },
        payment_method: payment_method.clone(),
        payment_method_types: vec!["card"],
    };
    stripe.payment_intents.insert(id.clone(), intent);
    match (confirm, payment_method) {
        (true, Some(pm)) => attempt(stripe, &id, &pm, base, params.text("return_url")),
        _ => Ok(Reply::json(
            200,
            &stripe
                .payment_intents
                .get(&id)
                .map(to_json)
                .unwrap_or(Value::Null),
        )),
    }
}

/// Confirms intent `id` with `pm`: the charge succeeds, is declined (402), or needs 3-D Secure.
fn attempt(
    stripe: &mut StripeState,
    id: &str,
    pm: &str,
    base: &str,
    return_url: Option<String>,
) -> Result<Reply, StripeError> {
    let outcome = check_payment_method(pm)?;
    let charge = match outcome {
        Card::RequiresAction => None,
        _ => Some(stripe.charge_ids.stripe("ch_", 24)),
    };
    let intent = stripe
        .payment_intents
        .get_mut(id)
        .ok_or_else(|| StripeError::no_such("payment_intent", id, "intent", 404))?;
    match outcome {
        Card::Succeeds => {
            intent.status = "succeeded";
            intent.payment_method = Some(pm.to_string());
            intent.amount_received = intent.amount;
            intent.latest_charge = charge;
            intent.last_payment_error = None;
            intent.next_action = None;
            let reply = Reply::json(200, &to_json(intent));
            stripe.emit("payment_intent.succeeded", id);
            Ok(reply)
        }
        Card::RequiresAction => {
            intent.status = "requires_action";
            intent.payment_method = Some(pm.to_string());
            // What Stripe gives a server-side confirmation: a page to send the customer to.
            intent.next_action = Some(json!({
                "type": "redirect_to_url",
                "redirect_to_url": {"url": authentication_url(base, id), "return_url": return_url}
            }));
            let reply = Reply::json(200, &to_json(intent));
            stripe.emit("payment_intent.requires_action", id);
            Ok(reply)
        }
        Card::Declines {
            code,
            decline_code,
            message,
        } => {
            let error = json!({
                "type": "card_error",
                "code": code,
                "decline_code": decline_code,
                "message": message,
                "charge": charge,
                "doc_url": format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")),
                "payment_method": {"id": pm, "object": "payment_method", "type": "card"},
            });
            intent.status = "requires_payment_method";
            intent.payment_method = None;
            intent.latest_charge = charge;
            intent.next_action = None;
            intent.last_payment_error = Some(error.clone());
            let mut error = error;
            error["payment_intent"] = to_json(intent);
            stripe.emit("payment_intent.payment_failed", id);
            Err(StripeError {
                status: 402,
                body: json!({ "error": error }),
            })
        }
    }
}

/// Sandbox extension: the customer completes (or fails) the 3-D Secure challenge of an intent
/// in `requires_action`, as the browser would with Stripe.js.
pub fn complete_authentication(
    stripe: &mut StripeState,
    id: &str,
    succeed: bool,
) -> Result<Value, (u16, String)> {
    let charge = succeed.then(|| stripe.charge_ids.stripe("ch_", 24));
    let intent = stripe
        .payment_intents
        .get_mut(id)
        .ok_or_else(|| (404, format!("No such payment_intent: '{id}'")))?;
    if intent.status != "requires_action" {
        return Err((
            400,
            format!(
                "payment_intent {id} has status {}, not requires_action",
                intent.status
            ),
        ));
    }
    intent.next_action = None;
    if succeed {
        intent.status = "succeeded";
        intent.amount_received = intent.amount;
        intent.latest_charge = charge;
        intent.last_payment_error = None;
    } else {
        intent.status = "requires_payment_method";
        intent.last_payment_error = Some(json!({
            "type": "invalid_request_error",
            "code": "payment_intent_authentication_failure",
            "message": "The provided PaymentMethod has failed authentication. You can provide \
                        payment_method_data or a new PaymentMethod to attempt to fulfill this \
                        PaymentIntent again.",
            "payment_method": {"id": intent.payment_method, "object": "payment_method", "type": "card"},
        }));
        intent.payment_method = None;
    }
    let object = to_json(intent);
    stripe.emit(
        if succeed {
            "payment_intent.succeeded"
        } else {
            "payment_intent.payment_failed"
        },
        id,
    );
    Ok(object)
}

fn confirm_intent(
    stripe: &mut StripeState,
    req: &Req<'_>,
    id: &str,
    base: &str,
) -> Result<Reply, StripeError> {
    let params = Params::parse(
        req.form(),
        &[
            "payment_method",
            "return_url",
            "off_session",
            "receipt_email",
        ],
    )?;
    let intent = stripe
        .payment_intents
        .get(id)
        .ok_or_else(|| StripeError::no_such("payment_intent", id, "intent", 404))?;
    match intent.status {
        "requires_payment_method" | "requires_confirmation" | "requires_action" => {}
        "succeeded" => {
            return Err(StripeError::unexpected_state(
                "You cannot confirm this PaymentIntent because it has already succeeded after \
                 being previously confirmed.",
            ))
        }
        other => {
            return Err(StripeError::unexpected_state(format!(
                "You cannot confirm this PaymentIntent because it has a status of {other}."
            )))
        }
    }
    let pm = params
        .text("payment_method")
        .or_else(|| intent.payment_method.clone())
        .ok_or_else(|| {
            StripeError::unexpected_state(
                "You cannot confirm this PaymentIntent because it's missing a payment method. \
                 You can either update the PaymentIntent with a payment method and then \
                 confirm it again, or confirm it again directly with a payment method.",
            )
        })?;
    attempt(stripe, id, &pm, base, params.text("return_url"))
}

fn cancel_intent(
    stripe: &mut StripeState,
    req: &Req<'_>,
    id: &str,
    now: i64,
) -> Result<Reply, StripeError> {
    let params = Params::parse(req.form(), &["cancellation_reason"])?;
    let reason = params.text("cancellation_reason");
    if let Some(reason) = &reason {
        let allowed = [
            "duplicate",
            "fraudulent",
            "requested_by_customer",
            "abandoned",
        ];
        if !allowed.contains(&reason.as_str()) {
            return Err(StripeError::invalid(
                "parameter_invalid_string",
                format!(
                    "Invalid cancellation_reason: must be one of {}",
                    allowed.join(", ")
                ),
                Some("cancellation_reason"),
            ));
        }
    }
    let intent = stripe
        .payment_intents
        .get_mut(id)
        .ok_or_else(|| StripeError::no_such("payment_intent", id, "intent", 404))?;
    match intent.status {
        "requires_payment_method"
        | "requires_confirmation"
        | "requires_action"
        | "requires_capture"
        | "processing" => {
            intent.status = "canceled";
            intent.canceled_at = Some(now);
            intent.cancellation_reason = reason;
            intent.next_action = None;
            let reply = Reply::json(200, &to_json(intent));
            stripe.emit("payment_intent.canceled", id);
            Ok(reply)
        }
        status => Err(StripeError::unexpected_state(format!(
            "You cannot cancel this PaymentIntent because it has a status of {status}. Only a \
             PaymentIntent with one of the following statuses may be canceled: \
             requires_payment_method, requires_capture, requires_confirmation, \
             requires_action, processing."
        ))),
    }
}

fn create_refund(stripe: &mut StripeState, req: &Req<'_>, now: i64) -> Result<Reply, StripeError> {
    let params = Params::parse(
        req.form(),
        &["payment_intent", "charge", "amount", "reason", "metadata"],
    )?;
    let intent_id = match (params.text("payment_intent"), params.text("charge")) {
        (Some(pi), _) => pi,
        (None, Some(charge)) => stripe
            .payment_intents
            .values()
            .find(|pi| pi.latest_charge.as_deref() == Some(charge.as_str()))
            .map(|pi| pi.id.clone())
            .ok_or_else(|| StripeError::no_such("charge", &charge, "charge", 400))?,
        (None, None) => {
            return Err(StripeError::invalid(
                "parameter_missing",
                "One of the following params should be provided for this request: \
                 payment_intent or charge.",
                None,
            ))
        }
    };
    let reason = params.text("reason");
    if let Some(reason) = &reason {
        if !["duplicate", "fraudulent", "requested_by_customer"].contains(&reason.as_str()) {
            return Err(StripeError::invalid(
                "parameter_invalid_string",
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                Some("reason"),
            ));
        }
    }
    let amount = params.integer("amount")?;
    let intent = stripe
        .payment_intents
        .get_mut(&intent_id)
        .ok_or_else(|| StripeError::no_such("payment_intent", &intent_id, "payment_intent", 400))?;
    if intent.status != "succeeded" {
        return Err(StripeError::invalid(
            "charge_not_refundable",
            format!(
                "This PaymentIntent ({intent_id}) does not have a successful charge to refund."
            ),
            Some("payment_intent"),
        ));
    }
    let remaining = intent.amount_received - intent.amount_refunded;
    let charge = intent.latest_charge.clone().unwrap_or_default();
    if remaining <= 0 {
        return Err(StripeError::invalid(
            "charge_already_refunded",
            format!("Charge {charge} has already been refunded."),
            None,
        ));
    }
    let amount = amount.unwrap_or(remaining);
    if amount <= 0 {
        return Err(StripeError::invalid(
            "parameter_invalid_integer",
            "This value must be greater than or equal to 1.",
            Some("amount"),
        ));
    }
    if amount > remaining {
        return Err(StripeError::invalid(
            "amount_too_large",
            format!(
                "Refund amount ({}) is greater than unrefunded amount on charge ({}).",
                dollars(amount),
                dollars(remaining)
            ),
            Some("amount"),
        ));
    }
    intent.amount_refunded += amount;
    let refund = Refund {
        id: stripe.refund_ids.stripe("re_", 24),
        object: "refund",
        amount,
        charge: Some(charge),
        created: now,
        currency: intent.currency.clone(),
        metadata: params.metadata.clone(),
        payment_intent: intent_id,
        reason,
        status: "succeeded",
    };
    let body = to_json(&refund);
    stripe.refunds.insert(refund.id.clone(), refund);
    Ok(Reply::json(200, &body))
}

fn dollars(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_search_customers(query: &str) -> Result<(Vec<Clause>, bool), String> {
        parse_search(query, "customers", &["email", "name", "phone"])
    }

    #[test]
    fn search_parses_quoted_values_with_escapes() {
        let (clauses, any) =
            parse_search_customers(r"email:'o\'brien@example.com'").expect("parses");
        assert!(!any);
        assert_eq!(clauses[0].value, "o'brien@example.com");
        let (clauses, _) =
            parse_search_customers(r#"email:"a@b.c" AND metadata['guest']:'x'"#).expect("parses");
        assert_eq!(clauses.len(), 2);
        assert_eq!(clauses[1].field, "metadata:guest");
        assert!(parse_search_customers("email:'unterminated").is_err());
        assert!(parse_search_customers("email:'a' OR name:'b' AND phone:'c'").is_err());
        assert!(parse_search_customers("created>5").is_err());
    }
}
