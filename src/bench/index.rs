//! `lookalike bench --only index`: indexing a 1,000-image catalogue and querying it, against the
//! chapter's method (re-embedding the catalogue for every query); indexing with the chapter
//! profile against a python torchvision pipeline doing the same forward passes; then the search
//! over 100,000 and 1,000,000 vectors ([`super::search`]).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::search::SearchSizes;
use super::{machine, millis, percentile};
use crate::catalogue::labelled;
use crate::config::{Config, Profile};
use crate::search::{Query, SearchService};
use crate::vision::data::{export_fashion_mnist, FashionMnistExport, FASHION_MNIST_CLASSES};
use crate::vision::ensemble::{forward_batch, Ensemble, Head, HeadsInfo};
use crate::vision::{self, Backbone};

/// Images the chapter profile indexes on each side of the python comparison.
const PYTHON_IMAGES: usize = 24;

/// Prints a line per figure (to stderr with `json`, where stdout gets one JSON object).
pub fn index(config: &Config, rounds: usize, catalogue_size: usize, python: bool, json: bool, search: &SearchSizes) -> anyhow::Result<()> {
    let rounds = rounds.max(1);
    let say = |line: String| if json { eprintln!("{line}") } else { println!("{line}") };
    say(format!("index and search, {}", machine()));
    let scratch = tempfile::tempdir()?;
    let images = scratch.path().join("fashion-mnist");
    let per_class = catalogue_size.div_ceil(10).max(PYTHON_IMAGES.div_ceil(10));
    export_fashion_mnist(&images, FashionMnistExport { train_per_class: 0, val_per_class: 0, test_per_class: per_class })?;
    let (_, examples, _) = labelled(&images.join("test"), None)?;

    kit_catalogue(config, scratch.path(), &examples.iter().map(|e| e.path.as_path()).collect::<Vec<_>>(), catalogue_size, rounds, &say)?;
    if python {
        let sample: Vec<&Path> = examples.iter().step_by(examples.len() / PYTHON_IMAGES).take(PYTHON_IMAGES).map(|e| e.path.as_path()).collect();
        chapter_against_python(config, scratch.path(), &sample, &say)?;
    } else {
        say("(python baseline skipped: --no-python)".into());
    }
    // Last: its matrices would otherwise sit in memory during the model timings.
    let mut report = super::search::search(config, search, &say)?;
    report["machine"] = machine().into();
    if json {
        println!("{report:#}");
    }
    Ok(())
}

/// A service over a scratch catalogue, with `backbones` and random heads (timing only).
pub(super) fn service(config: &Config, root: &Path, profile: Profile, backbones: impl FnOnce() -> anyhow::Result<Vec<Backbone>> + Send + 'static) -> anyhow::Result<SearchService> {
    let mut config = config.clone();
    config.models.profile = profile;
    config.catalogue.dir = root.join("catalogue");
    // A metadata file the caller keeps in the scratch root (the import benchmark's) stays; the
    // operator's, naming other items, does not.
    if !config.catalogue.metadata.starts_with(root) {
        config.catalogue.metadata = Default::default();
    }
    config.index.dir = root.join("index");
    config.models.heads_dir = root.join("no-heads");
    // The ensemble below has no clip tower: it indexes the backbones' vectors (`bench --only
    // vision` times the clip embedder).
    if config.index.embedding == crate::config::EmbeddingSource::Clip {
        config.index.embedding = crate::config::EmbeddingSource::Combined;
    }
    let service = SearchService::with_ensemble(&config, move || {
        let backbones = backbones()?;
        let device = backbones[0].device;
        let heads = backbones.iter().map(|b| Head::new(b.spec.feature_dim, FASHION_MNIST_CLASSES.len() as i64, device)).collect();
        let info = HeadsInfo { profile, classes: FASHION_MNIST_CLASSES.iter().map(|c| c.to_string()).collect(), backbones: backbones.iter().map(|b| b.spec.id.to_string()).collect() };
        Ok(Ensemble { backbones, heads, info, descriptor: Default::default(), clip: None })
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
    let summary = service.upkeep().reindex(&mut |progress| embedding = progress.elapsed_s)?;
    anyhow::ensure!(summary.failed.is_empty(), "indexing failed for {:?}", summary.failed);
    Ok((summary.embedded, embedding, summary.seconds))
}

fn kit_catalogue(config: &Config, scratch: &Path, images: &[&Path], size: usize, rounds: usize, say: &dyn Fn(String)) -> anyhow::Result<()> {
    let root = scratch.join("kit");
    let size = size.min(images.len());
    copy_catalogue(&images[..size], &root.join("catalogue"))?;
    let (models_dir, placement) = (config.models.dir.clone(), vision::placement(&config.models)?);
    let service = service(config, &root, Profile::Kit, move || vision::backbones(Profile::Kit).into_iter().map(|s| Backbone::load(s, &models_dir, placement)).collect())?;
    let (embedded, embedding_s, total_s) = timed_reindex(&service)?;
    say(format!("indexing the kit profile: {embedded} Fashion-MNIST images in {total_s:.1} s = {:.1} images/s (embedding {:.1} images/s)", embedded as f64 / total_s, embedded as f64 / embedding_s));

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
    say(format!(
        "query at {size} catalogue images: p50 {:.1} ms, p99 {:.1} ms; the chapter's method (re-embedding the catalogue per query) {:.1} s: {:.0}x slower",
        millis(percentile(&latencies, 0.5)),
        millis(percentile(&latencies, 0.99)),
        chapter.as_secs_f64(),
        chapter.as_secs_f64() / percentile(&latencies, 0.5).as_secs_f64()
    ));
    Ok(())
}

fn chapter_against_python(config: &Config, scratch: &Path, images: &[&Path], say: &dyn Fn(String)) -> anyhow::Result<()> {
    let root = scratch.join("chapter");
    let weights = root.join("weights");
    let python_rate = python_baseline(&root, &weights, images, vision::device(config.models.device)?)?.rate();
    copy_catalogue(images, &root.join("catalogue"))?;
    let service = service(config, &root, Profile::Chapter, chapter_backbones(config, weights)?)?;
    let (embedded, _, total_s) = timed_reindex(&service)?;
    let rate = embedded as f64 / total_s;
    say(format!(
        "indexing the chapter profile (VGG16 + ResNet50 + InceptionV3, random weights), {embedded} images: lookalike {rate:.2} images/s, python torchvision eager {python_rate:.2} images/s: {:.2}x  (target >= 1.0x)",
        rate / python_rate
    ));
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
