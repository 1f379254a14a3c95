//! `tenets label`: every pair in a database judged by a model under a constitution's comparison
//! questions, both orders, into SQLite.
//!
//! The same shape as generate: pairs to do are fed to the engine thread as sessions; each
//! session asks its `k × 2` probe turns one after another on one slot — each question straight
//! then swapped, so the conversation and question already in the slot's KV cache are reused and
//! only the options are decoded again — and hands each result to the store writer, going on only
//! once it is durable. The pair's label is written
//! with its last judgment. A rerun skips what is stored.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::writer::{self, Commit, Writer};
use super::{join_stages, progress_bar, PipelineError};
use crate::chat::Message;
use crate::constitution::{Comparison, Constitution};
use crate::engine::session::{self, Counters, Next, Sampling};
use crate::engine::{self, Backend, Probe, ServedModel, Session, StopSignal};
use crate::engine::{TurnFailure, TurnOutput, TurnRequest};
use crate::label::calibration;
use crate::label::frame::JudgeFrame;
use crate::label::{self, AnswerTokens, CotSettings, Verdict, ANSWER_PREFIX, COT_PREFIX};
use crate::settings::{BackendSettings, EngineSettings, RunSettings};
use crate::store::stats::JudgeFigures;
use crate::store::{
    JudgeCalibration, JudgeRecord, JudgmentRecord, JudgmentTable, LabelRecord, PairForLabel, Store,
    StoredJudgments,
};

/// Everything `tenets label` needs: its command line.
#[derive(clap::Args, Debug, Clone)]
// A negative number is a value (for the range check to name), not a flag.
#[command(allow_negative_numbers = true)]
pub struct LabelOptions {
    /// Database written by `tenets generate`.
    #[arg(long)]
    pub db: PathBuf,
    /// The judge: `--model` defaults to the model of the database's latest run.
    #[command(flatten)]
    pub engine: EngineSettings,
    #[command(flatten)]
    pub backend: BackendSettings,
    /// Constitution whose comparison questions are asked, or a bundled one by name
    /// [default: the latest run's]
    #[arg(long)]
    pub constitution: Option<PathBuf>,
    /// Directory with a judge.jinja frame [default: the bundled prompts/judge.jinja]
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Comparison questions asked per pair, each in both orders.
    #[arg(long, default_value_t = 2)]
    pub questions: usize,
    /// Chain of thought: the judge reasons before its answer is read.
    #[arg(long)]
    pub cot: bool,
    /// With --cot: most tokens of reasoning.
    #[arg(long, default_value_t = CotSettings::DEFAULT_TOKENS, requires = "cot")]
    pub cot_tokens: usize,
    /// With --cot: P(A) is clamped into LOW,HIGH (the CAI paper's 0.4,0.6).
    #[arg(long, default_value = "0.4,0.6", requires = "cot", value_parser = crate::settings::parse_pair)]
    pub cot_clamp: (f64, f64),
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Only calibrate the judge (again): its accuracy on the constitution's known-answer pairs,
    /// stored with it; no pair is labeled. Without this flag a judge is calibrated before its
    /// first labels.
    #[arg(long, conflicts_with = "no_calibrate")]
    pub calibrate: bool,
    /// Label without calibrating: export, train and loop then treat the judge as untrusted
    /// (its labels need their --trust-judge).
    #[arg(long)]
    pub no_calibrate: bool,
    #[command(flatten)]
    pub run: RunSettings,
}

impl LabelOptions {
    /// The defaults of `tenets label` on `db`.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        let mut o: Self = crate::settings::from_flags(&["--db", "-"]);
        o.db = db.into();
        o
    }

    /// The chain-of-thought settings, with `--cot`.
    pub fn cot(&self) -> Option<CotSettings> {
        self.cot.then_some(CotSettings {
            max_tokens: self.cot_tokens,
            clamp: self.cot_clamp,
        })
    }

    fn check(&self) -> Result<(), PipelineError> {
        self.engine.check()?;
        if self.questions == 0 {
            return Err(PipelineError::Setting(
                "--questions must be at least 1".into(),
            ));
        }
        if let Some(cot) = self.cot() {
            cot.check().map_err(PipelineError::Setting)?;
        }
        Ok(())
    }
}

