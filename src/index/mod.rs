//! The catalogue index behind one interface, [`Backend`], with two implementations:
//! [`embedded`] (the default: generations as folders on disk; each category's vectors as 4-bit
//! codes in this process's memory, scanned, the best candidates re-scored exactly from the f32
//! vectors, which stay on disk and are read by position) and [`postgres`] (PostgreSQL +
//! pgvector, shared by several bot processes, with read replicas and HNSW for large categories).
//!
//! Both share what makes them answer the same: the exact scoring and ranking ([`rank`]: both
//! metrics on every hit, category scopes with bonuses, thresholds, near-duplicate folding,
//! pages) and the incremental re-index plan ([`reindex`]: content hashes, duplicates stored
//! once, only new and changed files embedded; then the descriptor part whitened, learned again
//! only once enough of the catalogue changed, and optionally blended with each item's
//! neighbours, the unblended vectors kept; see [`whiten`]). A re-index runs forwards: the caller takes the backend's re-index guard
//! ([`Backend::lock_reindex`]), edits the catalogue if it means to, then re-indexes through the
//! guard; failures are [`ReindexError`] variants. No torch and no Discord: vectors come from an
//! embedding function the caller passes in.
//!
//! Besides its picture's vector, every item carries what words search ([`words`]): its colour
//! signature measured from the pixels, its price as a number, its text (title, description,
//! tags) in a full-text engine (tantivy embedded, PostgreSQL's own full-text search) and as a
//! MiniLM sentence vector. Price ranges filter inside each backend's query; words alone are
//! answered by fusing the full-text and sentence-vector rankings by reciprocal rank.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalogue::Metadata;
use crate::colour::Swatch;
use crate::config::{IndexBackend, IndexConfig, Metric};
use crate::words::PriceRange;

pub mod embedded;
pub mod postgres;
pub(crate) mod rank;
mod reindex;
pub mod whiten;
pub mod words;

pub use embedded::Index;
pub use reindex::{render_summary, Audience, Embedder, Progress, ReindexError, ReindexJob, ReindexSummary, TextEmbedder};
pub use words::{Refined, Tally, WordsQuery};

/// Images per call of the embedding function (one progress event each) when the embedder
/// asks for no other size; on a GPU it asks for its forward batch (64).
pub const EMBED_CHUNK: usize = 16;

/// What the vectors mean. An index built by other models or heads cannot answer queries
/// embedded by these, so a mismatch re-embeds everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingKey {
    pub profile: String,
    pub backbones: Vec<String>,
    /// "pooled", "head" or "combined" (see `config::EmbeddingSource`).
    pub source: String,
    /// How the backbones' feature maps were pooled into descriptors ("gem3"); empty where the
    /// vectors use none (head vectors), and in indexes written before GeM (average pooling).
    #[serde(default)]
    pub pooling: String,
    /// sha256 over the weights the vectors depend on besides the backbones' published ones
    /// (heads, fine-tuned backbone layers).
    pub weights_sha256: String,
    pub dim: usize,
}

/// One stored vector and the catalogue files it stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// `category/file name`.
    pub id: String,
    pub path: PathBuf,
    pub category: String,
    /// sha256 of the file's bytes.
    pub hash: String,
    pub size: u64,
    pub modified_ns: i64,
    /// Other files with the same bytes: stored once, under this item.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<String>,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// The picture's dominant colours, measured from its pixels at index time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub colours: Vec<Swatch>,
}

impl Item {
    /// An item with only an id and a category (no file behind it): benchmarks and evaluations
    /// index vectors they made.
    pub fn bare(id: String, category: &str) -> Item {
        Item { id, path: PathBuf::new(), category: category.into(), hash: String::new(), size: 0, modified_ns: 0, duplicates: Vec::new(), metadata: Metadata::default(), colours: Vec::new() }
    }
}

/// A catalogue file that could not be indexed, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub id: String,
    pub reason: String,
}

/// One category of a generation: its stored vectors and the files they stand for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryCount {
    pub name: String,
    pub vectors: usize,
    /// Duplicates included.
    pub files: usize,
}

/// The generation a backend answers from: what its vectors mean and what it holds.
#[derive(Debug, Clone)]
pub struct Generation {
    pub number: u64,
    pub key: EmbeddingKey,
    /// Seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// In index order.
    pub categories: Vec<CategoryCount>,
    /// What the stored vectors' descriptor parts are whitened by; queries are whitened alike.
    pub whitening: Option<Arc<whiten::Whitening>>,
    /// What only the backend that made the generation knows of it.
    snapshot: Snapshot,
}

