//! Transfer learning: frozen backbones, one head per backbone, trained on cached features.
//!
//! Backbone features are computed once per image and augmented view, and cached on disk by
//! the images' content, so an epoch costs only the heads, an interrupted run picks up where it
//! stopped, and a larger training set computes only its new images. Heads are checkpointed on their best validation loss; the
//! last weights and the history are saved every epoch so `train` resumes; each head stops
//! early once its validation loss has not improved for `patience` epochs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::data;
use super::ensemble::{backbone_features, Head, HeadsInfo};
use super::Backbone;
use crate::catalogue::Example;
use crate::config::Profile;
use crate::files::{heads, replace_atomically, write_atomically};
use crate::imaging::{self, ImageLimits};
use crate::plot::EpochRecord;

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    /// Backbone features by image content, shared between runs.
    pub cache: PathBuf,
    pub epochs: usize,
    /// Augmented views cached per training image, besides the plain one.
    pub augmented_views: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub patience: usize,
    pub seed: u64,
    pub limits: ImageLimits,
    /// After the heads, also train the last N stages of each backbone (0: off), on maps cached
    /// at the stage before them (see `tune`).
    pub fine_tune_stages: usize,
    pub fine_tune_epochs: usize,
    /// Styled renderings cached per training image for tuning (the metric loss's positives).
    pub fine_tune_styles: usize,
    /// Weight of the metric loss on the tuned descriptors (0: classification alone).
    pub fine_tune_metric_weight: f64,
    /// Weight of the metric loss beside the classification loss (0: classification alone).
    pub metric_weight: f64,
    /// Other pictures of the training images, `DIR/<category>/<same file name>`: each is its
    /// image's positive in the metric loss (another maker's picture of the item, a shopper's
    /// photo), instead of an augmented view.
    pub positives: Option<PathBuf>,
    /// More labelled images for the training split only, `DIR/<category>/` (with
    /// `--with-feedback`, the trusted corrections).
    pub extra_train: Option<PathBuf>,
    /// Weigh every category alike in the loss when the training images are uneven
    /// ([`balanced_class_weights`]).
    pub balance_classes: bool,
}

/// Where `lookalike train` caches backbone features unless told otherwise.
pub const DEFAULT_CACHE: &str = "runs/feature-cache";

impl TrainOptions {
    /// The one set of defaults: `lookalike train --help` shows these, and the demo starts from
    /// them. 3e-4 beat 1e-3 on Fashion-MNIST's validation set (all three heads).
    pub fn new(data: PathBuf, out: PathBuf, limits: ImageLimits) -> TrainOptions {
        TrainOptions {
            data,
            out,
            cache: PathBuf::from(DEFAULT_CACHE),
            epochs: 20,
            augmented_views: 2,
            batch_size: 64,
            learning_rate: 3e-4,
            patience: 5,
            seed: 42,
            limits,
            fine_tune_stages: 0,
            fine_tune_epochs: 3,
            fine_tune_styles: 2,
            fine_tune_metric_weight: 1.0,
            metric_weight: METRIC_WEIGHT,
            positives: None,
            extra_train: None,
            balance_classes: true,
        }
    }
}

/// Trains heads for `models`' profile on a model thread of its own (torch work never runs
/// elsewhere): the entry point of `lookalike train` and of the demo.
pub fn run(options: TrainOptions, models: &crate::config::ModelsConfig) -> anyhow::Result<TrainReport> {
    let (profile, dir, device) = (models.profile, models.dir.clone(), models.device);
    let worker = crate::worker::ModelWorker::spawn(move || {
        let device = super::device(device)?;
        super::backbones(profile).into_iter().map(|spec| Backbone::load(spec, &dir, device)).collect::<anyhow::Result<Vec<_>>>()
    })?;
    worker.run_blocking(move |backbones| train(backbones, profile, &options))?
}

/// What lets an interrupted run resume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TrainState {
    info: HeadsInfo,
    pub(super) epochs_done: usize,
    /// Flattened: its fields sit among the state's own in `train_state.json`, as they did
    /// before it had a type, so earlier runs still resume.
    #[serde(flatten)]
    pub(super) stopping: EarlyStopping,
    pub(super) history: Vec<EpochRecord>,
}

impl TrainState {
    fn new(info: HeadsInfo, heads: usize, patience: usize) -> TrainState {
        TrainState { info, epochs_done: 0, stopping: EarlyStopping::new(heads, patience), history: Vec::new() }
    }

    /// Where the state of the heads trained into `out` is kept.
    fn path(out: &Path) -> PathBuf {
        out.join("train_state.json")
    }

    /// The state a previous run left in `out`, if it left one that reads; it stops by this run's
    /// `patience`.
    fn read(out: &Path, patience: usize) -> Option<TrainState> {
        let mut state = std::fs::read_to_string(Self::path(out)).ok().and_then(|t| serde_json::from_str::<TrainState>(&t).ok())?;
        state.stopping.patience = patience;
        Some(state)
    }

    pub(super) fn save(&self, out: &Path) -> anyhow::Result<()> {
        write_atomically(&Self::path(out), &serde_json::to_vec_pretty(self)?)
    }
}

