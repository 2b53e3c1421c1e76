//! Classification heads on the backbones' pooled features, the chapter's augmentation, and the
//! ensemble: three backbones and their heads as one pass that yields the vote and the features.

use std::path::Path;

use anyhow::Context;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::preprocess::{Normalisation, Preprocess, Resample};
use super::{Backbone, BackboneSpec, Placement};
use crate::config::{EmbeddingSource, Profile};
use crate::decide::{BackboneVote, ImageVote};
use crate::index::whiten::WhiteningSettings;

/// Dropout between the head's layers, as in the chapter.
pub const HEAD_DROPOUT: f64 = 0.3;
pub const HEAD_WIDTH: i64 = 1024;

/// The chapter's head: pooled features -> FC 1024 -> ReLU -> dropout -> FC 1024 -> ReLU ->
/// dropout -> class logits (softmax applied by the caller).
pub struct Head {
    pub vars: nn::VarStore,
    /// Per-feature mean and spread of the training features: backbones differ by orders of
    /// magnitude (SqueezeNet's caffe inputs are 0-255), and standardised inputs train alike.
    feature_mean: Tensor,
    feature_std: Tensor,
    fc1: nn::Linear,
    fc2: nn::Linear,
    out: nn::Linear,
}

impl Head {
    pub fn new(feature_dim: i64, classes: i64, device: Device) -> Head {
        let vars = nn::VarStore::new(device);
        let root = vars.root();
        let feature_mean = root.zeros_no_train("feature_mean", &[feature_dim]);
        let feature_std = root.ones_no_train("feature_std", &[feature_dim]);
        let fc1 = nn::linear(&root / "fc1", feature_dim, HEAD_WIDTH, Default::default());
        let fc2 = nn::linear(&root / "fc2", HEAD_WIDTH, HEAD_WIDTH, Default::default());
        let out = nn::linear(&root / "out", HEAD_WIDTH, classes, Default::default());
        Head { vars, feature_mean, feature_std, fc1, fc2, out }
    }

    /// Sets the standardisation from training features (N, D).
    pub fn fit_standardisation(&mut self, features: &Tensor) {
        tch::no_grad(|| {
            let mean = features.mean_dim(0, false, Kind::Float);
            let std = features.std_dim(0, false, false).clamp_min(1e-6);
            self.feature_mean.copy_(&mean);
            self.feature_std.copy_(&std);
        });
    }

    /// The penultimate layer: what the head has learnt to describe an image by (N, 1024).
    pub fn penultimate_t(&self, features: &Tensor, train: bool) -> Tensor {
        let standardised = (features - &self.feature_mean) / &self.feature_std;
        let hidden = self.fc1.forward(&standardised).relu().dropout(HEAD_DROPOUT, train);
        self.fc2.forward(&hidden).relu()
    }

    pub fn forward_t(&self, features: &Tensor, train: bool) -> Tensor {
        self.logits_t(&self.penultimate_t(features, train), train)
    }

    /// Class logits from the penultimate layer.
    pub fn logits_t(&self, penultimate: &Tensor, train: bool) -> Tensor {
        self.out.forward(&penultimate.dropout(HEAD_DROPOUT, train))
    }

    pub fn optimizer(&self, learning_rate: f64) -> anyhow::Result<nn::Optimizer> {
        Ok(nn::Adam::default().build(&self.vars, learning_rate)?)
    }

    /// Saves beside `path`, then renames over it: a crash never leaves half a head.
    pub fn save_atomically(&self, path: &Path) -> anyhow::Result<()> {
        crate::files::replace_atomically(path, |partial| Ok(self.vars.save(partial)?))
    }
}

/// What `lookalike train` records beside the heads, so search and eval know what they mean.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeadsInfo {
    pub profile: Profile,
    pub classes: Vec<String>,
    /// Backbone ids, in the order their heads vote.
    pub backbones: Vec<String>,
}

