//! Quality filters for generated preference data. Each one is counted where it acts — never a
//! silent drop: exact and near-duplicate prompts are dropped when a prompt file is read (stored
//! with the prompt they matched); revision preambles are stripped at generation and kept in the
//! step's row; truncated answers, near-identical pairs and low-margin labels are dropped at
//! export and reported there and by `tenets stats`.

/// Words that make an opening line a preamble ("Here is a revised response:") rather than
/// content: one word naming the act and one naming the thing.
const ACT_WORDS: [&str; 6] = [
    "revised",
    "rewritten",
    "improved",
    "updated",
    "revision",
    "edited",
];
const THING_WORDS: [&str; 5] = ["response", "answer", "version", "revision", "reply"];
/// A preamble is a short line: longer openings are content even when they use these words.
const PREAMBLE_MAX_WORDS: usize = 9;

/// Splits a leading "Here is a revised response:" (or the like) from a revision. Returns the text
/// without it and the preamble removed, if there was one.
pub fn strip_preamble(text: &str) -> (String, Option<String>) {
    let trimmed = text.trim_start();
    let line_end = trimmed.find('\n').unwrap_or(trimmed.len());
    let first_line = &trimmed[..line_end];
    // The preamble ends at a colon on the first line, or is the whole first line.
    let (head, rest) = match first_line.find(':') {
        Some(colon) => (&trimmed[..colon], &trimmed[colon + 1..]),
        None if line_end < trimmed.len() => (first_line, &trimmed[line_end..]),
        None => return (text.to_string(), None),
    };
    let words: Vec<String> = head
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let has = |set: &[&str]| words.iter().any(|w| set.contains(&w.as_str()));
    let is_preamble = !words.is_empty()
        && words.len() <= PREAMBLE_MAX_WORDS
        && has(&ACT_WORDS)
        && has(&THING_WORDS)
        && !rest.trim().is_empty();
    if !is_preamble {
        return (text.to_string(), None);
    }
    let preamble = trimmed[..trimmed.len() - rest.len()].trim().to_string();
    (strip_quotes(rest.trim()).to_string(), Some(preamble))
}

/// Removes one pair of quotes wrapped around the whole text (models often quote a revision).
fn strip_quotes(text: &str) -> &str {
    for (open, close) in [('"', '"'), ('“', '”')] {
        if let Some(inner) = text.strip_prefix(open).and_then(|t| t.strip_suffix(close)) {
            if !inner.contains(open) && !inner.contains(close) {
                return inner.trim();
            }
        }
    }
    text
}

/// 1 − (character edit distance / length of the longer text): 1 for identical texts, 0 for
/// texts with nothing in common.
pub fn edit_similarity(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    // Levenshtein distance, one row at a time.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            row[j + 1] = substitute.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        std::mem::swap(&mut prev, &mut row);
    }
    1.0 - prev[b.len()] as f64 / longest as f64
}

/// Openings that mark an answer as a refusal. Matched against the first sentence only, so an
/// answer that helps and later says "I can't stress this enough" is not one.
const REFUSAL_OPENINGS: [&str; 16] = [
    "i can't",
    "i cannot",
    "i can not",
    "i won't",
    "i will not",
    "i'm not able to",
    "i am not able to",
    "i'm unable to",
    "i am unable to",
    "i'm sorry, but",
    "i am sorry, but",
    "sorry, but i",
    "sorry, i can't",
    "i must decline",
    "i'm not going to",
    "as an ai",
];

/// Whether an answer opens by refusing (a fast string check — the judge-based check is
/// `tenets eval`'s): the first sentence holds one of the usual refusal openings.
pub fn is_refusal(answer: &str) -> bool {
    let text = answer.trim_start().to_lowercase().replace('’', "'");
    let first_sentence = text
        .split_inclusive(['.', '!', '?', '\n'])
        .next()
        .unwrap_or("");
    REFUSAL_OPENINGS.iter().any(|o| first_sentence.contains(o))
}

