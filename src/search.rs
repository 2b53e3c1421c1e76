//! `SearchService`: the one entry point the CLI and the bot call. A query (image bytes, an
//! optional sentence, k, page) becomes a `SearchOutcome`: the categories searched and why, each
//! backbone's vote, the text's scores, the hits, and the time of every stage. It also runs
//! re-indexing, while queries go on being answered from the generation in memory.
//!
//! Concurrency: at most `search.max_concurrent_queries` queries at once (more get
//! [`SearchError::Busy`]); images are decoded on tokio's blocking pool, in parallel with the
//! models; queries that arrive while the model thread is busy are classified together in one
//! batch (micro-batching); a re-index embeds its images in small jobs on the same thread, so
//! queries slip in between them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use image::RgbImage;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalogue::MetadataTable;
use crate::config::{Config, EmbeddingSource};
use crate::decide::{decide, Decision, Gating, ImageVote};
use crate::files::heads;
use crate::imaging::{self, ImageError, ImageLimits};
use crate::index::{self, Backend, EmbeddingKey, Generation, Hit, IndexError, Progress, ReindexError, ReindexJob, ReindexSummary, Scope, SearchParams};
use crate::text::{Intent, IntentReader, TextModelPaths, Vocabulary};
use crate::vision;
use crate::vision::ensemble::{forward_batch, Ensemble, HeadsInfo, GPU_BATCH_SIZES};
use crate::worker::ModelWorker;

/// Everything the model thread owns; nothing outside this module reaches it.
struct Models {
    ensemble: Ensemble,
    intent: IntentReader,
}

/// The parts of the config a running service reads: how to search and index, where the
/// catalogue and the index are, what an image may cost. Models and text are read once at start.
#[derive(Debug, Clone)]
struct Settings {
    search: crate::config::SearchConfig,
    index: crate::config::IndexConfig,
    catalogue: crate::config::CatalogueConfig,
    limits: ImageLimits,
}

/// One request.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The photo, as uploaded (PNG, JPEG, WebP, GIF, BMP).
    pub image: Vec<u8>,
    /// What the shopper said, if anything.
    pub text: Option<String>,
    /// Hits per page [default: search.default_k], at most search.max_k.
    pub k: Option<usize>,
    /// Zero-based page of hits.
    pub page: usize,
    /// Search these categories instead of deciding ("Wrong category?").
    pub categories: Option<Vec<String>>,
}

/// Milliseconds spent in each stage of one query.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub decode_ms: f64,
    /// Waiting for the model thread.
    pub queue_ms: f64,
    /// The three backbones and heads, for the whole micro-batch.
    pub vision_ms: f64,
    pub text_ms: f64,
    pub search_ms: f64,
    /// How the index found the hits: the embedded index's "int4 scan + exact re-rank"; in
    /// PostgreSQL "exact", or "hnsw" (a large category).
    pub search_method: &'static str,
    pub total_ms: f64,
    /// Queries classified together with this one (itself included).
    pub batch: usize,
}

/// The answer to a query, as plain data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchOutcome {
    /// Categories searched, in order, and why.
    pub decision: Decision,
    /// Each backbone's probabilities over the categories.
    pub vote: ImageVote,
    /// The sentence's reading, when there was a sentence.
    pub intent: Option<Intent>,
    pub hits: Vec<Hit>,
    pub page: usize,
    pub k: usize,
    /// Whether the next page has hits.
    pub more: bool,
    /// The index generation that answered.
    pub generation: u64,
    pub timings: Timings,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("busy: {0} searches are already running; try again in {1} s")]
    Busy(usize, u64),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    NoIndex(String),
    /// The catalogue database cannot be reached now; it may be back shortly.
    #[error("the catalogue database is unreachable; try again shortly ({0})")]
    Unavailable(String),
    #[error("unknown category `{0}`: the catalogue has {1}")]
    UnknownCategory(String, String),
    #[error("the search took longer than {0} ms and was abandoned; try again")]
    Timeout(u64),
    #[error("the models failed on this query: {0}")]
    Models(String),
}

