//! Checks a positioned YAML tree against a JSON Schema and reports every violation.
//!
//! The schema is the one `tenets schema` prints (derived from the Rust types), so the editor's
//! validation and ours can never drift apart. Only the subset of JSON Schema that schemars emits
//! for our types is understood: `$ref`, `allOf`/`anyOf`, `type`, `properties`, `required`,
//! `additionalProperties: false`, `items`, `minItems`, `minLength`, `minimum`, `exclusiveMinimum`, `maximum`, `enum`.

use serde_json::Value as J;

use super::yaml::{Node, Pos, Scalar, Value};

/// One violation: where, and what is wrong in words an author understands.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub pos: Pos,
    pub message: String,
}

pub fn validate(node: &Node, schema: &J) -> Vec<Violation> {
    let mut out = Vec::new();
    Checker { root: schema }.check(node, schema, "", &mut out);
    out
}

struct Checker<'s> {
    root: &'s J,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_matches(node: &Node, ty: &str) -> bool {
    matches!(
        (&node.value, ty),
        (Value::Scalar(Scalar::Null), "null")
            | (Value::Scalar(Scalar::Bool(_)), "boolean")
            | (Value::Scalar(Scalar::Int(_)), "integer" | "number")
            | (Value::Scalar(Scalar::Float(_)), "number")
            | (Value::Scalar(Scalar::Str(_)), "string")
            | (Value::Seq(_), "array")
            | (Value::Map(_), "object")
    )
}

fn type_word(ty: &str) -> &'static str {
    match ty {
        "null" => "null",
        "boolean" => "a boolean",
        "integer" => "an integer",
        "number" => "a number",
        "string" => "a string",
        "array" => "a list",
        "object" => "a mapping",
        _ => "a value",
    }
}

