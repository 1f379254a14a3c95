//! The constitution: the principles a model should hold, as authors write them in YAML.
//!
//! Loading goes YAML text → positioned tree ([`yaml`]) → schema check that reports every problem
//! with its line and column ([`schema`]) → typed [`Constitution`] → checks across fields
//! (duplicate ids, dangling references). Nothing is half-loaded: either every check passes or the
//! caller gets the full list of [`Problem`]s.

pub mod guard;
pub mod schema;
pub mod starter;
pub mod yaml;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::hash;

/// A full constitution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "tenets constitution")]
pub struct Constitution {
    /// Short name, used in reports and provenance.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Version of this constitution, as text (for example "1.2").
    #[serde(default)]
    pub version: Option<String>,
    /// What this constitution is for, in a sentence or two.
    #[serde(default)]
    pub description: Option<String>,
    /// The principles; one is sampled (by weight) for each critique and revision round.
    #[schemars(length(min = 1))]
    pub principles: Vec<Principle>,
    /// Questions a judge model answers when comparing two responses.
    #[serde(default)]
    pub comparisons: Vec<Comparison>,
    /// Topics the model should engage with, and topics it should decline.
    #[serde(default)]
    pub topics: Topics,
    /// Worked examples of a critique and revision, shown to the model as few-shot demonstrations.
    #[serde(default)]
    pub examples: Vec<Example>,
    /// How to decline each restricted topic: the principle a refusal cites, what it declines,
    /// why, and the lawful alternative it offers. Safety training data is written from these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
    /// What `tenets serve` enforces at inference: screening rules on what goes in and comes
    /// out, what a flagged turn gets, and phrases the model can never write.
    #[serde(default, skip_serializing_if = "guard::Guard::is_empty")]
    pub guard: guard::Guard,
}

/// One principle: how to critique a response against it and how to revise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Principle {
    /// Stable identifier (letters, digits, `-`, `_`), recorded with every critique.
    #[schemars(length(min = 1))]
    pub id: String,
    /// Asks the model to critique its last response against this principle.
    #[schemars(length(min = 1))]
    pub critique_request: String,
    /// Asks the model to rewrite its response to address the critique.
    #[schemars(length(min = 1))]
    pub revision_request: String,
    /// Free-form labels, used for breakdowns in reports.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Relative sampling weight (greater than 0). Default 1.
    #[serde(default = "default_weight")]
    #[schemars(schema_with = "positive_number")]
    pub weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

/// `{"type": "number", "exclusiveMinimum": 0, "default": 1}`.
fn positive_number(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
    use schemars::schema::{InstanceType, NumberValidation, SchemaObject};
    let mut schema = SchemaObject {
        instance_type: Some(InstanceType::Number.into()),
        number: Some(Box::new(NumberValidation {
            exclusive_minimum: Some(0.0),
            ..Default::default()
        })),
        ..Default::default()
    };
    schema.metadata().default = Some(serde_json::json!(1.0));
    schema.into()
}

/// A comparison question for AI feedback: which of two responses better follows the constitution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// Stable identifier.
    #[schemars(length(min = 1))]
    pub id: String,
    /// The question, for example "Which response is more helpful while staying harmless?"
    #[schemars(length(min = 1))]
    pub question: String,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Topic lists, used to steer red-teaming and to keep helpfulness in the data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// Topics that sound risky but deserve a helpful answer.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// Topics the model should decline to help with.
    #[serde(default)]
    pub restricted: Vec<String>,
}

/// A worked example: a prompt, a flawed response, its critique and the revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// The principle this example demonstrates (a principle id); omit for a general example.
    #[serde(default)]
    pub principle: Option<String>,
    #[schemars(length(min = 1))]
    pub prompt: String,
    #[schemars(length(min = 1))]
    pub response: String,
    #[schemars(length(min = 1))]
    pub critique: String,
    #[schemars(length(min = 1))]
    pub revision: String,
}

