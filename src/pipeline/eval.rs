//! `tenets eval`: the base model and a candidate — the base with an adapter, a control vector
//! or both — answer held-out prompts; a judge model gives every answer a refusal verdict and
//! compares the two answers of each prompt under the constitution's comparison questions, both
//! orders; everything into SQLite.
//!
//! Three phases, each resumable: the answers are two answer-only generate runs (rounds = 0;
//! the candidate's run carries its adapter's and vector's hashes, so it is its own run), then
//! one judge engine serves two kinds of sessions together — a one-probe [`VerdictSession`] per
//! answer and a label [`PairSession`] per prompt — and their results are committed one by one.
//! The judge's verdicts start with the constitution's known answers
//! ([`crate::eval::calibration`]), so the figures say whether its rates can show anything. The
//! figures are computed from what is stored ([`crate::eval::results`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};

use super::label::{JudgmentWriter, LabelContext, LabelWrite, PairSession};
use super::writer::{self, Commit, Writer};
use super::{check_prompt_sets, generate_sets, progress_bar};
use super::{GenerateOptions, GenerateSummary, PipelineError};
use crate::chat::Message;
use crate::constitution::Constitution;
use crate::engine::control::ControlSetting;
use crate::engine::session::{self, Counters, Next, Sampling};
use crate::engine::Probe;
use crate::engine::{self, Session, StopSignal, TurnFailure, TurnOutput, TurnRequest};
use crate::eval::calibration::known_answers;
use crate::eval::results::{self, EvalResults};
use crate::eval::{
    pattern_verdict, principle_comparison, JudgeVerdict, Refusal, VerdictFrame, PATTERNS_ONLY,
    PRINCIPLE_PREFIX, ROTATIONS,
};
use crate::label::frame::JudgeFrame;
use crate::label::{self, AnswerTokens, ANSWER_PREFIX};
use crate::prompt::{self, PromptItem};
use crate::settings::{EngineSettings, ModelSettings, RunSettings};
use crate::store::{
    EvalRecord, EvalSide, JudgmentTable, KnownVerdictRecord, PairForLabel, Store, VerdictRecord,
};

/// Everything `tenets eval` needs: its command line.
#[derive(clap::Args, Debug, Clone)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
pub struct EvalOptions {
    /// The base model (`--model`), and how its answers are decoded.
    #[command(flatten)]
    pub engine: EngineSettings,
    /// LoRA adapter (GGUF) to compare with the base model; without one only the base is measured.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    #[arg(long, default_value_t = 1.0, requires = "lora")]
    pub lora_scale: f32,
    /// A control vector (`tenets steer`) to compare with the base model, `V.gguf[:SCALE]`
    /// (negative steers away); with --lora, the steered adapter is the candidate.
    #[arg(long, value_name = "V.gguf[:SCALE]")]
    pub control_vector: Option<String>,
    /// Steer only the blocks FIRST-LAST (0-based, inclusive) of the control vector.
    #[arg(long, value_name = "FIRST-LAST", value_parser = crate::settings::parse_layer_range,
          requires = "control_vector")]
    pub control_layers: Option<(usize, usize)>,
    /// Best-of-N as the candidate (rejection sampling): the candidate answers each prompt N
    /// times (2-8, at --sample-temperature) and the reward model --rm picks its answer.
    #[arg(long, value_name = "N", requires = "rm")]
    pub best_of: Option<usize>,
    /// The reward model (`tenets reward train`) that picks the best of --best-of's samples.
    #[arg(long, value_name = "RM.gguf", requires = "best_of")]
    pub rm: Option<PathBuf>,
    /// Sampling temperature of --best-of's samples.
    #[arg(long, default_value_t = 0.7)]
    pub sample_temperature: f32,
    /// Constitution (YAML), or a bundled one by name: harmless-helpful, medical-info.
    #[arg(long)]
    pub constitution: PathBuf,
    /// Held-out prompt files (repeat the flag): rows with `kind` harmful or benign, and optionally
    /// `topic` and `style` [default: the bundled eval-harmful and eval-benign sets]
    #[arg(long)]
    pub prompts: Vec<PathBuf>,
    #[arg(long)]
    pub db: PathBuf,
    /// Judge model [default: the base model]
    #[arg(long)]
    pub judge_model: Option<PathBuf>,
    /// Directory with verdict.jinja / judge.jinja frames [default: the bundled ones]
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// A name for this evaluation in reports [default: the adapter's file name and the control
    /// vector's with its scale, or "base"]
    #[arg(long)]
    pub name: Option<String>,
    /// Read refusals by the string patterns alone: no judge model runs, so there is no win
    /// rate — a fast first look, or the honest reading when the judge fails its calibration
    /// (as the 135M default does).
    #[arg(long, conflicts_with_all = ["judge_model", "templates"])]
    pub patterns_only: bool,
    /// Comparison questions per prompt, each asked in both orders.
    #[arg(long, default_value_t = 2)]
    pub questions: usize,
    /// Principles asked as comparison questions per prompt (both orders): the win rate by
    /// principle.
    #[arg(long, default_value_t = 1)]
    pub principle_questions: usize,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 192)]
    pub max_tokens: usize,
    /// 0 for greedy decoding (the default: an evaluation measures the model, not one draw).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop before anything runs if any prompt line is bad.
    #[arg(long)]
    pub strict: bool,
    /// Training prompt files (repeat the flag), or bundled sets by name: an evaluation prompt
    /// with the same content hash as one of them stops the run before anything is answered.
    #[arg(long, value_name = "PROMPTS")]
    pub trained_on: Vec<PathBuf>,
    #[command(flatten)]
    pub run: RunSettings,
}