/// Early stopping and the best checkpoint, per head: a head's weights are kept whenever its
/// validation loss improves on its best so far, and it stops training once it has gone
/// `patience` epochs without improving.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EarlyStopping {
    /// The best validation loss of each head so far (infinite before its first epoch).
    pub(super) best_val_loss: Vec<f64>,
    /// Epochs since each head's validation loss last improved.
    stale_epochs: Vec<usize>,
    /// Not saved: a resumed run stops by its own option.
    #[serde(skip)]
    patience: usize,
}

impl EarlyStopping {
    fn new(heads: usize, patience: usize) -> EarlyStopping {
        EarlyStopping { best_val_loss: vec![f64::INFINITY; heads], stale_epochs: vec![0; heads], patience }
    }

    /// Which heads still train.
    fn active(&self) -> Vec<bool> {
        self.stale_epochs.iter().map(|stale| *stale < self.patience).collect()
    }

    fn all_stopped(&self) -> bool {
        self.stale_epochs.iter().all(|stale| *stale >= self.patience)
    }

    /// Counts an epoch of head `index` that ended at `val_loss`: true when that is its best so
    /// far, whose weights are the ones to keep.
    fn improved(&mut self, index: usize, val_loss: f64) -> bool {
        if val_loss < self.best_val_loss[index] {
            self.best_val_loss[index] = val_loss;
            self.stale_epochs[index] = 0;
            true
        } else {
            self.stale_epochs[index] += 1;
            false
        }
    }
}

/// Features of a set of images under one view, per backbone: (N, D), and which decoded.
struct Cached {
    features: Vec<Tensor>,
    decoded: Vec<bool>,
}

impl Cached {
    /// The rows of the images that decoded.
    fn usable_rows(&self) -> Vec<i64> {
        self.decoded.iter().enumerate().filter(|(_, ok)| **ok).map(|(i, _)| i as i64).collect()
    }
}

#[derive(Debug)]
pub struct TrainReport {
    pub classes: Vec<String>,
    /// Training and validation images (the training ones with any `extra_train`, of which
    /// `extra_images`).
    pub images: (usize, usize),
    pub extra_images: usize,
    pub history: Vec<EpochRecord>,
    pub skipped: Vec<(PathBuf, String)>,
    pub not_images: Vec<PathBuf>,
    pub extraction_seconds: f64,
    pub out: PathBuf,
}

const CHUNK: usize = 256;

/// The backbone feature cache on disk: a folder per backbone set and view, of safetensors files
/// whose rows are keyed by the images' content (SHA-256), so that runs share it.
struct FeatureCache<'a> {
    backbones: &'a [Backbone],
    /// The cache's root folder ([`TrainOptions::cache`]).
    root: &'a Path,
    /// Seeds the augmented views, with each image's content.
    seed: u64,
    limits: ImageLimits,
    /// Counts every image of every view, found in the cache or computed.
    progress: indicatif::ProgressBar,
    /// The images that did not decode, and why (listed from their plain view).
    skipped: Vec<(PathBuf, String)>,
}

impl FeatureCache<'_> {
    /// Features for `examples` under `view` (0 = plain), looked up by image content in the cache
    /// folder; only images not found there go through the backbones, and are cached in turn.
    fn features(&mut self, examples: &[Example], view: usize) -> anyhow::Result<Cached> {
        let mut folder = CacheFolder::read(self.folder(view)?)?;
        let contents = Contents::read(examples);
        let missing = folder.missing(&contents.hashes);
        self.progress.inc((examples.len() - missing.len()) as u64);
        for chunk in missing.chunks(CHUNK) {
            let (features, decoded) = self.compute(&contents, chunk, view);
            folder.add(&contents, chunk, features, decoded)?;
        }
        Ok(self.assemble(&folder, &contents, view))
    }

    /// The folder of `view`, created if need be.
    fn folder(&self, view: usize) -> anyhow::Result<PathBuf> {
        // One namespace per backbone set and view; augmented views also depend on the seed.
        let mut namespace = Sha256::new();
        namespace.update(format!("features v3, view {view}, seed {}", if view > 0 { self.seed } else { 0 }));
        for backbone in self.backbones {
            namespace.update(backbone.spec.id);
        }
        let folder = self.root.join(&hex::encode(namespace.finalize())[..16]);
        std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
        Ok(folder)
    }

    /// Runs the images `chunk` picks from `contents` through the backbones, 16 at a time and
    /// augmented under a view above 0: each backbone's features on the CPU, named
    /// `features<backbone>`, and which images decoded (1) or left a zero row (0).
    fn compute(&self, contents: &Contents, chunk: &[usize], view: usize) -> (Vec<(String, Tensor)>, Vec<u8>) {
        let mut images = Vec::with_capacity(chunk.len());
        let mut mask = Vec::with_capacity(chunk.len());
        for &index in chunk {
            match imaging::decode(&contents.bytes[index], self.limits) {
                Ok(image) => {
                    images.push(image);
                    mask.push(1u8);
                }
                Err(_) => {
                    // Listed by `assemble`, from the mask; the row stays zero.
                    images.push(image::RgbImage::new(32, 32));
                    mask.push(0u8);
                }
            }
        }
        let seeds: Vec<u64> = chunk.iter().map(|&i| u64::from_le_bytes(contents.hashes[i][..8].try_into().expect("32-byte hash")) ^ self.seed ^ (view as u64) << 56).collect();
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for start in (0..images.len()).step_by(16) {
            let end = (start + 16).min(images.len());
            let augmentation = (view > 0).then_some(&seeds[start..end]);
            for (index, features) in backbone_features(self.backbones, &images[start..end], augmentation).features.into_iter().enumerate() {
                let features = features.to_device(Device::Cpu);
                match named.iter_mut().find(|(name, _)| *name == format!("features{index}")) {
                    Some((_, all)) => *all = Tensor::cat(&[all.shallow_clone(), features], 0),
                    None => named.push((format!("features{index}"), features)),
                }
            }
            self.progress.inc((end - start) as u64);
        }
        (named, mask)
    }

    /// The features of `contents`' examples, in their order, from the folder's rows; under the
    /// plain view, the images that did not decode go to `skipped`.
    fn assemble(&mut self, folder: &CacheFolder, contents: &Contents, view: usize) -> Cached {
        let mut decoded = Vec::with_capacity(contents.examples.len());
        let mut rows_per_backbone: Vec<Vec<Tensor>> = self.backbones.iter().map(|_| Vec::new()).collect();
        for (index, (example, hash)) in contents.examples.iter().zip(&contents.hashes).enumerate() {
            let (file, row) = folder.known[hash];
            let ok = folder.files[file]["decoded"].int64_value(&[row]) == 1;
            if !ok && view == 0 {
                let reason = imaging::decode(&contents.bytes[index], self.limits).err().map_or("unreadable".to_string(), |e| e.to_string());
                self.skipped.push((example.path.clone(), reason));
            }
            decoded.push(ok);
            for (index, rows) in rows_per_backbone.iter_mut().enumerate() {
                rows.push(folder.files[file][&format!("features{index}")].narrow(0, row, 1));
            }
        }
        let features = rows_per_backbone
            .into_iter()
            .zip(self.backbones)
            .map(|(rows, b)| if rows.is_empty() { Tensor::zeros([0, b.spec.feature_dim], (Kind::Float, Device::Cpu)) } else { Tensor::cat(&rows, 0) })
            .collect();
        Cached { features, decoded }
    }
}

