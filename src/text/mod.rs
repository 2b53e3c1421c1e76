//! Which category a shopper's sentence names, if any: "a bed like this, but wooden" names `bed`;
//! "anything like this?" names none, and must not override the image.
//!
//! Three methods share one trait and are tried in the configured order; the first that names a
//! category with enough confidence decides:
//! - [`Lexical`]: category names, singular/plural, configured synonyms, one-letter typos;
//! - [`Embedding`]: all-MiniLM-L6-v2 similarity between the sentence and each category's
//!   description and synonyms, turned into scores by a temperature softmax that includes a
//!   "no category" class anchored on generic requests;
//! - [`Nli`]: rust-bert's zero-shot MNLI classifier, one hypothesis per category.
//!
//! Negation ("not a dress, a coat like this") is found lexically once, up front: negated
//! categories score zero in every method, and the negated words are removed before a model
//! reads the sentence.
//!
//! Models built here hold libtorch objects: they are created and used on the model worker
//! thread only (see [`crate::worker`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::{Temperature, TextConfig, TextMethod};

pub mod wordnet;
use wordnet::{Source, Term, WordNet};

/// One catalogue category as the text side knows it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// The catalogue folder name, e.g. `ankle-boot`.
    pub name: String,
    /// Other words shoppers use for it, e.g. `chelsea boot`, `booties`.
    #[serde(default)]
    pub synonyms: Vec<String>,
    /// One sentence describing it, for the embedding method (and to pick its WordNet sense).
    pub description: String,
    /// Words WordNet would add that must not name this category (`categories --explain` lists them).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Every word or phrase that names it: the name, the file's synonyms, and WordNet's.
    #[serde(skip_deserializing)]
    pub terms: Vec<Term>,
    /// The WordNet sense of its name the description chose, when WordNet was read.
    #[serde(skip_deserializing)]
    pub sense: Option<wordnet::Sense>,
    /// WordNet's definitions of that sense and of its kinds one level down that name it: more
    /// lines for the embedding method to compare a sentence with than the description alone.
    #[serde(skip_deserializing)]
    pub definitions: Vec<String>,
}

/// The categories file (`text.vocabulary`): `[[category]]` tables.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    pub category: Vec<Category>,
    /// Read when `text.wordnet_dir` is set: widens the terms and tells typos from real words.
    #[serde(skip)]
    wordnet: Option<Arc<WordNet>>,
    /// Every term as tokens, by category, and every word of them singular: worked out once
    /// rather than per sentence.
    #[serde(skip)]
    phrases: Vec<(usize, Vec<String>)>,
    #[serde(skip)]
    words: Vec<String>,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary").field("category", &self.category).field("wordnet", &self.wordnet.is_some()).finish()
    }
}

