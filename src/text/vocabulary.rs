//! The categories file (`text.vocabulary`): each category's name, synonyms and description, and the words that name it.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::lexical::{stem, tokens};
use super::wordnet::{self, Source, Term, WordNet};
use crate::config::TextConfig;

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
    pub(super) wordnet: Option<Arc<WordNet>>,
    /// Every term as tokens, by category, and every word of them singular: worked out once
    /// rather than per sentence.
    #[serde(skip)]
    pub(super) phrases: Vec<(usize, Vec<String>)>,
    #[serde(skip)]
    pub(super) words: Vec<String>,
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
