//! `SearchService`: what the bot and the CLI's search commands call. A query (image bytes and/or
//! a sentence, k, page) becomes a `SearchOutcome`: the categories searched and why, each
//! backbone's vote, the text's scores, what the sentence's words did, the hits, and the time of
//! every stage. Its [`Upkeep`] handle (`upkeep.rs`) re-indexes and edits the catalogue while
//! queries go on being answered from the current generation; `batch.rs` is the model thread's
//! side of a query; `refine.rs` re-ranks by the sentence's colours, attributes and price order.
//!
//! Words alone (no photo) never reach the backbones: the model thread reads the sentence's
//! category and MiniLM vector, and the index answers from the items' own words.
//!
//! Concurrency: at most `search.max_concurrent_queries` queries at once (more get
//! [`SearchError::Busy`]); images are decoded on tokio's blocking pool, in parallel with the
//! models; queries that arrive while the model thread is busy are classified together in one
//! batch of at most `search.max_batch` (micro-batching); a re-index embeds its images in small
//! jobs on the same thread, so queries slip in between them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use image::RgbImage;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, EmbeddingSource};
use crate::decide::{decide, decide_words, Decision, Gating, ImageVote};
use crate::files::heads;
use crate::imaging::{self, ImageError, ImageLimits};
use crate::index::{self, Backend, EmbeddingKey, Generation, Hit, IndexError, Page, Progress, ReindexError, ReindexJob, ReindexSummary, Scope, SearchMethod, SearchParams, WordsQuery};
use crate::text::{Intent, IntentReader, TextModelPaths, Vocabulary};
use crate::vision;
use crate::vision::ensemble::{forward_batch, Ensemble, HeadsInfo, GPU_BATCH_SIZES};
use crate::words::Wants;
use crate::worker::ModelWorker;

mod batch;
mod refine;
mod upkeep;
use batch::{classify_pending, Models, Pending, Queue, Understood};
pub use upkeep::{reindex_with_bar, with_bar, Edit, ImportStage, Imported, Upkeep};

/// How the query path searches: the parts of the config it reads after start.
#[derive(Debug, Clone)]
struct Settings {
    search: crate::config::SearchConfig,
    index: crate::config::IndexConfig,
    limits: ImageLimits,
}

/// One request.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The photo, as uploaded (PNG, JPEG, WebP, GIF, BMP); empty for a search by words alone.
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timings {
    pub decode_ms: f64,
    /// Waiting for the model thread.
    pub queue_ms: f64,
    /// The three backbones and heads, for the whole micro-batch.
    pub vision_ms: f64,
    pub text_ms: f64,
    pub search_ms: f64,
    /// How the index found the hits.
    pub search_method: SearchMethod,
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
    /// What the sentence asks beyond a category: colours, attributes, price.
    pub wants: Wants,
    /// What those words did to the hits, one line each ("price under 20: 57 of 212 bag items qualify").
    pub words: Vec<String>,
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
    #[error("nothing to search for: send a photo, some words, or both")]
    Empty,
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
            SearchError::Empty => "empty",
        }
    }
}

/// The model thread and the ensembles on it, shared by the query path and [`Upkeep`].
struct ModelHandle {
    worker: ModelWorker<Models>,
    /// The keys of the ensembles on the model thread, the current one first: a generation is
    /// searched when its key is one of them.
    keys: RwLock<Vec<EmbeddingKey>>,
    source: EmbeddingSource,
}

impl ModelHandle {
    /// What the index's vectors must mean for the models queries are answered with.
    fn current_key(&self) -> EmbeddingKey {
        self.keys.read().expect("keys lock")[0].clone()
    }
}

