//! `lookalike bench --only search` (and part of `--only index` and the full table): the default
//! embedded index (4-bit scan, exact re-rank, vectors on disk) against today's f32 scan and
//! libtorch's `mv` + `topk` on the same matrix, over 100,000 and 1,000,000 vectors with the
//! structure of real embeddings: the trained heads' vectors of every cached Fashion-MNIST image
//! (plain and augmented views), and perturbed copies of them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::{millis, percentile};
use crate::config::{Config, Metric};
use crate::index::embedded::RERANK_MIN;
use crate::index::rank::{dot, scores};
use crate::index::{EmbeddingKey, Index, Item, Scope, SearchParams};
use crate::vision::ensemble::{mean_cosine_embedding, Head, HeadsInfo};
use crate::vision::{self, train::DEFAULT_CACHE};

/// Re-rank depths the 100,000-vector run sweeps beside the default.
const SWEEP: [usize; 4] = [8, 16, 32, 128];
/// Timed repetitions of the two slow baselines per size.
const BASELINE_ROUNDS: usize = 20;

/// What the search benchmark measures.
#[derive(Debug, Clone)]
pub struct SearchSizes {
    /// Index sizes; each runs when it fits in free memory.
    pub rows: Vec<usize>,
    /// Queries per size (recall and the index's latencies).
    pub queries: usize,
}

impl Default for SearchSizes {
    fn default() -> SearchSizes {
        SearchSizes { rows: vec![100_000, 1_000_000], queries: 1000 }
    }
}

/// Runs every size that fits in memory; returns `{"search_100k": {...}, ...}` and prints a line
/// per figure through `say`.
pub fn search(config: &Config, sizes: &SearchSizes, say: &dyn Fn(String)) -> anyhow::Result<Value> {
    let queries = sizes.queries;
    let bases = head_vectors(config)?;
    let dim = bases.size()[1] as usize;
    say(format!("search: {} real head vectors ({dim}-d) of Fashion-MNIST images, perturbed copies; {queries} queries, top-5", bases.size()[0]));
    let mut report = serde_json::Map::new();
    for &rows in &sizes.rows {
        let name = format!("search_{}", if rows % 1_000_000 == 0 { format!("{}m", rows / 1_000_000) } else { format!("{}k", rows / 1000) });
        let needed = rows * dim * 4 + rows * dim / 2 + (1 << 30);
        if available_memory().is_some_and(|free| free < needed) {
            say(format!("{name}: skipped, needs {} MB of free memory", needed >> 20));
            continue;
        }
        let figures = one_size(&bases, rows, queries, rows <= 100_000, say)?;
        report.insert(name, figures);
    }
    Ok(Value::Object(report))
}

