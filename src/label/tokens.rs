//! The answer letters of a judge frame as tokens of one local model's vocabulary: every
//! single-token spelling ("A", " A", "(A" …), whose probabilities a local judge sums.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// The token forms of each answer letter in one vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerTokens {
    pub a: Vec<LlamaToken>,
    pub b: Vec<LlamaToken>,
}

/// Spellings of an answer that a tokenizer may hold as one token.
fn forms(letter: char) -> Vec<String> {
    ["{}", " {}", "({}", " ({}", "{})", " {})", "{}.", " {}."]
        .iter()
        .map(|f| f.replace("{}", &letter.to_string()))
        .collect()
}

impl AnswerTokens {
    /// Every single-token form of "A" and of "B" in the model's vocabulary.
    pub fn of(model: &LlamaModel) -> Self {
        AnswerTokens {
            a: letter_tokens(model, 'A'),
            b: letter_tokens(model, 'B'),
        }
    }

    /// Both sets, A first: what a probe turn asks the engine for.
    pub fn sets(&self) -> Vec<Vec<LlamaToken>> {
        vec![self.a.clone(), self.b.clone()]
    }
}

/// Every single-token form of one answer letter in the model's vocabulary, sorted.
pub fn letter_tokens(model: &LlamaModel, letter: char) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let mut tokens: Vec<LlamaToken> = forms(letter)
        .iter()
        .filter_map(
            |f| match vocab.tokenize(f.as_bytes(), false, false).as_slice() {
                [one] => Some(*one),
                _ => None,
            },
        )
        .collect();
    tokens.sort_by_key(|t| t.0);
    tokens.dedup();
    tokens
}
