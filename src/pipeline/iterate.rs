//! `tenets loop`: generate → label → SFT → on-policy answers → DPO → eval, round after round.
//!
//! Everything lives in one database, `DIR/loop.db`, and every stage is the ordinary resumable
//! stage, so a loop killed anywhere continues where it stopped when run again. Round k
//! generates with round k−1's adapter (its answers are a run of their own: the adapter's hash is
//! part of the run id) and the judge labels every pair not yet labeled (calibrating itself
//! first). Then the safety recipe: SFT on the constitution's safety data (principled refusals
//! for harmful prompts, helpful answers for benign ones), the SFT model answers the training
//! prompts again (what it now refuses needlessly is what DPO must unlearn), and DPO from the SFT
//! adapter on the safety pairs plus the revision pairs — oriented by the judge when its
//! calibration clears chance, else revision ≻ first answer with hard labels. `--no-sft` trains
//! DPO alone on the pairs against the base (iterated DPO). Each round's adapter is evaluated
//! against the base on the held-out sets; the loop stops early when over-refusal rose by more
//! than the threshold from the previous round. The report shows every round side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::eval::{self, EvalOptions};
use super::label::{self, LabelOptions};
use super::train::{self, TrainData, TrainOptions};
use super::{check_prompt_sets, generate_sets, resolve_bundled, GenerateOptions, PipelineError};
use crate::constitution::Constitution;
use crate::engine::StopSignal;
use crate::filters::SafetyPairs;
use crate::prompt;
use crate::settings::{BackendKind, BackendSettings, EngineSettings, ModelSettings, RunSettings};
use crate::store::JudgeCalibration;
use crate::train::trainer::Loss;

/// Everything `tenets loop` needs: its command line. Stage settings not named here keep their
/// stage's defaults.
#[derive(clap::Args, Debug, Clone)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
pub struct LoopOptions {
    /// The base model (`--model`: trained and evaluated here), and how every stage decodes.
    #[command(flatten)]
    pub engine: EngineSettings,
    /// Where generate and label run (evaluation and training stay on --model here).
    #[command(flatten)]
    pub backend: BackendSettings,
    /// Constitution (YAML), or a bundled one by name: harmless-helpful, medical-info.
    #[arg(long)]
    pub constitution: PathBuf,
    /// Training prompts (generate's input), or a bundled set by name.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Held-out evaluation prompt files (repeat the flag) [default: the bundled eval sets]
    #[arg(long)]
    pub eval_prompts: Vec<PathBuf>,
    /// Output directory: loop.db, adapter-round-K.gguf, report.html.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Critique/revision rounds per prompt when generating (1-4).
    #[arg(long, default_value_t = 1)]
    pub critique_rounds: usize,
    /// Most new tokens per generated turn.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Most new tokens per evaluation answer.
    #[arg(long, default_value_t = 192)]
    pub eval_max_tokens: usize,
    /// Comparison questions per pair (labeling) and per prompt (evaluation).
    #[arg(long, default_value_t = 2)]
    pub questions: usize,
    /// DPO optimiser steps per round [default: --epochs over the data]
    #[arg(long = "steps")]
    pub train_steps: Option<u64>,
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// SFT optimiser steps per round [default: --sft-epochs over the safety data]
    #[arg(long)]
    pub sft_steps: Option<u64>,
    #[arg(long, default_value_t = 2.0)]
    pub sft_epochs: f64,
    /// Skip the SFT stage and its on-policy answers: DPO alone on the pairs, from the base
    /// (iterated DPO).
    #[arg(long)]
    pub no_sft: bool,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// Longest training sequence (prompt + answer), in tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Train on pairs whose answers hit the token limit too (dropped by default, as in export).
    #[arg(long)]
    pub include_truncated: bool,
    /// Stop after a round whose over-refusal (judge model) rose by more than this (0.1 = 10
    /// points) from the previous round (the base model for round 1).
    #[arg(long, default_value_t = 0.1)]
    pub max_over_refusal_increase: f64,
    /// Orient pairs by the judge's labels even when its calibration on the constitution's
    /// known-answer pairs does not clear chance (by default the loop then trains on hard
    /// labels: each revision over its first answer).
    #[arg(long)]
    pub trust_judge: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub run: RunSettings,
}

