//! Prompt sets: the user prompts a run works through, read from JSONL, CSV, plain text or Parquet.
//!
//! Every prompt becomes a list of chat messages ending in a user turn, keyed by a hash of its
//! content, so the same prompt in two files (or twice in one) is one item. A bad line never stops
//! the others: it is reported with its line number, and the caller decides (`--strict`) whether
//! any bad line aborts the run before it starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chat::Message;
use crate::filters;
use crate::hash;

/// Longest prompt accepted, in bytes; longer lines are reported, not loaded.
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;

/// One prompt of a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptItem {
    /// Content hash of `messages`.
    pub id: String,
    pub messages: Vec<Message>,
    /// Free-form category from the file (for example "harmful" or "benign").
    pub kind: Option<String>,
    /// What the prompt is about (a constitution topic, for `tenets redteam` prompts and the
    /// evaluation sets): evaluation results are broken down by it.
    #[serde(default)]
    pub topic: Option<String>,
    /// How the prompt asks (a red-team attack style such as "role-play", or "look-alike").
    #[serde(default)]
    pub style: Option<String>,
    /// Line (or row) in the source file, 1-based.
    pub line: usize,
}

impl PromptItem {
    pub fn new(messages: Vec<Message>, kind: Option<String>, line: usize) -> Self {
        PromptItem {
            id: hash::of_json(&messages),
            messages,
            kind,
            topic: None,
            style: None,
            line,
        }
    }

    /// The same prompt with its topic and attack style (empty strings count as none).
    pub fn with_tags(mut self, topic: Option<String>, style: Option<String>) -> Self {
        self.topic = topic.filter(|t| !t.trim().is_empty());
        self.style = style.filter(|s| !s.trim().is_empty());
        self
    }

    /// The last user message: what a one-line view of this prompt shows.
    pub fn text(&self) -> &str {
        self.messages.last().map_or("", |m| m.content.as_str())
    }
}

/// Which of `n` shards a prompt belongs to: its content hash's first 64 bits modulo `n`, so every
/// task of an array job (`--shard i/N`) picks its part of the same file with no coordination, and
/// the parts are disjoint and complete.
pub fn shard_of(prompt_id: &str, n: usize) -> usize {
    let head = prompt_id.get(..16).unwrap_or(prompt_id);
    let value = u64::from_str_radix(head, 16).unwrap_or_else(|_| {
        // Not a hex hash (never the case for ids made here): hash the text instead.
        let digest = hash::of_parts(&[prompt_id]);
        u64::from_str_radix(&digest[..16], 16).unwrap_or(0)
    });
    (value % n.max(1) as u64) as usize
}

/// A line that could not be read as a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// The prompts of one file, and the lines that were skipped.
#[derive(Debug, Clone, Default)]
pub struct PromptSet {
    pub path: PathBuf,
    pub items: Vec<PromptItem>,
    pub bad: Vec<BadLine>,
    /// Prompts left out because they repeat an earlier one, exactly or nearly.
    pub duplicates: Vec<Duplicate>,
}

/// A prompt left out as a duplicate, and the one it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub line: usize,
    /// True for the same messages; false for a near-duplicate (MinHash, see `filters`).
    pub exact: bool,
    pub of_line: usize,
    pub of_id: String,
}

