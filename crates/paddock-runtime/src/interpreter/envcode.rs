//! Code that sets (and later restores) environment variables inside a
//! kernel, per language.

use std::collections::BTreeMap;

use super::contexts::Language;

/// True for names every shell and `os.environ` accept.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn json_string(s: &str) -> String {
    // A JSON string literal is also a valid Python string literal.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Sets `vars`; for `restore`, remembers the previous values first.
pub fn set(language: Language, vars: &BTreeMap<String, String>, remember: bool) -> String {
    match language {
        Language::Python => {
            let mut code = String::from("import os as __paddock_os\n");
            if remember {
                code.push_str("__paddock_saved = {}\n");
            }
            for (k, v) in vars {
                let (k, v) = (json_string(k), json_string(v));
                if remember {
                    code.push_str(&format!(
                        "__paddock_saved[{k}] = __paddock_os.environ.get({k})\n"
                    ));
                }
                code.push_str(&format!("__paddock_os.environ[{k}] = {v}\n"));
            }
            code
        }
        Language::Bash => {
            let mut code = String::new();
            for (k, v) in vars {
                if remember {
                    code.push_str(&format!(
                        "__paddock_had_{k}=${{{k}+x}}; __paddock_old_{k}=\"${{{k}-}}\"\n"
                    ));
                }
                code.push_str(&format!("export {k}={}\n", shell_quote(v)));
            }
            code
        }
    }
}

/// Puts back what `set(.., remember = true)` saved.
pub fn restore(language: Language, vars: &BTreeMap<String, String>) -> String {
    match language {
        Language::Python => "for __k, __v in __paddock_saved.items():\n    \
             if __v is None: __paddock_os.environ.pop(__k, None)\n    \
             else: __paddock_os.environ[__k] = __v\n\
             del __paddock_saved\n"
            .to_string(),
        Language::Bash => vars
            .keys()
            .map(|k| {
                format!(
                    "if [ -n \"$__paddock_had_{k}\" ]; then export {k}=\"$__paddock_old_{k}\"; else unset {k}; fi; \
                     unset __paddock_had_{k} __paddock_old_{k}\n"
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("FOO_1") && valid_name("_x"));
        assert!(!valid_name("1A") && !valid_name("A-B") && !valid_name("") && !valid_name("a b"));
    }

    #[test]
    fn values_are_quoted_for_each_language() {
        let vars = BTreeMap::from([("Q".to_string(), "it's \"x\"\n".to_string())]);
        let py = set(Language::Python, &vars, false);
        assert!(
            py.contains(r#"__paddock_os.environ["Q"] = "it's \"x\"\n""#),
            "{py}"
        );
        let sh = set(Language::Bash, &vars, false);
        assert!(sh.contains(r#"export Q='it'\''s "x""#), "{sh}");
    }
}
