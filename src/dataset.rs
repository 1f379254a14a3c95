//! Training data for `tenets train`: preference pairs and supervised conversations, read from
//! JSONL or Parquet in TRL's formats — conversational (`prompt`/`chosen`/`rejected` as lists of
//! `{role, content}`, or `messages`) or plain strings — or taken from a tenets database through
//! the same rows `tenets export` writes. Text only: tokenizing is the trainer's business.
//!
//! Bad rows are all reported (file, line, field) and nothing trains: a silently shorter dataset
//! would be a different experiment.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chat::Message;

/// One training example: a prompt conversation, the preferred completion and (for preference
/// data) the rejected one.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Where it came from (`file:line`), for messages about it.
    pub origin: String,
    pub prompt: Vec<Message>,
    /// The completion's messages (usually one assistant message).
    pub chosen: Vec<Message>,
    pub rejected: Option<Vec<Message>>,
    /// p(chosen ≻ rejected): a soft label from `tenets label`, 1 when the data has none.
    pub label: f64,
}

/// A row that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read training data {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("training data {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: crate::parquet::ParquetError,
    },
    #[error("{path}: {count} bad row(s), nothing was trained:\n{lines}", count = bad.len(), lines = listing(path, bad))]
    Rows { path: PathBuf, bad: Vec<BadRow> },
    #[error("{path}: no training examples")]
    Empty { path: PathBuf },
}

fn listing(path: &Path, bad: &[BadRow]) -> String {
    let mut out: Vec<String> = bad
        .iter()
        .take(10)
        .map(|b| format!("  {}:{}: {}", path.display(), b.line, b.message))
        .collect();
    if bad.len() > 10 {
        out.push(format!("  … and {} more", bad.len() - 10));
    }
    out.join("\n")
}

/// Reads a training file: `.parquet` through polars, anything else as JSON lines.
pub fn load(path: &Path) -> Result<Vec<Example>, DatasetError> {
    let is_parquet = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let bytes = if is_parquet {
        let columns = [
            "prompt", "chosen", "rejected", "messages", "p_chosen", "label",
        ];
        let (jsonl, _) = crate::parquet::rows_as_jsonl(path, &columns).map_err(|e| match e {
            crate::parquet::ParquetError::Read(source) => DatasetError::Read {
                path: path.to_path_buf(),
                source,
            },
            crate::parquet::ParquetError::Format(message) => DatasetError::Format {
                path: path.to_path_buf(),
                message,
            },
        })?;
        jsonl
    } else {
        std::fs::read(path).map_err(|source| DatasetError::Read {
            path: path.to_path_buf(),
            source,
        })?
    };
    let text = String::from_utf8(bytes).map_err(|e| DatasetError::Format {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })?;
    from_jsonl(path, &text)
}

/// Parses JSON lines (blank lines skipped); every bad row is reported.
pub fn from_jsonl(path: &Path, text: &str) -> Result<Vec<Example>, DatasetError> {
    let mut examples = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        let parsed = serde_json::from_str::<Value>(line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| parse_row(&v, origin));
        match parsed {
            Ok(example) => examples.push(example),
            Err(message) => bad.push(BadRow {
                line: i + 1,
                message,
            }),
        }
    }
    if !bad.is_empty() {
        return Err(DatasetError::Rows {
            path: path.to_path_buf(),
            bad,
        });
    }
    if examples.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(examples)
}

