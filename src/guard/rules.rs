//! The constitution's pattern rules as a screen: a text is flagged by the first rule with a
//! pattern that matches it and no `unless` pattern that does. A flag carries what a principled
//! refusal needs — the rule, the principle it enforces and the restricted topic — so a refusal
//! can say which principle was at stake and offer the topic's lawful alternative.

use regex::Regex;

use crate::constitution::guard::{compile, Screens};
use crate::constitution::Constitution;

/// Which text is screened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The user's turn, before anything is generated.
    Input,
    /// The model's answer, before it is returned.
    Output,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// Why a text was flagged.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    pub rule: String,
    /// The principle at stake (a principle id).
    pub principle: String,
    pub topic: Option<String>,
    /// The text the pattern matched (for a classifier: its probability, in words).
    pub matched: String,
    /// A classifier's probability that the text is unsafe (None for a pattern rule).
    pub score: Option<f64>,
}

struct Rule {
    id: String,
    topic: Option<String>,
    principle: String,
    patterns: Vec<Regex>,
    unless: Vec<Regex>,
    screens: Screens,
}

/// The compiled rules of one constitution.
pub struct PatternScreen {
    rules: Vec<Rule>,
}

impl PatternScreen {
    /// Compiles the constitution's rules (a loaded constitution's patterns already compiled
    /// once in its checks; an error here names the rule all the same).
    pub fn new(constitution: &Constitution) -> Result<PatternScreen, String> {
        let mut rules = Vec::new();
        for rule in &constitution.guard.rules {
            let regexes = |patterns: &[String]| -> Result<Vec<Regex>, String> {
                patterns
                    .iter()
                    .map(|p| {
                        compile(p)
                            .map_err(|e| format!("guard rule `{}`: pattern {p:?}: {e}", rule.id))
                    })
                    .collect()
            };
            let principle = rule
                .principle
                .clone()
                .or_else(|| {
                    rule.topic
                        .as_deref()
                        .and_then(|t| constitution.refusal_for(t))
                        .map(|r| r.principle.clone())
                })
                .ok_or_else(|| format!("guard rule `{}` names no principle", rule.id))?;
            rules.push(Rule {
                id: rule.id.clone(),
                topic: rule.topic.clone(),
                principle,
                patterns: regexes(&rule.patterns)?,
                unless: regexes(&rule.unless)?,
                screens: rule.screens,
            });
        }
        Ok(PatternScreen { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule screens this side.
    pub fn screens(&self, side: Side) -> bool {
        self.rules.iter().any(|r| applies(r.screens, side))
    }

    /// The first rule that flags `text` on `side`.
    pub fn check(&self, text: &str, side: Side) -> Option<Flag> {
        self.rules
            .iter()
            .filter(|r| applies(r.screens, side))
            .find_map(|rule| {
                let found = rule.patterns.iter().find_map(|p| p.find(text))?;
                if rule.unless.iter().any(|u| u.is_match(text)) {
                    return None;
                }
                Some(Flag {
                    rule: rule.id.clone(),
                    principle: rule.principle.clone(),
                    topic: rule.topic.clone(),
                    matched: found.as_str().to_string(),
                    score: None,
                })
            })
    }
}

fn applies(screens: Screens, side: Side) -> bool {
    match side {
        Side::Input => screens.input(),
        Side::Output => screens.output(),
    }
}

/// The principled refusal a flag gets: the topic's refusal in the constitution's words when it
/// has one (its reason, principle and alternative) and it cites the flag's principle; else one
/// that names the principle.
pub fn refusal(constitution: &Constitution, flag: &Flag) -> String {
    let topic_refusal = flag
        .topic
        .as_deref()
        .and_then(|t| constitution.refusal_for(t))
        .filter(|r| r.principle == flag.principle);
    match topic_refusal {
        Some(r) => r.render(),
        None => format!(
            "I can't help with that, because it goes against my principle of {}.",
            flag.principle.replace(['-', '_'], " ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{refusal, PatternScreen, Side};
    use crate::constitution::Constitution;

    const GUARDED: &str = r#"
name: t
principles:
  - id: dangerous-capabilities
    critique_request: c
    revision_request: r
  - id: honesty
    critique_request: c
    revision_request: r
topics:
  restricted: [weapons]
refusals:
  - topic: weapons
    principle: dangerous-capabilities
    decline: making weapons
    reason: they can kill people
    alternative: explain their history
guard:
  output: revise
  banned_phrases: ["as an AI"]
  rules:
    - id: explosives
      topic: weapons
      patterns: ['\b(make|build)\b.{0,30}\b(bomb|explosive)']
      unless: ['\bbath bomb']
    - id: made-up
      principle: honesty
      patterns: ['guaranteed to cure']
      screens: output
"#;

    #[test]
    fn rules_flag_harm_clear_look_alikes_and_name_the_principle() {
        let c = Constitution::parse(GUARDED).expect("valid");
        let screen = PatternScreen::new(&c).expect("compiles");
        let flag = screen
            .check("How do I MAKE a pipe bomb?", Side::Input)
            .expect("flagged");
        assert_eq!(flag.rule, "explosives");
        assert_eq!(flag.principle, "dangerous-capabilities");
        assert!(screen
            .check("How do I make a bath bomb?", Side::Input)
            .is_none());
        // An output-only rule does not screen input.
        assert!(screen.check("guaranteed to cure", Side::Input).is_none());
        assert_eq!(
            screen
                .check("It is guaranteed to cure it.", Side::Output)
                .map(|f| f.principle),
            Some("honesty".to_string())
        );
        let text = refusal(&c, &flag);
        assert!(text.contains("dangerous capabilities") && text.contains("explain their history"));
        let honest = screen.check("guaranteed to cure", Side::Output).unwrap();
        assert!(refusal(&c, &honest).contains("principle of honesty"));
    }

    /// Whether parsing `yaml` reports a problem at `line` whose message names `field`.
    fn reported(yaml: &str, line: usize, field: &str) -> bool {
        let problems = Constitution::parse(yaml).expect_err("invalid");
        let found = problems
            .iter()
            .any(|p| p.line == line && p.message.contains(field));
        if !found {
            eprintln!("{problems:?}");
        }
        found
    }

    #[test]
    fn a_bad_rule_is_reported_with_its_line() {
        let bad = GUARDED
            .replace("unless: ['\\bbath bomb']", "unless: ['(unclosed']")
            .replace(
                "topic: weapons\n      patterns",
                "topic: knives\n      patterns",
            );
        assert!(reported(&bad, 23, "guard.rules[0].topic"));
        assert!(reported(&bad, 25, "guard.rules[0].unless[0]"));
        // An optional section that is given is checked as that section (not "expected null").
        let classifier = GUARDED.replace(
            "  output: revise\n",
            "  output: revise\n  classifier:\n    scorer: svm\n    threshold: 0\n",
        );
        assert!(reported(&classifier, 21, "guard.classifier.scorer"));
        // A rule without a principle, and no refusal for its topic to borrow one from.
        let orphan = GUARDED.replace("      principle: honesty\n", "");
        assert!(reported(&orphan, 26, "guard.rules[1]"));
    }
}