/// The query path: admission, decoding, the model thread's queue, decide, search. Keeping the
/// service current (re-index, catalogue edits, new heads) is its [`Upkeep`] handle.
pub struct SearchService {
    models: Arc<ModelHandle>,
    /// Where the catalogue's vectors are.
    backend: Arc<dyn Backend>,
    settings: Settings,
    permits: Arc<tokio::sync::Semaphore>,
    queue: Arc<Queue>,
    /// The last query's total time, for the "try again in N s" estimate.
    last_total_ms: AtomicU64,
    upkeep: Upkeep,
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// What the vectors of `config`'s models, with the heads now in `models.heads_dir`, mean: the
/// sha256 covers the weights they depend on beyond the published backbones (fine-tuned backbone
/// layers, and for embeddings with a head part the heads).
fn embedding_key(config: &Config) -> anyhow::Result<EmbeddingKey> {
    let source = config.index.embedding;
    if source == EmbeddingSource::Clip {
        return clip_key(config);
    }
    let backbones: Vec<String> = vision::backbones(config.models.profile).iter().map(|s| s.id.to_string()).collect();
    let dir = &config.models.heads_dir;
    let files = backbones.iter().flat_map(|b| std::iter::once(heads::tuned_backbone_path(dir, b)).chain((source != EmbeddingSource::Pooled).then(|| heads::head_path(dir, b))));
    Ok(EmbeddingKey {
        profile: config.models.profile.to_string(),
        weights_sha256: sha256_of_files(files, false)?,
        backbones,
        source: source.as_str().to_string(),
        pooling: if source == EmbeddingSource::Head { String::new() } else { vision::ensemble::Descriptor::from_config(config).key() },
        dim: vision::ensemble::embedding_dim(source, config.models.profile),
    })
}

/// The clip embedder's vectors depend on its weights alone: the sha256 `models fetch clip`
/// recorded beside them (hashing 605 MB at every start would take seconds) while the record is
/// newer than the weights, else the file's own (weights replaced by hand).
fn clip_key(config: &Config) -> anyhow::Result<EmbeddingKey> {
    let weights = crate::clip::weights(&config.models.dir)?;
    let record = PathBuf::from(format!("{}.sha256", weights.display()));
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let current = modified(&record).zip(modified(&weights)).is_some_and(|(record, weights)| record >= weights);
    let recorded = current.then(|| std::fs::read_to_string(&record).ok()).flatten().and_then(|line| line.split_whitespace().next().map(str::to_string));
    Ok(EmbeddingKey {
        profile: "clip".to_string(),
        weights_sha256: match recorded {
            Some(sha) => sha,
            None => sha256_of_files([weights], false)?,
        },
        backbones: vec![crate::clip::WEIGHTS.to_string()],
        source: EmbeddingSource::Clip.as_str().to_string(),
        // The image tower's 8 bits move every vector a little: a key of its own.
        pooling: if config.models.clip_int8 && !vision::device(config.models.device)?.is_cuda() { "int8".to_string() } else { String::new() },
        dim: crate::clip::DIM,
    })
}

/// sha256 over the bytes of those of `files` that exist (and their names, with `named`).
fn sha256_of_files(files: impl IntoIterator<Item = PathBuf>, named: bool) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for file in files.into_iter().filter(|f| f.exists()) {
        if named {
            hasher.update(file.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        }
        hasher.update(std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?);
    }
    Ok(hex::encode(hasher.finalize()))
}

impl SearchService {
    /// Loads the models (backbones, heads, text methods) on their thread and the newest index
    /// generation. A missing, damaged or outdated index is not fatal: searches say what to do
    /// and a re-index fixes it.
    pub fn start(config: &Config) -> anyhow::Result<SearchService> {
        let heads = upkeep::HeadsSource::new(config)?;
        SearchService::build(config, heads.loader(), Some(heads))
    }

    /// As [`start`](Self::start), with the ensemble built by `ensemble` on the model thread (the
    /// benchmarks use random heads and weights); a re-index never swaps it.
    pub fn with_ensemble(config: &Config, ensemble: impl FnOnce() -> anyhow::Result<Ensemble> + Send + 'static) -> anyhow::Result<SearchService> {
        SearchService::build(config, ensemble, None)
    }

