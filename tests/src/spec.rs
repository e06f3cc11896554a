//! Checks responses against docs/openapi.yaml: the status must be documented for the
//! operation, and a JSON body must validate against the documented schema.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde_json::{json, Value};

static SPEC: LazyLock<Value> = LazyLock::new(|| {
    let text = include_str!("../../docs/openapi.yaml");
    serde_norway::from_str(text).expect("docs/openapi.yaml parses")
});

static VALIDATORS: LazyLock<Mutex<HashMap<String, Option<std::sync::Arc<jsonschema::Validator>>>>> =
    LazyLock::new(Default::default);

pub fn spec() -> &'static Value {
    &SPEC
}

fn resolve(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => SPEC
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

fn validator(
    method: &str,
    template: &str,
    status: u16,
) -> Option<std::sync::Arc<jsonschema::Validator>> {
    let key = format!("{method} {template} {status}");
    let mut cache = VALIDATORS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = cache.get(&key) {
        return v.clone();
    }
    let op = SPEC["paths"][template]
        .get(method.to_ascii_lowercase())
        .unwrap_or_else(|| panic!("{method} {template} is not in docs/openapi.yaml"));
    let response = op["responses"]
        .get(status.to_string())
        .map(resolve)
        .unwrap_or_else(|| {
            panic!(
                "{method} {template} answered {status}, which docs/openapi.yaml does not document"
            )
        });
    let built = response
        .get("content")
        .and_then(|c| c.get("application/json"))
        .map(|m| {
            let root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": SPEC["components"],
                "allOf": [m["schema"]],
            });
            std::sync::Arc::new(
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(&root)
                    .expect("schema compiles"),
            )
        });
    cache.insert(key, built.clone());
    built
}

/// Panics if the answer does not match the document.
pub fn check(method: &str, template: &str, status: u16, body: &Value) {
    match validator(method, template, status) {
        Some(v) => {
            let errors: Vec<String> = v
                .iter_errors(body)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{method} {template} {status}: body {body} breaks the spec: {errors:#?}"
            );
        }
        None => assert!(
            body.is_null(),
            "{method} {template} {status}: documented without a body, got {body}"
        ),
    }
}