/// The files of a set of examples as read, and their SHA-256: the cache's keys.
pub(super) struct Contents<'e> {
    examples: &'e [Example],
    /// Empty for a file that cannot be read.
    pub(super) bytes: Vec<Vec<u8>>,
    pub(super) hashes: Vec<Vec<u8>>,
}

impl<'e> Contents<'e> {
    pub(super) fn read(examples: &'e [Example]) -> Contents<'e> {
        let bytes: Vec<Vec<u8>> = examples.iter().map(|e| std::fs::read(&e.path).unwrap_or_default()).collect();
        let hashes = bytes.iter().map(|c| Sha256::digest(c).to_vec()).collect();
        Contents { examples, bytes, hashes }
    }
}

/// The rows cached in the folder of one view.
pub(super) struct CacheFolder {
    path: PathBuf,
    /// The tensors of each file: `features<backbone>` (or tuning's `map`), `hashes` and
    /// `decoded`, a row per image.
    pub(super) files: Vec<HashMap<String, Tensor>>,
    /// Every cached row, by content hash: (file, row).
    pub(super) known: HashMap<Vec<u8>, (usize, i64)>,
}

impl CacheFolder {
    /// Reads the folder's files in name order.
    pub(super) fn read(path: PathBuf) -> anyhow::Result<CacheFolder> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)?.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
        entries.sort();
        let mut folder = CacheFolder { path, files: Vec::new(), known: HashMap::new() };
        for entry in entries {
            // A damaged cache file is only a cache miss.
            let Ok(tensors) = Tensor::read_safetensors(&entry) else { continue };
            let map: HashMap<String, Tensor> = tensors.into_iter().collect();
            let Some(hashes) = map.get("hashes") else { continue };
            let hashes = Vec::<u8>::try_from(hashes.flatten(0, -1)).unwrap_or_default();
            folder.push(hashes.chunks(32), map);
        }
        Ok(folder)
    }

    /// The indices of the `hashes` the folder lacks, each content once.
    pub(super) fn missing(&self, hashes: &[Vec<u8>]) -> Vec<usize> {
        let mut missing: Vec<usize> = Vec::new();
        for (index, hash) in hashes.iter().enumerate() {
            if !self.known.contains_key(hash) && !missing.iter().any(|&m| hashes[m] == *hash) {
                missing.push(index);
            }
        }
        missing
    }

    /// Saves the rows [`FeatureCache::compute`] made of the images `chunk` picks from `contents`
    /// as one file, named by their hashes, and adds them.
    pub(super) fn add(&mut self, contents: &Contents, chunk: &[usize], mut named: Vec<(String, Tensor)>, decoded: Vec<u8>) -> anyhow::Result<()> {
        let chunk_hashes: Vec<u8> = chunk.iter().flat_map(|&i| contents.hashes[i].clone()).collect();
        named.push(("hashes".into(), Tensor::from_slice(&chunk_hashes).view([chunk.len() as i64, 32])));
        named.push(("decoded".into(), Tensor::from_slice(&decoded)));
        let file = self.path.join(format!("{}.safetensors", hex::encode(&Sha256::digest(&chunk_hashes)[..10])));
        replace_atomically(&file, |partial| Ok(Tensor::write_safetensors(&named, partial)?))?;
        self.push(chunk.iter().map(|&i| contents.hashes[i].as_slice()), named.into_iter().collect());
        Ok(())
    }

    /// Adds a file's tensors, whose rows are the images of `hashes`, in order.
    fn push<'h>(&mut self, hashes: impl Iterator<Item = &'h [u8]>, tensors: HashMap<String, Tensor>) {
        for (row, hash) in hashes.enumerate() {
            self.known.insert(hash.to_vec(), (self.files.len(), row as i64));
        }
        self.files.push(tensors);
    }
}

