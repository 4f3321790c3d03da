//! Checks on what a create hands on to the sandbox (`envVars`, via `/init`) or keeps in its
//! record (`metadata`), so bad input is a 400 naming the problem rather than a failure at the
//! runtime (a 500) or an oversized record rewritten on every update (audit L3). The limits
//! are in `openapi.json` too; keep the two in step.

use std::collections::BTreeMap;

use super::create::NewSandbox;
use crate::error::ApiError;

/// Most environment variables one create may set.
pub const MAX_ENV_VARS: usize = 256;
/// Longest environment variable name, characters.
pub const MAX_ENV_NAME: usize = 256;
/// Longest environment variable value, characters.
pub const MAX_ENV_VALUE: usize = 16 * 1024;
/// Most metadata entries one sandbox may carry.
pub const MAX_METADATA: usize = 128;
/// Longest metadata key, characters.
pub const MAX_METADATA_KEY: usize = 256;
/// Longest metadata value, characters.
pub const MAX_METADATA_VALUE: usize = 4096;

/// What one map may hold.
struct Rules {
    /// The field's name in the API, for messages.
    field: &'static str,
    max_entries: usize,
    max_name: usize,
    max_value: usize,
    /// Whether `=` may appear in a name (it ends an environment variable's name).
    name_may_hold_equals: bool,
}

const ENV_VARS: Rules = Rules {
    field: "envVars",
    max_entries: MAX_ENV_VARS,
    max_name: MAX_ENV_NAME,
    max_value: MAX_ENV_VALUE,
    name_may_hold_equals: false,
};

const METADATA: Rules = Rules {
    field: "metadata",
    max_entries: MAX_METADATA,
    max_name: MAX_METADATA_KEY,
    max_value: MAX_METADATA_VALUE,
    name_may_hold_equals: true,
};

/// Names are printable (no control characters, no `=` in env names); values may hold
/// anything but NUL, which no environment (and no C string) can carry.
fn check(map: &BTreeMap<String, String>, rules: &Rules) -> Result<(), ApiError> {
    let field = rules.field;
    if map.len() > rules.max_entries {
        return Err(ApiError::bad_request(format!(
            "{field} has {} entries; at most {} are allowed",
            map.len(),
            rules.max_entries
        )));
    }
    for (name, value) in map {
        if name.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{field}: names must not be empty"
            )));
        }
        if name.chars().count() > rules.max_name {
            return Err(ApiError::bad_request(format!(
                "{field}: name '{}…' is longer than {} characters",
                name.chars().take(32).collect::<String>(),
                rules.max_name
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "{field}: name {name:?} holds a control character"
            )));
        }
        if !rules.name_may_hold_equals && name.contains('=') {
            return Err(ApiError::bad_request(format!(
                "{field}: name {name:?} holds '='"
            )));
        }
        if value.chars().count() > rules.max_value {
            return Err(ApiError::bad_request(format!(
                "{field}: the value of {name:?} is longer than {} characters",
                rules.max_value
            )));
        }
        if value.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "{field}: the value of {name:?} holds a NUL character"
            )));
        }
    }
    Ok(())
}

/// Checks a create's `envVars` and `metadata`.
pub fn new_sandbox(b: &NewSandbox) -> Result<(), ApiError> {
    if let Some(env) = &b.env_vars {
        check(env, &ENV_VARS)?;
    }
    if let Some(meta) = &b.metadata {
        check(meta, &METADATA)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_var_names_and_values() {
        assert!(check(&env(&[("PATH", "/bin"), ("MULTI", "a\nb")]), &ENV_VARS).is_ok());
        for (bad, says) in [
            (env(&[("", "x")]), "must not be empty"),
            (env(&[("A=B", "x")]), "'='"),
            (env(&[("A\u{1}", "x")]), "control character"),
            (env(&[("A\n", "x")]), "control character"),
            (env(&[("A\u{85}", "x")]), "control character"),
            (env(&[("A", "x\0y")]), "NUL"),
        ] {
            let e = check(&bad, &ENV_VARS).unwrap_err();
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
            assert!(e.message.contains(says), "{bad:?}: {}", e.message);
            assert!(e.message.starts_with("envVars"), "{}", e.message);
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let long = "x".repeat(MAX_ENV_VALUE + 1);
        assert!(check(&env(&[("A", &long)]), &ENV_VARS).is_err());
        let name = "N".repeat(MAX_ENV_NAME + 1);
        assert!(check(&env(&[(&name, "x")]), &ENV_VARS).is_err());
        let many: BTreeMap<String, String> = (0..=MAX_METADATA)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let e = check(&many, &METADATA).unwrap_err();
        assert!(e.message.contains("at most 128"), "{}", e.message);
        // Metadata keys may hold '=' (they are not environment variables).
        assert!(check(&env(&[("a=b", "c")]), &METADATA).is_ok());
    }

    /// The document tells clients the same limits the API enforces.
    #[test]
    fn the_openapi_document_states_these_limits() {
        let doc: serde_json::Value = serde_json::from_str(crate::OPENAPI).unwrap();
        let p = &doc["components"]["schemas"]["NewSandbox"]["properties"];
        for (field, entries, name, value) in [
            ("envVars", MAX_ENV_VARS, MAX_ENV_NAME, MAX_ENV_VALUE),
            (
                "metadata",
                MAX_METADATA,
                MAX_METADATA_KEY,
                MAX_METADATA_VALUE,
            ),
        ] {
            let f = &p[field];
            assert_eq!(f["maxProperties"], entries, "{field}");
            assert_eq!(f["propertyNames"]["maxLength"], name, "{field}");
            assert_eq!(f["propertyNames"]["minLength"], 1, "{field}");
            assert_eq!(f["additionalProperties"]["maxLength"], value, "{field}");
        }
        assert!(
            p["envVars"]["propertyNames"]["pattern"]
                .as_str()
                .unwrap()
                .contains('=')
        );
    }

    /// Every `{name}` in a documented path is declared as a path parameter of each of its
    /// operations (schemathesis refuses an operation that does not: the metrics route once lost
    /// its `sandboxID` when its query parameters were added).
    #[test]
    fn the_openapi_document_declares_every_path_parameter() {
        let doc: serde_json::Value = serde_json::from_str(crate::OPENAPI).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let names: Vec<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|s| s.split_once('}').map(|(n, _)| n))
                .collect();
            for (method, op) in item.as_object().unwrap() {
                let Some(op) = op.as_object() else { continue };
                let declared: Vec<&str> = op
                    .get("parameters")
                    .and_then(|p| p.as_array())
                    .into_iter()
                    .flatten()
                    .chain(
                        item.get("parameters")
                            .and_then(|p| p.as_array())
                            .into_iter()
                            .flatten(),
                    )
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                for n in &names {
                    assert!(
                        declared.contains(n),
                        "{method} {path} does not declare `{n}`"
                    );
                }
            }
        }
    }
}
