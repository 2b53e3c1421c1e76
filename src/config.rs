//! Typed configuration: `config/lookalike.toml`, then `LOOKALIKE__SECTION__KEY` environment
//! overrides, read once at start-up and checked before anything else runs. One section per
//! concern: `models`, `catalogue`, `index`, `search`, `text`, `limits`, `discord`, `feedback`
//! and `serve` (running the bot in production: the metrics address, the shutdown grace).
//!
//! The Discord token is deliberately not part of [`Config`]: [`discord_token`] reads it from
//! `DISCORD_TOKEN`, or from the file `DISCORD_TOKEN_FILE` names (a secrets mount), so it can
//! never be committed in a config file or printed with it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The committed default, compiled in so the binary works from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/lookalike.toml");

/// Prefix of environment overrides: `LOOKALIKE__INDEX__METRIC=euclidean`.
pub const ENV_PREFIX: &str = "LOOKALIKE__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("environment variable {var}: {message}")]
    BadOverride { var: String, message: String },
    #[error("config key `{key}` = {value}: {message}")]
    OutOfRange { key: &'static str, value: String, message: &'static str },
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub models: ModelsConfig,
    pub catalogue: CatalogueConfig,
    pub index: IndexConfig,
    pub search: SearchConfig,
    pub text: TextConfig,
    pub limits: LimitsConfig,
    pub discord: DiscordConfig,
    pub feedback: FeedbackConfig,
    pub serve: ServeConfig,
}

/// Running `lookalike serve` in production ([`crate::ops`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// `host:port` of `/metrics`, `/healthz` and `/readyz`; empty turns them off.
    pub metrics_addr: String,
    /// On SIGTERM or Ctrl-C, seconds to let requests in flight finish before the gateway closes.
    pub shutdown_grace_s: u64,
}

/// `discord.shards`: Discord's recommended count, or this process's part of a fixed count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shards {
    Auto,
    /// Shards `first..=last` of `total`.
    Range {
        first: u32,
        last: u32,
        total: u32,
    },
}

impl std::str::FromStr for Shards {
    type Err = String;

    fn from_str(text: &str) -> Result<Shards, String> {
        if text == "auto" {
            return Ok(Shards::Auto);
        }
        let wrong = || format!("expected \"auto\" or FIRST-LAST/TOTAL such as \"0-1/4\", got {text:?}");
        let (range, total) = text.split_once('/').ok_or_else(wrong)?;
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let number = |n: &str| n.trim().parse::<u32>().map_err(|_| wrong());
        let (first, last, total) = (number(first)?, number(last)?, number(total)?);
        if first > last || last >= total {
            return Err(format!("{text:?}: shards are numbered 0 to TOTAL-1, and FIRST must not be after LAST"));
        }
        Ok(Shards::Range { first, last, total })
    }
}

impl std::fmt::Display for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shards::Auto => f.write_str("auto"),
            Shards::Range { first, last, total } => write!(f, "{first}-{last}/{total}"),
        }
    }
}