/// What a label run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LabelSummary {
    pub judge_id: String,
    pub pairs: usize,
    pub already_labeled: usize,
    pub judgments_written: usize,
    pub labels_written: usize,
    pub failures: usize,
    /// Over this judge's labels in the database.
    pub figures: JudgeFigures,
    /// The judge's accuracy on the constitution's known-answer pairs (this run's, or stored
    /// before); none when it was never calibrated.
    pub calibration: Option<JudgeCalibration>,
    /// This run calibrated the judge.
    pub calibrated_now: bool,
    pub prefilled_tokens: u64,
    pub seconds: f64,
    pub interrupted: bool,
}

/// A label run's summary as text.
pub fn render(s: &LabelSummary) -> String {
    let mut out = match &s.calibration {
        Some(c) => format!(
            "judge calibration{}: {} — {}\n",
            if s.calibrated_now { "" } else { " (stored)" },
            c.describe(),
            if c.trusted() {
                "trusted: its accuracy clears chance on every kind of pair".to_string()
            } else {
                "NOT trusted: its accuracy does not clear chance on every kind of pair. export, train and loop will \
                 not orient pairs by its labels unless --trust-judge (the loop falls back to \
                 revision ≻ first answer, hard labels)"
                    .to_string()
            }
        ),
        None => "judge not calibrated (--no-calibrate): export, train and loop need \
                 --trust-judge to use its labels\n"
            .to_string(),
    };
    out += &format!(
        "judge {}: {} pairs ({} already labeled), {} judgments and {} labels written, {} failed, \
         {:.1} s\n",
        &s.judge_id[..16.min(s.judge_id.len())],
        s.pairs,
        s.already_labeled,
        s.judgments_written,
        s.labels_written,
        s.failures,
        s.seconds,
    );
    out += &format!(
        "labels: mean p(chosen ≻ rejected) {:.3}; orders disagree on {:.1}% of questions; mean \
         P(A) {:.3}; answer mass {:.3}\n",
        s.figures.mean_p_chosen,
        100.0 * s.figures.order_disagreement,
        s.figures.mean_p_a,
        s.figures.mean_answer_mass,
    );
    if s.figures.unanswered_judgments > 0 {
        out += &format!(
            "warning: {} judgment(s) put no probability on \"A\" or \"B\" (left out of the \
             labels); {} pair(s) got no answer at all and have no label\n",
            s.figures.unanswered_judgments, s.figures.pairs_without_answer
        );
    }
    out
}

/// What every session of a label run shares (an evaluation's comparisons share it too: judge
/// id = evaluation id, pair = a prompt's adapter and base answers).
pub(super) struct LabelContext {
    pub judge_id: String,
    pub frame: JudgeFrame,
    /// "A" and "B", with their token forms when the judge is local.
    pub answers: Arc<Probe>,
    pub cot: Option<CotSettings>,
    pub writer: Writer<LabelWrite>,
    /// The pairs are the judge's known-answer pairs: their judgments are kept for its
    /// calibration, not stored as labels.
    pub calibration: bool,
}

/// What a pair session asks the store writer to do.
pub(super) enum LabelWrite {
    /// Make a judgment durable (with the pair's label when it is the last).
    Judgment(JudgmentRecord, Option<LabelRecord>),
    /// Keep a judgment of a known-answer pair for the judge's calibration.
    Calibration(JudgmentRecord),
    /// Report a pair that cannot be judged: (pair id, reason).
    Failure(String, String),
}

/// One pair's questions, asked one turn at a time.
pub(super) struct PairSession {
    context: Arc<LabelContext>,
    pair: PairForLabel,
    /// (question, swapped) still to ask: each question straight, then swapped.
    todo: VecDeque<(Comparison, bool)>,
    /// Judgments of this pair so far (stored and new): (question id, swapped, p_chosen or
    /// no answer).
    done: StoredJudgments,
    /// The turn in flight.
    current: Option<Asked>,
    /// A chain-of-thought question whose reasoning is done and whose answer is next.
    reasoned: Option<Asked>,
}

/// A question in one order, and (chain of thought) the judge's reasoning once it has some.
struct Asked {
    question: Comparison,
    swapped: bool,
    reasoning: Option<String>,
}

