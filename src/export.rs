//! Dataset export for the HF/TRL ecosystem: DPO pairs and SFT conversations, as JSONL or Parquet.
//!
//! DPO rows use TRL's conversational format — `prompt` (the user messages), `chosen` and
//! `rejected`, each a list of `{role, content}` — and SFT rows a `messages` list. A DPO pair is the
//! final revision against the original answer; once `tenets label` has judged it, the pair is
//! oriented by the latest judge's soft label (`chosen_is_revision` says which way), with `label`
//! = p(chosen ≻ rejected) ≥ 0.5 and `weight` = 2·label − 1 for cDPO-style training. Every row carries its provenance (run, model and constitution hashes,
//! principles, sampling settings). Parquet is written through polars from the same rows, so the
//! two formats cannot disagree. Files are written to a temporary name and renamed into place:
//! an interrupted export leaves nothing half-written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sqlx::Row;

use crate::chat::Message;
use crate::filters::{Dropped, PairFilters};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Preference pairs (prompt, chosen, rejected).
    Dpo,
    /// Supervised conversations ending in the final revision.
    Sft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Parquet,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("corrupt row in the database: {0}")]
    Corrupt(String),
}

/// Export rows and what the filters left out.
#[derive(Debug, Clone, Default)]
pub struct ExportRows {
    pub rows: Vec<Value>,
    pub dropped: BTreeMap<Dropped, usize>,
}

/// Builds the export rows (as JSON objects) from a store, leaving out what `filters` drop.
pub async fn rows(
    store: &Store,
    kind: Kind,
    filters: &PairFilters,
) -> Result<ExportRows, ExportError> {
    let sql = "SELECT p.id, p.messages, p.kind, r.id, r.model_sha256, r.chat_template_sha256, \
               r.constitution_name, r.constitution_sha256, r.template_sha256, r.rounds, \
               r.temperature, r.top_p, r.max_tokens, r.seed, \
               c.output, c.finish, a.output, a.finish, \
               (SELECT json_group_array(principle_id) FROM \
                  (SELECT principle_id FROM steps s WHERE s.run_id = pr.run_id \
                   AND s.prompt_id = pr.prompt_id AND s.stage = 'critique' ORDER BY s.round)), \
               (SELECT l.p_chosen FROM labels l JOIN judges j ON j.id = l.judge_id \
                  WHERE l.pair_id = pr.id ORDER BY j.created_at DESC, j.id LIMIT 1), \
               (SELECT l.judge_id FROM labels l JOIN judges j ON j.id = l.judge_id \
                  WHERE l.pair_id = pr.id ORDER BY j.created_at DESC, j.id LIMIT 1) \
               FROM pairs pr \
               JOIN prompts p ON p.id = pr.prompt_id \
               JOIN runs r ON r.id = pr.run_id \
               JOIN steps c ON c.id = pr.chosen_step \
               JOIN steps a ON a.id = pr.rejected_step \
               ORDER BY r.created_at, p.source, p.line";
    let db_rows = sqlx::query(sql)
        .fetch_all(store.pool())
        .await
        .map_err(store.err())?;
    let mut out = ExportRows::default();
    for row in db_rows {
        let messages: Vec<Message> = serde_json::from_str(row.get::<&str, _>(1))
            .map_err(|e| ExportError::Corrupt(format!("prompt messages: {e}")))?;
        let principles: Value = serde_json::from_str(row.get::<&str, _>(18))
            .map_err(|e| ExportError::Corrupt(format!("principles: {e}")))?;
        let chosen: String = row.get(14);
        let rejected: String = row.get(16);
        let p_revision: Option<f64> = row.get(19);
        let judge_id: Option<String> = row.get(20);
        let (finish_c, finish_r) = (row.get::<String, _>(15), row.get::<String, _>(17));
        let benign = row.get::<Option<String>, _>(2).as_deref() == Some("benign");
        // The answer that would be exported as chosen: the revision unless a label says otherwise.
        let revision_wins = p_revision.is_none_or(|p| p >= 0.5);
        let verdict = match kind {
            Kind::Dpo => {
                let (answers, finishes) = if revision_wins {
                    (
                        [chosen.as_str(), rejected.as_str()],
                        [finish_c.as_str(), finish_r.as_str()],
                    )
                } else {
                    (
                        [rejected.as_str(), chosen.as_str()],
                        [finish_r.as_str(), finish_c.as_str()],
                    )
                };
                filters.check(
                    finishes,
                    answers,
                    p_revision.map(|p| (2.0 * p - 1.0).abs()),
                    benign,
                )
            }
            // An SFT row is the revision alone: its truncation and refusal matter.
            Kind::Sft => filters.check([&finish_c, "stop"], [&chosen, ""], None, benign),
        };
        if let Some(reason) = verdict {
            *out.dropped.entry(reason).or_default() += 1;
            continue;
        }
        let mut value = match kind {
            Kind::Dpo => {
                // A judged pair is oriented by its label: the revision is not assumed to win.
                let (chosen, rejected, chosen_finish, rejected_finish) = if revision_wins {
                    (chosen, rejected, finish_c, finish_r)
                } else {
                    (rejected, chosen, finish_r, finish_c)
                };
                let label = p_revision.map(|p| p.max(1.0 - p));
                json!({
                    "prompt": messages,
                    "chosen": [Message::assistant(chosen)],
                    "rejected": [Message::assistant(rejected)],
                    "chosen_finish": chosen_finish,
                    "rejected_finish": rejected_finish,
                    "chosen_is_revision": revision_wins,
                    "label": label,
                    "weight": label.map(|l| 2.0 * l - 1.0),
                    "judge_id": judge_id,
                })
            }
            Kind::Sft => {
                let mut conversation = messages;
                conversation.push(Message::assistant(chosen));
                json!({
                    "messages": conversation,
                    "finish": finish_c,
                })
            }
        };
        let provenance = json!({
            "prompt_id": row.get::<String, _>(0),
            "kind": row.get::<Option<String>, _>(2),
            "run_id": row.get::<String, _>(3),
            "model_sha256": row.get::<String, _>(4),
            "chat_template_sha256": row.get::<String, _>(5),
            "constitution": row.get::<String, _>(6),
            "constitution_sha256": row.get::<String, _>(7),
            "template_sha256": row.get::<String, _>(8),
            "rounds": row.get::<i64, _>(9),
            "temperature": row.get::<f64, _>(10),
            "top_p": row.get::<f64, _>(11),
            "max_tokens": row.get::<i64, _>(12),
            "seed": row.get::<i64, _>(13),
            "principles": principles,
        });
        if let (Some(obj), Value::Object(extra)) = (value.as_object_mut(), provenance) {
            obj.extend(extra);
        }
        out.rows.push(value);
    }
    if let Some(ratio) = filters.helpful_ratio {
        let kinds: Vec<Option<&str>> = out.rows.iter().map(|r| r["kind"].as_str()).collect();
        let keys: Vec<&str> = out
            .rows
            .iter()
            .map(|r| r["prompt_id"].as_str().unwrap_or(""))
            .collect();
        let keep = crate::filters::balance(&kinds, &keys, ratio);
        let dropped = keep.iter().filter(|k| !**k).count();
        if dropped > 0 {
            out.dropped.insert(Dropped::HelpfulRatio, dropped);
        }
        let mut keep = keep.into_iter();
        out.rows.retain(|_| keep.next().unwrap_or(true));
    }
    Ok(out)
}

