//! Tuning the backbones' last stages on the catalogue, feasible on a CPU (`train
//! --fine-tune-stages N`): each training image's map at the last frozen stage is computed once
//! per rendering and cached on disk by content, like the heads' features, so an epoch costs only
//! the last stages and the head. They train with the classification loss and a metric loss on
//! the retrieval descriptors (GeM of the last map), whose positives are styled renderings of
//! the same picture ([`super::styles`]). The tuned backbone is saved beside its head and loaded
//! like any fine-tuned layers.

use std::time::Instant;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

use super::data;
use super::ensemble::{gem, Head, GEM_P};
use super::train::{metric_loss, CacheFolder, Contents, TrainOptions, TrainState};
use super::Backbone;
use crate::catalogue::Example;
use crate::files::{heads, replace_atomically};
use crate::imaging;
use crate::plot::EpochRecord;

/// Step 3 of `train`, with `fine_tune_stages`: each backbone's last stages tuned with its best
/// head, at a tenth of the learning rate; a resumed run whose history has fine-tune epochs
/// does not tune again.
pub(super) fn fine_tune_backbones(backbones: &mut [Backbone], heads: &mut [Head], split: &data::Split, state: &mut TrainState, options: &TrainOptions) -> anyhow::Result<()> {
    if options.fine_tune_stages == 0 || state.history.iter().any(|r| r.phase == "fine-tune") {
        return Ok(());
    }
    for (backbone, head) in backbones.iter_mut().zip(heads.iter_mut()) {
        head.vars.load(heads::head_path(&options.out, backbone.spec.id))?;
        let maps = Maps::of(backbone, split, options)?;
        let records = tune(backbone, head, &maps, state.epochs_done, options)?;
        state.history.extend(records);
    }
    state.save(&options.out)
}

/// One backbone's maps at its last frozen stage: the training images under each rendering
/// (0: as they are), the validation images as they are; rows of images that did not decode
/// are left out.
struct Maps {
    train: Vec<Tensor>,
    train_labels: Tensor,
    val: Tensor,
    /// The validation images' first rendering, when there are renderings.
    val_styled: Option<Tensor>,
    val_labels: Tensor,
}

impl Maps {
    fn of(backbone: &Backbone, split: &data::Split, options: &TrainOptions) -> anyhow::Result<Maps> {
        let renderings = 1 + options.fine_tune_styles;
        let progress = crate::progress::bar(((split.train.len() * renderings) + split.val.len() * renderings.min(2)) as u64, "maps {msg} {bar:30} {pos}/{len} images, {per_sec}, eta {eta}");
        progress.set_message(backbone.spec.id);
        let mut train = Vec::new();
        let mut decoded = Vec::new();
        for rendering in 0..renderings {
            let (maps, ok) = cached_maps(backbone, &split.train, rendering, options, &progress)?;
            train.push(maps);
            decoded.push(ok);
        }
        // A row is kept where the picture decoded (then every rendering of it did).
        let keep: Vec<i64> = (0..split.train.len()).filter(|&i| decoded[0][i]).map(|i| i as i64).collect();
        let keep = Tensor::from_slice(&keep);
        let train = train.into_iter().map(|maps| maps.index_select(0, &keep)).collect();
        let train_labels = Tensor::from_slice(&split.train.iter().map(|e| e.class as i64).collect::<Vec<_>>()).index_select(0, &keep);
        let (val, val_ok) = cached_maps(backbone, &split.val, 0, options, &progress)?;
        let val_keep = Tensor::from_slice(&(0..split.val.len()).filter(|&i| val_ok[i]).map(|i| i as i64).collect::<Vec<_>>());
        let val_labels = Tensor::from_slice(&split.val.iter().map(|e| e.class as i64).collect::<Vec<_>>()).index_select(0, &val_keep);
        let val_styled = if renderings > 1 { Some(cached_maps(backbone, &split.val, 1, options, &progress)?.0.index_select(0, &val_keep)) } else { None };
        progress.finish_and_clear();
        Ok(Maps { train, train_labels, val: val.index_select(0, &val_keep), val_styled, val_labels })
    }
}

