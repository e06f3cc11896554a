//! The OpenAPI document, compiled in from docs/openapi.yaml and served as JSON.

use std::sync::LazyLock;

const SPEC_YAML: &str = include_str!("../../docs/openapi.yaml");

static SPEC_JSON: LazyLock<Result<serde_json::Value, String>> =
    LazyLock::new(|| serde_norway::from_str(SPEC_YAML).map_err(|e| e.to_string()));

/// The spec as JSON, or why docs/openapi.yaml does not parse (a test keeps it parsing).
pub fn openapi_json() -> Result<&'static serde_json::Value, &'static str> {
    SPEC_JSON.as_ref().map_err(String::as_str)
}
