//! The backbones compute what their weights mean: the chapter architectures match torchvision
//! for the same weights and input, the nsfwjs InceptionV3 matches TensorFlow.js, and the kit's
//! ImageNet networks recognise real photos.

use std::path::{Path, PathBuf};
use std::process::Command;

use lookalike::config::Profile;
use lookalike::imaging::{self, ImageLimits};
use lookalike::vision::{self, Backbone, BackboneSpec};
use tch::{Device, Kind, Tensor};

use crate::common::heavy;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn spec(profile: Profile, id: &str) -> BackboneSpec {
    vision::backbones(profile).into_iter().find(|s| s.id == id).unwrap()
}

/// max |got - want| / max |want|: the relative error the issue bounds at 1e-4.
fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    let scale = want.abs().max().double_value(&[]);
    (got - want).abs().max().double_value(&[]) / scale
}

#[test]
fn chapter_backbones_match_torchvision_for_the_same_weights() {
    let _heavy = heavy(module_path!());
    let scratch = tempfile::tempdir().unwrap();
    let status = Command::new("python3").arg(root().join("tests/data/torchvision_reference.py")).arg(scratch.path()).status().unwrap();
    assert!(status.success(), "the torchvision reference failed (make setup installs torchvision 0.19)");
    for id in ["vgg16", "resnet50", "inception_v3"] {
        let mut backbone = Backbone::untrained(spec(Profile::Chapter, id), Device::Cpu);
        backbone.load_weights(&scratch.path().join(format!("{id}.safetensors"))).unwrap();
        let io: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(scratch.path().join(format!("{id}.io.safetensors"))).unwrap().into_iter().collect();
        let outputs = backbone.forward(&io["input"]);
        let features = relative_error(&outputs.features, &io["features"]);
        let logits = relative_error(outputs.logits.as_ref().unwrap(), &io["logits"]);
        println!("{id}: relative error features {features:.2e}, logits {logits:.2e}");
        assert!(features <= 1e-4 && logits <= 1e-4, "{id}: features {features:.2e}, logits {logits:.2e}");
    }
}

#[test]
fn nsfwjs_inception_matches_tensorflow_js_at_mixed5() {
    let _heavy = heavy(module_path!());
    let scratch = tempfile::tempdir().unwrap();
    let tgz = root().join("models/cache/nsfwjs-4.4.0.tgz");
    let untar = Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(scratch.path()).arg("package/dist/models/inception_v3").status().unwrap();
    assert!(untar.success(), "{} is installed by make setup", tgz.display());
    let output = Command::new("node")
        .arg(root().join("tests/data/tfjs_reference.js"))
        .arg(scratch.path().join("package/dist/models/inception_v3"))
        .arg(scratch.path())
        .env("NODE_PATH", root().join("models/cache/tfjs/node_modules"))
        .output()
        .unwrap();
    assert!(output.status.success(), "tfjs reference failed (make setup installs it): {}", String::from_utf8_lossy(&output.stderr));
    let read = |name: &str| -> Vec<f32> { std::fs::read(scratch.path().join(name)).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect() };
    let input = Tensor::from_slice(&read("input.bin")).view([1, 299, 299, 3]).permute([0, 3, 1, 2]).contiguous();
    let want = Tensor::from_slice(&read("mixed5_pooled.bin")).view([1, 768]);
    let backbone = Backbone::load(spec(Profile::Kit, "inception_v3_mixed5"), &root().join("models"), Device::Cpu).unwrap();
    let got = backbone.forward(&input).features;
    let error = relative_error(&got, &want);
    println!("nsfwjs InceptionV3 mixed5: relative error {error:.2e} against TensorFlow.js");
    assert!(error <= 1e-4, "relative error {error:.2e}");
}

fn top5(backbone: &Backbone, photo: &Path) -> Vec<i64> {
    let image = imaging::load(photo, ImageLimits { max_bytes: 1 << 24, max_pixels: 1 << 24 }).unwrap();
    let input = backbone.spec.preprocess.tensor(&image).unsqueeze(0);
    let logits = backbone.forward(&input).logits.unwrap();
    let (_, indices) = logits.softmax(-1, Kind::Float).topk(5, -1, true, true);
    Vec::<i64>::try_from(indices.view([-1])).unwrap()
}

#[test]
fn kit_backbones_recognise_real_photos() {
    let _heavy = heavy(module_path!());
    let classes: Vec<String> = std::fs::read_to_string(root().join("models/kit/imagenet_classes.txt")).unwrap().lines().map(str::to_string).collect();
    // ImageNet indices: tabby 281, tiger cat 282, Egyptian cat 285; espresso 967, cup 968,
    // coffee mug 504; missile 657, projectile 744, space shuttle 812.
    let photos: [(&str, &[i64]); 3] = [("chelsea.png", &[281, 282, 285]), ("coffee.png", &[967, 968, 504]), ("rocket.jpg", &[657, 744, 812])];
    for id in ["efficientnet_lite0", "squeezenet1_1"] {
        let backbone = Backbone::load(spec(Profile::Kit, id), &root().join("models"), Device::Cpu).unwrap();
        for (photo, expected) in photos {
            let top = top5(&backbone, &root().join("models/kit/photos").join(photo));
            let names: Vec<&str> = top.iter().map(|&i| classes[i as usize].as_str()).collect();
            println!("{id} {photo}: {names:?}");
            assert!(top.iter().any(|i| expected.contains(i)), "{id} on {photo}: top-5 {names:?}");
        }
    }
}