/// Images per cache file and per progress step.
const CHUNK: usize = 64;

/// The maps of `examples` under `rendering` at `backbone`'s last frozen stage (f16, on the
/// CPU), and which images decoded: from the cache folder where it has them by content.
fn cached_maps(backbone: &Backbone, examples: &[Example], rendering: usize, options: &TrainOptions, progress: &indicatif::ProgressBar) -> anyhow::Result<(Tensor, Vec<bool>)> {
    let mut namespace = Sha256::new();
    namespace.update(format!("maps v1, {}, last {} stages frozen-out, rendering {rendering}, seed {}", backbone.spec.id, options.fine_tune_stages, if rendering > 0 { options.seed } else { 0 }));
    let path = options.cache.join(&hex::encode(namespace.finalize())[..16]);
    std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut folder = CacheFolder::read(path)?;
    let contents = Contents::read(examples);
    let missing = folder.missing(&contents.hashes);
    progress.inc((examples.len() - missing.len()) as u64);
    for chunk in missing.chunks(CHUNK) {
        let (mut maps, mut decoded) = (Vec::new(), Vec::new());
        for &index in chunk {
            let image = imaging::decode(&contents.bytes[index], options.limits);
            decoded.push(u8::from(image.is_ok()));
            let image = image.unwrap_or_else(|_| image::RgbImage::new(32, 32));
            let image = if rendering > 0 {
                let seed = u64::from_le_bytes(contents.hashes[index][..8].try_into().expect("32-byte hash")) ^ options.seed ^ (rendering as u64) << 56;
                super::styles::render(&image, seed)
            } else {
                image
            };
            let batch = backbone.spec.preprocess.batch(std::slice::from_ref(&image), backbone.device);
            maps.push(backbone.frozen_map(&batch, options.fine_tune_stages).to_device(Device::Cpu).to_kind(Kind::Half));
            progress.inc(1);
        }
        folder.add(&contents, chunk, vec![("map".to_string(), Tensor::cat(&maps, 0))], decoded)?;
    }
    let (rows, ok): (Vec<Tensor>, Vec<bool>) = contents
        .hashes
        .iter()
        .map(|hash| {
            let (file, row) = folder.known[hash];
            (folder.files[file]["map"].narrow(0, row, 1), folder.files[file]["decoded"].int64_value(&[row]) == 1)
        })
        .unzip();
    Ok((Tensor::cat(&rows, 0), ok))
}

/// The validation loss tuning is judged by: the classification loss, plus the metric loss
/// between the validation images and their first rendering (what tuning is for: the
/// classification loss alone kept none of the tuned stages of two backbones out of three on
/// the emoji pairs). Also the validation accuracy.
fn validate(backbone: &Backbone, head: &Head, maps: &Maps, options: &TrainOptions) -> (f64, f64) {
    let tail = options.fine_tune_stages;
    // In batches, as training runs: one pass over every validation map could outgrow a GPU.
    let pass = |maps: &Tensor| -> (Tensor, Tensor) {
        let (features, descriptors): (Vec<Tensor>, Vec<Tensor>) = (0..maps.size()[0])
            .step_by(options.batch_size.max(1))
            .map(|start| {
                let outputs = backbone.tail_trainable(&maps.narrow(0, start, (options.batch_size as i64).min(maps.size()[0] - start)).to_kind(Kind::Float), tail);
                (outputs.features, gem(&outputs.map, GEM_P))
            })
            .unzip();
        (Tensor::cat(&features, 0), Tensor::cat(&descriptors, 0))
    };
    tch::no_grad(|| {
        let (features, descriptors) = pass(&maps.val);
        let logits = head.forward_t(&features, false);
        let labels = maps.val_labels.to_device(backbone.device);
        let mut loss = logits.cross_entropy_for_logits(&labels).double_value(&[]);
        if let (Some(styled), true) = (&maps.val_styled, options.fine_tune_metric_weight > 0.0) {
            loss += options.fine_tune_metric_weight * metric_loss(&descriptors, &pass(styled).1).double_value(&[]);
        }
        (loss, logits.argmax(-1, false).eq_tensor(&labels).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]))
    })
}

