//! `lookalike bench --only device`: the GPU path against the CPU, for both profiles, through
//! the whole service (a re-index in jobs of the GPU's batch, then queries sent together so that
//! they are classified as one batch). The CPU in f32 is the reference; CUDA in f32 must agree
//! with it within tolerance and give the same top-5, and half precision shows its cost.

use std::path::{Path, PathBuf};

use super::index::copy_catalogue;
use super::machine;
use crate::catalogue::labelled;
use crate::config::{Config, DeviceChoice, Precision, Profile};
use crate::search::{Query, SearchOutcome, SearchService};
use crate::vision::data::{export_fashion_mnist, FashionMnistExport, FASHION_MNIST_CLASSES};
use crate::vision::ensemble::{Head, HeadsInfo};
use crate::vision::{self, Backbone};

/// Each CUDA image's backbone features must have at least this cosine with the CPU's: cuDNN
/// convolutions run in TF32 by default, which moves features by about 1e-3 relative.
const MIN_FEATURE_COSINE: f64 = 0.999;
/// Largest difference of any vote probability between CUDA (f32) and the CPU.
const MAX_PROBABILITY_DELTA: f64 = 0.01;

/// One configuration's answers to the same catalogue and queries.
struct Answers {
    /// Per query, the backbones' pooled features as one unit vector.
    features: Vec<Vec<f32>>,
    /// Per query, every backbone's probabilities, concatenated.
    probabilities: Vec<Vec<f32>>,
    /// Per query, the vote's winning category.
    winners: Vec<usize>,
    top5: Vec<Vec<String>>,
    largest_batch: usize,
    index_rate: f64,
}

/// One row of the table: a configuration compared with the CPU's answers.
struct Comparison {
    min_feature_cosine: f64,
    max_probability_delta: f64,
    same_winner: usize,
    same_top5: usize,
    top5_overlap: f64,
}

pub fn device(config: &Config, catalogue_size: usize, query_count: usize) -> anyhow::Result<()> {
    anyhow::ensure!(tch::Cuda::is_available(), "libtorch sees no CUDA GPU: this check compares a GPU's answers with the CPU's, so run it on a machine with one");
    let scratch = tempfile::tempdir()?;
    let images = scratch.path().join("fashion-mnist");
    let per_class = (catalogue_size + query_count).div_ceil(10);
    export_fashion_mnist(&images, FashionMnistExport { train_per_class: 0, val_per_class: 0, test_per_class: per_class })?;
    let (_, examples, _) = labelled(&images.join("test"), None)?;
    let catalogue_per_class = catalogue_size / 10;
    let (catalogue, queries): (Vec<_>, Vec<_>) = examples.iter().enumerate().partition(|(n, _)| n % per_class < catalogue_per_class);
    let catalogue: Vec<&Path> = catalogue.into_iter().map(|(_, e)| e.path.as_path()).collect();
    let queries: Vec<Vec<u8>> = queries.into_iter().take(query_count).map(|(_, e)| std::fs::read(&e.path)).collect::<Result<_, _>>()?;
    copy_catalogue(&catalogue, &scratch.path().join("catalogue"))?;

    println!("CUDA against the CPU: {}", machine());
    println!("catalogue: {} Fashion-MNIST images; {} held-out queries, sent together; random heads (seeded, the same on every device)", catalogue.len(), queries.len());
    println!(
        "{:<9} {:<10} {:>14} {:>12} {:>12} {:>14} {:>13} {:>13} {:>13}",
        "profile", "run", "min feat. cos", "max |dp|", "same vote", "same top-5", "top-5 overlap", "largest batch", "index img/s"
    );
    let mut failures = Vec::new();
    for profile in [Profile::Kit, Profile::Chapter] {
        let setup = profile_setup(config, scratch.path(), profile)?;
        let runs = [("cpu f32", DeviceChoice::Cpu, Precision::F32), ("cuda f32", DeviceChoice::Cuda, Precision::F32), ("cuda f16", DeviceChoice::Cuda, Precision::F16)];
        let mut reference: Option<Answers> = None;
        for (name, device, precision) in runs {
            let mut run_config = setup.clone();
            run_config.models.device = device;
            run_config.models.precision = precision;
            run_config.index.dir = scratch.path().join(format!("index-{profile}-{}", name.replace(' ', "-")));
            let answers = answer(&run_config, &queries)?;
            let cells = match &reference {
                None => format!("{:>14} {:>12} {:>12} {:>14} {:>13}", "reference", "-", "-", "-", "-"),
                Some(cpu) => {
                    let c = compare(cpu, &answers);
                    let n = queries.len();
                    if precision == Precision::F32 && (c.min_feature_cosine < MIN_FEATURE_COSINE || c.max_probability_delta > MAX_PROBABILITY_DELTA || c.same_top5 < n) {
                        failures.push(format!("{profile} {name}"));
                    }
                    format!(
                        "{:>14.6} {:>12.5} {:>12} {:>14} {:>12.1}%",
                        c.min_feature_cosine,
                        c.max_probability_delta,
                        format!("{}/{n}", c.same_winner),
                        format!("{}/{n}", c.same_top5),
                        100.0 * c.top5_overlap
                    )
                }
            };
            println!("{:<9} {:<10} {cells} {:>13} {:>13.1}", profile.as_str(), name, answers.largest_batch, answers.index_rate);
            if reference.is_none() {
                reference = Some(answers);
            }
        }
    }
    println!("tolerance for CUDA f32: every feature cosine >= {MIN_FEATURE_COSINE}, every |dp| <= {MAX_PROBABILITY_DELTA}, every top-5 identical (f16 is shown, not held to it)");
    anyhow::ensure!(failures.is_empty(), "CUDA and the CPU disagree beyond tolerance: {}", failures.join(", "));
    Ok(())
}