impl Vocabulary {
    /// The file alone: each category named by its name and the file's synonyms.
    pub fn load(path: &Path) -> anyhow::Result<Vocabulary> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the category vocabulary {} (config key text.vocabulary)", path.display()))?;
        let mut vocabulary: Vocabulary = toml::from_str(&text).with_context(|| format!("{} is not a valid category vocabulary", path.display()))?;
        anyhow::ensure!(!vocabulary.category.is_empty(), "{} defines no [[category]]", path.display());
        for category in &mut vocabulary.category {
            category.terms = std::iter::once(Term { phrase: category.name.replace('-', " "), source: Source::Name })
                .chain(category.synonyms.iter().map(|s| Term { phrase: s.clone(), source: Source::File }))
                .collect();
        }
        vocabulary.tokenize();
        Ok(vocabulary)
    }

    /// `text.vocabulary`, widened by WordNet when `text.wordnet_dir` is set (see [`wordnet`]).
    pub fn from_config(config: &TextConfig) -> anyhow::Result<Vocabulary> {
        let mut vocabulary = Vocabulary::load(&config.vocabulary)?;
        if !config.wordnet_dir.as_os_str().is_empty() {
            vocabulary.widen(Arc::new(WordNet::load(&config.wordnet_dir)?));
        }
        Ok(vocabulary)
    }

    /// Adds WordNet's words to every category, each kept by one category only and never one
    /// the file gives another, less the category's `exclude` list.
    pub fn widen(&mut self, wordnet: Arc<WordNet>) {
        let pairs: Vec<(&str, &str)> = self.category.iter().map(|c| (c.name.as_str(), c.description.as_str())).collect();
        let expanded = wordnet.expand(&pairs);
        let given: Vec<Vec<String>> = self.category.iter().map(|c| c.terms.iter().map(|t| t.phrase.to_lowercase()).collect()).collect();
        let (senses, expansions): (Vec<_>, Vec<_>) = expanded.into_iter().map(|e| ((e.sense, e.kinds), e.terms)).unzip();
        for ((category, (sense, kinds)), terms) in self.category.iter_mut().zip(senses).zip(wordnet::settle(expansions, &given)) {
            let excluded: Vec<String> = category.exclude.iter().map(|e| e.to_lowercase()).collect();
            category.terms.extend(terms.into_iter().filter(|t| !excluded.contains(&t.phrase)));
            // A kind whose words all went to another category, or were excluded, is not this one's.
            let kept = |via: &String| category.terms.iter().any(|t| matches!(&t.source, Source::Hyponym { depth: 1, via: v } if v == via));
            let kinds = kinds.into_iter().filter(|(via, _)| kept(via)).map(|(_, definition)| definition);
            category.definitions.clear();
            for definition in sense.iter().map(|s| wordnet::definition(&s.gloss).to_string()).chain(kinds) {
                if !category.definitions.contains(&definition) {
                    category.definitions.push(definition);
                }
            }
            category.sense = sense;
        }
        self.wordnet = Some(wordnet);
        self.tokenize();
    }

    fn tokenize(&mut self) {
        self.phrases = self.category.iter().enumerate().flat_map(|(index, c)| c.terms.iter().map(move |t| (index, tokens(&t.phrase)))).filter(|(_, p)| !p.is_empty()).collect();
        self.words = self.phrases.iter().flat_map(|(_, phrase)| phrase.iter().map(|word| stem(word).to_string())).collect();
        self.words.sort();
        self.words.dedup();
    }

    pub fn names(&self) -> Vec<String> {
        self.category.iter().map(|c| c.name.clone()).collect()
    }
}

/// What one method made of a sentence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodScores {
    pub method: TextMethod,
    /// Score per category, in vocabulary order, between 0 and 1.
    pub scores: Vec<(String, f32)>,
    /// The category this method names, if its best score reaches `text.min_score`.
    pub chosen: Option<String>,
}

/// The answer for a sentence: the category named (or none), by which method, and the detail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intent {
    pub category: Option<String>,
    pub score: f32,
    pub decided_by: Option<TextMethod>,
    /// Categories the sentence rules out ("not a dress").
    pub negated: Vec<String>,
    /// Every method that ran, in order.
    pub methods: Vec<MethodScores>,
}

