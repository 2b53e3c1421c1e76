//! The clip embedder computes what open_clip computes: its towers and tokenizer against open_clip
//! 3.3.0 on the same random ViT-B/32 weights (`tests/data/open_clip_reference.py`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use lookalike::clip::{Clip, Tokenizer, Towers};
use lookalike::imaging::{self, ImageLimits};
use lookalike::vision::ensemble::CLIP_INPUT;
use tch::{Device, Kind, Tensor};

use crate::common::heavy;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// 1 - the smallest cosine between matching rows of two (N, D) tensors.
fn worst_cosine_gap(got: &Tensor, want: &Tensor) -> f64 {
    let cosine = (got * want).sum_dim_intlist([-1].as_slice(), false, Kind::Float) / (got.norm_scalaropt_dim(2, [-1], false) * want.norm_scalaropt_dim(2, [-1], false));
    1.0 - cosine.min().double_value(&[])
}

#[test]
fn clip_matches_open_clip_for_the_same_weights() {
    let _heavy = heavy(module_path!());
    let scratch = tempfile::tempdir().unwrap();
    let status = Command::new("python3").arg(root().join("tests/data/open_clip_reference.py")).arg(scratch.path()).status().unwrap();
    assert!(status.success(), "the open_clip reference failed (make setup installs open-clip-torch 3.3.0)");
    let reference: HashMap<String, Tensor> = Tensor::read_safetensors(scratch.path().join("reference.safetensors")).unwrap().into_iter().collect();
    let vocabulary = root().join("models").join(lookalike::clip::VOCABULARY);
    let clip = Clip::load(&scratch.path().join("clip.safetensors"), Some(&vocabulary), Towers::Both, Device::Cpu).unwrap();
    assert_eq!(clip.shape, lookalike::clip::Shape::VIT_B_32, "the sizes read from the file");

    // The tokenizer: every sentence's 77 ids, exactly.
    let sentences: Vec<String> = std::fs::read_to_string(root().join("tests/data/clip_sentences.txt")).unwrap().lines().map(str::to_string).collect();
    assert!(sentences.len() >= 200);
    let tokenizer = Tokenizer::load(&vocabulary).unwrap();
    let want = Vec::<i64>::try_from(reference["tokens"].flatten(0, -1)).unwrap();
    let mismatched: Vec<(usize, &String)> =
        sentences.iter().enumerate().filter(|(n, sentence)| tokenizer.context(sentence)[..] != want[n * lookalike::clip::CONTEXT..(n + 1) * lookalike::clip::CONTEXT]).collect();
    println!("tokenizer: {} of {} sentences give open_clip's ids", sentences.len() - mismatched.len(), sentences.len());
    assert!(mismatched.is_empty(), "ids differ for {mismatched:?}");

    // The towers on the same input: open_clip's preprocessed pixels, the sentences.
    let images = clip.embed_pixels(&reference["pixels"]).unwrap();
    let image_gap = worst_cosine_gap(&images, &reference["image_embeddings"]);
    let texts = clip.embed_texts(&sentences).unwrap();
    let text_gap = worst_cosine_gap(&texts, &reference["text_embeddings"]);
    println!("towers: 1 - cosine at most {image_gap:.2e} (images), {text_gap:.2e} (sentences)");
    assert!(image_gap <= 1e-4 && text_gap <= 1e-4, "images {image_gap:.2e}, sentences {text_gap:.2e}");

    // models.clip_int8: the image tower's linear layers in 8 bits, against open_clip's f32.
    let mut int8 = Clip::load(&scratch.path().join("clip.safetensors"), None, Towers::Image, Device::Cpu).unwrap();
    int8.quantise_image_tower().unwrap();
    let int8_gap = worst_cosine_gap(&int8.embed_pixels(&reference["pixels"]).unwrap(), &reference["image_embeddings"]);
    println!("image tower in 8 bits: 1 - cosine at most {int8_gap:.2e}");
    assert!(int8_gap <= 1e-3, "{int8_gap:.2e}");

    // The whole path from the PNG files: decoding and open_clip's eval transform (bicubic resize
    // of the shorter side, centre crop, OpenAI's normalisation) in libtorch, not PIL.
    let decoded: Vec<image::RgbImage> =
        (0..5).map(|n| imaging::decode(&std::fs::read(scratch.path().join(format!("images/{n}.png"))).unwrap(), ImageLimits { max_bytes: 1 << 24, max_pixels: 1 << 24 }).unwrap()).collect();
    let pixels = CLIP_INPUT.batch(&decoded, Device::Cpu);
    let pixel_error: Vec<f64> = (0..5).map(|n| (pixels.get(n) - reference["pixels"].get(n)).abs().max().double_value(&[])).collect();
    let whole = clip.embed_pixels(&pixels).unwrap();
    let whole_gaps: Vec<f64> = (0..5).map(|n| worst_cosine_gap(&whole.narrow(0, n, 1), &reference["image_embeddings"].narrow(0, n, 1))).collect();
    println!("from the PNGs: largest pixel difference per image {pixel_error:.3?} (normalised units), 1 - cosine {whole_gaps:?}");
    assert!(pixel_error[0] < 1e-5 && whole_gaps[0] < 1e-6, "a 224 x 224 picture is not resized: the same pixels");
    assert!(whole_gaps.iter().all(|gap| *gap <= 1e-4), "resized pictures stay within 1e-4 of PIL's: {whole_gaps:?}");
}

