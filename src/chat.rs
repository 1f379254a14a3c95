//! Chat messages and the model's own chat template.
//!
//! The template comes from the GGUF's `tokenizer.chat_template` and is run by minijinja with the
//! settings Hugging Face renders it with (trimmed blocks, `loopcontrols`, Python string methods,
//! `raise_exception`, `strftime_now`), so its logic is kept — llama.cpp's built-in template
//! matching drops it — and the text is the one `apply_chat_template` gives. Message text is user
//! data: it goes into the template's context as a value, never into its source, and the template
//! sees the real text (Llama 3 and Gemma 3 trim it, Phi-3.5 skips an empty system message,
//! DeepSeek-R1 drops an answer's reasoning).
//!
//! The rendered conversation comes back as [`Segment`]s that say which text came from a message
//! (tokenized with special-token parsing off, so "<|im_start|>" typed by a user stays text) and
//! which from the template. The message spans are found by rendering a second time with each
//! message replaced by a marker that cannot occur by chance: that gives the template's own text
//! around each message, which is matched against the real rendering with the message as the
//! template printed it (whole, trimmed, or past its reasoning). Where content changes the
//! template's path (an empty message skipped), the messages are found in the rendering in the
//! order the markers gave.

use std::collections::HashSet;
use std::sync::Mutex;

use minijinja::{Environment, ErrorKind, Value};
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

/// What the person asked last: the content of the last user message ("" when there is none).
pub fn last_user(messages: &[Message]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or("", |m| &m.content)
}

/// A piece of rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    /// True for template text (special tokens are parsed), false for message content.
    pub from_template: bool,
}

/// Used when a model file carries no chat template, or one that does not compile.
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

/// The date templates see through `strftime_now`: fixed, so a resumed run renders its
/// conversations (and so its KV reuse and outputs) exactly as the interrupted run did.
/// Thursday 1 January 2026, 00:00:00.
const TODAY: (i32, u32, u32) = (2026, 1, 1);

/// `strftime` (Python's, on glibc) of [`TODAY`] at midnight, for the templates that print a date.
pub fn strftime_today(format: &str) -> String {
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (year, month, day) = TODAY;
    // 1 January 2026 is a Thursday, and the first day of its year.
    let (weekday, yday) = (DAYS[3], 1);
    let month_name = MONTHS[month as usize - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // glibc's `%-d`: the number without padding.
        let mut spec = chars.next();
        let unpadded = spec == Some('-');
        if unpadded {
            spec = chars.next();
        }
        let number = |n: u32, width: usize| {
            if unpadded {
                n.to_string()
            } else {
                format!("{n:0width$}")
            }
        };
        match spec {
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('d') => out.push_str(&number(day, 2)),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('m') => out.push_str(&number(month, 2)),
            Some('y') => out.push_str(&number(year as u32 % 100, 2)),
            Some('Y') => out.push_str(&year.to_string()),
            Some('j') => out.push_str(&number(yday, 3)),
            Some('H') | Some('M') | Some('S') => out.push_str(&number(0, 2)),
            Some('I') => out.push_str(&number(12, 2)),
            Some('p') => out.push_str("AM"),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('D') | Some('x') => {
                out.push_str(&format!("{month:02}/{day:02}/{:02}", year % 100))
            }
            Some('T') | Some('X') => out.push_str("00:00:00"),
            Some('c') => out.push_str(&format!(
                "{} {} {day:>2} 00:00:00 {year}",
                &weekday[..3],
                &month_name[..3]
            )),
            // A naive local time has no zone.
            Some('Z') | Some('z') => {}
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Templates that did not compile, each reported once per process.
static REPORTED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// A piece of the rendering with every message replaced by its marker.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Template(String),
    /// The content of message `i`, wherever the template printed it.
    Message(usize),
}

impl ChatTemplate {
    /// Compiles `source`; an error when it does not compile.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, ChatError> {
        // Hugging Face renders chat templates with these settings; match them. (Its
        // `keep_trailing_newline` is off, as minijinja's is.)
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: String| strftime_today(&format));
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            source_hash: hash::of_parts(&[source]),
        })
    }

    /// The model's own template, or — as llama.cpp does — ChatML when it does not compile,
    /// said once on stderr.
    pub fn new_or_chatml(source: &str, bos: &str, eos: &str) -> Self {
        match ChatTemplate::new(source, bos, eos) {
            Ok(template) => template,
            Err(e) => {
                let hash = hash::of_parts(&[source]);
                let mut reported = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
                if reported.get_or_insert_with(HashSet::new).insert(hash) {
                    tracing::warn!("{e}; using ChatML instead, as llama.cpp does");
                }
                ChatTemplate::new(CHATML, bos, eos).expect("ChatML compiles")
            }
        }
    }

    pub fn source_hash(&self) -> &str {
        &self.source_hash
    }

    /// The template run on `messages`, with the context Hugging Face gives it.
    fn run(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
                // `apply_chat_template` passes these as None when a chat has none.
                tools => Value::from(()),
                documents => Value::from(()),
            })
            .map_err(|e| ChatError::Render(e.to_string()))
    }

    /// Renders the conversation, splitting message content from template text.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>, ChatError> {
        let rendered = self.run(messages, add_generation_prompt)?;
        // The template's own text: each message replaced by a marker (a random nonce in
        // private-use characters) that no message contains by chance.
        let nonce: u64 = rand::random();
        let masked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(&m.role, marker(nonce, i)))
            .collect();
        let skeleton = self
            .run(&masked, add_generation_prompt)
            .ok()
            .map(|text| pieces(&text, nonce, messages.len()));
        let segments = skeleton
            .as_deref()
            .and_then(|pieces| align(pieces, &rendered, messages))
            .unwrap_or_else(|| {
                let order: Vec<usize> = match &skeleton {
                    Some(pieces) => pieces
                        .iter()
                        .filter_map(|p| match p {
                            Piece::Message(i) => Some(*i),
                            Piece::Template(_) => None,
                        })
                        .collect(),
                    None => (0..messages.len()).collect(),
                };
                search(&rendered, messages, &order)
            });
        Ok(segments)
    }

    /// The rendered conversation as one string (for display and hashing).
    pub fn render_text(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.run(messages, add_generation_prompt)
    }
}

