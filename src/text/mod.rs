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
//!
//! The module's files, one concern each:
//! - `vocabulary.rs` reads the categories file into [`Category`] and [`Vocabulary`] and widens it with WordNet's words when `text.wordnet_dir` is set.
//! - `wordnet.rs` reads WordNet and finds each category's sense, synonyms and kinds, and the real words that are never typos.
//! - `lexical.rs` splits a sentence into tokens, matches category words and their typos, finds negation, and holds the [`Lexical`] method.
//! - `embedding.rs` holds the [`Embedding`] method and calibrates its temperature on the categories file.
//! - `nli.rs` holds the [`Nli`] method and reads a local MNLI model's configuration.
//! - `reader.rs` holds [`IntentReader`], which runs the configured methods in order, and [`TextModelPaths`].
//! - `report.rs` renders the categories and an intent for the CLI, and evaluates a reader on labelled sentences.
//! - This file holds what every method shares: [`Intent`], [`MethodScores`] and the [`IntentMethod`] trait.

use serde::Serialize;

use crate::config::TextMethod;

mod embedding;
mod lexical;
mod nli;
mod reader;
mod report;
mod vocabulary;
pub mod wordnet;

pub use embedding::Embedding;
pub use lexical::{mentions, tokens, Lexical, Mention, Sentence};
pub use nli::Nli;
pub use reader::{IntentReader, TextModelPaths};
pub use report::{evaluate, labelled_sentences, render, render_categories, Evaluation, Miss};
pub use vocabulary::{Category, Vocabulary};

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
