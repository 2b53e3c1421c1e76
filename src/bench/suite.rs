//! `lookalike bench`: one table, one run, for each profile: the time of every stage of a query,
//! query latency at concurrency 1, 8 and 32, indexing rate, memory peak; beside them the python
//! torchvision pipeline doing the same forward passes (chapter profile) and the chapter's method
//! (re-embedding the catalogue for every query); then the index alone over 100,000 vectors
//! ([`super::search`]). Ratios are taken within this run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::index::{chapter_backbones, copy_catalogue, python_baseline, service, timed_reindex};
use super::{bare_forwards, machine, millis, percentile};
use crate::catalogue::labelled;
use crate::config::{Config, Profile};
use crate::imaging;
use crate::search::{Query, SearchError, SearchOutcome, SearchService};
use crate::vision::data::{export_fashion_mnist, FashionMnistExport};
use crate::vision::{self, Backbone};

const CONCURRENCY: [usize; 3] = [1, 8, 32];
/// A sentence no word of which names a category, so the embedding method runs too.
const SENTENCE: &str = "shoes for the beach in summer";

/// Loads a profile's backbones on the model thread.
type LoadBackbones = Box<dyn FnOnce() -> anyhow::Result<Vec<Backbone>> + Send>;

/// One column of the table, and the figures the ratios below it use.
struct Column {
    name: String,
    rows: Vec<(String, String)>,
    /// Query p50 at concurrency 1 (python: decode + preprocess + forward passes per image), ms.
    query_ms: f64,
    index_rate: f64,
}

fn p50_p99(times: &mut [Duration]) -> String {
    times.sort();
    format!("{:.1} / {:.1}", millis(percentile(times, 0.5)), millis(percentile(times, 0.99)))
}