    fn build(config: &Config, ensemble: impl FnOnce() -> anyhow::Result<Ensemble> + Send + 'static, heads: Option<upkeep::HeadsSource>) -> anyhow::Result<SearchService> {
        let key = embedding_key(config)?;
        let vocabulary = Vocabulary::from_config(&config.text)?;
        let text = config.text.clone();
        let mut paths = TextModelPaths::new(&config.models.dir, &config.text);
        paths.pictures = config.index.embedding == EmbeddingSource::Clip;
        let loaded = key.clone();
        let worker = ModelWorker::spawn(move || {
            let ensemble = ensemble()?;
            let intent = IntentReader::load(vocabulary, &text, &text.methods, &paths)?;
            Ok(Models { ensembles: vec![(loaded, ensemble)], intent })
        })?;
        let reindex_chunk = worker.run_blocking(|models: &mut Models| models.current().backbones.first().map_or(index::EMBED_CHUNK, |b| forward_batch(b.device).max(index::EMBED_CHUNK)))?;
        let backend = index::open(&config.index)?;
        if let Err(problem) = served(backend.as_ref(), std::slice::from_ref(&key)) {
            tracing::warn!("{problem}");
        }
        let models = Arc::new(ModelHandle { worker, keys: RwLock::new(vec![key]), source: config.index.embedding });
        Ok(SearchService {
            upkeep: Upkeep::new(config, models.clone(), backend.clone(), reindex_chunk, heads),
            models,
            backend,
            permits: Arc::new(tokio::sync::Semaphore::new(config.search.max_concurrent_queries.max(1))),
            settings: Settings { search: config.search.clone(), index: config.index.clone(), limits: ImageLimits::from_config(&config.limits) },
            queue: Arc::new(Queue::new(config.search.max_batch)),
            last_total_ms: AtomicU64::new(1000),
        })
    }

    /// Keeping the service current while it answers: re-index, catalogue edits, new heads.
    pub fn upkeep(&self) -> &Upkeep {
        &self.upkeep
    }

    /// For `lookalike bench` alone: runs `probe` on the model thread with the ensemble and the
    /// sentence reader, so that it can time single stages the way a query runs them.
    pub fn bench_probe<R: Send + 'static>(&self, probe: impl FnOnce(&Ensemble, &mut IntentReader) -> R + Send + 'static) -> anyhow::Result<R> {
        self.models.worker.run_blocking(move |models: &mut Models| {
            let Models { ensembles, intent } = models;
            probe(&ensembles[0].1, intent)
        })
    }

    /// What an image may cost here (`limits`).
    pub fn image_limits(&self) -> ImageLimits {
        self.settings.limits
    }

    /// The backbones' pooled features of `images`, each as one unit vector (the GPU check
    /// compares devices by them).
    pub fn pooled_features(&self, images: Vec<RgbImage>) -> anyhow::Result<Vec<Vec<f32>>> {
        self.models.worker.run_blocking(move |models: &mut Models| Ok(models.current().classify(&images, false)?.into_iter().map(|c| c.pooled).collect()))?
    }

    /// Runs every network once on a blank image, so the first query or re-index does not pay
    /// for libtorch's first-call set-up.
    pub fn warm_up(&self) -> anyhow::Result<()> {
        self.models.worker.run_blocking(|models: &mut Models| {
            // On a GPU, every batch size it will ever run (see GPU_BATCH_SIZES).
            let on_gpu = models.current().backbones.first().is_some_and(|b| b.device.is_cuda());
            for &size in if on_gpu { &GPU_BATCH_SIZES[..] } else { &[1] } {
                models.current().classify(&vec![RgbImage::new(64, 64); size], true)?;
            }
            anyhow::Ok(())
        })?
    }

