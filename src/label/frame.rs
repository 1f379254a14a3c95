//! Frames: single minijinja templates a judge reads ([`Frame`]), bundled under `prompts/` or
//! taken from a user's `--templates DIR`, rendered with strict undefined; user text goes in as
//! values — data, never template source. [`JudgeFrame`] is the labeling judge's multiple-choice
//! frame (`judge.jinja`): the conversation, the comparison question and the two options (`cot`:
//! whether the judge is to reason first).

use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};

use crate::chat::Message;
use crate::hash;
use crate::turns::TurnTemplateError;

const JUDGE: &str = include_str!("../../prompts/judge.jinja");
const NAME: &str = "judge.jinja";

/// The frame fails the way the critique/revision templates do.
pub type FrameError = TurnTemplateError;

/// One single-template frame: a bundled source, or the file of the same name in a user's
/// `--templates DIR`; strict undefined; checked by a trial render when loaded.
#[derive(Clone)]
pub struct Frame {
    env: Environment<'static>,
    hash: String,
    origin: String,
    name: &'static str,
}

impl Frame {
    /// `name` from `dir` when it is there, else `bundled`.
    pub fn load(
        dir: Option<&Path>,
        name: &'static str,
        bundled: &'static str,
    ) -> Result<Self, FrameError> {
        let (source, origin) = match dir.map(|d| d.join(name)).filter(|p| p.exists()) {
            Some(path) => {
                let source = std::fs::read_to_string(&path)
                    .map_err(|source| FrameError::Read { path, source })?;
                let origin = dir.map_or_else(String::new, |d| d.display().to_string());
                (source, origin)
            }
            None => (bundled.to_string(), "bundled".to_string()),
        };
        let hash = hash::of_parts(&[&source]);
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_template_owned(name, source)
            .map_err(|e| FrameError::Template {
                name: format!("{origin}/{name}"),
                message: e.to_string(),
            })?;
        Ok(Frame {
            env,
            hash,
            origin,
            name,
        })
    }

    /// Hash of the source: part of the identity of whatever is judged with it.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Renders with `values` (user text goes in as values: data, never template source).
    pub fn render(&self, values: minijinja::Value) -> Result<String, FrameError> {
        let fail = |e: minijinja::Error| FrameError::Template {
            name: format!("{}/{}", self.origin, self.name),
            message: e.to_string(),
        };
        let template = self.env.get_template(self.name).map_err(fail)?;
        let text = template.render(values).map_err(fail)?;
        Ok(text.trim().to_string())
    }
}

#[derive(Clone)]
pub struct JudgeFrame {
    frame: Frame,
}

impl JudgeFrame {
    pub fn bundled() -> Result<Self, FrameError> {
        Self::checked(Frame::load(None, NAME, JUDGE)?)
    }

    /// `judge.jinja` from `dir`, or the bundled frame when the directory has none.
    pub fn from_dir(dir: &Path) -> Result<Self, FrameError> {
        Self::checked(Frame::load(Some(dir), NAME, JUDGE)?)
    }

    fn checked(frame: Frame) -> Result<Self, FrameError> {
        let frame = JudgeFrame { frame };
        // Fail now, not at the first pair.
        frame.render(&[Message::user("x")], "q", "a", "b", false)?;
        frame.render(&[Message::user("x")], "q", "a", "b", true)?;
        Ok(frame)
    }

    /// Hash of the frame source: part of the judge's identity.
    pub fn hash(&self) -> &str {
        self.frame.hash()
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
        self.frame.render(minijinja::context! {
            conversation => conversation,
            question => question,
            option_a => option_a,
            option_b => option_b,
            cot => cot,
        })
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
