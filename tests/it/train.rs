//! Transfer learning end to end on the offline kit's real backbones, with a tiny synthetic
//! catalogue: heads, history, plots, resume, skipped files, the ensemble vote and eval.

use std::path::Path;

use lookalike::config::Profile;
use lookalike::vision;
use lookalike::vision::ensemble::{Ensemble, HeadsInfo};
use lookalike::vision::train::{train, TrainOptions};
use tch::Device;

use crate::common::{heavy, kit_backbones, train_options, write_catalogue};

#[test]
fn train_resume_vote_and_eval() {
    let _heavy = heavy(module_path!());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempfile::tempdir().unwrap();
    let (data, out) = (scratch.path().join("data"), scratch.path().join("heads"));
    write_catalogue(&data, 14, 0);
    std::fs::write(data.join("warm/broken.jpg"), b"\xFF\xD8\xFF\xE0 truncated jpeg").unwrap();
    std::fs::write(data.join("cool/readme.txt"), b"not an image").unwrap();
    let mut backbones = kit_backbones();
    // Two more warm pictures for the training split only, as `train --with-feedback` adds the
    // trusted corrections; a category the data lacks is refused.
    let corrections = scratch.path().join("corrections");
    write_catalogue(&corrections, 2, 40);
    std::fs::remove_dir_all(corrections.join("cool")).unwrap();
    let mut options = TrainOptions { epochs: 3, augmented_views: 1, fine_tune_epochs: 1, metric_weight: 0.5, ..train_options(&data, &out, &scratch.path().join("cache")) };
    std::fs::create_dir_all(corrections.join("plaid")).unwrap();
    let unknown = train(&mut backbones, Profile::Kit, &TrainOptions { extra_train: Some(corrections.clone()), ..options.clone() }).unwrap_err();
    assert!(format!("{unknown:#}").contains("category `plaid`"), "{unknown:#}");
    std::fs::remove_dir_all(corrections.join("plaid")).unwrap();
    options.extra_train = Some(corrections);
    let first = train(&mut backbones, Profile::Kit, &options).unwrap();
    assert_eq!(first.classes, ["cool", "warm"]);
    let split = vision::data::split(&data, options.seed).unwrap();
    assert_eq!((first.images, first.extra_images), ((split.train.len() + 2, split.val.len()), 2));
    assert_eq!(first.skipped.len(), 1, "{:?}", first.skipped);
    assert!(first.skipped[0].0.ends_with("broken.jpg"));
    assert_eq!(first.not_images.len(), 1);
    assert_eq!(first.history.len(), 3 * 3, "three heads, three epochs");
    for file in ["heads.json", "history.csv", "training.png", "efficientnet_lite0.safetensors", "squeezenet1_1.safetensors", "inception_v3_mixed5.safetensors"] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    assert_eq!(std::fs::read_to_string(out.join("history.csv")).unwrap().lines().count(), 10);

    // A second run with more epochs resumes: features come from the cache, epochs continue.
    options.epochs = 5;
    let second = train(&mut backbones, Profile::Kit, &options).unwrap();
    assert_eq!(second.history.len(), 5 * 3);
    assert!(second.history.iter().filter(|r| r.backbone == "efficientnet_lite0").map(|r| r.epoch).eq(1..=5));
    assert!(second.extraction_seconds < first.extraction_seconds, "cache: {} s vs {} s", second.extraction_seconds, first.extraction_seconds);
    let best = second.history.iter().map(|r| r.val_accuracy).fold(0.0, f64::max);
    assert!(best >= 0.75, "at least one head separates warm from cool: best {best}");

    // Fine-tuning the last layer of each backbone with its head: logged as its own phase; a
    // backbone that improved is saved beside its head, and the ensemble below loads it.
    options.fine_tune_stages = 1;
    let tuned = train(&mut backbones, Profile::Kit, &options).unwrap();
    let fine: Vec<_> = tuned.history.iter().filter(|r| r.phase == "fine-tune").collect();
    assert_eq!(fine.len(), 3, "{:?}", tuned.history);
    assert!(fine.iter().all(|r| r.epoch == 6 && r.train_loss.is_finite()));
    for backbone in &backbones {
        assert!(backbone.vars().variables().values().all(|t| !t.requires_grad()), "frozen again after fine-tuning");
    }

    // The ensemble: three backbones, three heads, one vote, each backbone's opinion kept.
    drop(backbones);
    let ensemble = Ensemble::load(&vision::backbones(Profile::Kit), &root.join("models"), &out, Device::Cpu).unwrap();
    assert_eq!(HeadsInfo::load(&out).unwrap().classes, ["cool", "warm"]);
    let image = lookalike::imaging::load(&data.join("warm/03.png"), options.limits).unwrap();
    let result = &ensemble.classify(&[image], false).unwrap()[0];
    assert_eq!(result.vote.backbones.len(), 3);
    // Three backbones' unit vectors, concatenated and scaled: one unit vector.
    assert_eq!((result.pooled.len(), result.penultimate.len()), (1280 + 512 + 768, 3 * 1024));
    let combined = result.embedding(lookalike::config::EmbeddingSource::Combined);
    assert_eq!(combined.len(), 1280 + 512 + 768 + 3 * 1024);
    for embedding in [&result.pooled, &result.penultimate, &combined] {
        assert!((embedding.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-4);
    }
    for backbone in &result.vote.backbones {
        assert!((backbone.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
    let span = vision::ensemble::embedding_dim(lookalike::config::EmbeddingSource::Pooled, lookalike::config::Profile::Kit);
    let whitening = lookalike::index::whiten::WhiteningSettings { span, components: 8, shrinkage: 0.1, relearn_share: 0.25 };
    let report = vision::eval::evaluate(&ensemble, &data, options.limits, Some(whitening)).unwrap();
    assert_eq!(report.images, 28);
    let whitened: Vec<_> = report.retrieval.iter().filter(|r| r.whitened).collect();
    assert_eq!(whitened.len(), 1, "the combined vectors also measured whitened");
    assert!((0.0..=1.0).contains(&whitened[0].precision_at_5) && whitened[0].precision_at_5 > 0.0);
    assert_eq!(report.skipped.len(), 1);
    assert!(report.vote.accuracy >= 0.75, "vote accuracy {}", report.vote.accuracy);
    let png = scratch.path().join("confusion.png");
    lookalike::plot::confusion_matrix(&png, "test", &report.classes, &report.vote.confusion).unwrap();
    assert!(image::open(&png).unwrap().width() > 100);
}