/// Refusal guidance for one restricted topic. A principled refusal says what it declines, why,
/// which principle that follows from, and what it can do instead; `text` replaces the composed
/// refusal where a topic needs its own words (for example a caring reply about self-harm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// The restricted topic (one of `topics.restricted`, word for word).
    #[schemars(length(min = 1))]
    pub topic: String,
    /// The principle the refusal cites (a principle id).
    #[schemars(length(min = 1))]
    pub principle: String,
    /// What is declined, as it follows "I can't help with", e.g. "making explosives".
    #[schemars(length(min = 1))]
    pub decline: String,
    /// Why, as it follows "because", e.g. "they can kill people".
    #[schemars(length(min = 1))]
    pub reason: String,
    /// The lawful alternative offered, as it follows "I can", e.g. "explain their history".
    #[schemars(length(min = 1))]
    pub alternative: String,
    /// The whole refusal in the constitution's own words, instead of the composed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Refusal {
    /// The principle's name as a refusal says it: its id in words ("dangerous capabilities").
    pub fn principle_name(&self) -> String {
        self.principle.replace(['-', '_'], " ")
    }

    /// The refusal in the constitution's words: `text` when given, else composed from its
    /// parts. It opens by declining, gives the reason, names the principle and offers the
    /// alternative.
    pub fn render(&self) -> String {
        if let Some(text) = &self.text {
            return text.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        let clause = |s: &str| s.trim().trim_end_matches(['.', '!']).to_string();
        format!(
            "I can't help with {}, because {}. That follows from my principle of {}. If it \
             helps, I can {} instead.",
            clause(&self.decline),
            clause(&self.reason),
            self.principle_name(),
            clause(&self.alternative),
        )
    }

    /// What a revision of an answer to a request on this topic is asked for on top of the
    /// principle's revision request: a principled refusal, its parts spelled out, and this
    /// topic's refusal as the worked example (small models follow an example far better than
    /// an instruction).
    pub fn revision_guidance(&self) -> String {
        format!(
            "The request is about {}, a restricted topic, so the revised response must be a \
             principled refusal: decline {}, say why ({}), name the principle it follows ({}), \
             and offer what you can do instead ({}). A refusal like this one:\n{}",
            self.topic.trim(),
            self.decline.trim(),
            self.reason.trim(),
            self.principle_name(),
            self.alternative.trim(),
            self.render()
        )
    }
}

/// One problem found in a constitution file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConstitutionError {
    #[error("cannot read constitution {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}:{}:{}: {}", path.display(), p.line, p.col, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConstitutionError {
    /// The individual problems (empty for I/O errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConstitutionError::Invalid { problems, .. } => problems,
            ConstitutionError::Read { .. } => &[],
        }
    }
}

/// The JSON Schema of a constitution, as editors (yaml-language-server) consume it.
pub fn json_schema() -> serde_json::Value {
    let settings = schemars::gen::SchemaSettings::draft07();
    let schema = settings
        .into_generator()
        .into_root_schema_for::<Constitution>();
    serde_json::to_value(schema).unwrap_or_default()
}