/// The positive of each training example: `dir/<category>/<file name>` where it exists, else
/// the example itself (its metric loss then compares it with itself, and teaches nothing).
fn positive_examples(dir: &Path, train: &[Example]) -> anyhow::Result<Vec<Example>> {
    let found = |e: &Example| e.path.parent().and_then(Path::file_name).zip(e.path.file_name()).map(|(category, name)| dir.join(category).join(name)).filter(|p| p.is_file());
    let positives: Vec<Example> = train.iter().map(|e| Example { path: found(e).unwrap_or_else(|| e.path.clone()), class: e.class }).collect();
    let matched = train.iter().filter(|e| found(e).is_some()).count();
    anyhow::ensure!(matched > 0, "no file in {} has the category and name of a training image: expected {}/<category>/<file name>", dir.display(), dir.display());
    tracing::info!(matched, of = train.len(), "positives for the metric loss");
    Ok(positives)
}

pub fn train(backbones: &mut [Backbone], profile: Profile, options: &TrainOptions) -> anyhow::Result<TrainReport> {
    // The heads' initial weights and dropout masks follow the seed too: the same run twice gives
    // the same heads.
    tch::manual_seed(options.seed as i64);
    let (split, extra_images) = training_split(options)?;
    std::fs::create_dir_all(&options.out).with_context(|| format!("cannot create {}", options.out.display()))?;
    let info = HeadsInfo { profile, classes: split.classes.clone(), backbones: backbones.iter().map(|b| b.spec.id.to_string()).collect() };
    tracing::info!(train = split.train.len(), val = split.val.len(), classes = split.classes.len(), "training set");

    // 1. Features, once per image and view.
    let features = extract_features(backbones, &split, options)?;

    // 2. Heads, resumed when a previous run of the same set-up stopped early.
    let device = backbones.first().map_or(Device::Cpu, |b| b.device);
    let (mut heads, mut state) = start_heads(backbones, &info, &features.train_views[0], device, options)?;
    let data = HeadsData::new(&features, &split, device, options);
    train_heads(&heads, &data, &mut state, backbones, options)?;
    super::tune::fine_tune_backbones(backbones, &mut heads, &split, &mut state, options)?;
    write_outputs(&options.out, &info, &state.history)?;
    let images = (split.train.len(), split.val.len());
    Ok(TrainReport {
        classes: split.classes,
        images,
        extra_images,
        history: state.history,
        skipped: features.skipped,
        not_images: split.not_images,
        extraction_seconds: features.seconds,
        out: options.out.clone(),
    })
}

/// The training and validation images of `options.data`, the training ones with those of
/// `extra_train` added (and how many these are), checked to be enough to train on.
fn training_split(options: &TrainOptions) -> anyhow::Result<(data::Split, usize)> {
    let mut split = data::split(&options.data, options.seed)?;
    let mut extra_images = 0;
    if let Some(dir) = &options.extra_train {
        let (_, extra, _) = crate::catalogue::labelled(dir, Some(&split.classes)).with_context(|| format!("cannot add the training images in {}", dir.display()))?;
        extra_images = extra.len();
        split.train.extend(extra);
    }
    anyhow::ensure!(split.classes.len() >= 2, "training needs at least two categories in {}", options.data.display());
    let counts = split.classes.iter().enumerate().map(|(class, name)| (name, split.train.iter().chain(&split.val).filter(|e| e.class == class).count()));
    let short: Vec<String> = counts.filter(|(_, n)| *n < crate::catalogue::MIN_TRAINING_IMAGES).map(|(name, n)| format!("{name} ({n})")).collect();
    anyhow::ensure!(
        short.is_empty(),
        "training needs at least {} images per category (one to learn from, one to check on); {} has too few: {}",
        crate::catalogue::MIN_TRAINING_IMAGES,
        options.data.display(),
        short.join(", ")
    );
    anyhow::ensure!(!split.train.is_empty() && !split.val.is_empty(), "{} has too few images for a training and a validation set", options.data.display());
    Ok((split, extra_images))
}

/// The backbone features of a training run's images.
struct Extracted {
    /// The training images under each view: the plain one, the augmented ones, then the
    /// positives.
    train_views: Vec<Cached>,
    val: Cached,
    /// Which of `train_views` holds the positives.
    positive_view: Option<usize>,
    skipped: Vec<(PathBuf, String)>,
    seconds: f64,
}