/// Whether `edit_similarity(a, b) ≥ threshold`, without the full quadratic table: only edit
/// distances up to `k = ⌊(1 − threshold)·longest⌋` matter, so only the diagonal band of width
/// `2k + 1` is computed (Ukkonen), and texts whose lengths differ by more than `k` are rejected
/// at once. Long answers in big datasets stay cheap.
pub fn similar_at_least(a: &str, b: &str, threshold: f64) -> bool {
    if threshold <= 0.0 {
        return true;
    }
    if threshold > 1.0 {
        return false;
    }
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let longest = a.len().max(b.len());
    if longest == 0 {
        return true;
    }
    // The largest distance that still passes, judged exactly as `edit_similarity` would be
    // (the float estimate can be off by one either way).
    let passes = |d: usize| 1.0 - d as f64 / longest as f64 >= threshold;
    let mut k = ((1.0 - threshold) * longest as f64).floor().max(0.0) as usize;
    while k > 0 && !passes(k) {
        k -= 1;
    }
    while k < longest && passes(k + 1) {
        k += 1;
    }
    if !passes(k) {
        return false;
    }
    if a.len().abs_diff(b.len()) > k {
        return false;
    }
    // dist[j] for the current row, only for |i − j| ≤ k; cells outside count as k + 1.
    let far = k + 1;
    let mut prev: Vec<usize> = (0..=b.len())
        .map(|j| if j <= k { j } else { far })
        .collect();
    let mut row = vec![far; b.len() + 1];
    for i in 1..=a.len() {
        let (lo, hi) = (i.saturating_sub(k), (i + k).min(b.len()));
        row.iter_mut().for_each(|v| *v = far);
        if lo == 0 {
            row[0] = i.min(far);
        }
        let mut best = row[0];
        for j in lo.max(1)..=hi {
            let substitute = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let v = substitute.min(prev[j] + 1).min(row[j - 1] + 1).min(far);
            row[j] = v;
            best = best.min(v);
        }
        if best > k {
            return false;
        }
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()] <= k
}

/// The answers a `tenets classify --on answer` verdict file flags, by the key export finds an
/// answer by (`answer_sha256`). A line that is not such a verdict is an error naming it: a
/// prompt-only file would silently drop nothing.
pub fn flagged_answers(
    path: &std::path::Path,
) -> Result<std::collections::HashSet<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--drop-flagged {}: {e}", path.display()))?;
    let mut flagged = std::collections::HashSet::new();
    let mut answers = 0;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |why: &str| format!("--drop-flagged {}:{}: {why}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&format!("not JSON ({e})")))?;
        if v["on"] != "answer" {
            continue;
        }
        answers += 1;
        let key = v["answer_sha256"]
            .as_str()
            .ok_or_else(|| bad("an answer verdict without `answer_sha256`"))?;
        let is_flagged = v["flagged"]
            .as_bool()
            .ok_or_else(|| bad("an answer verdict without `flagged`"))?;
        if is_flagged {
            flagged.insert(key.to_string());
        }
    }
    if answers == 0 {
        return Err(format!(
            "--drop-flagged {}: no answer verdicts (write them with `tenets classify --db D \
             --on answer`)",
            path.display()
        ));
    }
    Ok(flagged)
}

/// Which pairs `tenets export` leaves out: its filter flags.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct PairFilters {
    /// Keep pairs where an answer hit the token or context limit (dropped by default).
    #[arg(long)]
    pub include_truncated: bool,
    /// Drop pairs whose two answers are at least this similar (1 − normalised edit distance).
    #[arg(long, default_value_t = 0.95)]
    pub max_similarity: f64,
    /// Drop labeled pairs whose weight (2·p_chosen − 1) is below this (kept, weighted, if unset).
    #[arg(long)]
    pub min_margin: Option<f64>,
    /// Benign pairs per harmful pair (by prompt `kind`): the larger side is subsampled,
    /// deterministically, to this ratio.
    #[arg(long)]
    pub helpful_ratio: Option<f64>,
    /// Which pairs of a prompt's sampled answers (generate --samples) to export, once ranked by
    /// their labels: the best against the worst, or every pair, by its label.
    #[arg(long, value_enum, default_value_t = SampledPairs::BestWorst)]
    pub sampled_pairs: SampledPairs,
    /// What ranks a prompt's sampled answers: the judge's labels, or the rewards of the reward
    /// model that last scored the database with `tenets reward score` (best-of-N).
    #[arg(long, value_enum, default_value_t = RankBy::Judge)]
    pub rank_by: RankBy,
    /// Add the constitution's safety pairs (DPO; prompts tagged harmful or benign, hard
    /// labels): a harmful prompt's principled refusal over the model's compliance, and a benign
    /// prompt's helpful answer over a needless refusal. `--safety-pairs only` exports nothing else.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "add", value_name = "only")]
    pub safety_pairs: Option<SafetyPairs>,
    /// Orient pairs by the judge's labels even when its calibration does not clear chance (or
    /// it has none).
    #[arg(long, conflicts_with = "hard_labels")]
    pub trust_judge: bool,
    /// Ignore the judge: every revision pair is the revision over the first answer with a hard
    /// label (SL-CAI's reading of a critique-revision pair); sampled pairs, which need a
    /// judge's ranking, are left out.
    #[arg(long)]
    pub hard_labels: bool,
    /// Drop pairs whose chosen answer a safety classifier flagged: the verdicts `tenets
    /// classify --db D --on answer -o V.jsonl` wrote for this database.
    #[arg(long, value_name = "V.jsonl")]
    pub drop_flagged: Option<std::path::PathBuf>,
}