impl LoopOptions {
    /// The defaults of `tenets loop` for these inputs.
    pub fn new(
        model: &Path,
        constitution: &Path,
        prompts: &Path,
        eval_prompts: Vec<PathBuf>,
        dir: &Path,
    ) -> Self {
        let mut o: Self =
            crate::settings::from_flags(&["--constitution", "-", "--prompts", "-", "--dir", "-"]);
        o.engine.model = ModelSettings::of(model);
        o.constitution = constitution.to_path_buf();
        o.prompts = prompts.to_path_buf();
        o.eval_prompts = eval_prompts;
        o.dir = dir.to_path_buf();
        o
    }

    /// The loop's database.
    pub fn db(&self) -> PathBuf {
        self.dir.join("loop.db")
    }

    /// Round `k`'s adapter.
    pub fn adapter(&self, round: usize) -> PathBuf {
        self.dir.join(format!("adapter-round-{round}.gguf"))
    }

    /// Round `k`'s SFT adapter, DPO's starting point.
    pub fn sft_adapter(&self, round: usize) -> PathBuf {
        self.dir.join(format!("sft-round-{round}.gguf"))
    }

    fn check(&self) -> Result<(), PipelineError> {
        self.engine.check()?;
        let bad = |m: &str| Err(PipelineError::Setting(m.to_string()));
        if self.rounds == 0 || self.rounds > 20 {
            return bad("--rounds must be between 1 and 20");
        }
        if !(1..=4).contains(&self.critique_rounds) {
            return bad(
                "--critique-rounds must be between 1 and 4 (a round needs pairs to train on)",
            );
        }
        if !(self.max_over_refusal_increase.is_finite() && self.max_over_refusal_increase >= 0.0) {
            return bad("--max-over-refusal-increase must be 0 or more");
        }
        if !(self.sft_epochs.is_finite() && self.sft_epochs > 0.0) {
            return bad("--sft-epochs must be above 0");
        }
        if self.sft_steps == Some(0) {
            return bad("--sft-steps must be at least 1");
        }
        Ok(())
    }
}

/// One round's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundSummary {
    pub round: usize,
    pub generate_run: String,
    pub pairs_labeled: usize,
    /// How the round's pairs were oriented: by the judge's labels, or (a judge that is not
    /// trusted) the revision over the first answer with hard labels, and why.
    pub labels: String,
    /// The SFT stage's training run and adapter (none with --no-sft).
    pub sft_run: Option<String>,
    pub sft_adapter: Option<PathBuf>,
    /// The SFT model's answers to the training prompts (none with --no-sft).
    pub on_policy_run: Option<String>,
    pub train_run: String,
    pub adapter: PathBuf,
    pub eval_id: String,
    pub harmful_compliance: f64,
    pub over_refusal: f64,
    pub base_over_refusal: f64,
    /// Which judge the three rates above are by: the string patterns when the judge model
    /// failed its calibration on the constitution's known answers, else the judge model.
    pub measured_by: String,
    pub win_rate: Option<f64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoopSummary {
    pub db: PathBuf,
    pub rounds: Vec<RoundSummary>,
    /// Why the loop ended before its last round, if it did.
    pub stopped_early: Option<String>,
    pub interrupted: bool,
    pub report: Option<PathBuf>,
}