/// A way of scoring categories for a sentence.
pub trait IntentMethod {
    fn kind(&self) -> TextMethod;
    /// Scores for `sentence` (negated words already removed where the method reads models).
    fn scores(&mut self, sentence: &Sentence) -> anyhow::Result<Vec<f32>>;
}

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
fn stem(word: &str) -> &str {
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
        return true;
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
    categories: usize,
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

/// Generic requests that name no category; the embedding method's "none" class is anchored on
/// them, so "anything like this?" lands there rather than on the nearest category.
const GENERIC_REQUESTS: [&str; 10] = [
    "anything like this?",
    "show me something similar",
    "find more like this one",
    "cheaper please",
    "do you have this in another colour?",
    "what else do you have",
    "something in a bigger size",
    "I love this, find me one",
    "same style but less expensive",
    "similar item please",
];

/// Cosine similarity with all-MiniLM-L6-v2 to several lines per category, turned into scores by
/// a temperature softmax over the categories and a "none" class.
pub struct Embedding {
    model: rust_bert::pipelines::sentence_embeddings::SentenceEmbeddingsModel,
    /// Per category, the unit vectors of its [`prototype_texts`].
    prototypes: Vec<Vec<Vec<f32>>>,
    generic: Vec<Vec<f32>>,
    /// `text.embedding_temperature`, or the one [`calibrate`] found for this categories file.
    pub temperature: f32,
    none_floor: f32,
}

/// What a sentence is compared with for one category: its description, its name alone and in
/// a few requests, the file's synonyms and WordNet's definitions. The first `sentences` of
/// them (the description and the definitions) read like what a shopper writes, so
/// [`calibrate`] asks them.
fn prototype_texts(category: &Category) -> (Vec<String>, usize) {
    let name = category.name.replace('-', " ");
    let mut texts = vec![category.description.clone()];
    texts.extend(category.definitions.iter().cloned());
    let sentences = texts.len();
    texts.extend([name.clone(), format!("a {name}"), format!("a {name} like this"), format!("I am looking for a {name}")]);
    texts.extend(category.synonyms.iter().cloned());
    (texts, sentences)
}

impl Embedding {
    pub fn load(model_dir: &Path, vocabulary: &Vocabulary, config: &TextConfig) -> anyhow::Result<Embedding> {
        use rust_bert::pipelines::sentence_embeddings::{SentenceEmbeddingsConfig, SentenceEmbeddingsModel};
        use rust_bert::resources::LocalResource;
        let file = |name: &str| -> anyhow::Result<Box<LocalResource>> {
            let path = model_dir.join(name);
            anyhow::ensure!(path.exists(), "{} is missing: run `make setup` to install the offline kit", path.display());
            Ok(Box::new(LocalResource { local_path: path }))
        };
        let config_rb = SentenceEmbeddingsConfig {
            modules_config_resource: file("modules.json")?,
            transformer_type: rust_bert::pipelines::common::ModelType::Bert,
            transformer_config_resource: file("config.json")?,
            transformer_weights_resource: file("model.safetensors")?,
            pooling_config_resource: file("1_Pooling/config.json")?,
            dense_config_resource: None,
            dense_weights_resource: None,
            sentence_bert_config_resource: file("sentence_bert_config.json")?,
            tokenizer_config_resource: file("tokenizer_config.json")?,
            tokenizer_vocab_resource: file("vocab.txt")?,
            tokenizer_merges_resource: None,
            device: tch::Device::Cpu,
            kind: None,
        };
        let model = SentenceEmbeddingsModel::new(config_rb).context("cannot load all-MiniLM-L6-v2")?;
        let mut prototypes = Vec::new();
        let mut sentences = Vec::new();
        for category in &vocabulary.category {
            let (texts, count) = prototype_texts(category);
            prototypes.push(unit_rows(model.encode(&texts)?));
            sentences.push(count);
        }
        let generic = unit_rows(model.encode(&GENERIC_REQUESTS)?);
        let none_floor = config.embedding_none_cosine;
        let (temperature, origin) = match config.embedding_temperature {
            Temperature::Fixed(value) => (value, "text.embedding_temperature"),
            Temperature::Auto => (calibrate(&prototypes, &sentences, &generic, none_floor), "calibrated on the categories file"),
        };
        let lines: usize = prototypes.iter().map(Vec::len).sum();
        tracing::info!("the embedding method compares a sentence with {lines} lines for {} categories; temperature {temperature:.3} ({origin})", prototypes.len());
        Ok(Embedding { model, prototypes, generic, temperature, none_floor })
    }

    /// The bare MiniLM forward pass for one sentence: the baseline the benchmark compares with.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<f32>> {
        Ok(self.model.encode(&[text])?.remove(0))
    }
}

