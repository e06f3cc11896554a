//! The OpenAPI document, compiled in from docs/openapi.yaml and served as JSON.

use std::sync::LazyLock;

const SPEC_YAML: &str = include_str!("../../docs/openapi.yaml");

static SPEC_JSON: LazyLock<Result<serde_json::Value, String>> =
    LazyLock::new(|| serde_norway::from_str(SPEC_YAML).map_err(|e| e.to_string()));

/// The spec as JSON, or why docs/openapi.yaml does not parse (a test keeps it parsing).
pub fn openapi_json() -> Result<&'static serde_json::Value, &'static str> {
    SPEC_JSON.as_ref().map_err(String::as_str)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_spec_parses_and_is_openapi_3_1() {
        let spec = super::openapi_json().expect("docs/openapi.yaml parses");
        assert_eq!(spec["openapi"], "3.1.0");
        assert!(spec["paths"]["/v1/audio"]["post"].is_object());
    }
}
