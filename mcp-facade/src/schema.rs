//! JSON Schemas as MCP clients want them: a top-level `"type":"object"`, references inlined
//! (many clients do not resolve `$ref`), no `$schema` keyword, and nothing that costs an
//! agent's context without telling it anything (docs/mcp.md, "What tools/list costs").

use serde_json::{Map, Value};

/// How deep references are inlined before giving up (a recursive type keeps its `$ref` and
/// its `$defs` stay in the schema, which is still valid JSON Schema).
const MAX_DEPTH: usize = 16;

/// Normalizes a schemars schema for a tool's `inputSchema` / `outputSchema`.
pub fn normalize(schema: &Value) -> Map<String, Value> {
    let mut root = resolve(schema);
    if root.get("type").and_then(Value::as_str) != Some("object") {
        // A non-object input cannot be a tool's arguments; describe it as an open object.
        if !root.contains_key("properties") {
            root.insert("properties".into(), Value::Object(Map::new()));
        }
        root.insert("type".into(), Value::String("object".into()));
    }
    root
}

/// Inlines references and drops `$schema`, whatever the schema's type.
pub fn resolve(schema: &Value) -> Map<String, Value> {
    let mut root = match schema {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let defs = root
        .remove("$defs")
        .or_else(|| root.remove("definitions"))
        .and_then(|d| match d {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    root.remove("$schema");
    let mut unresolved = false;
    let mut inlined = Value::Object(root);
    inline(&mut inlined, &defs, 0, &mut unresolved);
    let mut root = match inlined {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    if unresolved && !defs.is_empty() {
        root.insert("$defs".into(), Value::Object(defs));
    }
    // The Rust type's name says nothing the tool's name does not.
    root.remove("title");
    let mut root = Value::Object(root);
    compact(&mut root);
    match root {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Keywords schemars writes that tell a client nothing: `"default": null` on an optional
/// field (absent already means none) and Rust's integer widths as `format` (`uint32`...),
/// which JSON Schema does not define. Walks schemas only, so a property *named* `title` or
/// `default` is kept.
fn compact(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("default").is_some_and(Value::is_null) {
                map.remove("default");
            }
            if map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(is_rust_number_format)
            {
                map.remove("format");
            }
            for (keyword, child) in map.iter_mut() {
                match keyword.as_str() {
                    "properties" | "patternProperties" | "$defs" | "definitions" => {
                        if let Value::Object(children) = child {
                            children.values_mut().for_each(compact);
                        }
                    }
                    "items"
                    | "additionalProperties"
                    | "not"
                    | "anyOf"
                    | "oneOf"
                    | "allOf"
                    | "prefixItems"
                    | "contains"
                    | "if"
                    | "then"
                    | "else" => compact(child),
                    _ => {}
                }
            }
        }
        Value::Array(schemas) => schemas.iter_mut().for_each(compact),
        _ => {}
    }
}

fn is_rust_number_format(format: &str) -> bool {
    matches!(
        format,
        "int8"
            | "int16"
            | "int32"
            | "int64"
            | "uint"
            | "uint8"
            | "uint16"
            | "uint32"
            | "uint64"
            | "float"
            | "double"
    )
}

fn inline(value: &mut Value, defs: &Map<String, Value>, depth: usize, unresolved: &mut bool) {
    inline_in(value, defs, &mut Vec::new(), depth, unresolved)
}

/// Inlines `$ref`s; `expanding` holds the definitions being expanded, so a recursive type keeps
/// its reference instead of expanding forever.
fn inline_in(
    value: &mut Value,
    defs: &Map<String, Value>,
    expanding: &mut Vec<String>,
    depth: usize,
    unresolved: &mut bool,
) {
    match value {
        Value::Object(map) => {
            for (_, child) in map.iter_mut() {
                inline_in(child, defs, expanding, depth, unresolved);
            }
            let Some(Value::String(reference)) = map.get("$ref") else {
                return;
            };
            let name = reference
                .strip_prefix("#/$defs/")
                .or_else(|| reference.strip_prefix("#/definitions/"))
                .map(str::to_string);
            match name.and_then(|n| defs.get(&n).map(|t| (n, t))) {
                Some((name, target)) if depth < MAX_DEPTH && !expanding.contains(&name) => {
                    let mut replacement = target.clone();
                    expanding.push(name);
                    inline_in(&mut replacement, defs, expanding, depth + 1, unresolved);
                    expanding.pop();
                    map.remove("$ref");
                    // Sibling keywords (description, default) win over the target's.
                    if let Value::Object(target) = replacement {
                        for (k, v) in target {
                            map.entry(k).or_insert(v);
                        }
                    }
                }
                _ => *unresolved = true,
            }
        }
        Value::Array(items) => {
            for item in items {
                inline_in(item, defs, expanding, depth, unresolved);
            }
        }
        _ => {}
    }
}

/// Whether the object schema declares a top-level property.
pub fn has_property(schema: &Map<String, Value>, name: &str) -> bool {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| p.contains_key(name))
}

/// Adds a (required, when `required`) string property.
pub fn add_property(schema: &mut Map<String, Value>, name: &str, property: Value, required: bool) {
    if let Value::Object(props) = schema
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()))
    {
        props.insert(name.to_string(), property);
    }
    if required {
        if let Value::Array(list) = schema
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            if !list.iter().any(|v| v.as_str() == Some(name)) {
                list.push(Value::String(name.to_string()));
            }
        }
    }
}

