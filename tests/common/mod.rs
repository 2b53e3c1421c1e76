//! Helpers shared by the integration tests: a tiny catalogue anyone can classify, heads
//! trained on it with the offline kit's real backbones, the lock heavy tests take, and the fake
//! Discord with the scenario steps run against it.
#![allow(dead_code)]

pub mod fake_discord;
pub mod scenario;
pub mod shop;

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use lookalike::config::Config;

use lookalike::config::Profile;
use lookalike::imaging::ImageLimits;
use lookalike::vision::train::{train, TrainOptions};
use lookalike::vision::{self, Backbone};

/// Which module's tests run now, and how many of them. A test in `tests/it` that runs libtorch
/// models in its process (training, the kit's backbones, MiniLM), heavy commands, or times a
/// server and child processes holds its module's [`Heavy`] turn for its whole run. The tests of
/// one module may run beside each other, as they did when each module was a binary of its own;
/// another module's tests wait until none of them is left. So two modules' heavy tests never
/// meet on 2 cores, where they would thrash libtorch's threads and stretch what some compare or
/// wait for (the cached second training run must be faster, kills land at moments taken from a
/// timed run, the bot's answers have deadlines), and the PostgreSQL tests never share the cores
/// with the backbones. Light `cli` tests take none. Take it before any other lock (the
/// PostgreSQL tests' `SERVER`).
static HEAVY: Mutex<(Option<&'static str>, usize)> = Mutex::new((None, 0));
static HEAVY_TURN: Condvar = Condvar::new();

/// One heavy test's turn; dropping it lets the next module's tests in once its own are done.
pub struct Heavy(&'static str);

/// Waits until no other module's heavy tests run (`module`: the caller's `module_path!()`). A
/// test that failed holding its turn does not stop the others.
pub fn heavy(module: &'static str) -> Heavy {
    let mut held = HEAVY.lock().unwrap_or_else(PoisonError::into_inner);
    while held.0.is_some_and(|running| running != module) {
        held = HEAVY_TURN.wait(held).unwrap_or_else(PoisonError::into_inner);
    }
    *held = (Some(module), held.1 + 1);
    Heavy(module)
}

impl Drop for Heavy {
    fn drop(&mut self) {
        let mut held = HEAVY.lock().unwrap_or_else(PoisonError::into_inner);
        held.1 -= 1;
        if held.1 == 0 {
            held.0 = None;
            HEAVY_TURN.notify_all();
        }
    }
}

/// One image of two categories anyone can tell apart: warm blobs and cool stripes; `variant`
/// jitters it, so every variant is a different file.
pub fn picture(class: &str, variant: u32) -> image::RgbImage {
    image::RgbImage::from_fn(64, 64, |x, y| {
        let jitter = ((x * 7 + y * 13 + variant * 31) % 40) as u8;
        if class == "warm" {
            let inside = (x as i32 - 32).pow(2) + (y as i32 - 32).pow(2) < 300 + 20 * (variant % 20) as i32;
            if inside {
                image::Rgb([220 - jitter, 80 + jitter, 40])
            } else {
                image::Rgb([250, 240, 230])
            }
        } else if ((x + variant) / 6).is_multiple_of(2) {
            image::Rgb([30, 90 + jitter, 200])
        } else {
            image::Rgb([200, 220, 250 - jitter])
        }
    })
}

/// `dir/warm/NN.png` and `dir/cool/NN.png`, variants `first..first + per_class`.
pub fn write_catalogue(dir: &Path, per_class: u32, first: u32) {
    for class in ["warm", "cool"] {
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for variant in first..first + per_class {
            picture(class, variant).save(folder.join(format!("{variant:02}.png"))).unwrap();
        }
    }
}

/// Quick training settings for the tiny catalogues of the tests.
pub fn train_options(data: &Path, out: &Path, cache: &Path) -> TrainOptions {
    TrainOptions {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        cache: cache.to_path_buf(),
        epochs: 4,
        augmented_views: 0,
        batch_size: 8,
        learning_rate: 1e-3,
        patience: 5,
        seed: 1,
        limits: ImageLimits { max_bytes: 1 << 20, max_pixels: 1 << 20 },
        fine_tune_stages: 0,
        fine_tune_epochs: 0,
        fine_tune_styles: 1,
        fine_tune_metric_weight: 1.0,
        metric_weight: 0.0,
        positives: None,
        extra_train: None,
        balance_classes: true,
    }
}

/// The offline kit's three backbones, on the CPU.
pub fn kit_backbones() -> Vec<Backbone> {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    vision::backbones(Profile::Kit).into_iter().map(|s| Backbone::load(s, &models, tch::Device::Cpu).unwrap()).collect()
}

/// One training at a time in a test process: training seeds libtorch's process-wide random
/// generator, so two at once draw each other's numbers and may give heads that vote wrongly
/// (seen once: two `tests/ops.rs` tests training side by side, a warm photo voted cool).
static TRAINING: Mutex<()> = Mutex::new(());

/// Waits for any other training in this process to finish; train while holding it.
pub fn one_training() -> MutexGuard<'static, ()> {
    TRAINING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Heads for warm/cool, trained briefly on `data` into `out`.
pub fn train_heads(data: &Path, out: &Path, cache: &Path) {
    let _one = one_training();
    train(&mut kit_backbones(), Profile::Kit, &train_options(data, out, cache)).unwrap();
}

/// A vocabulary naming the two test categories, for the text methods.
pub const VOCABULARY: &str = r#"
[[category]]
name = "warm"
synonyms = ["red", "orange", "blob"]
description = "a warm red or orange round blob"

[[category]]
name = "cool"
synonyms = ["blue", "stripes", "striped"]
description = "cool blue stripes"
"#;

pub fn png(image: &image::RgbImage) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// A scratch world: catalogue, heads, vocabulary, index folder, and the config pointing at them.
pub struct World {
    _scratch: tempfile::TempDir,
    pub root: PathBuf,
    pub catalogue: PathBuf,
    pub index: PathBuf,
    pub env: Vec<(String, String)>,
}

impl World {
    pub fn new(per_class: u32) -> World {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().to_path_buf();
        let (catalogue, heads, index) = (root.join("catalogue"), root.join("heads"), root.join("index"));
        write_catalogue(&catalogue, per_class, 0);
        train_heads(&catalogue, &heads, &root.join("cache"));
        std::fs::write(root.join("categories.toml"), VOCABULARY).unwrap();
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let env = vec![
            ("LOOKALIKE__MODELS__DIR".to_string(), format!("{}/models", env!("CARGO_MANIFEST_DIR"))),
            ("LOOKALIKE__MODELS__HEADS_DIR".to_string(), path(&heads)),
            ("LOOKALIKE__MODELS__DEVICE".to_string(), "cpu".to_string()),
            ("LOOKALIKE__CATALOGUE__DIR".to_string(), path(&catalogue)),
            ("LOOKALIKE__INDEX__DIR".to_string(), path(&index)),
            ("LOOKALIKE__TEXT__VOCABULARY".to_string(), path(&root.join("categories.toml"))),
            ("LOOKALIKE__FEEDBACK__DIR".to_string(), path(&root.join("feedback"))),
            ("LOOKALIKE__CATALOGUE__AUDIT_LOG".to_string(), path(&root.join("audit.jsonl"))),
        ];
        World { _scratch: scratch, root, catalogue, index, env }
    }

    pub fn config(&self, extra: &[(&str, &str)]) -> Config {
        let env = self.env.iter().cloned().chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::parse("test", lookalike::config::DEFAULT_TOML, env).unwrap()
    }
}
