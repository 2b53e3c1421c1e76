//! The process's Prometheus metrics, recorded where things happen: searches and their stages
//! in the Discord module, batches on the model thread, re-indexes in `search::upkeep`, the
//! gateway's shards in the Discord module; the index's generation and items at each scrape
//! ([`crate::ops`] serves them).

use std::sync::LazyLock;

use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Where a search came from: the `entry` label of `lookalike_searches_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `/search`.
    Slash,
    /// An @mention with a photo.
    Mention,
    /// The "Find similar" message command.
    FindSimilar,
    /// A button under an answer (next page, another category).
    Button,
}

impl Entry {
    pub const ALL: [Entry; 4] = [Entry::Slash, Entry::Mention, Entry::FindSimilar, Entry::Button];

    pub fn as_str(self) -> &'static str {
        match self {
            Entry::Slash => "slash",
            Entry::Mention => "mention",
            Entry::FindSimilar => "find_similar",
            Entry::Button => "button",
        }
    }
}

/// How a search ended, as `lookalike_searches_total` counts it.
pub const OUTCOMES: [&str; 6] = ["ok", "busy", "bad_image", "no_index", "timeout", "error"];
/// The stages of `lookalike_search_duration_seconds`.
pub const STAGES: [&str; 6] = ["decode", "queue", "vision", "text", "search", "total"];

pub struct Metrics {
    registry: Registry,
    searches: IntCounterVec,
    stages: HistogramVec,
    batch_size: Histogram,
    generation: IntGauge,
    items: IntGaugeVec,
    reindexes: IntCounterVec,
    gateway: IntGaugeVec,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics::new().expect("the metric definitions are valid"));

impl Metrics {
    fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let searches = IntCounterVec::new(Opts::new("lookalike_searches_total", "Searches answered, by outcome and entry point"), &["outcome", "entry"])?;
        // Every pair from the start, so a rate over a pair that has not happened yet is 0, not absent.
        for outcome in OUTCOMES {
            for entry in Entry::ALL {
                searches.with_label_values(&[outcome, entry.as_str()]);
            }
        }
        let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let stages = HistogramVec::new(HistogramOpts::new("lookalike_search_duration_seconds", "Time per stage of a successful search").buckets(buckets), &["stage"])?;
        for stage in STAGES {
            stages.with_label_values(&[stage]);
        }
        let batch_size = Histogram::with_opts(HistogramOpts::new("lookalike_model_batch_size", "Images per batch on the model thread").buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]))?;
        let generation = IntGauge::new("lookalike_index_generation", "The index generation searches are answered from (0: none)")?;
        let items = IntGaugeVec::new(Opts::new("lookalike_index_items", "Catalogue files in the current index generation, per category"), &["category"])?;
        let reindexes = IntCounterVec::new(Opts::new("lookalike_reindex_total", "Re-indexes (and catalogue edits, which re-index), by outcome"), &["outcome"])?;
        for outcome in ["ok", "refused", "interrupted", "error"] {
            reindexes.with_label_values(&[outcome]);
        }
        let gateway = IntGaugeVec::new(Opts::new("lookalike_gateway_connected", "1 while this gateway shard is connected to Discord"), &["shard"])?;
        for collector in [
            Box::new(searches.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stages.clone()),
            Box::new(batch_size.clone()),
            Box::new(generation.clone()),
            Box::new(items.clone()),
            Box::new(reindexes.clone()),
            Box::new(gateway.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Metrics { registry, searches, stages, batch_size, generation, items, reindexes, gateway })
    }

    /// One search from `entry` that ended as `outcome` (a `SearchError::kind`, or "ok"); the kinds
    /// not in [`OUTCOMES`] (the index database unavailable, an unknown category asked for by a
    /// button) count as "error".
    pub fn search(&self, entry: Entry, outcome: &str) {
        let outcome = if OUTCOMES.contains(&outcome) { outcome } else { "error" };
        self.searches.with_label_values(&[outcome, entry.as_str()]).inc();
    }

    /// The seconds of each of [`STAGES`] of a successful search, in that order.
    pub fn stages(&self, seconds: [f64; 6]) {
        for (stage, value) in STAGES.iter().zip(seconds) {
            self.stages.with_label_values(&[stage]).observe(value);
        }
    }

    /// The index generation searches are answered from, and its files per category (a scrape
    /// sets them; 0 and none without an index).
    pub fn index(&self, generation: u64, categories: &[(String, usize)]) {
        self.generation.set(generation as i64);
        self.items.reset();
        for (category, files) in categories {
            self.items.with_label_values(&[category]).set(*files as i64);
        }
    }

    pub fn batch(&self, size: usize) {
        self.batch_size.observe(size as f64);
    }

    /// A re-index (or a catalogue edit) that ended `ok`, `refused` (another was running, or the
    /// edit was refused), `interrupted` (a shutdown) or with an `error`.
    pub fn reindex(&self, outcome: &str) {
        self.reindexes.with_label_values(&[outcome]).inc();
    }

    pub fn gateway(&self, shard: u32, connected: bool) {
        self.gateway.with_label_values(&[&shard.to_string()]).set(i64::from(connected));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
