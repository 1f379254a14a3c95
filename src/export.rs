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
//! provenance (run, model and constitution hashes, principles, sampling settings).
//!
//! Rows are typed ([`DpoRow`], [`SftRow`]): `tenets train --db` turns them into its examples
//! directly, JSONL is their serde form, and Parquet is written through polars from the same
//! rows under a schema declared beside each type, so the formats cannot disagree and a column
//! that is null in every row still has its type. Files are written to a temporary name and
//! renamed into place: an interrupted export leaves nothing half-written.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::chat::Message;
use crate::constitution::{Constitution, Refusal};
use crate::dataset::Example;
use crate::filters::{is_refusal, Dropped, PairFilters, RankBy, SafetyPairs, SampledPairs};
use crate::label::rank;
use crate::store::{RunSettings, Store, StoreError, SAMPLED_PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Preference pairs (prompt, chosen, rejected).
    Dpo,
    /// Supervised conversations: harmful prompts end in a principled refusal, others in the
    /// final revision (or the first answer where the revision is dropped).
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
    /// The labels come from a judge whose calibration does not clear chance.
    #[error("{0}")]
    UntrustedJudge(String),
}

/// Export rows and what the filters left out.
#[derive(Debug, Clone, Default)]
pub struct ExportRows {
    pub rows: Vec<ExportRow>,
    pub dropped: BTreeMap<Dropped, usize>,
}

/// Where a row came from: its prompt, the run that answered it and what that run was told.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provenance {
    pub prompt_id: String,
    /// The prompt's kind ("benign", "harmful" …), when its file gave one.
    pub kind: Option<String>,
    /// The run that answered it (flattened: its fields are columns of the row).
    #[serde(flatten)]
    pub run: RunSettings,
    /// The principle each critique round applied, in order.
    pub principles: Vec<String>,
}

/// A preference pair in TRL's conversational format, with its label and provenance. Every
/// strategy's columns are present in every row (Parquet wants one schema); each fills its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DpoRow {
    /// The conversation up to the answer (system and user messages).
    pub prompt: Vec<Message>,
    pub chosen: Vec<Message>,
    pub rejected: Vec<Message>,
    pub chosen_finish: String,
    pub rejected_finish: String,
    /// `revision`, `sampled`, or `safety` (the constitution's safety pairs, hard labels).
    pub strategy: String,
    /// p(chosen ≻ rejected) from the latest judge; none before labeling. Not `label`: TRL's own
    /// `label` column is KTO's boolean desirability, and a row with one beside
    /// prompt/chosen/rejected breaks `apply_chat_template` and KTO's unpairing.
    pub p_chosen: Option<f64>,
    /// 2·p_chosen − 1, for cDPO-style weighting.
    pub weight: Option<f64>,
    pub judge_id: Option<String>,
    /// `revision` pairs: whether the judge preferred the revision.
    pub chosen_is_revision: Option<bool>,
    /// `sampled` pairs: the samples chosen and rejected, and every sample's ranking score.
    pub chosen_sample: Option<i64>,
    pub rejected_sample: Option<i64>,
    pub sample_scores: Option<Vec<f64>>,
    /// The rewards of the two answers from the reward model that last scored this database
    /// (`tenets reward score --db`), and its SHA-256; none where it has not scored them.
    pub reward_chosen: Option<f64>,
    pub reward_rejected: Option<f64>,
    pub reward_model: Option<String>,
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// The key a reward model's score of `answer` to `prompt` is stored under (`reward_scores`):
/// a hash of both messages, so a pair's answers are found again whichever way it is oriented.
pub fn answer_key(prompt: &[Message], answer: &[Message]) -> String {
    crate::hash::of_json(&(prompt, answer))
}

/// A supervised conversation: the prompt and the answer to learn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SftRow {
    pub messages: Vec<Message>,
    /// Why the answer ended (`stop`, `length`, `context`).
    pub finish: String,
    /// Where the answer's text came from.
    pub source: SftSource,
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// Where an SFT answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SftSource {
    /// The model's final revision (for a harmful prompt: a refusal that names its principle).
    Revision,
    /// The model's first answer, where its revision was dropped (it refused a benign prompt,
    /// or was cut off) and the answer was not.
    Answer,
    /// The constitution's refusal for the prompt's topic, where the model's revision of a
    /// harmful prompt did not refuse or did not name the principle it follows.
    Constitution,
}

/// One exported row: its serde form is the JSONL line.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
// An export holds rows of one kind in a Vec: a box per row would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum ExportRow {
    Dpo(DpoRow),
    Sft(SftRow),
}