/// Edit distance, for "did you mean" hints on misspelt field names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl<'s> Checker<'s> {
    fn resolve(&self, schema: &'s J) -> &'s J {
        let mut s = schema;
        // Follow `$ref` and single-element `allOf` wrappers (schemars emits both).
        for _ in 0..16 {
            if let Some(r) = s.get("$ref").and_then(J::as_str) {
                let name = r.rsplit('/').next().unwrap_or_default();
                match self
                    .root
                    .get("definitions")
                    .or_else(|| self.root.get("$defs"))
                    .and_then(|d| d.get(name))
                {
                    Some(target) => s = target,
                    None => return s,
                }
            } else if let Some([only]) = s.get("allOf").and_then(J::as_array).map(Vec::as_slice) {
                s = only;
            } else {
                return s;
            }
        }
        s
    }

    fn check(&self, node: &Node, schema: &'s J, path: &str, out: &mut Vec<Violation>) {
        let schema = self.resolve(schema);
        let shown = if path.is_empty() { "document" } else { path };

        if let Some(options) = schema.get("anyOf").and_then(J::as_array) {
            // Try each; accept the first that yields no violation, else report the closest. An
            // optional section (`anyOf: [section, null]`) that is given is reported as the
            // section, never as "expected null".
            let is_null = |o: &J| self.resolve(o).get("type") == Some(&J::String("null".into()));
            let given = !matches!(node.to_json(), J::Null);
            let mut candidates: Vec<&J> =
                options.iter().filter(|o| !(given && is_null(o))).collect();
            if candidates.is_empty() {
                candidates = options.iter().collect();
            }
            let mut best: Option<Vec<Violation>> = None;
            for option in candidates {
                let mut v = Vec::new();
                self.check(node, option, path, &mut v);
                if v.is_empty() {
                    return;
                }
                if best.as_ref().is_none_or(|b| v.len() < b.len()) {
                    best = Some(v);
                }
            }
            out.extend(best.unwrap_or_default());
            return;
        }

        if let Some(ty) = schema.get("type") {
            let types: Vec<&str> = match ty {
                J::String(s) => vec![s.as_str()],
                J::Array(a) => a.iter().filter_map(J::as_str).collect(),
                _ => vec![],
            };
            if !types.is_empty() && !types.iter().any(|t| type_matches(node, t)) {
                let expected: Vec<&str> = types
                    .iter()
                    .filter(|t| **t != "null")
                    .map(|t| type_word(t))
                    .collect();
                let mut message = format!(
                    "`{shown}`: expected {}, found {}",
                    expected.join(" or "),
                    node.kind()
                );
                if types.contains(&"string") && matches!(node.value, Value::Scalar(_)) {
                    message.push_str(" (put the value in quotes)");
                }
                out.push(Violation {
                    pos: node.pos,
                    message,
                });
                return;
            }
        }

        if let Some(allowed) = schema.get("enum").and_then(J::as_array) {
            let here = node.to_json();
            if !allowed.contains(&here) {
                let names: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
                out.push(Violation {
                    pos: node.pos,
                    message: format!("`{shown}`: must be one of {}", names.join(", ")),
                });
            }
        }

        match &node.value {
            Value::Map(entries) => self.check_map(node, entries, schema, path, out),
            Value::Seq(items) => {
                if let Some(min) = schema.get("minItems").and_then(J::as_u64) {
                    if (items.len() as u64) < min {
                        out.push(Violation {
                            pos: node.pos,
                            message: if items.is_empty() {
                                format!("`{shown}`: must not be empty")
                            } else {
                                format!("`{shown}`: needs at least {min} items")
                            },
                        });
                    }
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item, item_schema, &format!("{shown}[{i}]"), out);
                    }
                }
            }
            Value::Scalar(Scalar::Str(s)) => {
                if let Some(min) = schema.get("minLength").and_then(J::as_u64) {
                    if (s.trim().chars().count() as u64) < min {
                        out.push(Violation {
                            pos: node.pos,
                            message: format!("`{shown}`: must not be empty"),
                        });
                    }
                }
            }
            Value::Scalar(Scalar::Int(_) | Scalar::Float(_)) => {
                let x = match node.value {
                    Value::Scalar(Scalar::Int(i)) => i as f64,
                    Value::Scalar(Scalar::Float(f)) => f,
                    _ => 0.0,
                };
                if !x.is_finite() {
                    out.push(Violation {
                        pos: node.pos,
                        message: format!("`{shown}`: must be a finite number"),
                    });
                }
                if let Some(min) = schema.get("minimum").and_then(J::as_f64) {
                    if x < min {
                        out.push(Violation {
                            pos: node.pos,
                            message: format!("`{shown}`: must be at least {min}, found {x}"),
                        });
                    }
                }
                if let Some(min) = schema.get("exclusiveMinimum").and_then(J::as_f64) {
                    if x <= min {
                        out.push(Violation {
                            pos: node.pos,
                            message: format!("`{shown}`: must be greater than {min}, found {x}"),
                        });
                    }
                }
                if let Some(max) = schema.get("maximum").and_then(J::as_f64) {
                    if x > max {
                        out.push(Violation {
                            pos: node.pos,
                            message: format!("`{shown}`: must be at most {max}, found {x}"),
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn check_map(
        &self,
        node: &Node,
        entries: &[(Node, Node)],
        schema: &'s J,
        path: &str,
        out: &mut Vec<Violation>,
    ) {
        let props = schema.get("properties").and_then(J::as_object);
        let closed = schema.get("additionalProperties") == Some(&J::Bool(false));
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in entries {
            let name = key.key_text();
            if seen.contains(&name) {
                out.push(Violation {
                    pos: key.pos,
                    message: format!("`{}`: field given twice", join(path, &name)),
                });
                continue;
            }
            seen.push(name.clone());
            match props.and_then(|p| p.get(&name)) {
                Some(sub) => self.check(value, sub, &join(path, &name), out),
                None if closed => {
                    let mut message = format!("unknown field `{}`", join(path, &name));
                    if let Some(props) = props {
                        let hint = props
                            .keys()
                            .map(|k| (distance(k, &name), k))
                            .filter(|(d, _)| *d <= 3)
                            .min();
                        match hint {
                            Some((_, k)) => message.push_str(&format!(", did you mean `{k}`?")),
                            None => {
                                let known: Vec<&str> = props.keys().map(String::as_str).collect();
                                message
                                    .push_str(&format!("; expected one of {}", known.join(", ")));
                            }
                        }
                    }
                    out.push(Violation {
                        pos: key.pos,
                        message,
                    });
                }
                None => {}
            }
        }
        // A block mapping's own mark can sit past its first key; point at that key instead.
        let at = entries.first().map_or(node.pos, |(k, _)| k.pos);
        if let Some(required) = schema.get("required").and_then(J::as_array) {
            for field in required.iter().filter_map(J::as_str) {
                if !seen.iter().any(|s| s == field) {
                    let where_ = if path.is_empty() {
                        "the document".to_string()
                    } else {
                        format!("`{path}`")
                    };
                    out.push(Violation {
                        pos: at,
                        message: format!("missing field `{field}` in {where_}"),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(distance("critique_request", "critique_requst"), 1);
        assert_eq!(distance("", "abc"), 3);
    }
}