impl<'de> Deserialize<'de> for Shards {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Shards, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Shards {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Corrections under "Wrong category?" ([`crate::feedback`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Folder of `corrections.jsonl` and the corrected photos.
    pub dir: PathBuf,
    /// Corrections kept at most; the oldest go first.
    pub max_corrections: usize,
    /// Distinct shoppers who must pick the same category for a photo before training uses it
    /// (a moderator's pick counts at once).
    pub min_agreeing_users: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// Which set of weights to run: the offline kit or the chapter's ImageNet backbones.
    pub profile: Profile,
    /// Folder holding `manifest.toml` and what set-up and `models fetch` install.
    pub dir: PathBuf,
    /// Where the model worker runs the networks.
    pub device: DeviceChoice,
    /// Number format of the backbones' weights and activations at search and index time.
    pub precision: Precision,
    /// Trained heads (`lookalike train --out`) are read from here.
    pub heads_dir: PathBuf,
    /// On the CPU, the clip embedder's image tower runs its linear layers in 8 bits (FBGEMM):
    /// faster, at a cosine with the f32 vectors above 0.999. Changing it re-embeds the catalogue.
    pub clip_int8: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// EfficientNet-Lite0, SqueezeNet 1.1, InceptionV3 to mixed5, MiniLM: all from package registries.
    Kit,
    /// VGG16, ResNet50, InceptionV3 (torchvision ImageNet weights) and an MNLI model.
    Chapter,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Kit => "kit",
            Profile::Chapter => "chapter",
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else CPU.
    Auto,
    Cpu,
    Cuda,
}

/// The backbones' number format. Heads, the vote and every stored vector stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    /// Half precision on a CUDA GPU: about half the memory traffic, for a small accuracy cost
    /// (measured by `lookalike eval`; figures in the README).
    F16,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    /// One sub-folder per category, images inside.
    pub dir: PathBuf,
    /// Optional CSV or JSON-lines file with title, price and link per image; empty for none.
    pub metadata: PathBuf,
    /// Every catalogue edit, correction and swap of heads, with who and when (JSON lines); empty for none.
    pub audit_log: PathBuf,
    /// `catalogue import`: images downloaded at once.
    pub import_concurrency: usize,
    /// `catalogue import`: further tries of a download that failed for a reason that may pass
    /// (a timeout, a reset connection, HTTP 429 or 5xx), with doubling waits from 0.5 s.
    pub import_retries: u32,
    /// `catalogue import`: seconds one download (feed or image) may wait for data; the whole
    /// download may take ten times as long.
    pub import_timeout_s: u64,
    /// `catalogue import`: largest product feed read, in MiB.
    pub max_feed_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Folder of index generations.
    pub dir: PathBuf,
    /// Ranking of hits; both scores are reported on every hit either way.
    pub metric: Metric,
    /// Hits below this cosine similarity are dropped.
    pub min_similarity: f32,
    /// Hits at or above this cosine similarity to a better hit are collapsed into it.
    pub near_duplicate_cosine: f32,
    /// Which vectors describe an image.
    pub embedding: EmbeddingSource,
    /// Where the index lives: in this process ("embedded") or in PostgreSQL ("postgres").
    pub backend: IndexBackend,
    /// `postgres://USER@HOST:PORT/DATABASE` of the primary; a password only from the
    /// environment (this URL in LOOKALIKE__INDEX__POSTGRES_URL, or PGPASSWORD).
    pub postgres_url: String,
    /// A read replica searches go to; empty searches the primary.
    pub postgres_read_url: String,
    /// Categories with at least this many vectors are searched through an HNSW index.
    pub hnsw_min_rows: usize,
    /// HNSW candidate list per search (pgvector's `hnsw.ef_search`): larger is slower and surer.
    pub hnsw_ef_search: usize,
    /// 0: each backbone's descriptor is GeM over its whole last feature map; N: plus GeM over an
    /// N x N grid of regions, each region's vector normalised and all summed (R-MAC style), so
    /// the vector keeps its length.
    pub regions: usize,
    /// Input scales each image runs at (1.0 among them: the heads read that pass); the
    /// descriptors of every scale are normalised and summed.
    pub scales: Vec<f32>,
    /// PCA-whitening of the descriptor part, learned from the catalogue at re-index and stored
    /// with the generation; queries are whitened by the generation they search.
    pub whitening: bool,
    /// Principal directions the whitening rescales (the rest keep their common scale).
    pub whitening_components: usize,
    /// Eigenvalue shrinkage, as a share of the largest eigenvalue: larger whitens less.
    pub whitening_shrinkage: f32,
    /// A re-index keeps the newest generation's whitening until this share of the catalogue
    /// has been added, changed or removed since it was learned.
    pub whitening_relearn_share: f32,
    /// Database-side augmentation: each item's stored vector blended with this many of its
    /// nearest neighbours in its category at re-index (0: off).
    pub database_augmentation: usize,
}

/// Where the index lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexBackend {
    /// Generations as folders under `index.dir`, searched in this process's memory.
    Embedded,
    /// PostgreSQL with pgvector, shared by every process that names the same database.
    Postgres,
}

/// The vector an image is indexed and searched by. Either way each backbone's vector is
/// L2-normalised and the three are concatenated, scaled so one dot product is their mean cosine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingSource {
    /// The backbones' pooled features (ImageNet semantics; no trained heads needed to index).
    Pooled,
    /// The trained heads' penultimate layer (1,024 per backbone; tuned to the categories).
    Head,
    /// Both, with equal weight: item identity from the first, the category's sense from the second.
    Combined,
    /// The clip embedder's image vectors (OpenCLIP ViT-B/32, `lookalike models fetch clip`):
    /// the backbones still vote; sentences are compared with pictures directly.
    Clip,
}

