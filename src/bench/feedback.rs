//! `lookalike bench --only feedback`: the shop teaches the bot, measured on Fashion-MNIST. The
//! demo's heads (as `make demo` trains them) classify shirts from the training file that the demo
//! never used; the ones the vote gets wrong are corrected to "shirt" through the same
//! [`FeedbackStore::record`] the Discord menu calls (a moderator's pick, so trusted); then heads
//! are retrained as the demo trains them, once without the corrections (the control: what
//! retraining alone does) and with them (`train --with-feedback`, and with `--no-balance`), and
//! all four are evaluated on test images neither the demo nor the corrections touched.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::catalogue::labelled;
use crate::config::{Config, FeedbackConfig};
use crate::demo;
use crate::feedback::FeedbackStore;
use crate::imaging::{self, ImageLimits};
use crate::vision::data::{FashionMnist, FashionMnistSet, FASHION_MNIST_CLASSES};
use crate::vision::ensemble::{Ensemble, HeadsInfo};
use crate::vision::eval::{evaluate, EvalReport};
use crate::vision::{self, train};
use crate::worker::ModelWorker;

/// Where the loop's images, corrections and heads go (rewritten by every run).
const DIR: &str = "runs/feedback-loop";
/// Test images per category, from the test file after the demo's.
const TEST_PER_CLASS: usize = 100;
const CORRECTED: &str = "shirt";
/// The moderator the corrections are recorded as.
const MODERATOR: u64 = 1;

/// One set of heads on the untouched test images.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub heads: String,
    pub accuracy: f64,
    pub shirt_recall: f64,
    /// Of the test images the vote calls shirts, the share that are.
    pub shirt_precision: f64,
    /// Recall of every category, in the heads' order.
    pub recall: Vec<(String, f64)>,
}