/// A models folder with the kit and a small clip embedder of random weights (ViT-B/32's layout,
/// two layers, narrow), for the wiring; the parity test above holds the arithmetic.
fn models_with_a_small_clip(scratch: &std::path::Path) -> PathBuf {
    let models = scratch.join("models");
    std::fs::create_dir_all(models.join("clip")).unwrap();
    std::os::unix::fs::symlink(root().join("models/kit"), models.join("kit")).unwrap();
    std::fs::copy(root().join("models/manifest.toml"), models.join("manifest.toml")).unwrap();
    let shape = lookalike::clip::Shape { image_width: 64, image_layers: 2, text_width: 64, text_layers: 2, ..lookalike::clip::Shape::VIT_B_32 };
    tch::manual_seed(7);
    Clip::untrained(shape, Towers::Both, None, Device::Cpu).save(&models.join(lookalike::clip::WEIGHTS)).unwrap();
    models
}

#[test]
fn a_catalogue_searched_through_the_clip_embedder() {
    use lookalike::search::{Query, SearchService};
    let _heavy = heavy(module_path!());
    let mut world = crate::common::World::new(4);
    // Random weights embed these pictures almost alike: no near-duplicate folding, so every
    // item stays a hit of its own.
    let clip = [("LOOKALIKE__INDEX__EMBEDDING", "clip"), ("LOOKALIKE__TEXT__METHODS", "[\"lexical\", \"clip\"]"), ("LOOKALIKE__INDEX__NEAR_DUPLICATE_COSINE", "1.0")];

    // Without the weights: one line that says what to run.
    let refused = SearchService::start(&world.config(&clip)).err().expect("no weights, no service");
    assert!(format!("{refused:#}").contains("lookalike models fetch clip"), "{refused:#}");

    let models = models_with_a_small_clip(&world.root);
    world.env.retain(|(key, _)| key != "LOOKALIKE__MODELS__DIR");
    world.env.push(("LOOKALIKE__MODELS__DIR".into(), models.to_str().unwrap().into()));
    let service = SearchService::start(&world.config(&clip)).unwrap();
    let summary = service.upkeep().reindex(&mut |_| {}).unwrap();
    assert_eq!(summary.embedded, 8);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // A catalogue picture finds itself through the clip vectors; the backbones still vote.
    let itself = std::fs::read(world.catalogue.join("cool/02.png")).unwrap();
    let outcome = runtime.block_on(service.search(Query { image: itself, k: Some(3), ..Query::default() })).unwrap();
    assert_eq!(outcome.vote.backbones.len(), 3, "the vote is the backbones'");
    assert_eq!(outcome.hits[0].item.id, "cool/02.png");
    assert!(outcome.hits[0].cosine > 0.999, "{}", outcome.hits[0].cosine);

    // Words alone that no item's text holds: the pictures' ranking still answers, and the clip
    // method read the sentence.
    let outcome = runtime.block_on(service.search(Query { text: Some("something velvety".into()), k: Some(3), ..Query::default() })).unwrap();
    assert_eq!(outcome.hits.len(), 3, "{:?} {:?} {:?}", outcome.words, outcome.decision, outcome.hits);
    assert!(outcome.words[0].contains("pictures compared with the sentence (clip)"), "{:?}", outcome.words);
    let methods: Vec<_> = outcome.intent.as_ref().unwrap().methods.iter().map(|m| m.method).collect();
    assert_eq!(methods, [lookalike::config::TextMethod::Lexical, lookalike::config::TextMethod::Clip]);
}