    /// The generation searches are answered from now (a database round trip for PostgreSQL,
    /// so it runs on a blocking thread).
    pub async fn generation(&self) -> Result<Arc<Generation>, SearchError> {
        let (backend, keys) = (self.backend.clone(), self.models.keys.read().expect("keys lock").clone());
        tokio::task::spawn_blocking(move || served(backend.as_ref(), &keys)).await.map_err(|e| SearchError::Models(e.to_string()))?
    }

    /// [`generation`](Self::generation) for callers outside async code.
    pub fn generation_blocking(&self) -> Result<Arc<Generation>, SearchError> {
        served(self.backend.as_ref(), &self.models.keys.read().expect("keys lock"))
    }

    /// What the index's vectors must mean for the models queries are answered with.
    pub fn embedding_key(&self) -> EmbeddingKey {
        self.models.current_key()
    }

    /// Runs one query; see the module documentation for concurrency.
    pub async fn search(&self, query: Query) -> Result<SearchOutcome, SearchError> {
        let started = Instant::now();
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            let seconds = self.last_total_ms.load(Ordering::Relaxed).div_ceil(1000).max(1);
            return Err(SearchError::Busy(self.settings.search.max_concurrent_queries, seconds));
        };
        let text = query.text.filter(|t| !t.trim().is_empty());
        if query.image.is_empty() && text.is_none() {
            return Err(SearchError::Empty);
        }
        let generation = self.generation().await?;
        let search = &self.settings.search;
        let k = query.k.unwrap_or(search.default_k).clamp(1, search.max_k.max(1));
        if let Some(asked) = &query.categories {
            let known: Vec<&str> = generation.categories.iter().map(|c| c.name.as_str()).collect();
            if let Some(unknown) = asked.iter().find(|c| !known.contains(&c.as_str())) {
                return Err(SearchError::UnknownCategory(unknown.clone(), known.join(", ")));
            }
        }
        let wants = text.as_deref().map(crate::words::read).unwrap_or_default();
        let Looked { understood, photo_colours, decode_ms, recoloured_to } = self.look(query.image, text.as_deref(), &wants, generation.key.clone(), started).await?;
        let by_words = understood.vote.backbones.is_empty();
        let decision = match query.categories {
            Some(categories) => Decision::chosen(categories.clone(), format!("searching the category asked for: {}", categories.join(", "))),
            None if by_words => decide_words(understood.intent.as_ref(), &generation.category_names()),
            None => decide(&understood.vote, understood.intent.as_ref(), &Gating::from_config(search)),
        };