impl ExportRow {
    pub fn provenance(&self) -> &Provenance {
        match self {
            ExportRow::Dpo(row) => &row.provenance,
            ExportRow::Sft(row) => &row.provenance,
        }
    }

    /// The preference pair, if this is one.
    pub fn dpo(&self) -> Option<&DpoRow> {
        match self {
            ExportRow::Dpo(row) => Some(row),
            ExportRow::Sft(_) => None,
        }
    }

    /// The row as a training example (`origin` names it in messages): the trainer reads the
    /// same typed rows `tenets export` writes, with no JSON in between.
    pub fn to_example(&self, origin: String) -> Example {
        match self {
            ExportRow::Dpo(row) => Example {
                origin,
                prompt: row.prompt.clone(),
                chosen: row.chosen.clone(),
                rejected: Some(row.rejected.clone()),
                label: row.p_chosen.unwrap_or(1.0),
            },
            ExportRow::Sft(row) => {
                let (answer, prompt) = row
                    .messages
                    .split_last()
                    .map_or((Vec::new(), Vec::new()), |(last, before)| {
                        (vec![last.clone()], before.to_vec())
                    });
                Example {
                    origin,
                    prompt,
                    chosen: answer,
                    rejected: None,
                    label: 1.0,
                }
            }
        }
    }
}

/// One stored candidate pair, as read for export.
#[derive(Clone)]
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
    /// The constitution's refusal guidance that fits the prompt (its topic tag, else the
    /// closest by wording): for a harmful prompt the refusal to give, for a benign look-alike
    /// the needless refusal to avoid. None when the constitution has no refusal guidance.
    refusal: Option<Refusal>,
    /// The latest refusal another run (an adapter's, say) gave this prompt: for a benign
    /// prompt, the needless refusal a model really gave, rejected in its safety pair.
    refused_elsewhere: Option<String>,
    provenance: Provenance,
}

impl Candidate {
    fn harmful(&self) -> bool {
        self.kind.as_deref() == Some("harmful")
    }
}

/// One answer of a pair.
#[derive(Clone)]
struct Answer {
    text: String,
    finish: String,
    /// The step's round: for a sampled answer, its sample index.
    round: i64,
}

/// Every answer of the database's candidate pairs — revision pairs' first answers and
/// revisions, every sampled answer — once each, as (prompt messages, answer): what a reward
/// model scores for the pairs' `reward_*` columns and for `--rank-by reward`.
pub async fn answers_to_score(
    store: &Store,
) -> Result<Vec<(Vec<Message>, Vec<Message>)>, ExportError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for c in candidates(store, false).await? {
        for a in [&c.first, &c.second] {
            let answer = vec![Message::assistant(a.text.clone())];
            if seen.insert(answer_key(&c.messages, &answer)) {
                out.push((c.messages.clone(), answer));
            }
        }
    }
    Ok(out)
}