fn unit_rows(rows: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    rows.into_iter()
        .map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.into_iter().map(|v| v / norm).collect()
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Softmax of `logits / temperature`.
fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Each category's best cosine with `query`, leaving out category `c`'s first `n` lines where
/// `leave_out` is `Some((c, n))`.
fn category_logits(prototypes: &[Vec<Vec<f32>>], query: &[f32], leave_out: Option<(usize, usize)>) -> Vec<f32> {
    let best = |(category, rows): (usize, &Vec<Vec<f32>>)| {
        let skip = leave_out.filter(|(c, _)| *c == category).map_or(0, |(_, n)| n);
        rows.iter().skip(skip).map(|row| dot(row, query)).fold(f32::NEG_INFINITY, f32::max)
    };
    prototypes.iter().enumerate().map(best).collect()
}

/// The "none" class's logit: the best cosine with a generic request (leaving out `skip`), and
/// never under `text.embedding_none_cosine`.
fn none_logit(generic: &[Vec<f32>], query: &[f32], floor: f32, skip: Option<usize>) -> f32 {
    generic.iter().enumerate().filter(|(line, _)| skip != Some(*line)).map(|(_, row)| dot(row, query)).fold(floor, f32::max)
}

/// Temperature scaling on the categories file itself, never on test sentences: the temperature
/// under which the method's scores make the file's own sentences likeliest. Each description
/// and definition (the first `sentences[c]` lines of category `c`) should name its category
/// when that category keeps only its name, requests and synonyms; each generic request, left
/// out of the others, should name none; the two sides weigh alike. The category's other
/// sentences are left out too because they are near twins ("a lamp that stands on the floor",
/// "a lamp that sits on a table"): leaving out only the one asked found 0.025 for both test
/// files, sure of itself where a shopper's sentence shares no wording with any line; leaving
/// out all of them finds 0.035 for both (the hand-set value was 0.05).
fn calibrate(prototypes: &[Vec<Vec<f32>>], sentences: &[usize], generic: &[Vec<f32>], floor: f32) -> f32 {
    let none = prototypes.len();
    let named: Vec<(Vec<f32>, usize)> = (0..none)
        .flat_map(|category| (0..sentences[category]).map(move |line| (category, line)))
        .map(|(category, line)| {
            let query = &prototypes[category][line];
            let mut logits = category_logits(prototypes, query, Some((category, sentences[category])));
            logits.push(none_logit(generic, query, floor, None));
            (logits, category)
        })
        .collect();
    let generic_requests: Vec<(Vec<f32>, usize)> = generic
        .iter()
        .enumerate()
        .map(|(line, query)| {
            let mut logits = category_logits(prototypes, query, None);
            logits.push(none_logit(generic, query, floor, Some(line)));
            (logits, none)
        })
        .collect();
    let mean_log_likelihood =
        |samples: &[(Vec<f32>, usize)], temperature: f32| samples.iter().map(|(logits, label)| softmax(logits, temperature)[*label].max(1e-9).ln()).sum::<f32>() / samples.len().max(1) as f32;
    let fit = |temperature: f32| mean_log_likelihood(&named, temperature) + mean_log_likelihood(&generic_requests, temperature);
    (1..=40).map(|step| step as f32 * 0.005).max_by(|a, b| fit(*a).total_cmp(&fit(*b))).expect("the grid is not empty")
}

impl IntentMethod for Embedding {
    fn kind(&self) -> TextMethod {
        TextMethod::Embedding
    }

    fn scores(&mut self, sentence: &Sentence) -> anyhow::Result<Vec<f32>> {
        if sentence.affirmative.trim_matches(|c: char| c == ',' || c.is_whitespace()).is_empty() {
            return Ok(vec![0.0; self.prototypes.len()]);
        }
        let query = unit_rows(vec![self.encode(&sentence.affirmative)?]).remove(0);
        let mut logits = category_logits(&self.prototypes, &query, None);
        for negated in sentence.negated() {
            logits[negated] = f32::NEG_INFINITY;
        }
        logits.push(none_logit(&self.generic, &query, self.none_floor, None));
        let mut scores = softmax(&logits, self.temperature);
        scores.pop(); // The "none" class: what is left for the categories is their evidence.
        Ok(scores)
    }
}

/// rust-bert's zero-shot MNLI classifier: one hypothesis per category, each scored
/// independently (entailment against contradiction), so "none" is all scores low.
pub struct Nli {
    model: rust_bert::pipelines::zero_shot_classification::ZeroShotClassificationModel,
    labels: Vec<String>,
    template: String,
}

impl Nli {
    /// `model_dir` holds config.json, weights (`model.safetensors` or `rust_model.ot`) and the
    /// tokenizer (`vocab.txt`, or `vocab.json` + `merges.txt`); empty uses rust-bert's remote
    /// BART-large-MNLI.
    pub fn load(model_dir: &Path, labels: Vec<String>, template: &str) -> anyhow::Result<Nli> {
        use rust_bert::pipelines::zero_shot_classification::{ZeroShotClassificationConfig, ZeroShotClassificationModel};
        let config = if model_dir.as_os_str().is_empty() { ZeroShotClassificationConfig::default() } else { local_nli_config(model_dir)? };
        let model = ZeroShotClassificationModel::new(config).context("cannot load the NLI model")?;
        Ok(Nli { model, labels, template: template.to_string() })
    }

    /// Entailment probability per label, as `predict_multilabel` computes it.
    pub fn entailment(&self, text: &str, labels: &[String]) -> anyhow::Result<Vec<f32>> {
        let template = self.template.clone();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let output = self.model.predict_multilabel([text], &labels, Some(Box::new(move |label: &str| template.replace("{}", label))), 256)?;
        Ok(output[0].iter().map(|label| label.score as f32).collect())
    }
}

fn local_nli_config(dir: &Path) -> anyhow::Result<rust_bert::pipelines::zero_shot_classification::ZeroShotClassificationConfig> {
    use rust_bert::pipelines::common::{ModelResource, ModelType};
    use rust_bert::resources::LocalResource;
    let config_path = dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path).with_context(|| format!("{} is missing: text.nli_model_dir must hold an MNLI model", config_path.display()))?;
    let model_type_name = serde_json::from_str::<serde_json::Value>(&config_text)?["model_type"].as_str().unwrap_or("").to_string();
    let model_type = match model_type_name.as_str() {
        "bert" => ModelType::Bert,
        "distilbert" => ModelType::DistilBert,
        "roberta" => ModelType::Roberta,
        "bart" => ModelType::Bart,
        "deberta" => ModelType::Deberta,
        "albert" => ModelType::Albert,
        other => anyhow::bail!("{}: model_type {other:?} is not one lookalike can run for NLI (bert, distilbert, roberta, bart, deberta, albert)", config_path.display()),
    };
    let weights = ["model.safetensors", "rust_model.ot"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists())
        .with_context(|| format!("{} has neither model.safetensors nor rust_model.ot", dir.display()))?;
    let (vocab, merges) = if dir.join("vocab.txt").exists() { (dir.join("vocab.txt"), None) } else { (dir.join("vocab.json"), Some(dir.join("merges.txt"))) };
    let lower_case = matches!(model_type, ModelType::Bert | ModelType::DistilBert | ModelType::Albert);
    Ok(rust_bert::pipelines::zero_shot_classification::ZeroShotClassificationConfig::new(
        model_type,
        ModelResource::Torch(Box::new(LocalResource { local_path: weights })),
        LocalResource { local_path: config_path },
        LocalResource { local_path: vocab },
        merges.map(|path| LocalResource { local_path: path }),
        lower_case,
        None,
        None,
    ))
}