/// Runs (or resumes) the loop.
pub async fn run(options: &LoopOptions, stop: StopSignal) -> Result<LoopSummary, PipelineError> {
    options.check()?;
    // The base model is trained and evaluated here, whatever serves generate and label.
    let model = options.engine.model.model_path()?;
    options.backend.resolve()?;
    // The constitution and the prompts are read once, before anything runs, for every round.
    let constitution_path = resolve_bundled(&options.constitution, crate::bundled::CONSTITUTIONS)?;
    let constitution = Constitution::load(&constitution_path)?;
    let prompt_set = prompt::load(&resolve_bundled(
        &options.prompts,
        crate::bundled::PROMPT_SETS,
    )?)?;
    check_prompt_sets(std::slice::from_ref(&prompt_set), false)?;
    let eval_options = EvalOptions::new(
        &model,
        &constitution_path,
        options.eval_prompts.clone(),
        &options.db(),
    );
    let mut eval_sets = Vec::new();
    for path in eval_options.prompt_files()? {
        eval_sets.push(prompt::load(&path)?);
    }
    eval::check_held_out(&eval_sets, std::slice::from_ref(&prompt_set))?;
    std::fs::create_dir_all(&options.dir).map_err(|e| {
        PipelineError::Setting(format!("cannot create {}: {e}", options.dir.display()))
    })?;
    let db = options.db();
    let mut summary = LoopSummary {
        db: db.clone(),
        rounds: Vec::new(),
        stopped_early: None,
        interrupted: false,
        report: None,
    };
    let mut previous_over_refusal: Option<f64> = None;
    for round in 1..=options.rounds {
        let started = Instant::now();
        let previous_adapter = (round > 1).then(|| options.adapter(round - 1));
        tracing::info!(round, "loop: generate");
        let mut g = GenerateOptions::new(&model, &constitution_path, &options.prompts, &db);
        g.engine = options.engine.clone();
        g.backend = options.backend.clone();
        if options.backend.backend != BackendKind::Llama {
            // The server names its own model.
            g.engine.model.model = None;
        }
        g.rounds = options.critique_rounds;
        g.max_tokens = options.max_tokens;
        g.seed = options.seed + round as u64 - 1;
        g.run.quiet = options.run.quiet;
        g.adapter.lora = previous_adapter.clone();
        let generated =
            generate_sets(&g, &constitution, vec![prompt_set.clone()], stop.clone()).await?;
        if generated.interrupted {
            summary.interrupted = true;
            return Ok(summary);
        }

        tracing::info!(round, "loop: label");
        let mut l = LabelOptions::new(&db);
        l.engine = g.engine.clone();
        l.backend = g.backend.clone();
        l.constitution = Some(constitution_path.clone());
        l.questions = options.questions;
        l.seed = options.seed;
        l.run.quiet = options.run.quiet;
        let labeled = label::label_under(&l, Some(&constitution), stop.clone()).await?;
        if labeled.interrupted {
            summary.interrupted = true;
            return Ok(summary);
        }

        let (hard_labels, labels) = orientation(labeled.calibration.as_ref(), options.trust_judge);
        if hard_labels {
            tracing::warn!(round, "{labels}");
            if !options.run.quiet {
                eprintln!("round {round}: {labels}");
            }
        }

        let adapter = options.adapter(round);
        let train_options = |out: &Path| {
            let mut t = TrainOptions::new(&model, TrainData::Db(db.clone()), out);
            t.model.threads = options.engine.model.threads;
            t.lr = options.lr;
            t.beta = options.beta;
            t.rank = options.rank;
            t.alpha = 2.0 * options.rank as f32;
            t.max_length = options.max_length;
            // --max-prompt-length: half of --max-length, its default.
            t.filters.include_truncated = options.include_truncated;
            t.seed = options.seed;
            t.resume = true;
            // A round's final score is the evaluation below.
            t.no_final_eval = true;
            t.run.quiet = options.run.quiet;
            t
        };
        let (mut sft_run, mut sft_adapter, mut on_policy_run) = (None, None, None);
        if !options.no_sft {
            tracing::info!(round, "loop: SFT on the safety data");
            let out = options.sft_adapter(round);
            let mut t = train_options(&out);
            t.loss = Loss::Sft;
            t.steps = options.sft_steps;
            t.epochs = options.sft_epochs;
            t.init_adapter = previous_adapter.clone();
            let trained = train::train(&t, stop.clone()).await?;
            if trained.stopped {
                summary.interrupted = true;
                return Ok(summary);
            }
            sft_run = Some(trained.run_id);

            tracing::info!(round, "loop: the SFT model answers the training prompts");
            let mut a = g.clone();
            a.rounds = 0;
            a.adapter.lora = Some(out.clone());
            let answered =
                generate_sets(&a, &constitution, vec![prompt_set.clone()], stop.clone()).await?;
            if answered.interrupted {
                summary.interrupted = true;
                return Ok(summary);
            }
            on_policy_run = Some(answered.run_id);
            sft_adapter = Some(out);
        }

        tracing::info!(round, "loop: DPO");
        let mut t = train_options(&adapter);
        t.steps = options.train_steps;
        t.epochs = options.epochs;
        t.filters.hard_labels = hard_labels;
        t.filters.trust_judge = !hard_labels;
        if let Some(init) = &sft_adapter {
            t.init_adapter = Some(init.clone());
            t.filters.safety_pairs = Some(SafetyPairs::Add);
        }
        let trained = train::train(&t, stop.clone()).await?;
        if trained.stopped {
            summary.interrupted = true;
            return Ok(summary);
        }

        tracing::info!(round, "loop: eval");
        let mut e = EvalOptions::new(
            &model,
            &constitution_path,
            options.eval_prompts.clone(),
            &db,
        );
        e.engine = options.engine.clone();
        e.engine.model.model = Some(model.clone());
        e.lora = Some(adapter.clone());
        e.name = Some(format!("round {round}"));
        e.questions = options.questions;
        e.max_tokens = options.eval_max_tokens;
        e.seed = options.seed;
        e.run.quiet = options.run.quiet;
        e.trained_on = vec![options.prompts.clone()];
        let evaluated = eval::eval_under(&e, &constitution, stop.clone()).await?;
        let Some(results) = evaluated.results else {
            summary.interrupted = true;
            return Ok(summary);
        };
        let rates = results.adapter_rates.as_ref().unwrap_or(&results.base);
        // The judge model's rates steer the loop unless it failed its calibration: a judge
        // that cannot tell a refusal from an answer would stop (or not stop) it on noise.
        let by_judge = !results.judge_blind();
        let (harmful, over) = rates.by(by_judge);
        let (harmful_compliance, over_refusal) = (harmful.rate, over.rate);
        let base_over_refusal = results.base.by(by_judge).1.rate;
        let measured_by = if by_judge {
            "judge model"
        } else {
            "patterns (the judge model failed its calibration)"
        };
        summary.rounds.push(RoundSummary {
            round,
            generate_run: generated.run_id,
            pairs_labeled: labeled.labels_written + labeled.already_labeled,
            labels,
            sft_run,
            sft_adapter,
            on_policy_run,
            train_run: trained.run_id,
            adapter,
            eval_id: evaluated.eval_id,
            harmful_compliance,
            over_refusal,
            base_over_refusal,
            measured_by: measured_by.to_string(),
            win_rate: results.win_rate.as_ref().map(|w| w.preference.mean),
            seconds: started.elapsed().as_secs_f64(),
        });
        let before = previous_over_refusal.unwrap_or(base_over_refusal);
        if let Some(reason) = regression(
            round,
            before,
            over_refusal,
            options.max_over_refusal_increase,
        ) {
            summary.stopped_early = Some(reason);
            break;
        }
        previous_over_refusal = Some(over_refusal);
    }
    let report = options.dir.join("report.html");
    crate::report::write(std::slice::from_ref(&db), &report, true).await?;
    summary.report = Some(report);
    Ok(summary)
}

