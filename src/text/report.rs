//! Reports and evaluation: `lookalike categories` and `lookalike intent`'s text, and a reader's
//! accuracy on labelled sentences.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::wordnet::{self, Source};
use super::{Intent, IntentReader, Vocabulary};

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
