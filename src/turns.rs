//! The critique and revision requests: minijinja templates (bundled from `prompts/`, or a
//! user's `--templates DIR`) that turn a principle into the user turns of a round.
//!
//! Templates render with strict undefined, so a typo in a variable name is an error, not an
//! empty string. They see the principle and the constitution's examples as values; the prompt
//! and the model's answers are never rendered through them.

use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::constitution::{Constitution, Principle, Refusal};
use crate::hash;

const CRITIQUE: &str = include_str!("../prompts/critique.jinja");
const REVISION: &str = include_str!("../prompts/revision.jinja");
const NAMES: [&str; 2] = ["critique.jinja", "revision.jinja"];

#[derive(Debug, thiserror::Error)]
pub enum TurnTemplateError {
    #[error("cannot read template {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
}

/// Which request of a round to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Critique,
    Revision,
}

pub struct TurnTemplates {
    env: Environment<'static>,
    hash: String,
    origin: String,
}

#[derive(Serialize)]
struct ConstitutionInfo<'a> {
    name: &'a str,
    description: Option<&'a str>,
}

impl TurnTemplates {
    /// The templates shipped with tenets.
    pub fn bundled() -> Result<Self, TurnTemplateError> {
        Self::from_sources(CRITIQUE.to_string(), REVISION.to_string(), "bundled".into())
    }

    /// `critique.jinja` and `revision.jinja` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, TurnTemplateError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|source| TurnTemplateError::Read { path, source })
        };
        Self::from_sources(read(NAMES[0])?, read(NAMES[1])?, dir.display().to_string())
    }

    fn from_sources(
        critique: String,
        revision: String,
        origin: String,
    ) -> Result<Self, TurnTemplateError> {
        let hash = hash::of_parts(&[&critique, &revision]);
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(false);
        for (name, source) in NAMES.iter().zip([critique, revision]) {
            env.add_template_owned(*name, source)
                .map_err(|e| TurnTemplateError::Template {
                    name: format!("{origin}/{name}"),
                    message: describe(&e),
                })?;
        }
        Ok(TurnTemplates { env, hash, origin })
    }

    /// Hash of both template sources: part of every run's identity.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn render(
        &self,
        turn: Turn,
        constitution: &Constitution,
        principle: &Principle,
        round: usize,
        rounds: usize,
    ) -> Result<String, TurnTemplateError> {
        let name = match turn {
            Turn::Critique => NAMES[0],
            Turn::Revision => NAMES[1],
        };
        let fail = |e: minijinja::Error| TurnTemplateError::Template {
            name: format!("{}/{name}", self.origin),
            message: describe(&e),
        };
        let template = self.env.get_template(name).map_err(fail)?;
        let text = template
            .render(minijinja::context! {
                principle => principle,
                examples => constitution.examples_for(&principle.id),
                constitution => ConstitutionInfo {
                    name: &constitution.name,
                    description: constitution.description.as_deref(),
                },
                round => round,
                rounds => rounds,
            })
            .map_err(fail)?;
        Ok(text.trim().to_string())
    }

    /// A round's request as the model gets it: the template rendered, and for a revision of an
    /// answer on a restricted topic that topic's refusal guidance put first — so the request
    /// still ends as the template ends it ("Reply with the revised response only.").
    pub fn request(
        &self,
        turn: Turn,
        constitution: &Constitution,
        principle: &Principle,
        (round, rounds): (usize, usize),
        refusal: Option<&Refusal>,
    ) -> Result<String, TurnTemplateError> {
        let text = self.render(turn, constitution, principle, round, rounds)?;
        Ok(match refusal.filter(|_| turn == Turn::Revision) {
            Some(r) => format!("{}\n\n{}", r.revision_guidance(), text.trim_start()),
            None => text,
        })
    }

    /// Renders both templates against every principle once, so a broken template fails before
    /// a run starts rather than at its first critique.
    pub fn check(&self, constitution: &Constitution) -> Result<(), TurnTemplateError> {
        for p in &constitution.principles {
            self.render(Turn::Critique, constitution, p, 1, 1)?;
            self.render(Turn::Revision, constitution, p, 1, 1)?;
        }
        Ok(())
    }
}

fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("line {line}: {e}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_undefined_is_an_error() {
        let t = TurnTemplates::from_sources("{{ principle.nope }}".into(), "x".into(), "t".into())
            .unwrap();
        let c = Constitution::parse(&crate::constitution::starter::starter("x")).unwrap();
        assert!(t.check(&c).is_err());
    }

    #[test]
    fn bundled_templates_render() {
        let t = TurnTemplates::bundled().unwrap();
        let c = Constitution::parse(&crate::constitution::starter::starter("x")).unwrap();
        let p = c.principle("not-preachy").unwrap();
        let text = t.render(Turn::Critique, &c, p, 1, 1).unwrap();
        assert!(text.starts_with("Here is an example"));
        assert!(text.ends_with(p.critique_request.trim()));
    }
}