impl EvalOptions {
    /// The defaults of `tenets eval` for these inputs (no prompt files: the bundled sets).
    pub fn new(model: &Path, constitution: &Path, prompts: Vec<PathBuf>, db: &Path) -> Self {
        let mut o: Self = crate::settings::from_flags(&["--constitution", "-", "--db", "-"]);
        o.engine.model = ModelSettings::of(model);
        o.constitution = constitution.to_path_buf();
        o.prompts = prompts;
        o.db = db.to_path_buf();
        o
    }

    /// Whether a candidate (an adapter, a control vector or both) is compared with the base.
    pub fn has_candidate(&self) -> bool {
        self.lora.is_some() || self.control_vector.is_some() || self.best_of.is_some()
    }

    /// The candidate's control vector, as the engine takes it.
    fn control(&self) -> Option<ControlSetting> {
        self.control_vector
            .as_deref()
            .map(|arg| ControlSetting::parse(arg, self.control_layers))
    }

    /// The name reports give this evaluation: `--name`, or what the candidate is.
    fn display_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let adapter = self.lora.as_ref().map(|path| {
            path.file_stem()
                .map_or("adapter".into(), |s| s.to_string_lossy().into_owned())
        });
        let steer = self.control().map(|c| c.label());
        let best = self.best_of.map(|n| format!("best of {n}"));
        let parts: Vec<String> = [adapter, steer, best].into_iter().flatten().collect();
        if parts.is_empty() {
            "base".into()
        } else {
            parts.join(" + ")
        }
    }

    /// The candidate's files as the evaluation records them (the adapter, the control vector
    /// with its scale and blocks, or both); `None` without a candidate.
    fn candidate_files(&self) -> Option<String> {
        let adapter = self.lora.as_ref().map(|p| p.display().to_string());
        let steer = self.control().map(|c| {
            let blocks = c
                .layers
                .map(|(a, b)| format!(" (blocks {a}-{b})"))
                .unwrap_or_default();
            format!("{}:{}{blocks}", c.path.display(), c.scale)
        });
        let best = match (self.best_of, &self.rm) {
            (Some(n), Some(rm)) => Some(format!("best of {n} by {}", rm.display())),
            _ => None,
        };
        let parts: Vec<String> = [adapter, steer, best].into_iter().flatten().collect();
        (!parts.is_empty()).then(|| parts.join(" + "))
    }

    /// Generate's options for one side: the base (`candidate` false) or the candidate.
    fn generate_options(&self, model: &Path, candidate: bool) -> GenerateOptions {
        let mut g = GenerateOptions::new(model, &self.constitution, Path::new(""), &self.db);
        g.engine = self.engine.clone();
        g.engine.model.model = Some(model.to_path_buf());
        g.rounds = 0;
        g.max_tokens = self.max_tokens;
        g.temperature = self.temperature;
        g.top_p = self.top_p;
        g.seed = self.seed;
        g.run.quiet = self.run.quiet;
        if candidate {
            // Eval's own flags (their help says what they are compared with) decode the
            // candidate as generate's would.
            g.adapter = crate::settings::AdapterSettings {
                lora: self.lora.clone(),
                lora_scale: self.lora_scale,
                control_vector: self.control_vector.clone(),
                control_layers: self.control_layers,
            };
            if let Some(n) = self.best_of {
                g.samples = n;
                g.temperature = self.sample_temperature;
            }
        }
        g
    }

    fn check(&self) -> Result<(), PipelineError> {
        self.engine.check()?;
        if let Some(n) = self.best_of {
            if !(2..=super::generate::MAX_SAMPLES).contains(&n) {
                return Err(PipelineError::Setting(format!(
                    "--best-of must be between 2 and {}",
                    super::generate::MAX_SAMPLES
                )));
            }
            if !(self.sample_temperature.is_finite() && self.sample_temperature > 0.0) {
                return Err(PipelineError::Setting(
                    "--sample-temperature must be above 0 (greedy samples are all alike)".into(),
                ));
            }
        }
        if self.questions == 0 {
            return Err(PipelineError::Setting(
                "--questions must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The prompt files: those given, or the bundled evaluation sets.
    pub(crate) fn prompt_files(&self) -> Result<Vec<PathBuf>, PipelineError> {
        if self.prompts.is_empty() {
            return crate::bundled::eval_sets().map_err(|e| {
                PipelineError::Setting(format!("cannot unpack the bundled evaluation sets: {e}"))
            });
        }
        self.prompts
            .iter()
            .map(|p| super::resolve_bundled(p, crate::bundled::PROMPT_SETS))
            .collect()
    }
}

/// Why a patterns-only evaluation's answers have no judge verdict.
const NOT_ASKED: &str = "not-asked";

/// What an evaluation run did, and (when it completed) its figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EvalSummary {
    pub eval_id: String,
    pub prompts: usize,
    pub base: GenerateSummary,
    pub adapter: Option<GenerateSummary>,
    /// Prompts without an answer on one side (failed generation): not judged.
    pub unanswered: usize,
    pub verdicts_written: usize,
    /// The judge model's verdicts on the calibration's known answers.
    pub calibration_written: usize,
    pub judgments_written: usize,
    pub comparisons_written: usize,
    pub failures: usize,
    pub seconds: f64,
    pub interrupted: bool,
    pub results: Option<EvalResults>,
}

/// A prompt's answer (step id, text) on each side — the candidate's only where there is a
/// candidate; `None` when a side has none (its generation failed), and the prompt is not judged.
fn sides_of<'a>(
    prompt_id: &str,
    base: &'a HashMap<String, (String, String)>,
    candidate: Option<&'a HashMap<String, (String, String)>>,
) -> Option<Vec<(EvalSide, &'a (String, String))>> {
    let mut sides = vec![(EvalSide::Base, base.get(prompt_id)?)];
    if let Some(candidate) = candidate {
        sides.push((EvalSide::Adapter, candidate.get(prompt_id)?));
    }
    Some(sides)
}

/// Best-of-N: the reward model scores every sample of the candidate's run (stored with the
/// database's reward scores, so a rerun scores nothing again) and each prompt keeps its
/// highest-scoring answer (the first sample on a tie). Returns the picked answers and how they
/// were picked, as the evaluation records it.
async fn best_of_samples(
    options: &EvalOptions,
    model: &Path,
    rm: &Path,
    store: &Store,
    run_id: &str,
    items: &[PromptItem],
) -> Result<(HashMap<String, (String, String)>, String), PipelineError> {
    let mut score = super::reward::RewardScoreOptions::new(model, rm);
    score.db = Some(options.db.clone());
    score.model.threads = options.engine.model.threads;
    score.run.quiet = options.run.quiet;
    super::reward::score(&score).await?;
    let rm_sha256 = store.model_sha256(rm).await?;
    let rewards = store.reward_scores(&rm_sha256).await?;
    let steps = store.steps_of_run(run_id).await?;
    let mut picked = HashMap::new();
    for item in items {
        let Some(samples) = steps.get(&item.id) else {
            continue;
        };
        let best = samples
            .iter()
            .filter(|s| s.stage == "answer")
            .map(|s| {
                let answer = [Message::assistant(s.output.clone())];
                let key = crate::export::answer_key(&item.messages, &answer);
                (rewards.get(&key).copied().unwrap_or(f64::NEG_INFINITY), s)
            })
            .fold(
                None::<(f64, &crate::store::StepRecord)>,
                |best, (r, s)| match best {
                    Some((b, _)) if b >= r => best,
                    _ => Some((r, s)),
                },
            );
        if let Some((_, s)) = best {
            picked.insert(item.id.clone(), (s.id(), s.output.clone()));
        }
    }
    let n = options.best_of.unwrap_or(1);
    Ok((picked, format!("best-of-{n} by reward {rm_sha256}")))
}

/// A held-out set must be held out: no evaluation prompt may have the content hash (the same
/// messages) of a training prompt. The error names the first overlaps by file and line.
pub(crate) fn check_held_out(
    held_out: &[prompt::PromptSet],
    training: &[prompt::PromptSet],
) -> Result<(), PipelineError> {
    let trained: std::collections::HashMap<&str, (&Path, usize)> = training
        .iter()
        .flat_map(|set| {
            set.items
                .iter()
                .map(|i| (i.id.as_str(), (set.path.as_path(), i.line)))
        })
        .collect();
    let overlaps: Vec<String> = held_out
        .iter()
        .flat_map(|set| set.items.iter().map(move |i| (set, i)))
        .filter_map(|(set, item)| {
            let (path, line) = trained.get(item.id.as_str())?;
            Some(format!(
                "{}:{}: also in the training prompts at {}:{line}",
                set.path.display(),
                item.line,
                path.display()
            ))
        })
        .collect();
    if overlaps.is_empty() {
        return Ok(());
    }
    Err(PipelineError::Setting(format!(
        "{} evaluation prompt(s) were trained on, so they measure nothing held out:\n  {}{}",
        overlaps.len(),
        overlaps
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  "),
        if overlaps.len() > 5 { "\n  …" } else { "" }
    )))
}

/// Runs (or resumes) an evaluation.
pub async fn eval(options: &EvalOptions, stop: StopSignal) -> Result<EvalSummary, PipelineError> {
    options.check()?;
    let constitution_path =
        super::resolve_bundled(&options.constitution, crate::bundled::CONSTITUTIONS)?;
    let constitution = Constitution::load(&constitution_path)?;
    if options.has_candidate() && constitution.comparisons.is_empty() {
        return Err(PipelineError::Setting(format!(
            "{}: `comparisons` is empty: there is nothing to compare the candidate with the base by",
            constitution_path.display()
        )));
    }
    eval_under(options, &constitution, stop).await
}

/// [`eval`] under a constitution already loaded (`options.constitution` is not read again, as
/// in `tenets loop`, which loads it once for all its rounds).
pub async fn eval_under(
    options: &EvalOptions,
    constitution: &Constitution,
    stop: StopSignal,
) -> Result<EvalSummary, PipelineError> {
    options.check()?;
    let started = Instant::now();
    // Everything the user gave is read and checked before any model loads.
    if options.has_candidate() && constitution.comparisons.is_empty() {
        return Err(PipelineError::Setting(format!(
            "constitution `{}`: `comparisons` is empty: there is nothing to compare the \
             candidate with the base by",
            constitution.name
        )));
    }
    let model = options.engine.model.model_path()?;
    let verdict_frame = VerdictFrame::load(options.templates.as_deref())?;
    let judge_frame = match &options.templates {
        Some(dir) => JudgeFrame::from_dir(dir)?,
        None => JudgeFrame::bundled()?,
    };
    let mut sets = Vec::new();
    for path in &options.prompt_files()? {
        sets.push(prompt::load(path)?);
    }
    check_prompt_sets(&sets, options.strict)?;
    let mut trained = Vec::new();
    for path in &options.trained_on {
        trained.push(prompt::load(&super::resolve_bundled(
            path,
            crate::bundled::PROMPT_SETS,
        )?)?);
    }
    check_held_out(&sets, &trained)?;
    let mut items: Vec<PromptItem> = Vec::new();
    for item in sets.iter().flat_map(|s| s.items.iter()) {
        if !items.iter().any(|i| i.id == item.id) {
            items.push(item.clone());
        }
    }
    if items.is_empty() {
        return Err(PipelineError::Setting(
            "the prompt files hold no prompts".into(),
        ));
    }
    let unkinded = items
        .iter()
        .filter(|i| !matches!(i.kind.as_deref(), Some("harmful" | "benign")))
        .count();
    if unkinded > 0 {
        tracing::warn!(
            "{unkinded} prompt(s) have no `kind` of harmful or benign: they count in the win \
             rate only, not in the compliance and over-refusal rates"
        );
    }
    let judge_model = options.judge_model.clone().unwrap_or(model.clone());
    engine::check_model_file(&judge_model)?;
    if let Some(lora) = &options.lora {
        engine::check_adapter_file(lora)?;
    }
    if let Some(control) = options.control() {
        engine::control::read(&control, &model)?;
    }
    if let Some(rm) = &options.rm {
        super::reward::check_reward_model(&model, rm)?;
    }

    // Phase 1: the answers.
    let mut summary = EvalSummary {
        prompts: items.len(),
        ..EvalSummary::default()
    };
    summary.base = generate_sets(
        &options.generate_options(&model, false),
        constitution,
        sets.clone(),
        stop.clone(),
    )
    .await?;
    if summary.base.interrupted {
        return finish(summary, started, true);
    }
    if options.has_candidate() {
        let adapter = generate_sets(
            &options.generate_options(&model, true),
            constitution,
            sets,
            stop.clone(),
        )
        .await?;
        let interrupted = adapter.interrupted;
        summary.adapter = Some(adapter);
        if interrupted {
            return finish(summary, started, true);
        }
    }

    // Phase 2: the judge.
    let store = Store::open(&options.db).await?;
    let answers = |run: &str| {
        let store = store.clone();
        let run = run.to_string();
        async move {
            let steps = store.steps_of_run(&run).await?;
            Ok::<_, PipelineError>(
                steps
                    .into_iter()
                    .filter_map(|(prompt, s)| {
                        s.into_iter()
                            .find(|s| s.stage == "answer")
                            .map(|s| (prompt, (s.id(), s.output)))
                    })
                    .collect::<std::collections::HashMap<_, _>>(),
            )
        }
    };
    let base_answers = answers(&summary.base.run_id).await?;
    let (adapter_answers, candidate_selection) = match (&summary.adapter, &options.rm) {
        (Some(a), Some(rm)) => {
            let (picked, selection) =
                best_of_samples(options, &model, rm, &store, &a.run_id, &items).await?;
            (Some(picked), Some(selection))
        }
        (Some(a), None) => (Some(answers(&a.run_id).await?), None),
        (None, _) => (None, None),
    };

    let prompt_ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let prompts_sha256 = crate::hash::of_json(&{
        let mut ids = prompt_ids.clone();
        ids.sort();
        ids
    });
    // What identifies the evaluation; a judge model, when one runs, fills in its part below.
    let record = EvalRecord {
        name: options.display_name(),
        base_run_id: summary.base.run_id.clone(),
        adapter_run_id: summary.adapter.as_ref().map(|a| a.run_id.clone()),
        adapter_path: options.candidate_files(),
        judge_model_path: PATTERNS_ONLY.into(),
        judge_model_sha256: PATTERNS_ONLY.into(),
        chat_template_sha256: String::new(),
        constitution_name: constitution.name.clone(),
        constitution_sha256: constitution.content_hash(),
        constitution_json: serde_json::to_string(&constitution).unwrap_or_default(),
        verdict_frame_sha256: String::new(),
        judge_frame_sha256: String::new(),
        questions: 0,
        principle_questions: 0,
        seed: options.seed as i64,
        prompts_sha256,
        candidate_selection,
    };
    if options.patterns_only {
        let eval_id = store.upsert_eval(&record, &prompt_ids).await?;
        summary.eval_id = eval_id.clone();
        let done = store.eval_verdicts_done(&eval_id).await?;
        for item in &items {
            let Some(sides) = sides_of(&item.id, &base_answers, adapter_answers.as_ref()) else {
                summary.unanswered += 1;
                continue;
            };
            for (side, (step_id, output)) in sides {
                if done.contains(&(side, item.id.clone())) {
                    continue;
                }
                store
                    .commit_verdict(&VerdictRecord {
                        eval_id: eval_id.clone(),
                        side,
                        prompt_id: item.id.clone(),
                        step_id: step_id.clone(),
                        pattern: pattern_verdict(output).as_str().to_string(),
                        judge: Err(NOT_ASKED),
                        p_comply: 0.0,
                        p_refuse: 0.0,
                        p_partial: 0.0,
                        answer_mass: 0.0,
                    })
                    .await?;
                summary.verdicts_written += 1;
            }
        }
        summary.results = Some(results::load(&store, &eval_id).await?);
        store.close().await;
        return finish(summary, started, false);
    }

    let config = options.engine.config(&judge_model);
    let (jobs_tx, jobs_rx) = mpsc::channel::<Box<dyn Session>>(options.engine.parallel * 2);
    let counters = Arc::new(Counters::default());
    let (((pair_letters, verdict_letters), chat_hash), engine_task) = engine::start_local(
        config,
        Sampling::GREEDY,
        jobs_rx,
        stop.clone(),
        counters.clone(),
        |model| {
            let letters: Vec<Vec<LlamaToken>> = Refusal::LETTERS
                .iter()
                .map(|&c| label::letter_tokens(model, c))
                .collect();
            Ok((AnswerTokens::of(model), letters))
        },
    )
    .await?;
    if verdict_letters.iter().any(Vec::is_empty) {
        stop.abort();
        return Err(PipelineError::Setting(format!(
            "the judge's vocabulary has no single token for \"A\", \"B\" or \"C\" ({})",
            judge_model.display()
        )));
    }
    let record = EvalRecord {
        judge_model_path: judge_model.display().to_string(),
        judge_model_sha256: store.model_sha256(&judge_model).await?,
        chat_template_sha256: chat_hash,
        verdict_frame_sha256: verdict_frame.hash().to_string(),
        judge_frame_sha256: judge_frame.hash().to_string(),
        questions: options.questions as i64,
        principle_questions: options.principle_questions as i64,
        ..record
    };
    let eval_id = store.upsert_eval(&record, &prompt_ids).await?;
    let judge_key = record.judge_key();
    summary.eval_id = eval_id.clone();
    tracing::info!(eval = %eval_id, prompts = items.len(), "eval");

    let principle_comparisons: Vec<crate::constitution::Comparison> = constitution
        .principles
        .iter()
        .map(principle_comparison)
        .collect();
    let verdicts_done = store.eval_verdicts_done(&eval_id).await?;
    let (mut stored, compared) = store
        .judgment_progress(JudgmentTable::Comparisons, &eval_id)
        .await?;
    let (verdict_tx, verdict_inbox) = writer::channel::<VerdictWrite>(options.engine.parallel * 2);
    let (pair_tx, pair_inbox) = writer::channel::<LabelWrite>(options.engine.parallel * 2);
    let verdict_context = Arc::new(VerdictContext {
        eval_id: eval_id.clone(),
        judge_key: judge_key.clone(),
        frame: verdict_frame,
        letters: Arc::new(Probe {
            answers: Refusal::LETTERS.iter().map(|c| c.to_string()).collect(),
            tokens: verdict_letters,
        }),
        writer: verdict_tx,
    });
    let pair_context = Arc::new(LabelContext {
        judge_id: eval_id.clone(),
        frame: judge_frame,
        answers: Arc::new(Probe {
            answers: vec!["A".into(), "B".into()],
            tokens: pair_letters.sets(),
        }),
        cot: None,
        writer: pair_tx,
        calibration: false,
    });
    let mut sessions: Vec<Box<dyn Session>> = Vec::new();
    let mut remaining = 0u64;
    // The judge's calibration first: the known answers, in the frame the answers get (once
    // per judge: a later evaluation by the same judge reuses it).
    let calibrated = store.eval_calibration_done(&judge_key).await?;
    for known in known_answers(constitution) {
        if !calibrated.contains(&known.id) {
            remaining += ROTATIONS as u64;
            sessions.push(Box::new(VerdictSession {
                context: verdict_context.clone(),
                target: VerdictTarget::Known {
                    item_id: known.id,
                    kind: known.kind,
                    expected: known.expected,
                },
                request: known.request,
                reply: known.answer,
                masses: Vec::new(),
                asked: None,
            }));
        }
    }
    for item in &items {
        let Some(sides) = sides_of(&item.id, &base_answers, adapter_answers.as_ref()) else {
            summary.unanswered += 1;
            continue;
        };
        let (base, adapter) = (sides[0].1, sides[sides.len() - 1].1);
        for (side, (step_id, output)) in sides {
            if !verdicts_done.contains(&(side, item.id.clone())) {
                remaining += ROTATIONS as u64;
                sessions.push(Box::new(VerdictSession {
                    context: verdict_context.clone(),
                    target: VerdictTarget::Answer {
                        side,
                        prompt_id: item.id.clone(),
                        step_id: step_id.clone(),
                    },
                    request: item.text().to_string(),
                    reply: output.clone(),
                    masses: Vec::new(),
                    asked: None,
                }));
            }
        }
        if adapter_answers.is_some() && !compared.contains(&item.id) {
            let mut questions = label::questions_for(
                &constitution.comparisons,
                options.questions,
                options.seed,
                &item.id,
            );
            let principles = constitution.sample_principles(
                options.seed,
                &format!("eval {}", item.id),
                options.principle_questions,
            );
            questions.extend(principles.iter().filter_map(|p| {
                principle_comparisons
                    .iter()
                    .find(|c| c.id == format!("{PRINCIPLE_PREFIX}{}", p.id))
            }));
            let done = stored.remove(&item.id).unwrap_or_default();
            let pair = PairForLabel {
                pair_id: item.id.clone(),
                messages: item.messages.clone(),
                chosen: adapter.1.clone(),
                rejected: base.1.clone(),
            };
            let session = PairSession::new(pair_context.clone(), pair, questions, done);
            remaining += session.remaining() as u64;
            sessions.push(Box::new(session));
        }
    }
    drop((verdict_context, pair_context));

    let progress = progress_bar(options.run.quiet, remaining, "judgments");
    let verdict_writer = writer::spawn(
        verdict_inbox,
        VerdictWriter {
            store: store.clone(),
            progress: progress.clone(),
            written: 0,
            known: 0,
            failures: 0,
        },
        stop.clone(),
    );
    let pair_writer = writer::spawn(
        pair_inbox,
        JudgmentWriter::new(store.clone(), progress.clone(), JudgmentTable::Comparisons),
        stop.clone(),
    );
    for session in sessions {
        if stop.draining() || jobs_tx.send(session).await.is_err() {
            break;
        }
    }
    drop(jobs_tx);
    let engine_result = engine_task
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))?;
    let verdicts = verdict_writer
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))??;
    let pairs = pair_writer
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))??;
    engine_result?;
    progress.finish_and_clear();
    summary.verdicts_written = verdicts.written;
    summary.calibration_written = verdicts.known;
    summary.judgments_written = pairs.judgments;
    summary.comparisons_written = pairs.labels;
    summary.failures = verdicts.failures + pairs.failures;
    let interrupted = stop.draining();
    if !interrupted {
        summary.results = Some(results::load(&store, &eval_id).await?);
    }
    store.close().await;
    finish(summary, started, interrupted)
}