/// Step 1: the backbone features of every training image under each of its views and of every
/// validation image, from the cache where it has them.
fn extract_features(backbones: &[Backbone], split: &data::Split, options: &TrainOptions) -> anyhow::Result<Extracted> {
    let started = Instant::now();
    let positives = options.positives.as_deref().map(|dir| positive_examples(dir, &split.train)).transpose()?;
    anyhow::ensure!(positives.is_none() || options.metric_weight > 0.0, "--positives pairs images for the metric loss: give --metric-weight above 0 too");
    let views = 1 + options.augmented_views + usize::from(positives.is_some());
    let total = (split.train.len() * views + split.val.len()) as u64;
    let progress = crate::progress::bar(total, "features {bar:30} {pos}/{len} images, {per_sec}, eta {eta}");
    let mut cache = FeatureCache { backbones, root: &options.cache, seed: options.seed, limits: options.limits, progress, skipped: Vec::new() };
    let mut train_views = Vec::new();
    for view in 0..1 + options.augmented_views {
        train_views.push(cache.features(&split.train, view)?);
    }
    // The positives come last, as they are (no augmentation).
    if let Some(positives) = &positives {
        train_views.push(cache.features(positives, 0)?);
    }
    let val = cache.features(&split.val, 0)?;
    cache.progress.finish_and_clear();
    Ok(Extracted { train_views, val, positive_view: positives.is_some().then_some(views - 1), skipped: cache.skipped, seconds: started.elapsed().as_secs_f64() })
}

/// Step 2: one head per backbone, on `device`. When `options.out` holds the state of a run of
/// the same set-up, its heads' last weights and that state, to go on from; else new heads,
/// standardised on the `plain` training features, and a new state.
fn start_heads(backbones: &[Backbone], info: &HeadsInfo, plain: &Cached, device: Device, options: &TrainOptions) -> anyhow::Result<(Vec<Head>, TrainState)> {
    let mut heads: Vec<Head> = backbones.iter().map(|b| Head::new(b.spec.feature_dim, info.classes.len() as i64, device)).collect();
    let state = match TrainState::read(&options.out, options.patience) {
        Some(previous) if previous.info == *info => {
            for (head, backbone) in heads.iter_mut().zip(backbones) {
                head.vars.load(last_head_path(&options.out, backbone.spec.id))?;
            }
            eprintln!("resuming after epoch {}", previous.epochs_done);
            previous
        }
        _ => {
            let rows = Tensor::from_slice(&plain.usable_rows());
            for (head, features) in heads.iter_mut().zip(&plain.features) {
                head.fit_standardisation(&features.index_select(0, &rows).to_device(device));
            }
            TrainState::new(info.clone(), heads.len(), options.patience)
        }
    };
    Ok((heads, state))
}

/// A head's weights after its latest epoch, which a resumed run starts from.
fn last_head_path(out: &Path, backbone: &str) -> PathBuf {
    out.join(format!("{backbone}.last.safetensors"))
}

/// What every epoch of the heads reads, on their device.
struct HeadsData {
    /// Backbone b's training features under every view: (views, N, D).
    stacked: Vec<Tensor>,
    /// The training examples that decoded, and every training example's class.
    train_rows: Vec<i64>,
    train_labels: Vec<i64>,
    /// Per backbone, the features of the validation images that decoded; and their classes.
    val_features: Vec<Tensor>,
    val_labels: Tensor,
    views: usize,
    positive_view: Option<usize>,
    class_weights: Option<Tensor>,
}

impl HeadsData {
    fn new(features: &Extracted, split: &data::Split, device: Device, options: &TrainOptions) -> HeadsData {
        let train_rows = features.train_views[0].usable_rows();
        let train_labels: Vec<i64> = split.train.iter().map(|e| e.class as i64).collect();
        let val_rows = Tensor::from_slice(&features.val.usable_rows());
        let val_labels = Tensor::from_slice(&split.val.iter().map(|e| e.class as i64).collect::<Vec<_>>()).index_select(0, &val_rows);
        let views = &features.train_views;
        let stacked: Vec<Tensor> = (0..views[0].features.len()).map(|b| Tensor::stack(&views.iter().map(|v| v.features[b].shallow_clone()).collect::<Vec<_>>(), 0).to_device(device)).collect();
        let val_features: Vec<Tensor> = features.val.features.iter().map(|f| f.index_select(0, &val_rows).to_device(device)).collect();
        let val_labels = val_labels.to_device(device);

        let usable_labels: Vec<i64> = train_rows.iter().map(|&row| train_labels[row as usize]).collect();
        let class_weights = balanced_class_weights(&usable_labels, split.classes.len()).filter(|_| options.balance_classes).map(|w| Tensor::from_slice(&w).to_device(device));
        if let Some(weights) = &class_weights {
            tracing::info!(weights = ?Vec::<f32>::try_from(weights.to_device(Device::Cpu)).unwrap_or_default(), "categories are uneven: the loss weighs each alike");
        }
        HeadsData { stacked, train_rows, train_labels, val_features, val_labels, views: views.len(), positive_view: features.positive_view, class_weights }
    }

