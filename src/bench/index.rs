//! `lookalike bench --only index`: exact search over 10,000 and 100,000 vectors against libtorch's
//! matrix-vector product; indexing a 1,000-image catalogue and querying it, against the
//! chapter's method (re-embedding the catalogue for every query); and indexing with the chapter
//! profile against a python torchvision pipeline doing the same forward passes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{machine, millis, percentile};
use crate::config::{Config, Metric, Profile};
use crate::index::{EmbeddingKey, Index, Item, SearchParams};
use crate::search::{Query, SearchService};
use crate::vision::data::{export_fashion_mnist, labelled, splitmix64, FashionMnistExport, FASHION_MNIST_CLASSES};
use crate::vision::ensemble::{forward_batch, Ensemble, Head, HeadsInfo};
use crate::vision::{self, Backbone};

/// Vectors in the exact-search measurement.
/// Catalogue sizes the exact search is timed at: the retrieval target's and a large shop's.
const SEARCH_ROWS: [usize; 2] = [10_000, 100_000];
/// Images the chapter profile indexes on each side of the python comparison.
const PYTHON_IMAGES: usize = 24;

pub fn index(config: &Config, rounds: usize, catalogue_size: usize, python: bool) -> anyhow::Result<()> {
    let rounds = rounds.max(1);
    println!("index and search, {}", machine());
    let scratch = tempfile::tempdir()?;
    let images = scratch.path().join("fashion-mnist");
    let per_class = catalogue_size.div_ceil(10).max(PYTHON_IMAGES.div_ceil(10));
    export_fashion_mnist(&images, FashionMnistExport { train_per_class: 0, val_per_class: 0, test_per_class: per_class })?;
    let (_, examples, _) = labelled(&images.join("test"), None)?;

    kit_catalogue(config, scratch.path(), &examples.iter().map(|e| e.path.as_path()).collect::<Vec<_>>(), catalogue_size, rounds)?;
    if python {
        let sample: Vec<&Path> = examples.iter().step_by(examples.len() / PYTHON_IMAGES).take(PYTHON_IMAGES).map(|e| e.path.as_path()).collect();
        chapter_against_python(config, scratch.path(), &sample)?;
    } else {
        println!("(python baseline skipped: --no-python)");
    }
    // Last: its 1.2 GB matrix would otherwise sit in memory during the model timings.
    SEARCH_ROWS.iter().try_for_each(|&rows| exact_search(config, rows, rounds))
}