fn finish(
    mut summary: EvalSummary,
    started: Instant,
    interrupted: bool,
) -> Result<EvalSummary, PipelineError> {
    summary.seconds = started.elapsed().as_secs_f64();
    summary.interrupted = interrupted;
    Ok(summary)
}

/// What every verdict session shares.
struct VerdictContext {
    eval_id: String,
    /// What the judge's calibration verdicts are kept under.
    judge_key: String,
    frame: VerdictFrame,
    /// "A", "B", "C" and their token forms: the only answers the judge is read for.
    letters: Arc<Probe>,
    writer: Writer<VerdictWrite>,
}

/// What a verdict session reads: an answer under evaluation, or a known answer of the judge's
/// calibration.
enum VerdictTarget {
    Answer {
        side: EvalSide,
        prompt_id: String,
        step_id: String,
    },
    Known {
        item_id: String,
        kind: &'static str,
        expected: Refusal,
    },
}

impl VerdictTarget {
    /// The prompt or calibration item, for messages.
    fn id(&self) -> &str {
        match self {
            VerdictTarget::Answer { prompt_id, .. } => prompt_id,
            VerdictTarget::Known { item_id, .. } => item_id,
        }
    }
}

/// A verdict made durable in its table.
enum Verdict {
    Answer(VerdictRecord),
    Known(KnownVerdictRecord),
}

