//! `lookalike bench --only postgres` (and the end of `--only index` when `index.postgres_url` is
//! set): the PostgreSQL backend beside the embedded index in the same run, on clustered vectors
//! shaped like real embeddings (items around category-like centres, queries a perturbed view of
//! an item; uniform random vectors are HNSW's worst case and nobody's catalogue). Ingest goes
//! through the real re-index path (a catalogue of small files, a synthetic embedder).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{machine, millis, percentile};
use crate::config::{Config, Metric};
use crate::index::embedded::Embedded;
use crate::index::postgres::{Postgres, Settings};
use crate::index::{Backend, EmbeddingKey, Generation, ReindexJob, Scope, SearchParams};
use crate::rng::Rng;

/// Dimensions of the measurement: the chapter profile's head vectors (3 x 1,024).
const DIM: usize = 3072;
/// Clusters the items gather around.
const CENTRES: u64 = 100;
const CONCURRENCY: [usize; 2] = [1, 8];
/// Queries timed on PostgreSQL's exact scan (about a second each at 100,000 rows).
const EXACT_QUERIES: usize = 30;

/// One backend's line of the table.
#[derive(Debug, Serialize)]
pub struct Row {
    pub backend: String,
    /// Per concurrency level: (concurrency, p50 ms, p99 ms).
    pub latency_ms: Vec<Latency>,
    /// Share of queries' top-5 equal to the exact top-5 (as sets).
    pub recall_at_5: f64,
    /// Rows written per second by the re-index (embedding excluded), or the index build time.
    pub ingest_rows_per_s: f64,
    pub build_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub rows: usize,
    pub dim: usize,
    pub queries: usize,
    pub table: Vec<Row>,
}

fn gaussianish(rng: &mut Rng) -> f32 {
    // Sum of four uniforms: close enough to normal for clustered test vectors.
    (0..4).map(|_| rng.unit_f32() - 0.5).sum()
}

