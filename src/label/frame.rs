//! The judge's multiple-choice frame: a minijinja template (bundled `prompts/judge.jinja`, or
//! `judge.jinja` in a user's `--templates DIR`) that lays out the conversation, the comparison
//! question and the two options (`cot`: whether the judge is to reason first). Rendered with strict undefined; the conversation and answers go
//! in as values — data, never template source.

use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};

use crate::chat::Message;
use crate::hash;
use crate::turns::TurnTemplateError;

const JUDGE: &str = include_str!("../../prompts/judge.jinja");
const NAME: &str = "judge.jinja";

/// The frame fails the way the critique/revision templates do.
pub type FrameError = TurnTemplateError;

pub struct JudgeFrame {
    env: Environment<'static>,
    hash: String,
    origin: String,
}

impl JudgeFrame {
    pub fn bundled() -> Result<Self, FrameError> {
        Self::from_source(JUDGE.to_string(), "bundled".into())
    }

    /// `judge.jinja` from `dir`, or the bundled frame when the directory has none.
    pub fn from_dir(dir: &Path) -> Result<Self, FrameError> {
        let path = dir.join(NAME);
        if !path.exists() {
            return Self::bundled();
        }
        let source =
            std::fs::read_to_string(&path).map_err(|source| FrameError::Read { path, source })?;
        Self::from_source(source, dir.display().to_string())
    }

    fn from_source(source: String, origin: String) -> Result<Self, FrameError> {
        let hash = hash::of_parts(&[&source]);
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_template_owned(NAME, source)
            .map_err(|e| FrameError::Template {
                name: format!("{origin}/{NAME}"),
                message: e.to_string(),
            })?;
        let frame = JudgeFrame { env, hash, origin };
        // Fail now, not at the first pair.
        frame.render(&[Message::user("x")], "q", "a", "b", false)?;
        frame.render(&[Message::user("x")], "q", "a", "b", true)?;
        Ok(frame)
    }

    /// Hash of the frame source: part of the judge's identity.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The frame for one question with `option_a` shown as (A) and `option_b` as (B); `cot` asks
    /// the judge to reason before it answers.
    pub fn render(
        &self,
        conversation: &[Message],
        question: &str,
        option_a: &str,
        option_b: &str,
        cot: bool,
    ) -> Result<String, FrameError> {
        let fail = |e: minijinja::Error| FrameError::Template {
            name: format!("{}/{NAME}", self.origin),
            message: e.to_string(),
        };
        let template = self.env.get_template(NAME).map_err(fail)?;
        let text = template
            .render(minijinja::context! {
                conversation => conversation,
                question => question,
                option_a => option_a,
                option_b => option_b,
                cot => cot,
            })
            .map_err(fail)?;
        Ok(text.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_stays_data() {
        let frame = JudgeFrame::bundled().unwrap();
        let text = frame
            .render(
                &[Message::user("What is {{ 7 * 6 }}? {% if x %}")],
                "Which is better?",
                "It is {{ answer }}.",
                "B's text",
                false,
            )
            .unwrap();
        assert!(
            text.contains("USER: What is {{ 7 * 6 }}? {% if x %}"),
            "{text}"
        );
        assert!(text.contains("(A) It is {{ answer }}."), "{text}");
        assert!(text.contains("(B) B's text"), "{text}");
        assert!(text.contains("Which is better?"), "{text}");
    }

    #[test]
    fn a_broken_frame_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NAME), "{{ conversation }} {{ nope }}").unwrap();
        let err = JudgeFrame::from_dir(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("judge.jinja") && err.contains("undefined"),
            "{err}"
        );
    }
}
