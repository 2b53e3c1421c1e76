//! Lexical reading: tokens, plural and typo matching, negation, the mentions of categories in a
//! sentence, and the [`Lexical`] method.

use super::wordnet::WordNet;
use super::{IntentMethod, Vocabulary};
use crate::config::TextMethod;

/// A sentence prepared once for all methods.
#[derive(Debug, Clone)]
pub struct Sentence {
    pub original: String,
    /// The sentence without its negated phrases, for model-based methods.
    pub affirmative: String,
    pub mentions: Vec<Mention>,
}

/// A category named in the sentence, at token positions `start..end`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mention {
    pub category: usize,
    pub start: usize,
    pub end: usize,
    pub negated: bool,
}

/// Lower-cases, splits on anything not a letter or digit, expands "n't" to "not", and keeps
/// commas and full stops as tokens because they end a negation's reach.
pub fn tokens(text: &str) -> Vec<String> {
    let lowered = text.to_lowercase().replace("n't", " not").replace('\'', "");
    let mut out = Vec::new();
    let mut word = String::new();
    for ch in lowered.chars() {
        if ch.is_alphanumeric() {
            word.push(ch);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if matches!(ch, ',' | '.' | ';' | '!' | '?') {
            out.push(",".to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Plural and singular forms compare equal: "dresses" = "dress", "jeans" = "jean".
pub(super) fn stem(word: &str) -> &str {
    if word.len() > 4 && (word.ends_with("sses") || word.ends_with("shes") || word.ends_with("ches") || word.ends_with("xes")) {
        &word[..word.len() - 2]
    } else if word.len() > 3 && word.ends_with('s') && !word.ends_with("ss") {
        &word[..word.len() - 1]
    } else {
        word
    }
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// neighbours ("kettel" is one edit from "kettle").
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The word with every doubled letter single: "pann" and "pan", "mirror" and "miror" meet.
fn undoubled(word: &str) -> String {
    let mut out = String::new();
    for c in word.chars() {
        if !out.ends_with(c) {
            out.push(c);
        }
    }
    out
}

/// `said` matches `known` exactly (up to plural), or as a typo of it. A word of the vocabulary
/// is never a typo of another ("shirts" is not "tshirt"). Without WordNet, one edit is forgiven
/// on long words only ("coat" and "boat" stay apart; five-letter words allow only a missing or
/// extra letter: "dres" is "dress", "skirt" is not "shirt"). With WordNet, a real English word is
/// never a typo ("boat", "skirt", "bog"), so more is forgiven of the rest: doubled letters at any
/// length, a swap of neighbours on short words ("bde"), one edit from four letters ("lmap",
/// "chiar", "tabel"), two from nine ("bookcsea").
fn words_match(said: &str, known: &str, vocabulary_words: &[String], wordnet: Option<&WordNet>) -> bool {
    if stem(said) == stem(known) {
        // "a plain short-sleeved basic" names no shorts.
        return !(PLURAL_ONLY.contains(&known) && said == stem(known));
    }
    if vocabulary_words.binary_search_by(|w| w.as_str().cmp(stem(said))).is_ok() {
        return false;
    }
    let pairs = [(said, known), (stem(said), stem(known))];
    match wordnet {
        Some(wordnet) if wordnet.is_word(said) || wordnet.is_word(stem(said)) => false,
        Some(_) => pairs.iter().any(|(said, known)| {
            let (said, known) = (undoubled(said), undoubled(known));
            let distance = edit_distance(&said, &known);
            said == known
                || match known.chars().count() {
                    0..=1 => false,
                    2..=3 => distance == 1 && said.chars().count() == known.chars().count() && said.chars().collect::<std::collections::BTreeSet<_>>() == known.chars().collect(),
                    4..=8 => distance <= 1,
                    _ => distance <= 2,
                }
        }),
        None => pairs.iter().any(|(said, known)| match known.chars().count() {
            0..=4 => false,
            5 => said.chars().count() != 5 && edit_distance(said, known) <= 1,
            _ => edit_distance(said, known) <= 1,
        }),
    }
}

/// Words used in the plural only, whose singular is another word: "short" is not "shorts",
/// "tight" not "tights", "glass" not "glasses".
const PLURAL_ONLY: [&str; 8] = ["shorts", "tights", "briefs", "pants", "jeans", "leggings", "glasses", "overalls"];

const NEGATIONS: [&str; 5] = ["not", "no", "never", "without", "except"];
/// "instead of a dress", "rather than a dress", "anything but a dress".
const NEGATING_PAIRS: [(&str, &str); 3] = [("instead", "of"), ("rather", "than"), ("anything", "but")];
/// Tokens a negation reaches across: "not a long dress", "not the red dress".
const NEGATION_REACH: usize = 4;

/// Finds every category phrase in `words`; a phrase inside a longer one ("shirt" inside
/// "t shirt") yields only the longer one.
pub fn mentions(words: &[String], vocabulary: &Vocabulary) -> Vec<Mention> {
    let wordnet = vocabulary.wordnet.as_deref();
    let mut found = Vec::new();
    for (index, phrase) in vocabulary.phrases.iter().filter(|(_, phrase)| phrase.len() <= words.len()) {
        for start in 0..=words.len() - phrase.len() {
            if phrase.iter().zip(&words[start..]).all(|(known, said)| words_match(said, known, &vocabulary.words, wordnet)) {
                found.push(Mention { category: *index, start, end: start + phrase.len(), negated: false });
            }
        }
    }
    let all = found.clone();
    found.retain(|m| !all.iter().any(|o| o != m && o.start <= m.start && o.end >= m.end && (o.end - o.start) > (m.end - m.start)));
    found.sort_by_key(|m| (m.start, m.category));
    found.dedup_by_key(|m| (m.start, m.end, m.category));
    for mention in &mut found {
        mention.negated = is_negated(words, mention.start);
    }
    found
}

fn is_negated(words: &[String], start: usize) -> bool {
    let window_start = start.saturating_sub(NEGATION_REACH);
    let window = &words[window_start..start];
    // A comma ends a negation's reach: "not a dress, a coat" negates only the dress.
    let window = match window.iter().rposition(|w| w == ",") {
        Some(comma) => &window[comma + 1..],
        None => window,
    };
    window.iter().any(|w| NEGATIONS.contains(&w.as_str())) || window.windows(2).any(|pair| NEGATING_PAIRS.contains(&(pair[0].as_str(), pair[1].as_str())))
}

impl Sentence {
    pub fn new(text: &str, vocabulary: &Vocabulary) -> Sentence {
        let words = tokens(text);
        let mentions = mentions(&words, vocabulary);
        // Remove each negated phrase with the negation words before it, so a model reads
        // "not a dress, a coat like this" as ", a coat like this".
        let mut keep = vec![true; words.len()];
        for mention in mentions.iter().filter(|m| m.negated) {
            let from = mention.start.saturating_sub(NEGATION_REACH);
            let cue = (from..mention.start).find(|&i| NEGATIONS.contains(&words[i].as_str()) || NEGATING_PAIRS.iter().any(|(a, _)| words[i] == *a));
            for flag in &mut keep[cue.unwrap_or(mention.start)..mention.end] {
                *flag = false;
            }
        }
        let affirmative = words.iter().zip(&keep).filter(|(_, k)| **k).map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(" ");
        Sentence { original: text.to_string(), affirmative, mentions }
    }

    /// Categories every mention of which is negated: "a backpack, not a handbag" rules out
    /// nothing, since the bag is also asked for.
    pub fn negated(&self) -> impl Iterator<Item = usize> + '_ {
        self.mentions.iter().filter(|m| m.negated && self.mentions.iter().all(|o| o.category != m.category || o.negated)).map(|m| m.category)
    }
}

/// Names and synonyms, with one-letter typos forgiven on long words.
pub struct Lexical {
    pub(super) categories: usize,
}

impl IntentMethod for Lexical {
    fn kind(&self) -> TextMethod {
        TextMethod::Lexical
    }

    /// One category named (and not negated) scores 1. Several share a score that leaves room
    /// for doubt (1/(n+1) each), so the lexical method names none of them and a model decides.
    fn scores(&mut self, sentence: &Sentence) -> anyhow::Result<Vec<f32>> {
        let mut named: Vec<usize> = sentence.mentions.iter().filter(|m| !m.negated).map(|m| m.category).collect();
        named.sort_unstable();
        named.dedup();
        let negated: Vec<usize> = sentence.negated().collect();
        named.retain(|c| !negated.contains(c));
        let mut scores = vec![0.0; self.categories];
        let share = if named.len() == 1 { 1.0 } else { 1.0 / (named.len() + 1) as f32 };
        for category in &named {
            scores[*category] = share;
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::text::wordnet;

    fn vocabulary() -> Vocabulary {
        Vocabulary::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/categories.toml")).unwrap()
    }

    fn lexical(text: &str) -> (Option<String>, Vec<String>) {
        let vocabulary = vocabulary();
        let sentence = Sentence::new(text, &vocabulary);
        let scores = Lexical { categories: vocabulary.category.len() }.scores(&sentence).unwrap();
        let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).filter(|(_, s)| **s >= 0.5).map(|(i, _)| vocabulary.category[i].name.clone());
        let negated = sentence.negated().map(|i| vocabulary.category[i].name.clone()).collect();
        (best, negated)
    }

    #[test]
    fn lexical_table() {
        let cases: [(&str, Option<&str>, &[&str]); 16] = [
            ("a dress like this", Some("dress"), &[]),
            ("got any DRESSES like this?", Some("dress"), &[]),
            ("sneekers like these please", Some("sneaker"), &[]),
            ("I want trowsers in this colour", Some("trouser"), &[]),
            ("a pulover like this", Some("pullover"), &[]),
            ("a t-shirt like this one", Some("t-shirt"), &[]),
            ("a tee shirt like this", Some("t-shirt"), &[]),
            ("a button-down shirt like this", Some("shirt"), &[]),
            ("not a dress, a coat like this", Some("coat"), &["dress"]),
            ("it isn't a sandal, I want trainers", Some("sneaker"), &["sandal"]),
            ("a parka instead of a sweater", Some("coat"), &["pullover"]),
            ("anything like this?", None, &[]),
            ("cheaper please", None, &[]),
            ("a boat like this", None, &[]),
            ("a backpack, not a handbag", Some("bag"), &[]),
            ("no shirts please, a t-shirt like this", Some("t-shirt"), &["shirt"]),
        ];
        for (text, expected, negated) in cases {
            let (got, got_negated) = lexical(text);
            assert_eq!(got.as_deref(), expected, "{text}");
            assert_eq!(got_negated, negated.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{text}");
        }
    }

    #[test]
    fn a_plural_only_word_is_not_its_singular() {
        // WordNet gives `trouser` the kind "shorts"; "short-sleeved" must not name it.
        for (said, known, matched) in [("short", "shorts", false), ("shorts", "shorts", true), ("tight", "tights", false), ("trousers", "trouser", true), ("trouser", "trousers", true)] {
            assert_eq!(words_match(said, known, &[], None), matched, "{said} / {known}");
        }
    }

    #[test]
    fn two_named_categories_decide_nothing_lexically() {
        assert_eq!(lexical("a dress or a coat like this").0, None);
    }

    #[test]
    fn negated_words_are_removed_before_models_read_the_sentence() {
        let sentence = Sentence::new("not a dress, a coat like this", &vocabulary());
        assert_eq!(sentence.affirmative, ", a coat like this");
    }

    #[test]
    fn typos_are_forgiven_by_length_and_never_for_real_words() {
        for (a, b, distance) in
            [("sneekers", "sneakers", 1), ("trowsers", "trousers", 1), ("sandal", "sandla", 1), ("coat", "boat", 1), ("dress", "dresser", 2), ("kettel", "kettle", 1), ("bookcsea", "bookcase", 2)]
        {
            assert_eq!(edit_distance(a, b), distance, "{a} {b}");
        }
        let known = vec!["shirt".to_string(), "tshirt".to_string()];
        let wordnet = wordnet::WordNet::load(Path::new("/usr/share/wordnet")).expect("`make setup` installs Debian's wordnet-base");
        // (said, known, without WordNet, with WordNet)
        let table = [
            ("boat", "coat", false, false),
            ("dres", "dress", true, true),
            ("skirt", "shirt", false, false),
            ("shirts", "tshirt", false, false),
            ("bde", "bed", false, true),
            ("bog", "bag", false, false),
            ("ruug", "rug", false, true),
            ("pann", "pan", false, true),
            ("lmap", "lamp", false, true),
            ("chiar", "chair", false, true),
            ("kettel", "kettle", true, true),
            ("wardrobbe", "wardrobe", true, true),
            ("tabel", "table", false, true),
            ("bookcsea", "bookcase", false, false),
            ("beds", "bed", true, true),
        ];
        for (said, known_word, plain, widened) in table {
            assert_eq!(words_match(said, known_word, &known, None), plain, "{said} ~ {known_word} without WordNet");
            assert_eq!(words_match(said, known_word, &known, Some(&wordnet)), widened, "{said} ~ {known_word} with WordNet");
        }
    }
}