/// A verdict to make durable, or a failure to report: (prompt or item id, reason).
type VerdictWrite = Result<Verdict, (String, String)>;

/// One answer's refusal verdict: one probe turn per rotation of the options, back to back on
/// one slot (the request and reply, ahead of the options, stay in its KV cache).
struct VerdictSession {
    context: Arc<VerdictContext>,
    target: VerdictTarget,
    request: String,
    reply: String,
    /// The (A), (B), (C) masses of each rotation asked so far.
    masses: Vec<Vec<f64>>,
    /// The rotation in flight.
    asked: Option<usize>,
}

impl VerdictSession {
    fn send(&self, verdict: VerdictWrite) -> oneshot::Receiver<bool> {
        self.context.writer.send(verdict)
    }

    fn fail(&self, reason: String) -> oneshot::Receiver<bool> {
        self.send(Err((self.target.id().to_string(), reason)))
    }
}

impl Session for VerdictSession {
    fn next_turn(&mut self) -> Next {
        let rotation = self.masses.len();
        if rotation == ROTATIONS || self.asked.is_some() {
            return Next::Done;
        }
        self.asked = Some(rotation);
        let text = match self
            .context
            .frame
            .render(&self.request, &self.reply, rotation)
        {
            Ok(text) => text,
            Err(e) => return Next::Wait(self.fail(e.to_string())),
        };
        Next::Turn(TurnRequest {
            messages: vec![Message::user(text)],
            reply_prefix: ANSWER_PREFIX.to_string(),
            max_tokens: 1,
            seed: 0,
            probe: Some(self.context.letters.clone()),
            options: crate::engine::TurnOptions::default(),
        })
    }

