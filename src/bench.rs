//! `lookalike bench`: every figure is measured in one run, next to a baseline measured in the
//! same process, and printed as a ratio.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::text::{Embedding, IntentReader, TextModelPaths, Vocabulary};
use crate::worker::ModelWorker;

/// Sentences timed when no labelled file is at hand: a mix the lexical path decides and ones it
/// leaves to the model.
const SENTENCES: [&str; 8] = [
    "a dress like this",
    "got anything like these sneekers?",
    "not a dress, a coat like this",
    "something warm to wear over my shirt in winter",
    "shoes for the beach in summer",
    "anything like this?",
    "cheaper please",
    "I need something to carry my laptop and books",
];

pub fn percentile(sorted: &[Duration], share: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * share).round() as usize]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Intent extraction per sentence with the configured methods, against the bare MiniLM forward
/// pass of the same sentence on the same thread.
pub fn intent(config: &Config, rounds: usize) -> anyhow::Result<()> {
    let vocabulary = Vocabulary::load(&config.text.vocabulary)?;
    let categories = vocabulary.category.len();
    let text_config = config.text.clone();
    let paths = TextModelPaths::new(&config.models.dir, &config.text);
    let methods = config.text.methods.clone();
    let worker = ModelWorker::spawn(move || {
        let baseline = Embedding::load(&paths.minilm_dir, &vocabulary, &text_config)?;
        let reader = IntentReader::load(vocabulary, &text_config, &methods, &paths)?;
        Ok((reader, baseline))
    })?;
    let rounds = rounds.max(1);
    let (full, bare) = worker.run_blocking(move |(reader, baseline): &mut (IntentReader, Embedding)| -> anyhow::Result<_> {
        for sentence in SENTENCES {
            reader.read(sentence)?;
            baseline.encode(sentence)?;
        }
        let (mut full, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for sentence in SENTENCES {
                let started = Instant::now();
                std::hint::black_box(reader.read(sentence)?);
                full.push(started.elapsed());
                let started = Instant::now();
                std::hint::black_box(baseline.encode(sentence)?);
                bare.push(started.elapsed());
            }
        }
        full.sort();
        bare.sort();
        Ok((full, bare))
    })??;
    println!("intent extraction, {categories} categories, methods {:?}, {} sentences x {rounds} rounds, {} libtorch threads", config.text.methods, SENTENCES.len(), tch::get_num_threads());
    println!("{:<38} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!("{:<38} {:>9.2} {:>9.2}", "intent (all configured methods)", millis(percentile(&full, 0.5)), millis(percentile(&full, 0.99)));
    println!("{:<38} {:>9.2} {:>9.2}", "baseline: bare MiniLM encode", millis(percentile(&bare, 0.5)), millis(percentile(&bare, 0.99)));
    println!(
        "ratio intent / bare encode at p50: {:.2}  (target: p50 <= 30 ms)",
        percentile(&full, 0.5).as_secs_f64() / percentile(&bare, 0.5).as_secs_f64().max(1e-9)
    );
    Ok(())
}