impl HeadsInfo {
    pub fn load(dir: &Path) -> anyhow::Result<HeadsInfo> {
        let path = crate::files::heads::info_path(dir);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{} is missing: train the heads first with `lookalike train --data DIR --out {}`", path.display(), dir.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a heads description", path.display()))
    }
}

/// Random rotations up to `max_degrees` either way and horizontal and vertical flips, as the
/// chapter's `ImageDataGenerator` does, one transform per image, the same for every backbone
/// (`seed` picks it). Edges are extended, not filled with a colour the backbone never saw.
pub fn augment(batch: &Tensor, seeds: &[u64], max_degrees: f64) -> Tensor {
    let mut theta = Vec::with_capacity(seeds.len() * 6);
    for &seed in seeds {
        let mut rng = crate::rng::Rng::new(seed);
        let angle = (rng.unit_f64() * 2.0 - 1.0) * max_degrees.to_radians();
        let flip_x = if rng.unit_f64() < 0.5 { -1.0 } else { 1.0 };
        let flip_y = if rng.unit_f64() < 0.5 { -1.0 } else { 1.0 };
        let (sin, cos) = angle.sin_cos();
        theta.extend_from_slice(&[(cos * flip_x) as f32, (-sin * flip_y) as f32, 0.0, (sin * flip_x) as f32, (cos * flip_y) as f32, 0.0]);
    }
    let theta = Tensor::from_slice(&theta).view([seeds.len() as i64, 2, 3]).to_device(batch.device());
    let grid = Tensor::affine_grid_generator(&theta, batch.size(), false);
    // Bilinear sampling (0), border padding (1).
    batch.grid_sampler(&grid, 0, 1, false)
}

/// Images per forward pass: on 2 CPU cores a batch of 32 cost 1.5x (SqueezeNet) to 2.4x
/// (EfficientNet-Lite0) more per image than one at a time (measured); a GPU wants big batches.
/// Re-index jobs are this size too.
pub fn forward_batch(device: Device) -> usize {
    if device.is_cuda() {
        64
    } else {
        1
    }
}

/// The batch sizes a GPU runs: a batch is padded up to the next one, so that the networks only
/// ever see these few shapes, each prepared once at warm-up. Unpadded, every new size of a
/// queued batch paid libtorch's first-call cost on the card: p99 at 8 concurrent queries was
/// 370 to 3,070 ms against a p50 of 19 to 36 ms (H200). Padded and warmed up, p99 came within
/// 1.13x of p50 (one run, slowed throughout by an experiment since reverted).
pub const GPU_BATCH_SIZES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// `batch` padded with copies of its first row up to the next GPU batch size.
fn pad_to_bucket(batch: Tensor) -> Tensor {
    let rows = batch.size()[0] as usize;
    let Some(&bucket) = GPU_BATCH_SIZES.iter().find(|&&size| size >= rows) else { return batch };
    if rows == 0 || bucket == rows {
        return batch;
    }
    let mut shape = batch.size();
    shape[0] = (bucket - rows) as i64;
    let filler = batch.narrow(0, 0, 1).expand(&shape, false);
    Tensor::cat(&[batch, filler], 0)
}

/// Exponent of the generalised-mean (GeM) pooling that turns a backbone's last feature map into
/// its retrieval descriptor: (mean over positions of x^p)^(1/p); 1 is average pooling, larger
/// values lean towards the strongest responses. Measured on the emoji benchmark (Apple catalogue,
/// Facebook queries, 1,000 pairs, kit, every category searched): average pooling R@1 0.688 /
/// R@5 0.863, p = 2 0.724 / 0.882, p = 3 0.723 / 0.878, p = 4 0.723 / 0.880, max 0.716 / 0.885;
/// 3 is the usual choice in the literature and as good as any here.
pub const GEM_P: f64 = 3.0;

/// (N, C, h, w) -> (N, C) generalised mean over the positions (see [`GEM_P`]).
pub fn gem(map: &Tensor, p: f64) -> Tensor {
    map.clamp_min(1e-6).pow_tensor_scalar(p).mean_dim([2i64, 3].as_slice(), false, Kind::Float).pow_tensor_scalar(1.0 / p)
}