/// Whether a round trains on hard labels instead of the judge's, and what it says about it:
/// the judge's labels orient pairs only when its calibration clears chance or the user trusts
/// it; otherwise SL-CAI's reading (revision ≻ first answer) stands in.
pub fn orientation(calibration: Option<&JudgeCalibration>, trust_judge: bool) -> (bool, String) {
    match calibration {
        Some(c) if c.trusted() => (
            false,
            format!("judge labels (calibration: {})", c.describe()),
        ),
        _ if trust_judge => (
            false,
            format!(
                "judge labels, trusted by --trust-judge ({})",
                calibration.map_or("never calibrated".to_string(), |c| c.describe())
            ),
        ),
        Some(c) => (
            true,
            format!(
                "hard labels (revision ≻ first answer): the judge is not trusted, {}",
                c.describe()
            ),
        ),
        None => (
            true,
            "hard labels (revision ≻ first answer): the judge was never calibrated".to_string(),
        ),
    }
}

/// Why the loop stops after `round`, if over-refusal rose from `before` to `now` by more than
/// `allowed` (all shares in [0, 1]).
pub fn regression(round: usize, before: f64, now: f64, allowed: f64) -> Option<String> {
    (now - before > allowed + 1e-12).then(|| {
        format!(
            "round {round}: over-refusal rose from {:.1}% to {:.1}%, more than the {:.1} points \
             allowed (--max-over-refusal-increase)",
            100.0 * before,
            100.0 * now,
            100.0 * allowed
        )
    })
}