/// Whether a DPO export holds the constitution's safety pairs beside its other pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SafetyPairs {
    /// Beside the revision and sampled pairs.
    Add,
    /// Instead of them.
    Only,
}

/// What ranks a prompt's sampled answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RankBy {
    /// The judge's pairwise labels (`tenets label`).
    #[default]
    Judge,
    /// A reward model's score of each answer (from `tenets reward score`).
    Reward,
}

/// Which pairs of a prompt's ranked samples `tenets export` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SampledPairs {
    /// The best-ranked sample against the worst-ranked one (RL-CAI's choice).
    #[default]
    BestWorst,
    /// Every judged pair, oriented by its own label (the margin filter drops the even ones).
    All,
}

impl Default for PairFilters {
    fn default() -> Self {
        PairFilters {
            include_truncated: false,
            max_similarity: 0.95,
            min_margin: None,
            helpful_ratio: None,
            sampled_pairs: SampledPairs::BestWorst,
            rank_by: RankBy::Judge,
            safety_pairs: None,
            trust_judge: false,
            hard_labels: false,
            drop_flagged: None,
        }
    }
}

impl PairFilters {
    /// The settings make sense (messages name the flag).
    pub fn check_settings(&self) -> Result<(), String> {
        if self
            .helpful_ratio
            .is_some_and(|r| !(r.is_finite() && r >= 0.0))
        {
            return Err("--helpful-ratio must be 0 or more".into());
        }
        // Above 1, no pair is similar enough to drop: every one is kept.
        if !(self.max_similarity.is_finite() && self.max_similarity >= 0.0) {
            return Err("--max-similarity must be 0 or more (above 1 keeps every pair)".into());
        }
        if self.min_margin.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
            return Err("--min-margin must be between 0 and 1".into());
        }
        // Read now, so a wrong file stops the command before any database is opened.
        if let Some(path) = &self.drop_flagged {
            flagged_answers(path)?;
        }
        Ok(())
    }
}

/// Why a pair was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Dropped {
    Truncated,
    NearIdentical,
    LowMargin,
    /// The chosen answer refuses a prompt marked benign: that would teach over-refusal.
    RefusesBenign,
    /// Left out to bring benign and harmful pairs to `--helpful-ratio`.
    HelpfulRatio,
    /// A pair of sampled answers whose prompt's samples are not all judged yet, so they
    /// cannot be ranked (run `tenets label`).
    Unranked,
    /// A pair of sampled answers other than best vs worst (`--sampled-pairs best-worst`).
    NotBestWorst,
    /// The best and worst sample by ranking, whose own judgment prefers the worst (a cycle).
    RankingDisagrees,
    /// The latest judge put no probability on either answer letter for this pair (or, for
    /// sampled answers, for one of its prompt's pairs): it has no label to orient it by.
    NoAnswer,
    /// A pair of sampled answers under `--hard-labels`: without a judge nothing ranks them.
    HardLabels,
    /// A pair of sampled answers whose prompt's samples the reward model has not all scored
    /// (`--rank-by reward`; run `tenets reward score --db`).
    Unscored,
    /// Under `--hard-labels`, a harmful prompt's revision that does not refuse: with no judge,
    /// a revision is taken as better only where it does what the constitution asks.
    HarmfulNotRefused,
    /// The chosen answer was flagged unsafe by the classifier (`--drop-flagged`).
    FlaggedUnsafe,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Truncated => "truncated (hit max tokens or context)",
            Dropped::NearIdentical => "chosen ≈ rejected",
            Dropped::LowMargin => "label margin below --min-margin",
            Dropped::RefusesBenign => "chosen answer refuses a benign prompt",
            Dropped::HelpfulRatio => "beyond --helpful-ratio (benign : harmful)",
            Dropped::Unranked => "sampled answers not all judged yet (run tenets label)",
            Dropped::NotBestWorst => "sampled pair other than best vs worst",
            Dropped::RankingDisagrees => "best vs worst sample judged the other way",
            Dropped::NoAnswer => "the judge gave no answer (no probability on A or B)",
            Dropped::HardLabels => "sampled pair: --hard-labels leaves no judge to rank it",
            Dropped::Unscored => {
                "sampled answers not all scored by the reward model (run tenets reward score --db)"
            }
            Dropped::HarmfulNotRefused => {
                "hard labels: the revision of a harmful prompt does not refuse"
            }
            Dropped::FlaggedUnsafe => "chosen answer flagged unsafe (--drop-flagged)",
        }
    }
}