    /// How epoch `epoch` visits the training examples.
    fn batches(&self, epoch: usize, options: &TrainOptions) -> EpochBatches<'_> {
        EpochBatches {
            rows: &self.train_rows,
            labels: &self.train_labels,
            views: self.views,
            batch_size: options.batch_size,
            seed: options.seed.wrapping_add(epoch as u64),
            metric_weight: options.metric_weight,
            positive_view: self.positive_view,
            class_weights: self.class_weights.as_ref(),
        }
    }

    /// The validation loss and accuracy of `head`, that of backbone `index`.
    fn validate(&self, head: &Head, index: usize) -> (f64, f64) {
        tch::no_grad(|| {
            let logits = head.forward_t(&self.val_features[index], false);
            let accuracy = logits.argmax(-1, false).eq_tensor(&self.val_labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            (logits.cross_entropy_for_logits(&self.val_labels).double_value(&[]), accuracy)
        })
    }
}

/// The heads' epochs, from where `state` left off: each trains and validates the heads that have
/// not stopped, checkpoints each one's best and last weights, and saves the state.
fn train_heads(heads: &[Head], data: &HeadsData, state: &mut TrainState, backbones: &[Backbone], options: &TrainOptions) -> anyhow::Result<()> {
    let mut optimizers = heads.iter().map(|h| h.optimizer(options.learning_rate)).collect::<anyhow::Result<Vec<_>>>()?;
    let progress = crate::progress::bar(options.epochs as u64, "epochs {bar:30} {pos}/{len}, eta {eta} {msg}");
    progress.set_position(state.epochs_done as u64);
    for epoch in state.epochs_done + 1..=options.epochs {
        if state.stopping.all_stopped() {
            break;
        }
        let epoch_started = Instant::now();
        let active = state.stopping.active();
        let totals = train_epoch(heads, &mut optimizers, &data.stacked, &active, &data.batches(epoch, options));
        let seconds = epoch_started.elapsed().as_secs_f64();
        let mut summary = Vec::new();
        for (index, head) in heads.iter().enumerate().filter(|(index, _)| active[*index]) {
            let (val_loss, val_accuracy) = data.validate(head, index);
            let id = backbones[index].spec.id;
            let (loss_sum, correct, seen) = totals[index];
            state.history.push(EpochRecord {
                epoch,
                backbone: id.to_string(),
                train_loss: loss_sum / seen.max(1) as f64,
                train_accuracy: correct as f64 / seen.max(1) as f64,
                val_loss,
                val_accuracy,
                seconds,
                phase: "heads".into(),
            });
            if state.stopping.improved(index, val_loss) {
                head.save_atomically(&heads::head_path(&options.out, id))?;
            }
            head.save_atomically(&last_head_path(&options.out, id))?;
            summary.push(format!("{id} val {:.1}%", 100.0 * val_accuracy));
        }
        state.epochs_done = epoch;
        state.save(&options.out)?;
        progress.set_message(summary.join(", "));
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(())
}

/// What a run leaves in `out` beside the heads: their info, history.csv and training.png.
fn write_outputs(out: &Path, info: &HeadsInfo, history: &[EpochRecord]) -> anyhow::Result<()> {
    write_atomically(&heads::info_path(out), &serde_json::to_vec_pretty(info)?)?;
    write_atomically(&out.join("history.csv"), history_csv(history).as_bytes())?;
    crate::plot::training_curves(&out.join("training.png"), history)
}

/// Temperature of the metric loss's softmax over cosine similarities.
const METRIC_TEMPERATURE: f64 = 0.1;
/// Default weight of the metric loss (see `metric_loss`).
pub const METRIC_WEIGHT: f64 = 0.0;

/// The metric loss (InfoNCE, symmetric): row i of `a` and row i of `b` are two views of one
/// image; each must be more similar to its own other view than to any other image's in the batch.
/// It teaches the penultimate layer to keep what tells one catalogue item from another, where
/// the classification loss alone blurs everything within a category.
pub fn metric_loss(a: &Tensor, b: &Tensor) -> Tensor {
    let unit = |t: &Tensor| t / t.norm_scalaropt_dim(2, [1], true).clamp_min(1e-6);
    let similarity = unit(a).mm(&unit(b).tr()) / METRIC_TEMPERATURE;
    let same = Tensor::arange(a.size()[0], (Kind::Int64, a.device()));
    (similarity.cross_entropy_for_logits(&same) + similarity.tr().cross_entropy_for_logits(&same)) / 2.0
}

/// Which examples an epoch visits, and how.
pub struct EpochBatches<'a> {
    /// Example indices that decoded.
    pub rows: &'a [i64],
    /// Class of every example, by index.
    pub labels: &'a [i64],
    pub views: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Weight of [`metric_loss`] between two different views of each example (needs 2+ views).
    pub metric_weight: f64,
    /// The view holding each example's positive (another picture of it): the metric loss pairs
    /// one of the other views with it, and the classification loss reads the other views alone.
    pub positive_view: Option<usize>,
    /// Per-class weights of the classification loss ([`balanced_class_weights`]); none: all 1.
    pub class_weights: Option<&'a Tensor>,
}

