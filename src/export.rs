//! Dataset export for the HF/TRL ecosystem: DPO pairs and SFT conversations, as JSONL or Parquet.
//!
//! DPO rows use TRL's conversational format — `prompt` (the user messages), `chosen` and
//! `rejected`, each a list of `{role, content}` — and SFT rows a `messages` list. A `revision`
//! pair is the final revision against the original answer; once `tenets label` has judged it,
//! the pair is oriented by the latest judge's soft label (`chosen_is_revision` says which way),
//! with `p_chosen` = p(chosen ≻ rejected) ≥ 0.5 and `weight` = 2·p_chosen − 1 for cDPO-style
//! training (not `label`, which TRL reserves for KTO's desirability). A prompt's `sampled` answers (RL-CAI) are ranked by their pairwise labels
//! ([`crate::label::rank`]) and give the best against the worst (`chosen_sample`,
//! `rejected_sample`, `sample_scores`), or every pair by its label. Every row carries its
//! provenance (run, model and constitution hashes, principles, sampling settings). Parquet is written through polars from the same rows, so the
//! two formats cannot disagree. Files are written to a temporary name and renamed into place:
//! an interrupted export leaves nothing half-written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sqlx::Row;

use crate::chat::Message;
use crate::filters::{Dropped, PairFilters, SampledPairs};
use crate::label::rank;
use crate::store::{Store, StoreError, SAMPLED_PREFIX};

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

/// `tenets export`'s command line.
#[derive(clap::Args, Debug, Clone)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
pub struct ExportOptions {
    #[arg(long)]
    pub db: PathBuf,
    #[arg(long, value_enum, default_value_t = Kind::Dpo)]
    pub kind: Kind,
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    #[arg(short, long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub filters: PairFilters,
}

/// `tenets export`: the database's dataset written to `--out`.
pub async fn run(options: &ExportOptions) -> Result<ExportRows, ExportError> {
    options
        .filters
        .check_settings()
        .map_err(ExportError::Setting)?;
    let store = Store::open_existing(&options.db).await?;
    export(
        &store,
        options.kind,
        options.format,
        &options.filters,
        &options.out,
    )
    .await
}