/// One row: `{prompt, chosen, rejected?, label?}` or `{messages}`. Other members (ids,
/// provenance columns) are ignored.
pub fn parse_row(row: &Value, origin: String) -> Result<Example, String> {
    let Some(object) = row.as_object() else {
        return Err("expected a JSON object".into());
    };
    if let Some(messages) = object.get("messages") {
        let mut messages = messages_of(messages, "messages", "user")?;
        let Some(last) = messages.pop().filter(|m| m.role == "assistant") else {
            return Err("field `messages`: the last message must be the assistant's".into());
        };
        if messages.is_empty() {
            return Err("field `messages`: no prompt before the assistant's message".into());
        }
        return Ok(Example {
            origin,
            prompt: messages,
            chosen: vec![last],
            rejected: None,
            label: 1.0,
        });
    }
    let field = |name: &str| {
        object.get(name).ok_or_else(|| {
            format!(
                "missing field `{name}` (expected `prompt`, `chosen`, `rejected`, or `messages`)"
            )
        })
    };
    let prompt = messages_of(field("prompt")?, "prompt", "user")?;
    let chosen = messages_of(field("chosen")?, "chosen", "assistant")?;
    let rejected = match object.get("rejected") {
        Some(v) => Some(messages_of(v, "rejected", "assistant")?),
        None => None,
    };
    // The soft label is `p_chosen`; exports before it was renamed (TRL's `label` column is
    // KTO's boolean desirability) called it `label`, which is read as the same number.
    let (name, value) = match (object.get("p_chosen"), object.get("label")) {
        (Some(v), _) if !v.is_null() => ("p_chosen", Some(v)),
        (_, Some(v)) if !v.is_null() => ("label", Some(v)),
        _ => ("p_chosen", None),
    };
    let label = match value {
        None => 1.0,
        Some(v) => match v.as_f64() {
            Some(p) if (0.0..=1.0).contains(&p) => p,
            _ => {
                return Err(format!(
                    "field `{name}`: expected p(chosen ≻ rejected), a number in [0, 1], got {v}"
                ))
            }
        },
    };
    Ok(Example {
        origin,
        prompt,
        chosen,
        rejected,
        label,
    })
}

/// A string (one message with `role`) or a non-empty list of `{role, content}` messages.
fn messages_of(value: &Value, field: &str, role: &str) -> Result<Vec<Message>, String> {
    let shape = "expected a string or a list of {\"role\", \"content\"} messages";
    match value {
        Value::String(s) => Ok(vec![Message::new(role, s.clone())]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let text = |key: &str| item.get(key).and_then(Value::as_str).map(str::to_string);
                match (text("role"), text("content")) {
                    (Some(role), Some(content)) => Ok(Message { role, content }),
                    _ => Err(format!(
                        "field `{field}`, message {}: expected {{\"role\": string, \"content\": string}}",
                        i + 1
                    )),
                }
            })
            .collect(),
        Value::Array(_) => Err(format!("field `{field}`: the list is empty")),
        other => Err(format!("field `{field}`: {shape}, got {}", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Example, String> {
        parse_row(&serde_json::from_str(line).unwrap(), "t".into())
    }

    #[test]
    fn conversational_and_plain_rows_read_alike() {
        let conv = parse(
            r#"{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}], "rejected": [{"role": "assistant", "content": "go away"}], "kind": "benign"}"#,
        )
        .unwrap();
        let plain = parse(r#"{"prompt": "hi", "chosen": "hello", "rejected": "go away"}"#).unwrap();
        assert_eq!(conv, plain);
        assert_eq!(conv.label, 1.0);
        let sft = parse(r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#).unwrap();
        assert_eq!(
            (sft.prompt, sft.chosen, sft.rejected),
            (conv.prompt, conv.chosen, None)
        );
    }

    #[test]
    fn bad_rows_name_the_field() {
        let cases = [
            (r#"{"prompt": "hi"}"#, "missing field `chosen`"),
            (
                r#"{"prompt": 3, "chosen": "a"}"#,
                "field `prompt`: expected a string",
            ),
            (
                r#"{"prompt": "hi", "chosen": []}"#,
                "field `chosen`: the list is empty",
            ),
            (
                r#"{"prompt": "hi", "chosen": [{"role": "assistant"}]}"#,
                "field `chosen`, message 1",
            ),
            (
                r#"{"prompt": "hi", "chosen": "a", "label": 1.5}"#,
                "field `label`",
            ),
            (
                r#"{"prompt": "hi", "chosen": "a", "p_chosen": -0.5}"#,
                "field `p_chosen`: expected p(chosen ≻ rejected)",
            ),
            (
                r#"{"prompt": "hi", "chosen": "a", "rejected": "b", "label": true}"#,
                "field `label`",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
                "must be the assistant's",
            ),
            (r#"[1]"#, "expected a JSON object"),
        ];
        for (line, expected) in cases {
            let err = parse(line).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = "{\"prompt\": \"a\", \"chosen\": \"b\"}\n\nnot json\n{\"prompt\": \"a\"}\n";
        let Err(DatasetError::Rows { bad, .. }) = from_jsonl(Path::new("d.jsonl"), text) else {
            panic!("expected bad rows");
        };
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![3, 4]);
    }
}
