//! `lookalike eval --words FILE`: what the shopper's words add, measured on a benchmark written
//! before any tuning (`tests/data/words/benchmark.toml`). Its products are Fashion-MNIST test
//! photos tinted in each variant's colour (on the photos' black background), with titles,
//! prices, some descriptions and tags; half of the colour families name no colour in their
//! titles. Four kinds of query go through the whole search as a shopper's would: a product's
//! name (R@1), a paraphrase that shares no word with any title (R@5), a photo of one variant
//! with "like this but in <another colour>" (R@1 on that variant), and price phrases (no hit
//! breaks the rule, pages are full when enough items qualify, orders hold).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::search::{Query, SearchOutcome, SearchService};
use crate::vision::data::{FashionMnist, FashionMnistSet};
use crate::words::Order;

/// Hits per query.
const K: usize = 5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Benchmark {
    product: Vec<Product>,
    query: Vec<BenchQuery>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Product {
    id: String,
    category: String,
    /// Which test image of the category (file order).
    image: usize,
    /// With `{colour}` where the variant's colour is named.
    title: String,
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    variants: Vec<Variant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Variant {
    colour: String,
    price: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Name,
    Paraphrase,
    Colour,
    Price,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BenchQuery {
    kind: Kind,
    text: String,
    product: Option<String>,
    from: Option<String>,
    to: Option<String>,
    category: Option<String>,
}

/// Per kind of query: found or not, milliseconds, the first misses.
type Outcomes = (Vec<bool>, Vec<f64>, Vec<String>);

/// One part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub kind: String,
    pub queries: usize,
    /// "R@1", "R@5", or for price "rules kept".
    pub measure: String,
    pub value: f64,
    pub target: f64,
    /// Query time, median, in milliseconds.
    pub query_ms_p50: f64,
    /// The first few misses: the query and what came first.
    pub misses: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WordsReport {
    pub items: usize,
    pub products: usize,
    pub parts: Vec<Part>,
    /// Price queries whose page had fewer hits than qualifying items allowed.
    pub short_pages: usize,
}

/// Builds the benchmark's catalogue under `work`, indexes it with `config`'s models, and runs
/// every query.
pub fn evaluate(config: &Config, file: &Path, work: &Path) -> anyhow::Result<WordsReport> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the words benchmark {}", file.display()))?;
    let benchmark: Benchmark = toml::from_str(&text).with_context(|| format!("{} is not a words benchmark", file.display()))?;
    let catalogue = build_catalogue(&benchmark, work)?;
    let mut config = config.clone();
    config.catalogue.dir = work.join("catalogue");
    config.catalogue.metadata = work.join("catalogue.jsonl");
    config.index.backend = crate::config::IndexBackend::Embedded;
    config.index.dir = work.join("index");
    let service = SearchService::start(&config)?;
    eprint!("{}", crate::index::render_summary(&crate::search::reindex_with_bar(&service)?, crate::index::Audience::Operator));
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut results: HashMap<Kind, Outcomes> = HashMap::new();
    let mut short_pages = 0;
    for query in &benchmark.query {
        let image = match query.kind {
            Kind::Colour => shopper_photo(&catalogue, query)?,
            _ => Vec::new(),
        };
        let started = Instant::now();
        let outcome = runtime.block_on(service.search(Query { image, text: Some(query.text.clone()), k: Some(K), page: 0, categories: None }))?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let (hit, short) = judge(query, &outcome, &catalogue);
        short_pages += usize::from(short);
        let entry = results.entry(query.kind).or_default();
        entry.0.push(hit);
        entry.1.push(ms);
        if !hit && entry.2.len() < 8 {
            let first: Vec<&str> = outcome.hits.iter().take(3).map(|h| h.item.id.as_str()).collect();
            entry.2.push(format!("{:?} -> {}", query.text, first.join(", ")));
        }
    }
    let parts = [(Kind::Name, "R@1", 0.90), (Kind::Paraphrase, "R@5", 0.80), (Kind::Colour, "R@1", 0.80), (Kind::Price, "rules kept", 1.0)]
        .into_iter()
        .filter_map(|(kind, measure, target)| {
            let (hits, mut times, misses) = results.remove(&kind)?;
            times.sort_by(f64::total_cmp);
            let value = hits.iter().filter(|h| **h).count() as f64 / hits.len().max(1) as f64;
            Some(Part { kind: format!("{kind:?}").to_lowercase(), queries: hits.len(), measure: measure.into(), value, target, query_ms_p50: times[times.len() / 2], misses })
        })
        .collect();
    Ok(WordsReport { items: catalogue.items.len(), products: benchmark.product.len(), parts, short_pages })
}

/// The catalogue as built: each item's id with its product, colour, price and category.
struct Built {
    items: Vec<BuiltItem>,
    folder: PathBuf,
}

struct BuiltItem {
    id: String,
    product: String,
    colour: String,
    price: f64,
    category: String,
}

/// A variant's photo: the product's grey photo, its brightness carried by the variant's colour
/// over the black background.
fn tinted(pixels: &[u8], colour: [u8; 3]) -> image::RgbImage {
    image::RgbImage::from_fn(28, 28, |x, y| {
        let v = pixels[(y * 28 + x) as usize] as f32 / 255.0;
        // Shading keeps the texture: the brightest pixels get the full colour.
        image::Rgb(colour.map(|c| (c as f32 * v.powf(0.6)).round() as u8))
    })
}

fn build_catalogue(benchmark: &Benchmark, work: &Path) -> anyhow::Result<Built> {
    let dataset = FashionMnist::load()?;
    let folder = work.join("catalogue");
    let mut items = Vec::new();
    let mut metadata = String::new();
    for product in &benchmark.product {
        let pixels = dataset.pixels(FashionMnistSet::Test, &product.category, product.image).with_context(|| format!("{}: no test image {} of {}", product.id, product.image, product.category))?;
        std::fs::create_dir_all(folder.join(&product.category))?;
        for variant in &product.variants {
            let named = crate::colour::named(&variant.colour).with_context(|| format!("{}: unknown colour {}", product.id, variant.colour))?;
            let id = format!("{}/{}-{}.png", product.category, product.id, variant.colour);
            let path = work.join("catalogue").join(&id);
            if !path.exists() {
                // Whole or not at all: a run killed here must not leave a torn picture a later
                // run would keep.
                let mut png = Vec::new();
                tinted(pixels, named.srgb).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
                crate::files::write_atomically(&path, &png)?;
            }
            let mut colour_word = variant.colour.clone();
            colour_word[..1].make_ascii_uppercase();
            let title = product.title.replace("{colour}", &colour_word);
            let row = serde_json::json!({ "id": id, "title": title.trim(), "price": format!("{:.2}", variant.price), "description": product.description, "tags": product.tags });
            metadata.push_str(&row.to_string());
            metadata.push('\n');
            items.push(BuiltItem { id, product: product.id.clone(), colour: variant.colour.clone(), price: variant.price, category: product.category.clone() });
        }
    }
    crate::files::write_atomically(&work.join("catalogue.jsonl"), metadata.as_bytes())?;
    Ok(Built { items, folder })
}

/// A shopper's photo of the `from` variant: mirrored and moved by a pixel, so it is not the
/// catalogue's own file.
fn shopper_photo(catalogue: &Built, query: &BenchQuery) -> anyhow::Result<Vec<u8>> {
    let (product, from) = (query.product.as_deref().unwrap_or_default(), query.from.as_deref().unwrap_or_default());
    let item = catalogue.items.iter().find(|i| i.product == product && i.colour == from).with_context(|| format!("{:?}: no variant {product} in {from}", query.text))?;
    let original = image::open(catalogue.folder.join(&item.id))?.to_rgb8();
    let mirrored = image::imageops::flip_horizontal(&original);
    let mut moved = image::RgbImage::new(28, 28);
    image::imageops::overlay(&mut moved, &mirrored, 1, 0);
    let mut bytes = Vec::new();
    moved.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}

/// Whether the query found what it should, and (for price) whether its page was short.
fn judge(query: &BenchQuery, outcome: &SearchOutcome, catalogue: &Built) -> (bool, bool) {
    let of = |id: &str| catalogue.items.iter().find(|i| i.id == id);
    let product = query.product.as_deref().unwrap_or_default();
    let is_product = |id: &str| of(id).is_some_and(|i| i.product == product);
    match query.kind {
        Kind::Name => (outcome.hits.first().is_some_and(|h| is_product(&h.item.id)), false),
        Kind::Paraphrase => (outcome.hits.iter().take(5).any(|h| is_product(&h.item.id)), false),
        Kind::Colour => {
            let to = query.to.as_deref().unwrap_or_default();
            (outcome.hits.first().and_then(|h| of(&h.item.id)).is_some_and(|i| i.product == product && i.colour == to), false)
        }
        Kind::Price => {
            let wants = crate::words::read(&query.text);
            let category = query.category.as_deref().unwrap_or_default();
            let qualifying = catalogue.items.iter().filter(|i| i.category == category && wants.price.admits(Some(i.price as f32))).count();
            let prices: Vec<f64> = outcome.hits.iter().filter_map(|h| of(&h.item.id)).map(|i| i.price).collect();
            let obeyed = outcome.hits.iter().all(|h| of(&h.item.id).is_some_and(|i| i.category == category && wants.price.admits(Some(i.price as f32))));
            let ordered = match wants.order {
                Order::Relevance => true,
                Order::Cheapest => prices.windows(2).all(|w| w[0] <= w[1]),
                Order::Dearest => prices.windows(2).all(|w| w[0] >= w[1]),
            };
            let short = outcome.hits.len() < qualifying.min(K);
            (obeyed && ordered && !short, short)
        }
    }
}

/// The report as a table.
pub fn render(report: &WordsReport) -> String {
    let mut out = format!("words benchmark: {} items ({} products in colour variants)\n", report.items, report.products);
    out.push_str("part         queries  measure      value   target  p50 ms\n");
    for part in &report.parts {
        out.push_str(&format!("{:<12} {:>7}  {:<11} {:>6.3}  {:>6.2}  {:>6.1}\n", part.kind, part.queries, part.measure, part.value, part.target, part.query_ms_p50));
    }
    out.push_str(&format!("price pages short of the items that qualify: {}\n", report.short_pages));
    for part in report.parts.iter().filter(|p| !p.misses.is_empty()) {
        out.push_str(&format!("misses ({}):\n", part.kind));
        for miss in &part.misses {
            out.push_str(&format!("  {miss}\n"));
        }
    }
    out
}
