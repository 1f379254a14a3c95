//! Chat messages and the model's own chat template.
//!
//! The template comes from the GGUF's `tokenizer.chat_template` and is run by minijinja, so its
//! logic (default system prompts, role checks) is kept — llama.cpp's built-in template matching
//! drops it. Message text is user data: it is passed to the template as a value, and the rendered
//! conversation comes back as [`Segment`]s that say which text came from a message (to be
//! tokenized with special-token parsing off, so "<|im_start|>" typed by a user stays text) and
//! which from the template itself.

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::hash;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A piece of rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    /// True for template text (special tokens are parsed), false for message content.
    pub from_template: bool,
}

/// Used when a model file carries no chat template.
pub const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model's chat template does not compile: {0}")]
    Compile(String),
    #[error("the model's chat template failed: {0}")]
    Render(String),
}

/// A compiled chat template with the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    source_hash: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_hash", &self.source_hash)
            .finish()
    }
}

fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with these two settings; match them.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        // Some templates print today's date; a fixed one keeps a resumed run's conversations
        // (and so its KV reuse and outputs) identical to the interrupted run's.
        env.add_function("strftime_now", |_fmt: String| "1 January 2026".to_string());
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            source_hash: hash::of_parts(&[source]),
        })
    }

    pub fn source_hash(&self) -> &str {
        &self.source_hash
    }

    /// Renders the conversation, splitting message content from template text.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>, ChatError> {
        // Each message's content is replaced by a marker that cannot occur by chance (a random
        // nonce in private-use characters), and put back after rendering as its own segment.
        let nonce: u64 = rand::random();
        let marker = |i: usize| format!("\u{F8F0}{nonce:016x}:{i}\u{F8F1}");
        let masked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(&m.role, marker(i)))
            .collect();
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        let rendered = template
            .render(minijinja::context! {
                messages => masked,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| ChatError::Render(e.to_string()))?;

        let prefix = format!("\u{F8F0}{nonce:016x}:");
        let mut segments = Vec::new();
        let mut rest = rendered.as_str();
        while let Some(start) = rest.find(&prefix) {
            let after = &rest[start + prefix.len()..];
            let Some(end) = after.find('\u{F8F1}') else {
                break;
            };
            let index: Option<usize> = after[..end].parse().ok();
            let Some(message) = index.and_then(|i| messages.get(i)) else {
                break;
            };
            push(&mut segments, &rest[..start], true);
            push(&mut segments, &message.content, false);
            rest = &after[end + '\u{F8F1}'.len_utf8()..];
        }
        push(&mut segments, rest, true);
        Ok(segments)
    }

    /// The rendered conversation as one string (for display and hashing).
    pub fn render_text(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        Ok(self
            .render(messages, add_generation_prompt)?
            .into_iter()
            .map(|s| s.text)
            .collect())
    }
}

fn push(segments: &mut Vec<Segment>, text: &str, from_template: bool) {
    if text.is_empty() {
        return;
    }
    match segments.last_mut() {
        Some(last) if last.from_template == from_template => last.text.push_str(text),
        _ => segments.push(Segment {
            text: text.to_string(),
            from_template,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_segments_keep_user_text_apart() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let segs = t
            .render(&[Message::user("hi <|im_end|> {{ x }}")], true)
            .unwrap();
        assert_eq!(
            segs,
            vec![
                Segment {
                    text: "<|im_start|>user\n".into(),
                    from_template: true
                },
                Segment {
                    text: "hi <|im_end|> {{ x }}".into(),
                    from_template: false
                },
                Segment {
                    text: "<|im_end|>\n<|im_start|>assistant\n".into(),
                    from_template: true
                },
            ]
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        assert!(t.render(&[Message::user("x")], false).is_err());
    }
}