/// Loss weights that make every category count alike, N / (K n_c), when the training images are
/// not spread evenly across the `classes`; none when they are. Trusted corrections add images of
/// the categories the vote gets wrong: on Fashion-MNIST, 200 shirts on top of 100 per category
/// raised shirt recall 50 -> 84 % but, unweighted, shifted the vote's prior towards shirt
/// (shirt precision 61 -> 49 %, pullover recall 82 -> 70 %); README "Teaching the bot".
pub fn balanced_class_weights(labels: &[i64], classes: usize) -> Option<Vec<f32>> {
    let mut counts = vec![0usize; classes];
    for &label in labels {
        counts[label as usize] += 1;
    }
    let present: Vec<usize> = counts.iter().copied().filter(|&c| c > 0).collect();
    if present.iter().min() == present.iter().max() {
        return None;
    }
    let share = labels.len() as f64 / present.len() as f64;
    Some(counts.iter().map(|&c| if c == 0 { 0.0 } else { (share / c as f64) as f32 }).collect())
}

/// One pass over the training examples for every active head: shuffled minibatches, each
/// example in its plain view or one of its augmented views, picked at random (and, with a metric
/// loss, a second, different view beside it). `stacked[b]` is backbone b's (views, N, D)
/// features. Returns per head (summed loss, correct, seen).
pub fn train_epoch(heads: &[Head], optimizers: &mut [tch::nn::Optimizer], stacked: &[Tensor], active: &[bool], batches: &EpochBatches) -> Vec<(f64, usize, usize)> {
    let device = stacked.first().map_or(Device::Cpu, Tensor::device);
    let mut order = batches.rows.to_vec();
    crate::rng::Rng::new(batches.seed).shuffle(&mut order);
    let mut rng = crate::rng::Rng::new(batches.seed ^ 0x5EED);
    let examples = batches.labels.len() as i64;
    let flattened: Vec<Tensor> = stacked.iter().map(|s| s.flatten(0, 1)).collect();
    let mut totals = vec![(0.0f64, 0usize, 0usize); heads.len()];
    for batch in order.chunks(batches.batch_size) {
        let views = batches.views as u64;
        let (rows, others): (Vec<i64>, Vec<i64>) = batch
            .iter()
            .map(|&row| {
                let (view, other) = match batches.positive_view {
                    Some(positive) => (rng.below(positive as u64), positive as u64),
                    None => {
                        let view = rng.below(views);
                        (view, (view + 1 + rng.below(views.saturating_sub(1))) % views)
                    }
                };
                (view as i64 * examples + row, other as i64 * examples + row)
            })
            .unzip();
        let (rows, others) = (Tensor::from_slice(&rows).to_device(device), Tensor::from_slice(&others).to_device(device));
        let labels = Tensor::from_slice(&batch.iter().map(|&r| batches.labels[r as usize]).collect::<Vec<_>>()).to_device(device);
        for (index, head) in heads.iter().enumerate().filter(|(index, _)| active[*index]) {
            let hidden = head.penultimate_t(&flattened[index].index_select(0, &rows), true);
            let logits = head.logits_t(&hidden, true);
            let mut loss = match batches.class_weights {
                Some(weights) => logits.log_softmax(-1, Kind::Float).g_nll_loss(&labels, Some(weights), tch::Reduction::Mean, -100),
                None => logits.cross_entropy_for_logits(&labels),
            };
            if batches.metric_weight > 0.0 && views > 1 {
                loss += batches.metric_weight * metric_loss(&hidden, &head.penultimate_t(&flattened[index].index_select(0, &others), true));
            }
            optimizers[index].backward_step(&loss);
            let correct = logits.argmax(-1, false).eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]) as usize;
            totals[index].0 += loss.double_value(&[]) * batch.len() as f64;
            totals[index].1 += correct;
            totals[index].2 += batch.len();
        }
    }
    totals
}

fn history_csv(history: &[EpochRecord]) -> String {
    let mut csv = String::from("epoch,backbone,phase,train_loss,train_accuracy,val_loss,val_accuracy,seconds\n");
    for r in history {
        csv.push_str(&format!("{},{},{},{:.5},{:.5},{:.5},{:.5},{:.3}\n", r.epoch, r.backbone, r.phase, r.train_loss, r.train_accuracy, r.val_loss, r.val_accuracy, r.seconds));
    }
    csv
}