impl PairSession {
    /// A session for the `questions` (each straight, then swapped, back to back: the two share
    /// the conversation and the question in the slot's KV cache, as the frame asks before it
    /// lists the options) that `done` does not already hold.
    pub fn new(
        context: Arc<LabelContext>,
        pair: PairForLabel,
        questions: Vec<&Comparison>,
        done: StoredJudgments,
    ) -> Self {
        let todo = questions
            .into_iter()
            .flat_map(|q| [(q.clone(), false), (q.clone(), true)])
            .filter(|(q, swapped)| !done.iter().any(|d| d.0 == q.id && d.1 == *swapped))
            .collect();
        PairSession {
            context,
            pair,
            todo,
            done,
            current: None,
            reasoned: None,
        }
    }

    /// Judgments still to make.
    pub fn remaining(&self) -> usize {
        self.todo.len()
    }

    /// The judge's conversation for `asked`: the frame as the user turn, and the reply so far —
    /// the answer prefix, or (chain of thought) the reasoning prompt, the reasoning once there is
    /// some, and then the answer prefix.
    fn conversation(&self, asked: &Asked, answer: bool) -> Result<(Vec<Message>, String), String> {
        let (a, b) = if asked.swapped {
            (&self.pair.rejected, &self.pair.chosen)
        } else {
            (&self.pair.chosen, &self.pair.rejected)
        };
        let cot = self.context.cot.is_some();
        let text = self
            .context
            .frame
            .render(&self.pair.messages, &asked.question.question, a, b, cot)
            .map_err(|e| e.to_string())?;
        let reply = match (cot, answer) {
            (false, _) => ANSWER_PREFIX.to_string(),
            (true, false) => COT_PREFIX.to_string(),
            (true, true) => format!(
                "{COT_PREFIX} {}\n\n{ANSWER_PREFIX}",
                asked.reasoning.as_deref().unwrap_or("").trim()
            ),
        };
        Ok((vec![Message::user(text)], reply))
    }

    fn write(&self, write: LabelWrite) -> oneshot::Receiver<bool> {
        self.context.writer.send(write)
    }

    fn fail(&mut self, reason: String) -> oneshot::Receiver<bool> {
        self.todo.clear();
        self.write(LabelWrite::Failure(self.pair.pair_id.clone(), reason))
    }
}

impl Session for PairSession {
    fn next_turn(&mut self) -> Next {
        // A reasoned question is answered next; otherwise the next question starts.
        let (asked, answer) = match self.reasoned.take() {
            Some(asked) => (asked, true),
            None => match self.todo.pop_front() {
                Some((question, swapped)) => {
                    let asked = Asked {
                        question,
                        swapped,
                        reasoning: None,
                    };
                    (asked, self.context.cot.is_none())
                }
                None => return Next::Done,
            },
        };
        match self.conversation(&asked, answer) {
            Ok((messages, reply_prefix)) => {
                let request = if answer {
                    TurnRequest {
                        messages,
                        reply_prefix,
                        max_tokens: 1,
                        seed: 0,
                        probe: Some(self.context.answers.clone()),
                        options: crate::engine::TurnOptions::default(),
                    }
                } else {
                    TurnRequest {
                        messages,
                        reply_prefix,
                        max_tokens: self.context.cot.map_or(1, |c| c.max_tokens),
                        seed: 0,
                        probe: None,
                        options: crate::engine::TurnOptions::default(),
                    }
                };
                self.current = Some(asked);
                Next::Turn(request)
            }
            Err(reason) => Next::Wait(self.fail(reason)),
        }
    }