impl EmbeddingSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EmbeddingSource::Pooled => "pooled",
            EmbeddingSource::Head => "head",
            EmbeddingSource::Combined => "combined",
            EmbeddingSource::Clip => "clip",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cosine,
    Euclidean,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Hits per page when the caller does not say.
    pub default_k: usize,
    /// Upper bound on k a caller may ask for.
    pub max_k: usize,
    /// Queries in flight at once; more get a "busy" answer.
    pub max_concurrent_queries: usize,
    /// Queries classified together in one batch on the model thread, at most.
    pub max_batch: usize,
    /// A query that takes longer is abandoned with a clear error.
    pub query_timeout_ms: u64,
    /// When the image vote and the text disagree, or the vote is unsure, search this many categories.
    pub max_categories: usize,
    /// How the image vote picks categories when the text names none.
    pub gate: Gate,
    /// The mass gate searches the most probable categories until they hold this share of the vote
    /// (1.0: every category).
    pub category_mass: f32,
    /// Under the mass gate a hit scores cosine + this x ln p(its category).
    pub category_prior_weight: f32,
    /// When the sentence names a colour, a hit's score gains this x (its closeness to that
    /// colour minus its closeness to the photo's own colour).
    pub colour_weight: f32,
    /// When the sentence names a material or pattern, a hit whose text mentions it gains this
    /// (loses it for "not leather").
    pub attribute_weight: f32,
    /// Candidates the sentence's colours, attributes and price order re-rank, at least.
    pub words_pool: usize,
    /// Query-side test-time augmentation: the photo's descriptors averaged with its mirror image's.
    pub flip_queries: bool,
    /// Alpha query expansion: the query blended with this many of its first hits, weighted by
    /// similarity^`query_expansion_alpha`, then searched again (0: off).
    pub query_expansion: usize,
    pub query_expansion_alpha: f32,
}

/// How the image vote picks the categories to search when the text names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// The most probable categories until they hold `category_mass`, hits ranked together with the vote as a prior.
    Mass,
    /// The chapter's: the winner alone (or with the runner-up when unsure), category by category.
    Hard,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Categories with their synonyms and descriptions (`[[category]]` tables).
    pub vocabulary: PathBuf,
    /// Methods tried in order; the first that names a category with enough confidence decides.
    pub methods: Vec<TextMethod>,
    /// Minimum calibrated score for a method to name a category.
    pub min_score: f32,
    /// Softmax temperature that turns MiniLM cosines into scores: a number, or "auto" to
    /// calibrate it on the categories file at start.
    pub embedding_temperature: Temperature,
    /// Cosine the best category must beat for the embedding method to name it at all.
    pub embedding_none_cosine: f32,
    /// NLI hypothesis; `{}` is replaced by the category name.
    pub nli_template: String,
    /// Local folder of an MNLI model; empty uses rust-bert's remote BART-large-MNLI.
    pub nli_model_dir: PathBuf,
    /// WordNet 3.0's dict folder: widens each category's words and tells typos from real words; empty: off.
    pub wordnet_dir: PathBuf,
}

/// `text.embedding_temperature`: `"auto"` or a number (also as a string, as environment
/// variables give it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Temperature {
    Auto,
    Fixed(f32),
}

impl<'de> Deserialize<'de> for Temperature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Temperature, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Number(f64),
            Text(String),
        }
        match Given::deserialize(deserializer)? {
            Given::Number(value) => Ok(Temperature::Fixed(value as f32)),
            Given::Text(text) if text == "auto" => Ok(Temperature::Auto),
            Given::Text(text) => text.parse().map(Temperature::Fixed).map_err(|_| serde::de::Error::custom(format!("expected \"auto\" or a number, got {text:?}"))),
        }
    }
}

