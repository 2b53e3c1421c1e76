//! `lookalike eval --retrieval DIR`: does the bot find the same item, not just the same kind?
//! DIR holds `catalogue/<category>/<file>` and `queries/<category>/<file>`, a query and its
//! catalogue item sharing category and file name (another picture of the same thing: another
//! vendor's drawing, a shopper's photo). The catalogue is indexed and every query goes through
//! the whole search, as a shopper's would.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::search::{Query, SearchService};

#[derive(Debug, Clone, Serialize)]
pub struct RetrievalReport {
    pub queries: usize,
    pub catalogue_items: usize,
    /// Share of queries whose own item is the first hit / among the first five.
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    /// Share of queries whose image vote names their category.
    pub vote_accuracy: f64,
    /// Share of the first five hits in the query's category.
    pub same_category_precision_at_5: f64,
    /// Mean categories searched per query.
    pub categories_searched: f64,
    pub query_ms_p50: f64,
    /// The exact search's share of a query's time (p50 over p50).
    pub search_share: f64,
    pub gate: String,
    pub embedding: String,
    /// The same recalls per category, to see where the misses are.
    pub per_category: Vec<CategoryRecall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CategoryRecall {
    pub category: String,
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
}

pub fn evaluate(config: &Config, dir: &Path) -> anyhow::Result<RetrievalReport> {
    let (catalogue, queries) = (dir.join("catalogue"), dir.join("queries"));
    let (_, examples, _) = crate::catalogue::labelled(&queries, None).with_context(|| format!("{} needs catalogue/ and queries/, each with one sub-folder per category", dir.display()))?;
    anyhow::ensure!(!examples.is_empty(), "{} has no query images", queries.display());
    let mut config = config.clone();
    config.catalogue.dir = catalogue;
    config.catalogue.metadata = Default::default();
    // One index per embedding, kept beside the data: a second run re-embeds nothing.
    config.index.dir = dir.join(format!("index-{}", config.index.embedding.as_str()));
    let service = SearchService::start(&config)?;
    service.warm_up()?;
    // On stderr: stdout carries the report (`--json` included).
    eprint!("{}", crate::index::render_summary(&crate::search::reindex_with_bar(&service)?, crate::index::Audience::Operator));
    let catalogue_items = service.generation_blocking()?.vectors();

    let runtime = tokio::runtime::Runtime::new()?;
    let progress = crate::progress::bar(examples.len() as u64, "queries {bar:30} {pos}/{len}, {per_sec}, eta {eta}");
    let (mut first, mut five, mut voted, mut same, mut shown, mut searched) = (0, 0, 0, 0, 0, 0);
    let (mut totals, mut searches) = (Vec::new(), Vec::new());
    // Per category: (queries, first, five), in name order.
    let mut by_category: std::collections::BTreeMap<String, (usize, usize, usize)> = Default::default();
    for example in &examples {
        let category = example.path.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let item = format!("{category}/{}", example.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let image = crate::imaging::read(&example.path, service.image_limits()).with_context(|| format!("cannot read the query {}", example.path.display()))?;
        let started = Instant::now();
        let outcome = runtime.block_on(service.search(Query { image, k: Some(5), ..Query::default() })).with_context(|| format!("search with {}", example.path.display()))?;
        totals.push(started.elapsed().as_secs_f64() * 1e3);
        searches.push(outcome.timings.search_ms);
        // A hit stands for itself, the identical files stored with it, and the near-duplicates folded into it.
        let stands_for = |hit: &crate::index::Hit| hit.item.id == item || hit.item.duplicates.contains(&item) || hit.collapsed.contains(&item);
        let (at_1, at_5) = (usize::from(outcome.hits.first().is_some_and(stands_for)), usize::from(outcome.hits.iter().any(stands_for)));
        (first, five) = (first + at_1, five + at_5);
        let tally = by_category.entry(category.clone()).or_default();
        *tally = (tally.0 + 1, tally.1 + at_1, tally.2 + at_5);
        let tally = outcome.vote.tally();
        voted += usize::from(outcome.vote.categories.get(tally.winner().0) == Some(&category));
        same += outcome.hits.iter().filter(|h| h.item.category == category).count();
        shown += 5;
        searched += outcome.decision.categories.len();
        progress.inc(1);
    }
    progress.finish_and_clear();
    let n = examples.len() as f64;
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (query_ms_p50, search_ms_p50) = (median(&mut totals), median(&mut searches));
    Ok(RetrievalReport {
        queries: examples.len(),
        catalogue_items,
        recall_at_1: first as f64 / n,
        recall_at_5: five as f64 / n,
        vote_accuracy: voted as f64 / n,
        same_category_precision_at_5: same as f64 / shown.max(1) as f64,
        categories_searched: searched as f64 / n,
        query_ms_p50,
        search_share: search_ms_p50 / query_ms_p50.max(1e-9),
        gate: format!("{:?}", config.search.gate).to_lowercase(),
        embedding: config.index.embedding.as_str().to_string(),
        per_category: by_category
            .into_iter()
            .map(|(category, (queries, at_1, at_5))| CategoryRecall { category, queries, recall_at_1: at_1 as f64 / queries as f64, recall_at_5: at_5 as f64 / queries as f64 })
            .collect(),
    })
}

pub fn render(report: &RetrievalReport) -> String {
    let mut out = format!(
        "instance retrieval: {} queries against {} catalogue items (gate {}, {} vectors)\n  R@1 {:.3}   R@5 {:.3}   vote accuracy {:.1} %   same-category precision@5 {:.1} %\n  categories searched per query {:.2}; query p50 {:.1} ms, of which the exact search {:.2} %\n",
        report.queries,
        report.catalogue_items,
        report.gate,
        report.embedding,
        report.recall_at_1,
        report.recall_at_5,
        100.0 * report.vote_accuracy,
        100.0 * report.same_category_precision_at_5,
        report.categories_searched,
        report.query_ms_p50,
        100.0 * report.search_share
    );
    out.push_str("  per category (queries, R@1, R@5):");
    for c in &report.per_category {
        out.push_str(&format!("\n    {:<20} {:>5}  {:.3}  {:.3}", c.category, c.queries, c.recall_at_1, c.recall_at_5));
    }
    out.push('\n');
    out
}
