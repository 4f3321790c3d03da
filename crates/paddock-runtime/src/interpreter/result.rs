//! Turning Jupyter's MIME bundles into the code interpreter's `result` lines.

use serde_json::{Map, Value};

/// MIME type → field name in a `result` line, as the SDKs read them.
const FIELDS: &[(&str, &str)] = &[
    ("text/plain", "text"),
    ("text/html", "html"),
    ("text/markdown", "markdown"),
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("application/pdf", "pdf"),
    ("text/latex", "latex"),
    ("application/json", "json"),
    ("application/javascript", "javascript"),
    ("e2b/data", "data"),
    ("e2b/chart", "chart"),
];

/// Builds a `result` line from a display or execute-result bundle.
pub fn result_line(bundle: &Value, is_main_result: bool) -> Value {
    let mut line = Map::new();
    line.insert("type".into(), "result".into());
    let mut extra = Map::new();
    if let Some(map) = bundle.as_object() {
        for (mime, value) in map {
            match FIELDS.iter().find(|(m, _)| m == mime) {
                Some((_, "text")) => {
                    line.insert("text".into(), Value::String(plain_text(value)));
                }
                Some((_, field)) => {
                    line.insert((*field).into(), normalise(value));
                }
                None => {
                    extra.insert(mime.clone(), value.clone());
                }
            }
        }
    }
    line.insert("is_main_result".into(), Value::Bool(is_main_result));
    if !extra.is_empty() {
        line.insert("extra".into(), Value::Object(extra));
    }
    Value::Object(line)
}

/// Kernels may split text into a list of lines; images may carry newlines.
fn normalise(value: &Value) -> Value {
    match value {
        Value::Array(parts) if parts.iter().all(Value::is_string) => {
            Value::String(parts.iter().filter_map(Value::as_str).collect())
        }
        other => other.clone(),
    }
}

/// `text/plain` without the quotes Python puts around a string's repr.
fn plain_text(value: &Value) -> String {
    let text = match normalise(value) {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let b = text.as_bytes();
    if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] {
        text[1..text.len() - 1].to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_known_mime_types_and_keeps_the_rest_as_extra() {
        let line = result_line(
            &json!({"text/plain": "2", "image/png": "iVBOR", "application/json": {"a": 1},
                    "application/vnd.custom": "x"}),
            true,
        );
        assert_eq!(line["type"], "result");
        assert_eq!(line["text"], "2");
        assert_eq!(line["png"], "iVBOR");
        assert_eq!(line["json"], json!({"a": 1}));
        assert_eq!(line["is_main_result"], true);
        assert_eq!(line["extra"]["application/vnd.custom"], "x");
    }

    #[test]
    fn strips_repr_quotes_and_joins_line_lists() {
        assert_eq!(
            result_line(&json!({"text/plain": "'abc'"}), false)["text"],
            "abc"
        );
        assert_eq!(
            result_line(&json!({"text/plain": "\"q\""}), false)["text"],
            "q"
        );
        assert_eq!(
            result_line(&json!({"text/plain": "'unbalanced"}), false)["text"],
            "'unbalanced"
        );
        assert_eq!(
            result_line(&json!({"text/html": ["<b>", "x</b>"]}), false)["html"],
            "<b>x</b>"
        );
        assert!(result_line(&json!({}), false).get("extra").is_none());
    }
}
