//! WordNet 3.0 (Debian's `wordnet-base`, read from `text.wordnet_dir`): the words a shopper may
//! use for a category the operator named and described in one line, and the list of real English
//! words that tells a typo ("chiar") from another word ("skirt", "boat").
//!
//! A category's words: the noun sense of its name that best matches its description (words
//! shared with the sense's gloss, its synonyms and its parents' names; products are artifacts,
//! so an artifact sense is preferred; then WordNet's frequency order), that sense's synonyms,
//! and its hyponyms three levels down ("skillet" under "pan", "armchair" under "chair"). A
//! lemma is taken only where this sense is among its commonest ("closet" yes, "press" no), and
//! deeper than one level only where it is the commonest ("recliner"); a kind that is also an
//! adjective or adverb is left out ("counter"), and deeper down one that is also a verb
//! ("lower" berth). Another category's sense and
//! everything under it stay that category's ("desk" is a kind of table).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// Where a category's word comes from, for `lookalike categories --explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The category's name in the categories file.
    Name,
    /// The file's `synonyms`.
    File,
    /// A synonym in the chosen WordNet sense.
    Synonym,
    /// A hyponym `depth` levels under the sense, by way of the WordNet synset named `via`.
    Hyponym { depth: usize, via: String },
}

/// One word or phrase that names a category.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Term {
    pub phrase: String,
    pub source: Source,
}

/// A category's chosen sense and its WordNet words, each with how far it sits from the sense
/// (levels x 10 + its rank among the word's senses), before [`settle`].
pub struct Expansion {
    pub sense: Option<Sense>,
    pub terms: Vec<(Term, usize)>,
    /// The definition of each kind one level down, by the name its terms give as `via`.
    pub kinds: Vec<(String, String)>,
}

/// The WordNet sense chosen for a category's name, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sense {
    pub lemmas: Vec<String>,
    pub gloss: String,
    /// Its position among the name's noun senses (0: the commonest), of `senses`.
    pub rank: usize,
    pub senses: usize,
}

struct Synset {
    lexicographer_file: u32,
    lemmas: Vec<String>,
    hypernyms: Vec<u64>,
    hyponyms: Vec<u64>,
    gloss: String,
}

pub struct WordNet {
    /// Noun lemma (spaces as `_`) -> synset offsets in data.noun, commonest first.
    nouns: HashMap<String, Vec<u64>>,
    data: Vec<u8>,
    /// Every single-word lemma of every part of speech.
    words: HashSet<String>,
    /// Single-word adjectives and adverbs: as a kind of a product they mislead ("lower" berth,
    /// "counter"), so they are left out of the hyponyms.
    modifiers: HashSet<String>,
    /// Single-word verbs: left out of the hyponyms two or more levels down ("lower" berth).
    verbs: HashSet<String>,
}

/// Words WordNet leaves out (it has only nouns, verbs, adjectives and adverbs) that are no typo.
const FUNCTION_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "and",
    "or",
    "but",
    "for",
    "with",
    "without",
    "of",
    "to",
    "in",
    "on",
    "at",
    "by",
    "from",
    "into",
    "onto",
    "like",
    "as",
    "is",
    "are",
    "was",
    "were",
    "be",
    "me",
    "my",
    "mine",
    "you",
    "your",
    "we",
    "our",
    "us",
    "they",
    "them",
    "their",
    "it",
    "its",
    "he",
    "she",
    "his",
    "her",
    "him",
    "i",
    "im",
    "dont",
    "doesnt",
    "isnt",
    "wont",
    "cant",
    "what",
    "which",
    "who",
    "whom",
    "whose",
    "where",
    "when",
    "why",
    "how",
    "any",
    "some",
    "no",
    "not",
    "nor",
    "than",
    "then",
    "so",
    "if",
    "else",
    "also",
    "just",
    "very",
    "too",
    "please",
    "one",
    "ones",
    "something",
    "anything",
    "nothing",
    "everything",
    "someone",
    "anyone",
    "each",
    "every",
    "both",
    "either",
    "neither",
    "do",
    "does",
    "did",
    "have",
    "has",
    "had",
    "can",
    "could",
    "would",
    "should",
    "will",
    "shall",
    "may",
    "might",
    "must",
    "about",
    "over",
    "under",
    "between",
    "through",
    "after",
    "before",
    "up",
    "down",
    "out",
    "off",
    "again",
    "here",
    "there",
    "all",
];