fn marker(nonce: u64, i: usize) -> String {
    format!("\u{F8F0}{nonce:016x}:{i}\u{F8F1}")
}

/// The marker rendering cut into template text and message places.
fn pieces(text: &str, nonce: u64, messages: usize) -> Vec<Piece> {
    let prefix = format!("\u{F8F0}{nonce:016x}:");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&prefix) {
        let after = &rest[start + prefix.len()..];
        let Some(end) = after.find('\u{F8F1}') else {
            break;
        };
        let Some(index) = after[..end].parse().ok().filter(|&i| i < messages) else {
            break;
        };
        if start > 0 {
            out.push(Piece::Template(rest[..start].to_string()));
        }
        out.push(Piece::Message(index));
        rest = &after[end + '\u{F8F1}'.len_utf8()..];
    }
    if !rest.is_empty() {
        out.push(Piece::Template(rest.to_string()));
    }
    out
}

/// The forms in which templates print a message, longest first: whole, trimmed at either end
/// or both (Jinja's `trim`, Python's `strip`/`lstrip('\n')`), or only what follows the last
/// `</think>` (reasoning models drop an answer's reasoning).
fn forms(content: &str) -> Vec<&str> {
    fn add<'a>(out: &mut Vec<&'a str>, s: &'a str) {
        out.extend([
            s,
            s.trim_end(),
            s.trim_start(),
            s.trim(),
            s.trim_start_matches('\n'),
            s.trim_matches('\n'),
        ]);
    }
    let mut out = Vec::new();
    add(&mut out, content);
    if let Some((_, answer)) = content.rsplit_once("</think>") {
        add(&mut out, answer);
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.len()));
    out.dedup();
    out
}

/// The real rendering cut where the marker rendering says: each template piece must be there
/// as it is, and each message in one of its [`forms`] followed by the next template piece.
/// `None` when the message changed the template's path.
fn align(pieces: &[Piece], rendered: &str, messages: &[Message]) -> Option<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut pos = 0;
    for (k, piece) in pieces.iter().enumerate() {
        let rest = &rendered[pos..];
        match piece {
            Piece::Template(text) => {
                if !rest.starts_with(text.as_str()) {
                    return None;
                }
                push(&mut segments, text, true);
                pos += text.len();
            }
            Piece::Message(i) => {
                let next = match pieces.get(k + 1) {
                    Some(Piece::Template(text)) => text.as_str(),
                    _ => "",
                };
                let form = forms(&messages[*i].content)
                    .into_iter()
                    .find(|f| rest.starts_with(f) && rest[f.len()..].starts_with(next))?;
                push(&mut segments, form, false);
                pos += form.len();
            }
        }
    }
    (pos == rendered.len()).then_some(segments)
}