impl Serialize for Temperature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Temperature::Auto => serializer.serialize_str("auto"),
            Temperature::Fixed(value) => serializer.serialize_f32(*value),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TextMethod {
    Lexical,
    Embedding,
    Nli,
    /// The clip embedder's text tower against prompts such as "a photo of a {category}".
    Clip,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest image file accepted, from Discord or disk, in MiB (2^20 bytes).
    pub max_image_mb: u64,
    /// Largest decoded image, in megapixels; protects against decompression bombs.
    pub max_image_megapixels: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    /// Register slash commands in this guild only (instant); 0 registers them globally.
    pub guild_id: u64,
    /// Members with this role may `/reindex` besides those with Manage Server; 0 for none.
    pub moderator_role_id: u64,
    /// `http://host:port` origin every REST call goes through; empty for discord.com.
    pub api_proxy: String,
    /// Seconds a user waits between searches.
    pub user_cooldown_s: u64,
    /// Attachment downloads that take longer are abandoned.
    pub download_timeout_ms: u64,
    /// Gateway shards this process runs: "auto" (all, as many as Discord recommends) or
    /// "FIRST-LAST/TOTAL", so that several processes split one bot's servers.
    pub shards: Shards,
    /// `/catalogue-import` may fetch from loopback and private addresses (a shop server on the
    /// bot's own network); off, a moderator cannot make the bot reach inside its network.
    pub import_private_hosts: bool,
}

