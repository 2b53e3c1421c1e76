//! The NLI method: rust-bert's zero-shot MNLI classifier, from rust-bert's remote model or a local one.

use std::path::Path;

use anyhow::Context;

use super::{IntentMethod, Sentence};
use crate::config::TextMethod;

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