impl Row {
    fn new(heads: &str, report: &EvalReport) -> anyhow::Result<Row> {
        let shirt = report.classes.iter().position(|c| c == CORRECTED).context("the heads have no shirt category")?;
        let called_shirt: usize = report.vote.confusion.iter().map(|row| row[shirt]).sum();
        Ok(Row {
            heads: heads.to_string(),
            accuracy: report.vote.accuracy,
            shirt_recall: report.vote.recall[shirt],
            shirt_precision: report.vote.confusion[shirt][shirt] as f64 / called_shirt.max(1) as f64,
            recall: report.classes.iter().cloned().zip(report.vote.recall.iter().copied()).collect(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedbackLoop {
    pub machine: String,
    pub test_images: usize,
    /// Training shirts the demo's vote looked at, and the corrections recorded for the misses.
    pub shirts_looked_at: usize,
    pub corrections: usize,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

/// Runs the loop with `wanted` corrections; prints the table (or JSON).
pub fn feedback(config: &Config, wanted: usize, json: bool) -> anyhow::Result<FeedbackLoop> {
    let started = std::time::Instant::now();
    let say = |line: String| if json { eprintln!("{line}") } else { println!("{line}") };
    let heads = HeadsInfo::load(&config.models.heads_dir).context("this measures the demo's heads: run `make demo` first")?;
    let mut demo_classes = FASHION_MNIST_CLASSES.to_vec();
    demo_classes.sort();
    anyhow::ensure!(heads.classes == demo_classes, "the heads in {} are not the demo's Fashion-MNIST heads: run `make demo`", config.models.heads_dir.display());
    let dir = Path::new(DIR);
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    demo::export_data()?;
    let dataset = FashionMnist::load()?;
    let test = dir.join("test");
    dataset.export(&test, FashionMnistSet::Test, demo::TEST_PER_CLASS, TEST_PER_CLASS, &FASHION_MNIST_CLASSES)?;
    // Training shirts after the demo's training and validation images: enough to find the misses.
    let candidates = dir.join("candidates");
    dataset.export(&candidates, FashionMnistSet::Train, demo::TRAIN_PER_CLASS + demo::VAL_PER_CLASS, wanted * 5, &[CORRECTED])?;

    let limits = ImageLimits::from_config(&config.limits);
    let today = ensemble_worker(config, config.models.heads_dir.clone())?;
    say(format!("feedback loop, {}: the demo's heads ({}) on {} untouched test images", super::machine(), config.models.heads_dir.display(), TEST_PER_CLASS * FASHION_MNIST_CLASSES.len()));
    let before = evaluate_on(&today, &test, limits)?;

    let store = FeedbackStore::open(&FeedbackConfig { dir: dir.join("feedback"), max_corrections: wanted.max(1), min_agreeing_users: 3 });
    let (looked_at, corrections) = correct_misses(&today, &store, &candidates.join(CORRECTED), wanted, limits)?;
    drop(today);
    say(format!("{corrections} corrections recorded: the shirts the vote got wrong among the first {looked_at} unused training shirts"));
    let exported = dir.join("exported");
    store.export(&exported)?;

    let mut rows = vec![Row::new("demo heads (today)", &before)?];
    let runs = [
        ("retrained, no corrections (control)", "heads-control", None, true),
        ("retrained with them (train --with-feedback)", "heads-feedback", Some(exported.clone()), true),
        ("retrained with them, --no-balance", "heads-feedback-unweighted", Some(exported), false),
    ];
    for (name, folder, extra, balance_classes) in runs {
        let out = dir.join(folder);
        say(format!("training {name} into {}", out.display()));
        let expected = if extra.is_some() { corrections } else { 0 };
        let report = train::run(train::TrainOptions { extra_train: extra, balance_classes, ..demo::train_options(out.clone(), &config.limits) }, &config.models)?;
        anyhow::ensure!(report.extra_images == expected, "the training run saw {} corrections, not {expected}", report.extra_images);
        rows.push(Row::new(name, &evaluate_on(&ensemble_worker(config, out)?, &test, limits)?)?);
    }
    let result = FeedbackLoop { machine: super::machine(), test_images: before.images, shirts_looked_at: looked_at, corrections, rows, seconds: started.elapsed().as_secs_f64() };
    match json {
        true => println!("{}", serde_json::to_string_pretty(&result)?),
        false => print!("{}", render(&result)),
    }
    Ok(result)
}

fn ensemble_worker(config: &Config, heads_dir: PathBuf) -> anyhow::Result<ModelWorker<Ensemble>> {
    let models = config.models.clone();
    ModelWorker::spawn(move || Ensemble::load(&vision::backbones(models.profile), &models.dir, &heads_dir, vision::placement(&models)?))
}

fn evaluate_on(worker: &ModelWorker<Ensemble>, dir: &Path, limits: ImageLimits) -> anyhow::Result<EvalReport> {
    let dir = dir.to_path_buf();
    worker.run_blocking(move |ensemble| evaluate(ensemble, &dir, limits, None))?
}

/// Classifies the candidate shirts in order and records a correction for each one the vote
/// gets wrong, until `wanted`; returns (shirts looked at, corrections).
fn correct_misses(worker: &ModelWorker<Ensemble>, store: &FeedbackStore, shirts: &Path, wanted: usize, limits: ImageLimits) -> anyhow::Result<(usize, usize)> {
    let (_, examples, _) = labelled(shirts.parent().context("candidates folder")?, None)?;
    let (mut looked_at, mut corrections) = (0, 0);
    for chunk in examples.chunks(32) {
        if corrections == wanted {
            break;
        }
        let paths: Vec<PathBuf> = chunk.iter().map(|e| e.path.clone()).collect();
        let winners = worker.run_blocking(move |ensemble| -> anyhow::Result<Vec<String>> {
            let images = paths.iter().map(|p| imaging::load(p, limits).map_err(anyhow::Error::from)).collect::<anyhow::Result<Vec<_>>>()?;
            Ok(ensemble.classify(&images, true)?.into_iter().map(|c| ensemble.info.classes[c.vote.tally().winner().0].clone()).collect())
        })??;
        for (example, winner) in chunk.iter().zip(winners) {
            looked_at += 1;
            if winner != CORRECTED && corrections < wanted {
                let photo = std::fs::read(&example.path)?;
                store.record(&photo, &[winner], CORRECTED, MODERATOR, true)?;
                corrections += 1;
            }
        }
    }
    Ok((looked_at, corrections))
}

pub fn render(result: &FeedbackLoop) -> String {
    let mut out = format!("\n{:<46} {:>9} {:>13} {:>16}", "heads", "accuracy", "shirt recall", "shirt precision");
    for row in &result.rows {
        out.push_str(&format!("\n{:<46} {:>8.1}% {:>12.1}% {:>15.1}%", row.heads, 100.0 * row.accuracy, 100.0 * row.shirt_recall, 100.0 * row.shirt_precision));
    }
    out.push_str("\n\nrecall per category (today -> control -> with corrections -> with them, unweighted):\n");
    for (index, (class, _)) in result.rows[0].recall.iter().enumerate() {
        let figures: Vec<String> = result.rows.iter().map(|r| format!("{:5.1}%", 100.0 * r.recall[index].1)).collect();
        out.push_str(&format!("  {class:<11} {}\n", figures.join(" -> ")));
    }
    out.push_str(&format!(
        "{} test images (Fashion-MNIST test file, {} per category after the demo's); {} corrections from {} training shirts; {:.0} s\n",
        result.test_images, TEST_PER_CLASS, result.corrections, result.shirts_looked_at, result.seconds
    ));
    out
}