impl PromptSet {
    /// Every bad line as `file:line: message`.
    pub fn report(&self) -> Vec<String> {
        self.bad
            .iter()
            .map(|b| format!("{}:{}: {}", self.path.display(), b.line, b.message))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read prompt file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// The JSONL line shape: either `prompt` or `messages`. Other fields (ids, categories, sources
/// that datasets carry) are ignored.
#[derive(Deserialize)]
struct JsonLine {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    style: Option<String>,
}

/// Reads a prompt file; the format follows the extension (`.jsonl`/`.json`, `.csv`,
/// `.parquet`, anything else is one prompt per line).
pub fn load(path: &Path) -> Result<PromptSet, PromptError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let read = || {
        std::fs::read(path).map_err(|source| PromptError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let rows = match ext.as_str() {
        "jsonl" | "json" | "ndjson" => parse_jsonl(&read()?),
        "csv" => parse_csv(&read()?).map_err(|message| PromptError::Format {
            path: path.to_path_buf(),
            message,
        })?,
        "parquet" => {
            let jsonl = parquet_as_jsonl(path)?;
            parse_jsonl(&jsonl)
        }
        _ => parse_text(&read()?),
    };
    let mut set = PromptSet {
        path: path.to_path_buf(),
        ..PromptSet::default()
    };
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for row in rows {
        match row {
            Ok(item) => {
                if let Some(first) = first_line.get(&item.id) {
                    set.duplicates.push(Duplicate {
                        line: item.line,
                        exact: true,
                        of_line: *first,
                        of_id: item.id.clone(),
                    });
                } else {
                    first_line.insert(item.id.clone(), item.line);
                    set.items.push(item);
                }
            }
            Err(bad) => set.bad.push(bad),
        }
    }
    drop_near_duplicates(&mut set);
    if set.items.is_empty() && set.bad.is_empty() {
        return Err(PromptError::Format {
            path: path.to_path_buf(),
            message: "no prompts found".into(),
        });
    }
    Ok(set)
}

/// Leaves out prompts that nearly repeat an earlier one (same words up to case, punctuation and
/// a few changes), recording which one each matched.
fn drop_near_duplicates(set: &mut PromptSet) {
    let texts: Vec<String> = set
        .items
        .iter()
        .map(|i| {
            i.messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let found = filters::near_duplicates(&refs, filters::NEAR_DUPLICATE);
    if found.is_empty() {
        return;
    }
    let mut dropped = vec![false; set.items.len()];
    for &(i, j) in &found {
        dropped[i] = true;
        set.duplicates.push(Duplicate {
            line: set.items[i].line,
            exact: false,
            of_line: set.items[j].line,
            of_id: set.items[j].id.clone(),
        });
    }
    let mut keep = dropped.iter().map(|d| !d);
    set.items.retain(|_| keep.next().unwrap_or(true));
    set.duplicates.sort_by_key(|d| d.line);
}

type Row = Result<PromptItem, BadLine>;

/// Splits bytes into lines, decoding each on its own so one bad byte costs one line.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, Result<&str, String>)> {
    bytes.split(|b| *b == b'\n').enumerate().map(|(i, raw)| {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = if i == 0 {
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
        } else {
            raw
        };
        let text = if raw.len() > MAX_PROMPT_BYTES {
            Err(format!(
                "line is {} bytes, over the {} byte limit",
                raw.len(),
                MAX_PROMPT_BYTES
            ))
        } else {
            std::str::from_utf8(raw)
                .map_err(|e| format!("not valid UTF-8 (at byte {} of the line)", e.valid_up_to()))
        };
        (i + 1, text)
    })
}

fn check_messages(messages: Vec<Message>, kind: Option<String>, line: usize) -> Row {
    let bad = |message: String| Err(BadLine { line, message });
    if messages.is_empty() {
        return bad("`messages` is empty".into());
    }
    for (i, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return bad(format!(
                "`messages[{i}].role` is `{}`; expected system, user or assistant",
                m.role
            ));
        }
    }
    match messages.last() {
        Some(m) if m.role != "user" => {
            return bad("the last message must be from the user".into());
        }
        Some(m) if m.content.trim().is_empty() => return bad("the prompt is empty".into()),
        _ => {}
    }
    Ok(PromptItem::new(messages, kind, line))
}

fn parse_jsonl(bytes: &[u8]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (line, text) in lines(bytes) {
        let text = match text {
            Ok(t) if t.trim().is_empty() => continue,
            Ok(t) => t,
            Err(message) => {
                rows.push(Err(BadLine { line, message }));
                continue;
            }
        };
        let parsed: JsonLine = match serde_json::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                rows.push(Err(BadLine {
                    line,
                    message: format!("invalid JSON: {e}"),
                }));
                continue;
            }
        };
        let tags =
            |row: Row| row.map(|item| item.with_tags(parsed.topic.clone(), parsed.style.clone()));
        let row = match (parsed.prompt.clone(), parsed.messages.clone()) {
            (Some(_), Some(_)) => Err(BadLine {
                line,
                message: "give either `prompt` or `messages`, not both".into(),
            }),
            (Some(prompt), None) => tags(check_messages(
                vec![Message::user(prompt)],
                parsed.kind.clone(),
                line,
            )),
            (None, Some(messages)) => tags(check_messages(messages, parsed.kind.clone(), line)),
            (None, None) => {
                let found: Vec<String> =
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                        .map(|m| m.keys().map(|k| format!("`{k}`")).collect())
                        .unwrap_or_default();
                Err(BadLine {
                    line,
                    message: format!(
                        "missing field `prompt` (or `messages`); the line has {}",
                        if found.is_empty() {
                            "no fields".to_string()
                        } else {
                            found.join(", ")
                        }
                    ),
                })
            }
        };
        rows.push(row);
    }
    rows
}

fn parse_text(bytes: &[u8]) -> Vec<Row> {
    lines(bytes)
        .filter_map(|(line, text)| match text {
            Ok(t) if t.trim().is_empty() => None,
            Ok(t) => Some(Ok(PromptItem::new(vec![Message::user(t)], None, line))),
            Err(message) => Some(Err(BadLine { line, message })),
        })
        .collect()
}

/// CSV with a header row naming a `prompt` column (and optionally `kind`, `topic`, `style`).
fn parse_csv(bytes: &[u8]) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let headers = reader
        .byte_headers()
        .map_err(|e| format!("cannot read the CSV header: {e}"))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name.as_bytes()))
    };
    let prompt_col = column("prompt").ok_or("the CSV header has no `prompt` column")?;
    let kind_col = column("kind");
    let (topic_col, style_col) = (column("topic"), column("style"));
    let mut rows = Vec::new();
    for record in reader.byte_records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                rows.push(Err(BadLine {
                    line,
                    message: format!("malformed CSV: {e}"),
                }));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let field = |i: usize| -> Result<String, String> {
            let raw = record.get(i).unwrap_or_default();
            if raw.len() > MAX_PROMPT_BYTES {
                return Err(format!("field is over the {MAX_PROMPT_BYTES} byte limit"));
            }
            String::from_utf8(raw.to_vec()).map_err(|_| "not valid UTF-8".to_string())
        };
        let row = match (field(prompt_col), kind_col.map(field).transpose()) {
            (Ok(p), _) if p.trim().is_empty() => Err(BadLine {
                line,
                message: "the `prompt` field is empty".into(),
            }),
            (Ok(p), Ok(kind)) => {
                let tag = |col: Option<usize>| col.and_then(|i| field(i).ok());
                Ok(
                    PromptItem::new(vec![Message::user(p)], kind.filter(|k| !k.is_empty()), line)
                        .with_tags(tag(topic_col), tag(style_col)),
                )
            }
            (Err(message), _) | (_, Err(message)) => Err(BadLine { line, message }),
        };
        rows.push(row);
    }
    Ok(rows)
}

