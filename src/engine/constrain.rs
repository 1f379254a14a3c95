//! Phrases the model cannot write: each step, the tokens that would complete a banned phrase
//! get no probability before a token is picked, so the phrase is never emitted (rather than
//! written, then cut out of the text a client already saw).
//!
//! A phrase occurrence ends in some token `t`. Either it lies inside `t` (then `t`'s text
//! contains the phrase and `t` is banned at every step), or it began earlier: the text so far
//! ends with the phrase's first `k` bytes and `t`'s text starts with the rest. Banning, at each
//! step and for every `k` the text's tail matches, every token that starts with the rest covers
//! both cases, so no sequence of tokens can spell the phrase. Tokens are found by binary search
//! in the vocabulary's pieces sorted once; matching is ASCII case-insensitive.

use std::collections::BTreeSet;

/// The banned phrases over one model's vocabulary.
#[derive(Debug, Clone)]
pub struct PhraseBan {
    phrases: Vec<Vec<u8>>,
    /// Every token's piece, lower-cased, with its id, sorted by piece.
    sorted: Vec<(Vec<u8>, i32)>,
    /// Tokens whose piece holds a whole phrase: banned at every step.
    always: Vec<i32>,
}

impl PhraseBan {
    /// `pieces[id]` is token `id`'s text as the model writes it. Empty phrases are ignored.
    pub fn new(pieces: &[Vec<u8>], phrases: &[String]) -> PhraseBan {
        let phrases: Vec<Vec<u8>> = phrases
            .iter()
            .map(|p| p.trim().to_ascii_lowercase().into_bytes())
            .filter(|p| !p.is_empty())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut sorted: Vec<(Vec<u8>, i32)> = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(id, p)| (p.to_ascii_lowercase(), id as i32))
            .collect();
        sorted.sort();
        let always = sorted
            .iter()
            .filter(|(piece, _)| phrases.iter().any(|p| contains(piece, p)))
            .map(|&(_, id)| id)
            .collect();
        PhraseBan {
            phrases,
            sorted,
            always,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// The tokens that may not come next after `text` (what the turn has written so far).
    pub fn banned_after(&self, text: &[u8]) -> Vec<i32> {
        let mut out = self.always.clone();
        for phrase in &self.phrases {
            for k in 1..phrase.len() {
                if text.len() >= k && text[text.len() - k..].eq_ignore_ascii_case(&phrase[..k]) {
                    out.extend(self.starting_with(&phrase[k..]));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Tokens whose (lower-cased) piece starts with `prefix`.
    fn starting_with<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = i32> + 'a {
        let start = self
            .sorted
            .partition_point(|(piece, _)| piece.as_slice() < prefix);
        self.sorted[start..]
            .iter()
            .take_while(move |(piece, _)| piece.starts_with(prefix))
            .map(|&(_, id)| id)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::PhraseBan;

    fn vocab() -> Vec<Vec<u8>> {
        [
            "", " I", " will", " kill", " ki", "ll", "l", " the", " process", "Kil", "k", "i", " ",
            "x",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    /// Greedy decoding over a toy vocabulary where the model "wants" the pieces of `want`:
    /// at each step it takes the longest allowed piece that continues `want`.
    fn spell(ban: &PhraseBan, pieces: &[Vec<u8>], want: &str) -> String {
        let mut text: Vec<u8> = Vec::new();
        let want = want.as_bytes();
        while text.len() < want.len() {
            let banned = ban.banned_after(&text);
            let rest = &want[text.len()..];
            let best = (0..pieces.len())
                .filter(|&i| !banned.contains(&(i as i32)))
                .filter(|&i| !pieces[i].is_empty() && rest.starts_with(&pieces[i]))
                .max_by_key(|&i| pieces[i].len());
            match best {
                Some(i) => text.extend(&pieces[i]),
                None => break,
            }
        }
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_banned_phrase_cannot_be_spelled_by_any_split() {
        let pieces = vocab();
        let ban = PhraseBan::new(&pieces, &["KILL".to_string()]);
        // The whole-word token holds the phrase: banned from the start.
        assert!(ban.banned_after(b"").contains(&3));
        // " ki" then "ll": after " ki", "ll" is banned ("l" is not: "kil" is no phrase yet).
        let after_ki = ban.banned_after(b" I will ki");
        assert!(after_ki.contains(&5) && !after_ki.contains(&6));
        // After "kil", the single "l" completes it.
        assert!(ban.banned_after(b" kil").contains(&6));
        // Case-insensitive: "Kil" then "l".
        assert!(ban.banned_after(b"Kil").contains(&6));
        // Whatever split the model tries, the phrase never appears.
        let written = spell(&ban, &pieces, " I will kill the process");
        assert!(!written.to_lowercase().contains("kill"), "{written}");
        // Other text is untouched.
        assert_eq!(
            spell(&ban, &pieces, " I will the process"),
            " I will the process"
        );
    }

    #[test]
    fn no_phrases_ban_nothing() {
        let ban = PhraseBan::new(&vocab(), &["  ".to_string()]);
        assert!(ban.is_empty());
        assert!(ban.banned_after(b"anything").is_empty());
    }
}