/// Peak resident memory since the last reset, in MB (Linux), and a reset for the next profile.
pub(super) fn memory_peak_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub(super) fn reset_memory_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub fn suite(config: &Config, rounds: usize, profiles: &[Profile], catalogue_size: usize, python: bool) -> anyhow::Result<()> {
    let rounds = rounds.max(1);
    // Catalogue images per profile (the chapter's method re-embeds all of them per query), and
    // two held-out queries per category.
    let per_class = catalogue_size.div_ceil(10).max(1) + 2;
    let scratch = tempfile::tempdir()?;
    let images_dir = scratch.path().join("fashion-mnist");
    export_fashion_mnist(&images_dir, FashionMnistExport { train_per_class: 0, val_per_class: 0, test_per_class: per_class })?;
    let (_, examples, _) = labelled(&images_dir.join("test"), None)?;
    let (catalogue, queries): (Vec<_>, Vec<_>) = examples.iter().enumerate().partition(|(n, _)| n % per_class < per_class - 2);
    let catalogue: Vec<&Path> = catalogue.into_iter().map(|(_, e)| e.path.as_path()).collect();
    let queries: Vec<Vec<u8>> = queries.into_iter().map(|(_, e)| std::fs::read(&e.path)).collect::<Result<_, _>>()?;
    let mut config = config.clone();
    config.search.max_concurrent_queries = *CONCURRENCY.iter().max().unwrap_or(&32);
    config.search.query_timeout_ms = 600_000;

    // Each side indexes the catalogue in two halves, python before and after lookalike, and
    // the faster half counts for both: a 2-core machine's speed drifts by 20 % over minutes.
    let (first_half, second_half) = catalogue.split_at(catalogue.len() / 2);
    let mut columns = Vec::new();
    for &profile in profiles {
        let root = scratch.path().join(profile.as_str());
        reset_memory_peak();
        let mut python_weights = None;
        let (backbones, label): (LoadBackbones, String) = match profile {
            Profile::Kit => {
                let (models, placement) = (config.models.dir.clone(), vision::placement(&config.models)?);
                (Box::new(move || vision::backbones(Profile::Kit).into_iter().map(|s| Backbone::load(s, &models, placement)).collect()), "kit".to_string())
            }
            Profile::Chapter => {
                // The installed weights when there are; else python writes random ones (the real
                // ones need internet): the same forward passes, for timing. Both sides load them.
                let installed = config.models.dir.join("chapter");
                let real = vision::backbones(Profile::Chapter).iter().all(|s| config.models.dir.join(s.weights).exists());
                let weights = if real { installed } else { root.join("weights") };
                let first = python_baseline(&root, &weights, first_half, vision::device(config.models.device)?)?;
                python_weights = Some((weights.clone(), first));
                let label = if real { "chapter" } else { "chapter (random weights)" };
                (Box::new(chapter_backbones(&config, weights)?), label.to_string())
            }
        };
        copy_catalogue(first_half, &root.join("catalogue"))?;
        let service = Arc::new(service(&config, &root, profile, backbones)?);
        columns.push(measure(&service, &label, &queries, rounds, second_half, &root.join("catalogue"))?);
        if let (Some((weights, first)), true) = (python_weights, python) {
            let second = python_baseline(&root, &weights, second_half, vision::device(config.models.device)?)?;
            let mut per_image: Vec<Duration> = first.per_image_ms.iter().chain(&second.per_image_ms).map(|ms| Duration::from_secs_f64(ms / 1e3)).collect();
            let index_rate = first.rate().max(second.rate());
            let rows = vec![("decode + preprocess + 3 backbones, p50 / p99 ms".into(), p50_p99(&mut per_image)), ("indexing, images/s (faster half)".into(), format!("{index_rate:.2}"))];
            columns.push(Column { name: "python torchvision (chapter)".into(), rows, query_ms: millis(percentile(&per_image, 0.5)), index_rate });
        }
    }

    println!("lookalike bench: {}", machine());
    println!("catalogue: {} Fashion-MNIST images per profile; queries: held-out images; sentence for the text stage: {SENTENCE:?}", catalogue.len());
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let width = 30;
    println!("{:<60}{}", "", names.iter().map(|n| format!("{n:>width$}")).collect::<String>());
    let mut labels: Vec<String> = Vec::new();
    for column in &columns {
        for (label, _) in &column.rows {
            if !labels.contains(label) {
                labels.push(label.clone());
            }
        }
    }
    for label in labels {
        let cells: String = columns.iter().map(|c| format!("{:>width$}", c.rows.iter().find(|r| r.0 == label).map_or("-", |r| r.1.as_str()))).collect();
        println!("{label:<60}{cells}");
    }
    println!();
    for pair in columns.windows(2).filter(|p| p[1].name.starts_with("python")) {
        let (ours, python) = (&pair[0], &pair[1]);
        println!(
            "{}: indexing {:.2}x python's rate (target >= 1.0x); a whole query (p50, with text and search) {:.2}x python's time for decode + preprocess + 3 forward passes",
            ours.name,
            ours.index_rate / python.index_rate,
            ours.query_ms / python.query_ms
        );
    }
    // The index alone at a large shop's size (the figures `bench --only search --json` prints).
    println!();
    let at_100k = super::SearchSizes { rows: vec![100_000], ..Default::default() };
    if let Err(error) = super::search(&config, &at_100k, &|line| println!("{line}")) {
        println!("(search over 100,000 vectors skipped: {error:#})");
    }
    Ok(())
}