impl Config {
    /// Reads the config the CLI would, in layers: the compiled-in defaults, then `explicit`
    /// (from `--config`) or else `config/lookalike.toml` in the working directory when present,
    /// each naming only the keys it changes; then the process environment's overrides.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let local = Path::new("config/lookalike.toml");
        let (origin, text) = match explicit {
            Some(path) => (path.display().to_string(), read(path)?),
            None if local.is_file() => (local.display().to_string(), read(local)?),
            None => ("built-in default config".to_string(), DEFAULT_TOML.to_string()),
        };
        Config::parse(&origin, &text, std::env::vars())
    }

    /// Parses `text` over the defaults, applies `LOOKALIKE__SECTION__KEY` overrides found in
    /// `env`, and validates. Unknown keys fail, named, wherever they come from.
    pub fn parse(origin: &str, text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(DEFAULT_TOML).expect("the built-in default config parses (a test checks)");
        let file: toml::Table = toml::from_str(text).map_err(|err| ConfigError::Invalid { origin: origin.to_string(), message: explain(err.message()) })?;
        if let Some(url) = file.get("index").and_then(|index| index.get("postgres_url")).and_then(toml::Value::as_str) {
            if has_password(url) {
                return Err(ConfigError::Invalid {
                    origin: origin.to_string(),
                    message: "index.postgres_url holds a password: passwords are read only from the environment (PGPASSWORD, or the whole URL in LOOKALIKE__INDEX__POSTGRES_URL)".into(),
                });
            }
        }
        layer(&mut table, file);
        let mut overrides: Vec<(String, String)> = env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
        overrides.sort();
        for (var, value) in &overrides {
            apply_override(&mut table, var, value)?;
        }
        let config: Config = Config::deserialize(toml::Value::Table(table)).map_err(|err| {
            let origin = if overrides.is_empty() { origin.to_string() } else { format!("{origin} (with overrides from {})", names(&overrides)) };
            ConfigError::Invalid { origin, message: explain(err.message()) }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, key: &'static str, value: impl std::fmt::Display, message: &'static str) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange { key, value: value.to_string(), message })
            }
        }
        let index = &self.index;
        check((-1.0..=1.0).contains(&index.min_similarity), "index.min_similarity", index.min_similarity, "must be a cosine similarity between -1.0 and 1.0")?;
        check(index.hnsw_min_rows >= 1, "index.hnsw_min_rows", index.hnsw_min_rows, "must be at least 1")?;
        check((1..=1000).contains(&index.hnsw_ef_search), "index.hnsw_ef_search", index.hnsw_ef_search, "must be between 1 and 1000 (pgvector's range)")?;
        check(index.regions <= 4, "index.regions", index.regions, "must be between 0 (whole map only) and 4")?;
        let scales = format!("{:?}", index.scales);
        check(
            index.scales.contains(&1.0) && index.scales.iter().all(|s| (0.25..=2.0).contains(s)) && index.scales.len() <= 3,
            "index.scales",
            scales,
            "must list 1.0 and at most two more scales between 0.25 and 2.0",
        )?;
        check((1..=1024).contains(&index.whitening_components), "index.whitening_components", index.whitening_components, "must be between 1 and 1024")?;
        check(index.whitening_shrinkage > 0.0 && index.whitening_shrinkage <= 10.0, "index.whitening_shrinkage", index.whitening_shrinkage, "must be above 0.0 and at most 10.0")?;
        check((0.0..=1.0).contains(&index.whitening_relearn_share), "index.whitening_relearn_share", index.whitening_relearn_share, "must be between 0.0 (relearn at every re-index) and 1.0")?;
        check(index.database_augmentation <= 10, "index.database_augmentation", index.database_augmentation, "must be between 0 (off) and 10")?;
        check((0.0..=1.0).contains(&index.near_duplicate_cosine), "index.near_duplicate_cosine", index.near_duplicate_cosine, "must be between 0.0 and 1.0 (the chapter uses 0.999)")?;
        let search = &self.search;
        check(search.default_k >= 1, "search.default_k", search.default_k, "must be at least 1")?;
        check(search.max_k >= search.default_k, "search.max_k", search.max_k, "must be at least search.default_k")?;
        check(search.max_concurrent_queries >= 1, "search.max_concurrent_queries", search.max_concurrent_queries, "must be at least 1")?;
        check((1..=64).contains(&search.max_batch), "search.max_batch", search.max_batch, "must be 1 to 64 (64 is the largest batch the GPU path prepares)")?;
        check(search.query_timeout_ms >= 100, "search.query_timeout_ms", search.query_timeout_ms, "must be at least 100")?;
        check((1..=3).contains(&search.max_categories), "search.max_categories", search.max_categories, "must be 1, 2 or 3")?;
        check(search.category_mass > 0.0 && search.category_mass <= 1.0, "search.category_mass", search.category_mass, "must be above 0.0 and at most 1.0")?;
        check((0.0..=1.0).contains(&search.category_prior_weight), "search.category_prior_weight", search.category_prior_weight, "must be between 0.0 and 1.0")?;
        check(search.query_expansion <= 10, "search.query_expansion", search.query_expansion, "must be between 0 (off) and 10")?;
        check((0.0..=10.0).contains(&search.query_expansion_alpha), "search.query_expansion_alpha", search.query_expansion_alpha, "must be between 0.0 and 10.0")?;
        check((0.0..=2.0).contains(&search.colour_weight), "search.colour_weight", search.colour_weight, "must be between 0.0 and 2.0")?;
        check((0.0..=1.0).contains(&search.attribute_weight), "search.attribute_weight", search.attribute_weight, "must be between 0.0 and 1.0")?;
        check((10..=10_000).contains(&search.words_pool), "search.words_pool", search.words_pool, "must be between 10 and 10000")?;
        let text = &self.text;
        check(!text.methods.is_empty(), "text.methods", format!("{:?}", text.methods), "must name at least one of \"lexical\", \"embedding\", \"nli\"")?;
        check((0.0..=1.0).contains(&text.min_score), "text.min_score", text.min_score, "must be between 0.0 and 1.0")?;
        if let Temperature::Fixed(value) = text.embedding_temperature {
            check(value > 0.0 && value <= 1.0, "text.embedding_temperature", value, "must be \"auto\", or above 0.0 and at most 1.0")?;
        }
        check((-1.0..=1.0).contains(&text.embedding_none_cosine), "text.embedding_none_cosine", text.embedding_none_cosine, "must be a cosine between -1.0 and 1.0")?;
        check(text.nli_template.contains("{}"), "text.nli_template", &text.nli_template, "must contain `{}` where the category name goes")?;
        let catalogue = &self.catalogue;
        check((1..=256).contains(&catalogue.import_concurrency), "catalogue.import_concurrency", catalogue.import_concurrency, "must be 1 to 256")?;
        check(catalogue.import_retries <= 10, "catalogue.import_retries", catalogue.import_retries, "must be at most 10")?;
        check(catalogue.import_timeout_s >= 1, "catalogue.import_timeout_s", catalogue.import_timeout_s, "must be at least 1")?;
        check(catalogue.max_feed_mb >= 1, "catalogue.max_feed_mb", catalogue.max_feed_mb, "must be at least 1")?;
        check(self.limits.max_image_mb >= 1, "limits.max_image_mb", self.limits.max_image_mb, "must be at least 1")?;
        check(self.limits.max_image_megapixels >= 1, "limits.max_image_megapixels", self.limits.max_image_megapixels, "must be at least 1")?;
        check(
            self.serve.metrics_addr.is_empty() || self.serve.metrics_addr.parse::<std::net::SocketAddr>().is_ok(),
            "serve.metrics_addr",
            &self.serve.metrics_addr,
            "must be host:port with an IP address, such as 127.0.0.1:9464, or \"\" for off",
        )?;
        check(self.serve.shutdown_grace_s <= 3600, "serve.shutdown_grace_s", self.serve.shutdown_grace_s, "must be at most 3600")?;
        check(self.feedback.max_corrections >= 1, "feedback.max_corrections", self.feedback.max_corrections, "must be at least 1")?;
        check(self.feedback.min_agreeing_users >= 1, "feedback.min_agreeing_users", self.feedback.min_agreeing_users, "must be at least 1")?;
        let proxy = &self.discord.api_proxy;
        check(proxy.is_empty() || proxy.starts_with("http://") || proxy.starts_with("https://"), "discord.api_proxy", proxy, "must be empty or an origin such as http://127.0.0.1:8080")?;
        Ok(())
    }
}