/// Makes a property optional (the facade fills it), describing why.
pub fn make_optional(schema: &mut Map<String, Value>, name: &str, why: &str) {
    if let Some(Value::Array(list)) = schema.get_mut("required") {
        list.retain(|v| v.as_str() != Some(name));
    }
    if let Some(Value::Object(prop)) = schema
        .get_mut("properties")
        .and_then(|p| p.as_object_mut())
        .and_then(|p| p.get_mut(name))
    {
        let description = match prop.get("description").and_then(Value::as_str) {
            Some(d) => format!("{d} {why}"),
            None => why.to_string(),
        };
        prop.insert("description".into(), Value::String(description));
    }
}

/// A first check of tool arguments against the top level of an (inlined) object schema, so a
/// rejection names the field: missing required fields, unknown fields where the schema forbids
/// them, and values of the wrong JSON type. The skill's own validation runs after it.
pub fn check_arguments(
    schema: &Map<String, Value>,
    args: &Map<String, Value>,
) -> Result<(), (String, String)> {
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !args.contains_key(name) {
                return Err((name.to_string(), "is required".to_string()));
            }
        }
    }
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    for (name, value) in args {
        match properties.and_then(|p| p.get(name)) {
            Some(property) => {
                if let Some(expected) = type_mismatch(property, value) {
                    return Err((name.clone(), format!("must be {expected}")));
                }
            }
            None if closed => {
                let known = properties
                    .map(|p| {
                        p.keys()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                return Err((
                    name.clone(),
                    format!("is not an argument of this tool (known: {known})"),
                ));
            }
            None => {}
        }
    }
    Ok(())
}

/// The expected type, when `value` does not have the JSON type `property` declares.
fn type_mismatch(property: &Value, value: &Value) -> Option<String> {
    // Enumerations: `enum`, or `oneOf` of `const`s (schemars' form for documented variants).
    let options: Option<Vec<Value>> = match (property.get("enum"), property.get("oneOf")) {
        (Some(Value::Array(options)), _) => Some(options.clone()),
        (_, Some(Value::Array(variants))) => variants
            .iter()
            .map(|v| v.get("const").cloned())
            .collect::<Option<Vec<_>>>(),
        _ => None,
    };
    if let Some(options) = options {
        let nullable = property
            .get("type")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t == "null"));
        if !(options.contains(value) || nullable && value.is_null()) {
            let options: Vec<String> = options.iter().map(Value::to_string).collect();
            return Some(format!("one of {}", options.join(", ")));
        }
        return None;
    }
    let types: Vec<&str> = match property.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let ok = types.iter().any(|t| match *t {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    });
    if ok {
        return None;
    }
    Some(types.join(" or "))
}