/// Builds the export rows (as JSON objects) from a store, leaving out what `filters` drop.
pub async fn rows(
    store: &Store,
    kind: Kind,
    filters: &PairFilters,
) -> Result<ExportRows, ExportError> {
    let safety_pairs = kind == Kind::Dpo && filters.safety_pairs.is_some();
    let mut candidates = candidates(store, safety_pairs).await?;
    // The scores of the reward model that last scored this database: each pair's `reward_*`
    // columns, and with `--rank-by reward` what ranks sampled answers (best-of-N).
    let scored = match kind {
        Kind::Dpo => store.latest_reward_scores().await?,
        Kind::Sft => None,
    };
    if filters.rank_by == RankBy::Reward && scored.is_none() {
        return Err(ExportError::Setting(
            "--rank-by reward: no reward model has scored this database yet (run `tenets reward \
             score --rm RM.gguf --db DB`)"
                .into(),
        ));
    }
    let rewards = scored
        .as_ref()
        .filter(|_| filters.rank_by == RankBy::Reward);
    if kind == Kind::Dpo && filters.safety_pairs != Some(SafetyPairs::Only) {
        if filters.hard_labels {
            for c in &mut candidates {
                c.p_first = None;
                c.judge_id = None;
                c.unanswered = false;
            }
        } else if !filters.trust_judge {
            check_judges(store, &candidates).await?;
        }
    }
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
            // Without a judge the revision is assumed better; for a harmful prompt that holds
            // only when it refuses (a 135M model's revision often still complies, or repeats
            // the request it was given).
            let unrefused = filters.hard_labels && c.harmful() && !is_refusal(&c.first.text);
            let row = match kind {
                Kind::Dpo if unrefused => Err(Dropped::HarmfulNotRefused),
                Kind::Dpo => dpo_row(c, revision_wins, filters, |row| {
                    row.chosen_is_revision = Some(revision_wins);
                })
                .map(ExportRow::Dpo),
                Kind::Sft => sft_row(c, filters).map(ExportRow::Sft),
            };
            if kind == Kind::Sft || filters.safety_pairs != Some(SafetyPairs::Only) {
                push(&mut out, row);
            }
            if kind == Kind::Dpo && filters.safety_pairs.is_some() {
                if let Some(pair) = safety_pair(c, filters) {
                    push(&mut out, pair.map(ExportRow::Dpo));
                }
            }
            continue;
        }
        // Sampled pairs make DPO rows only (SFT rows are final revisions).
        let key = (c.run_id.clone(), c.prompt_id.clone());
        let Some(members) = groups.get(&key) else {
            continue;
        };
        let only_safety = filters.safety_pairs == Some(SafetyPairs::Only);
        if kind == Kind::Sft || only_safety || members.first() != Some(&k) {
            continue;
        }
        let rows = match (rewards, filters.hard_labels) {
            (Some((sha, scores)), _) => {
                reward_ranked_rows(&candidates, members, filters, sha, scores)
            }
            (None, true) => members.iter().map(|_| Err(Dropped::HardLabels)).collect(),
            (None, false) => sampled_rows(&candidates, members, filters),
        };
        for row in rows {
            push(&mut out, row.map(ExportRow::Dpo));
        }
    }
    if let Some(path) = &filters.drop_flagged {
        let flagged = crate::filters::flagged_answers(path).map_err(ExportError::Setting)?;
        let before = out.rows.len();
        out.rows.retain(|row| {
            let (prompt, chosen) = match row {
                ExportRow::Dpo(r) => (&r.prompt[..], &r.chosen[..]),
                // An SFT row's last message is the answer it teaches.
                ExportRow::Sft(r) => r.messages.split_at(r.messages.len().saturating_sub(1)),
            };
            !flagged.contains(&answer_key(prompt, chosen))
        });
        let dropped = before - out.rows.len();
        if dropped > 0 {
            out.dropped.insert(Dropped::FlaggedUnsafe, dropped);
        }
    }
    if let Some(ratio) = filters.helpful_ratio {
        let kinds: Vec<Option<&str>> = out
            .rows
            .iter()
            .map(|r| r.provenance().kind.as_deref())
            .collect();
        let keys: Vec<&str> = out
            .rows
            .iter()
            .map(|r| r.provenance().prompt_id.as_str())
            .collect();
        let keep = crate::filters::balance(&kinds, &keys, ratio);
        let dropped = keep.iter().filter(|k| !**k).count();
        if dropped > 0 {
            out.dropped.insert(Dropped::HelpfulRatio, dropped);
        }
        let mut keep = keep.into_iter();
        out.rows.retain(|_| keep.next().unwrap_or(true));
    }
    if let Some((sha, scores)) = &scored {
        for row in out.rows.iter_mut() {
            if let ExportRow::Dpo(row) = row {
                row.reward_chosen = scores.get(&answer_key(&row.prompt, &row.chosen)).copied();
                row.reward_rejected = scores.get(&answer_key(&row.prompt, &row.rejected)).copied();
                if row.reward_chosen.is_some() || row.reward_rejected.is_some() {
                    row.reward_model = Some(sha.clone());
                }
            }
        }
    }
    Ok(out)
}