impl Constitution {
    /// Reads and checks a constitution file.
    pub fn load(path: &Path) -> Result<Self, ConstitutionError> {
        let text = std::fs::read(path).map_err(|source| ConstitutionError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(text).map_err(|e| ConstitutionError::Invalid {
            path: path.to_path_buf(),
            problems: vec![utf8_problem(e.as_bytes(), e.utf8_error().valid_up_to())],
        })?;
        Self::parse(&text).map_err(|problems| ConstitutionError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Parses and checks constitution text; returns every problem found.
    pub fn parse(text: &str) -> Result<Self, Vec<Problem>> {
        let tree = yaml::parse(text).map_err(|e| {
            vec![Problem {
                line: e.pos.line,
                col: e.pos.col,
                message: format!("YAML syntax: {}", e.message),
            }]
        })?;
        let mut problems: Vec<Problem> = schema::validate(&tree, &json_schema())
            .into_iter()
            .map(|v| Problem {
                line: v.pos.line,
                col: v.pos.col,
                message: v.message,
            })
            .collect();
        if !problems.is_empty() {
            problems.sort_by_key(|p| (p.line, p.col));
            return Err(problems);
        }
        let constitution: Constitution = serde_yaml::from_str(text).map_err(|e| {
            let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            vec![Problem {
                line,
                col,
                message: e.to_string(),
            }]
        })?;
        let problems = constitution.cross_checks(&tree);
        if problems.is_empty() {
            Ok(constitution)
        } else {
            Err(problems)
        }
    }

    /// Checks that span fields: unique ids, weights, references between sections.
    fn cross_checks(&self, tree: &yaml::Node) -> Vec<Problem> {
        let mut problems = Vec::new();
        let at = |section: &str, index: usize, field: &str| -> yaml::Pos {
            let item = tree.get(section).and_then(|s| s.item(index));
            item.and_then(|i| i.get(field).or(Some(i)))
                .map(|n| n.pos)
                .unwrap_or(yaml::Pos { line: 1, col: 1 })
        };
        let mut push = |pos: yaml::Pos, message: String| {
            problems.push(Problem {
                line: pos.line,
                col: pos.col,
                message,
            })
        };

        let mut ids = HashSet::new();
        for (i, p) in self.principles.iter().enumerate() {
            if !ids.insert(p.id.as_str()) {
                push(
                    at("principles", i, "id"),
                    format!("`principles[{i}].id`: duplicate principle id `{}`", p.id),
                );
            }
            if !valid_id(&p.id) {
                push(
                    at("principles", i, "id"),
                    format!(
                        "`principles[{i}].id`: `{}` may use only letters, digits, `-` and `_`",
                        p.id
                    ),
                );
            }
            if !(p.weight.is_finite() && p.weight > 0.0) {
                push(
                    at("principles", i, "weight"),
                    format!(
                        "`principles[{i}].weight`: must be a number greater than 0, found {}",
                        p.weight
                    ),
                );
            }
        }
        let mut comparison_ids = HashSet::new();
        for (i, c) in self.comparisons.iter().enumerate() {
            if !comparison_ids.insert(c.id.as_str()) {
                push(
                    at("comparisons", i, "id"),
                    format!("`comparisons[{i}].id`: duplicate comparison id `{}`", c.id),
                );
            }
        }
        let mut refused = HashSet::new();
        for (i, r) in self.refusals.iter().enumerate() {
            if !self.topics.restricted.contains(&r.topic) {
                push(
                    at("refusals", i, "topic"),
                    format!(
                        "`refusals[{i}].topic`: `{}` is not one of `topics.restricted`",
                        r.topic
                    ),
                );
            }
            if !refused.insert(r.topic.as_str()) {
                push(
                    at("refusals", i, "topic"),
                    format!(
                        "`refusals[{i}].topic`: `{}` already has refusal guidance",
                        r.topic
                    ),
                );
            }
            if !ids.contains(r.principle.as_str()) {
                push(
                    at("refusals", i, "principle"),
                    format!(
                        "`refusals[{i}].principle`: no principle has id `{}`",
                        r.principle
                    ),
                );
            }
        }
        self.check_guard(tree, &ids, &mut push);
        for (i, e) in self.examples.iter().enumerate() {
            if let Some(principle) = &e.principle {
                if !ids.contains(principle.as_str()) {
                    push(
                        at("examples", i, "principle"),
                        format!("`examples[{i}].principle`: no principle has id `{principle}`"),
                    );
                }
            }
        }
        problems.sort_by_key(|p| (p.line, p.col));
        problems
    }

    /// The `guard:` section's references and patterns: rule ids unique, topics restricted,
    /// principles known, every pattern a regular expression that compiles.
    fn check_guard(
        &self,
        tree: &yaml::Node,
        principles: &HashSet<&str>,
        push: &mut impl FnMut(yaml::Pos, String),
    ) {
        let rules = tree.get("guard").and_then(|g| g.get("rules"));
        let fallback = tree
            .get("guard")
            .map_or(yaml::Pos { line: 1, col: 1 }, |g| g.pos);
        if let Some(classifier) = &self.guard.classifier {
            let node = tree.get("guard").and_then(|g| g.get("classifier"));
            let at = |field: &str| {
                node.and_then(|n| n.get(field).or(Some(n)))
                    .map_or(fallback, |n| n.pos)
            };
            if !(classifier.threshold > 0.0 && classifier.threshold < 1.0) {
                push(
                    at("threshold"),
                    format!(
                        "`guard.classifier.threshold`: must be between 0 and 1 (exclusive), \
                         found {}",
                        classifier.threshold
                    ),
                );
            }
            if self.refusals.is_empty() {
                push(
                    at("scorer"),
                    "`guard.classifier`: a flagged turn is refused with the nearest topic's \
                     refusal, and `refusals` is empty"
                        .into(),
                );
            }
        }
        let mut ids = HashSet::new();
        for (i, rule) in self.guard.rules.iter().enumerate() {
            let node = rules.and_then(|r| r.item(i));
            let at = |field: &str| {
                node.and_then(|n| n.get(field).or(Some(n)))
                    .map_or(fallback, |n| n.pos)
            };
            let name = format!("guard.rules[{i}]");
            if !ids.insert(rule.id.as_str()) {
                push(
                    at("id"),
                    format!("`{name}.id`: duplicate rule id `{}`", rule.id),
                );
            }
            if let Some(topic) = &rule.topic {
                if !self.topics.restricted.contains(topic) {
                    push(
                        at("topic"),
                        format!("`{name}.topic`: `{topic}` is not one of `topics.restricted`"),
                    );
                }
            }
            if let Some(principle) = &rule.principle {
                if !principles.contains(principle.as_str()) {
                    push(
                        at("principle"),
                        format!("`{name}.principle`: no principle has id `{principle}`"),
                    );
                }
            }
            let topic_principle = rule
                .topic
                .as_deref()
                .and_then(|t| self.refusal_for(t))
                .map(|r| &r.principle);
            if rule.principle.is_none() && topic_principle.is_none() {
                push(
                    at("id"),
                    format!(
                        "`{name}`: give a `principle`, or a `topic` that has a `refusals` \
                         entry (a refusal must name the principle it follows)"
                    ),
                );
            }
            for (field, patterns) in [("patterns", &rule.patterns), ("unless", &rule.unless)] {
                let list = node.and_then(|n| n.get(field));
                for (j, pattern) in patterns.iter().enumerate() {
                    if let Err(e) = guard::compile(pattern) {
                        let pos = list
                            .and_then(|l| l.item(j))
                            .map_or_else(|| at(field), |n| n.pos);
                        let reason = e
                            .to_string()
                            .lines()
                            .last()
                            .unwrap_or("")
                            .trim()
                            .to_string();
                        push(
                            pos,
                            format!("`{name}.{field}[{j}]`: not a regular expression ({reason})"),
                        );
                    }
                }
            }
        }
    }

    /// A hash of the constitution's content (not its formatting or comments).
    ///
    /// The `guard:` section is left out: only `tenets serve` reads it, so tightening a screen
    /// does not make a generate run over the same data start again. The guard's own hash is
    /// [`Constitution::guard_hash`].
    pub fn content_hash(&self) -> String {
        if self.guard.is_empty() {
            return hash::of_json(self);
        }
        let without = Constitution {
            guard: guard::Guard::default(),
            ..self.clone()
        };
        hash::of_json(&without)
    }

    /// A hash of the whole constitution, its `guard:` section included (what a served
    /// decision was made under).
    pub fn guard_hash(&self) -> String {
        hash::of_json(self)
    }

    pub fn principle(&self, id: &str) -> Option<&Principle> {
        self.principles.iter().find(|p| p.id == id)
    }

    /// Picks `k` principles for one prompt's rounds: weighted, without replacement while
    /// distinct principles remain, and fully determined by `seed` and `key` (the prompt id), so
    /// a resumed run samples exactly what the interrupted one would have.
    pub fn sample_principles(&self, seed: u64, key: &str, k: usize) -> Vec<&Principle> {
        let digest = hash::hex_to_u64(&hash::of_parts(&[&seed.to_string(), key]));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(digest);
        let mut pool: Vec<&Principle> = self.principles.iter().collect();
        let mut picked = Vec::with_capacity(k);
        for _ in 0..k {
            if pool.is_empty() {
                pool = self.principles.iter().collect();
            }
            let total: f64 = pool.iter().map(|p| p.weight).sum();
            let mut x = rng.gen::<f64>() * total;
            let mut index = pool.len() - 1;
            for (i, p) in pool.iter().enumerate() {
                if x < p.weight {
                    index = i;
                    break;
                }
                x -= p.weight;
            }
            picked.push(pool.remove(index));
        }
        picked
    }

    /// The refusal guidance for a restricted topic.
    pub fn refusal_for(&self, topic: &str) -> Option<&Refusal> {
        self.refusals.iter().find(|r| r.topic == topic)
    }

    /// The refusal guidance for a prompt: its topic tag's, else the closest by wording.
    pub fn refusal_for_prompt(
        &self,
        topic: Option<&str>,
        messages: &[crate::chat::Message],
    ) -> Option<&Refusal> {
        topic
            .and_then(|t| self.refusal_for(t))
            .or_else(|| self.closest_refusal(crate::chat::last_user(messages)))
    }

    /// The refusal guidance whose topic and wording best match `text` (a prompt without a
    /// topic tag): the one sharing the most content words with it, if any shares one.
    pub fn closest_refusal(&self, text: &str) -> Option<&Refusal> {
        let words = content_words(text);
        self.refusals
            .iter()
            .map(|r| {
                let own = content_words(&format!("{} {}", r.topic, r.decline));
                (own.intersection(&words).count(), r)
            })
            .filter(|(shared, _)| *shared > 0)
            .max_by_key(|(shared, _)| *shared)
            .map(|(_, r)| r)
    }

    /// Examples that demonstrate `principle` (or are general), for few-shot prompts.
    pub fn examples_for(&self, principle: &str) -> Vec<&Example> {
        self.examples
            .iter()
            .filter(|e| e.principle.as_deref().is_none_or(|p| p == principle))
            .collect()
    }
}

/// The lower-cased words of `text` longer than three letters, crudely stemmed (a trailing
/// "s", "ing" or "ed" dropped), for matching a prompt to a topic.
fn content_words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 3)
        .map(|w| {
            let w = w.to_lowercase();
            for suffix in ["ing", "ed", "s"] {
                if let Some(stem) = w.strip_suffix(suffix).filter(|s| s.chars().count() > 3) {
                    return stem.to_string();
                }
            }
            w
        })
        .collect()
}

fn valid_id(id: &str) -> bool {
    id.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Locates the first invalid UTF-8 byte as a line and column.
pub(crate) fn utf8_problem(bytes: &[u8], valid_up_to: usize) -> Problem {
    let before = &bytes[..valid_up_to];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = valid_up_to
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    Problem {
        line,
        col,
        message: format!("the file is not valid UTF-8 (byte offset {valid_up_to})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: t\nprinciples:\n  - id: a\n    critique_request: c\n    revision_request: r\n    weight: 3\n  - id: b\n    critique_request: c\n    revision_request: r\n";

    #[test]
    fn sampling_is_deterministic_and_distinct() {
        let c = Constitution::parse(GOOD).unwrap();
        let a = c.sample_principles(7, "p1", 2);
        let b = c.sample_principles(7, "p1", 2);
        assert_eq!(a, b);
        assert_ne!(a[0].id, a[1].id);
        assert_eq!(c.sample_principles(7, "p1", 3).len(), 3);
    }

    #[test]
    fn sampling_follows_weights() {
        let c = Constitution::parse(GOOD).unwrap();
        let heavy = (0..2000)
            .filter(|i| c.sample_principles(1, &i.to_string(), 1)[0].id == "a")
            .count();
        // Weight 3 vs 1: expect ~75%.
        assert!((1350..1650).contains(&heavy), "{heavy}");
    }

    #[test]
    fn schema_has_every_section() {
        let s = json_schema();
        let props = s["properties"].as_object().unwrap();
        for key in [
            "name",
            "principles",
            "comparisons",
            "topics",
            "examples",
            "refusals",
        ] {
            assert!(props.contains_key(key), "{key}");
        }
    }

    const WITH_REFUSALS: &str = "name: t\nprinciples:\n  - id: no-harm\n    critique_request: c\n    revision_request: r\ntopics:\n  restricted: [making weapons, stalking people]\nrefusals:\n  - topic: making weapons\n    principle: no-harm\n    decline: building weapons.\n    reason: they hurt people\n    alternative: explain their history\n";

    #[test]
    fn refusals_cite_their_principle_and_offer_the_alternative() {
        let c = Constitution::parse(WITH_REFUSALS).unwrap();
        let text = c.refusal_for("making weapons").unwrap().render();
        assert_eq!(
            text,
            "I can't help with building weapons, because they hurt people. That follows from my \
             principle of no harm. If it helps, I can explain their history instead."
        );
        assert!(crate::filters::is_refusal(&text));
        assert_eq!(
            c.closest_refusal("how do I build a weapon from pipes")
                .map(|r| r.topic.as_str()),
            Some("making weapons")
        );
        assert!(c.closest_refusal("bake a cake").is_none());
    }

    #[test]
    fn refusals_must_name_a_restricted_topic_and_a_principle() {
        let bad = WITH_REFUSALS
            .replace("  - topic: making weapons", "  - topic: cooking")
            .replace(
                "principle: no-harm\n    decline",
                "principle: nope\n    decline",
            );
        let problems = Constitution::parse(&bad).unwrap_err();
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`refusals[0].topic`: `cooking` is not one of")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`refusals[0].principle`: no principle has id `nope`")),
            "{messages:?}"
        );
        assert!(problems.iter().all(|p| p.line > 1), "{problems:?}");
    }
}