    fn finish_turn(&mut self, outcome: Result<TurnOutput, TurnFailure>) -> oneshot::Receiver<bool> {
        let Some(mut asked) = self.current.take() else {
            // No turn was in flight: nothing to record, end the session.
            return session::resolved(false);
        };
        let output = match outcome {
            Ok(output) => output,
            Err(failure) => return self.fail(failure.to_string()),
        };
        if self.context.cot.is_some() && asked.reasoning.is_none() {
            // The reasoning is in; its answer is the next turn (nothing to store yet).
            asked.reasoning = Some(output.text.trim().to_string());
            self.reasoned = Some(asked);
            return session::resolved(true);
        }
        let clamp = self.context.cot.map(|c| c.clamp);
        let verdict = Verdict::read(&output.probe_mass, asked.swapped, clamp);
        let judgment = JudgmentRecord {
            judge_id: self.context.judge_id.clone(),
            pair_id: self.pair.pair_id.clone(),
            question_id: asked.question.id.clone(),
            swapped: asked.swapped,
            mass_a: verdict.mass_a,
            mass_b: verdict.mass_b,
            answer: verdict.answer,
            prompt_tokens: output.prompt_tokens as i64,
            prefill_tokens: output.prefill_tokens as i64,
            reasoning: asked.reasoning,
        };
        if self.context.calibration {
            return self.write(LabelWrite::Calibration(judgment));
        }
        self.done.push((
            asked.question.id.clone(),
            asked.swapped,
            verdict.answer.ok().map(|a| a.p_chosen),
        ));
        let label = self.todo.is_empty().then(|| {
            let combined = label::combine(&self.done);
            LabelRecord {
                judge_id: self.context.judge_id.clone(),
                pair_id: self.pair.pair_id.clone(),
                p_chosen: combined.p_chosen,
                judgments: combined.answered as i64,
                unanswered: combined.unanswered as i64,
                order_disagreements: combined.order_disagreements as i64,
            }
        });
        self.write(LabelWrite::Judgment(judgment, label))
    }
}

/// Runs (or resumes) labeling of every pair in the database, under `--constitution` or else
/// the one stored with the latest generate run.
pub async fn label(
    options: &LabelOptions,
    stop: StopSignal,
) -> Result<LabelSummary, PipelineError> {
    label_under(options, None, stop).await
}