        let search_started = Instant::now();
        let params = SearchParams {
            k,
            offset: query.page * k,
            metric: self.settings.index.metric,
            min_similarity: self.settings.index.min_similarity,
            near_duplicate_cosine: self.settings.index.near_duplicate_cosine,
            price: wants.price,
            variants_apart: false,
        };
        let scopes: Vec<Scope> = decision
            .categories
            .iter()
            .zip(&decision.bonuses)
            .enumerate()
            .map(|(position, (category, &bonus))| Scope { category: category.clone(), rank: if decision.ranked_together { 0 } else { position }, bonus })
            .collect();
        let probe = match by_words {
            true => Probe::Words(WordsQuery { terms: crate::words::terms(text.as_deref().unwrap_or_default()), vector: understood.embedding, pictures: understood.pictures }),
            false => Probe::Image(understood.embedding),
        };
        let find = Find {
            backend: self.backend.clone(),
            generation: generation.clone(),
            set_aside: refine::photo_colour_to_set_aside(&photo_colours, &wants),
            searched: decision.categories.clone(),
            wants: wants.clone(),
            weights: refine::Weights::from_config(search),
            pool: search.words_pool,
            expansion: (search.query_expansion, search.query_expansion_alpha),
        };
        let (page, mut words) = tokio::task::spawn_blocking(move || find.run(probe, &scopes, &params)).await.map_err(|e| SearchError::Models(e.to_string()))?.map_err(from_index)?;
        if let Some(name) = recoloured_to {
            words.insert(0, format!("the photo dyed '{name}' before the backbones looked at it: its look is kept, its colour changed"));
        }
        let total = started.elapsed();
        self.last_total_ms.store(total.as_millis() as u64, Ordering::Relaxed);
        Ok(SearchOutcome {
            decision,
            vote: understood.vote,
            intent: understood.intent,
            wants,
            words,
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

    /// The model thread's reading of a query, within `search.query_timeout_ms`: of the words
    /// alone, or of the photo (and of the photo dyed the colour the sentence asks for, in the
    /// same batch: the vote, the kind of item, comes from the photo as taken, the vector searched
    /// with from the photo in the colour asked).
    async fn look(&self, image: Vec<u8>, text: Option<&str>, wants: &Wants, key: EmbeddingKey, started: Instant) -> Result<Looked, SearchError> {
        let limit_ms = self.settings.search.query_timeout_ms;
        if image.is_empty() {
            let understood = within(limit_ms, self.read_words(text.unwrap_or_default().to_string())).await?;
            return Ok(Looked { understood, photo_colours: Vec::new(), decode_ms: 0.0, recoloured_to: None });
        }
        let (limits, asked) = (self.settings.limits, wants.clone());
        let (image, photo_colours, dyed) = tokio::task::spawn_blocking(move || photo(&image, limits, &asked)).await.map_err(|e| SearchError::Models(e.to_string()))??;
        let decode_ms = millis(started.elapsed());
        let for_category = text.map(crate::words::for_category).filter(|t| !t.trim().is_empty());
        let (understood, recoloured_to) = match dyed {
            Some((dyed, name)) => {
                let both = async {
                    let (photo, dyed) = tokio::join!(self.understand(image, for_category, key.clone()), self.understand(dyed, None, key));
                    let (mut photo, dyed) = (photo?, dyed?);
                    photo.embedding = dyed.embedding;
                    Ok(photo)
                };
                (within(limit_ms, both).await?, Some(name))
            }
            None => (within(limit_ms, self.understand(image, for_category, key)).await?, None),
        };
        Ok(Looked { understood, photo_colours, decode_ms, recoloured_to })
    }

    /// Words alone: the model thread reads the sentence's category, its MiniLM vector and, with
    /// the clip embedder, its clip vector; no backbone runs.
    async fn read_words(&self, text: String) -> Result<Understood, SearchError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let queued = Instant::now();
        self.models
            .worker
            .submit(move |models: &mut Models| {
                let started = Instant::now();
                let mut read = || -> anyhow::Result<Understood> {
                    let intent = models.intent.read(&crate::words::for_category(&text))?;
                    let vector = models.intent.sentence_vectors(std::slice::from_ref(&text))?.map(|mut v| v.remove(0)).unwrap_or_default();
                    let pictures = models.intent.picture_vectors(std::slice::from_ref(&text))?.map(|mut v| v.remove(0)).unwrap_or_default();
                    let (queue_ms, text_ms) = (millis(started - queued), millis(started.elapsed()));
                    Ok(Understood { vote: ImageVote::default(), embedding: vector, pictures, intent: Some(intent), queue_ms, vision_ms: 0.0, text_ms, batch: 1 })
                };
                let _ = answer.send(read().map_err(|err| SearchError::Models(format!("{err:#}"))));
            })
            .map_err(|e| SearchError::Models(e.to_string()))?;
        answered.await.map_err(|_| SearchError::Models("the model thread failed on this query (see the log)".into()))?
    }

    /// Queues the image and a job for the model thread; whichever job runs first takes up to
    /// `search.max_batch` queued images and classifies them as one batch.
    async fn understand(&self, image: RgbImage, text: Option<String>, key: EmbeddingKey) -> Result<Understood, SearchError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.queue.push(Pending { image, text, queued: Instant::now(), key, answer });
        let (queue, source) = (self.queue.clone(), self.models.source);
        self.models.worker.submit(move |models| classify_pending(models, &queue, source)).map_err(|e| SearchError::Models(e.to_string()))?;
        answered.await.map_err(|_| SearchError::Models("the model thread failed on this query (see the log)".into()))?
    }
}