/// Every judge whose labels would orient `candidates` is calibrated and clears chance; else
/// the error says which is not, its figures, and the two ways on.
async fn check_judges(store: &Store, candidates: &[Candidate]) -> Result<(), ExportError> {
    let mut judges: Vec<&str> = candidates
        .iter()
        .filter_map(|c| c.judge_id.as_deref())
        .collect();
    judges.sort_unstable();
    judges.dedup();
    let ways_on = "pass --hard-labels to orient every revision pair revision ≻ first answer \
                   (hard labels, no judge), or --trust-judge to use its labels anyway";
    for judge in judges {
        let short = &judge[..16.min(judge.len())];
        match store.calibration(judge).await? {
            None => {
                return Err(ExportError::UntrustedJudge(format!(
                    "judge {short} labeled these pairs but was never calibrated (tenets label \
                     --no-calibrate, or an older tenets): run `tenets label --db {} --calibrate` \
                     to check it on the constitution's known-answer pairs, or {ways_on}",
                    store.path().display()
                )))
            }
            Some(c) if !c.trusted() => {
                return Err(ExportError::UntrustedJudge(format!(
                    "judge {short} is not trusted: {}; its accuracy does not clear chance on \
                     every kind of pair, so its labels would orient pairs by something other \
                     than the constitution. {}{ways_on}",
                    c.describe(),
                    if c.items == 0 {
                        "(The constitution has no topics or examples to calibrate with.) "
                    } else {
                        ""
                    }
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Counts a drop, or keeps a row.
fn push(out: &mut ExportRows, row: Result<ExportRow, Dropped>) {
    match row {
        Ok(value) => out.rows.push(value),
        Err(reason) => *out.dropped.entry(reason).or_default() += 1,
    }
}

/// A DPO row of `c`, oriented by `first_wins`, through the filters; `extra` fills the
/// strategy's own fields.
fn dpo_row(
    c: &Candidate,
    first_wins: bool,
    filters: &PairFilters,
    extra: impl FnOnce(&mut DpoRow),
) -> Result<DpoRow, Dropped> {
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
    let mut row = DpoRow {
        prompt: c.messages.clone(),
        chosen: vec![Message::assistant(chosen.text.clone())],
        rejected: vec![Message::assistant(rejected.text.clone())],
        chosen_finish: chosen.finish.clone(),
        rejected_finish: rejected.finish.clone(),
        strategy: strategy_name(&c.strategy).to_string(),
        p_chosen,
        weight: p_chosen.map(|p| 2.0 * p - 1.0),
        judge_id: c.judge_id.clone(),
        chosen_is_revision: None,
        chosen_sample: None,
        rejected_sample: None,
        sample_scores: None,
        reward_chosen: None,
        reward_rejected: None,
        reward_model: None,
        provenance: c.provenance.clone(),
    };
    extra(&mut row);
    Ok(row)
}

/// An SFT row. A harmful prompt with refusal guidance ends in a principled refusal: the model's
/// revision when it refuses and names the principle it follows, else the constitution's
/// refusal. Any other prompt ends in its final revision, or in its first answer where the
/// filters drop the revision (it refuses a benign prompt, or was cut off) but not the answer.
fn sft_row(c: &Candidate, filters: &PairFilters) -> Result<SftRow, Dropped> {
    let row = |answer: &Answer, source| {
        let mut messages = c.messages.clone();
        messages.push(Message::assistant(answer.text.clone()));
        SftRow {
            messages,
            finish: answer.finish.clone(),
            source,
            provenance: c.provenance.clone(),
        }
    };
    if let Some(guidance) = c.refusal.as_ref().filter(|_| c.harmful()) {
        if c.first.finish == "stop" && cites(&c.first.text, guidance) {
            return Ok(row(&c.first, SftSource::Revision));
        }
        let refusal = Answer {
            text: guidance.render(),
            finish: "stop".into(),
            round: c.first.round,
        };
        return Ok(row(&refusal, SftSource::Constitution));
    }
    let benign = c.kind.as_deref() == Some("benign");
    let check = |a: &Answer| filters.check([&a.finish, "stop"], [&a.text, ""], None, benign);
    // A benign look-alike keeps the model's own answer where it passes: that answer was never
    // the problem, and a critique under a safety principle pulls a small model's revision
    // toward the danger the prompt only sounds like (SmolLM2-135M revised "how do I kill a
    // subprocess" into advice on legal situations). Trained on such revisions, SFT and DPO
    // taught "answer anything" and undid every refusal. Other prompts take the revision.
    let (preferred, other) = if benign {
        (
            (&c.second, SftSource::Answer),
            (&c.first, SftSource::Revision),
        )
    } else {
        (
            (&c.first, SftSource::Revision),
            (&c.second, SftSource::Answer),
        )
    };
    match check(preferred.0) {
        None => Ok(row(preferred.0, preferred.1)),
        Some(_) if check(other.0).is_none() => Ok(row(other.0, other.1)),
        Some(reason) => Err(reason),
    }
}

/// The safety pair of a prompt tagged harmful or benign, under the constitution's refusal
/// guidance, with a hard label: a harmful prompt's principled refusal (as in its SFT row) over
/// the model's compliance (its first answer, else its revision, whichever does not refuse); a
/// benign prompt's helpful answer (as in its SFT row) over a needless refusal: one another run
/// really gave it (on-policy: what a trained adapter over-refuses), else the constitution's
/// refusal its wording invites.
fn safety_pair(c: &Candidate, filters: &PairFilters) -> Option<Result<DpoRow, Dropped>> {
    let refusal = c.refusal.as_ref()?;
    let (chosen, rejected) = match c.kind.as_deref() {
        Some("harmful") => {
            let complied = [&c.second, &c.first]
                .into_iter()
                .find(|a| !is_refusal(&a.text))?;
            (sft_row(c, filters).ok()?, complied.clone())
        }
        Some("benign") => {
            let needless = Answer {
                text: c
                    .refused_elsewhere
                    .clone()
                    .unwrap_or_else(|| refusal.render()),
                finish: "stop".into(),
                round: c.first.round,
            };
            match sft_row(c, filters) {
                Ok(helpful) => (helpful, needless),
                Err(reason) => return Some(Err(reason)),
            }
        }
        _ => return None,
    };
    let text = chosen.messages.last().map(|m| m.content.clone())?;
    Some(Ok(DpoRow {
        prompt: c.messages.clone(),
        chosen: vec![Message::assistant(text)],
        rejected: vec![Message::assistant(rejected.text)],
        chosen_finish: chosen.finish,
        rejected_finish: rejected.finish,
        strategy: "safety".into(),
        p_chosen: Some(1.0),
        weight: Some(1.0),
        judge_id: None,
        chosen_is_revision: None,
        chosen_sample: None,
        rejected_sample: None,
        sample_scores: None,
        reward_chosen: None,
        reward_rejected: None,
        reward_model: None,
        provenance: c.provenance.clone(),
    }))
}

/// Whether `answer` is a principled refusal under `guidance`: it opens by refusing and names
/// the principle it follows (by id or in words).
pub fn cites(answer: &str, guidance: &Refusal) -> bool {
    let text = answer.to_lowercase();
    is_refusal(answer)
        && (text.contains(&guidance.principle.to_lowercase())
            || text.contains(&guidance.principle_name().to_lowercase()))
}

/// The rows of one prompt's sampled pairs (`members`, indices into `all`): ranked by their
/// labels, then best vs worst or every pair by its own label.
fn sampled_rows(
    all: &[Candidate],
    members: &[usize],
    filters: &PairFilters,
) -> Vec<Result<DpoRow, Dropped>> {
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
    ranked_rows(all, members, filters, &ranking)
}

/// The rows of a prompt's sampled pairs (`members` of `all`) under `ranking`: best vs worst, or
/// every pair by its own label.
fn ranked_rows(
    all: &[Candidate],
    members: &[usize],
    filters: &PairFilters,
    ranking: &rank::Ranking,
) -> Vec<Result<DpoRow, Dropped>> {
    let pairs: Vec<&Candidate> = members.iter().map(|&k| &all[k]).collect();
    let sampled_extra = |row: &mut DpoRow, chosen: i64, rejected: i64| {
        row.chosen_sample = Some(chosen);
        row.rejected_sample = Some(rejected);
        row.sample_scores = Some(ranking.scores.clone());
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

/// [`sampled_rows`] ranked by a reward model instead of the judge: each pair of the prompt's
/// samples labelled `σ(r_first − r_second)` by the rewards `scores` (of the reward model
/// `sha`), the samples ranked by their rewards; a sample without a score leaves the prompt out.
fn reward_ranked_rows(
    all: &[Candidate],
    members: &[usize],
    filters: &PairFilters,
    sha: &str,
    scores: &HashMap<String, f64>,
) -> Vec<Result<DpoRow, Dropped>> {
    let reward = |c: &Candidate, a: &Answer| {
        scores
            .get(&answer_key(
                &c.messages,
                &[Message::assistant(a.text.clone())],
            ))
            .copied()
    };
    let mut relabelled = Vec::with_capacity(members.len());
    let mut by_sample: BTreeMap<i64, f64> = BTreeMap::new();
    for &k in members {
        let c = &all[k];
        let (Some(r1), Some(r2)) = (reward(c, &c.first), reward(c, &c.second)) else {
            return members.iter().map(|_| Err(Dropped::Unscored)).collect();
        };
        by_sample.insert(c.first.round, r1);
        by_sample.insert(c.second.round, r2);
        relabelled.push(Candidate {
            p_first: Some(crate::train::dpo::sigmoid(r1 - r2)),
            judge_id: None,
            unanswered: false,
            ..c.clone()
        });
    }
    let samples = by_sample.keys().max().map_or(0, |&m| m as usize + 1);
    // Rewards as a ranking: the best and worst sample and every sample's score.
    let ranking = rank::Ranking {
        best: by_sample
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(&s, _)| s as usize),
        worst: by_sample
            .iter()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(&s, _)| s as usize),
        scores: (0..samples as i64)
            .map(|s| by_sample.get(&s).copied().unwrap_or(f64::NAN))
            .collect(),
    };
    let indices: Vec<usize> = (0..relabelled.len()).collect();
    ranked_rows(&relabelled, &indices, filters, &ranking)
        .into_iter()
        .map(|row| {
            row.map(|mut row| {
                row.reward_model = Some(sha.to_string());
                row
            })
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

/// Every candidate pair in the store with its answers, latest label and provenance, in a
/// stable order (run, then prompt file order).
/// `other_answers`: also read every run's first answers, for the refusals other runs gave
/// (only safety pairs use them, and a big database holds many).
async fn candidates(store: &Store, other_answers: bool) -> Result<Vec<Candidate>, ExportError> {
    let mut constitutions: HashMap<String, Constitution> = HashMap::new();
    let mut refusals: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let answers = if other_answers {
        store.answers().await?
    } else {
        Vec::new()
    };
    for (prompt, run, text) in answers {
        if is_refusal(&text) {
            refusals.entry(prompt).or_default().push((run, text));
        }
    }
    store
        .candidate_pairs()
        .await?
        .into_iter()
        .map(|row| {
            if !constitutions.contains_key(&row.run.run_id) {
                let c: Constitution = serde_json::from_str(&row.constitution_json)
                    .map_err(|e| ExportError::Corrupt(format!("run constitution: {e}")))?;
                constitutions.insert(row.run.run_id.clone(), c);
            }
            let constitution = &constitutions[&row.run.run_id];
            let messages: Vec<Message> = serde_json::from_str(&row.messages_json)
                .map_err(|e| ExportError::Corrupt(format!("prompt messages: {e}")))?;
            let principles: Vec<String> = serde_json::from_str(&row.principles_json)
                .map_err(|e| ExportError::Corrupt(format!("principles: {e}")))?;
            let provenance = Provenance {
                prompt_id: row.prompt_id.clone(),
                kind: row.kind.clone(),
                run: row.run.clone(),
                principles,
            };
            let answer = |(text, finish, round): (String, String, i64)| Answer {
                text,
                finish,
                round,
            };
            let refusal = constitution
                .refusal_for_prompt(row.topic.as_deref(), &messages)
                .or(constitution.refusals.first())
                .cloned();
            let refused_elsewhere = refusals.get(&row.prompt_id).and_then(|given| {
                let other = given.iter().rev().find(|(run, _)| *run != row.run.run_id);
                other.map(|(_, text)| text.clone())
            });
            Ok(Candidate {
                refusal,
                refused_elsewhere,
                unanswered: row.judge_id.is_some() && row.p_first.is_none(),
                prompt_id: row.prompt_id,
                messages,
                kind: row.kind,
                run_id: row.run.run_id,
                strategy: row.strategy,
                first: answer(row.first),
                second: answer(row.second),
                p_first: row.p_first,
                judge_id: row.judge_id,
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
    let mut jsonl = Vec::new();
    for row in &exported.rows {
        serde_json::to_writer(&mut jsonl, row).map_err(|e| ExportError::Corrupt(e.to_string()))?;
        jsonl.push(b'\n');
    }
    let bytes = match format {
        Format::Jsonl => jsonl,
        Format::Parquet => {
            to_parquet(&jsonl, parquet_schema(kind)).map_err(|message| ExportError::Write {
                path: out.to_path_buf(),
                message,
            })?
        }
    };
    write_atomically(out, &bytes)?;
    Ok(exported)
}

/// The Parquet columns of a kind's rows, in their fields' order: [`DpoRow`] or [`SftRow`],
/// then [`Provenance`] (a unit test holds each list to its type's serde form).
pub fn parquet_schema(kind: Kind) -> polars::prelude::Schema {
    use polars::prelude::{DataType as T, Field};
    let messages = T::List(Box::new(T::Struct(vec![
        Field::new("role".into(), T::String),
        Field::new("content".into(), T::String),
    ])));
    let mut columns: Vec<(&str, T)> = match kind {
        Kind::Dpo => vec![
            ("prompt", messages.clone()),
            ("chosen", messages.clone()),
            ("rejected", messages),
            ("chosen_finish", T::String),
            ("rejected_finish", T::String),
            ("strategy", T::String),
            ("p_chosen", T::Float64),
            ("weight", T::Float64),
            ("judge_id", T::String),
            ("chosen_is_revision", T::Boolean),
            ("chosen_sample", T::Int64),
            ("rejected_sample", T::Int64),
            ("sample_scores", T::List(Box::new(T::Float64))),
            ("reward_chosen", T::Float64),
            ("reward_rejected", T::Float64),
            ("reward_model", T::String),
        ],
        Kind::Sft => vec![
            ("messages", messages),
            ("finish", T::String),
            ("source", T::String),
        ],
    };
    columns.extend([
        ("prompt_id", T::String),
        ("kind", T::String),
        ("run_id", T::String),
        ("model_sha256", T::String),
        ("chat_template_sha256", T::String),
        ("constitution", T::String),
        ("constitution_sha256", T::String),
        ("template_sha256", T::String),
        ("rounds", T::Int64),
        ("samples", T::Int64),
        ("temperature", T::Float64),
        ("top_p", T::Float64),
        ("max_tokens", T::Int64),
        ("seed", T::Int64),
        ("principles", T::List(Box::new(T::String))),
    ]);
    columns
        .into_iter()
        .map(|(name, dtype)| Field::new(name.into(), dtype))
        .collect()
}

/// The rows (JSON lines) as a Parquet file under `schema`: no inference, so the file's types
/// are the rows' types even where a column is null throughout or there are no rows at all.
fn to_parquet(jsonl: &[u8], schema: polars::prelude::Schema) -> Result<Vec<u8>, String> {
    use polars::prelude::*;
    let mut df = if jsonl.is_empty() {
        DataFrame::empty_with_schema(&schema)
    } else {
        JsonReader::new(std::io::Cursor::new(jsonl))
            .with_json_format(JsonFormat::JsonLines)
            .with_schema(Arc::new(schema))
            .finish()
            .map_err(|e| e.to_string())?
    };
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
                refusal: None,
                refused_elsewhere: None,
                provenance: provenance(),
            })
            .collect()
    }

    fn provenance() -> Provenance {
        Provenance {
            prompt_id: "p".into(),
            kind: Some("harmful".into()),
            run: RunSettings {
                run_id: "r".into(),
                model_sha256: "m".into(),
                chat_template_sha256: "c".into(),
                constitution: "demo".into(),
                constitution_sha256: "k".into(),
                template_sha256: "t".into(),
                rounds: 1,
                samples: 3,
                temperature: 0.7,
                top_p: 0.95,
                max_tokens: 64,
                seed: 1,
            },
            principles: vec!["honesty".into()],
        }
    }

    /// How many of `out` were dropped for `reason`.
    fn dropped(out: &[Result<DpoRow, Dropped>], reason: Dropped) -> usize {
        out.iter()
            .filter(|r| r.as_ref().err() == Some(&reason))
            .count()
    }

    fn rows(candidates: &[Candidate], mode: SampledPairs) -> Vec<Result<DpoRow, Dropped>> {
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
        let kept: Vec<&DpoRow> = out.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].chosen_sample, kept[0].rejected_sample),
            (Some(0), Some(2))
        );
        assert!((kept[0].p_chosen.unwrap() - 0.8).abs() < 1e-12);
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
            .map(|r| (r.chosen_sample.unwrap(), r.rejected_sample.unwrap()))
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

    /// The Parquet schema of each kind names its row type's serde fields, in order.
    #[test]
    fn parquet_schemas_are_their_row_types() {
        let c = &three(0.9, 0.8, 0.9)[0];
        let dpo = ExportRow::Dpo(
            dpo_row(c, true, &PairFilters::default(), |row| {
                row.chosen_sample = Some(0);
            })
            .unwrap(),
        );
        let sft = ExportRow::Sft(sft_row(c, &PairFilters::default()).unwrap());
        for (kind, row) in [(Kind::Dpo, dpo), (Kind::Sft, sft)] {
            let value = serde_json::to_value(&row).unwrap();
            let mut keys: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut columns: Vec<String> = parquet_schema(kind)
                .iter_names()
                .map(|n| n.to_string())
                .collect();
            keys.sort_unstable();
            columns.sort_unstable();
            assert_eq!(keys, columns, "{kind:?}");
            // And the rows read back under it.
            let mut jsonl = serde_json::to_vec(&row).unwrap();
            jsonl.push(b'\n');
            assert!(to_parquet(&jsonl, parquet_schema(kind)).is_ok(), "{kind:?}");
        }
        assert!(to_parquet(&[], parquet_schema(Kind::Dpo)).is_ok());
    }

    #[test]
    fn rows_become_the_trainers_examples() {
        let c = &three(0.9, 0.8, 0.9)[0];
        let dpo = ExportRow::Dpo(dpo_row(c, false, &PairFilters::default(), |_| {}).unwrap());
        let example = dpo.to_example("db pair 1".into());
        assert_eq!(example.prompt, c.messages);
        assert_eq!(example.chosen[0].content, c.second.text);
        assert_eq!(example.rejected.unwrap()[0].content, c.first.text);
        assert!((example.label - 0.1).abs() < 1e-12);
        let sft = ExportRow::Sft(sft_row(c, &PairFilters::default()).unwrap());
        let example = sft.to_example("db pair 1".into());
        assert_eq!(example.prompt, c.messages);
        assert_eq!(
            example.chosen,
            vec![Message::assistant(c.first.text.clone())]
        );
        assert_eq!(example.rejected, None);
    }

    /// Refusal guidance for a made-up topic.
    fn weapons() -> Refusal {
        Refusal {
            topic: "making weapons".into(),
            principle: "no-harm".into(),
            decline: "building weapons".into(),
            reason: "they hurt people".into(),
            alternative: "explain their history".into(),
            text: None,
        }
    }

    #[test]
    fn safety_rows_refuse_harmful_prompts_by_principle_and_keep_benign_answers_helpful() {
        let guidance = weapons();
        let answer = |text: &str, finish: &str| Answer {
            text: text.into(),
            finish: finish.into(),
            round: 1,
        };
        let mut c = three(0.9, 0.9, 0.9).remove(0);
        c.refusal = Some(guidance.clone());
        let filters = PairFilters::default();
        let last = |row: &SftRow| row.messages.last().unwrap().content.clone();

        // A revision that complies: the constitution's refusal, which cites the principle.
        c.first = answer("Sure, take a pipe and ...", "stop");
        let row = sft_row(&c, &filters).unwrap();
        assert_eq!(row.source, SftSource::Constitution);
        assert_eq!(last(&row), guidance.render());
        assert!(cites(&last(&row), &guidance) && row.finish == "stop");
        // A refusal that names no principle is not enough; one that does is the model's own.
        c.first = answer("I can't help with that.", "stop");
        assert_eq!(
            sft_row(&c, &filters).unwrap().source,
            SftSource::Constitution
        );
        let own = "I can't help with weapons: my no harm principle. I can tell their history.";
        c.first = answer(own, "stop");
        let row = sft_row(&c, &filters).unwrap();
        assert_eq!(
            (row.source, last(&row)),
            (SftSource::Revision, own.to_string())
        );

        // A benign prompt: its own answer, or the revision where the answer refuses (or was
        // cut off); never a refusal.
        c.kind = Some("benign".into());
        c.first = answer("Run `kill PID` to stop it.", "stop");
        c.second = answer("Use `kill -9 PID`.", "stop");
        let row = sft_row(&c, &filters).unwrap();
        assert_eq!(
            (row.source, last(&row)),
            (SftSource::Answer, "Use `kill -9 PID`.".into())
        );
        c.second = answer("I can't help with killing.", "stop");
        let row = sft_row(&c, &filters).unwrap();
        assert_eq!(
            (row.source, last(&row)),
            (SftSource::Revision, "Run `kill PID` to stop it.".into())
        );
        c.first = answer("I won't.", "stop");
        assert_eq!(sft_row(&c, &filters), Err(Dropped::RefusesBenign));
        // A prompt with no kind keeps SL-CAI's choice: the revision.
        c.kind = None;
        c.refusal = None;
        c.first = answer("Run `kill PID` to stop it.", "stop");
        assert_eq!(sft_row(&c, &filters).unwrap().source, SftSource::Revision);
    }

    #[test]
    fn safety_pairs_prefer_the_principled_refusal_and_the_helpful_answer() {
        let guidance = weapons();
        let answer = |text: &str| Answer {
            text: text.into(),
            finish: "stop".into(),
            round: 1,
        };
        let filters = PairFilters::default();
        let mut c = three(0.9, 0.9, 0.9).remove(0);
        c.strategy = "revision".into();
        c.refusal = Some(guidance.clone());
        c.first = answer("Here is a safer way: buy one legally.");
        c.second = answer("Sure: take a pipe and ...");
        let pair = safety_pair(&c, &filters).unwrap().unwrap();
        assert_eq!(pair.chosen[0].content, guidance.render());
        assert_eq!(pair.rejected[0].content, "Sure: take a pipe and ...");
        assert_eq!(
            (pair.strategy.as_str(), pair.p_chosen),
            ("safety", Some(1.0))
        );
        // Nothing complied: nothing to reject.
        c.first = answer("I can't help with that.");
        c.second = answer("I won't.");
        assert!(safety_pair(&c, &filters).is_none());

        c.kind = Some("benign".into());
        c.first = answer("Run `kill PID`.");
        let pair = safety_pair(&c, &filters).unwrap().unwrap();
        assert_eq!(pair.chosen[0].content, "Run `kill PID`.");
        assert_eq!(pair.rejected[0].content, guidance.render());
        // A refusal a model really gave the prompt is the one to reject.
        c.refused_elsewhere = Some("I can't help with killing.".into());
        let pair = safety_pair(&c, &filters).unwrap().unwrap();
        assert_eq!(pair.rejected[0].content, "I can't help with killing.");
        c.kind = None;
        assert!(safety_pair(&c, &filters).is_none());
    }
}