/// Item `n`'s vector, or a second view of it (`view` > 0): its centre, its own offset, and noise.
fn vector(n: u64, view: u64) -> Vec<f32> {
    let (mut centre, mut own, mut noise) = (Rng::new(n % CENTRES + 1), Rng::new(n.wrapping_mul(0x9e37_79b9) + 17), Rng::new(n.wrapping_mul(31) ^ (view << 40)));
    let v: Vec<f32> = (0..DIM).map(|_| gaussianish(&mut centre) + 0.8 * gaussianish(&mut own) + if view > 0 { 0.35 * gaussianish(&mut noise) } else { 0.0 }).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn embed(paths: &[PathBuf]) -> Vec<Result<Vec<f32>, String>> {
    paths.iter().map(|p| std::fs::read_to_string(p).map_err(|e| e.to_string()).and_then(|t| t.trim().parse::<u64>().map_err(|e| e.to_string())).map(|n| vector(n, 0))).collect()
}

/// Re-indexes `catalogue` into `backend`; the seconds spent outside the (synthetic) embedder.
fn ingest(backend: &dyn Backend, catalogue: &Path) -> anyhow::Result<f64> {
    let key = EmbeddingKey { profile: "bench".into(), backbones: vec![], source: "clustered".into(), pooling: String::new(), weights_sha256: String::new(), dim: DIM };
    let job = ReindexJob { catalogue, metadata: Path::new(""), key: &key, chunk: 4096, max_image_bytes: 1 << 20, partial: None, stop: None, describe: None, whitening: None, augmentation: 0 };
    let mut embedding = 0.0;
    let started = Instant::now();
    backend.reindex(&job, &mut embed, &mut |p| embedding = p.elapsed_s)?;
    Ok(started.elapsed().as_secs_f64() - embedding)
}

/// (concurrency, p50 ms, p99 ms).
type Latency = (usize, f64, f64);

/// Top-5 ids of every query, and latencies at each concurrency.
fn measure(backend: Arc<dyn Backend>, queries: &[Vec<f32>]) -> anyhow::Result<(Vec<Vec<String>>, Vec<Latency>)> {
    let generation: Arc<Generation> = backend.current()?.ok_or_else(|| anyhow::anyhow!("no generation after ingest"))?;
    let scopes = [Scope { category: "all".into(), rank: 0, bonus: 0.0 }];
    let params = SearchParams { k: 5, offset: 0, metric: Metric::Cosine, min_similarity: -1.0, near_duplicate_cosine: 0.999, price: Default::default(), variants_apart: false };
    let top = queries.iter().map(|q| Ok(backend.search(&generation, q, &scopes, &params)?.hits.into_iter().map(|h| h.item.id).collect())).collect::<anyhow::Result<Vec<Vec<String>>>>()?;
    let mut latencies = Vec::new();
    for threads in CONCURRENCY {
        let mut times: Vec<Duration> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (backend, generation, scopes) = (backend.clone(), generation.clone(), &scopes);
                    scope.spawn(move || {
                        queries
                            .iter()
                            .skip(t)
                            .step_by(threads)
                            .map(|q| {
                                let started = Instant::now();
                                backend.search(&generation, q, scopes, &params).map(|_| started.elapsed())
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a search thread")).collect::<Result<Vec<Vec<_>>, _>>().map(|v| v.concat())
        })?;
        times.sort();
        latencies.push((threads, millis(percentile(&times, 0.5)), millis(percentile(&times, 0.99))));
    }
    Ok((top, latencies))
}

fn recall(exact: &[Vec<String>], found: &[Vec<String>]) -> f64 {
    let same = exact.iter().zip(found).filter(|(a, b)| a.iter().all(|id| b.contains(id))).count();
    same as f64 / exact.len().max(1) as f64
}

/// The PostgreSQL backend (exact, then HNSW) beside the embedded index, `rows` vectors.
pub fn postgres(config: &Config, rows: usize, queries: usize, json: bool) -> anyhow::Result<()> {
    let settings = Settings::from_config(&config.index)?;
    let scratch = tempfile::tempdir()?;
    let catalogue = scratch.path().join("catalogue");
    std::fs::create_dir_all(catalogue.join("all"))?;
    for n in 0..rows {
        std::fs::write(catalogue.join("all").join(format!("{n:07}.png")), n.to_string())?;
    }
    let queries: Vec<Vec<f32>> = (0..queries as u64).map(|q| vector(q * 7919 % rows as u64, 1 + q)).collect();
    eprintln!("{rows} x {DIM} clustered vectors, {} queries: ingesting into the embedded index", queries.len());

    let embedded: Arc<dyn Backend> = Arc::new(Embedded::open(&scratch.path().join("index")));
    let write_s = ingest(embedded.as_ref(), &catalogue)?;
    let (exact_top, latency) = measure(embedded.clone(), &queries)?;
    let mut table = vec![Row { backend: "embedded (exact)".into(), latency_ms: latency, recall_at_5: 1.0, ingest_rows_per_s: rows as f64 / write_s, build_s: write_s }];
    drop(embedded);

    let exact = Arc::new(Postgres::connect(&Settings { hnsw_min_rows: usize::MAX, ..settings.clone() })?);
    eprintln!("ingesting into PostgreSQL ({})", exact.location());
    let write_s = ingest(exact.as_ref(), &catalogue)?;
    // A sequential scan of every row per query: timed on the first few queries only.
    let few = queries.len().min(EXACT_QUERIES);
    let (top, latency) = measure(exact, &queries[..few])?;
    table.push(Row {
        backend: format!("postgres exact ({few} queries)"),
        latency_ms: latency,
        recall_at_5: recall(&exact_top[..few], &top),
        ingest_rows_per_s: rows as f64 / write_s,
        build_s: write_s,
    });

    eprintln!("building the HNSW index");
    let build_s = ingest(&Postgres::connect(&Settings { hnsw_min_rows: 1, ..settings.clone() })?, &catalogue)?;
    // The configured candidate list, and larger ones: recall bought with time.
    let mut sizes: Vec<usize> = [1, 2, 4].iter().map(|times| (times * settings.ef_search).min(1000)).collect();
    sizes.dedup();
    for ef_search in sizes {
        let (top, latency) = measure(Arc::new(Postgres::connect(&Settings { hnsw_min_rows: 1, ef_search, ..settings.clone() })?), &queries)?;
        let row = Row { backend: format!("postgres hnsw (ef_search {ef_search})"), latency_ms: latency, recall_at_5: recall(&exact_top, &top), ingest_rows_per_s: rows as f64 / build_s, build_s };
        table.push(row);
    }

    let report = Report { machine: machine(), rows, dim: DIM, queries: queries.len(), table };
    let mut text = format!("PostgreSQL beside the embedded index: {rows} x {DIM} clustered vectors, {} queries, top-5, {}\n", report.queries, report.machine);
    text += &format!("{:<30} {:>12} {:>12} {:>12} {:>12} {:>10} {:>14}\n", "backend", "p50 c=1", "p99 c=1", "p50 c=8", "p99 c=8", "recall@5", "write rows/s");
    for row in &report.table {
        let (one, eight) = (row.latency_ms[0], row.latency_ms[1]);
        text += &format!("{:<30} {:>9.1} ms {:>9.1} ms {:>9.1} ms {:>9.1} ms {:>10.3} {:>14.0}\n", row.backend, one.1, one.2, eight.1, eight.2, row.recall_at_5, row.ingest_rows_per_s);
    }
    text += &format!("(write: the re-index's time outside embedding; for HNSW, a re-index that copies the vectors inside the database and builds the graph, {build_s:.0} s)\n");
    // With --json the table goes to stderr and the same figures as JSON to stdout.
    if json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    Ok(())
}
