//! `lookalike bench`: every figure is measured in one run, next to a baseline measured in the
//! same process, and printed as a ratio.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{Config, Profile};

mod device;
mod feedback;
mod import;
mod index;
mod postgres;
mod search;
mod suite;
mod words;
use crate::text::{Embedding, IntentReader, TextModelPaths, Vocabulary};
use crate::worker::ModelWorker;
pub use device::device;
pub use feedback::feedback;
pub use import::import;
pub use index::index;
pub use postgres::postgres;
pub use search::{search, SearchSizes};
pub use suite::suite;
pub use words::words;

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

/// The three bare forward passes on ready (1, 3, H, W) tensors, each forced to finish: the
/// baseline every query overhead is measured against.
fn bare_forwards(backbones: &[crate::vision::Backbone], tensors: &[tch::Tensor]) -> Duration {
    let started = Instant::now();
    for (backbone, tensor) in backbones.iter().zip(tensors) {
        std::hint::black_box(backbone.forward(tensor).features.sum(tch::Kind::Float).double_value(&[]));
    }
    started.elapsed()
}

/// The machine figures were measured on, for every table's heading.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gpu = if tch::Cuda::is_available() {
        // libtorch does not name the card; nvidia-smi does, where it is installed.
        let name = std::process::Command::new("nvidia-smi").args(["--query-gpu=name,memory.total", "--format=csv,noheader", "--id=0"]).output().ok().filter(|o| o.status.success());
        match name {
            Some(output) => format!("{} ({} CUDA device(s))", String::from_utf8_lossy(&output.stdout).trim(), tch::Cuda::device_count()),
            None => format!("{} CUDA device(s)", tch::Cuda::device_count()),
        }
    } else {
        "no GPU".to_string()
    };
    format!("{} ({cores} cores), {gpu}, {} libtorch threads", cpu.unwrap_or_else(|| "unknown CPU".into()), tch::get_num_threads())
}