/// Trains `backbone`'s last stages and `head` on `maps`; keeps both whenever the validation
/// loss ([`validate`]) beats the untuned one's and every earlier epoch's. One record per epoch,
/// with its time.
fn tune(backbone: &mut Backbone, head: &mut Head, maps: &Maps, first_epoch: usize, options: &TrainOptions) -> anyhow::Result<Vec<EpochRecord>> {
    let tail = options.fine_tune_stages;
    let opened = backbone.open_tail(tail);
    tracing::info!(backbone = backbone.spec.id, parameters = opened.len(), "tuning the last stages");
    let learning_rate = options.learning_rate / 10.0;
    let mut backbone_optimizer = tch::nn::Adam::default().build(backbone.vars(), learning_rate)?;
    let mut head_optimizer = head.optimizer(learning_rate)?;
    let rows = maps.train_labels.size()[0];
    let float = |t: &Tensor| t.to_kind(Kind::Float);
    let progress = crate::progress::bar((options.fine_tune_epochs as i64 * rows) as u64, "fine-tune {msg} {bar:30} {pos}/{len} images, eta {eta}");
    progress.set_message(backbone.spec.id);
    let mut records = Vec::new();
    let (mut best, _) = validate(backbone, head, maps, options);
    tracing::info!(backbone = backbone.spec.id, val_loss = best, "before tuning");
    for round in 1..=options.fine_tune_epochs {
        let started = Instant::now();
        let mut order: Vec<i64> = (0..rows).collect();
        let mut rng = crate::rng::Rng::new(options.seed.wrapping_add(1000 + round as u64));
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        for batch in order.chunks(options.batch_size) {
            let picked = Tensor::from_slice(batch);
            let labels = maps.train_labels.index_select(0, &picked).to_device(backbone.device);
            let plain = backbone.tail_trainable(&float(&maps.train[0].index_select(0, &picked)), tail);
            let logits = head.forward_t(&plain.features, true);
            let mut loss = logits.cross_entropy_for_logits(&labels);
            if maps.train.len() > 1 && batch.len() > 1 {
                let rendering = 1 + rng.below(maps.train.len() as u64 - 1) as usize;
                let styled = backbone.tail_trainable(&float(&maps.train[rendering].index_select(0, &picked)), tail);
                loss = (&loss + head.forward_t(&styled.features, true).cross_entropy_for_logits(&labels)) / 2.0;
                if options.fine_tune_metric_weight > 0.0 {
                    loss += options.fine_tune_metric_weight * metric_loss(&gem(&plain.map, GEM_P), &gem(&styled.map, GEM_P));
                }
            }
            backbone_optimizer.zero_grad();
            head_optimizer.zero_grad();
            loss.backward();
            backbone_optimizer.step();
            head_optimizer.step();
            loss_sum += loss.double_value(&[]) * batch.len() as f64;
            correct += logits.argmax(-1, false).eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]) as usize;
            progress.inc(batch.len() as u64);
        }
        let (val_loss, val_accuracy) = validate(backbone, head, maps, options);
        records.push(EpochRecord {
            epoch: first_epoch + round,
            backbone: backbone.spec.id.to_string(),
            train_loss: loss_sum / rows.max(1) as f64,
            train_accuracy: correct as f64 / rows.max(1) as f64,
            val_loss,
            val_accuracy,
            seconds: started.elapsed().as_secs_f64(),
            phase: "fine-tune".into(),
        });
        tracing::info!(backbone = backbone.spec.id, epoch = round, seconds = started.elapsed().as_secs_f64(), val_loss, val_accuracy, "tuning epoch");
        if val_loss < best {
            best = val_loss;
            head.save_atomically(&heads::head_path(&options.out, backbone.spec.id))?;
            replace_atomically(&heads::tuned_backbone_path(&options.out, backbone.spec.id), |partial| Ok(backbone.vars().save(partial)?))?;
        }
    }
    progress.finish_and_clear();
    backbone.close();
    Ok(records)
}