/// Every figure of one profile's column.
fn measure(service: &Arc<SearchService>, name: &str, queries: &[Vec<u8>], rounds: usize, second_half: &[&Path], catalogue: &Path) -> anyhow::Result<Column> {
    let (index_rate, embedding_s) = index_in_halves(service, second_half, catalogue)?;
    let samples: Vec<Vec<u8>> = queries.iter().cycle().take(rounds * 4).cloned().collect();
    let stages = stage_times(service, samples.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let overhead = paired_overhead(service, &runtime, &samples)?;
    let mut whole = whole_queries(service, &runtime, &samples)?;

    let mut rows: Vec<(String, String)> = stages.into_iter().map(|(label, mut times)| (format!("{label}, p50 / p99 ms"), p50_p99(&mut times))).collect();
    // The search and render stages come from the whole queries' outcomes, but sit with the
    // other stages in the table.
    rows.push(("search (whole catalogue), p50 / p99 ms".into(), p50_p99(&mut whole.search_times)));
    rows.push(("render (text answer), p50 / p99 ms".into(), p50_p99(&mut whole.render_times)));
    rows.push(("query overhead over its bare forward passes (paired), p50".into(), format!("{:+.1} %", 100.0 * overhead)));
    rows.extend(whole.rows);
    rows.push(("indexing, images/s (faster half)".into(), format!("{index_rate:.2}")));
    rows.push(("chapter's method: re-embed the catalogue, s/query".into(), format!("{:.1}", embedding_s)));
    rows.push(("memory peak (resident), MB".into(), memory_peak_mb().map_or("-".into(), |mb| format!("{mb:.0}"))));
    Ok(Column { name: name.to_string(), rows, query_ms: whole.query_ms, index_rate })
}

/// Indexes the catalogue's first half, copies in `second_half` and indexes again: the faster
/// half's rate in images/s, and the seconds both spent embedding (what the chapter's method
/// spends on every query).
fn index_in_halves(service: &SearchService, second_half: &[&Path], catalogue: &Path) -> anyhow::Result<(f64, f64)> {
    let (first_count, first_embedding_s, first_s) = timed_reindex(service)?;
    copy_catalogue(second_half, catalogue)?;
    let (second_count, second_embedding_s, second_s) = timed_reindex(service)?;
    let index_rate = (first_count as f64 / first_s).max(second_count as f64 / second_s);
    Ok((index_rate, first_embedding_s + second_embedding_s))
}

/// The time of each stage of a query on every sample, by stage.
fn stage_times(service: &SearchService, samples: Vec<Vec<u8>>) -> anyhow::Result<Vec<(String, Vec<Duration>)>> {
    let limits = service.image_limits();
    // Stages, one query at a time on the model thread, as a query runs them.
    service.bench_probe(move |models, intent| -> anyhow::Result<Vec<(String, Vec<Duration>)>> {
        let mut decode = Vec::new();
        let mut preprocess = Vec::new();
        let mut backbones = Vec::new();
        let mut ensemble = Vec::new();
        let mut text = Vec::new();
        for bytes in &samples {
            let started = Instant::now();
            let image = imaging::decode(bytes, limits)?;
            decode.push(started.elapsed());
            let started = Instant::now();
            let tensors: Vec<tch::Tensor> = models.backbones.iter().map(|b| b.spec.preprocess.batch(std::slice::from_ref(&image), b.device)).collect();
            preprocess.push(started.elapsed());
            backbones.push(bare_forwards(&models.backbones, &tensors));
            let started = Instant::now();
            std::hint::black_box(models.classify(std::slice::from_ref(&image), true)?);
            ensemble.push(started.elapsed());
            let started = Instant::now();
            std::hint::black_box(intent.read(SENTENCE)?);
            text.push(started.elapsed());
        }
        Ok(vec![
            ("decode".into(), decode),
            ("preprocess (3 backbones)".into(), preprocess),
            ("3 backbones, bare forward on ready tensors".into(), backbones),
            ("ensemble: preprocess + backbones + heads + vote".into(), ensemble),
            ("text (the configured methods)".into(), text),
        ])
    })?
}

/// How much longer a whole query takes than its bare forward passes, at p50 (0.1: 10 % longer).
fn paired_overhead(service: &SearchService, runtime: &tokio::runtime::Runtime, samples: &[Vec<u8>]) -> anyhow::Result<f64> {
    let limits = service.image_limits();
    // The overhead of a whole query over its bare forward passes, measured in pairs on the same
    // image one right after the other, so that the machine's drift cancels out.
    let (mut paired_bare, mut paired_query) = (Vec::new(), Vec::new());
    for (n, image) in samples.iter().enumerate() {
        let bytes = image.clone();
        paired_bare.push(service.bench_probe(move |ensemble, _| -> anyhow::Result<Duration> {
            let image = imaging::decode(&bytes, limits)?;
            let tensors: Vec<tch::Tensor> = ensemble.backbones.iter().map(|b| b.spec.preprocess.batch(std::slice::from_ref(&image), b.device)).collect();
            Ok(bare_forwards(&ensemble.backbones, &tensors))
        })??);
        let started = Instant::now();
        runtime.block_on(service.search(Query { image: image.clone(), text: (n % 2 == 0).then(|| SENTENCE.to_string()), ..Query::default() }))?;
        paired_query.push(started.elapsed());
    }
    paired_bare.sort();
    paired_query.sort();
    Ok(percentile(&paired_query, 0.5).as_secs_f64() / percentile(&paired_bare, 0.5).as_secs_f64() - 1.0)
}

/// The figures of whole queries through the service.
struct WholeQueries {
    /// Latency, throughput and largest model batch at each concurrency.
    rows: Vec<(String, String)>,
    /// The search stage and the rendering of the answer, per query at concurrency 1.
    search_times: Vec<Duration>,
    render_times: Vec<Duration>,
    /// Query p50 at concurrency 1, ms.
    query_ms: f64,
}

/// Whole queries through the service at each concurrency, then the search and render stages
/// from their outcomes.
fn whole_queries(service: &Arc<SearchService>, runtime: &tokio::runtime::Runtime, samples: &[Vec<u8>]) -> anyhow::Result<WholeQueries> {
    let mut whole = WholeQueries { rows: Vec::new(), search_times: Vec::new(), render_times: Vec::new(), query_ms: 0.0 };
    for concurrency in CONCURRENCY {
        let started = Instant::now();
        let outcomes = runtime.block_on(concurrent_queries(service, samples, concurrency));
        let wall = started.elapsed();
        let mut latencies: Vec<Duration> = Vec::new();
        let mut largest_batch = 0;
        for (latency, outcome) in outcomes {
            let outcome = outcome?;
            latencies.push(latency);
            largest_batch = largest_batch.max(outcome.timings.batch);
            if concurrency == 1 {
                whole.search_times.push(Duration::from_secs_f64(outcome.timings.search_ms / 1e3));
                let started = Instant::now();
                std::hint::black_box(crate::report::render(&outcome));
                whole.render_times.push(started.elapsed());
            }
        }
        let count = latencies.len();
        if concurrency == 1 {
            latencies.sort();
            whole.query_ms = millis(percentile(&latencies, 0.5));
        }
        whole.rows.push((format!("query, concurrency {concurrency}, p50 / p99 ms"), p50_p99(&mut latencies)));
        whole.rows.push((format!("throughput, concurrency {concurrency}, queries/s"), format!("{:.1}", count as f64 / wall.as_secs_f64())));
        whole.rows.push((format!("largest model batch, concurrency {concurrency}"), largest_batch.to_string()));
    }
    Ok(whole)
}

/// The samples as queries from `concurrency` callers at once: each query's latency and outcome,
/// caller by caller.
async fn concurrent_queries(service: &Arc<SearchService>, samples: &[Vec<u8>], concurrency: usize) -> Vec<(Duration, Result<SearchOutcome, SearchError>)> {
    // Each concurrent caller runs its share of the samples; at least one query each.
    let per_caller = samples.len().div_ceil(concurrency).max(1);
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (service, samples) = (service.clone(), samples.to_vec());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for (n, image) in samples.into_iter().enumerate().cycle().skip(worker * per_caller).take(per_caller) {
                    let started = Instant::now();
                    let outcome = service.search(Query { image, text: (n % 2 == 0).then(|| SENTENCE.to_string()), ..Query::default() }).await;
                    latencies.push((started.elapsed(), outcome));
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a benchmark task"));
    }
    all
}