impl IntentMethod for Nli {
    fn kind(&self) -> TextMethod {
        TextMethod::Nli
    }

    fn scores(&mut self, sentence: &Sentence) -> anyhow::Result<Vec<f32>> {
        let labels: Vec<String> = self.labels.iter().map(|l| l.replace('-', " ")).collect();
        let mut scores = self.entailment(&sentence.affirmative, &labels)?;
        for negated in sentence.negated() {
            scores[negated] = 0.0;
        }
        Ok(scores)
    }
}

/// The configured methods over one vocabulary. Lives on the model worker thread.
pub struct IntentReader {
    vocabulary: Vocabulary,
    methods: Vec<Box<dyn IntentMethod>>,
    min_score: f32,
}

/// Where the text models live, from the models folder and the config.
pub struct TextModelPaths {
    pub minilm_dir: PathBuf,
    pub nli_dir: PathBuf,
}

impl TextModelPaths {
    pub fn new(models_dir: &Path, config: &TextConfig) -> TextModelPaths {
        TextModelPaths { minilm_dir: models_dir.join("kit/all-MiniLM-L6-v2"), nli_dir: config.nli_model_dir.clone() }
    }
}

impl IntentReader {
    /// Loads the methods `methods` names (usually `config.methods`), in that order.
    pub fn load(vocabulary: Vocabulary, config: &TextConfig, methods: &[TextMethod], paths: &TextModelPaths) -> anyhow::Result<IntentReader> {
        let mut loaded: Vec<Box<dyn IntentMethod>> = Vec::new();
        for method in methods {
            loaded.push(match method {
                TextMethod::Lexical => Box::new(Lexical { categories: vocabulary.category.len() }),
                TextMethod::Embedding => Box::new(Embedding::load(&paths.minilm_dir, &vocabulary, config)?),
                TextMethod::Nli => Box::new(Nli::load(&paths.nli_dir, vocabulary.names(), &config.nli_template)?),
            });
        }
        Ok(IntentReader { vocabulary, methods: loaded, min_score: config.min_score })
    }