fn exact_search(config: &Config, count: usize, rounds: usize) -> anyhow::Result<()> {
    let dim = vision::ensemble::embedding_dim(config.index.embedding, config.models.profile);
    let mut state = 7u64;
    let unit = |state: &mut u64| {
        let v: Vec<f32> = (0..dim).map(|_| (splitmix64(state) >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let rows: Vec<(Item, Vec<f32>)> = (0..count)
        .map(|n| {
            let item =
                Item { id: format!("all/{n}"), path: Default::default(), category: "all".into(), hash: n.to_string(), size: 0, modified_ns: 0, duplicates: Vec::new(), metadata: Default::default() };
            (item, unit(&mut state))
        })
        .collect();
    let matrix = tch::Tensor::from_slice(&rows.iter().flat_map(|(_, v)| v.iter().copied()).collect::<Vec<f32>>()).view([count as i64, dim as i64]);
    let key = EmbeddingKey { profile: "bench".into(), backbones: Vec::new(), source: "random".into(), pooling: String::new(), weights_sha256: String::new(), dim };
    let index = Index::build(key, Default::default(), 1, rows, Vec::new())?;
    let params = SearchParams { k: 5, offset: 0, metric: Metric::Cosine, min_similarity: -1.0, near_duplicate_cosine: config.index.near_duplicate_cosine };
    let categories = ["all".to_string()];
    let (mut ours, mut torch) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(5) * 4 {
        let query = unit(&mut state);
        let started = Instant::now();
        let page = index.search(&query, &categories, &params)?;
        ours.push(started.elapsed());
        let tensor = tch::Tensor::from_slice(&query);
        let started = Instant::now();
        let (_, best) = matrix.mv(&tensor).topk(5, 0, true, true);
        torch.push(started.elapsed());
        if round == 0 {
            anyhow::ensure!(best.int64_value(&[0]) as usize == page.hits[0].item.id[4..].parse::<usize>()?, "the exact search and libtorch disagree on the nearest vector");
        }
    }
    ours.sort();
    torch.sort();
    println!(
        "exact top-5 over {count} x {dim} vectors ({} vectors): p50 {:.1} ms, p99 {:.1} ms; libtorch mv + topk on the same matrix p50 {:.1} ms (ratio {:.2})",
        config.index.embedding.as_str(),
        millis(percentile(&ours, 0.5)),
        millis(percentile(&ours, 0.99)),
        millis(percentile(&torch, 0.5)),
        percentile(&ours, 0.5).as_secs_f64() / percentile(&torch, 0.5).as_secs_f64()
    );
    Ok(())
}

/// A service over a scratch catalogue, with `backbones` and random heads (timing only).
pub(super) fn service(config: &Config, root: &Path, profile: Profile, backbones: impl FnOnce() -> anyhow::Result<Vec<Backbone>> + Send + 'static) -> anyhow::Result<SearchService> {
    let mut config = config.clone();
    config.models.profile = profile;
    config.catalogue.dir = root.join("catalogue");
    config.catalogue.metadata = Default::default();
    config.index.dir = root.join("index");
    config.models.heads_dir = root.join("no-heads");
    let service = SearchService::with_ensemble(&config, move || {
        let backbones = backbones()?;
        let device = backbones[0].device;
        let heads = backbones.iter().map(|b| Head::new(b.spec.feature_dim, FASHION_MNIST_CLASSES.len() as i64, device)).collect();
        let info = HeadsInfo { profile, classes: FASHION_MNIST_CLASSES.iter().map(|c| c.to_string()).collect(), backbones: backbones.iter().map(|b| b.spec.id.to_string()).collect() };
        Ok(Ensemble { backbones, heads, info })
    })?;
    service.warm_up()?;
    Ok(service)
}

pub(super) fn copy_catalogue(images: &[&Path], catalogue: &Path) -> anyhow::Result<()> {
    for path in images {
        let category = path.parent().and_then(Path::file_name).context("category folder")?;
        std::fs::create_dir_all(catalogue.join(category))?;
        std::fs::copy(path, catalogue.join(category).join(path.file_name().context("file name")?))?;
    }
    Ok(())
}

/// Re-indexes and returns (images embedded, seconds spent embedding, seconds in all).
pub(super) fn timed_reindex(service: &SearchService) -> anyhow::Result<(usize, f64, f64)> {
    let mut embedding = 0.0;
    let summary = service.reindex(&mut |progress| embedding = progress.elapsed_s)?;
    anyhow::ensure!(summary.failed.is_empty(), "indexing failed for {:?}", summary.failed);
    Ok((summary.embedded, embedding, summary.seconds))
}

fn kit_catalogue(config: &Config, scratch: &Path, images: &[&Path], size: usize, rounds: usize) -> anyhow::Result<()> {
    let root = scratch.join("kit");
    let size = size.min(images.len());
    copy_catalogue(&images[..size], &root.join("catalogue"))?;
    let (models_dir, placement) = (config.models.dir.clone(), vision::placement(&config.models)?);
    let service = service(config, &root, Profile::Kit, move || vision::backbones(Profile::Kit).into_iter().map(|s| Backbone::load(s, &models_dir, placement)).collect())?;
    let (embedded, embedding_s, total_s) = timed_reindex(&service)?;
    println!("indexing the kit profile: {embedded} Fashion-MNIST images in {total_s:.1} s = {:.1} images/s (embedding {:.1} images/s)", embedded as f64 / total_s, embedded as f64 / embedding_s);

    let runtime = tokio::runtime::Runtime::new()?;
    let mut latencies = Vec::new();
    for round in 0..rounds * 4 {
        let image = std::fs::read(images[(round * 37) % size])?;
        let started = Instant::now();
        runtime.block_on(service.search(Query { image, ..Query::default() }))?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    // The chapter's method embeds every catalogue image again for each query, then compares:
    // its query costs the embedding time just measured, plus one query's own work.
    let chapter = Duration::from_secs_f64(embedding_s) + percentile(&latencies, 0.5);
    println!(
        "query at {size} catalogue images: p50 {:.1} ms, p99 {:.1} ms; the chapter's method (re-embedding the catalogue per query) {:.1} s: {:.0}x slower",
        millis(percentile(&latencies, 0.5)),
        millis(percentile(&latencies, 0.99)),
        chapter.as_secs_f64(),
        chapter.as_secs_f64() / percentile(&latencies, 0.5).as_secs_f64()
    );
    Ok(())
}

fn chapter_against_python(config: &Config, scratch: &Path, images: &[&Path]) -> anyhow::Result<()> {
    let root = scratch.join("chapter");
    let weights = root.join("weights");
    let python_rate = python_baseline(&root, &weights, images, vision::device(config.models.device)?)?.rate();
    copy_catalogue(images, &root.join("catalogue"))?;
    let service = service(config, &root, Profile::Chapter, chapter_backbones(config, weights)?)?;
    let (embedded, _, total_s) = timed_reindex(&service)?;
    let rate = embedded as f64 / total_s;
    println!(
        "indexing the chapter profile (VGG16 + ResNet50 + InceptionV3, random weights), {embedded} images: lookalike {rate:.2} images/s, python torchvision eager {python_rate:.2} images/s: {:.2}x  (target >= 1.0x)",
        rate / python_rate
    );
    Ok(())
}

/// What the python torchvision pipeline measured.
pub(super) struct PythonBaseline {
    pub images: usize,
    pub seconds: f64,
    /// Decode, preprocessing and three forward passes, per image.
    pub per_image_ms: Vec<f64>,
}

impl PythonBaseline {
    pub fn rate(&self) -> f64 {
        self.images as f64 / self.seconds
    }
}

/// Runs the python torchvision pipeline on `images`, on `device` in lookalike's batch size
/// there; it also writes the random chapter weights into `weights` for lookalike to load.
pub(super) fn python_baseline(root: &Path, weights: &Path, images: &[&Path], device: tch::Device) -> anyhow::Result<PythonBaseline> {
    let script = root.join("index_baseline.py");
    std::fs::create_dir_all(root)?;
    std::fs::write(&script, include_str!("index_baseline.py"))?;
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(weights)
        .arg(tch::get_num_threads().to_string())
        .arg(match device {
            tch::Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".to_string(),
        })
        .arg(forward_batch(device).to_string())
        .args(images)
        .output()
        .context("cannot run python3 for the baseline")?;
    anyhow::ensure!(output.status.success(), "the python baseline failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(output.stdout.trim_ascii()).context("the python baseline printed no JSON")?;
    Ok(PythonBaseline {
        images: report["images"].as_u64().unwrap_or(0) as usize,
        seconds: report["seconds"].as_f64().unwrap_or(f64::INFINITY),
        per_image_ms: report["per_image_ms"].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default(),
    })
}

/// The chapter profile's backbones with the weights python wrote (random; timing only).
pub(super) fn chapter_backbones(config: &Config, weights: std::path::PathBuf) -> anyhow::Result<impl FnOnce() -> anyhow::Result<Vec<Backbone>> + Send + 'static> {
    let placement = vision::placement(&config.models)?;
    Ok(move || {
        vision::backbones(Profile::Chapter)
            .into_iter()
            .map(|spec| {
                let mut backbone = Backbone::untrained(spec, placement);
                backbone.load_weights(&weights.join(format!("{}.safetensors", spec.id)))?;
                Ok(backbone)
            })
            .collect()
    })
}