/// What an export wrote and left out, as text.
pub fn render(rows: &ExportRows, out: &Path) -> String {
    let mut text = format!("wrote {} rows to {}\n", rows.rows.len(), out.display());
    for (reason, count) in &rows.dropped {
        text += &format!("  dropped {count}: {}\n", reason.as_str());
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Setting(String),
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

/// One stored candidate pair, as read for export.
struct Candidate {
    prompt_id: String,
    messages: Vec<Message>,
    /// The prompt's kind ("benign", "harmful" …).
    kind: Option<String>,
    run_id: String,
    strategy: String,
    /// The pair's first step (the revision; for sampled pairs the lower sample) and second.
    first: Answer,
    second: Answer,
    /// The latest judge's p(first ≻ second), and that judge.
    p_first: Option<f64>,
    judge_id: Option<String>,
    /// The latest judge labeled the pair but answered none of its questions.
    unanswered: bool,
    provenance: Value,
}

/// One answer of a pair.
#[derive(Clone)]
struct Answer {
    text: String,
    finish: String,
    /// The step's round: for a sampled answer, its sample index.
    round: i64,
}

/// Builds the export rows (as JSON objects) from a store, leaving out what `filters` drop.
pub async fn rows(
    store: &Store,
    kind: Kind,
    filters: &PairFilters,
) -> Result<ExportRows, ExportError> {
    let candidates = candidates(store).await?;
    let mut out = ExportRows::default();
    // A prompt's sampled pairs are ranked together, at the place of the first of them.
    let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (k, c) in candidates.iter().enumerate() {
        if c.strategy.starts_with(SAMPLED_PREFIX) {
            groups
                .entry((c.run_id.clone(), c.prompt_id.clone()))
                .or_default()
                .push(k);
        }
    }
    for (k, c) in candidates.iter().enumerate() {
        if c.strategy == "revision" {
            if c.unanswered {
                push(&mut out, Err(Dropped::NoAnswer));
                continue;
            }
            let revision_wins = c.p_first.is_none_or(|p| p >= 0.5);
            let row = match kind {
                Kind::Dpo => dpo_row(c, revision_wins, filters, |row| {
                    row["chosen_is_revision"] = json!(revision_wins);
                }),
                Kind::Sft => sft_row(c, filters),
            };
            push(&mut out, row);
            continue;
        }
        // Sampled pairs make DPO rows only (SFT rows are final revisions).
        let key = (c.run_id.clone(), c.prompt_id.clone());
        let Some(members) = groups.get(&key) else {
            continue;
        };
        if kind == Kind::Sft || members.first() != Some(&k) {
            continue;
        }
        for row in sampled_rows(&candidates, members, filters) {
            push(&mut out, row);
        }
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

/// Counts a drop, or keeps a row.
fn push(out: &mut ExportRows, row: Result<Value, Dropped>) {
    match row {
        Ok(value) => out.rows.push(value),
        Err(reason) => *out.dropped.entry(reason).or_default() += 1,
    }
}

/// A DPO row of `c`, oriented by `first_wins`, through the filters; `extra` adds the
/// strategy's own fields.
fn dpo_row(
    c: &Candidate,
    first_wins: bool,
    filters: &PairFilters,
    extra: impl FnOnce(&mut Value),
) -> Result<Value, Dropped> {
    let (chosen, rejected) = if first_wins {
        (&c.first, &c.second)
    } else {
        (&c.second, &c.first)
    };
    // How sure the judge is that the chosen answer is better.
    let p_chosen = c.p_first.map(|p| if first_wins { p } else { 1.0 - p });
    let benign = c.kind.as_deref() == Some("benign");
    if let Some(reason) = filters.check(
        [&chosen.finish, &rejected.finish],
        [&chosen.text, &rejected.text],
        p_chosen.map(|p| 2.0 * p - 1.0),
        benign,
    ) {
        return Err(reason);
    }
    let mut row = json!({
        "prompt": c.messages,
        "chosen": [Message::assistant(chosen.text.clone())],
        "rejected": [Message::assistant(rejected.text.clone())],
        "chosen_finish": chosen.finish,
        "rejected_finish": rejected.finish,
        "strategy": strategy_name(&c.strategy),
        // Not `label`: TRL's own `label` column is KTO's boolean desirability, and a row with
        // one beside prompt/chosen/rejected breaks `apply_chat_template` and KTO's unpairing.
        "p_chosen": p_chosen,
        "weight": p_chosen.map(|p| 2.0 * p - 1.0),
        "judge_id": c.judge_id,
        // Every row has every column (Parquet wants one schema); each strategy fills its own.
        "chosen_is_revision": null,
        "chosen_sample": null,
        "rejected_sample": null,
        "sample_scores": null,
    });
    extra(&mut row);
    Ok(with_provenance(row, c))
}

/// An SFT row: the conversation ending in the revision (its truncation and refusal matter).
fn sft_row(c: &Candidate, filters: &PairFilters) -> Result<Value, Dropped> {
    let benign = c.kind.as_deref() == Some("benign");
    if let Some(reason) =
        filters.check([&c.first.finish, "stop"], [&c.first.text, ""], None, benign)
    {
        return Err(reason);
    }
    let mut conversation = c.messages.clone();
    conversation.push(Message::assistant(c.first.text.clone()));
    let row = json!({
        "messages": conversation,
        "finish": c.first.finish,
    });
    Ok(with_provenance(row, c))
}

/// The rows of one prompt's sampled pairs (`members`, indices into `all`): ranked by their
/// labels, then best vs worst or every pair by its own label.
fn sampled_rows(
    all: &[Candidate],
    members: &[usize],
    filters: &PairFilters,
) -> Vec<Result<Value, Dropped>> {
    let pairs: Vec<&Candidate> = members.iter().map(|&k| &all[k]).collect();
    if pairs.iter().any(|c| c.unanswered) {
        return pairs.iter().map(|_| Err(Dropped::NoAnswer)).collect();
    }
    let samples = pairs
        .iter()
        .map(|c| c.first.round.max(c.second.round) + 1)
        .max()
        .unwrap_or(0)
        .max(0) as usize;
    let judged: Option<Vec<(usize, usize, f64)>> = pairs
        .iter()
        .map(|c| {
            c.p_first
                .map(|p| (c.first.round as usize, c.second.round as usize, p))
        })
        .collect();
    let Some(ranking) = judged.and_then(|j| rank::rank(samples, &j)) else {
        return pairs.iter().map(|_| Err(Dropped::Unranked)).collect();
    };
    let scores = json!(ranking.scores);
    let sampled_extra = |row: &mut Value, chosen: i64, rejected: i64| {
        row["chosen_sample"] = json!(chosen);
        row["rejected_sample"] = json!(rejected);
        row["sample_scores"] = scores.clone();
    };
    pairs
        .iter()
        .map(|c| {
            let (i, j) = (c.first.round, c.second.round);
            let first_wins = c.p_first.is_none_or(|p| p >= 0.5);
            match filters.sampled_pairs {
                SampledPairs::All => dpo_row(c, first_wins, filters, |row| {
                    let (chosen, rejected) = if first_wins { (i, j) } else { (j, i) };
                    sampled_extra(row, chosen, rejected);
                }),
                SampledPairs::BestWorst => {
                    let (best, worst) = (ranking.best as i64, ranking.worst as i64);
                    if (i, j) != (best, worst) && (i, j) != (worst, best) {
                        return Err(Dropped::NotBestWorst);
                    }
                    // The pair is stored lower sample first: best wins when it is first.
                    let best_first = i == best;
                    if first_wins != best_first && c.p_first != Some(0.5) {
                        return Err(Dropped::RankingDisagrees);
                    }
                    dpo_row(c, best_first, filters, |row| {
                        sampled_extra(row, best, worst);
                    })
                }
            }
        })
        .collect()
}

/// `revision`, or `sampled` for any `sampled:I-J`.
fn strategy_name(strategy: &str) -> &str {
    if strategy.starts_with(SAMPLED_PREFIX) {
        "sampled"
    } else {
        strategy
    }
}

fn with_provenance(mut row: Value, c: &Candidate) -> Value {
    if let (Some(obj), Value::Object(extra)) = (row.as_object_mut(), c.provenance.clone()) {
        obj.extend(extra);
    }
    row
}

/// Every candidate pair in the store with its answers, latest label and provenance, in a
/// stable order (run, then prompt file order).
async fn candidates(store: &Store) -> Result<Vec<Candidate>, ExportError> {
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
                  WHERE l.pair_id = pr.id ORDER BY j.created_at DESC, j.id LIMIT 1), \
               pr.strategy, c.round, a.round, r.samples \
               FROM pairs pr \
               JOIN prompts p ON p.id = pr.prompt_id \
               JOIN runs r ON r.id = pr.run_id \
               JOIN steps c ON c.id = pr.chosen_step \
               JOIN steps a ON a.id = pr.rejected_step \
               ORDER BY r.created_at, p.source, p.line, pr.strategy";
    let db_rows = sqlx::query(sql)
        .fetch_all(store.pool())
        .await
        .map_err(store.err())?;
    db_rows
        .into_iter()
        .map(|row| {
            let messages: Vec<Message> = serde_json::from_str(row.get::<&str, _>(1))
                .map_err(|e| ExportError::Corrupt(format!("prompt messages: {e}")))?;
            let principles: Value = serde_json::from_str(row.get::<&str, _>(18))
                .map_err(|e| ExportError::Corrupt(format!("principles: {e}")))?;
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
                "samples": row.get::<i64, _>(24),
                "temperature": row.get::<f64, _>(10),
                "top_p": row.get::<f64, _>(11),
                "max_tokens": row.get::<i64, _>(12),
                "seed": row.get::<i64, _>(13),
                "principles": principles,
            });
            Ok(Candidate {
                prompt_id: row.get(0),
                messages,
                kind: row.get(2),
                run_id: row.get(3),
                strategy: row.get(21),
                first: Answer {
                    text: row.get(14),
                    finish: row.get(15),
                    round: row.get(22),
                },
                second: Answer {
                    text: row.get(16),
                    finish: row.get(17),
                    round: row.get(23),
                },
                p_first: row.get(19),
                judge_id: row.get(20),
                unanswered: row.get::<Option<String>, _>(20).is_some()
                    && row.get::<Option<f64>, _>(19).is_none(),
                provenance,
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Three samples of one prompt, judged pairwise: `p[(i, j)]` = p(i ≻ j).
    fn three(p01: f64, p02: f64, p12: f64) -> Vec<Candidate> {
        let answer = |i: i64| Answer {
            text: format!("answer number {i}: {}", "word ".repeat(i as usize * 5)),
            finish: "stop".into(),
            round: i,
        };
        [(0, 1, p01), (0, 2, p02), (1, 2, p12)]
            .into_iter()
            .map(|(i, j, p)| Candidate {
                prompt_id: "p".into(),
                messages: vec![Message::user("a question")],
                kind: Some("harmful".into()),
                run_id: "r".into(),
                strategy: crate::store::sampled_strategy(i, j),
                first: answer(i),
                second: answer(j),
                p_first: Some(p),
                judge_id: Some("j".into()),
                unanswered: false,
                provenance: json!({}),
            })
            .collect()
    }

    /// How many of `out` were dropped for `reason`.
    fn dropped(out: &[Result<Value, Dropped>], reason: Dropped) -> usize {
        out.iter()
            .filter(|r| r.as_ref().err() == Some(&reason))
            .count()
    }

    fn rows(candidates: &[Candidate], mode: SampledPairs) -> Vec<Result<Value, Dropped>> {
        let filters = PairFilters {
            sampled_pairs: mode,
            ..PairFilters::default()
        };
        sampled_rows(candidates, &[0, 1, 2], &filters)
    }

    #[test]
    fn best_against_worst_is_kept_with_its_direct_label() {
        // Scores: 0 → 0.85, 1 → 0.5, 2 → 0.15: best 0, worst 2, judged 0 ≻ 2 at 0.8.
        let out = rows(&three(0.9, 0.8, 0.9), SampledPairs::BestWorst);
        let kept: Vec<&Value> = out.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (
                kept[0]["chosen_sample"].as_i64(),
                kept[0]["rejected_sample"].as_i64()
            ),
            (Some(0), Some(2))
        );
        assert!((kept[0]["p_chosen"].as_f64().unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(dropped(&out, Dropped::NotBestWorst), 2);
    }

    #[test]
    fn a_cycle_between_ranking_and_judgment_is_dropped_and_counted() {
        // Scores: 0 → 0.675, 1 → 0.5, 2 → 0.325, but the direct judgment prefers 2 over 0.
        let out = rows(&three(0.9, 0.45, 0.9), SampledPairs::BestWorst);
        assert!(out.iter().all(|r| r.is_err()));
        assert_eq!(dropped(&out, Dropped::RankingDisagrees), 1);
    }

    #[test]
    fn every_pair_is_oriented_by_its_own_label_and_unjudged_samples_wait() {
        let out = rows(&three(0.9, 0.45, 0.2), SampledPairs::All);
        let kept: Vec<(i64, i64)> = out
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| {
                (
                    r["chosen_sample"].as_i64().unwrap(),
                    r["rejected_sample"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(kept, vec![(0, 1), (2, 0), (2, 1)]);
        let mut partial = three(0.9, 0.45, 0.2);
        partial[2].p_first = None;
        let out = rows(&partial, SampledPairs::BestWorst);
        assert!(out
            .iter()
            .all(|r| r.as_ref().err() == Some(&Dropped::Unranked)));
        // A pair the judge gave no answer on cannot be ranked either, and says so.
        let mut silent = three(0.9, 0.45, 0.2);
        silent[1].p_first = None;
        silent[1].unanswered = true;
        let out = rows(&silent, SampledPairs::BestWorst);
        assert_eq!(dropped(&out, Dropped::NoAnswer), 3);
    }
}