    pub fn read(&mut self, text: &str) -> anyhow::Result<Intent> {
        let sentence = Sentence::new(text, &self.vocabulary);
        let names = self.vocabulary.names();
        let negated: Vec<String> = {
            let mut list: Vec<usize> = sentence.negated().collect();
            list.sort_unstable();
            list.dedup();
            list.into_iter().map(|i| names[i].clone()).collect()
        };
        let mut intent = Intent { category: None, score: 0.0, decided_by: None, negated, methods: Vec::new() };
        for method in &mut self.methods {
            let scores = method.scores(&sentence)?;
            let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
            let chosen = best.filter(|(_, score)| **score >= self.min_score).map(|(index, _)| names[index].clone());
            let detail = MethodScores { method: method.kind(), scores: names.iter().cloned().zip(scores.iter().cloned()).collect(), chosen: chosen.clone() };
            intent.methods.push(detail);
            if let (Some(category), Some((_, score))) = (chosen, best) {
                intent.category = Some(category);
                intent.score = *score;
                intent.decided_by = Some(method.kind());
                break;
            }
        }
        Ok(intent)
    }
}

/// `lookalike categories`: a line per category, and with `explain` every word that names it by
/// source and the WordNet sense chosen.
pub fn render_categories(vocabulary: &Vocabulary, explain: bool) -> String {
    let mut out = String::new();
    for category in &vocabulary.category {
        out.push_str(&format!("{} ({} words): {}\n", category.name, category.terms.len(), category.description));
        if !explain {
            continue;
        }
        match &category.sense {
            Some(sense) => out.push_str(&format!("  WordNet sense {} of {} ({}): {}\n", sense.rank + 1, sense.senses, sense.lemmas.join(", "), wordnet::definition(&sense.gloss))),
            None if vocabulary.wordnet.is_some() => out.push_str("  not in WordNet: only the name and the file's synonyms\n"),
            None => out.push_str("  WordNet off (text.wordnet_dir): only the name and the file's synonyms\n"),
        }
        let group = |wanted: fn(&Source) -> bool| category.terms.iter().filter(|t| wanted(&t.source)).map(|t| t.phrase.as_str()).collect::<Vec<_>>();
        out.push_str(&format!("  from the file: {}\n", group(|s| matches!(s, Source::Name | Source::File)).join(", ")));
        let synonyms = group(|s| matches!(s, Source::Synonym));
        if !synonyms.is_empty() {
            out.push_str(&format!("  WordNet synonyms: {}\n", synonyms.join(", ")));
        }
        let kinds: Vec<String> = category
            .terms
            .iter()
            .filter_map(|t| match &t.source {
                Source::Hyponym { depth: 1, .. } => Some(t.phrase.clone()),
                Source::Hyponym { depth, via } => Some(format!("{} ({via}, {depth} levels down)", t.phrase)),
                _ => None,
            })
            .collect();
        if !kinds.is_empty() {
            out.push_str(&format!("  WordNet kinds: {}\n", kinds.join(", ")));
        }
        if let Some(kinds) = category.definitions.get(1..).filter(|k| !k.is_empty()) {
            out.push_str(&format!("  kinds' definitions (the embedding method compares with these too): {}\n", kinds.join(" | ")));
        }
        if !category.exclude.is_empty() {
            out.push_str(&format!("  excluded (exclude = [...]): {}\n", category.exclude.join(", ")));
        }
    }
    out.push_str("A word WordNet adds wrongly: list it in the category's `exclude`; one it misses: add it to `synonyms`.\n");
    out
}