impl SearchError {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SearchError::Busy(..) => "busy",
            SearchError::Image(_) => "bad_image",
            SearchError::NoIndex(_) => "no_index",
            SearchError::Unavailable(_) => "unavailable",
            SearchError::UnknownCategory(..) => "unknown_category",
            SearchError::Timeout(_) => "timeout",
            SearchError::Models(_) => "error",
        }
    }
}

/// What the model thread hands back for one image.
struct Understood {
    vote: ImageVote,
    embedding: Vec<f32>,
    intent: Option<Intent>,
    queue_ms: f64,
    vision_ms: f64,
    text_ms: f64,
    batch: usize,
}

struct Pending {
    image: RgbImage,
    text: Option<String>,
    queued: Instant,
    answer: tokio::sync::oneshot::Sender<Result<Understood, SearchError>>,
}

pub struct SearchService {
    worker: ModelWorker<Models>,
    /// Where the catalogue's vectors are.
    backend: Arc<dyn Backend>,
    key: EmbeddingKey,
    source: EmbeddingSource,
    settings: Settings,
    permits: Arc<tokio::sync::Semaphore>,
    pending: Arc<Mutex<Vec<Pending>>>,
    /// The last query's total time, for the "try again in N s" estimate.
    last_total_ms: AtomicU64,
    /// Images per re-index job: the models' forward batch on their device.
    reindex_chunk: usize,
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// sha256 over the weights the vectors depend on beyond the published backbones: fine-tuned
/// backbone layers, and for embeddings with a head part the heads.
fn weights_fingerprint(heads_dir: &Path, backbones: &[String], source: EmbeddingSource) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for backbone in backbones {
        let mut files = vec![heads::tuned_backbone_path(heads_dir, backbone)];
        if source != EmbeddingSource::Pooled {
            files.push(heads::head_path(heads_dir, backbone));
        }
        for file in files.into_iter().filter(|f| f.exists()) {
            hasher.update(std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

impl SearchService {
    /// Loads the models (backbones, heads, text methods) on their thread and the newest index
    /// generation. A missing, damaged or outdated index is not fatal: searches say what to do
    /// and a re-index fixes it.
    pub fn start(config: &Config) -> anyhow::Result<SearchService> {
        let heads = HeadsInfo::load(&config.models.heads_dir)?;
        anyhow::ensure!(
            heads.profile == config.models.profile,
            "the heads in {} were trained for the {} profile, the config runs {}: train again or change models.profile",
            config.models.heads_dir.display(),
            heads.profile,
            config.models.profile
        );
        let (profile, models_dir, heads_dir, models) = (config.models.profile, config.models.dir.clone(), config.models.heads_dir.clone(), config.models.clone());
        SearchService::with_ensemble(config, move || Ensemble::load(&vision::backbones(profile), &models_dir, &heads_dir, vision::placement(&models)?))
    }

    /// As [`start`](Self::start), with the ensemble built by `ensemble` on the model thread (the
    /// benchmarks use random heads and weights).
    pub fn with_ensemble(config: &Config, ensemble: impl FnOnce() -> anyhow::Result<Ensemble> + Send + 'static) -> anyhow::Result<SearchService> {
        let specs = vision::backbones(config.models.profile);
        let source = config.index.embedding;
        let dim = vision::ensemble::embedding_dim(source, config.models.profile);
        let backbones: Vec<String> = specs.iter().map(|s| s.id.to_string()).collect();
        let key = EmbeddingKey {
            profile: config.models.profile.to_string(),
            weights_sha256: weights_fingerprint(&config.models.heads_dir, &backbones, source)?,
            backbones,
            source: source.as_str().to_string(),
            pooling: if source == EmbeddingSource::Head { String::new() } else { format!("gem{}", vision::ensemble::GEM_P) },
            dim,
        };
        let vocabulary = Vocabulary::load(&config.text.vocabulary)?;
        let text = config.text.clone();
        let paths = TextModelPaths::new(&config.models.dir, &config.text);
        let worker = ModelWorker::spawn(move || {
            let ensemble = ensemble()?;
            let intent = IntentReader::load(vocabulary, &text, &text.methods, &paths)?;
            Ok(Models { ensemble, intent })
        })?;
        let reindex_chunk = worker.run_blocking(|models: &mut Models| models.ensemble.backbones.first().map_or(index::EMBED_CHUNK, |b| forward_batch(b.device).max(index::EMBED_CHUNK)))?;
        let backend = index::open(&config.index)?;
        if let Err(problem) = served(backend.as_ref(), &key) {
            tracing::warn!("{problem}");
        }
        Ok(SearchService {
            worker,
            backend,
            key,
            source,
            permits: Arc::new(tokio::sync::Semaphore::new(config.search.max_concurrent_queries.max(1))),
            settings: Settings { search: config.search.clone(), index: config.index.clone(), catalogue: config.catalogue.clone(), limits: ImageLimits::from_config(&config.limits) },
            pending: Arc::default(),
            last_total_ms: AtomicU64::new(1000),
            reindex_chunk,
        })
    }

    /// For `lookalike bench` alone: runs `probe` on the model thread with the ensemble and the
    /// sentence reader, so that it can time single stages the way a query runs them.
    pub fn bench_probe<R: Send + 'static>(&self, probe: impl FnOnce(&Ensemble, &mut IntentReader) -> R + Send + 'static) -> anyhow::Result<R> {
        self.worker.run_blocking(move |models: &mut Models| probe(&models.ensemble, &mut models.intent))
    }

    /// What an image may cost here (`limits`).
    pub fn image_limits(&self) -> ImageLimits {
        self.settings.limits
    }

    /// The backbones' pooled features of `images`, each as one unit vector (the GPU check
    /// compares devices by them).
    pub fn pooled_features(&self, images: Vec<RgbImage>) -> anyhow::Result<Vec<Vec<f32>>> {
        self.worker.run_blocking(move |models: &mut Models| Ok(models.ensemble.classify(&images)?.into_iter().map(|c| c.pooled).collect()))?
    }

    /// Runs every network once on a blank image, so the first query or re-index does not pay
    /// for libtorch's first-call set-up.
    pub fn warm_up(&self) -> anyhow::Result<()> {
        self.worker.run_blocking(|models: &mut Models| {
            // On a GPU, every batch size it will ever run (see GPU_BATCH_SIZES).
            let on_gpu = models.ensemble.backbones.first().is_some_and(|b| b.device.is_cuda());
            for &size in if on_gpu { &GPU_BATCH_SIZES[..] } else { &[1] } {
                models.ensemble.classify(&vec![RgbImage::new(64, 64); size])?;
            }
            anyhow::Ok(())
        })?
    }

    /// The generation searches are answered from now (a database round trip for PostgreSQL,
    /// so it runs on a blocking thread).
    pub async fn generation(&self) -> Result<Arc<Generation>, SearchError> {
        let (backend, key) = (self.backend.clone(), self.key.clone());
        tokio::task::spawn_blocking(move || served(backend.as_ref(), &key)).await.map_err(|e| SearchError::Models(e.to_string()))?
    }

    /// [`generation`](Self::generation) for callers outside async code.
    pub fn generation_blocking(&self) -> Result<Arc<Generation>, SearchError> {
        served(self.backend.as_ref(), &self.key)
    }

    /// What the index's vectors must mean for these models.
    pub fn embedding_key(&self) -> &EmbeddingKey {
        &self.key
    }

    /// Runs one query; see the module documentation for concurrency.
    pub async fn search(&self, query: Query) -> Result<SearchOutcome, SearchError> {
        let started = Instant::now();
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            let seconds = self.last_total_ms.load(Ordering::Relaxed).div_ceil(1000).max(1);
            return Err(SearchError::Busy(self.settings.search.max_concurrent_queries, seconds));
        };
        let generation = self.generation().await?;
        let search = &self.settings.search;
        let k = query.k.unwrap_or(search.default_k).clamp(1, search.max_k.max(1));
        if let Some(asked) = &query.categories {
            let known: Vec<&str> = generation.categories.iter().map(|c| c.name.as_str()).collect();
            if let Some(unknown) = asked.iter().find(|c| !known.contains(&c.as_str())) {
                return Err(SearchError::UnknownCategory(unknown.clone(), known.join(", ")));
            }
        }
        let limits = self.settings.limits;
        let bytes = query.image;
        let image = tokio::task::spawn_blocking(move || imaging::decode(&bytes, limits)).await.map_err(|e| SearchError::Models(e.to_string()))??;
        let decode_ms = millis(started.elapsed());

        let timeout = Duration::from_millis(search.query_timeout_ms);
        let understood = tokio::time::timeout(timeout, self.understand(image, query.text)).await.map_err(|_| SearchError::Timeout(search.query_timeout_ms))??;
        let decision = match query.categories {
            Some(categories) => Decision::chosen(categories.clone(), format!("searching the category asked for: {}", categories.join(", "))),
            None => decide(&understood.vote, understood.intent.as_ref(), &Gating::from_config(search)),
        };

        let search_started = Instant::now();
        let params = SearchParams {
            k,
            offset: query.page * k,
            metric: self.settings.index.metric,
            min_similarity: self.settings.index.min_similarity,
            near_duplicate_cosine: self.settings.index.near_duplicate_cosine,
        };
        let scopes: Vec<Scope> = decision
            .categories
            .iter()
            .zip(&decision.bonuses)
            .enumerate()
            .map(|(position, (category, &bonus))| Scope { category: category.clone(), rank: if decision.ranked_together { 0 } else { position }, bonus })
            .collect();
        let (embedding, searched, backend) = (understood.embedding, generation.clone(), self.backend.clone());
        let page = tokio::task::spawn_blocking(move || backend.search(&searched, &embedding, &scopes, &params)).await.map_err(|e| SearchError::Models(e.to_string()))?.map_err(from_index)?;
        let total = started.elapsed();
        self.last_total_ms.store(total.as_millis() as u64, Ordering::Relaxed);
        Ok(SearchOutcome {
            decision,
            vote: understood.vote,
            intent: understood.intent,
            hits: page.hits,
            page: query.page,
            k,
            more: page.more,
            generation: generation.number,
            timings: Timings {
                decode_ms,
                queue_ms: understood.queue_ms,
                vision_ms: understood.vision_ms,
                text_ms: understood.text_ms,
                search_ms: millis(search_started.elapsed()),
                search_method: page.method,
                total_ms: millis(total),
                batch: understood.batch,
            },
        })
    }

    /// Queues the image for the model thread; whichever job runs first takes every queued image
    /// and classifies them as one batch.
    async fn understand(&self, image: RgbImage, text: Option<String>) -> Result<Understood, SearchError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.pending.lock().expect("queue lock").push(Pending { image, text, queued: Instant::now(), answer });
        let (pending, source) = (self.pending.clone(), self.source);
        self.worker.submit(move |models| classify_pending(models, &pending, source)).map_err(|e| SearchError::Models(e.to_string()))?;
        answered.await.map_err(|_| SearchError::Models("the model thread failed on this query (see the log)".into()))?
    }

    /// Re-indexes the catalogue (`catalogue.dir`), incrementally; blocks until done, so async
    /// callers run it on a blocking thread. Refused while another re-index runs, here or in
    /// another process. Queries go on meanwhile and see the new generation once it is saved.
    pub fn reindex(&self, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        let metadata = MetadataTable::load(&self.settings.catalogue.metadata)?;
        let job = ReindexJob { catalogue: &self.settings.catalogue.dir, metadata: &metadata, key: &self.key, chunk: self.reindex_chunk, max_image_bytes: self.settings.limits.max_bytes };
        let (worker, source, limits) = (self.worker.clone(), self.source, self.settings.limits);
        let mut embed = move |paths: &[PathBuf]| -> Vec<Result<Vec<f32>, String>> {
            let decoded: Vec<Result<RgbImage, String>> = imaging::load_many(paths, limits).into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
            let (images, reasons): (Vec<_>, Vec<_>) = decoded
                .into_iter()
                .map(|d| match d {
                    Ok(image) => (Some(image), None),
                    Err(reason) => (None, Some(reason)),
                })
                .unzip();
            let images: Vec<RgbImage> = images.into_iter().flatten().collect();
            let embedded = worker.run_blocking(move |models: &mut Models| Ok(models.ensemble.classify(&images)?.into_iter().map(|c| c.embedding(source)).collect::<Vec<_>>())).and_then(|r| r);
            match embedded {
                Ok(vectors) => {
                    let mut vectors = vectors.into_iter();
                    reasons.into_iter().map(|reason| reason.map_or_else(|| vectors.next().ok_or_else(|| "no vector came back".to_string()), Err)).collect()
                }
                Err(err) => paths.iter().map(|_| Err(err.to_string())).collect(),
            }
        };
        self.backend.reindex(&job, &mut embed, progress)
    }
}

/// The backend's current generation, if its vectors mean what these models' do.
fn served(backend: &dyn Backend, key: &EmbeddingKey) -> Result<Arc<Generation>, SearchError> {
    match backend.current().map_err(from_index)? {
        Some(generation) if &generation.key == key => Ok(generation),
        Some(generation) => Err(SearchError::NoIndex(format!(
            "the index in {} was built with other models or heads ({} embeddings of {}, weights {}); re-index with `lookalike index`",
            backend.location(),
            generation.key.source,
            generation.key.backbones.join(", "),
            &generation.key.weights_sha256[..12.min(generation.key.weights_sha256.len())]
        ))),
        None => Err(SearchError::NoIndex(format!("the catalogue has not been indexed yet (nothing in {}): run `lookalike index`", backend.location()))),
    }
}

fn from_index(err: IndexError) -> SearchError {
    match err {
        IndexError::Unavailable(why) => SearchError::Unavailable(why),
        IndexError::Unusable(why) => SearchError::NoIndex(why),
        mismatch @ IndexError::DimensionMismatch { .. } => SearchError::Models(mismatch.to_string()),
    }
}

/// Re-indexes `catalogue.dir` with a progress bar; returns what changed.
pub fn reindex_with_bar(service: &SearchService) -> anyhow::Result<ReindexSummary> {
    let bar = crate::progress::bar(0, "index {bar:30} {pos}/{len} images to embed, {msg}");
    let summary = service.reindex(&mut |progress| {
        bar.set_length(progress.total as u64);
        bar.set_position(progress.done as u64);
        let eta = progress.eta_s().map_or("eta -".to_string(), |s| format!("eta {s:.0} s"));
        bar.set_message(format!("{:.1} images/s, {eta}", progress.rate()));
    })?;
    bar.finish_and_clear();
    Ok(summary)
}

/// Runs on the model thread: classifies every queued image in one batch, then reads each
/// sentence, and answers each query.
fn classify_pending(models: &mut Models, pending: &Mutex<Vec<Pending>>, source: EmbeddingSource) {
    let batch = std::mem::take(&mut *pending.lock().expect("queue lock"));
    if batch.is_empty() {
        return; // an earlier job took these queries into its batch
    }
    let started = Instant::now();
    let size = batch.len();
    let (images, rest): (Vec<RgbImage>, Vec<_>) = batch.into_iter().map(|p| (p.image, (p.text, p.queued, p.answer))).unzip();
    let classified = match models.ensemble.classify(&images) {
        Ok(classified) => classified,
        Err(err) => {
            tracing::error!(cause = %format!("{err:#}"), batch = size, "the models failed on a batch");
            for (_, _, answer) in rest {
                let _ = answer.send(Err(SearchError::Models("the models failed on this image (see the log)".into())));
            }
            return;
        }
    };
    let vision_ms = millis(started.elapsed());
    for (classification, (text, queued, answer)) in classified.into_iter().zip(rest) {
        let text_started = Instant::now();
        let intent = match text.filter(|t| !t.trim().is_empty()).map(|t| models.intent.read(&t)).transpose() {
            Ok(intent) => intent,
            Err(err) => {
                let _ = answer.send(Err(SearchError::Models(format!("{err:#}"))));
                continue;
            }
        };
        let _ = answer.send(Ok(Understood {
            embedding: classification.embedding(source),
            vote: classification.vote,
            intent,
            queue_ms: millis(started.duration_since(queued)),
            vision_ms,
            text_ms: millis(text_started.elapsed()),
            batch: size,
        }));
    }
}

/// The outcome as `lookalike search` prints it.
pub fn render(outcome: &SearchOutcome) -> String {
    let mut out = format!("searched: {}\n", outcome.decision.categories.join(", "));
    for reason in &outcome.decision.reasons {
        out.push_str(&format!("  - {reason}\n"));
    }
    if outcome.hits.is_empty() {
        out.push_str("no hits: the categories searched are empty, or every item is under index.min_similarity\n");
    }
    for (rank, hit) in outcome.hits.iter().enumerate() {
        let number = outcome.page * outcome.k + rank + 1;
        out.push_str(&format!("{number:>3}. {:<40} cosine {:.3}  euclidean {:.3}", hit.item.id, hit.cosine, hit.euclidean));
        let metadata = &hit.item.metadata;
        for field in [&metadata.title, &metadata.price, &metadata.link].into_iter().flatten() {
            out.push_str(&format!("  {field}"));
        }
        if !hit.collapsed.is_empty() {
            out.push_str(&format!("  (+{} near-duplicate{})", hit.collapsed.len(), if hit.collapsed.len() == 1 { "" } else { "s" }));
        }
        out.push('\n');
    }
    if outcome.more {
        out.push_str(&format!("more hits on the next page (--page {})\n", outcome.page + 2));
    }
    let t = &outcome.timings;
    out.push_str(&format!(
        "time: decode {:.1} ms, queue {:.1} ms, vision {:.1} ms (batch of {}), text {:.1} ms, search {:.2} ms ({}); total {:.1} ms (index generation {})\n",
        t.decode_ms, t.queue_ms, t.vision_ms, t.batch, t.text_ms, t.search_ms, t.search_method, t.total_ms, outcome.generation
    ));
    out
}

/// A contact-sheet row for `outcome`: the query and its hits, with scores and categories.
pub fn sheet_row(query: RgbImage, label: &str, outcome: &SearchOutcome, limits: ImageLimits) -> crate::plot::SheetRow {
    let hits = outcome
        .hits
        .iter()
        .map(|hit| {
            let image = imaging::load(&hit.item.path, limits).unwrap_or_else(|_| RgbImage::from_pixel(8, 8, image::Rgb([200, 200, 200])));
            let name = hit.item.metadata.title.clone().unwrap_or_else(|| hit.item.id.clone());
            (image, vec![name, format!("{}  cos {:.3}", hit.item.category, hit.cosine)])
        })
        .collect();
    crate::plot::SheetRow { query, caption: vec![label.to_string(), format!("searched: {}", outcome.decision.categories.join(", "))], hits }
}