/// Intent extraction per sentence with the configured methods, against the bare MiniLM forward
/// pass of the same sentence on the same thread; `sentences`: a labelled file to read instead
/// of [`SENTENCES`].
pub fn intent(config: &Config, rounds: usize, sentences: Option<&Path>) -> anyhow::Result<()> {
    let sentences: Vec<String> = match sentences {
        Some(path) => crate::text::labelled_sentences(path)?.into_iter().map(|(sentence, _, _)| sentence).collect(),
        None => SENTENCES.iter().map(|s| s.to_string()).collect(),
    };
    let started = Instant::now();
    let vocabulary = Vocabulary::from_config(&config.text)?;
    let vocabulary_load = started.elapsed();
    let categories = vocabulary.category.len();
    let text_config = config.text.clone();
    let paths = TextModelPaths::new(&config.models.dir, &config.text);
    let methods = config.text.methods.clone();
    let worker = ModelWorker::spawn(move || {
        let baseline = Embedding::load(&paths.minilm_dir, &vocabulary, &text_config)?;
        let started = Instant::now();
        let reader = IntentReader::load(vocabulary, &text_config, &methods, &paths)?;
        Ok(((reader, started.elapsed()), baseline))
    })?;
    let count = sentences.len();
    let rounds = rounds.max(1);
    let (full, bare, load) = worker.run_blocking(move |((reader, load), baseline): &mut ((IntentReader, Duration), Embedding)| -> anyhow::Result<_> {
        for sentence in &sentences {
            reader.read(sentence)?;
            baseline.encode(sentence)?;
        }
        let (mut full, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for sentence in &sentences {
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
        Ok((full, bare, *load))
    })??;
    println!("intent extraction, {categories} categories, methods {:?}, {count} sentences x {rounds} rounds, {} libtorch threads", config.text.methods, tch::get_num_threads());
    println!("start: the vocabulary with WordNet {:.2} s; the methods {:.2} s (MiniLM, every category's lines encoded, the temperature calibrated)", vocabulary_load.as_secs_f64(), load.as_secs_f64());
    println!("{:<38} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!("{:<38} {:>9.2} {:>9.2}", "intent (all configured methods)", millis(percentile(&full, 0.5)), millis(percentile(&full, 0.99)));
    println!("{:<38} {:>9.2} {:>9.2}", "baseline: bare MiniLM encode", millis(percentile(&bare, 0.5)), millis(percentile(&bare, 0.99)));
    println!("ratio intent / bare encode at p50: {:.2}  (target: p50 <= 10 ms)", percentile(&full, 0.5).as_secs_f64() / percentile(&bare, 0.5).as_secs_f64().max(1e-9));
    Ok(())
}

/// What the clip embedder adds to a query: the photo query with its image tower, and its text
/// tower on a shopper's sentence (empty when the vocabulary is not installed).
struct ClipTimings {
    query: Vec<Duration>,
    /// The same with its linear layers in 8 bits (`models.clip_int8`; CPU only, else empty).
    int8: Vec<Duration>,
    /// Whether the image tower had its real weights (else ViT-B/32 with random ones).
    real: bool,
    sentence: Vec<Duration>,
}

impl ClipTimings {
    /// Its rows of the vision table, each query against `kit`, the kit query of the same run.
    fn print(&self, profile: Profile, kit: &[Duration]) {
        let row = |name: &str, times: &[Duration]| println!("{name:<58} {:>9.1} {:>9.1}", millis(percentile(times, 0.5)), millis(percentile(times, 0.99)));
        let ratio = |times: &[Duration]| percentile(times, 0.5).as_secs_f64() / percentile(kit, 0.5).as_secs_f64();
        let weights = if self.real { "its weights" } else { "random ViT-B/32 weights: not installed" };
        row(&format!("the same + the clip image tower, f32 ({weights})"), &self.query);
        println!("clip embedder query, f32 / {profile} query at p50: {:.2}x  (target <= 1.5x)", ratio(&self.query));
        if !self.int8.is_empty() {
            row("the same, the clip tower's linear layers in 8 bits (models.clip_int8)", &self.int8);
            println!("clip embedder query, int8 / {profile} query at p50: {:.2}x  (target <= 1.5x)", ratio(&self.int8));
        }
        if !self.sentence.is_empty() {
            row("the clip text tower, one shopper's sentence, CPU (random weights)", &self.sentence);
        }
    }
}

/// The same query with the clip embedder's image tower as well (index.embedding = "clip"): its
/// real weights when installed, else ViT-B/32 with random ones (the same arithmetic); and its
/// text tower on the CPU, where words-only queries run it.
fn clip_timings(
    ensemble: &mut crate::vision::ensemble::Ensemble,
    decoded: &[image::RgbImage],
    models_dir: &std::path::Path,
    rounds: usize,
    run: impl Fn(&crate::vision::ensemble::Ensemble, &image::RgbImage) -> anyhow::Result<()>,
) -> anyhow::Result<ClipTimings> {
    use crate::clip::{Clip, Shape, Tokenizer, Towers};
    let device = ensemble.backbones[0].device;
    let (clip, real) = match crate::clip::weights(models_dir) {
        Ok(path) => (Clip::load(&path, None, Towers::Image, device)?, true),
        Err(_) => (Clip::untrained(Shape::VIT_B_32, Towers::Image, None, device), false),
    };
    ensemble.clip = Some(clip);
    let time_queries = |ensemble: &mut crate::vision::ensemble::Ensemble| -> anyhow::Result<Vec<Duration>> {
        run(ensemble, &decoded[0])?;
        let mut times = Vec::new();
        for _ in 0..rounds {
            for image in decoded {
                let started = Instant::now();
                run(ensemble, image)?;
                times.push(started.elapsed());
            }
        }
        times.sort();
        Ok(times)
    };
    let query = time_queries(ensemble)?;
    ensemble.clip.as_mut().expect("set above").quantise_image_tower()?;
    let int8 = if device == tch::Device::Cpu { time_queries(ensemble)? } else { Vec::new() };
    ensemble.clip = None;
    let mut sentence = Vec::new();
    if let Ok(tokenizer) = Tokenizer::load(&models_dir.join(crate::clip::VOCABULARY)) {
        let text = Clip::untrained(Shape::VIT_B_32, Towers::Text, Some(tokenizer), tch::Device::Cpu);
        for _ in 0..rounds {
            for line in SENTENCES {
                let started = Instant::now();
                let _ = std::hint::black_box(text.embed_texts(&[line.to_string()])?);
                sentence.push(started.elapsed());
            }
        }
        sentence.sort();
    }
    Ok(ClipTimings { query, int8, real, sentence })
}

/// The ensemble on one image, from encoded bytes to the vote, against the three bare forward
/// passes on ready tensors; and one head-training epoch over 2,700 cached feature vectors (the
/// chapter's dataset size).
pub fn vision(config: &Config, rounds: usize) -> anyhow::Result<()> {
    use crate::imaging::{self, ImageLimits};
    use crate::vision::ensemble::{Ensemble, Head, HeadsInfo};
    use crate::vision::train::{train_epoch, EpochBatches};
    use crate::vision::{self as vision_mod, Backbone};
    use tch::{Kind, Tensor};

    let profile = config.models.profile;
    let models_dir = config.models.dir.clone();
    let limits = ImageLimits::from_config(&config.limits);
    let photos: Vec<Vec<u8>> = ["chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|name| std::fs::read(models_dir.join("kit/photos").join(name)))
        .collect::<Result<_, _>>()
        .map_err(|err| anyhow::anyhow!("sample photos missing ({err}): run `make setup`"))?;
    let device_choice = config.models.device;
    let clip_models = models_dir.clone();
    let worker = ModelWorker::spawn(move || {
        let device = vision_mod::device(device_choice)?;
        let backbones = vision_mod::backbones(profile).into_iter().map(|spec| Backbone::load(spec, &models_dir, device)).collect::<anyhow::Result<Vec<_>>>()?;
        let classes: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
        let heads = backbones.iter().map(|b| Head::new(b.spec.feature_dim, 10, device)).collect();
        let info = HeadsInfo { profile, classes, backbones: backbones.iter().map(|b| b.spec.id.to_string()).collect() };
        Ok(Ensemble { backbones, heads, info, descriptor: Default::default(), clip: None })
    })?;
    let rounds = rounds.max(1);
    let (ensemble_times, bare_times, decode_times, epoch_times, device, clip) = worker.run_blocking(move |ensemble: &mut Ensemble| -> anyhow::Result<_> {
        let ready: Vec<Vec<Tensor>> = photos
            .iter()
            .map(|bytes| {
                let image = imaging::decode(bytes, limits)?;
                Ok(ensemble.backbones.iter().map(|b| b.spec.preprocess.batch(std::slice::from_ref(&image), b.device)).collect())
            })
            .collect::<anyhow::Result<_>>()?;
        let decoded: Vec<image::RgbImage> = photos.iter().map(|bytes| imaging::decode(bytes, limits)).collect::<Result<_, _>>()?;
        let run_ensemble = |ensemble: &Ensemble, image: &image::RgbImage| -> anyhow::Result<()> {
            let classified = ensemble.classify(std::slice::from_ref(image), true)?;
            std::hint::black_box(classified[0].vote.tally());
            Ok(())
        };
        let run_bare = |tensors: &[Tensor]| bare_forwards(&ensemble.backbones, tensors);
        for (image, tensors) in decoded.iter().zip(&ready) {
            run_ensemble(ensemble, image)?;
            run_bare(tensors);
        }
        let (mut full, mut bare, mut decode) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            for ((bytes, image), tensors) in photos.iter().zip(&decoded).zip(&ready) {
                let started = Instant::now();
                std::hint::black_box(imaging::decode(bytes, limits)?);
                decode.push(started.elapsed());
                let started = Instant::now();
                run_ensemble(ensemble, image)?;
                full.push(started.elapsed());
                bare.push(run_bare(tensors));
            }
        }
        full.sort();
        bare.sort();
        decode.sort();

        let clip = clip_timings(ensemble, &decoded, &clip_models, rounds, run_ensemble)?;

        // One epoch of the three heads over 2,700 cached images, 10 classes, batch 64.
        let device = ensemble.backbones[0].device;
        let stacked: Vec<Tensor> = ensemble.backbones.iter().map(|b| Tensor::randn([1, 2700, b.spec.feature_dim], (Kind::Float, device))).collect();
        let labels: Vec<i64> = (0..2700).map(|i| i % 10).collect();
        let rows: Vec<i64> = (0..2700).collect();
        let heads: Vec<Head> = ensemble.backbones.iter().map(|b| Head::new(b.spec.feature_dim, 10, device)).collect();
        let mut optimizers = heads.iter().map(|h| h.optimizer(1e-3)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut epochs = Vec::new();
        for epoch in 0..rounds.max(3) {
            let batches = EpochBatches { rows: &rows, labels: &labels, views: 1, batch_size: 64, seed: epoch as u64, metric_weight: 0.0, positive_view: None, class_weights: None };
            let started = Instant::now();
            train_epoch(&heads, &mut optimizers, &stacked, &[true, true, true], &batches);
            epochs.push(started.elapsed());
        }
        epochs.sort();
        Ok((full, bare, decode, epochs, device, clip))
    })??;
    let p50 = |times: &[Duration]| percentile(times, 0.5);
    println!("vision, profile {profile}, device {device:?}, {} libtorch threads, {rounds} rounds over 3 sample photos", tch::get_num_threads());
    let row = |name: &str, times: &[Duration]| println!("{name:<58} {:>9.1} {:>9.1}", millis(p50(times)), millis(percentile(times, 0.99)));
    println!("{:<58} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    row("ensemble: preprocess x3 + 3 backbones + 3 heads + vote", &ensemble_times);
    row("baseline: the 3 bare forward passes on ready tensors", &bare_times);
    row("decoding the photo (PNG/JPEG, before either)", &decode_times);
    let ratio = |a: &[Duration], b: &[Duration]| p50(a).as_secs_f64() / p50(b).as_secs_f64();
    println!("ensemble overhead over the bare passes at p50: {:+.1}%  (target <= 10%)", 100.0 * (ratio(&ensemble_times, &bare_times) - 1.0));
    println!("with decoding as well: {:+.1}%", 100.0 * ((p50(&ensemble_times) + p50(&decode_times)).as_secs_f64() / p50(&bare_times).as_secs_f64() - 1.0));
    clip.print(profile, &ensemble_times);
    println!("one head-training epoch, 3 heads, 2,700 cached images, batch 64: p50 {:.2} s  (target < 2 s; the chapter took 257 s)", p50(&epoch_times).as_secs_f64());
    Ok(())
}