/// Lemmas that stop a sense from reading as a product: stop words of descriptions and glosses.
const STOP: &[&str] =
    &["a", "an", "the", "for", "or", "and", "to", "of", "with", "on", "at", "in", "that", "is", "are", "be", "by", "from", "as", "it", "its", "one", "two", "more", "often", "usually", "used"];

impl WordNet {
    /// Reads `dir` (index.noun, data.noun and the other parts' indexes).
    pub fn load(dir: &Path) -> anyhow::Result<WordNet> {
        let read =
            |name: &str| std::fs::read(dir.join(name)).with_context(|| format!("cannot read WordNet's {} in {} (text.wordnet_dir; `make setup` installs Debian's wordnet-base)", name, dir.display()));
        let mut nouns = HashMap::new();
        let mut words: HashSet<String> = FUNCTION_WORDS.iter().map(|w| w.to_string()).collect();
        let (mut modifiers, mut verbs) = (HashSet::new(), HashSet::new());
        for part in ["noun", "verb", "adj", "adv"] {
            let index = read(&format!("index.{part}"))?;
            for line in String::from_utf8_lossy(&index).lines().filter(|l| !l.starts_with(' ')) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let Some(lemma) = fields.first() else { continue };
                if !lemma.contains('_') {
                    words.insert(lemma.to_string());
                    match part {
                        "adj" | "adv" => modifiers.insert(lemma.to_string()),
                        "verb" => verbs.insert(lemma.to_string()),
                        _ => false,
                    };
                }
                if part == "noun" {
                    // lemma pos synset_cnt p_cnt [ptr_symbol x p_cnt] sense_cnt tagsense_cnt offsets...
                    let pointers: usize = fields.get(3).and_then(|p| p.parse().ok()).unwrap_or(0);
                    let offsets = fields.iter().skip(4 + pointers + 2).filter_map(|o| o.parse().ok()).collect();
                    nouns.insert(lemma.to_string(), offsets);
                }
            }
        }
        anyhow::ensure!(!nouns.is_empty(), "{} holds no WordNet nouns", dir.display());
        Ok(WordNet { nouns, data: read("data.noun")?, words, modifiers, verbs })
    }

    /// Whether `word` is an English word (any part of speech, any lemma WordNet knows).
    pub fn is_word(&self, word: &str) -> bool {
        self.words.contains(word)
    }

    fn synset(&self, offset: u64) -> Option<Synset> {
        let start = offset as usize;
        let end = self.data.get(start..)?.iter().position(|&b| b == b'\n').map_or(self.data.len(), |e| start + e);
        let line = std::str::from_utf8(&self.data[start..end]).ok()?;
        let (head, gloss) = line.split_once(" | ").unwrap_or((line, ""));
        let fields: Vec<&str> = head.split_whitespace().collect();
        let count = usize::from_str_radix(fields.get(3)?, 16).ok()?;
        let lemmas = (0..count).filter_map(|i| fields.get(4 + 2 * i)).map(|w| w.split('(').next().unwrap_or(w).to_lowercase()).collect();
        let at = 4 + 2 * count;
        let pointers: usize = fields.get(at)?.parse().ok()?;
        let (mut hypernyms, mut hyponyms) = (Vec::new(), Vec::new());
        for p in 0..pointers {
            let (symbol, target) = (fields.get(at + 1 + 4 * p)?, fields.get(at + 2 + 4 * p)?.parse().ok()?);
            match *symbol {
                "@" => hypernyms.push(target),
                "~" => hyponyms.push(target),
                _ => {}
            }
        }
        Some(Synset { lexicographer_file: fields.get(1)?.parse().ok()?, lemmas, hypernyms, hyponyms, gloss: gloss.trim().to_string() })
    }

    /// The noun senses of `name` (spaces as `_`, then hyphens too; else its last word).
    fn senses(&self, name: &str) -> Vec<u64> {
        let lowered = name.trim().to_lowercase().replace(' ', "_");
        let joined = lowered.replace('-', "_");
        [lowered.as_str(), joined.as_str(), joined.rsplit('_').next().unwrap_or_default()].iter().find_map(|key| self.nouns.get(*key)).cloned().unwrap_or_default()
    }

    /// The sense of `name` that best fits `description` (and the file's synonyms).
    fn choose(&self, name: &str, description: &str) -> Option<(u64, Sense)> {
        let senses = self.senses(name);
        let wanted = content_words(description);
        let mut best: Option<(f64, u64, usize)> = None;
        for (rank, &offset) in senses.iter().enumerate() {
            let Some(synset) = self.synset(offset) else { continue };
            let mut bag = content_words(&synset.gloss);
            bag.extend(synset.lemmas.iter().flat_map(|l| l.split('_').map(str::to_string)));
            for parent in synset.hypernyms.iter().filter_map(|&h| self.synset(h)) {
                bag.extend(parent.lemmas.iter().flat_map(|l| l.split('_').map(str::to_string)));
            }
            // noun.artifact (06): what a shop sells.
            let score = wanted.intersection(&bag).count() as f64 + if synset.lexicographer_file == 6 { 1.0 } else { 0.0 } - 0.01 * rank as f64;
            if best.is_none_or(|(b, _, _)| score > b) {
                best = Some((score, offset, rank));
            }
        }
        let (_, offset, rank) = best?;
        let synset = self.synset(offset)?;
        Some((offset, Sense { lemmas: synset.lemmas.iter().map(|l| l.replace('_', " ")).collect(), gloss: synset.gloss, rank, senses: senses.len() }))
    }

    /// How common `offset` is among `lemma`'s noun senses (0: the commonest).
    fn rank(&self, lemma: &str, offset: u64) -> Option<usize> {
        self.nouns.get(lemma)?.iter().position(|&o| o == offset)
    }

    /// Each category's chosen sense and WordNet words (not yet cleared of clashes), given each
    /// category's (name, description).
    pub fn expand(&self, categories: &[(&str, &str)]) -> Vec<Expansion> {
        let mut chosen: Vec<Option<(u64, Sense)>> = categories.iter().map(|(name, description)| self.choose(name, description)).collect();
        // Two categories on one sense ("t-shirt" read as its last word, "shirt"): it is the one
        // whose name is among the sense's lemmas.
        for i in 0..chosen.len() {
            let Some((offset, sense)) = &chosen[i] else { continue };
            let named = |c: usize| chosen[c].as_ref().is_some_and(|(_, s)| s.lemmas.contains(&categories[c].0.to_lowercase().replace('-', " ")));
            let rival = (0..chosen.len()).find(|&j| j != i && chosen[j].as_ref().is_some_and(|(o, _)| o == offset) && named(j));
            if rival.is_some() && !sense.lemmas.contains(&categories[i].0.to_lowercase().replace('-', " ")) {
                chosen[i] = None;
            }
        }
        let others: HashSet<u64> = chosen.iter().flatten().map(|(offset, _)| *offset).collect();
        chosen
            .into_iter()
            .map(|choice| {
                let Some((root, sense)) = choice else { return Expansion { sense: None, terms: Vec::new(), kinds: Vec::new() } };
                let (mut terms, mut kinds) = (Vec::new(), Vec::new());
                let synset = self.synset(root).expect("a chosen sense reads");
                for lemma in &synset.lemmas {
                    if self.rank(lemma, root).is_some_and(|r| r <= 2) {
                        terms.push((Term { phrase: lemma.replace('_', " "), source: Source::Synonym }, 0));
                    }
                }
                let mut queue: VecDeque<(u64, usize)> = synset.hyponyms.iter().map(|&h| (h, 1)).collect();
                let mut seen: HashSet<u64> = HashSet::from([root]);
                while let Some((offset, depth)) = queue.pop_front() {
                    if depth > 3 || others.contains(&offset) || !seen.insert(offset) {
                        continue;
                    }
                    let Some(hyponym) = self.synset(offset) else { continue };
                    let via = hyponym.lemmas.first().map(|l| l.replace('_', " ")).unwrap_or_default();
                    if depth == 1 {
                        kinds.push((via.clone(), definition(&hyponym.gloss).to_string()));
                    }
                    for lemma in &hyponym.lemmas {
                        let rank = self.rank(lemma, offset).unwrap_or(usize::MAX);
                        if ((depth <= 1 && rank <= 2) || rank == 0) && !self.modifiers.contains(lemma) && !(depth >= 2 && self.verbs.contains(lemma)) {
                            terms.push((Term { phrase: lemma.replace('_', " "), source: Source::Hyponym { depth, via: via.clone() } }, depth * 10 + rank));
                        }
                    }
                    queue.extend(hyponym.hyponyms.iter().map(|&h| (h, depth + 1)));
                }
                Expansion { sense: Some(sense), terms, kinds }
            })
            .collect()
    }
}