    fn finish_turn(&mut self, outcome: Result<TurnOutput, TurnFailure>) -> oneshot::Receiver<bool> {
        if self.asked.take().is_none() {
            return session::resolved(false);
        }
        let output = match outcome {
            Ok(output) => output,
            Err(failure) => return self.fail(failure.to_string()),
        };
        self.masses.push(output.probe_mass);
        if self.masses.len() < ROTATIONS {
            return session::resolved(true);
        }
        let judged = JudgeVerdict::from_rotations(&self.masses);
        let [p_comply, p_refuse, p_partial] = judged.probabilities;
        let eval_id = self.context.eval_id.clone();
        let judge = judged.verdict.map(|r| r.as_str()).map_err(|n| n.as_str());
        let answer_mass = judged.answer_mass;
        self.send(Ok(match &self.target {
            VerdictTarget::Answer {
                side,
                prompt_id,
                step_id,
            } => Verdict::Answer(VerdictRecord {
                eval_id,
                side: *side,
                prompt_id: prompt_id.clone(),
                step_id: step_id.clone(),
                pattern: pattern_verdict(&self.reply).as_str().to_string(),
                judge,
                p_comply,
                p_refuse,
                p_partial,
                answer_mass,
            }),
            VerdictTarget::Known {
                item_id,
                kind,
                expected,
            } => Verdict::Known(KnownVerdictRecord {
                judge_key: self.context.judge_key.clone(),
                item_id: item_id.clone(),
                kind: kind.to_string(),
                expected: expected.as_str().to_string(),
                judge,
                p_comply,
                p_refuse,
                p_partial,
                answer_mass,
            }),
        }))
    }
}