/// Writes the export file; returns the rows written and what the filters dropped.
pub async fn export(
    store: &Store,
    kind: Kind,
    format: Format,
    filters: &PairFilters,
    out: &Path,
) -> Result<ExportRows, ExportError> {
    let exported = rows(store, kind, filters).await?;
    let rows = &exported.rows;
    let mut jsonl = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut jsonl, row).map_err(|e| ExportError::Corrupt(e.to_string()))?;
        jsonl.push(b'\n');
    }
    let bytes = match format {
        Format::Jsonl => jsonl,
        Format::Parquet => {
            to_parquet(&jsonl, rows.len()).map_err(|message| ExportError::Write {
                path: out.to_path_buf(),
                message,
            })?
        }
    };
    write_atomically(out, &bytes)?;
    Ok(exported)
}

fn to_parquet(jsonl: &[u8], n_rows: usize) -> Result<Vec<u8>, String> {
    use polars::prelude::*;
    let mut df = if n_rows == 0 {
        DataFrame::empty()
    } else {
        JsonReader::new(std::io::Cursor::new(jsonl))
            .with_json_format(JsonFormat::JsonLines)
            .infer_schema_len(None)
            .finish()
            .map_err(|e| e.to_string())?
    };
    // A column that is null in every row (say, `kind`) has no type; Parquet wants one.
    let null_columns: Vec<PlSmallStr> = df
        .get_columns()
        .iter()
        .filter(|c| c.dtype() == &DataType::Null)
        .map(|c| c.name().clone())
        .collect();
    for name in null_columns {
        let len = df.height();
        let typed = Series::full_null(name.clone(), len, &DataType::String);
        df.with_column(typed).map_err(|e| e.to_string())?;
    }
    let mut out = Vec::new();
    ParquetWriter::new(&mut out)
        .finish(&mut df)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// [`crate::atomic::write`], with the error naming the file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    crate::atomic::write(path, bytes).map_err(|e| ExportError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