/// A gloss without its quoted examples: "a seat for one person, with a support for the back".
pub fn definition(gloss: &str) -> &str {
    gloss.split("; \"").next().unwrap_or(gloss).trim()
}

fn content_words(text: &str) -> HashSet<String> {
    text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty() && !STOP.contains(w)).map(str::to_string).collect()
}

/// Keeps each WordNet phrase in one category only: the one where it sits closest to the sense
/// (fewest levels, commonest sense), and never where the file already gives it to another.
pub fn settle(mut expansions: Vec<Vec<(Term, usize)>>, given: &[Vec<String>]) -> Vec<Vec<Term>> {
    let mut best: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (category, terms) in expansions.iter().enumerate() {
        for (term, closeness) in terms {
            let entry = best.entry(term.phrase.clone()).or_insert((*closeness, category));
            if *closeness < entry.0 {
                *entry = (*closeness, category);
            }
        }
    }
    let given_anywhere: HashSet<&String> = given.iter().flatten().collect();
    expansions
        .iter_mut()
        .enumerate()
        .map(|(category, terms)| {
            let mut kept: Vec<Term> = Vec::new();
            for (term, _) in terms.drain(..) {
                let owner = best.get(&term.phrase).map(|(_, c)| *c);
                if owner == Some(category) && !given_anywhere.contains(&term.phrase) && !kept.iter().any(|k| k.phrase == term.phrase) {
                    kept.push(term);
                }
            }
            kept
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wordnet() -> Option<WordNet> {
        WordNet::load(Path::new("/usr/share/wordnet")).ok()
    }

    #[test]
    fn furniture_senses_and_words_come_from_wordnet() {
        let Some(wordnet) = wordnet() else {
            panic!("WordNet is missing: `make setup` installs Debian's wordnet-base");
        };
        let categories = [("table", "a table for eating or for the living room"), ("desk", "a desk to work or study at"), ("sofa", "an upholstered seat"), ("wardrobe", "a tall cupboard for clothes")];
        let expanded = wordnet.expand(&categories);
        let table = expanded[0].sense.as_ref().unwrap();
        assert!(table.gloss.contains("furniture"), "the furniture sense, not the table of data: {table:?}");
        let given: Vec<Vec<String>> = categories.iter().map(|(n, _)| vec![n.to_string()]).collect();
        let settled = settle(expanded.into_iter().map(|e| e.terms).collect(), &given);
        let phrases = |i: usize| settled[i].iter().map(|t| t.phrase.as_str()).collect::<Vec<_>>();
        assert!(phrases(0).contains(&"coffee table") && !phrases(0).contains(&"desk") && !phrases(0).contains(&"writing desk"), "a desk is the desk category's: {:?}", phrases(0));
        assert!(phrases(1).contains(&"writing desk") || phrases(1).contains(&"escritoire"), "{:?}", phrases(1));
        assert!(phrases(2).contains(&"couch") && phrases(2).contains(&"settee"), "{:?}", phrases(2));
        assert!(phrases(3).contains(&"closet") && phrases(3).contains(&"armoire") && !phrases(3).contains(&"press"), "press is rarely a wardrobe: {:?}", phrases(3));
        assert!(wordnet.is_word("skirt") && wordnet.is_word("boat") && wordnet.is_word("the") && !wordnet.is_word("chiar"));
    }
}