/// The field a serde error message names (`missing field `x``, `unknown field `x``), if any.
pub fn field_in_message(message: &str) -> Option<String> {
    for marker in ["missing field `", "unknown field `", "duplicate field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            if let Some(field) = rest.split('`').next() {
                return Some(field.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_inlined_and_the_root_is_an_object() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "In",
            "type": "object",
            "properties": {
                "kind": {"$ref": "#/$defs/Kind", "default": "a", "description": "which"},
                "list": {"type": "array", "items": {"$ref": "#/$defs/Kind"}}
            },
            "required": ["kind"],
            "$defs": {"Kind": {"type": "string", "enum": ["a", "b"], "description": "a kind"}}
        });
        let out = Value::Object(normalize(&schema));
        assert_eq!(out["type"], "object");
        assert!(out.get("$schema").is_none());
        assert!(out.get("$defs").is_none());
        assert_eq!(out["properties"]["kind"]["enum"], json!(["a", "b"]));
        assert_eq!(out["properties"]["kind"]["description"], "which");
        assert_eq!(out["properties"]["list"]["items"]["type"], "string");
        assert!(!out.to_string().contains("$ref"));
    }

    #[test]
    fn recursive_references_keep_their_defs() {
        let schema = json!({
            "type": "object",
            "properties": {"node": {"$ref": "#/$defs/Node"}},
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}
        });
        let out = Value::Object(normalize(&schema));
        assert!(out.get("$defs").is_some());
        assert_eq!(out["properties"]["node"]["type"], "object");
    }

    #[test]
    fn noise_is_dropped_but_fields_named_like_keywords_are_kept() {
        let schema = resolve(&json!({
            "title": "BorrowInput",
            "type": "object",
            "properties": {
                "title": {"type": "string", "format": "date"},
                "default": {"type": ["integer", "null"], "format": "uint32", "default": null},
                "copies": {"type": "array", "items": {"type": "integer", "format": "int64"}},
                "shelf": {"type": "integer", "default": 3}
            }
        }));
        assert_eq!(
            Value::Object(schema),
            json!({
                "type": "object",
                "properties": {
                    "title": {"type": "string", "format": "date"},
                    "default": {"type": ["integer", "null"]},
                    "copies": {"type": "array", "items": {"type": "integer"}},
                    "shelf": {"type": "integer", "default": 3}
                }
            })
        );
    }

    #[test]
    fn non_objects_become_objects() {
        let out = Value::Object(normalize(&json!({"type": "null"})));
        assert_eq!(out["type"], "object");
        let out = Value::Object(normalize(&Value::Null));
        assert_eq!(out["type"], "object");
    }

    #[test]
    fn required_properties_can_be_added_and_relaxed() {
        let mut schema = normalize(
            &json!({"type":"object","properties":{"email":{"type":"string"}},"required":["email"]}),
        );
        add_property(
            &mut schema,
            "idempotency_key",
            json!({"type":"string"}),
            true,
        );
        make_optional(&mut schema, "email", "Filled from your identity.");
        let out = Value::Object(schema);
        assert_eq!(out["required"], json!(["idempotency_key"]));
        assert_eq!(
            out["properties"]["email"]["description"],
            "Filled from your identity."
        );
    }

    #[test]
    fn arguments_are_checked_by_field() {
        let schema = normalize(&json!({
            "type": "object",
            "properties": {"steps": {"type": "integer"}, "kind": {"type": "string", "enum": ["a", "b"]}},
            "required": ["steps"],
            "additionalProperties": false
        }));
        let args = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(check_arguments(&schema, &args(json!({"steps": 2}))), Ok(()));
        assert_eq!(
            check_arguments(&schema, &args(json!({}))).unwrap_err().0,
            "steps"
        );
        assert_eq!(
            check_arguments(&schema, &args(json!({"steps": "two"})))
                .unwrap_err()
                .0,
            "steps"
        );
        assert_eq!(
            check_arguments(&schema, &args(json!({"steps": 1, "kind": 3})))
                .unwrap_err()
                .0,
            "kind"
        );
        assert_eq!(
            check_arguments(&schema, &args(json!({"steps": 1, "nope": 3})))
                .unwrap_err()
                .0,
            "nope"
        );
        assert_eq!(
            field_in_message("missing field `guest_email`"),
            Some("guest_email".into())
        );
        assert_eq!(field_in_message("invalid type: string"), None);
    }
}