impl PairFilters {
    /// The first reason to drop a pair (`[chosen, rejected]`), if any; `benign` is whether the
    /// prompt is marked benign.
    pub fn check(
        &self,
        finishes: [&str; 2],
        answers: [&str; 2],
        weight: Option<f64>,
        benign: bool,
    ) -> Option<Dropped> {
        if !self.include_truncated && finishes.iter().any(|f| *f != "stop") {
            return Some(Dropped::Truncated);
        }
        if benign && is_refusal(answers[0]) {
            return Some(Dropped::RefusesBenign);
        }
        if similar_at_least(answers[0], answers[1], self.max_similarity) {
            return Some(Dropped::NearIdentical);
        }
        match (self.min_margin, weight) {
            (Some(min), Some(w)) if w < min => Some(Dropped::LowMargin),
            _ => None,
        }
    }
}

/// Which of `kinds` (each "benign", "harmful" or anything else) to keep so that benign : harmful
/// is `ratio`: the larger side is cut, keeping the items whose `keys` hash lowest (the same
/// choice on every run); other kinds are all kept.
pub fn balance(kinds: &[Option<&str>], keys: &[&str], ratio: f64) -> Vec<bool> {
    let side = |kind: &str| -> Vec<usize> {
        let mut ids: Vec<usize> = (0..kinds.len())
            .filter(|&i| kinds[i] == Some(kind))
            .collect();
        ids.sort_by_key(|&i| fnv1a(keys[i].as_bytes()));
        ids
    };
    let (benign, harmful) = (side("benign"), side("harmful"));
    let want_benign = (harmful.len() as f64 * ratio).round() as usize;
    let (cut, keep_n) = if benign.len() > want_benign {
        (&benign, want_benign)
    } else if ratio > 0.0 {
        let want_harmful = (benign.len() as f64 / ratio).round() as usize;
        (&harmful, want_harmful.min(harmful.len()))
    } else {
        (&benign, 0)
    };
    let mut keep = vec![true; kinds.len()];
    for &i in &cut[keep_n..] {
        keep[i] = false;
    }
    keep
}

/// MinHash signature length and its LSH banding (bands × rows = hashes).
const MINHASH: usize = 128;
const BANDS: usize = 32;
const ROWS: usize = MINHASH / BANDS;

/// Estimated Jaccard similarity (of word 3-gram sets) at which two prompts are near-duplicates.
pub const NEAR_DUPLICATE: f64 = 0.9;