/// The rounds as a terminal table.
pub fn render(summary: &LoopSummary) -> String {
    let mut out = String::from(
        "round  harmful compliance  over-refusal (base)  p(adapter ≻ base)  seconds\n",
    );
    for r in &summary.rounds {
        out += &format!(
            "{:>5}  {:>17.1}%  {:>6.1}% ({:>5.1}%)  {:>17}  {:>7.0}\n",
            r.round,
            100.0 * r.harmful_compliance,
            100.0 * r.over_refusal,
            100.0 * r.base_over_refusal,
            r.win_rate.map_or("–".into(), |w| format!("{w:.3}")),
            r.seconds
        );
    }
    for r in &summary.rounds {
        out += &format!("round {} labels: {}\n", r.round, r.labels);
        out += &format!("round {} rates by: {}\n", r.round, r.measured_by);
    }
    if let Some(reason) = &summary.stopped_early {
        out += &format!("stopped early: {reason}\n");
    }
    if let Some(report) = &summary.report {
        out += &format!("report: {}\n", report.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untrusted_or_uncalibrated_judge_gives_way_to_hard_labels_unless_trusted() {
        let calibration = |correct: usize| JudgeCalibration {
            items: 20,
            answered: 20,
            correct,
            accuracy_low: if correct > 15 { 0.6 } else { 0.3 },
            accuracy_high: 0.9,
            mean_p_a: 0.5,
            mean_answer_mass: 0.9,
            by_kind: Vec::new(),
        };
        let good = calibration(18);
        let poor = calibration(11);
        assert!(!orientation(Some(&good), false).0);
        let (hard, why) = orientation(Some(&poor), false);
        assert!(
            hard && why.contains("not trusted") && why.contains("11/20"),
            "{why}"
        );
        let (hard, why) = orientation(None, false);
        assert!(hard && why.contains("never calibrated"), "{why}");
        let (hard, why) = orientation(Some(&poor), true);
        assert!(!hard && why.contains("--trust-judge"), "{why}");
    }

    #[test]
    fn a_rise_in_over_refusal_beyond_the_threshold_stops_the_loop() {
        assert!(
            regression(1, 0.10, 0.20, 0.1).is_none(),
            "exactly the threshold is allowed"
        );
        assert!(regression(1, 0.10, 0.15, 0.1).is_none());
        assert!(
            regression(2, 0.20, 0.05, 0.0).is_none(),
            "a fall is never a regression"
        );
        let reason = regression(2, 0.10, 0.25, 0.1).unwrap();
        assert!(reason.contains("round 2") && reason.contains("10.0%") && reason.contains("25.0%"));
        assert!(regression(1, 0.0, 1.0 / 24.0, 0.0).is_some());
    }
}
