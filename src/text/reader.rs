//! The reader: the configured methods over one vocabulary, tried in order until one names a category.

use std::path::{Path, PathBuf};

use super::{Embedding, Intent, IntentMethod, Lexical, MethodScores, Nli, Sentence, Vocabulary};
use crate::config::{TextConfig, TextMethod};

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