/// FNV-1a, 64-bit: a fixed hash, so signatures are the same on every machine and version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: derives the `i`-th hash of a shingle from its base hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// MinHash signature of a text's word 3-grams (lower-cased, punctuation ignored).
fn signature(text: &str) -> [u64; MINHASH] {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let shingles: Vec<u64> = if words.len() < 3 {
        vec![fnv1a(words.join(" ").as_bytes())]
    } else {
        words
            .windows(3)
            .map(|w| fnv1a(w.join(" ").as_bytes()))
            .collect()
    };
    let mut sig = [u64::MAX; MINHASH];
    for s in shingles {
        for (i, m) in sig.iter_mut().enumerate() {
            *m = (*m).min(mix(s ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        }
    }
    sig
}

/// Near-duplicates among `texts` (in order): for each text that is one, `(its index, the index
/// of the earlier text it matches)`. Candidates come from LSH buckets; a pair counts when the
/// signatures' estimated Jaccard similarity is at least `threshold`.
pub fn near_duplicates(texts: &[&str], threshold: f64) -> Vec<(usize, usize)> {
    let signatures: Vec<[u64; MINHASH]> = texts.iter().map(|t| signature(t)).collect();
    let mut buckets: std::collections::HashMap<(usize, u64), Vec<usize>> =
        std::collections::HashMap::new();
    let mut found = Vec::new();
    for (i, sig) in signatures.iter().enumerate() {
        let mut matched = None;
        for band in 0..BANDS {
            let key = (band, fnv1a(&bytes_of(&sig[band * ROWS..(band + 1) * ROWS])));
            let bucket = buckets.entry(key).or_default();
            if matched.is_none() {
                matched = bucket.iter().copied().find(|&j| {
                    let same = sig
                        .iter()
                        .zip(&signatures[j])
                        .filter(|(a, b)| a == b)
                        .count();
                    same as f64 / MINHASH as f64 >= threshold
                });
            }
            bucket.push(i);
        }
        if let Some(j) = matched {
            found.push((i, j));
        }
    }
    found
}

fn bytes_of(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preambles_are_stripped_and_content_is_kept() {
        let (text, pre) = strip_preamble("Here is a revised response:\n\nBread needs flour.");
        assert_eq!(
            (text.as_str(), pre.as_deref()),
            ("Bread needs flour.", Some("Here is a revised response:"))
        );
        let (text, pre) = strip_preamble("Sure! Here's the rewritten answer: \"Tea is a drink.\"");
        assert_eq!((text.as_str(), pre.is_some()), ("Tea is a drink.", true));
        let (text, pre) = strip_preamble("Revised response\nOwls hunt at night.");
        assert_eq!(
            (text.as_str(), pre.is_some()),
            ("Owls hunt at night.", true)
        );
        // Content that merely mentions the words, or has nothing after the colon, stays.
        for keep in [
            "Note: the answer depends on your version of Python.",
            "The revised tax code changed how the answer is computed: see section 4 of the law.",
            "Revised response:",
            "Bread needs flour, water and salt.",
        ] {
            assert_eq!(strip_preamble(keep), (keep.to_string(), None), "{keep}");
        }
    }

    #[test]
    fn near_duplicate_prompts_are_found_and_distinct_ones_kept() {
        let texts = [
            "How do I kill a Python process that is stuck in an infinite loop on Linux?",
            "Write a poem about the sea at night.",
            "how do I kill a python process that is stuck in an infinite loop on linux",
            "How do I kill a Python process that is stuck in an endless loop on Windows?",
            "Write a poem about the sea at night!",
        ];
        let found = near_duplicates(&texts, NEAR_DUPLICATE);
        // Case and punctuation do not make a prompt new; other words do.
        assert_eq!(found, vec![(2, 0), (4, 1)]);
        // Prompts that differ by one word in seven are not near-duplicates at 0.9.
        let numbered: Vec<String> = (0..24)
            .map(|i| format!("Tell me one fact about the moon (#{i})."))
            .collect();
        let refs: Vec<&str> = numbered.iter().map(String::as_str).collect();
        assert!(near_duplicates(&refs, NEAR_DUPLICATE).is_empty());
    }

    #[test]
    fn balancing_keeps_the_asked_ratio_and_every_other_kind() {
        let kinds: Vec<Option<&str>> = [
            vec![Some("benign"); 6],
            vec![Some("harmful"); 2],
            vec![None, Some("other")],
        ]
        .concat();
        let keys: Vec<String> = (0..kinds.len()).map(|i| format!("p{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let count = |keep: &[bool], kind: Option<&str>| {
            keep.iter()
                .zip(&kinds)
                .filter(|(k, x)| **k && **x == kind)
                .count()
        };
        let keep = balance(&kinds, &keys, 1.0);
        assert_eq!(
            (count(&keep, Some("benign")), count(&keep, Some("harmful"))),
            (2, 2)
        );
        assert_eq!(count(&keep, None) + count(&keep, Some("other")), 2);
        assert_eq!(
            keep,
            balance(&kinds, &keys, 1.0),
            "the same choice every time"
        );
        let keep = balance(&kinds, &keys, 6.0);
        assert_eq!(
            (count(&keep, Some("benign")), count(&keep, Some("harmful"))),
            (6, 1)
        );
        let keep = balance(&kinds, &keys, 0.0);
        assert_eq!(
            (count(&keep, Some("benign")), count(&keep, Some("harmful"))),
            (0, 2)
        );
    }

    #[test]
    fn refusals_are_recognised_by_their_opening() {
        for refusal in [
            "I'm sorry, but I can't help with that.",
            "I cannot assist with breaking into accounts.",
            "  As an AI, I must decline.",
            "I’m unable to provide that.",
        ] {
            assert!(is_refusal(refusal), "{refusal}");
        }
        for help in [
            "To kill a Python process, find its PID with `ps` and run `kill PID`. I can't stress enough: save your work first.",
            "Sure! Here are three ideas.",
            "Bread needs flour, water, salt and time.",
        ] {
            assert!(!is_refusal(help), "{help}");
        }
    }

    #[test]
    fn similarity_is_one_minus_normalised_edit_distance() {
        assert_eq!(edit_similarity("abc", "abc"), 1.0);
        assert_eq!(edit_similarity("", ""), 1.0);
        assert_eq!(edit_similarity("abc", ""), 0.0);
        assert!((edit_similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-12);
    }

    #[test]
    fn the_banded_check_agrees_with_the_full_distance() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let letters = ['a', 'b', 'c', ' '];
        for _ in 0..400 {
            let a: String = (0..rng.gen_range(0..40))
                .map(|_| letters[rng.gen_range(0..4)])
                .collect();
            // Mostly near copies of `a`, some unrelated.
            let mut b: Vec<char> = a.chars().collect();
            for _ in 0..rng.gen_range(0..6) {
                match rng.gen_range(0..3) {
                    0 if !b.is_empty() => {
                        let at = rng.gen_range(0..b.len());
                        b.remove(at);
                    }
                    1 => b.insert(rng.gen_range(0..=b.len()), letters[rng.gen_range(0..4)]),
                    _ if !b.is_empty() => {
                        let at = rng.gen_range(0..b.len());
                        b[at] = letters[rng.gen_range(0..4)];
                    }
                    _ => {}
                }
            }
            let b: String = b.into_iter().collect();
            for threshold in [0.0, 0.5, 0.8, 0.9, 0.95, 1.0, 1.01] {
                assert_eq!(
                    similar_at_least(&a, &b, threshold),
                    edit_similarity(&a, &b) >= threshold,
                    "{a:?} {b:?} at {threshold}"
                );
            }
        }
    }

    #[test]
    fn each_filter_drops_its_case_and_keeps_the_rest() {
        let f = PairFilters {
            min_margin: Some(0.2),
            ..PairFilters::default()
        };
        let (a, b) = ("A careful, helpful answer.", "I can't help with that.");
        let ok = ["stop", "stop"];
        assert_eq!(f.check(ok, [a, b], Some(0.5), true), None);
        assert_eq!(
            f.check(["stop", "length"], [a, b], None, false),
            Some(Dropped::Truncated)
        );
        let almost = "A careful, helpful answer!";
        assert_eq!(
            f.check(ok, [a, almost], None, false),
            Some(Dropped::NearIdentical)
        );
        assert_eq!(
            f.check(ok, [a, b], Some(0.1), false),
            Some(Dropped::LowMargin)
        );
        assert_eq!(
            f.check(ok, [a, b], None, false),
            None,
            "unlabeled: no margin"
        );
        // A refusal may be chosen for a harmful prompt, never for a benign one.
        assert_eq!(f.check(ok, [b, a], None, false), None);
        assert_eq!(
            f.check(ok, [b, a], None, true),
            Some(Dropped::RefusesBenign)
        );
        let keep_truncated = PairFilters {
            include_truncated: true,
            ..PairFilters::default()
        };
        assert_eq!(
            keep_truncated.check(["context", "stop"], [a, b], None, false),
            None
        );
    }
}