/// What the backbones give for a set of images, one tensor per backbone.
pub struct BackboneFeatures {
    /// (N, feature_dim) average-pooled features: what the heads read.
    pub features: Vec<Tensor>,
    /// (N, C) GeM-pooled last feature maps: the retrieval descriptors.
    pub descriptors: Vec<Tensor>,
}

/// How each backbone's last feature maps become its retrieval descriptor (`index.regions`,
/// `index.scales`, `search.flip_queries`). On the emoji pairs (kit, every category searched by
/// cosine over maps the Rust networks wrote) none beat GeM over the whole map by more than
/// noise: regions summed 2 x 2 R@1 0.697 against 0.700, two scales (1.0, 0.71) 0.702, the mirror
/// image averaged in 0.701; each costs a pass or more, so all are off by default.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    /// 0: GeM over the whole map; N: plus each region of an N x N grid, summed, R-MAC style.
    pub regions: usize,
    /// Input scales, 1.0 among them (the heads read that pass).
    pub scales: Vec<f32>,
    /// Queries only: the mirror image's descriptors summed in.
    pub flip_queries: bool,
}

impl Default for Descriptor {
    fn default() -> Descriptor {
        Descriptor { regions: 0, scales: vec![1.0], flip_queries: false }
    }
}

impl Descriptor {
    pub fn from_config(config: &crate::config::Config) -> Descriptor {
        Descriptor { regions: config.index.regions, scales: config.index.scales.clone(), flip_queries: config.search.flip_queries }
    }

