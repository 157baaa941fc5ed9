//! Salesforce-style REST under `/salesforce/services/data/v60.0`: sObject create, retrieve,
//! update, delete, upsert by external id, describe, and `query?q=` (see [`super::soql`]).
//!
//! Errors are arrays `[{"message","errorCode","fields"}]`. Field names are validated
//! (`INVALID_FIELD`), restricted picklists enforced (`INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST`),
//! required fields checked (`REQUIRED_FIELD_MISSING`), unique external ids kept unique
//! (`DUPLICATE_VALUE`), lookups checked (`INVALID_CROSS_REFERENCE_KEY`).

pub mod schema;

use super::server::{Reply, Req};
use super::soql::{self, Selection};
use super::state::SandboxState;
use axum::http::Method;
use chrono::{DateTime, NaiveDate, Utc};
use schema::{Field, Kind, ObjectSchema};
use serde_json::{json, Map, Number, Value};
use std::collections::{BTreeMap, HashMap};

/// The API version served.
pub const API_VERSION: &str = "v60.0";

/// A record: API field name -> value (every field of the schema is present, null when unset).
pub type Record = Map<String, Value>;

/// Every sObject's records by id (ids sort in creation order) and the counters behind ids and
/// auto numbers.
#[derive(Debug, Clone, Default)]
pub struct SalesforceState {
    pub records: HashMap<&'static str, BTreeMap<String, Record>>,
    counters: HashMap<&'static str, u64>,
    auto_numbers: HashMap<&'static str, u64>,
}

/// A Salesforce error reply.
#[derive(Debug, Clone)]
pub struct SfError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<String>,
}

impl SfError {
    pub fn new(
        status: u16,
        code: &'static str,
        message: impl Into<String>,
        fields: Vec<String>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields,
        }
    }

    fn bad(code: &'static str, message: impl Into<String>, field: &str) -> Self {
        Self::new(400, code, message, vec![field.to_string()])
    }

    fn not_found() -> Self {
        Self::new(
            404,
            "NOT_FOUND",
            "The requested resource does not exist",
            vec![],
        )
    }

    pub fn into_reply(self) -> Reply {
        Reply::json(
            self.status,
            &json!([{ "message": self.message, "errorCode": self.code, "fields": self.fields }]),
        )
    }
}

/// `Authorization: Bearer <non-empty token>`, else 401 INVALID_SESSION_ID.
pub fn authenticate(req: &Req<'_>) -> Result<(), Reply> {
    match req.bearer() {
        Some(_) => Ok(()),
        None => Err(SfError::new(
            401,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
            vec![],
        )
        .into_reply()),
    }
}