/// The summary `lookalike train` prints.
pub fn render(report: &TrainReport) -> String {
    let mut out = format!("{} categories: {}\n", report.classes.len(), report.classes.join(", "));
    let extra = if report.extra_images > 0 { format!(" ({} of them trusted corrections)", report.extra_images) } else { String::new() };
    out.push_str(&format!("{} training images{extra}, {} validation images\n", report.images.0, report.images.1));
    out.push_str(&format!("features extracted or read from cache in {:.1} s\n", report.extraction_seconds));
    let mut backbones: Vec<&str> = report.history.iter().map(|r| r.backbone.as_str()).collect();
    backbones.dedup();
    backbones.sort();
    backbones.dedup();
    for backbone in backbones {
        let rows: Vec<&EpochRecord> = report.history.iter().filter(|r| r.backbone == backbone).collect();
        if let Some(best) = rows.iter().min_by(|a, b| a.val_loss.total_cmp(&b.val_loss)) {
            let mean_epoch = rows.iter().map(|r| r.seconds).sum::<f64>() / rows.len() as f64;
            out.push_str(&format!(
                "{backbone:<22} best epoch {:>3} of {:>3}: val accuracy {:.1}%, val loss {:.4} (epochs take {:.2} s)\n",
                best.epoch,
                rows.len(),
                100.0 * best.val_accuracy,
                best.val_loss,
                mean_epoch
            ));
        }
    }
    super::data::render_skipped(&mut out, &report.skipped);
    if !report.not_images.is_empty() {
        out.push_str(&format!("ignored {} files that are not images (by extension)\n", report.not_images.len()));
    }
    out.push_str(&format!("heads, history.csv and training.png written to {}\n", report.out.display()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_loss_rewards_views_that_find_each_other() {
        tch::manual_seed(3);
        let a = Tensor::randn([16, 32], (Kind::Float, Device::Cpu));
        let matched = metric_loss(&a, &(&a + 0.01 * Tensor::randn([16, 32], (Kind::Float, Device::Cpu)))).double_value(&[]);
        let shuffled = metric_loss(&a, &a.roll([1], [0])).double_value(&[]);
        assert!(matched < 0.1, "each view's nearest is its own other view: {matched}");
        assert!(shuffled > 2.0, "each view's other view is someone else's: {shuffled}");
    }

    #[test]
    fn uneven_categories_are_weighed_alike() {
        assert_eq!(balanced_class_weights(&[0, 0, 1, 1, 2, 2], 3), None, "even: plain loss");
        assert_eq!(balanced_class_weights(&[0, 0, 2, 2], 3), None, "an absent category does not make it uneven");
        // 3 shirts (class 1) against 1 of each other: each category's weights sum to the same.
        let weights = balanced_class_weights(&[0, 1, 1, 1, 2], 3).unwrap();
        assert_eq!(weights, [5.0 / 3.0, 5.0 / 9.0, 5.0 / 3.0]);
        // The weighted loss of a batch that always answers "1" is worse than the plain one.
        let logits = Tensor::from_slice(&[0.0f32, 3.0, 0.0]).repeat([5, 1]);
        let labels = Tensor::from_slice(&[0i64, 1, 1, 1, 2]);
        let plain = logits.cross_entropy_for_logits(&labels).double_value(&[]);
        let weighted = logits.log_softmax(-1, Kind::Float).g_nll_loss(&labels, Some(Tensor::from_slice(&weights)), tch::Reduction::Mean, -100).double_value(&[]);
        assert!(weighted > plain + 0.5, "{weighted} vs {plain}");
    }

    #[test]
    fn the_training_state_keeps_its_file_format() {
        // train_state.json as runs wrote it before early stopping had a type of its own.
        let saved = r#"{
  "info": {
    "profile": "kit",
    "classes": [
      "cat",
      "dog"
    ],
    "backbones": [
      "a"
    ]
  },
  "epochs_done": 3,
  "best_val_loss": [
    0.25
  ],
  "stale_epochs": [
    1
  ],
  "history": []
}"#;
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(TrainState::path(scratch.path()), saved).unwrap();
        let state = TrainState::read(scratch.path(), 2).unwrap();
        assert_eq!((state.epochs_done, &state.stopping.best_val_loss, &state.stopping.stale_epochs, state.stopping.patience), (3, &vec![0.25], &vec![1], 2));
        state.save(scratch.path()).unwrap();
        assert_eq!(std::fs::read_to_string(TrainState::path(scratch.path())).unwrap(), saved);
    }

    #[test]
    fn a_head_stops_after_patience_epochs_without_improving() {
        let mut stopping = EarlyStopping::new(2, 2);
        assert!(stopping.improved(0, 1.0) && stopping.improved(1, 1.0));
        assert!(!stopping.improved(0, 1.0), "no better than its best");
        assert!(stopping.improved(1, 0.5));
        assert_eq!(stopping.active(), [true, true]);
        assert!(!stopping.improved(0, 2.0));
        assert_eq!(stopping.active(), [false, true]);
        assert!(!stopping.improved(1, 0.6) && !stopping.improved(1, 0.5));
        assert!(stopping.all_stopped());
        assert_eq!(stopping.best_val_loss, [1.0, 0.5]);
    }

    #[test]
    fn positives_are_found_by_category_and_file_name() {
        let scratch = tempfile::tempdir().unwrap();
        let (catalogue, positives) = (scratch.path().join("catalogue"), scratch.path().join("positives"));
        for dir in [catalogue.join("cat"), positives.join("cat"), positives.join("dog")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(positives.join("cat/a.png"), b"x").unwrap();
        std::fs::write(positives.join("dog/b.png"), b"x").unwrap();
        let train = [Example { path: catalogue.join("cat/a.png"), class: 0 }, Example { path: catalogue.join("cat/b.png"), class: 0 }];
        let found = positive_examples(&positives, &train).unwrap();
        assert_eq!(found[0].path, positives.join("cat/a.png"));
        assert_eq!(found[1].path, catalogue.join("cat/b.png"), "dog/b.png is another category's: the image pairs with itself");
        assert!(found.iter().all(|e| e.class == 0));
        let none = positive_examples(&positives, &train[1..]).unwrap_err().to_string();
        assert!(none.contains("<category>/<file name>"), "{none}");
    }
}