/// Reads a Parquet file's prompt columns as JSON lines (see [`crate::parquet`]).
fn parquet_as_jsonl(path: &Path) -> Result<Vec<u8>, PromptError> {
    let columns = ["prompt", "messages", "kind", "topic", "style"];
    let (jsonl, found) = crate::parquet::rows_as_jsonl(path, &columns).map_err(|e| match e {
        crate::parquet::ParquetError::Read(source) => PromptError::Read {
            path: path.to_path_buf(),
            source,
        },
        crate::parquet::ParquetError::Format(message) => PromptError::Format {
            path: path.to_path_buf(),
            message,
        },
    })?;
    if !found.iter().any(|c| c == "prompt" || c == "messages") {
        return Err(PromptError::Format {
            path: path.to_path_buf(),
            message: "no `prompt` or `messages` column".into(),
        });
    }
    Ok(jsonl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_ignores_extra_fields_and_names_what_it_found() {
        let rows =
            parse_jsonl(b"{\"prompt\": \"hi\", \"category\": \"x\"}\n{\"promt\": \"typo\"}\n");
        assert!(rows[0].is_ok());
        let bad = rows[1].as_ref().unwrap_err();
        assert!(bad.message.contains("`promt`"), "{}", bad.message);
    }

    #[test]
    fn shards_are_disjoint_complete_and_stable() {
        let ids: Vec<String> = (0..200)
            .map(|i| hash::of_parts(&[&i.to_string()]))
            .collect();
        let mut sizes = [0usize; 3];
        for id in &ids {
            let s = shard_of(id, 3);
            assert_eq!(s, shard_of(id, 3));
            sizes[s] += 1;
        }
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.iter().all(|&n| n > 40), "{sizes:?}");
        assert!(ids.iter().all(|id| shard_of(id, 1) == 0));
    }

    #[test]
    fn jsonl_keeps_topic_and_style() {
        let rows = parse_jsonl(
            b"{\"prompt\": \"hi\", \"kind\": \"harmful\", \"topic\": \"stalking\", \"style\": \"role-play\"}\n",
        );
        let item = rows[0].as_ref().unwrap();
        assert_eq!(item.topic.as_deref(), Some("stalking"));
        assert_eq!(item.style.as_deref(), Some("role-play"));
        // Tags are metadata: the prompt's identity is its messages alone.
        assert_eq!(item.id, PromptItem::new(item.messages.clone(), None, 1).id);
    }

    #[test]
    fn jsonl_reports_bad_lines_and_keeps_good_ones() {
        let rows = parse_jsonl(
            b"{\"prompt\": \"hi\"}\n\nnot json\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n{\"other\": 1}\n\xff\n",
        );
        let bad: Vec<usize> = rows
            .iter()
            .filter_map(|r| r.as_ref().err().map(|b| b.line))
            .collect();
        assert_eq!(bad, vec![3, 5, 6]);
        assert_eq!(rows.iter().filter(|r| r.is_ok()).count(), 2);
    }

    #[test]
    fn template_syntax_is_kept_verbatim() {
        let rows = parse_text(b"What does {{ x }} and {% if a %} mean?\n");
        let item = rows[0].as_ref().unwrap();
        assert_eq!(item.text(), "What does {{ x }} and {% if a %} mean?");
    }

    #[test]
    fn csv_needs_a_prompt_column() {
        assert!(parse_csv(b"text\nhello\n").is_err());
        let rows =
            parse_csv(b"prompt,kind,topic\nhello,benign,greetings\n\"multi\nline\",,\n").unwrap();
        assert_eq!(rows.len(), 2);
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.kind.as_deref(), Some("benign"));
        assert_eq!(first.topic.as_deref(), Some("greetings"));
        assert_eq!(rows[1].as_ref().unwrap().topic, None);
        assert_eq!(first.line, 2);
    }

    #[test]
    fn last_message_must_be_user() {
        let rows =
            parse_jsonl(b"{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}\n");
        assert!(rows[0]
            .as_ref()
            .unwrap_err()
            .message
            .contains("last message"));
    }
}