/// [`label`] under `constitution` when given (already loaded: `--constitution` is not read
/// again, as in `tenets loop`, which loads it once for all its rounds).
pub async fn label_under(
    options: &LabelOptions,
    constitution: Option<&Constitution>,
    stop: StopSignal,
) -> Result<LabelSummary, PipelineError> {
    let started = Instant::now();
    options.check()?;
    let backend = options.backend.resolve()?;
    if matches!(backend, Backend::OpenAi(_)) && options.engine.model.model.is_some() {
        return Err(PipelineError::Setting(
            "--model names a GGUF file for the llama backend; with --backend openai use \
             --remote-model"
                .into(),
        ));
    }
    let cot = options.cot();
    let store = Store::open_existing(&options.db).await?;
    let latest = store.latest_run().await?;
    let constitution = match (constitution, &options.constitution, &latest) {
        (Some(given), _, _) => given.clone(),
        (None, Some(path), _) => Constitution::load(&super::resolve_bundled(
            path,
            crate::bundled::CONSTITUTIONS,
        )?)?,
        (None, None, Some((_, json))) => serde_json::from_str(json).map_err(|e| {
            PipelineError::Setting(format!(
                "the constitution stored with the latest run cannot be read ({e}); pass --constitution"
            ))
        })?,
        (None, None, None) => {
            return Err(PipelineError::Setting(format!(
                "{} holds no generate run: nothing to label",
                options.db.display()
            )))
        }
    };
    if constitution.comparisons.is_empty() {
        return Err(PipelineError::Setting(format!(
            "constitution `{}` has no comparison questions to judge with",
            constitution.name
        )));
    }
    let frame = match &options.templates {
        Some(dir) => JudgeFrame::from_dir(dir)?,
        None => JudgeFrame::bundled()?,
    };
    let pairs = store.pairs_for_labels().await?;
    let (jobs_tx, jobs_rx) = mpsc::channel::<Box<dyn Session>>(options.engine.parallel * 2);
    let counters = Arc::new(Counters::default());
    let (served, answers, engine_task) = match &backend {
        Backend::Local => {
            let model = match (&options.engine.model.model, &latest) {
                (Some(path), _) => path.clone(),
                (None, Some((path, _))) => PathBuf::from(path),
                (None, None) => {
                    return Err(PipelineError::Setting(format!(
                    "{} holds no generate run to take the judge model from; pass --model FILE.gguf",
                    options.db.display()
                )))
                }
            };
            if !model.exists() {
                return Err(PipelineError::Setting(format!(
                    "judge model {} not found; pass --model FILE.gguf",
                    model.display()
                )));
            }
            engine::check_model_file(&model)?;
            let model_sha256 = store.model_sha256(&model).await?;
            let config = options.engine.config(&model);
            let ((answers, chat_hash), engine_task) = engine::start_local(
                config,
                Sampling::GREEDY,
                jobs_rx,
                stop.clone(),
                counters.clone(),
                |model| Ok(AnswerTokens::of(model)),
            )
            .await?;
            if answers.a.is_empty() || answers.b.is_empty() {
                stop.abort();
                return Err(PipelineError::Setting(format!(
                    "the judge's vocabulary has no single token for \"A\" or \"B\" ({})",
                    model.display()
                )));
            }
            let served = ServedModel {
                model_path: model.display().to_string(),
                model_sha256,
                chat_template_sha256: chat_hash,
            };
            let probe = Probe {
                answers: vec!["A".into(), "B".into()],
                tokens: answers.sets(),
            };
            (served, probe, engine_task)
        }
        Backend::OpenAi(remote) => {
            if cot.is_some() {
                return Err(PipelineError::Setting(
                    "--cot reads the answer after the judge's own reasoning, which needs the \
                     local engine (a chat-completions server cannot continue a reply)"
                        .into(),
                ));
            }
            let mut remote = remote.clone();
            remote.concurrency = options.engine.parallel;
            let engine = engine::connect_remote(remote).await?;
            let (served, engine_task) = engine::start_remote(
                engine,
                Sampling::GREEDY,
                jobs_rx,
                stop.clone(),
                counters.clone(),
            );
            let probe = Probe {
                answers: vec!["A".into(), "B".into()],
                tokens: Vec::new(),
            };
            (served, probe, engine_task)
        }
    };
    let judge = JudgeRecord {
        model_path: served.model_path.clone(),
        model_sha256: served.model_sha256.clone(),
        chat_template_sha256: served.chat_template_sha256.clone(),
        constitution_sha256: constitution.content_hash(),
        frame_sha256: frame.hash().to_string(),
        questions_per_pair: options.questions as i64,
        seed: options.seed as i64,
        cot_tokens: cot.map_or(0, |c| c.max_tokens as i64),
        cot_clamp: cot.map(|c| c.clamp),
    };
    let judge_id = store.upsert_judge(&judge).await?;
    let (mut stored, labeled) = store
        .judgment_progress(JudgmentTable::Labels, &judge_id)
        .await?;
    let stored_calibration = store.calibration(&judge_id).await?;
    let calibrate = options.calibrate || (stored_calibration.is_none() && !options.no_calibrate);
    let calibration_items = if calibrate {
        calibration::items(&constitution)
    } else {
        Vec::new()
    };
    tracing::info!(judge = %judge_id, pairs = pairs.len(), calibrate, "label");

    let (writer_tx, inbox) = writer::channel::<LabelWrite>(options.engine.parallel * 2);
    let context = Arc::new(LabelContext {
        judge_id: judge_id.clone(),
        frame,
        answers: Arc::new(answers),
        cot,
        writer: writer_tx,
        calibration: false,
    });
    let mut summary = LabelSummary {
        judge_id: judge_id.clone(),
        pairs: pairs.len(),
        calibration: stored_calibration,
        ..LabelSummary::default()
    };
    let mut sessions: Vec<PairSession> = Vec::new();
    let mut remaining = 0u64;
    // The known-answer pairs go first: a judge that cannot be trusted shows it at once.
    let calibration_context = Arc::new(LabelContext {
        judge_id: judge_id.clone(),
        frame: context.frame.clone(),
        answers: context.answers.clone(),
        cot,
        writer: context.writer.clone(),
        calibration: true,
    });
    for item in &calibration_items {
        let pair = PairForLabel {
            pair_id: item.id.clone(),
            messages: item.messages.clone(),
            chosen: item.better.clone(),
            rejected: item.worse.clone(),
        };
        let questions = label::questions_for(
            &constitution.comparisons,
            options.questions,
            options.seed,
            &item.id,
        );
        let session = PairSession::new(calibration_context.clone(), pair, questions, Vec::new());
        remaining += session.remaining() as u64;
        sessions.push(session);
    }
    drop(calibration_context);
    let pairs = if options.calibrate { Vec::new() } else { pairs };
    for pair in pairs {
        if labeled.contains(&pair.pair_id) {
            summary.already_labeled += 1;
            continue;
        }
        let done = stored.remove(&pair.pair_id).unwrap_or_default();
        let questions = label::questions_for(
            &constitution.comparisons,
            options.questions,
            options.seed,
            &pair.pair_id,
        );
        let session = PairSession::new(context.clone(), pair, questions, done);
        remaining += session.remaining() as u64;
        sessions.push(session);
    }
    drop(context);

    let progress = progress_bar(options.run.quiet, remaining, "judgments");
    let writer = writer::spawn(
        inbox,
        JudgmentWriter::new(store.clone(), progress.clone(), JudgmentTable::Labels),
        stop.clone(),
    );
    for session in sessions {
        if stop.draining() || jobs_tx.send(Box::new(session)).await.is_err() {
            break;
        }
    }
    drop(jobs_tx);
    let JudgmentWriter {
        judgments,
        labels,
        failures,
        calibration: known_answers,
        ..
    } = join_stages(engine_task, writer).await?;
    progress.finish_and_clear();

    if calibrate && !stop.draining() {
        // Only a whole calibration is stored: a stopped one is asked again next time.
        let mut judged: HashMap<String, Vec<calibration::Judged>> = HashMap::new();
        for j in known_answers {
            judged
                .entry(j.pair_id.clone())
                .or_default()
                .push(calibration::Judged {
                    question_id: j.question_id,
                    swapped: j.swapped,
                    p_better: j.answer.as_ref().ok().map(|a| a.p_chosen),
                    p_a: j.answer.as_ref().ok().map(|a| a.p_a),
                    answer_mass: j.mass_a + j.mass_b,
                });
        }
        let scored = calibration::score(&calibration_items, &judged);
        store.save_calibration(&judge_id, &scored).await?;
        tracing::info!(judge = %judge_id, trusted = scored.trusted(), "{}", scored.describe());
        summary.calibration = Some(scored);
        summary.calibrated_now = true;
    }
    summary.judgments_written = judgments;
    summary.labels_written = labels;
    summary.failures = failures;
    summary.figures = store.judge_figures(&judge_id).await?;
    summary.prefilled_tokens = counters.prefilled.load(Ordering::Relaxed);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.interrupted = stop.draining();
    store.close().await;
    Ok(summary)
}