fn one_size(bases: &Tensor, rows: usize, queries: usize, sweep: bool, say: &dyn Fn(String)) -> anyhow::Result<Value> {
    let dim = bases.size()[1] as usize;
    let started = Instant::now();
    let matrix = perturbed(bases, rows, true, 1);
    let query_rows = perturbed(bases, queries, false, 2);
    let query = |q: usize| &query_rows[q * dim..(q + 1) * dim];
    say(format!("{rows} x {dim}: vectors made in {:.1} s", started.elapsed().as_secs_f64()));

    // The f32 exact top 5 of every query: libtorch's product narrows each to 16 rows, which the
    // index's own `dot` ranks, so ties fall as the index would break them.
    let truth = exact_top5(&matrix, &query_rows, dim);
    let f32_mb = (rows * dim * 4) as f64 / 1e6;
    let (mut exact, mut torch) = (Vec::new(), Vec::new());
    {
        // SAFETY: `matrix` outlives the tensor, which only reads it.
        let tensor = unsafe { Tensor::from_blob(matrix.as_ptr() as *const u8, &[rows as i64, dim as i64], &[], Kind::Float, Device::Cpu) };
        for (round, want) in truth.iter().enumerate().take(BASELINE_ROUNDS) {
            let started = Instant::now();
            let all = scores(&matrix, dim, query(round));
            let mut best: Vec<usize> = (0..rows).collect();
            best.select_nth_unstable_by(5, |a, b| all[*b].total_cmp(&all[*a]));
            exact.push(started.elapsed());
            anyhow::ensure!(sorted(&best[..5]) == *want, "today's f32 scan and the ground truth disagree");
            let q = Tensor::from_slice(query(round));
            let started = Instant::now();
            let (_, top) = tensor.mv(&q).topk(5, 0, true, true);
            torch.push(started.elapsed());
            drop(top);
        }
    }
    let started = Instant::now();
    let key = EmbeddingKey { profile: "bench".into(), backbones: Vec::new(), source: "head".into(), pooling: String::new(), weights_sha256: String::new(), dim };
    let mut index = Index::from_matrix(key, Default::default(), 1, (0..rows).map(|n| Item::bare(format!("all/{n:07}"), "all")).collect(), matrix, Vec::new())?;
    let scratch = tempfile::tempdir_in(std::env::temp_dir())?;
    let saved = index.save(scratch.path())?;
    let build_s = started.elapsed().as_secs_f64();
    drop(index);
    let rss_before = resident_bytes();
    let started = Instant::now();
    let index = Index::load(&saved)?;
    let load_s = started.elapsed().as_secs_f64();

    let scopes = [Scope { category: "all".into(), rank: 0, bonus: 0.0 }];
    let params = SearchParams { k: 5, offset: 0, metric: Metric::Cosine, min_similarity: -1.0, near_duplicate_cosine: 2.0, price: Default::default(), variants_apart: false };
    // Latencies, recall@5 and the mean number of rows scored exactly, starting at `depth`.
    let run = |depth: usize| -> anyhow::Result<(Vec<Duration>, f64, f64)> {
        let (mut times, mut found, mut reranked) = (Vec::with_capacity(queries), 0, 0);
        for (q, want) in truth.iter().enumerate() {
            let started = Instant::now();
            let (page, scored) = index.search_reranking(query(q), &scopes, &params, depth)?;
            times.push(started.elapsed());
            reranked += scored;
            let got: Vec<usize> = page.hits.iter().map(|h| h.item.id[4..].parse().expect("bench ids are numbers")).collect();
            found += usize::from(sorted(&got) == *want);
        }
        times.sort();
        Ok((times, found as f64 / queries as f64, reranked as f64 / queries as f64))
    };
    let (times, recall, reranked) = run(RERANK_MIN)?;
    let index_mb = resident_bytes().saturating_sub(rss_before) as f64 / 1e6;
    exact.sort();
    torch.sort();
    let (p50, p99, exact_p50, torch_p50) = (millis(percentile(&times, 0.5)), millis(percentile(&times, 0.99)), millis(percentile(&exact, 0.5)), millis(percentile(&torch, 0.5)));
    say(format!(
        "{rows} x {dim}: p50 {p50:.2} ms, p99 {p99:.2} ms (re-ranked {reranked:.0} rows on average); f32 exact scan p50 {exact_p50:.1} ms ({:.3}x); libtorch mv + topk p50 {torch_p50:.1} ms ({:.3}x); recall@5 {recall:.4}",
        p50 / exact_p50,
        p50 / torch_p50
    ));
    say(format!(
        "{rows} x {dim}: index adds {index_mb:.0} MB resident ({:.3}x the {f32_mb:.0} MB f32 matrix); built and saved in {build_s:.1} s, loaded and verified in {load_s:.1} s",
        index_mb / f32_mb
    ));
    let mut figures = json!({
        "rows": rows, "dim": dim, "queries": queries, "rerank_first": RERANK_MIN, "reranked_mean": reranked,
        "p50_ms": p50, "p99_ms": p99, "exact_f32_p50_ms": exact_p50, "libtorch_p50_ms": torch_p50, "recall_at_5": recall,
        "index_memory_mb": index_mb, "f32_matrix_mb": f32_mb, "build_s": build_s, "load_s": load_s,
    });
    if sweep {
        let mut points = Vec::new();
        for depth in SWEEP {
            let (times, recall, reranked) = run(depth)?;
            let p50 = millis(percentile(&times, 0.5));
            say(format!("{rows} x {dim}: re-rank {depth} first: p50 {p50:.2} ms, recall@5 {recall:.4}, {reranked:.0} rows re-ranked on average"));
            points.push(json!({"rerank_first": depth, "p50_ms": p50, "recall_at_5": recall, "reranked_mean": reranked}));
        }
        figures["depth_sweep"] = Value::Array(points);
    }
    Ok(figures)
}