/// The config of one profile: its weights (the chapter's random, written once), seeded random
/// heads, the shared catalogue.
fn profile_setup(config: &Config, scratch: &Path, profile: Profile) -> anyhow::Result<Config> {
    let mut setup = config.clone();
    setup.models.profile = profile;
    setup.catalogue.dir = scratch.join("catalogue");
    setup.catalogue.metadata = PathBuf::new();
    if profile == Profile::Chapter && !vision::backbones(profile).iter().all(|s| config.models.dir.join(s.weights).exists()) {
        setup.models.dir = scratch.join("chapter-models");
        for spec in vision::backbones(profile) {
            tch::manual_seed(0);
            let path = setup.models.dir.join(spec.weights);
            std::fs::create_dir_all(path.parent().expect("a weights file has a folder"))?;
            Backbone::untrained(spec, tch::Device::Cpu).vars().save(&path)?;
        }
    }
    setup.models.heads_dir = scratch.join(format!("heads-{profile}"));
    std::fs::create_dir_all(&setup.models.heads_dir)?;
    let specs = vision::backbones(profile);
    for spec in &specs {
        tch::manual_seed(1);
        Head::new(spec.feature_dim, FASHION_MNIST_CLASSES.len() as i64, tch::Device::Cpu).save_atomically(&crate::files::heads::head_path(&setup.models.heads_dir, spec.id))?;
    }
    let mut classes: Vec<String> = FASHION_MNIST_CLASSES.iter().map(|c| c.to_string()).collect();
    classes.sort();
    let info = HeadsInfo { profile, classes, backbones: specs.iter().map(|s| s.id.to_string()).collect() };
    crate::files::write_atomically(&crate::files::heads::info_path(&setup.models.heads_dir), &serde_json::to_vec_pretty(&info)?)?;
    Ok(setup)
}

/// Indexes the catalogue and answers every query with one configuration.
fn answer(config: &Config, queries: &[Vec<u8>]) -> anyhow::Result<Answers> {
    let mut config = config.clone();
    config.search.max_concurrent_queries = queries.len().max(1);
    config.search.query_timeout_ms = 600_000;
    let service = std::sync::Arc::new(SearchService::start(&config)?);
    service.warm_up()?;
    let started = std::time::Instant::now();
    let summary = service.upkeep().reindex(&mut |_| {})?;
    let index_rate = summary.embedded as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(summary.failed.is_empty(), "indexing failed for {:?}", summary.failed);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let outcomes: Vec<SearchOutcome> = runtime.block_on(async {
        let tasks: Vec<_> = queries
            .iter()
            .map(|image| {
                let (service, image) = (service.clone(), image.clone());
                tokio::spawn(async move { service.search(Query { image, ..Query::default() }).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await??);
        }
        anyhow::Ok(outcomes)
    })?;
    let limits = crate::imaging::ImageLimits::from_config(&config.limits);
    let decoded = queries.iter().map(|q| crate::imaging::decode(q, limits)).collect::<Result<Vec<_>, _>>()?;
    let features = service.pooled_features(decoded)?;
    Ok(Answers {
        features,
        probabilities: outcomes.iter().map(|o| o.vote.backbones.iter().flat_map(|b| b.probabilities.iter().copied()).collect()).collect(),
        winners: outcomes.iter().map(|o| o.vote.tally().winner().0).collect(),
        top5: outcomes.iter().map(|o| o.hits.iter().map(|h| h.item.id.clone()).collect()).collect(),
        largest_batch: outcomes.iter().map(|o| o.timings.batch).max().unwrap_or(0),
        index_rate,
    })
}

fn compare(cpu: &Answers, other: &Answers) -> Comparison {
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
    let min_feature_cosine = cpu.features.iter().zip(&other.features).map(|(a, b)| cosine(a, b)).fold(1.0, f64::min);
    let max_probability_delta = cpu.probabilities.iter().zip(&other.probabilities).flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64)).fold(0.0, f64::max);
    let same_winner = cpu.winners.iter().zip(&other.winners).filter(|(a, b)| a == b).count();
    let same_top5 = cpu.top5.iter().zip(&other.top5).filter(|(a, b)| a == b).count();
    let shared: usize = cpu.top5.iter().zip(&other.top5).map(|(a, b)| a.iter().filter(|id| b.contains(id)).count()).sum();
    let total: usize = cpu.top5.iter().map(Vec::len).sum();
    Comparison { min_feature_cosine, max_probability_delta, same_winner, same_top5, top5_overlap: shared as f64 / total.max(1) as f64 }
}