/// Whether a PostgreSQL URL carries a password (`postgres://user:secret@host` or `password=`).
fn has_password(url: &str) -> bool {
    let authority = url.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
    authority.split_once('@').is_some_and(|(credentials, _)| credentials.contains(':')) || url.contains("password=")
}

/// `over`'s keys replace `base`'s, section by section.
fn layer(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(section)), toml::Value::Table(changes)) => layer(section, changes),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })
}

fn names(overrides: &[(String, String)]) -> String {
    overrides.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Adds hints to serde's messages where the fix is not obvious from them.
fn explain(message: &str) -> String {
    let message = message.trim().to_string();
    if message.contains("unknown field `token`") || message.contains("unknown field `discord_token`") {
        return format!("{message}\nthe Discord token is read only from the DISCORD_TOKEN environment variable, never from a file");
    }
    message
}

/// `LOOKALIKE__INDEX__METRIC=euclidean` sets `index.metric`. Values are read as TOML when they
/// parse as such (numbers, booleans, arrays), else taken as a plain string.
fn apply_override(table: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
    let bad = |message: String| ConfigError::BadOverride { var: var.to_string(), message };
    if path.len() != 2 || path.iter().any(String::is_empty) {
        return Err(bad("expected the form LOOKALIKE__SECTION__KEY, for example LOOKALIKE__INDEX__METRIC".into()));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut parsed| parsed.remove("v")).unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let section = table
        .get_mut(&path[0])
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| bad(format!("there is no config section `{}`; sections are models, catalogue, index, search, text, limits, discord, feedback", path[0])))?;
    section.insert(path[1].clone(), value);
    Ok(())
}