/// Commits judgments (with the pair's label on its last) and reports pairs that cannot be
/// judged; counts each. Eval's comparisons use it too, into their own table.
pub(super) struct JudgmentWriter {
    store: Store,
    progress: indicatif::ProgressBar,
    table: JudgmentTable,
    pub judgments: usize,
    pub labels: usize,
    pub failures: usize,
    /// Judgments of known-answer pairs, kept for the judge's calibration.
    pub calibration: Vec<JudgmentRecord>,
}

impl JudgmentWriter {
    pub fn new(store: Store, progress: indicatif::ProgressBar, table: JudgmentTable) -> Self {
        JudgmentWriter {
            store,
            progress,
            table,
            judgments: 0,
            labels: 0,
            failures: 0,
            calibration: Vec::new(),
        }
    }
}

impl Commit<LabelWrite> for JudgmentWriter {
    async fn commit(&mut self, write: LabelWrite) -> Result<bool, crate::store::StoreError> {
        match write {
            LabelWrite::Failure(pair, reason) => {
                tracing::warn!(pair = %pair, "cannot judge: {reason}");
                self.progress.println(format!(
                    "{} {}… cannot be judged: {reason}",
                    if self.table == JudgmentTable::Labels {
                        "pair"
                    } else {
                        "prompt"
                    },
                    pair.get(..12).unwrap_or(&pair)
                ));
                self.failures += 1;
                Ok(false)
            }
            LabelWrite::Calibration(j) => {
                self.calibration.push(j);
                self.progress.inc(1);
                Ok(true)
            }
            LabelWrite::Judgment(j, label) => {
                self.store
                    .commit_judgment(self.table, &j, label.as_ref())
                    .await?;
                self.judgments += 1;
                self.labels += usize::from(label.is_some());
                self.progress.inc(1);
                Ok(true)
            }
        }
    }
}