/// The query photo as taken, its colours, and the photo dyed with the colour's name.
type Photo = (RgbImage, Vec<crate::colour::Swatch>, Option<(RgbImage, String)>);

/// The query photo decoded, its colours (when the sentence names any), and, when the sentence
/// wants a colour other than the photo's, the photo dyed that colour (see
/// [`crate::colour::recolour`]) with the colour's name: the backbones then look at it.
fn photo(bytes: &[u8], limits: ImageLimits, wants: &Wants) -> Result<Photo, ImageError> {
    let image = imaging::decode(bytes, limits)?;
    if wants.colours.is_empty() {
        return Ok((image, Vec::new(), None));
    }
    let colours = crate::colour::signature(&image);
    let wish = wants.wanted_colours().next().filter(|_| refine::photo_colour_to_set_aside(&colours, wants).is_some());
    let dyed = wish.and_then(|wish| crate::colour::recolour(&image, crate::colour::srgb_from_lab(wish.lab)).map(|dyed| (dyed, wish.name.clone())));
    Ok((image, colours, dyed))
}

/// `work`, abandoned with [`SearchError::Timeout`] after `limit_ms`.
async fn within<T>(limit_ms: u64, work: impl std::future::Future<Output = Result<T, SearchError>>) -> Result<T, SearchError> {
    tokio::time::timeout(Duration::from_millis(limit_ms), work).await.map_err(|_| SearchError::Timeout(limit_ms))?
}

/// What the model thread made of a query, and of its photo.
struct Looked {
    understood: Understood,
    /// The photo's colours, when the sentence names any.
    photo_colours: Vec<crate::colour::Swatch>,
    decode_ms: f64,
    /// The colour the photo was dyed before the backbones looked at it.
    recoloured_to: Option<String>,
}

/// What the index is asked with: the photo's vector, or the words.
enum Probe {
    Image(Vec<f32>),
    Words(WordsQuery),
}

/// One search of the index, on a blocking thread, with what the sentence's words ask of it.
struct Find {
    backend: Arc<dyn Backend>,
    generation: Arc<Generation>,
    wants: Wants,
    /// The photo's own colour, when the sentence names another.
    set_aside: Option<crate::colour::Lab>,
    searched: Vec<String>,
    weights: refine::Weights,
    pool: usize,
    /// Alpha query expansion: (first hits blended in, the weights' exponent); 0 hits: off.
    expansion: (usize, f32),
}

