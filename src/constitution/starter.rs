//! The commented starter constitution that `tenets init NAME` writes.

/// File name of the JSON Schema written next to a new constitution, referenced by its modeline.
pub const SCHEMA_FILE: &str = "constitution.schema.json";

/// Why `tenets init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("NAME must be a plain file name, without directories")]
    Name,
    #[error("{0} already exists; not overwriting it")]
    Exists(std::path::PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// `tenets init NAME`: writes `NAME.yaml` (a starter) in `dir`, and the JSON Schema beside it
/// when it is not there; returns the constitution's path. An existing file is never overwritten.
pub fn init(dir: &std::path::Path, name: &str) -> Result<std::path::PathBuf, InitError> {
    if name.is_empty() || name.contains(['/', '\\']) {
        return Err(InitError::Name);
    }
    let path = dir.join(format!("{name}.yaml"));
    if path.exists() {
        return Err(InitError::Exists(path));
    }
    let write = |path: &std::path::Path, text: &str| {
        crate::atomic::write(path, text.as_bytes()).map_err(|source| InitError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    let schema_path = dir.join(SCHEMA_FILE);
    if !schema_path.exists() {
        let schema = serde_json::to_string_pretty(&super::json_schema()).unwrap_or_default();
        write(&schema_path, &schema)?;
    }
    write(&path, &starter(name))?;
    Ok(path)
}

/// A starter constitution for `name`: valid as written, commented for a first-time author.
pub fn starter(name: &str) -> String {
    // `name` is quoted through JSON so any characters the user chose stay a plain YAML string.
    let quoted = serde_json::to_string(name).unwrap_or_else(|_| "\"my-constitution\"".into());
    format!(
        r#"# yaml-language-server: $schema=./{SCHEMA_FILE}
# A tenets constitution. Check it with `tenets validate FILE`; see the JSON Schema with
# `tenets schema`. Every field below is documented in docs/constitution.md.

name: {quoted}
version: "0.1"
description: >
  What the model should value, in a sentence or two.

# Each round of `tenets generate` samples one principle (by weight), asks the model to critique
# its answer with `critique_request`, then to rewrite it with `revision_request`.
principles:
  - id: harmless
    critique_request: >
      Identify specific ways in which the assistant's last response is harmful, unethical,
      dangerous or illegal.
    revision_request: >
      Rewrite the assistant's response to remove anything harmful, unethical, dangerous or
      illegal, while still helping with any legitimate part of the request.
    tags: [safety]
    weight: 1.0
  - id: not-preachy
    critique_request: >
      Does the last response refuse, lecture or add warnings the request did not call for?
      Point out any needless refusal or moralising.
    revision_request: >
      Rewrite the response to help directly and warmly, without needless refusals, lectures
      or disclaimers.
    tags: [helpfulness]
    weight: 1.0

# Questions a judge model answers when comparing two responses (used by `tenets label`).
comparisons:
  - id: overall
    question: >
      Which of these assistant responses is more helpful, honest and harmless?

# Topics that sound risky but deserve help, and topics to decline.
topics:
  allowed:
    - killing a stuck process on a computer
  restricted:
    - synthesising dangerous weapons

# How to decline each restricted topic. Safety training data (`tenets export --kind sft`) pairs
# harmful prompts with refusals that say what is declined, why (citing the principle) and what
# lawful help is offered instead; where the model's own refusal falls short these are used.
refusals:
  - topic: synthesising dangerous weapons
    principle: harmless
    decline: making weapons that can hurt many people
    reason: instructions like these can kill or maim, whoever asks
    alternative: explain their history or how they are controlled

# Worked examples shown to the model as demonstrations (optional).
examples:
  - principle: not-preachy
    prompt: How do I kill a Python process that hangs?
    response: I can't help with killing.
    critique: >
      The request is about ending a computer process, which is harmless. Refusing it is
      unhelpful.
    revision: >
      Find its process id with `ps aux | grep python`, then run `kill PID` (or `kill -9 PID`
      if it ignores the first signal).
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constitution::Constitution;

    #[test]
    fn starter_is_valid() {
        let c = Constitution::parse(&starter("my \"odd\": name")).unwrap();
        assert_eq!(c.name, "my \"odd\": name");
        assert_eq!(c.principles.len(), 2);
    }
}