/// Commits each verdict (a verdict that could not be made is counted and ends its session).
struct VerdictWriter {
    store: Store,
    progress: indicatif::ProgressBar,
    /// Verdicts on answers under evaluation.
    written: usize,
    /// Verdicts on the calibration's known answers.
    known: usize,
    failures: usize,
}

impl Commit<VerdictWrite> for VerdictWriter {
    async fn commit(&mut self, write: VerdictWrite) -> Result<bool, crate::store::StoreError> {
        match write {
            Ok(v) => {
                match v {
                    Verdict::Answer(v) => {
                        self.store.commit_verdict(&v).await?;
                        self.written += 1;
                    }
                    Verdict::Known(v) => {
                        self.store.commit_known_verdict(&v).await?;
                        self.known += 1;
                    }
                }
                self.progress.inc(ROTATIONS as u64);
                Ok(true)
            }
            Err((prompt, reason)) => {
                tracing::warn!(prompt = %prompt, "no verdict: {reason}");
                self.failures += 1;
                Ok(false)
            }
        }
    }
}

/// The figures as a terminal table.
pub fn render(summary: &EvalSummary) -> String {
    let Some(r) = &summary.results else {
        return format!(
            "evaluation {} interrupted after {:.0} s; run the same command to resume\n",
            summary.eval_id, summary.seconds
        );
    };
    let mut out = format!(
        "evaluation {} ({}) — {} prompts, judge: {}\n",
        &r.eval_id[..12.min(r.eval_id.len())],
        r.name,
        r.prompts,
        r.judge_model
    );
    let line = |label: &str, base: String, adapter: Option<String>| {
        format!("  {label:<32} {base:<32} {}\n", adapter.unwrap_or_default())
    };
    out += &line(
        "",
        "base".into(),
        r.adapter_rates.as_ref().map(|_| "candidate".into()),
    );
    let a = r.adapter_rates.as_ref();
    if !r.patterns_only() {
        out += &line(
            "harmful compliance (judge)",
            r.base.harmful_compliance.display(),
            a.map(|a| a.harmful_compliance.display()),
        );
        out += &line(
            "over-refusal (judge)",
            r.base.over_refusal.display(),
            a.map(|a| a.over_refusal.display()),
        );
    }
    out += &line(
        "harmful compliance (patterns)",
        r.base.harmful_compliance_pattern.display(),
        a.map(|a| a.harmful_compliance_pattern.display()),
    );
    out += &line(
        "over-refusal (patterns)",
        r.base.over_refusal_pattern.display(),
        a.map(|a| a.over_refusal_pattern.display()),
    );
    if let Some(rm) = &r.reward_model {
        out += &format!(
            "  candidate: best of its samples by the {}\n",
            results::describe_reward_model(rm)
        );
    }
    if r.patterns_only() {
        out +=
            "  read by the string patterns alone (--patterns-only): no judge model, no win rate\n";
        return out;
    }
    out += &format!(
        "  judges agree (refused or not)   {}\n",
        r.judge_agreement.display()
    );
    if let Some(c) = &r.judge_calibration {
        out += &format!("  judge model on known answers    {}\n", c.describe());
    }
    if r.judge_blind() {
        out += "  the judge model does not tell a refusal from an answer: its rates above are not \
                evidence (read the patterns' rates)\n";
    }
    let no_verdict = r.base.no_verdict + a.map_or(0, |a| a.no_verdict);
    if no_verdict > 0 {
        out += &format!(
            "  no verdict from the judge model on {no_verdict} answer(s) (no probability on any \
             option, or a tie): left out of its rates\n"
        );
    }
    if r.unanswered.judgments > 0 {
        out += &format!(
            "  comparisons without an answer: {} judgment(s), {} prompt(s) with none: left out \
             of the win rate\n",
            r.unanswered.judgments, r.unanswered.prompts
        );
    }
    if let Some(w) = &r.win_rate {
        out += &format!(
            "  p(candidate ≻ base)               {}  wins {}  order disagreement {:.1}%\n",
            w.preference.display(),
            w.wins.display(),
            100.0 * w.order_disagreement
        );
        for (kind, w) in &r.win_rate_by_kind {
            out += &format!("    on {kind:<28} {}\n", w.preference.display());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_candidate_is_the_adapter_the_vector_or_both() {
        let mut o = EvalOptions::new(
            Path::new("m.gguf"),
            Path::new("c.yaml"),
            Vec::new(),
            Path::new("e.db"),
        );
        assert!(!o.has_candidate());
        assert_eq!(o.display_name(), "base");
        assert_eq!(o.candidate_files(), None);

        o.control_vector = Some("out/refusal.gguf:0.2".into());
        o.control_layers = Some((4, 12));
        assert!(o.has_candidate());
        assert_eq!(o.display_name(), "refusal@0.2 blocks 4-12");
        assert_eq!(
            o.candidate_files().as_deref(),
            Some("out/refusal.gguf:0.2 (blocks 4-12)")
        );
        let base = o.generate_options(Path::new("m.gguf"), false);
        assert_eq!(
            (base.adapter.control_vector, base.adapter.control_layers),
            (None, None)
        );
        let steered = o.generate_options(Path::new("m.gguf"), true);
        assert_eq!(
            steered.adapter.control_vector.as_deref(),
            Some("out/refusal.gguf:0.2")
        );
        assert_eq!(steered.adapter.control_layers, Some((4, 12)));
        assert_eq!(steered.adapter.lora, None);

        o.lora = Some("a.gguf".into());
        assert_eq!(o.display_name(), "a + refusal@0.2 blocks 4-12");
        assert!(o
            .generate_options(Path::new("m.gguf"), true)
            .adapter
            .lora
            .is_some());
        o.best_of = Some(4);
        o.rm = Some("rm.gguf".into());
        assert_eq!(o.display_name(), "a + refusal@0.2 blocks 4-12 + best of 4");
        let sampled = o.generate_options(Path::new("m.gguf"), true);
        assert_eq!((sampled.samples, sampled.temperature), (4, 0.7));
        assert_eq!(o.generate_options(Path::new("m.gguf"), false).samples, 1);
        assert!(o
            .candidate_files()
            .is_some_and(|f| f.ends_with("best of 4 by rm.gguf")));
        o.name = Some("mine".into());
        assert_eq!(o.display_name(), "mine");
        o.best_of = Some(1);
        assert!(o.check().is_err());
    }
}