/// The backend's own part of a generation.
#[derive(Debug, Clone)]
enum Snapshot {
    /// The embedded index: its codes in memory and its vectors on disk.
    Embedded(Arc<Index>),
    /// A database's generation: the categories it searches through an HNSW index.
    Database { approximate: Vec<String> },
}

impl Generation {
    /// A query's vector as this generation's stored vectors are made: whitened like them.
    pub fn query_vector(&self, vector: Vec<f32>) -> Vec<f32> {
        match &self.whitening {
            Some(whitening) if vector.len() == self.key.dim => whitening.apply(&vector),
            _ => vector,
        }
    }

    /// Stored vectors (one per distinct content).
    pub fn vectors(&self) -> usize {
        self.categories.iter().map(|c| c.vectors).sum()
    }

    /// Catalogue files, duplicates included.
    pub fn files(&self) -> usize {
        self.categories.iter().map(|c| c.files).sum()
    }

    pub fn category_names(&self) -> Vec<String> {
        self.categories.iter().map(|c| c.name.clone()).collect()
    }

    /// Categories searched through an HNSW index rather than exactly (a database's large ones).
    pub fn approximate(&self) -> &[String] {
        match &self.snapshot {
            Snapshot::Embedded(_) => &[],
            Snapshot::Database { approximate } => approximate,
        }
    }
}

/// One category to search, with its place in the order and a bonus added to its hits' scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub category: String,
    /// Scopes of a lower rank come first, whatever the scores.
    pub rank: usize,
    /// Added to the cosine (subtracted from the distance) of this category's hits.
    pub bonus: f32,
}

/// How to rank and cut hits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchParams {
    pub k: usize,
    /// Hits to skip (pagination).
    pub offset: usize,
    pub metric: Metric,
    pub min_similarity: f32,
    pub near_duplicate_cosine: f32,
    /// Only items whose price is in this range are candidates (checked inside the query, so a
    /// page is full whenever enough items qualify).
    pub price: PriceRange,
    /// Variants of one product (`metadata.group`) stay hits of their own instead of folding into
    /// the best one: a re-rank by the sentence's colours picks among them, then folds them.
    pub variants_apart: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    #[serde(flatten)]
    pub item: Item,
    pub cosine: f32,
    pub euclidean: f32,
    /// What the hit was ranked by among its category's peers: the cosine plus the category's
    /// bonus (the vote's prior, when categories compete; else the cosine itself).
    pub score: f32,
    /// Near-duplicates (cosine at or above `near_duplicate_cosine` to this hit) and other
    /// variants of its product (`metadata.group`) folded into it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub collapsed: Vec<String>,
    /// The colours of the product's variants among the candidates, this hit's first, as the shop
    /// names them (else the table's name of the picture's main colour); empty for an item that
    /// is no variant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<String>,
    /// What the sentence's colours and attributes added to `score`, when they re-ranked hits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refined: Option<words::Refined>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub hits: Vec<Hit>,
    /// Whether a next page has hits.
    pub more: bool,
    /// How the candidates were found.
    pub method: SearchMethod,
}

/// How a backend found a page's candidates; every score shown is exact either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SearchMethod {
    /// The embedded index: 4-bit codes scanned, the best candidates re-scored exactly.
    #[serde(rename = "int4 scan + exact re-rank")]
    CodesReranked,
    /// A database scoring every vector of the categories searched.
    #[serde(rename = "exact")]
    Exact,
    /// A database walking the HNSW index of a category large enough to have one.
    #[serde(rename = "hnsw")]
    Hnsw,
    /// The items' own words: full-text and sentence-vector rankings fused by reciprocal rank.
    #[serde(rename = "full-text + sentence vectors")]
    Words,
}

impl SearchMethod {
    /// As logs, the CLI and JSON name it.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMethod::CodesReranked => "int4 scan + exact re-rank",
            SearchMethod::Exact => "exact",
            SearchMethod::Hnsw => "hnsw",
            SearchMethod::Words => "full-text + sentence vectors (+ pictures with clip)",
        }
    }
}

impl std::fmt::Display for SearchMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Hit {
    /// A hit of `item` with these scores, nothing folded into it yet.
    pub fn new(item: Item, cosine: f32, euclidean: f32, score: f32) -> Hit {
        Hit { item, cosine, euclidean, score, collapsed: Vec::new(), variants: Vec::new(), refined: None }
    }