impl Find {
    /// The page, and what the words did. With no refinement this is the backend's own page,
    /// exactly as before words were read; with one, the best `pool` candidates (inside the
    /// price range, filtered by the backend's query) are re-ranked and the page cut from them.
    fn run(self, probe: Probe, scopes: &[Scope], params: &SearchParams) -> Result<(Page, Vec<String>), IndexError> {
        let (backend, generation) = (self.backend.as_ref(), self.generation.as_ref());
        let mut lines = Vec::new();
        if let Probe::Words(words) = &probe {
            lines.push(
                match words.pictures.len() == generation.key.dim {
                    true => "no photo: the items' titles, descriptions and tags searched by full text and by meaning (MiniLM), and their pictures compared with the sentence (clip), fused by rank",
                    false => "no photo: the items' titles, descriptions and tags searched by full text and by meaning (MiniLM), fused by rank",
                }
                .to_string(),
            );
        }
        // The photo's vector whitened as the generation's stored vectors are.
        let probe = match probe {
            Probe::Image(vector) => Probe::Image(generation.query_vector(vector)),
            words => words,
        };
        let ask = |params: &SearchParams| match &probe {
            Probe::Image(vector) => self.expanded(vector, scopes, params),
            Probe::Words(words) => backend.search_words(generation, words, scopes, params),
        };
        if self.wants.is_empty() {
            return Ok((ask(params)?, lines));
        }
        let wanted = params.offset + params.k;
        // Variants apart: the colour asked picks the product's picture, then the others fold in.
        let pooled = ask(&SearchParams { k: self.pool.max(wanted + 1), offset: 0, variants_apart: true, ..*params })?;
        let pool = pooled.hits.len();
        let rank = |category: &str| scopes.iter().find(|s| s.category == category).map_or(usize::MAX, |s| s.rank);
        let mut ranked: Vec<Hit> = Vec::new();
        for hit in refine::rerank(pooled.hits, &self.wants, self.set_aside, self.weights, matches!(probe, Probe::Words(_)), rank) {
            if !ranked.iter_mut().any(|product| product.fold_variant(&hit.item)) {
                ranked.push(hit);
            }
        }
        let attributes: Vec<Vec<String>> = self.wants.attributes.iter().map(|a| a.forms.clone()).collect();
        // The counts are said only for a price range and attributes: no round trip otherwise.
        let counted = !self.wants.price.is_open() || !attributes.is_empty();
        let tally = if counted { backend.tally(generation, &self.searched, &self.wants.price, &attributes)? } else { crate::index::Tally::default() };
        lines.extend(refine::explain(&self.wants, &tally, &self.searched, self.set_aside, pool));
        let more = pooled.more || ranked.len() > wanted;
        Ok((Page { hits: ranked.into_iter().skip(params.offset).take(params.k).collect(), more, method: pooled.method }, lines))
    }
}