/// `lookalike intent`'s table: each method's scores, then the answer.
pub fn render(intent: &Intent) -> String {
    let mut out = String::new();
    for method in &intent.methods {
        out.push_str(&format!("{:?}:\n", method.method).to_lowercase());
        let mut ranked: Vec<(String, f32)> = method.scores.iter().filter(|(_, score)| *score >= 0.005).cloned().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        if ranked.is_empty() {
            out.push_str("  no category scores above 0\n");
        }
        for (name, score) in ranked {
            out.push_str(&format!("  {name:<14} {score:>5.3} {}\n", bar(score)));
        }
    }
    if !intent.negated.is_empty() {
        out.push_str(&format!("ruled out: {}\n", intent.negated.join(", ")));
    }
    match (&intent.category, intent.decided_by) {
        (Some(category), Some(method)) => out.push_str(&format!("category: {category} ({:.2}, decided by {})\n", intent.score, format!("{method:?}").to_lowercase())),
        _ => out.push_str("category: none named (the image decides)\n"),
    }
    out
}

fn bar(score: f32) -> String {
    "#".repeat((score.clamp(0.0, 1.0) * 20.0).round() as usize)
}

/// How a reader did on a labelled set.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub sentences: usize,
    pub accuracy: f32,
    /// Accuracy on sentences that name a category.
    pub named_accuracy: f32,
    /// Share of sentences naming no category that were answered "none".
    pub none_accuracy: f32,
    pub misses: Vec<Miss>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    pub sentence: String,
    pub expected: Option<String>,
    pub got: Option<String>,
}

pub fn evaluate(reader: &mut IntentReader, labelled: &[(String, Option<String>, String)]) -> anyhow::Result<Evaluation> {
    let (mut correct, mut named, mut named_correct, mut none, mut none_correct) = (0, 0, 0, 0, 0);
    let mut misses = Vec::new();
    for (sentence, expected, _) in labelled {
        let got = reader.read(sentence)?.category;
        let right = got == *expected;
        correct += right as usize;
        if expected.is_some() {
            named += 1;
            named_correct += right as usize;
        } else {
            none += 1;
            none_correct += right as usize;
        }
        if !right {
            misses.push(Miss { sentence: sentence.clone(), expected: expected.clone(), got });
        }
    }
    let share = |a: usize, b: usize| a as f32 / b.max(1) as f32;
    Ok(Evaluation { sentences: labelled.len(), accuracy: share(correct, labelled.len()), named_accuracy: share(named_correct, named), none_accuracy: share(none_correct, none), misses })
}

/// Reads `sentence<TAB>category-or-none<TAB>kind` lines, skipping `#` comments.
pub fn labelled_sentences(path: &Path) -> anyhow::Result<Vec<(String, Option<String>, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(fields.len() == 3, "{}:{}: expected sentence, category and kind separated by tabs", path.display(), number + 1);
        let expected = (fields[1] != "none").then(|| fields[1].to_string());
        out.push((fields[0].to_string(), expected, fields[2].to_string()));
    }
    anyhow::ensure!(!out.is_empty(), "{} holds no labelled sentences (sentence<TAB>category-or-none<TAB>kind lines)", path.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Two categories of two lines each (a sentence, then a name), generic requests on a third
    /// axis. `overlap` moves each category's sentence towards the other category's name.
    fn calibrated(overlap: f32) -> f32 {
        let line = |v: [f32; 3]| unit_rows(vec![v.to_vec()]).remove(0);
        let prototypes = vec![vec![line([1.0, overlap, 0.0]), line([1.0, 0.0, 0.0])], vec![line([overlap, 1.0, 0.0]), line([0.0, 1.0, 0.0])]];
        let generic = vec![line([0.0, 0.0, 1.0]), line([0.1, 0.1, 1.0])];
        calibrate(&prototypes, &[1, 1], &generic, 0.35)
    }

    #[test]
    fn calibration_warms_up_as_the_categories_overlap() {
        let (apart, close, closer) = (calibrated(0.0), calibrated(0.6), calibrated(0.9));
        assert!(apart < close && close < closer, "{apart} {close} {closer}");
        assert!(closer < 0.2, "overlapping categories still have a finite best temperature, inside the grid: {closer}");
    }

    #[test]
    fn softmax_is_a_distribution_sharpened_by_temperature() {
        let soft = softmax(&[0.5, 0.4], 1.0);
        let sharp = softmax(&[0.5, 0.4], 0.05);
        assert!((soft.iter().sum::<f32>() - 1.0).abs() < 1e-6 && (sharp.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(sharp[0] > soft[0] && sharp[0] > 0.8);
    }
}