    /// What `EmbeddingKey.pooling` records: "gem3" for the default, so indexes written before
    /// these settings stay valid; the query-only flip changes no stored vector.
    pub fn key(&self) -> String {
        let mut key = format!("gem{GEM_P}");
        if self.regions > 0 {
            key.push_str(&format!("-r{}", self.regions));
        }
        if self.scales != [1.0] {
            key.push_str(&format!("-s{}", self.scales.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")));
        }
        key
    }

    /// (N, C, h, w) -> (N, C): GeM over the map, plus its grid's regions when asked, each
    /// L2-normalised before the sum.
    pub fn pool(&self, map: &Tensor) -> Tensor {
        let whole = gem(map, GEM_P);
        if self.regions == 0 {
            return whole;
        }
        let unit = |t: Tensor| &t / t.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        let (height, width) = (map.size()[2], map.size()[3]);
        let bounds = |length: i64, cell: usize| ((length * cell as i64) / self.regions as i64, (length * (cell as i64 + 1)) / self.regions as i64);
        let mut sum = unit(whole);
        for row in 0..self.regions {
            for column in 0..self.regions {
                let ((top, bottom), (left, right)) = (bounds(height, row), bounds(width, column));
                let region = map.narrow(2, top, (bottom - top).max(1)).narrow(3, left, (right - left).max(1));
                sum += unit(gem(&region, GEM_P));
            }
        }
        sum
    }
}

/// One backbone's pooled features and descriptors of `images`, in forward batches: the
/// features from the pass at scale 1.0, the descriptor summed over every pass `descriptor`
/// asks for (each L2-normalised), the mirror image's among them for queries.
fn features_of(backbone: &Backbone, images: &[RgbImage], augmentation: Option<&[u64]>, descriptor: &Descriptor, query: bool) -> (Tensor, Tensor) {
    let step = forward_batch(backbone.device);
    let (features, descriptors): (Vec<Tensor>, Vec<Tensor>) = (0..images.len())
        .step_by(step)
        .map(|start| {
            let end = (start + step).min(images.len());
            let rows = (end - start) as i64;
            let pass = |scale: f32, flip: bool| {
                let mut preprocess = backbone.spec.preprocess;
                if scale != 1.0 {
                    preprocess.crop = (preprocess.crop as f32 * scale).round() as u32;
                    preprocess.resize = (preprocess.resize as f32 * scale).round() as u32;
                }
                let batch = preprocess.batch(&images[start..end], backbone.device);
                let batch = match augmentation {
                    Some(seeds) => augment(&batch, &seeds[start..end], 90.0),
                    None => batch,
                };
                let batch = if flip { batch.flip([3]) } else { batch };
                let batch = if backbone.device.is_cuda() { pad_to_bucket(batch) } else { batch };
                let outputs = backbone.forward(&batch);
                let pooled = tch::no_grad(|| descriptor.pool(&outputs.map.narrow(0, 0, rows)));
                (outputs.features.narrow(0, 0, rows), pooled)
            };
            let (features, whole) = pass(1.0, false);
            let mut passes = vec![whole];
            passes.extend(descriptor.scales.iter().filter(|&&s| s != 1.0).map(|&s| pass(s, false).1));
            if query && descriptor.flip_queries {
                passes.push(pass(1.0, true).1);
            }
            let unit = |t: Tensor| &t / t.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
            let descriptor = if passes.len() == 1 { passes.pop().expect("one pass") } else { tch::no_grad(|| passes.into_iter().map(unit).reduce(|a, b| a + b).expect("passes")) };
            (features, descriptor)
        })
        .unzip();
    let join = |parts: Vec<Tensor>, width: i64| if parts.is_empty() { Tensor::zeros([0, width], (Kind::Float, backbone.device)) } else { Tensor::cat(&parts, 0) };
    (join(features, backbone.spec.feature_dim), join(descriptors, backbone.spec.descriptor_dim()))
}

/// Pooled features and descriptors of `images` from every backbone, optionally through the
/// augmentation with one seed per image. The backbones run one after another: driving them
/// from three scoped threads per call made the ensemble 7x slower on an H200 (p50 15.4 to
/// 112.7 ms at batch 1, indexing 1,174 to 548 images/s), as every new thread pays libtorch's
/// per-thread CUDA set-up. Threads that live as long as the models are what to try next.
pub fn backbone_features(backbones: &[Backbone], images: &[RgbImage], augmentation: Option<&[u64]>) -> BackboneFeatures {
    described_features(backbones, images, augmentation, &Descriptor::default(), false)
}

/// As [`backbone_features`], with descriptors as `descriptor` asks (`query`: a shopper's photo).
pub fn described_features(backbones: &[Backbone], images: &[RgbImage], augmentation: Option<&[u64]>, descriptor: &Descriptor, query: bool) -> BackboneFeatures {
    let (features, descriptors) = backbones.iter().map(|backbone| features_of(backbone, images, augmentation, descriptor, query)).unzip();
    BackboneFeatures { features, descriptors }
}

/// One image's result: the vote material and two embeddings, both unit vectors made of each
/// backbone's L2-normalised vector, concatenated and scaled by 1/sqrt(backbones), so that one dot
/// product is the mean of the backbones' cosine similarities.
pub struct Classification {
    pub vote: ImageVote,
    /// From the backbones' GeM-pooled last feature maps.
    pub pooled: Vec<f32>,
    /// From the heads' penultimate layers.
    pub penultimate: Vec<f32>,
    /// The clip embedder's unit vector; empty when it is not loaded.
    pub clip: Vec<f32>,
}

impl Classification {
    /// The vector `source` names; `Combined` is both halves scaled by 1/sqrt(2), so that one
    /// dot product is the mean of the six cosines (three descriptors, three head vectors).
    pub fn embedding(&self, source: EmbeddingSource) -> Vec<f32> {
        match source {
            EmbeddingSource::Pooled => self.pooled.clone(),
            EmbeddingSource::Head => self.penultimate.clone(),
            EmbeddingSource::Combined => self.pooled.iter().chain(&self.penultimate).map(|x| x * std::f32::consts::FRAC_1_SQRT_2).collect(),
            EmbeddingSource::Clip => self.clip.clone(),
        }
    }
}

/// Width of the vectors `source` gives for `profile`'s backbones.
pub fn embedding_dim(source: EmbeddingSource, profile: Profile) -> usize {
    let specs = super::backbones(profile);
    let pooled: usize = specs.iter().map(|s| s.descriptor_dim() as usize).sum();
    let head = specs.len() * HEAD_WIDTH as usize;
    match source {
        EmbeddingSource::Pooled => pooled,
        EmbeddingSource::Head => head,
        EmbeddingSource::Combined => pooled + head,
        EmbeddingSource::Clip => crate::clip::DIM,
    }
}

/// What `index.whitening_*` asks, over the descriptor part of the embedding: all of a pooled
/// vector, the first part of a combined one, none of head vectors (they were not measured).
pub fn whitening(config: &crate::config::Config) -> Option<WhiteningSettings> {
    let index = &config.index;
    let span = match index.embedding {
        EmbeddingSource::Head | EmbeddingSource::Clip => 0,
        EmbeddingSource::Pooled | EmbeddingSource::Combined => embedding_dim(EmbeddingSource::Pooled, config.models.profile),
    };
    (index.whitening && span > 0).then_some(WhiteningSettings { span, components: index.whitening_components, shrinkage: index.whitening_shrinkage, relearn_share: index.whitening_relearn_share })
}

/// Rows of each (N, D_i) part L2-normalised, concatenated, and scaled by 1/sqrt(parts).
pub fn mean_cosine_embedding(parts: &[Tensor]) -> Tensor {
    let normalised: Vec<Tensor> = parts.iter().map(|p| p / p.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)).collect();
    Tensor::cat(&normalised, 1) / (parts.len().max(1) as f64).sqrt()
}

/// The three backbones with their trained heads.
pub struct Ensemble {
    pub backbones: Vec<Backbone>,
    pub heads: Vec<Head>,
    pub info: HeadsInfo,
    /// How descriptors are pooled; the default unless the caller sets it from the config.
    pub descriptor: Descriptor,
    /// The clip embedder's image tower, when `index.embedding = "clip"`: the vote stays the
    /// backbones', the vectors searched are its.
    pub clip: Option<crate::clip::Clip>,
}

/// The clip embedder's input: open_clip's eval transform.
pub const CLIP_INPUT: Preprocess = Preprocess { resize: 224, crop: 224, normalisation: Normalisation::Clip, resample: Resample::Bicubic };

impl Ensemble {
    /// The ensemble `config` asks for: its profile's backbones with the heads of
    /// `models.heads_dir`, descriptors as `index` says, and the clip embedder's image tower
    /// when `index.embedding = "clip"`.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Ensemble> {
        let models = &config.models;
        let placement = super::placement(models)?;
        let mut ensemble = Ensemble::load(&super::backbones(models.profile), &models.dir, &models.heads_dir, placement)?;
        ensemble.descriptor = Descriptor::from_config(config);
        if config.index.embedding == EmbeddingSource::Clip {
            let mut clip = crate::clip::Clip::load(&crate::clip::weights(&models.dir)?, None, crate::clip::Towers::Image, placement.device)?;
            if models.clip_int8 {
                clip.quantise_image_tower()?;
            }
            ensemble.clip = Some(clip);
        }
        Ok(ensemble)
    }

