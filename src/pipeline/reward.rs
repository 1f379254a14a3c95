//! `tenets reward score`: a trained reward model's score of every answer in a TRL file or a
//! tenets database. A database keeps each score with the reward model's hash (a rerun skips
//! what is scored; a crash keeps every finished batch); `--out` writes the examples with their
//! scores as JSON lines. Training lives with `tenets train` (`--objective reward`), which
//! `tenets reward train` runs.

use std::path::{Path, PathBuf};

use super::{check_out_folder, native_compute, progress_bar, setting, PipelineError};
use crate::chat::Message;
use crate::dataset::{self, Example};
use crate::export;
use crate::model::Model;
use crate::settings::{KernelChoice, ModelSettings, RunSettings};
use crate::store::{RewardModelRecord, Store};
use crate::train::reward;
use crate::train::trainer::{self, Item};

/// `tenets reward score`'s command line.
#[derive(clap::Args, Debug, Clone)]
pub struct RewardScoreOptions {
    /// The base model the reward model was trained on, and the threads it computes on.
    #[command(flatten)]
    pub model: ModelSettings,
    /// The reward model (a file `tenets reward train` wrote).
    #[arg(long)]
    pub rm: PathBuf,
    /// Examples to score: JSONL or Parquet in TRL's formats (pairs: both answers; otherwise
    /// the completion).
    #[arg(long, required_unless_present = "db", conflicts_with = "db")]
    pub data: Option<PathBuf>,
    /// A tenets database: score every answer of its pairs (revisions, first answers, every
    /// sampled answer) and store the scores there, for export's `reward_*` columns and
    /// `--rank-by reward`.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Write every example with its scores here (JSON lines).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Most tokens of prompt + answer (longer prompts keep their end).
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Native kernels [default: the fastest this CPU runs]
    #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
    pub kernel: KernelChoice,
    #[command(flatten)]
    pub run: RunSettings,
}

impl RewardScoreOptions {
    /// `tenets reward score`'s defaults for `rm` on `model` (no input chosen yet).
    pub fn new(model: &Path, rm: &Path) -> Self {
        let mut o: Self = crate::settings::from_flags(&["--rm", "-", "--db", "-"]);
        o.model = crate::settings::ModelSettings::of(model);
        o.rm = rm.to_path_buf();
        o.db = None;
        o
    }
}

/// Checks that `rm` is a reward model for the base `model` before anything runs on it.
pub fn check_reward_model(model: &Path, rm: &Path) -> Result<(), PipelineError> {
    if !rm.is_file() {
        return Err(setting(format!("--rm {}: no such file", rm.display())));
    }
    let model = Model::open(model)?;
    reward::read(&model, rm).map_err(|e| setting(format!("--rm: {e}")))?;
    Ok(())
}

/// What `tenets reward score` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RewardScoreSummary {
    pub reward_model: PathBuf,
    /// What the reward model's file says about its training.
    pub facts: reward::RewardFacts,
    pub examples: usize,
    /// Answers scored this time, and found already scored in the database.
    pub scored: usize,
    pub cached: usize,
    /// Examples cut to fit `--max-length`.
    pub truncated: usize,
    /// Pairs among the examples, and how often the chosen answer scored higher.
    pub pairs: usize,
    pub pair_accuracy: Option<f64>,
    pub mean_chosen: f64,
    pub mean_rejected: Option<f64>,
    pub out: Option<PathBuf>,
    pub db: Option<PathBuf>,
}

/// One example with its scores, as `--out` writes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScoredExample<'a> {
    pub origin: &'a str,
    pub prompt: &'a [Message],
    pub chosen: &'a [Message],
    pub score_chosen: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<&'a [Message]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_rejected: Option<f64>,
}

fn check(o: &RewardScoreOptions) -> Result<(), PipelineError> {
    o.model.check()?;
    if o.max_length < 8 {
        return Err(setting(format!(
            "--max-length must be at least 8, got {}",
            o.max_length
        )));
    }
    if !o.rm.is_file() {
        return Err(setting(format!("--rm {}: no such file", o.rm.display())));
    }
    if let Some(out) = &o.out {
        check_out_folder("--out", out)?;
    }
    Ok(())
}