    /// Folds `other` into this hit when both are variants of one product (the same
    /// `metadata.group`); says whether it did.
    pub fn fold_variant(&mut self, other: &Item) -> bool {
        let same = other.metadata.group.is_some() && other.metadata.group == self.item.metadata.group;
        if same {
            if self.variants.is_empty() {
                self.variants.push(variant_name(&self.item));
            }
            let name = variant_name(other);
            if !self.variants.contains(&name) {
                self.variants.push(name);
            }
            self.collapsed.push(other.id.clone());
        }
        same
    }
}

/// How a variant is named among its product's: the shop's colour, else the table's name of
/// its picture's main colour.
fn variant_name(item: &Item) -> String {
    let measured = || item.colours.first().map_or_else(|| item.id.clone(), |swatch| crate::colour::nearest_named(swatch.lab).name.to_string());
    item.metadata.colour.clone().unwrap_or_else(measured)
}

/// Why the index could not answer.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database cannot be reached now; it may come back by itself.
    #[error("the catalogue database is unreachable: {0}")]
    Unavailable(String),
    #[error("the query vector has {got} dimensions, the index {expected}: the models and the index disagree; re-index with `lookalike index`")]
    DimensionMismatch { expected: usize, got: usize },
    /// The index is there but cannot be used (damaged, another schema version); says what to do.
    #[error("{0}")]
    Unusable(String),
}

/// The index, wherever it lives. Every method blocks (a database round trip, or a scan of
/// memory): async callers run them on a blocking thread.
pub trait Backend: Send + Sync {
    /// Where the index lives, for operators' messages (never a password).
    fn location(&self) -> String;
    /// The generation searches are answered from now; `None` when nothing was indexed yet.
    fn current(&self) -> Result<Option<Arc<Generation>>, IndexError>;
    /// The best hits for `query` in `generation`'s categories named by `scopes`: ranked by
    /// (scope rank, then the metric plus the scope's bonus), hits under `min_similarity`
    /// dropped, near-duplicates of a better hit folded into it. Categories the index does not
    /// have contribute nothing.
    fn search(&self, generation: &Generation, query: &[f32], scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError>;
    /// The best hits for words alone in the scopes' categories: the full-text ranking of
    /// `query.terms` and the sentence-vector ranking of `query.vector` against the items' text,
    /// each cut to [`words::depth`] candidates whose price `params.price` admits, fused by
    /// reciprocal rank ([`words::fuse`]). A hit's cosine and distance are its text's.
    fn search_words(&self, generation: &Generation, query: &WordsQuery, scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError>;
    /// How many items `categories` hold, how many of them `price` admits, and how many mention
    /// each of `attributes` (any of its forms as a word of the item's text).
    fn tally(&self, generation: &Generation, categories: &[String], price: &PriceRange, attributes: &[Vec<String>]) -> Result<Tally, IndexError>;
    /// The stored vectors of `hits` (whitened and blended, as searches compare them), one per
    /// hit, in their order.
    fn stored_vectors(&self, generation: &Generation, hits: &[Hit]) -> Result<Vec<Vec<f32>>, IndexError>;
    /// Takes the re-index lock; refused while another re-index (or catalogue edit) holds it, in
    /// this process or any other. The caller edits the catalogue, if it means to, while it holds
    /// the guard, then re-indexes through it; dropping the guard lets the next one in.
    fn lock_reindex(&self) -> Result<Box<dyn ReindexGuard + '_>, ReindexError>;
    /// Takes the lock and re-indexes under it: [`ReindexGuard::reindex`] with nothing edited first.
    fn reindex(&self, job: &ReindexJob, embed: &mut Embedder, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        self.lock_reindex()?.reindex(job, embed, progress)
    }
}

/// A backend's re-index lock, held (see [`Backend::lock_reindex`]).
pub trait ReindexGuard {
    /// Re-indexes the catalogue incrementally against the newest generation, then makes the new
    /// generation visible in one step; readers go on with the previous one meanwhile.
    fn reindex(&mut self, job: &ReindexJob, embed: &mut Embedder, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError>;
}

/// The backend `index.backend` names. A database that cannot be reached at start is an error
/// naming the key; an embedded index that is missing or damaged is not (searches say what to do).
pub fn open(config: &IndexConfig) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match config.backend {
        IndexBackend::Embedded => Arc::new(embedded::Embedded::open(&config.dir)),
        IndexBackend::Postgres => Arc::new(postgres::Postgres::connect(&postgres::Settings::from_config(config)?)?),
    })
}