    pub fn load(specs: &[BackboneSpec], models_dir: &Path, heads_dir: &Path, placement: impl Into<Placement>) -> anyhow::Result<Ensemble> {
        let placement = placement.into();
        let info = HeadsInfo::load(heads_dir)?;
        let device = placement.device;
        let mut backbones = Vec::new();
        let mut heads = Vec::new();
        for spec in specs {
            anyhow::ensure!(
                info.backbones.iter().any(|b| b == spec.id),
                "the heads in {} were trained for {:?}, not for {}: train again for this profile",
                heads_dir.display(),
                info.backbones,
                spec.id
            );
            let mut backbone = Backbone::load(*spec, models_dir, placement)?;
            let tuned = crate::files::heads::tuned_backbone_path(heads_dir, spec.id);
            if tuned.exists() {
                backbone.load_weights(&tuned)?;
            }
            backbones.push(backbone);
            let mut head = Head::new(spec.feature_dim, info.classes.len() as i64, device);
            let path = crate::files::heads::head_path(heads_dir, spec.id);
            head.vars.load(&path).with_context(|| format!("cannot load the head {}", path.display()))?;
            heads.push(head);
        }
        Ok(Ensemble { backbones, heads, info, descriptor: Descriptor::default(), clip: None })
    }

    /// Classifies a batch: each backbone runs over all images (once, or once per pass the
    /// descriptor asks for), then its head. `query`: shoppers' photos, not catalogue items.
    pub fn classify(&self, images: &[RgbImage], query: bool) -> anyhow::Result<Vec<Classification>> {
        let BackboneFeatures { features, descriptors } = described_features(&self.backbones, images, None, &self.descriptor, query);
        let (probabilities, pooled, penultimate) = tch::no_grad(|| {
            let hidden: Vec<Tensor> = self.heads.iter().zip(&features).map(|(head, f)| head.penultimate_t(f, false)).collect();
            let probabilities: Vec<Tensor> = self.heads.iter().zip(&hidden).map(|(head, h)| head.out.forward(h).softmax(-1, Kind::Float).to_device(Device::Cpu)).collect();
            let to_cpu = |t: Tensor| t.to_device(Device::Cpu).to_kind(Kind::Float);
            (probabilities, to_cpu(mean_cosine_embedding(&descriptors)), to_cpu(mean_cosine_embedding(&hidden)))
        });
        let clip = match &self.clip {
            Some(clip) => crate::clip::rows(&clip.embed_pixels(&CLIP_INPUT.batch(images, clip.device()))?)?,
            None => vec![Vec::new(); images.len()],
        };
        let read = |tensor: Tensor, what: &str, row: i64| Vec::<f32>::try_from(tensor).with_context(|| format!("libtorch gave back no {what} for image {row} of the batch"));
        (0..images.len() as i64)
            .map(|row| {
                let backbones = self
                    .backbones
                    .iter()
                    .zip(&probabilities)
                    .map(|(backbone, p)| Ok(BackboneVote { backbone: backbone.spec.id.to_string(), probabilities: read(p.get(row), "probabilities", row)? }))
                    .collect::<anyhow::Result<_>>()?;
                Ok(Classification {
                    vote: ImageVote { categories: self.info.classes.clone(), backbones },
                    pooled: read(pooled.get(row), "pooled features", row)?,
                    penultimate: read(penultimate.get(row), "head features", row)?,
                    clip: clip[row as usize].clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmentation_is_a_rotation_or_flip_and_reproducible() {
        let image = Tensor::arange(16, (Kind::Float, Device::Cpu)).view([1, 1, 4, 4]);
        let a = augment(&image, &[7], 90.0);
        let b = augment(&image, &[7], 90.0);
        assert_eq!(a.size(), [1, 1, 4, 4]);
        assert!(a.equal(&b), "same seed, same transform");
        let identity = augment(&image, &[7], 0.0);
        // With no rotation only flips remain: the same values, possibly mirrored.
        let sorted = |t: &Tensor| t.view([-1]).sort(0, false).0;
        assert!(sorted(&identity).allclose(&sorted(&image), 1e-5, 1e-5, false));
    }

    #[test]
    fn gem_is_the_average_at_one_and_leans_to_the_peak_as_p_grows() {
        let map = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 9.0]).view([1, 1, 2, 2]);
        let at = |p: f64| gem(&map, p).double_value(&[0, 0]);
        assert!((at(1.0) - 3.0).abs() < 1e-5, "p = 1: the average");
        assert!((at(3.0) - (732.0f64 / 4.0).cbrt()).abs() < 1e-4, "p = 3: the cube root of the mean cube");
        assert!(at(3.0) > at(1.0) && at(30.0) > 8.0 && at(30.0) <= 9.0, "towards the maximum");
    }

    #[test]
    fn every_descriptor_setting_keeps_the_vector_length_and_the_key_names_what_changes_stored_vectors() {
        tch::manual_seed(0);
        let backbone = Backbone::untrained(crate::vision::backbones(Profile::Kit)[1], Device::Cpu);
        let images = vec![RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 90]))];
        let (plain, every) = (Descriptor::default(), Descriptor { regions: 2, scales: vec![1.0, 0.71], flip_queries: true });
        let run = |descriptor: &Descriptor, query: bool| described_features(std::slice::from_ref(&backbone), &images, None, descriptor, query);
        let (a, b, c) = (run(&plain, true), run(&every, true), run(&every, false));
        let width = backbone.spec.descriptor_dim();
        for features in [&a, &b, &c] {
            assert_eq!(features.descriptors[0].size(), [1, width], "the same length whatever the passes");
        }
        assert!(a.features[0].equal(&b.features[0]), "the heads read the plain pass at scale 1");
        assert!(!b.descriptors[0].allclose(&c.descriptors[0], 1e-6, 1e-6, false), "the mirror image only for queries");
        assert!(!a.descriptors[0].allclose(&c.descriptors[0], 1e-6, 1e-6, false), "regions and scales change the descriptor");
        assert_eq!(plain.key(), "gem3", "indexes written before these settings stay valid");
        assert_eq!(every.key(), "gem3-r2-s1,0.71");
        assert_eq!(Descriptor { flip_queries: true, ..Descriptor::default() }.key(), "gem3", "flipping queries changes no stored vector");
    }

