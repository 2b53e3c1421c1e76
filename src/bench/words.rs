//! `lookalike bench --only words`: a search by words alone over a 10,000-item catalogue (by
//! default), through the whole service: the model thread reads the sentence (category and
//! MiniLM vector), the embedded index fuses tantivy's full-text ranking with a scan of the
//! items' sentence vectors, and colours and prices refine. The baseline in the same run is the
//! bare MiniLM pass over the same sentences. Item pictures' vectors and items' sentence vectors
//! are random unit vectors of the right sizes (the costs are the same; embedding 10,000 titles
//! with MiniLM would take minutes here); titles, descriptions, tags and prices are real text.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{millis, percentile};
use crate::config::{Config, Profile};
use crate::index::{Index, Item};
use crate::rng::Rng;
use crate::search::{Query, SearchService};
use crate::vision::data::FASHION_MNIST_CLASSES;
use crate::vision::{self, Backbone};

const BRANDS: [&str; 12] = ["Harbor", "Summit", "Breeze", "Alder", "Quill", "Tundra", "Saffi", "Rowan", "Atlas", "Perrin", "Hollis", "Marlow"];
const MATERIALS: [&str; 10] = ["canvas", "wool", "linen", "leather", "denim", "suede", "cotton", "velvet", "corduroy", "fleece"];
const COLOURS: [&str; 10] = ["red", "navy", "beige", "olive", "mustard", "grey", "white", "burgundy", "teal", "pink"];
const SENTENCES: [&str; 8] = [
    "red canvas tote",
    "a warm wool coat under 80",
    "striped linen shirt",
    "cheapest leather ankle boots first",
    "something soft to wear in winter",
    "navy denim trousers between 20 and 40",
    "do you have beige suede sandals?",
    "a summer dress for the beach",
];
/// MiniLM's sentence vectors.
const TEXT_DIM: usize = 384;

pub fn words(config: &Config, items: usize, rounds: usize, json_out: bool) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let root = scratch.path();
    let say = |line: String| if json_out { eprintln!("{line}") } else { println!("{line}") };
    let (models_dir, placement) = (config.models.dir.clone(), vision::placement(&config.models)?);
    let load = move || vision::backbones(Profile::Kit).into_iter().map(|s| Backbone::load(s, &models_dir, placement)).collect::<anyhow::Result<Vec<_>>>();
    // The service's key tells what the generation's vectors must mean; the index is written
    // under it, then a second service opens it.
    let key = super::index::service(config, root, Profile::Kit, load.clone())?.embedding_key();
    let built = Instant::now();
    let mut index = Index::build_described(key.clone(), root.join("catalogue"), 1, catalogue(items, key.dim), Vec::new())?;
    index.save(&root.join("index"))?;
    let written_s = built.elapsed().as_secs_f64();
    let (loaded, _) = Index::open_latest(&root.join("index"))?.ok_or_else(|| anyhow::anyhow!("the generation just written is not there"))?;
    let warming = Instant::now();
    loaded.warm();
    let full_text_ms = millis(warming.elapsed());
    drop(loaded);
    let service = super::index::service(config, root, Profile::Kit, load)?;
    let generation = service.generation_blocking()?;
    say(format!(
        "words: {} items in {} categories ({written_s:.1} s to write the generation, {full_text_ms:.0} ms to build its full-text index on loading); {} sentences x {rounds} rounds",
        generation.files(),
        generation.categories.len(),
        SENTENCES.len()
    ));

    let mut bare = bare_minilm(&service, rounds)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (mut total, mut text, mut search) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) * 5 {
        for sentence in SENTENCES {
            let started = Instant::now();
            let outcome = runtime.block_on(service.search(Query { text: Some(sentence.to_string()), k: Some(5), ..Query::default() }))?;
            total.push(started.elapsed());
            text.push(Duration::from_secs_f64(outcome.timings.text_ms / 1e3));
            search.push(Duration::from_secs_f64(outcome.timings.search_ms / 1e3));
            anyhow::ensure!(outcome.timings.vision_ms == 0.0, "a search by words ran a backbone");
        }
    }
    for list in [&mut total, &mut text, &mut search, &mut bare] {
        list.sort();
    }
    let p = |list: &[Duration], share: f64| millis(percentile(list, share));
    say(format!(
        "words alone at {items} items: p50 {:.1} ms, p95 {:.1} ms (reading the sentence {:.1} ms, the index {:.2} ms); bare MiniLM pass p50 {:.1} ms: {:.2}x",
        p(&total, 0.5),
        p(&total, 0.95),
        p(&text, 0.5),
        p(&search, 0.5),
        p(&bare, 0.5),
        p(&total, 0.5) / p(&bare, 0.5).max(1e-9)
    ));
    if json_out {
        let report = json!({
            "items": items,
            "query_ms_p50": p(&total, 0.5),
            "query_ms_p95": p(&total, 0.95),
            "text_ms_p50": p(&text, 0.5),
            "index_ms_p50": p(&search, 0.5),
            "bare_minilm_ms_p50": p(&bare, 0.5),
            "full_text_build_ms": full_text_ms,
            "machine": super::machine(),
        });
        println!("{report:#}");
    }
    Ok(())
}

/// `items` items spread over Fashion-MNIST's categories: a brand, a material and a noun in the
/// title, a colour in every other title, a description in half, tags, a price.
fn catalogue(items: usize, dim: usize) -> Vec<crate::index::embedded::DescribedRow> {
    let mut rng = Rng::new(27);
    (0..items)
        .map(|i| {
            let category = FASHION_MNIST_CLASSES[i % FASHION_MNIST_CLASSES.len()];
            let mut pick = |words: &[&'static str]| words[rng.below(words.len() as u64) as usize];
            let (brand, material, colour) = (pick(&BRANDS), pick(&MATERIALS), pick(&COLOURS));
            let noun = category.replace('-', " ");
            let mut item = Item::bare(format!("{category}/{i:05}.png"), category);
            item.metadata.title = Some(if i % 2 == 0 { format!("{colour} {brand} {material} {noun}") } else { format!("{brand} {material} {noun}") });
            item.metadata.description = (i % 2 == 1).then(|| format!("A {material} {noun} for every day, made to last."));
            item.metadata.tags = vec![material.to_string()];
            item.metadata.price = Some(format!("{:.2}", 5.0 + rng.unit_f64() * 145.0));
            (item, (rng.vector(dim, 0.5), rng.vector(TEXT_DIM, 0.5)))
        })
        .collect()
}

/// The bare MiniLM pass over each sentence, on the model thread.
fn bare_minilm(service: &SearchService, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    service.bench_probe(move |_, reader| {
        let mut times = Vec::new();
        for _ in 0..rounds.max(1) * 5 {
            for sentence in SENTENCES {
                let started = Instant::now();
                reader.sentence_vectors(&[sentence.to_string()])?;
                times.push(started.elapsed());
            }
        }
        Ok(times)
    })?
}
