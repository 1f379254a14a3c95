//! The constitution's `guard:` section: what `tenets serve` enforces at inference. Rules are
//! regular expressions that flag a user's turn or an answer as touching a restricted topic (and
//! `unless` patterns that clear the look-alikes — "kill a process"); what a flagged turn gets
//! (a principled refusal, or a critique-and-revise round); and phrases the model can never
//! write. The section is data like the rest of the constitution: checked by the schema, its
//! patterns compiled at load so a bad one is reported with its line.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What `tenets serve` enforces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// What a user turn a rule flags gets: `refuse` (no generation; the principled refusal of
    /// the rule's topic) or `off` (input is not screened).
    #[serde(default)]
    pub input: InputAction,
    /// What an answer a rule flags gets: `refuse`, `revise` (critique and revise against the
    /// rule's principle, then screen again; still flagged → refuse) or `off`.
    #[serde(default)]
    pub output: OutputAction,
    /// Critique-and-revise rounds an answer gets before it is refused (with `output: revise`).
    #[serde(default = "default_revise_rounds")]
    #[schemars(range(min = 1, max = 4))]
    pub revise_rounds: u32,
    /// Phrases the model can never write, matched without regard to ASCII case: the tokens
    /// that would complete one are removed before each token is picked.
    #[serde(default)]
    pub banned_phrases: Vec<String>,
    /// The screens' rules.
    #[serde(default)]
    pub rules: Vec<GuardRule>,
    /// A learned input screen beside the rules, for the phrasings no rule was written for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<GuardClassifier>,
}

/// A learned screen on the user's turn: a linear probe on the served model's hidden states
/// (as `tenets classify` fits one), fitted on tagged prompts when the server starts. A flagged
/// turn gets the refusal of the restricted topic it is nearest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardClassifier {
    /// The scorer: `probe`.
    #[serde(default)]
    pub scorer: ClassifierScorer,
    /// Prompts tagged `kind: harmful|benign` (and `topic`) it is fitted on: a file, or a
    /// bundled set by name.
    #[serde(default = "default_fit_on")]
    #[schemars(length(min = 1))]
    pub fit_on: String,
    /// Flag a turn whose probability of asking for a restricted topic is at least this.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: f64,
}

fn default_fit_on() -> String {
    "safety-train".into()
}

fn default_threshold() -> f64 {
    0.5
}

/// Which learned scorer screens the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClassifierScorer {
    #[default]
    Probe,
}

fn default_revise_rounds() -> u32 {
    1
}

impl Guard {
    pub fn is_empty(&self) -> bool {
        self == &Guard::default()
    }
}

// What serde fills in for an absent section (so `is_empty` knows one written out in full).
impl Default for Guard {
    fn default() -> Self {
        Guard {
            input: InputAction::default(),
            output: OutputAction::default(),
            revise_rounds: default_revise_rounds(),
            banned_phrases: Vec::new(),
            rules: Vec::new(),
            classifier: None,
        }
    }
}

/// What a flagged user turn gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InputAction {
    #[default]
    Refuse,
    Off,
}

/// What a flagged answer gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutputAction {
    #[default]
    Refuse,
    Revise,
    Off,
}

/// Which text a rule screens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Screens {
    #[default]
    Both,
    Input,
    Output,
}

impl Screens {
    pub fn input(self) -> bool {
        self != Screens::Output
    }
    pub fn output(self) -> bool {
        self != Screens::Input
    }
}

/// One screening rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardRule {
    /// Stable identifier, recorded with every decision the rule makes.
    #[schemars(length(min = 1))]
    pub id: String,
    /// The restricted topic it guards (one of `topics.restricted`): a refusal cites that
    /// topic's `refusals` entry — its principle, reason and alternative.
    #[serde(default)]
    pub topic: Option<String>,
    /// The principle it enforces (a principle id); defaults to the topic's refusal principle.
    #[serde(default)]
    pub principle: Option<String>,
    /// Regular expressions (Rust `regex` syntax, case-insensitive); any match flags the text.
    #[schemars(length(min = 1))]
    pub patterns: Vec<String>,
    /// Regular expressions that clear a match anywhere in the same text: the benign
    /// look-alikes ("kill (a|the) process").
    #[serde(default)]
    pub unless: Vec<String>,
    /// Which text the rule screens: `input` (the user's turn), `output` (the answer) or `both`.
    #[serde(default)]
    pub screens: Screens,
}

/// Compiles one of a rule's patterns as the screens do (case-insensitive).
pub fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
}