/// The trained heads' vectors (the `head` embedding) of every image in the feature cache.
fn head_vectors(config: &Config) -> anyhow::Result<Tensor> {
    let dir = &config.models.heads_dir;
    let hint = "the search benchmark uses the trained heads' vectors of cached Fashion-MNIST features: run `lookalike demo` first";
    let info = HeadsInfo::load(dir).context(hint)?;
    let specs: Vec<_> = vision::backbones(info.profile).into_iter().filter(|s| info.backbones.iter().any(|b| b == s.id)).collect();
    let mut heads = Vec::new();
    for spec in &specs {
        let mut head = Head::new(spec.feature_dim, info.classes.len() as i64, Device::Cpu);
        let path = crate::files::heads::head_path(dir, spec.id);
        head.vars.load(&path).with_context(|| format!("cannot load the head {}", path.display()))?;
        heads.push(head);
    }
    let mut features: Vec<Vec<Tensor>> = specs.iter().map(|_| Vec::new()).collect();
    let files = std::fs::read_dir(DEFAULT_CACHE).into_iter().flatten().flatten().flat_map(|folder| std::fs::read_dir(folder.path()).into_iter().flatten().flatten());
    for file in files.filter(|f| f.path().extension().is_some_and(|e| e == "safetensors")) {
        let Ok(tensors) = Tensor::read_safetensors(file.path()) else { continue };
        let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let parts: Option<Vec<&Tensor>> = specs.iter().enumerate().map(|(i, spec)| map.get(&format!("features{i}")).filter(|t| t.size()[1] == spec.feature_dim)).collect();
        let (Some(parts), Some(decoded)) = (parts, map.get("decoded")) else { continue };
        let keep = decoded.gt(0);
        for (all, part) in features.iter_mut().zip(parts) {
            all.push(part.index(&[Some(&keep)]));
        }
    }
    anyhow::ensure!(!features[0].is_empty(), "no cached features in {DEFAULT_CACHE}: {hint}");
    Ok(tch::no_grad(|| {
        let hidden: Vec<Tensor> = heads.iter().zip(&features).map(|(head, parts)| head.penultimate_t(&Tensor::cat(parts, 0), false)).collect();
        mean_cosine_embedding(&hidden)
    }))
}

/// `count` unit vectors: the bases first (as far as they go, `with_bases`), then each a random base with
/// Gaussian noise of 0.3 to 0.8 times each dimension's spread, clipped at 0 as the heads'
/// ReLU outputs are. At 20,000 such vectors, half have a neighbour within cosine 0.92.
fn perturbed(bases: &Tensor, count: usize, with_bases: bool, seed: i64) -> Vec<f32> {
    tch::manual_seed(seed);
    let (n, dim) = (bases.size()[0], bases.size()[1]);
    let spread = bases.std_dim(0, false, false);
    let mut out = Vec::with_capacity(count * dim as usize);
    let first = if with_bases { (n as usize).min(count) } else { 0 };
    out.extend(Vec::<f32>::try_from(bases.narrow(0, 0, first as i64).flatten(0, -1)).expect("f32 bases"));
    for start in (first..count).step_by(20_000) {
        let take = (count - start).min(20_000) as i64;
        let picks = Tensor::randint(n, [take], (Kind::Int64, Device::Cpu));
        let scale = Tensor::rand([take, 1], (Kind::Float, Device::Cpu)) * 0.5 + 0.3;
        let noisy = (bases.index_select(0, &picks) + Tensor::randn([take, dim], (Kind::Float, Device::Cpu)) * &spread * scale).relu();
        let unit = &noisy / noisy.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        out.extend(Vec::<f32>::try_from(unit.flatten(0, -1)).expect("f32 vectors"));
    }
    out
}

/// Every query's f32 exact top 5, as sorted row numbers.
fn exact_top5(matrix: &[f32], queries: &[f32], dim: usize) -> Vec<Vec<usize>> {
    let q = Tensor::from_slice(queries).view([-1, dim as i64]);
    let count = q.size()[0] as usize;
    let mut best: Vec<Vec<(f32, usize)>> = vec![Vec::new(); count];
    for (chunk, rows) in matrix.chunks(100_000 * dim).enumerate() {
        let part = Tensor::from_slice(rows).view([-1, dim as i64]);
        let (_, top) = q.matmul(&part.tr()).topk(16.min(part.size()[0]), 1, true, true);
        let top = Vec::<i64>::try_from(top.flatten(0, -1)).expect("indices");
        let per = top.len() / count;
        for (query, found) in best.iter_mut().enumerate() {
            for &local in &top[query * per..(query + 1) * per] {
                let row = chunk * 100_000 + local as usize;
                found.push((dot(&matrix[row * dim..(row + 1) * dim], &queries[query * dim..(query + 1) * dim]), row));
            }
        }
    }
    best.into_iter()
        .map(|mut found| {
            found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            sorted(&found[..5].iter().map(|f| f.1).collect::<Vec<_>>())
        })
        .collect()
}

fn sorted(rows: &[usize]) -> Vec<usize> {
    let mut rows = rows.to_vec();
    rows.sort_unstable();
    rows
}

/// This process's resident memory (`VmRSS`).
fn resident_bytes() -> usize {
    status_kb("VmRSS:").unwrap_or(0) * 1024
}

fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse::<usize>().ok().map(|kb| kb * 1024)
}

fn status_kb(field: &str) -> Option<usize> {
    let status = std::fs::read_to_string(Path::new("/proc/self/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}
