//! The reader: the configured methods over one vocabulary, tried in order until one names a category.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::embedding::{MiniLm, SentenceEncoder};
use super::{Embedding, Intent, IntentMethod, Lexical, MethodScores, Nli, Sentence, Vocabulary};
use crate::config::{TextConfig, TextMethod};

/// The configured methods over one vocabulary. Lives on the model worker thread.
pub struct IntentReader {
    vocabulary: Vocabulary,
    methods: Vec<Box<dyn IntentMethod>>,
    min_score: f32,
    /// MiniLM, shared with the embedding method: items' texts and words-only queries are
    /// embedded by it. None when the kit's copy is not installed and no method needs it.
    sentences: Option<Rc<MiniLm>>,
    /// The clip embedder's text tower, shared with the clip method; with `pictures`, words-only
    /// queries are also compared with the items' pictures by it.
    clip: Option<Rc<crate::clip::Clip>>,
    pictures: bool,
}

/// Where the text models live, from the models folder and the config.
pub struct TextModelPaths {
    pub minilm_dir: PathBuf,
    pub nli_dir: PathBuf,
    /// The models folder, where the clip embedder's files are.
    pub models_dir: PathBuf,
    /// Whether the catalogue's vectors are the clip embedder's (`index.embedding = "clip"`), so
    /// that a sentence's clip vector can be compared with them.
    pub pictures: bool,
}

impl TextModelPaths {
    pub fn new(models_dir: &Path, config: &TextConfig) -> TextModelPaths {
        TextModelPaths { minilm_dir: models_dir.join("kit/all-MiniLM-L6-v2"), nli_dir: config.nli_model_dir.clone(), models_dir: models_dir.to_path_buf(), pictures: false }
    }
}

impl IntentReader {
    /// Loads the methods `methods` names (usually `config.methods`), in that order.
    pub fn load(vocabulary: Vocabulary, config: &TextConfig, methods: &[TextMethod], paths: &TextModelPaths) -> anyhow::Result<IntentReader> {
        let mut loaded: Vec<Box<dyn IntentMethod>> = Vec::new();
        let sentences = match methods.contains(&TextMethod::Embedding) || MiniLm::installed(&paths.minilm_dir) {
            true => Some(Rc::new(MiniLm::load(&paths.minilm_dir)?)),
            false => None,
        };
        let clip = match methods.contains(&TextMethod::Clip) || paths.pictures {
            true => {
                let weights = crate::clip::weights(&paths.models_dir)?;
                Some(Rc::new(crate::clip::Clip::load(&weights, Some(&paths.models_dir.join(crate::clip::VOCABULARY)), crate::clip::Towers::Text, tch::Device::Cpu)?))
            }
            false => None,
        };
        for method in methods {
            loaded.push(match method {
                TextMethod::Lexical => Box::new(Lexical { categories: vocabulary.category.len() }),
                TextMethod::Embedding => Box::new(Embedding::with_model(sentences.clone().expect("loaded above") as Rc<dyn SentenceEncoder>, TextMethod::Embedding, &vocabulary, config)?),
                TextMethod::Clip => Box::new(Embedding::with_model(clip.clone().expect("loaded above") as Rc<dyn SentenceEncoder>, TextMethod::Clip, &vocabulary, config)?),
                TextMethod::Nli => Box::new(Nli::load(&paths.nli_dir, vocabulary.names(), &config.nli_template)?),
            });
        }
        Ok(IntentReader { vocabulary, methods: loaded, min_score: config.min_score, sentences, clip, pictures: paths.pictures })
    }

    /// The clip embedder's unit vectors of `texts`, to compare with the items' pictures; None
    /// unless the catalogue's vectors are the clip embedder's.
    pub fn picture_vectors(&self, texts: &[String]) -> anyhow::Result<Option<Vec<Vec<f32>>>> {
        self.clip.as_ref().filter(|_| self.pictures).map(|model| model.encode(texts)).transpose()
    }

    /// MiniLM unit vectors of `texts` (items' words, a shopper's sentence); None when MiniLM is
    /// not loaded.
    pub fn sentence_vectors(&self, texts: &[String]) -> anyhow::Result<Option<Vec<Vec<f32>>>> {
        self.sentences.as_ref().map(|model| model.encode(texts)).transpose()
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