/// Scores every example's answers with the reward model.
pub async fn score(o: &RewardScoreOptions) -> Result<RewardScoreSummary, PipelineError> {
    check(o)?;
    let model_path = o.model.model_path()?;
    // A database: every answer of its pairs (sampled ones too, for --rank-by reward), each once.
    let store = match &o.db {
        Some(db) => Some(Store::open_existing(db).await?),
        None => None,
    };
    let examples = match (&store, &o.db) {
        (Some(store), Some(db)) => export::answers_to_score(store)
            .await?
            .into_iter()
            .enumerate()
            .map(|(i, (prompt, answer))| Example {
                origin: format!("{} answer {}", db.display(), i + 1),
                prompt,
                chosen: answer,
                rejected: None,
                label: 1.0,
            })
            .collect(),
        _ => dataset::load(o.data.as_deref().unwrap_or(Path::new("")))?,
    };
    if examples.is_empty() {
        return Err(setting(format!(
            "{}: no examples to score",
            o.data
                .as_ref()
                .or(o.db.as_ref())
                .map_or(Path::new(""), |p| p)
                .display()
        )));
    }
    let model = Model::open(&model_path)?;
    let rm = reward::read(&model, &o.rm).map_err(|e| setting(format!("--rm: {e}")))?;
    let (items, truncated) =
        super::train::tokenize(o.max_length, o.max_length / 2, &model_path, &examples)?;
    let compute = native_compute(&o.model, o.kernel)?;

    // The database's scores so far, and the reward model's record there.
    let keys: Vec<(String, Option<String>)> = examples
        .iter()
        .map(|e| {
            (
                export::answer_key(&e.prompt, &e.chosen),
                e.rejected
                    .as_ref()
                    .map(|r| export::answer_key(&e.prompt, r)),
            )
        })
        .collect();
    let rm_sha256 = match &store {
        Some(store) => {
            let sha = store.model_sha256(&o.rm).await?;
            let base = store.model_sha256(&model_path).await?;
            store
                .upsert_reward_model(&RewardModelRecord {
                    sha256: sha.clone(),
                    path: o.rm.display().to_string(),
                    base_sha256: base,
                    train_pairs: Some(rm.facts.train_pairs as i64),
                    held_out_pairs: Some(rm.facts.held_out_pairs as i64),
                    held_out_accuracy: rm.facts.held_out_accuracy,
                })
                .await?;
            sha
        }
        None => String::new(),
    };
    let mut known = match &store {
        Some(store) => store.reward_scores(&rm_sha256).await?,
        None => Default::default(),
    };
    let missing: Vec<usize> = (0..items.len())
        .filter(|&i| {
            !known.contains_key(&keys[i].0)
                || keys[i].1.as_ref().is_some_and(|k| !known.contains_key(k))
        })
        .collect();
    let answers = |i: usize| 1 + usize::from(keys[i].1.is_some());
    let cached = (0..items.len()).map(answers).sum::<usize>()
        - missing.iter().copied().map(answers).sum::<usize>();
    let bar = progress_bar(o.run.quiet, missing.len() as u64, "examples");
    bar.set_message("reward scores");
    let mut scored = 0;
    for chunk in missing.chunks(8) {
        let batch: Vec<&Item> = chunk.iter().map(|&i| &items[i]).collect();
        let rewards = trainer::rewards(&model, &compute, Some(&rm.adapters), &rm.head, &batch)?;
        let mut rows = Vec::new();
        for (&i, (c, r)) in chunk.iter().zip(rewards) {
            rows.push((keys[i].0.clone(), c));
            if let (Some(k), Some(r)) = (&keys[i].1, r) {
                rows.push((k.clone(), r));
            }
            bar.inc(1);
        }
        scored += rows.len();
        if let Some(store) = &store {
            store.put_reward_scores(&rm_sha256, &rows).await?;
        }
        known.extend(rows);
    }
    bar.finish_and_clear();

    let score_of = |k: &str| known.get(k).copied().unwrap_or(f64::NAN);
    let scores: Vec<(f64, Option<f64>)> = keys
        .iter()
        .map(|(c, r)| (score_of(c), r.as_deref().map(score_of)))
        .collect();
    let pairs: Vec<(f64, f64)> = scores
        .iter()
        .filter_map(|&(c, r)| r.map(|r| (c, r)))
        .collect();
    let n = scores.len() as f64;
    let summary = RewardScoreSummary {
        reward_model: o.rm.clone(),
        facts: rm.facts.clone(),
        examples: examples.len(),
        scored,
        cached,
        truncated,
        pairs: pairs.len(),
        pair_accuracy: (!pairs.is_empty())
            .then(|| pairs.iter().filter(|(c, r)| c > r).count() as f64 / pairs.len() as f64),
        mean_chosen: scores.iter().map(|s| s.0).sum::<f64>() / n,
        mean_rejected: (!pairs.is_empty())
            .then(|| pairs.iter().map(|p| p.1).sum::<f64>() / pairs.len() as f64),
        out: o.out.clone(),
        db: o.db.clone(),
    };
    if let Some(out) = &o.out {
        write_scored(out, &examples, &scores)?;
    }
    Ok(summary)
}

/// The examples with their scores as JSON lines, written whole or not at all.
fn write_scored(
    out: &Path,
    examples: &[Example],
    scores: &[(f64, Option<f64>)],
) -> Result<(), PipelineError> {
    let mut bytes = Vec::new();
    for (e, &(c, r)) in examples.iter().zip(scores) {
        let row = ScoredExample {
            origin: &e.origin,
            prompt: &e.prompt,
            chosen: &e.chosen,
            score_chosen: c,
            rejected: e.rejected.as_deref(),
            score_rejected: r,
        };
        serde_json::to_writer(&mut bytes, &row)
            .map_err(|err| PipelineError::Internal(format!("{}: {err}", e.origin)))?;
        bytes.push(b'\n');
    }
    export::write_atomically(out, &bytes)?;
    Ok(())
}

/// The summary as text.
pub fn render(s: &RewardScoreSummary) -> String {
    let mut out = format!(
        "{} example(s) scored by {} ({} answer(s) computed, {} already stored)\n",
        s.examples,
        s.reward_model.display(),
        s.scored,
        s.cached
    );
    if s.truncated > 0 {
        out.push_str(&format!(
            "{} example(s) cut to fit --max-length\n",
            s.truncated
        ));
    }
    out.push_str(&format!(
        "mean reward of the chosen answers: {:.3}\n",
        s.mean_chosen
    ));
    if let (Some(acc), Some(rej)) = (s.pair_accuracy, s.mean_rejected) {
        out.push_str(&format!(
            "{} pair(s): mean reward of the rejected answers {rej:.3}; chosen scored higher in \
             {:.1}%\n",
            s.pairs,
            100.0 * acc
        ));
    }
    if let Some(acc) = s.facts.held_out_accuracy {
        out.push_str(&format!(
            "the reward model's held-out accuracy when trained: {acc:.3} ({} pairs)\n",
            s.facts.held_out_pairs
        ));
    }
    if let Some(db) = &s.db {
        out.push_str(&format!("scores stored in {}\n", db.display()));
    }
    if let Some(p) = &s.out {
        out.push_str(&format!("scored examples: {}\n", p.display()));
    }
    out
}