    #[test]
    fn the_combined_vector_is_a_unit_vector_whose_dot_product_averages_both_halves() {
        let unit = |v: &[f32]| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let vote = || ImageVote { categories: vec![], backbones: vec![] };
        let (a, b) = (
            Classification { vote: vote(), pooled: unit(&[1.0, 0.0]), penultimate: unit(&[1.0, 1.0]), clip: vec![0.6, 0.8] },
            Classification { vote: vote(), pooled: unit(&[0.0, 1.0]), penultimate: unit(&[1.0, 1.0]), clip: Vec::new() },
        );
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        let (ca, cb) = (a.embedding(EmbeddingSource::Combined), b.embedding(EmbeddingSource::Combined));
        assert!((dot(&ca, &ca) - 1.0).abs() < 1e-6);
        assert!((dot(&ca, &cb) - 0.5).abs() < 1e-6, "mean of cosine 0 (pooled) and cosine 1 (head)");
        assert_eq!(a.embedding(EmbeddingSource::Clip), [0.6, 0.8], "the clip embedder's vector as it came");
    }

    #[test]
    fn batches_are_padded_to_the_next_gpu_size_with_their_first_row() {
        let batch = Tensor::arange(5, (Kind::Float, Device::Cpu)).view([5, 1]);
        let padded = pad_to_bucket(batch.shallow_clone());
        assert_eq!(padded.size(), [8, 1]);
        assert!(padded.narrow(0, 0, 5).equal(&batch), "the real rows come first, unchanged");
        assert_eq!(Vec::<f32>::try_from(padded.narrow(0, 5, 3).view([-1])).unwrap(), [0.0, 0.0, 0.0]);
        assert_eq!(pad_to_bucket(Tensor::zeros([64, 1], (Kind::Float, Device::Cpu))).size(), [64, 1]);
        assert_eq!(pad_to_bucket(Tensor::zeros([100, 1], (Kind::Float, Device::Cpu))).size(), [100, 1], "above the largest size: as it is");
    }

    #[test]
    fn head_shapes_and_dropout_only_in_training() {
        tch::manual_seed(1);
        let head = Head::new(8, 3, Device::Cpu);
        let features = Tensor::randn([5, 8], (Kind::Float, Device::Cpu));
        let eval1 = head.forward_t(&features, false);
        assert_eq!(eval1.size(), [5, 3]);
        assert!(eval1.equal(&head.forward_t(&features, false)), "evaluation is deterministic");
        assert!(!head.forward_t(&features, true).equal(&head.forward_t(&features, true)), "training drops units at random");
    }
}