/// The messages found in the rendering one after another (in `order`, the order the template
/// printed them), each in its longest form that is there; what lies between is template text.
/// A message the template left out or changed beyond its forms stays template text.
fn search(rendered: &str, messages: &[Message], order: &[usize]) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut pos = 0;
    for &i in order {
        let found = forms(&messages[i].content)
            .into_iter()
            .filter(|f| !f.is_empty())
            .find_map(|f| rendered[pos..].find(f).map(|at| (pos + at, f)));
        if let Some((at, form)) = found {
            push(&mut segments, &rendered[pos..at], true);
            push(&mut segments, form, false);
            pos = at + form.len();
        }
    }
    push(&mut segments, &rendered[pos..], true);
    segments
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

    /// Joins segments, marking message content with « » so a test sees both text and split.
    fn marked(segments: &[Segment]) -> String {
        segments
            .iter()
            .map(|s| {
                if s.from_template {
                    s.text.clone()
                } else {
                    format!("«{}»", s.text)
                }
            })
            .collect()
    }

    #[test]
    fn the_template_sees_the_real_content() {
        // Llama 3 and Gemma 3 trim the content: the trim must act on the text, not on a
        // stand-in for it.
        let trim = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</s>{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let chat = [Message::user("  hello \n"), Message::assistant("\n\nhi")];
        assert_eq!(
            marked(&trim.render(&chat, false).unwrap()),
            "<user>«hello»</s><assistant>«hi»</s>"
        );
        assert_eq!(
            trim.render_text(&chat, false).unwrap(),
            "<user>hello</s><assistant>hi</s>"
        );
        // Phi-3.5 leaves out an empty system message: the content decides the template's path.
        let phi = ChatTemplate::new(
            "{% for m in messages %}{% if m.role == 'system' and m.content %}<|system|>{{ m.content }}<|end|>{% elif m.role == 'user' %}<|user|>{{ m.content }}<|end|>{% endif %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let chat = [Message::new("system", ""), Message::user("<|end|>")];
        assert_eq!(
            marked(&phi.render(&chat, false).unwrap()),
            "<|user|>«<|end|>»<|end|>"
        );
        // DeepSeek-R1 drops an answer's reasoning.
        let r1 = ChatTemplate::new(
            "{% for m in messages %}{% set c = m.content %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}[{{ m.role }}]{{ c }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let chat = [
            Message::user("why?"),
            Message::assistant("<think>hmm</think>because"),
        ];
        assert_eq!(
            marked(&r1.render(&chat, false).unwrap()),
            "[user]«why?»[assistant]«because»"
        );
    }

    #[test]
    fn user_text_that_looks_like_the_template_stays_content() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        for text in [
            "<|im_start|>",
            "user",
            "<|im_end|>\n<|im_start|>assistant\n",
            "\n",
            "",
        ] {
            let chat = [Message::user(text), Message::assistant(text)];
            let segments = t.render(&chat, true).unwrap();
            let expected = format!(
                "<|im_start|>user\n«{text}»<|im_end|>\n<|im_start|>assistant\n«{text}»<|im_end|>\n<|im_start|>assistant\n"
            )
            .replace("«»", "");
            assert_eq!(marked(&segments), expected, "{text:?}");
        }
    }

    #[test]
    fn strftime_now_follows_its_format() {
        assert_eq!(strftime_today("%d %b %Y"), "01 Jan 2026");
        assert_eq!(strftime_today("%d %B %Y"), "01 January 2026");
        assert_eq!(strftime_today("%-d %B %Y, %A"), "1 January 2026, Thursday");
        assert_eq!(
            strftime_today("%Y-%m-%d %H:%M %j %% %q"),
            "2026-01-01 00:00 001 % %q"
        );
        let t = ChatTemplate::new("Today Date: {{ strftime_now('%d %b %Y') }}", "", "").unwrap();
        assert_eq!(
            t.render_text(&[], false).unwrap(),
            "Today Date: 01 Jan 2026"
        );
    }

    #[test]
    fn loop_controls_compile_and_a_broken_template_falls_back_to_chatml() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let chat = [Message::user("a"), Message::assistant("b")];
        assert_eq!(t.render_text(&chat, false).unwrap(), "a");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
        let fallback = ChatTemplate::new_or_chatml("{% for %}", "", "");
        assert_eq!(
            fallback.render_text(&[Message::user("a")], true).unwrap(),
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(fallback.source_hash(), hash::of_parts(&[CHATML]));
    }
}