/// Salesforce's datetime format, e.g. `2026-11-25T19:13:08.000+0000`.
pub fn sf_datetime(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

fn record_url(schema: &ObjectSchema, id: &str) -> String {
    format!("/services/data/{API_VERSION}/sobjects/{}/{id}", schema.name)
}

fn attributes(schema: &ObjectSchema, record: &Record) -> Value {
    let id = record.get("Id").and_then(Value::as_str).unwrap_or_default();
    json!({"type": schema.name, "url": record_url(schema, id)})
}

/// A record as the API returns it: `attributes`, then every field in schema order.
pub fn record_json(schema: &ObjectSchema, record: &Record) -> Value {
    let mut out = Map::new();
    out.insert("attributes".into(), attributes(schema, record));
    for field in schema.fields {
        out.insert(
            field.name.to_string(),
            record.get(field.name).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !text.chars().any(char::is_whitespace)
}

/// Converts a JSON value for `field`, or says why not.
fn convert(schema: &ObjectSchema, field: &Field, value: &Value) -> Result<Value, SfError> {
    let name = field.name;
    let parse_error = |what: &str| {
        SfError::bad(
            "JSON_PARSER_ERROR",
            format!(
                "Cannot deserialize instance of {what} from {value} for field {name} of {}",
                schema.name
            ),
            name,
        )
    };
    if value.is_null() || value.as_str() == Some("") {
        return Ok(Value::Null);
    }
    match field.kind {
        Kind::Text(max) => {
            let text = value.as_str().ok_or_else(|| parse_error("string"))?;
            if text.chars().count() > max {
                return Err(SfError::bad(
                    "STRING_TOO_LONG",
                    format!(
                        "{name}: data value too large: {} (max length={max})",
                        text.chars().take(40).collect::<String>()
                    ),
                    name,
                ));
            }
            Ok(json!(text))
        }
        Kind::Phone => {
            let text = value.as_str().ok_or_else(|| parse_error("string"))?;
            if text.chars().count() > 40 {
                return Err(SfError::bad(
                    "STRING_TOO_LONG",
                    format!("{name}: data value too large (max length=40)"),
                    name,
                ));
            }
            Ok(json!(text))
        }
        Kind::Email => {
            let text = value.as_str().ok_or_else(|| parse_error("string"))?;
            if !is_email(text) || text.len() > 80 {
                return Err(SfError::bad(
                    "INVALID_EMAIL_ADDRESS",
                    format!("{name}: invalid email address: {text}"),
                    name,
                ));
            }
            Ok(json!(text))
        }
        Kind::Picklist(values) => {
            let text = value.as_str().ok_or_else(|| parse_error("string"))?;
            if !values.contains(&text) {
                return Err(SfError::bad(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    format!("{name}: bad value for restricted picklist field: {text}"),
                    name,
                ));
            }
            Ok(json!(text))
        }
        Kind::Number(scale) => {
            let number = match value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|n| n.is_finite())
            .ok_or_else(|| parse_error("double"))?;
            let factor = 10f64.powi(i32::from(scale));
            let rounded = (number * factor).round() / factor;
            if scale == 0 {
                Ok(json!(rounded as i64))
            } else {
                Ok(Number::from_f64(rounded)
                    .map(Value::Number)
                    .unwrap_or(Value::Null))
            }
        }
        Kind::Date => {
            let text = value.as_str().ok_or_else(|| parse_error("date"))?;
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .filter(|_| text.len() == 10)
                .ok_or_else(|| parse_error("date"))?;
            Ok(json!(date.format("%Y-%m-%d").to_string()))
        }
        Kind::DateTime => {
            let text = value.as_str().ok_or_else(|| parse_error("datetime"))?;
            let at = DateTime::parse_from_rfc3339(text)
                .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
                .map_err(|_| parse_error("datetime"))?;
            Ok(json!(sf_datetime(at.with_timezone(&Utc))))
        }
        Kind::Bool => value
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| parse_error("boolean")),
        Kind::Id | Kind::Ref(_) => {
            let text = value.as_str().ok_or_else(|| parse_error("id"))?;
            let id = schema::normalize_id(text).ok_or_else(|| {
                SfError::bad(
                    "MALFORMED_ID",
                    format!("{name}: id value of incorrect type: {text}"),
                    name,
                )
            })?;
            Ok(json!(id))
        }
    }
}

impl SalesforceState {
    fn table(&self, schema: &ObjectSchema) -> Option<&BTreeMap<String, Record>> {
        self.records.get(schema.name)
    }

    pub fn get(&self, schema: &ObjectSchema, id: &str) -> Option<&Record> {
        let id = schema::normalize_id(id)?;
        self.table(schema)?.get(&id)
    }

    /// Records of `schema` in creation order.
    pub fn all(&self, schema: &ObjectSchema) -> impl Iterator<Item = &Record> {
        self.table(schema).into_iter().flat_map(|t| t.values())
    }

    /// The ledger's `objects` entries: every sObject type with its records.
    pub fn ledger_objects(&self) -> Vec<(&'static str, Vec<Value>)> {
        schema::OBJECTS
            .iter()
            .map(|schema| {
                (
                    schema.name,
                    self.all(schema).map(|r| record_json(schema, r)).collect(),
                )
            })
            .collect()
    }

    fn find_by(&self, schema: &ObjectSchema, field: &str, value: &str) -> Option<&Record> {
        self.all(schema)
            .find(|r| r.get(field).and_then(Value::as_str) == Some(value))
    }

    /// Validates `body` against `schema` and creates the record (used by the API and the seed).
    pub fn create(
        &mut self,
        schema: &'static ObjectSchema,
        body: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<String, SfError> {
        let record = self.prepare(schema, None, body, now)?;
        Ok(self.insert(schema, record, now))
    }

    fn insert(
        &mut self,
        schema: &'static ObjectSchema,
        mut record: Record,
        now: DateTime<Utc>,
    ) -> String {
        let counter = self.counters.entry(schema.name).or_insert(0);
        *counter += 1;
        let id = schema::make_id(schema, *counter);
        record.insert("Id".into(), json!(id));
        if let Some(auto) = schema.auto_number {
            let next = self.auto_numbers.entry(schema.name).or_insert(auto.start);
            let number = format!("{}{:0width$}", auto.prefix, *next, width = auto.width);
            *next += 1;
            record.insert(auto.field.into(), json!(number));
        }
        let stamp = json!(sf_datetime(now));
        record.insert("CreatedDate".into(), stamp.clone());
        record.insert("LastModifiedDate".into(), stamp);
        self.records
            .entry(schema.name)
            .or_default()
            .insert(id.clone(), record);
        id
    }

    /// Validates `body` and updates record `id` (which must exist).
    pub fn update(
        &mut self,
        schema: &'static ObjectSchema,
        id: &str,
        body: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<(), SfError> {
        let existing = self
            .get(schema, id)
            .cloned()
            .ok_or_else(SfError::not_found)?;
        let mut record = self.prepare(schema, Some(&existing), body, now)?;
        record.insert("LastModifiedDate".into(), json!(sf_datetime(now)));
        let id = existing
            .get("Id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.records
            .entry(schema.name)
            .or_default()
            .insert(id, record);
        Ok(())
    }

    /// The record that would result from writing `body` over `existing` (or a new record).
    fn prepare(
        &self,
        schema: &'static ObjectSchema,
        existing: Option<&Record>,
        body: &Map<String, Value>,
        _now: DateTime<Utc>,
    ) -> Result<Record, SfError> {
        let mut record: Record = match existing {
            Some(r) => r.clone(),
            None => schema
                .fields
                .iter()
                .map(|f| (f.name.to_string(), Value::Null))
                .collect(),
        };
        let existing_id = existing.and_then(|r| r.get("Id")).and_then(Value::as_str);
        let mut read_only = Vec::new();
        for (name, value) in body {
            if name == "attributes" {
                continue;
            }
            let field = schema.field(name).ok_or_else(|| {
                SfError::bad(
                    "INVALID_FIELD",
                    format!("No such column '{name}' on sobject of type {}", schema.name),
                    name,
                )
            })?;
            if !field.writable {
                let same_id = field.name == "Id"
                    && value.as_str().and_then(schema::normalize_id).as_deref() == existing_id;
                if !same_id {
                    read_only.push(field.name.to_string());
                }
                continue;
            }
            let converted = convert(schema, field, value)?;
            record.insert(field.name.to_string(), converted);
        }
        if !read_only.is_empty() {
            return Err(SfError::new(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!(
                    "Unable to create/update fields: {}. Please check the security settings of \
                     this field and verify that it is read/write for your profile or permission set.",
                    read_only.join(", ")
                ),
                read_only,
            ));
        }
        if existing.is_none() {
            for field in schema.fields {
                if let (Some(default), Some(Value::Null)) = (field.default, record.get(field.name))
                {
                    record.insert(field.name.to_string(), json!(default));
                }
            }
        }
        let missing: Vec<String> = schema
            .fields
            .iter()
            .filter(|f| f.required && record.get(f.name).is_none_or(Value::is_null))
            .map(|f| f.name.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(SfError::new(
                400,
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
                missing,
            ));
        }
        for field in schema.fields {
            let Kind::Ref(target) = field.kind else {
                continue;
            };
            let Some(id) = record.get(field.name).and_then(Value::as_str) else {
                continue;
            };
            let target = schema::object(target).unwrap_or(schema);
            if !id.starts_with(target.key_prefix) {
                return Err(SfError::bad(
                    "FIELD_INTEGRITY_EXCEPTION",
                    format!("{}: id value of incorrect type: {id}", field.name),
                    field.name,
                ));
            }
            if self.get(target, id).is_none() {
                return Err(SfError::bad(
                    "INVALID_CROSS_REFERENCE_KEY",
                    format!("invalid cross reference id: {id} in {}", field.name),
                    field.name,
                ));
            }
        }
        for field in schema.fields.iter().filter(|f| f.unique) {
            let Some(value) = record.get(field.name).and_then(Value::as_str) else {
                continue;
            };
            if let Some(other) = self.find_by(schema, field.name, value) {
                let other_id = other.get("Id").and_then(Value::as_str).unwrap_or_default();
                if Some(other_id) != existing_id {
                    return Err(SfError::new(
                        400,
                        "DUPLICATE_VALUE",
                        format!(
                            "duplicate value found: {} duplicates value on record with id: {other_id}",
                            field.name
                        ),
                        vec![],
                    ));
                }
            }
        }
        derive(schema, &mut record)?;
        Ok(record)
    }
}

/// Formulas, compound fields and validation rules.
fn derive(schema: &ObjectSchema, record: &mut Record) -> Result<(), SfError> {
    let text = |r: &Record, f: &str| r.get(f).and_then(Value::as_str).map(str::to_string);
    match schema.name {
        "Contact" => {
            let name = [text(record, "FirstName"), text(record, "LastName")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            record.insert("Name".into(), json!(name));
        }
        "Booking__c" => {
            let date = |f: &str| {
                text(record, f).and_then(|s| NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok())
            };
            if let (Some(check_in), Some(check_out)) =
                (date("Check_In_Date__c"), date("Check_Out_Date__c"))
            {
                if check_out <= check_in {
                    return Err(SfError::new(
                        400,
                        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                        "Check-out date must be after the check-in date",
                        vec!["Check_Out_Date__c".into()],
                    ));
                }
                record.insert(
                    "Total_Nights__c".into(),
                    json!((check_out - check_in).num_days()),
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// Handles one authenticated Salesforce request (the path is below `/salesforce`).
pub fn handle(state: &mut SandboxState, req: &Req<'_>) -> Reply {
    match route(state, req) {
        Ok(reply) => reply,
        Err(error) => error.into_reply(),
    }
}

fn body_object(req: &Req<'_>) -> Result<Map<String, Value>, SfError> {
    match serde_json::from_slice::<Value>(req.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(SfError::new(
            400,
            "JSON_PARSER_ERROR",
            "The request body must be a JSON object",
            vec![],
        )),
        Err(e) => Err(SfError::new(
            400,
            "JSON_PARSER_ERROR",
            format!("Unexpected character in the request body: {e}"),
            vec![],
        )),
    }
}

fn object_schema(name: &str) -> Result<&'static ObjectSchema, SfError> {
    schema::object(name).ok_or_else(|| {
        SfError::new(
            404,
            "NOT_FOUND",
            format!(
                "The requested resource does not exist: sObject type '{name}' is not supported."
            ),
            vec![],
        )
    })
}

fn route(state: &mut SandboxState, req: &Req<'_>) -> Result<Reply, SfError> {
    let segments = req.segments();
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let Some(rest) = parts.strip_prefix(&["services", "data", API_VERSION][..]) else {
        return Err(SfError::not_found());
    };
    let now = state.now();
    let today = state.today;
    let sf = &mut state.salesforce;
    match (req.method, rest) {
        (&Method::GET, ["query"]) => query(sf, req, today),
        (&Method::GET, ["sobjects"]) => Ok(Reply::json(
            200,
            &json!({"encoding": "UTF-8", "sobjects": schema::OBJECTS.iter()
                .map(|o| json!({"name": o.name, "keyPrefix": o.key_prefix, "custom": o.name.ends_with("__c")}))
                .collect::<Vec<_>>()}),
        )),
        (&Method::POST, ["sobjects", object]) => {
            let schema = object_schema(object)?;
            let body = body_object(req)?;
            let id = sf.create(schema, &body, now)?;
            Ok(Reply::json(
                201,
                &json!({"id": id, "success": true, "errors": []}),
            ))
        }
        (&Method::GET, ["sobjects", object, "describe"]) => {
            Ok(Reply::json(200, &describe(object_schema(object)?)))
        }
        (&Method::GET, ["sobjects", object, id]) => {
            let schema = object_schema(object)?;
            let record = sf.get(schema, id).ok_or_else(SfError::not_found)?;
            let mut out = record_json(schema, record);
            if let Some(fields) = req.query_param("fields") {
                out = select_fields(schema, record, fields)?;
            }
            Ok(Reply::json(200, &out))
        }
        (&Method::PATCH, ["sobjects", object, id]) => {
            let schema = object_schema(object)?;
            let body = body_object(req)?;
            sf.update(schema, id, &body, now)?;
            Ok(Reply::no_content())
        }
        (&Method::DELETE, ["sobjects", object, id]) => {
            let schema = object_schema(object)?;
            let id = sf
                .get(schema, id)
                .and_then(|r| r.get("Id"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    SfError::new(404, "ENTITY_IS_DELETED", "entity is deleted", vec![])
                })?;
            if let Some(table) = sf.records.get_mut(schema.name) {
                table.remove(&id);
            }
            Ok(Reply::no_content())
        }
        (&Method::GET, ["sobjects", object, field, value]) => {
            let schema = object_schema(object)?;
            let field = external_field(schema, field)?;
            let record = sf
                .find_by(schema, field.name, value)
                .ok_or_else(SfError::not_found)?;
            Ok(Reply::json(200, &record_json(schema, record)))
        }
        (&Method::PATCH, ["sobjects", object, field, value]) => {
            let schema = object_schema(object)?;
            let field = external_field(schema, field)?;
            let mut body = body_object(req)?;
            upsert(sf, schema, field, value, &mut body, now)
        }
        _ => Err(SfError::not_found()),
    }
}

fn external_field(schema: &ObjectSchema, name: &str) -> Result<&'static Field, SfError> {
    schema
        .field(name)
        .filter(|f| f.external_id || f.name == "Id")
        .ok_or_else(|| {
            SfError::new(
                404,
                "NOT_FOUND",
                format!("Provided external ID field does not exist or is not accessible: {name}"),
                vec![],
            )
        })
}

fn upsert(
    sf: &mut SalesforceState,
    schema: &'static ObjectSchema,
    field: &'static Field,
    value: &str,
    body: &mut Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Reply, SfError> {
    if let Some((name, given)) = body
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field.name))
    {
        if field.name == "Id" || given.as_str() != Some(value) {
            return Err(SfError::bad(
                "INVALID_FIELD",
                format!("{name} specified in the body does not match the external id in the URL"),
                field.name,
            ));
        }
    }
    let existing = if field.name == "Id" {
        sf.get(schema, value)
    } else {
        sf.find_by(schema, field.name, value)
    }
    .and_then(|r| r.get("Id"))
    .and_then(Value::as_str)
    .map(str::to_string);
    match existing {
        Some(id) => {
            body.remove(field.name);
            sf.update(schema, &id, body, now)?;
            Ok(Reply::json(
                200,
                &json!({"id": id, "success": true, "errors": [], "created": false}),
            ))
        }
        None if field.name == "Id" => Err(SfError::not_found()),
        None => {
            body.insert(field.name.to_string(), json!(value));
            let id = sf.create(schema, body, now)?;
            Ok(Reply::json(
                201,
                &json!({"id": id, "success": true, "errors": [], "created": true}),
            ))
        }
    }
}

fn select_fields(schema: &ObjectSchema, record: &Record, list: &str) -> Result<Value, SfError> {
    let mut out = Map::new();
    out.insert("attributes".into(), attributes(schema, record));
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let field = schema.field(name).ok_or_else(|| {
            SfError::bad(
                "INVALID_FIELD",
                format!("No such column '{name}' on entity '{}'", schema.name),
                name,
            )
        })?;
        out.insert(
            field.name.into(),
            record.get(field.name).cloned().unwrap_or(Value::Null),
        );
    }
    out.insert(
        "Id".into(),
        record.get("Id").cloned().unwrap_or(Value::Null),
    );
    Ok(Value::Object(out))
}

fn describe(schema: &ObjectSchema) -> Value {
    let fields: Vec<Value> = schema
        .fields
        .iter()
        .map(|f| {
            let picklist: Vec<Value> = match f.kind {
                Kind::Picklist(values) => values
                    .iter()
                    .map(|v| json!({"value": v, "label": v, "active": true, "defaultValue": f.default == Some(*v)}))
                    .collect(),
                _ => vec![],
            };
            json!({
                "name": f.name,
                "type": f.kind.type_name(),
                "length": match f.kind { Kind::Text(n) => n, _ => 0 },
                "nillable": !f.required && f.writable,
                "createable": f.writable,
                "updateable": f.writable,
                "externalId": f.external_id,
                "unique": f.unique,
                "restrictedPicklist": matches!(f.kind, Kind::Picklist(_)),
                "picklistValues": picklist,
                "referenceTo": match f.kind { Kind::Ref(t) => vec![t], _ => vec![] },
            })
        })
        .collect();
    json!({"name": schema.name, "keyPrefix": schema.key_prefix, "custom": schema.name.ends_with("__c"), "fields": fields})
}

fn query(sf: &SalesforceState, req: &Req<'_>, today: NaiveDate) -> Result<Reply, SfError> {
    let text = req.query_param("q").ok_or_else(|| {
        SfError::new(
            400,
            "MALFORMED_QUERY",
            "The q parameter is required",
            vec![],
        )
    })?;
    let to_error = |e: soql::SoqlError| SfError::new(400, e.code, e.message, vec![]);
    let mut parsed = soql::parse(text, today).map_err(to_error)?;
    let schema = schema::object(&parsed.object).ok_or_else(|| {
        SfError::new(
            400,
            "INVALID_TYPE",
            format!("sObject type '{}' is not supported.", parsed.object),
            vec![],
        )
    })?;
    soql::validate(&mut parsed, schema).map_err(to_error)?;
    let rows = soql::run(&parsed, schema, sf.all(schema));
    let records: Vec<Value> = match &parsed.selection {
        Selection::Count => vec![],
        Selection::Fields(fields) => rows
            .iter()
            .map(|record| {
                let mut out = Map::new();
                out.insert("attributes".into(), attributes(schema, record));
                for field in fields {
                    out.insert(
                        field.clone(),
                        record.get(field).cloned().unwrap_or(Value::Null),
                    );
                }
                Value::Object(out)
            })
            .collect(),
    };
    Ok(Reply::json(
        200,
        &json!({"totalSize": rows.len(), "done": true, "records": records}),
    ))
}