/// The bot token: `DISCORD_TOKEN`, or the file `DISCORD_TOKEN_FILE` names (a secrets mount),
/// never the config file. The errors say what to do, and never echo a value.
pub fn discord_token() -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("DISCORD_TOKEN") {
        if !token.trim().is_empty() {
            return Ok(token.trim().to_string());
        }
    }
    if let Some(path) = std::env::var_os("DISCORD_TOKEN_FILE").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        // A token is about 70 bytes: anything past 4 KiB is not one, and is never read whole.
        use std::io::Read;
        let unreadable = |e: std::io::Error| anyhow::anyhow!("cannot read DISCORD_TOKEN_FILE {}: {e}", path.display());
        let mut token = String::new();
        std::fs::File::open(&path).map_err(unreadable)?.take(4097).read_to_string(&mut token).map_err(unreadable)?;
        anyhow::ensure!(token.len() <= 4096, "DISCORD_TOKEN_FILE {} is over 4 KiB, so it does not hold a bot token: point it at the file with only the token", path.display());
        anyhow::ensure!(!token.trim().is_empty(), "DISCORD_TOKEN_FILE {} is empty: write the bot token into it", path.display());
        return Ok(token.trim().to_string());
    }
    anyhow::bail!(
        "DISCORD_TOKEN is not set: export the bot token from the Discord developer portal \
         (Applications > your app > Bot > Reset Token), or set DISCORD_TOKEN_FILE to a file holding it; \
         it is never read from the config file"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse("test", text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn an_operators_file_names_only_what_it_changes() {
        let config = parse("[index]\nmetric = \"euclidean\"\n", &[("LOOKALIKE__SEARCH__DEFAULT_K", "7")]).unwrap();
        assert_eq!(config.index.metric, Metric::Euclidean, "the file's key");
        assert_eq!(config.search.default_k, 7, "the environment over the file");
        assert_eq!(config.index.near_duplicate_cosine, 0.999, "every other key from the defaults");
        let message = parse("[index]\nmetrc = \"euclidean\"\n", &[]).unwrap_err().to_string();
        assert!(message.contains("metrc"), "an unknown key still fails, named: {message}");
    }

    #[test]
    fn a_database_password_comes_only_from_the_environment() {
        for url in ["postgres://shop:hunter2@db:5432/shop", "host=db user=shop password=hunter2"] {
            let message = parse(&format!("[index]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n"), &[]).unwrap_err().to_string();
            assert!(message.contains("index.postgres_url holds a password") && !message.contains("hunter2"), "{message}");
        }
        let file = parse("[index]\nbackend = \"postgres\"\npostgres_url = \"postgres://shop@db:5432/shop\"\n", &[]).unwrap();
        assert_eq!((file.index.backend, file.index.postgres_url.as_str()), (IndexBackend::Postgres, "postgres://shop@db:5432/shop"));
        let env = parse("", &[("LOOKALIKE__INDEX__POSTGRES_URL", "postgres://shop:hunter2@db:5432/shop")]).unwrap();
        assert_eq!(env.index.postgres_url, "postgres://shop:hunter2@db:5432/shop", "from the environment it is allowed");
    }

    #[test]
    fn committed_default_parses_and_uses_the_offline_kit() {
        let config = parse(DEFAULT_TOML, &[]).expect("config/lookalike.toml must parse");
        assert_eq!(config.models.profile, Profile::Kit);
        assert_eq!(config.index.metric, Metric::Cosine);
        assert!((config.index.near_duplicate_cosine - 0.999).abs() < 1e-6);
        assert!(config.discord.api_proxy.is_empty());
    }

    #[test]
    fn committed_default_comments_every_key() {
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        for (number, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
                continue;
            }
            let previous = lines[..number].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim());
            assert!(previous.is_some_and(|p| p.starts_with('#')), "key on line {} has no comment above it: {line}", number + 1);
        }
    }

    #[test]
    fn unknown_key_is_named_with_the_accepted_ones() {
        let text = DEFAULT_TOML.replace("metric =", "metrc =");
        let message = parse(&text, &[]).unwrap_err().to_string();
        assert!(message.contains("unknown field `metrc`"), "{message}");
        assert!(message.contains("`metric`"), "accepted keys should be listed: {message}");
    }

    #[test]
    fn wrong_value_lists_the_accepted_values() {
        let text = DEFAULT_TOML.replace("metric = \"cosine\"", "metric = \"manhattan\"");
        let message = parse(&text, &[]).unwrap_err().to_string();
        assert!(message.contains("manhattan") && message.contains("cosine") && message.contains("euclidean"), "{message}");
    }

    #[test]
    fn environment_overrides_win_and_are_type_checked() {
        let config = parse(DEFAULT_TOML, &[("LOOKALIKE__INDEX__METRIC", "euclidean"), ("LOOKALIKE__SEARCH__DEFAULT_K", "7")]).unwrap();
        assert_eq!(config.index.metric, Metric::Euclidean);
        assert_eq!(config.search.default_k, 7);

        let message = parse(DEFAULT_TOML, &[("LOOKALIKE__SEARCH__DEFAULT_K", "many")]).unwrap_err().to_string();
        assert!(message.contains("LOOKALIKE__SEARCH__DEFAULT_K") && message.contains("invalid type"), "{message}");

        let message = parse(DEFAULT_TOML, &[("LOOKALIKE__NOPE__KEY", "1")]).unwrap_err().to_string();
        assert!(message.contains("no config section `nope`"), "{message}");
    }

    #[test]
    fn the_embedding_temperature_is_auto_or_a_number() {
        assert_eq!(parse(DEFAULT_TOML, &[]).unwrap().text.embedding_temperature, Temperature::Auto);
        let cases = [("embedding_temperature = 0.04", &[][..]), ("embedding_temperature = \"auto\"", &[("LOOKALIKE__TEXT__EMBEDDING_TEMPERATURE", "0.04")][..])];
        for (line, env) in cases {
            let config = parse(&DEFAULT_TOML.replace("embedding_temperature = \"auto\"", line), env).unwrap();
            assert_eq!(config.text.embedding_temperature, Temperature::Fixed(0.04), "{line} {env:?}");
        }
        let hot = parse(&DEFAULT_TOML.replace("embedding_temperature = \"auto\"", "embedding_temperature = \"hot\""), &[]).unwrap_err().to_string();
        assert!(hot.contains("\"auto\" or a number") && hot.contains("hot"), "{hot}");
        let zero = parse(&DEFAULT_TOML.replace("embedding_temperature = \"auto\"", "embedding_temperature = 0"), &[]).unwrap_err().to_string();
        assert!(zero.contains("text.embedding_temperature"), "{zero}");
    }

    #[test]
    fn shards_are_auto_or_a_range_of_a_total() {
        let range = |first, last, total| Ok(Shards::Range { first, last, total });
        let cases: [(&str, Result<Shards, &str>); 7] = [
            ("auto", Ok(Shards::Auto)),
            ("0-0/2", range(0, 0, 2)),
            ("1/4", range(1, 1, 4)),
            ("2-3/4", range(2, 3, 4)),
            ("3-2/4", Err("FIRST must not be after LAST")),
            ("0-4/4", Err("numbered 0 to TOTAL-1")),
            ("two", Err("expected \"auto\" or FIRST-LAST/TOTAL")),
        ];
        for (text, expected) in cases {
            match (text.parse::<Shards>(), expected) {
                (Ok(parsed), Ok(wanted)) => assert_eq!((parsed, parsed.to_string().parse::<Shards>().unwrap()), (wanted, wanted), "{text}"),
                (Err(message), Err(part)) => assert!(message.contains(part), "{text}: {message}"),
                (got, wanted) => panic!("{text}: {got:?}, expected {wanted:?}"),
            }
        }
        let config = parse(DEFAULT_TOML, &[("LOOKALIKE__DISCORD__SHARDS", "0-1/4")]).unwrap();
        assert_eq!(config.discord.shards, Shards::Range { first: 0, last: 1, total: 4 });
        let message = parse(DEFAULT_TOML, &[("LOOKALIKE__DISCORD__SHARDS", "4/4")]).unwrap_err().to_string();
        assert!(message.contains("LOOKALIKE__DISCORD__SHARDS") && message.contains("TOTAL-1"), "{message}");
    }

    #[test]
    fn a_token_in_the_file_is_refused_with_the_fix() {
        let text = DEFAULT_TOML.replace("[discord]", "[discord]\ntoken = \"abc.def\"");
        let message = parse(&text, &[]).unwrap_err().to_string();
        assert!(message.contains("DISCORD_TOKEN"), "{message}");
        assert!(!message.contains("abc.def"), "the token must never be echoed: {message}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let cases = [
            ("min_similarity = 0.0", "min_similarity = 1.5", "index.min_similarity"),
            ("default_k = 5", "default_k = 0", "search.default_k"),
            ("nli_template = \"This example is about {}.\"", "nli_template = \"about\"", "text.nli_template"),
            ("api_proxy = \"\"", "api_proxy = \"ftp://x\"", "discord.api_proxy"),
        ];
        for (from, to, key) in cases {
            assert!(DEFAULT_TOML.contains(from), "default config changed: {from}");
            let message = parse(&DEFAULT_TOML.replace(from, to), &[]).unwrap_err().to_string();
            assert!(message.contains(key), "{to}: {message}");
        }
    }
}