impl Find {
    /// The backend's page for `vector`, or with query expansion on, for `vector` blended with
    /// its first hits' stored vectors (each weighted by its cosine^alpha), normalised.
    fn expanded(&self, vector: &[f32], scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError> {
        let (backend, generation) = (self.backend.as_ref(), self.generation.as_ref());
        let (count, alpha) = self.expansion;
        if count == 0 {
            return backend.search(generation, vector, scopes, params);
        }
        let first = backend.search(generation, vector, scopes, &SearchParams { k: count, offset: 0, variants_apart: true, ..*params })?;
        let stored = backend.stored_vectors(generation, &first.hits)?;
        let mut blended = vector.to_vec();
        for (hit, neighbour) in first.hits.iter().zip(&stored) {
            let weight = hit.cosine.max(0.0).powf(alpha);
            blended.iter_mut().zip(neighbour).for_each(|(b, n)| *b += weight * n);
        }
        let length = blended.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        blended.iter_mut().for_each(|x| *x /= length);
        backend.search(generation, &blended, scopes, params)
    }
}

/// The backend's current generation, if its vectors mean what these models' do.
fn served(backend: &dyn Backend, keys: &[EmbeddingKey]) -> Result<Arc<Generation>, SearchError> {
    match backend.current().map_err(from_index)? {
        Some(generation) if keys.contains(&generation.key) => Ok(generation),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Metric;
    use crate::index::embedded::Embedded;
    use crate::index::{EmbeddingKey, Index, Item};

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        values.iter().map(|v| v / norm).collect()
    }

    /// A saved embedded index of red and blue bags, opened as the service opens it; with
    /// `variants`, the two totes are colours of one product.
    fn backend(dir: &std::path::Path, variants: bool) -> Arc<dyn Backend> {
        let key = EmbeddingKey { profile: "kit".into(), backbones: vec!["a".into()], source: "pooled".into(), pooling: "gem3".into(), weights_sha256: String::new(), dim: 3 };
        let rows = [("bag/blue-tote", [1.0, 0.1, 0.0], [0, 0, 230]), ("bag/red-tote", [1.0, 0.3, 0.0], [220, 20, 20]), ("bag/blue-duffel", [0.6, 1.0, 0.2], [0, 0, 230])]
            .into_iter()
            .map(|(id, vector, rgb)| {
                let mut item = Item::bare(id.into(), "bag");
                item.colours = vec![crate::colour::Swatch { lab: crate::colour::lab_from_srgb(rgb), share: 1.0 }];
                item.metadata.price = Some("10".into());
                item.metadata.group = (variants && id.ends_with("tote")).then(|| "tote".to_string());
                (item, unit(&vector))
            })
            .collect();
        Index::build(key, dir.join("catalogue"), 1, rows, Vec::new()).unwrap().save(&dir.join("index")).unwrap();
        Arc::new(Embedded::open(&dir.join("index")))
    }

    fn find(backend: &Arc<dyn Backend>, sentence: &str) -> Find {
        let wants = crate::words::read(sentence);
        Find {
            backend: backend.clone(),
            generation: backend.current().unwrap().unwrap(),
            set_aside: None,
            searched: vec!["bag".into()],
            wants,
            weights: refine::Weights { colour: 0.5, attribute: 0.1 },
            pool: 100,
            expansion: (0, 3.0),
        }
    }

    #[test]
    fn a_photo_with_no_refining_words_gets_the_index_page_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path(), false);
        let generation = backend.current().unwrap().unwrap();
        let scopes = [Scope { category: "bag".into(), rank: 0, bonus: 0.0 }];
        let params = SearchParams { k: 2, offset: 0, metric: Metric::Cosine, min_similarity: -1.0, near_duplicate_cosine: 0.999, price: Default::default(), variants_apart: false };
        let query = unit(&[1.0, 0.0, 0.0]);
        let direct = backend.search(&generation, &query, &scopes, &params).unwrap();
        for sentence in ["", "like this", "a bag like this please"] {
            let (page, lines) = find(&backend, sentence).run(Probe::Image(query.clone()), &scopes, &params).unwrap();
            assert_eq!(page, direct, "{sentence:?}: same hits, same scores, bit for bit");
            assert!(lines.is_empty() && page.hits.iter().all(|h| h.refined.is_none()));
        }
        let (page, lines) = find(&backend, "like this but in red").run(Probe::Image(query), &scopes, &params).unwrap();
        assert_eq!(page.hits[0].item.id, "bag/red-tote", "the red one first, though the blue tote looks closer");
        assert_eq!(direct.hits[0].item.id, "bag/blue-tote");
        assert!(lines[0].contains("colour 'red'"), "{lines:?}");
    }

    #[test]
    fn a_products_variants_show_once_as_the_one_the_colour_asked_picks() {
        let dir = tempfile::tempdir().unwrap();
        let backend = backend(dir.path(), true);
        let scopes = [Scope { category: "bag".into(), rank: 0, bonus: 0.0 }];
        let params = SearchParams { k: 5, offset: 0, metric: Metric::Cosine, min_similarity: -1.0, near_duplicate_cosine: 0.999, price: Default::default(), variants_apart: false };
        let query = unit(&[1.0, 0.0, 0.0]);
        let (page, _) = find(&backend, "like this").run(Probe::Image(query.clone()), &scopes, &params).unwrap();
        let ids: Vec<&str> = page.hits.iter().map(|h| h.item.id.as_str()).collect();
        assert_eq!(ids, ["bag/blue-tote", "bag/blue-duffel"], "the tote once, as its closer picture");
        assert_eq!(page.hits[0].collapsed, ["bag/red-tote"]);
        assert_eq!(page.hits[0].variants, ["blue", "red"], "named by their pictures' colours");
        let (page, _) = find(&backend, "like this but in red").run(Probe::Image(query), &scopes, &params).unwrap();
        let ids: Vec<&str> = page.hits.iter().map(|h| h.item.id.as_str()).collect();
        assert_eq!(ids, ["bag/red-tote", "bag/blue-duffel"], "the colour asked picks the tote's picture before the variants fold");
        assert_eq!(page.hits[0].collapsed, ["bag/blue-tote"]);
    }
}
