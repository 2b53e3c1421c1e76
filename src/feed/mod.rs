//! `lookalike catalogue import`: a shop's own product feed (Google Merchant Center XML or TSV,
//! a Shopify products CSV) turned into the catalogue folders and the metadata file. [`products`]
//! reads the feed into plain products (`parse.rs` holds what the readers give and share,
//! `merchant.rs` and `shopify.rs` are the readers, `text.rs` turns HTML into text); here each product's pictures are planned (a category
//! from a feed field, its level and an optional mapping; one metadata row per picture, the
//! product's variants kept as one group); `fetch` downloads the pictures the catalogue does not
//! hold yet; then they are placed under their category, named by their content as `catalogue
//! add` names them, and the metadata file is written once, whole. A later import of the same
//! feed finds each picture by its URL in the metadata file and downloads nothing again.
//!
//! What is on disk changes only after the whole feed has been read: a malformed feed is an
//! error naming its line, and nothing is written. Re-indexing is the caller's
//! ([`crate::search::Upkeep::import_feed`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalogue::{self, EditError, Metadata};
use crate::imaging::ImageLimits;

mod fetch;
mod merchant;
mod parse;
mod shopify;
mod text;

pub use fetch::{feed_text, is_internal, FetchSettings, Traffic};
pub use parse::{read_price, FeedError, Format, Price, Product};
pub use text::{html_to_text, level, slug};

/// Reads the whole feed into its products (see `parse.rs`; the readers are `merchant.rs` and
/// `shopify.rs`). Errors: XML not well-formed (roxmltree's error, with its line), a root that
/// is neither rss nor feed, no items; TSV/CSV: missing required column (`id` for Merchant TSV, the
/// message listing the columns found and the ones a Merchant feed needs; `Handle` for Shopify), a row
/// with the wrong number of fields, bad quoting. The message says what to do.
pub fn products(text: &str, format: Format) -> Result<Vec<Product>, FeedError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        Format::MerchantXml => merchant::parse_xml(text),
        Format::MerchantTsv => merchant::parse_tsv(text),
        Format::ShopifyCsv => shopify::parse_shopify(text),
    }
}

/// Where each product's category comes from.
#[derive(Debug, Clone, Default)]
pub struct Categories {
    /// The feed field read (`product_type`, `google_product_category`, `type`, any column); none:
    /// `product_type` for Merchant feeds, `type` for Shopify's.
    pub from: Option<String>,
    /// Which level of a path such as "Home & Garden > Furniture > Beds" (1 = "Home & Garden");
    /// none: the last.
    pub level: Option<usize>,
    /// A feed value (whole, or the level taken, or its folder name) to a category; "" skips the
    /// product.
    pub mapping: BTreeMap<String, String>,
}

impl Categories {
    /// Reads a mapping file: a `[categories]` table of `"feed value" = "category"`.
    pub fn read_mapping(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            categories: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the category mapping {}", path.display()))?;
        let file: File = toml::from_str(&text).with_context(|| format!("{} is not a category mapping: it holds one `[categories]` table of \"feed value\" = \"category\"", path.display()))?;
        Ok(file.categories)
    }

    /// The field read for a feed of `format`.
    fn field(&self, format: Format) -> &str {
        self.from.as_deref().unwrap_or(match format {
            Format::ShopifyCsv => "type",
            Format::MerchantXml | Format::MerchantTsv => "product_type",
        })
    }

    /// The category folder of `product`, or why it has none.
    fn of(&self, product: &Product, format: Format) -> Result<String, String> {
        let field = self.field(format);
        let value = product.fields.get(field).ok_or_else(|| format!("no `{field}` to take a category from (--category-from names another field)"))?;
        let depth = value.split('>').count();
        let taken = level(value, self.level.unwrap_or(depth)).ok_or_else(|| format!("`{field}` \"{value}\" has no level {}", self.level.unwrap_or(depth)))?;
        let mapped = [value.as_str(), taken, &slug(taken)].into_iter().find_map(|key| self.mapping.get(key));
        match mapped.map(String::as_str) {
            Some("") => Err(format!("the category mapping skips \"{value}\"")),
            Some(category) => Some(slug(category)).filter(|s| !s.is_empty()).ok_or_else(|| format!("the category mapping names \"{value}\" \"{category}\", which makes no folder name")),
            None => Some(slug(taken)).filter(|s| !s.is_empty()).ok_or_else(|| format!("`{field}` \"{value}\" makes no folder name")),
        }
    }
}

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// None: detected from the text.
    pub format: Option<Format>,
    pub categories: Categories,
    /// Remove the pictures of products no longer in the feed (else they are kept, and counted).
    pub prune: bool,
    /// The currency of prices the feed gives without one (a Shopify export never names it).
    pub currency: Option<String>,
    /// Fetch the feed and its pictures only from the internet (see [`fetch::is_internal`]).
    pub public_only: bool,
}

/// A product the import left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub id: String,
    pub line: usize,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportSummary {
    pub format: &'static str,
    /// Entries read from the feed (products, or variants with pictures of their own).
    pub products: usize,
    /// Distinct pictures those products have that the import kept.
    pub pictures: usize,
    pub added: usize,
    /// Pictures already in the catalogue whose metadata or category changed.
    pub updated: usize,
    pub unchanged: usize,
    /// Pictures of products gone from the feed, removed (`--prune`).
    pub removed: usize,
    /// Pictures of products gone from the feed, kept because `--prune` was not given.
    pub gone_kept: usize,
    pub skipped: Vec<Skipped>,
    /// Products whose price names no currency (kept, as the number alone).
    pub no_currency: Vec<String>,
    /// Images per category in the catalogue after the import.
    pub categories: Vec<(String, usize)>,
    pub traffic: Traffic,
    pub seconds: f64,
}

impl ImportSummary {
    /// Categories with fewer images than `lookalike train` needs.
    pub fn too_few_to_train(&self) -> Vec<&(String, usize)> {
        self.categories.iter().filter(|(_, n)| *n < catalogue::MIN_TRAINING_IMAGES).collect()
    }
}

/// One picture of one product, as the catalogue will hold it.
#[derive(Debug, Clone)]
struct Wanted {
    url: String,
    category: String,
    metadata: Metadata,
    product: (String, usize),
}

/// The folder inside the catalogue where downloads wait for the import to be written (a
/// dot-folder: never read as a category).
pub fn cache_dir(root: &Path) -> PathBuf {
    root.join(".import")
}

/// Imports `feed` into the catalogue at `root` with its metadata file; `progress(done, total)`
/// counts the pictures to download. See the module documentation.
///
/// A feed that cannot be imported as given (its format, a malformed line, no metadata file set)
/// is [`EditError::Refused`], with nothing changed on disk; the machine's failures are
/// [`EditError::Failed`].
pub fn import(
    root: &Path,
    metadata_file: &Path,
    feed: &str,
    options: &ImportOptions,
    settings: FetchSettings,
    limits: ImageLimits,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ImportSummary, EditError> {
    let started = std::time::Instant::now();
    let refuse = |why: String| Err(EditError::Refused(why));
    if metadata_file.as_os_str().is_empty() {
        return refuse("an import writes each product's title, price, link and words into the metadata file: set catalogue.metadata (for example \"shop/items.jsonl\") first".into());
    }
    let Some(format) = options.format.or_else(|| Format::detect(feed)) else {
        return refuse("cannot tell the feed's format: pass --format merchant-xml, merchant-tsv or shopify-csv".into());
    };
    let products = match products(feed, format) {
        Ok(products) => products,
        Err(err) => return refuse(format!("the feed is not a valid {} feed: {err}; nothing was changed", format.name())),
    };
    let mut summary = ImportSummary { format: format.name(), products: products.len(), ..ImportSummary::default() };
    let wanted = plan(&products, format, options, &mut summary);
    let mut rows = catalogue::read_rows(metadata_file)?;
    let held = held_pictures(root, &rows);
    let missing: Vec<String> = wanted.iter().filter(|w| !held.contains_key(&w.url)).map(|w| w.url.clone()).collect();
    let cache = cache_dir(root);
    let (fetched, traffic) = fetch::pictures(&missing, &cache, settings, limits, progress)?;
    summary.traffic = traffic;
    let fetched: HashMap<&str, fetch::Fetched> = missing.iter().map(String::as_str).zip(fetched).collect();
    let placed = place_all(root, &cache, &wanted, &held, &fetched, &rows, &mut summary)?;
    summary.skipped.sort_by_key(|skip| skip.line);
    summary.pictures = placed.len();
    rows = merge_rows(root, rows, placed, &wanted, options.prune, &mut summary)?;
    catalogue::write_rows(metadata_file, &rows)?;
    if let Err(err) = std::fs::remove_dir_all(&cache) {
        tracing::warn!(cause = %err, folder = %cache.display(), "cannot clear the import's downloads; the next import reuses them");
    }
    summary.categories = category_counts(root);
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Places every wanted picture (the held ones moved when their category changed, the downloaded
/// ones named by their content) and counts what is added, updated or unchanged. One picture is
/// one item: a second product with the same bytes is skipped, and so is one whose picture the
/// catalogue holds as its own item (added by hand), which keeps its row.
fn place_all(
    root: &Path,
    cache: &Path,
    wanted: &[Wanted],
    held: &HashMap<String, String>,
    fetched: &HashMap<&str, fetch::Fetched>,
    rows: &[(String, Metadata)],
    summary: &mut ImportSummary,
) -> anyhow::Result<Vec<(String, Metadata)>> {
    let row_of: HashMap<&str, &Metadata> = rows.iter().map(|(key, m)| (key.as_str(), m)).collect();
    let mut placed_by: HashMap<String, (String, usize)> = HashMap::new();
    let mut placed = Vec::new();
    for want in wanted {
        let (product, line) = want.product.clone();
        let id = match held.get(&want.url) {
            Some(id) => keep_in_category(root, id, &want.category)?,
            None => match &fetched[want.url.as_str()] {
                fetch::Fetched::Failed(why) => {
                    summary.skipped.push(Skipped { id: product, line, reason: format!("{why}: {}", want.url) });
                    continue;
                }
                _ => place(root, &fetch::cached(cache, &want.url), &want.category)?,
            },
        };
        if let Some((first, first_line)) = placed_by.get(&id) {
            summary.skipped.push(Skipped { id: product, line, reason: format!("the same picture as product {first} (line {first_line}): {}", want.url) });
            continue;
        }
        if row_of.get(id.as_str()).is_some_and(|m| m.feed_id.is_none()) {
            summary.skipped.push(Skipped { id: product, line, reason: format!("the same picture as the catalogue's own item {id}, which keeps its row") });
            continue;
        }
        // Its row before: the one its URL found, or the one its bytes found (a URL that changed).
        let before = held.get(&want.url).and_then(|old| row_of.get(old.as_str())).or_else(|| row_of.get(id.as_str()));
        match before {
            None => summary.added += 1,
            Some(old) if **old == want.metadata && held.get(&want.url) == Some(&id) => summary.unchanged += 1,
            Some(_) => summary.updated += 1,
        }
        placed_by.insert(id.clone(), want.product.clone());
        placed.push((id, want.metadata.clone()));
    }
    Ok(placed)
}

/// The metadata file's rows after the import: every row the placed pictures had (by id, or by
/// their URL) replaced by theirs; the rows of products gone from the feed removed with their
/// files when `prune` (a file another row still names stays), else kept and counted.
fn merge_rows(root: &Path, mut rows: Vec<(String, Metadata)>, placed: Vec<(String, Metadata)>, wanted: &[Wanted], prune: bool, summary: &mut ImportSummary) -> anyhow::Result<Vec<(String, Metadata)>> {
    let placed_ids: HashSet<String> = placed.iter().map(|(id, _)| id.clone()).collect();
    let placed_urls: HashSet<String> = placed.iter().filter_map(|(_, m)| m.image_url.clone()).collect();
    let in_feed: HashSet<&str> = wanted.iter().map(|w| w.url.as_str()).collect();
    let imported = |m: &Metadata| m.feed_id.is_some();
    let replaced = |key: &String, m: &Metadata| placed_ids.contains(key) || (imported(m) && m.image_url.as_ref().is_some_and(|url| placed_urls.contains(url)));
    rows.retain(|(key, m)| !replaced(key, m));
    let gone = |m: &Metadata| imported(m) && m.image_url.as_deref().is_none_or(|url| !in_feed.contains(url));
    let gone_ids: Vec<String> = rows.iter().filter(|(_, m)| gone(m)).map(|(key, _)| key.clone()).collect();
    if !prune {
        summary.gone_kept = gone_ids.len();
        rows.extend(placed);
        return Ok(rows);
    }
    rows.retain(|(_, m)| !gone(m));
    rows.extend(placed);
    let named: HashSet<&str> = rows.iter().map(|(key, _)| key.as_str()).collect();
    for id in &gone_ids {
        summary.removed += 1;
        if named.contains(id.as_str()) {
            continue;
        }
        match std::fs::remove_file(root.join(id)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(anyhow::Error::new(err).context(format!("cannot remove {}", root.join(id).display()))),
            _ => {}
        }
    }
    Ok(rows)
}

/// Each product's pictures with its category and metadata row; every product left out goes to
/// `summary.skipped` with its reason.
fn plan(products: &[Product], format: Format, options: &ImportOptions, summary: &mut ImportSummary) -> Vec<Wanted> {
    let (categories, currency) = (&options.categories, options.currency.as_deref());
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    let mut urls: HashSet<&str> = HashSet::new();
    let mut wanted = Vec::new();
    for product in products {
        let skip = |reason: String| Skipped { id: product.id.clone(), line: product.line, reason };
        if product.id.is_empty() {
            summary.skipped.push(skip("no id".into()));
            continue;
        }
        if let Some(first) = first_line.get(product.id.as_str()) {
            summary.skipped.push(skip(format!("duplicate id: the product on line {first} has it")));
            continue;
        }
        first_line.insert(&product.id, product.line);
        let category = match categories.of(product, format) {
            Ok(category) => category,
            Err(why) => {
                summary.skipped.push(skip(why));
                continue;
            }
        };
        if product.images.is_empty() {
            summary.skipped.push(skip("no image link".into()));
            continue;
        }
        let mut metadata = metadata(product, currency);
        if product.price.as_ref().is_some_and(|p| p.currency.is_none()) && currency.is_none() {
            summary.no_currency.push(product.id.clone());
        }
        // A picture two products share (sizes of one colour) is one item, the first product's.
        for url in product.images.iter().filter(|url| urls.insert(url.as_str())) {
            metadata.image_url = Some(url.clone());
            wanted.push(Wanted { url: url.clone(), category: category.clone(), metadata: metadata.clone(), product: (product.id.clone(), product.line) });
        }
    }
    wanted
}

/// A product's metadata row (its picture's URL is set per picture), `currency` for a price
/// that names none.
fn metadata(product: &Product, currency: Option<&str>) -> Metadata {
    let price = product.price.as_ref().map(|p| match p.currency.as_deref().or(currency) {
        Some(currency) => format!("{:.2} {currency}", p.amount),
        None => format!("{:.2}", p.amount),
    });
    let group = product.group.clone().or_else(|| (product.images.len() > 1).then(|| product.id.clone()));
    Metadata {
        title: product.title.clone(),
        price: price.or_else(|| product.unreadable_price.clone()),
        link: product.link.clone(),
        image_url: None,
        description: product.description.clone(),
        // One tag per word group: a separator inside a feed's tag would split it on the way back.
        tags: product.tags.iter().flat_map(|tag| catalogue::split_tags(tag)).collect(),
        brand: product.brand.clone(),
        colour: product.colour.clone(),
        material: product.material.clone(),
        availability: product.availability.clone(),
        feed_id: Some(product.id.clone()),
        group,
    }
}

/// The pictures the catalogue holds by the URL they were imported from: image URL -> item id,
/// for rows of the metadata file whose file is there.
fn held_pictures(root: &Path, rows: &[(String, Metadata)]) -> HashMap<String, String> {
    rows.iter().filter(|(id, m)| m.feed_id.is_some() && root.join(id).is_file()).filter_map(|(id, m)| Some((m.image_url.clone()?, id.clone()))).collect()
}

/// The item `id` under `category`: moved there when the feed now files it elsewhere.
fn keep_in_category(root: &Path, id: &str, category: &str) -> anyhow::Result<String> {
    let (old_category, file) = id.split_once('/').with_context(|| format!("the metadata file names `{id}`, not a `category/file` id"))?;
    if old_category == category {
        return Ok(id.to_string());
    }
    let moved = format!("{category}/{file}");
    std::fs::create_dir_all(root.join(category)).with_context(|| format!("cannot create {}", root.join(category).display()))?;
    // Moved already (an import stopped before its metadata file was written): nothing to do.
    if !root.join(&moved).is_file() {
        std::fs::rename(root.join(id), root.join(&moved)).with_context(|| format!("cannot move {id} to {moved}"))?;
    }
    Ok(moved)
}

/// Places a downloaded picture as `category/<first 16 hex digits of its sha256>.<format>` (as
/// `catalogue add` names it), linked from the download (copied where links cannot be made);
/// a picture already there is kept. Returns its id.
fn place(root: &Path, download: &Path, category: &str) -> anyhow::Result<String> {
    let bytes = std::fs::read(download).with_context(|| format!("cannot read the download {}", download.display()))?;
    let extension = image::guess_format(&bytes).ok().and_then(|f| f.extensions_str().first().copied()).unwrap_or("png");
    let id = format!("{category}/{}.{extension}", &hex::encode(Sha256::digest(&bytes))[..16]);
    let path = root.join(&id);
    if !path.exists() {
        std::fs::create_dir_all(root.join(category)).with_context(|| format!("cannot create {}", root.join(category).display()))?;
        if std::fs::hard_link(download, &path).is_err() {
            crate::files::write_atomically(&path, &bytes)?;
        }
    }
    Ok(id)
}

/// Images per category folder under `root`, by name.
fn category_counts(root: &Path) -> Vec<(String, usize)> {
    let Ok(scan) = catalogue::scan(root) else { return Vec::new() };
    scan.categories.iter().map(|c| (c.clone(), scan.entries.iter().filter(|e| &e.category == c).count())).collect()
}

/// The text of the feed at `source`: a URL (http or https), or a file; at most `max_bytes`.
/// A feed that cannot be had is refused with the reason.
pub fn read_feed(source: &str, max_bytes: u64, settings: FetchSettings) -> Result<String, EditError> {
    let text = if source.starts_with("http://") || source.starts_with("https://") { feed_text(source, max_bytes, settings) } else { read_file(Path::new(source), max_bytes) };
    text.map_err(|err| EditError::Refused(format!("{err:#}")))
}

fn read_file(path: &Path, max_bytes: u64) -> anyhow::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read the feed {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read the feed {}", path.display()))?;
    anyhow::ensure!(bytes.len() as u64 <= max_bytes, "the feed {} is over {} MB (catalogue.max_feed_mb)", path.display(), crate::imaging::mb(max_bytes));
    String::from_utf8(bytes).map_err(|err| anyhow::anyhow!("the feed {} is not UTF-8 text (byte {}): save it as UTF-8", path.display(), err.utf8_error().valid_up_to()))
}

/// The summary as `catalogue import` prints it and `/catalogue-import` shows it.
/// Skipped products are listed up to `max_skipped` (a chat message is short), then counted.
pub fn render(summary: &ImportSummary, root: &Path, heads: Option<&[String]>, max_skipped: usize) -> String {
    let mut out = format!(
        "{} feed: {} products, {} pictures kept: {} added, {} updated, {} unchanged, {} removed\n",
        summary.format, summary.products, summary.pictures, summary.added, summary.updated, summary.unchanged, summary.removed
    );
    let t = &summary.traffic;
    out.push_str(&format!(
        "downloads: {} pictures ({:.1} MB) in {:.1} s, {:.0} pictures/s; {} from an interrupted import, {} retried, {} failed\n",
        t.downloaded,
        t.bytes as f64 / (1 << 20) as f64,
        t.seconds,
        t.downloaded as f64 / t.seconds.max(1e-3),
        t.cached,
        t.retried,
        t.failed
    ));
    if summary.gone_kept > 0 {
        out.push_str(&format!("{} pictures of products no longer in the feed were kept: import with --prune to remove them\n", summary.gone_kept));
    }
    if !summary.skipped.is_empty() {
        out.push_str(&format!("skipped {} products:\n", summary.skipped.len()));
        for skip in summary.skipped.iter().take(max_skipped) {
            out.push_str(&format!("  line {}, {}: {}\n", skip.line, skip.id, skip.reason));
        }
        if summary.skipped.len() > max_skipped {
            out.push_str(&format!("  and {} more (`lookalike catalogue import` lists them all)\n", summary.skipped.len() - max_skipped));
        }
    }
    if let [first, ..] = summary.no_currency.as_slice() {
        let more = match summary.no_currency.len() - 1 {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        out.push_str(&format!("prices without a currency, kept as numbers (--currency names it): {first}{more}\n"));
    }
    let counts: Vec<String> = summary.categories.iter().map(|(name, n)| format!("{name} {n}")).collect();
    out.push_str(&format!("categories: {}\n", counts.join(", ")));
    let short: Vec<String> = summary.too_few_to_train().iter().map(|(name, n)| format!("{name} ({n})")).collect();
    if !short.is_empty() {
        out.push_str(&format!("too few images to train (lookalike train needs {} per category): {}\n", catalogue::MIN_TRAINING_IMAGES, short.join(", ")));
    }
    if let Some(heads) = heads {
        let names: Vec<&str> = summary.categories.iter().map(|(name, _)| name.as_str()).collect();
        let new: Vec<&str> = names.iter().copied().filter(|n| !heads.iter().any(|h| h == n)).collect();
        if new.is_empty() {
            out.push_str("the current heads know every category\n");
        } else {
            out.push_str(&format!("the current heads do not know {}: run `lookalike train --data {}` next, so that photos can be voted into them\n", new.join(", "), root.display()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: &str, line: usize, fields: &[(&str, &str)], images: &[&str]) -> Product {
        Product { id: id.into(), line, fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), images: images.iter().map(|s| s.to_string()).collect(), ..Product::default() }
    }

    #[test]
    fn categories_come_from_a_level_a_field_or_the_mapping() {
        let beds = [("product_type", "Home & Garden > Furniture > Beds"), ("type", "Bed frames")];
        let mapping: BTreeMap<String, String> = [("Bed frames", "bed"), ("Furniture", "furniture-misc"), ("gifts", "")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        // (--category-from, --category-level, with the mapping, format, category or part of the reason)
        type Case<'a> = (Option<&'a str>, Option<usize>, bool, Format, Result<&'a str, &'a str>);
        let table: [Case; 9] = [
            (None, None, false, Format::MerchantXml, Ok("beds")),
            (None, Some(1), false, Format::MerchantXml, Ok("home-garden")),
            (None, Some(2), false, Format::MerchantTsv, Ok("furniture")),
            (None, Some(4), false, Format::MerchantXml, Err("has no level 4")),
            (None, None, false, Format::ShopifyCsv, Ok("bed-frames")),
            (None, None, true, Format::ShopifyCsv, Ok("bed")),
            (None, Some(2), true, Format::MerchantXml, Ok("furniture-misc")),
            (Some("google_product_category"), None, false, Format::MerchantXml, Err("no `google_product_category`")),
            (Some("type"), None, true, Format::MerchantXml, Ok("bed")),
        ];
        for (from, level, mapped, format, expected) in table {
            let categories = Categories { from: from.map(str::to_string), level, mapping: if mapped { mapping.clone() } else { BTreeMap::new() } };
            let got = categories.of(&product("b1", 2, &beds, &["u"]), format);
            match expected {
                Ok(category) => assert_eq!(got.as_deref(), Ok(category), "{from:?} {level:?} {mapped} {format:?}"),
                Err(part) => assert!(got.as_ref().is_err_and(|why| why.contains(part)), "{from:?} {level:?}: {got:?}"),
            }
        }
        let skipped = Categories { from: Some("type".into()), level: None, mapping: mapping.clone() }.of(&product("g", 3, &[("type", "Gifts")], &["u"]), Format::ShopifyCsv);
        assert_eq!(skipped, Err("the category mapping skips \"Gifts\"".to_string()), "the mapping matches the folder name too");
        let nameless = BTreeMap::from([("Bed frames".to_string(), "--".to_string())]);
        let refused = Categories { from: Some("type".into()), level: None, mapping: nameless }.of(&product("b", 4, &beds, &["u"]), Format::ShopifyCsv);
        assert!(refused.is_err_and(|why| why.contains("makes no folder name")), "never a file at the catalogue's root");
    }

    #[test]
    fn the_summary_says_what_to_train_and_counts_the_skips_it_does_not_list() {
        let skip = |n: usize| Skipped { id: format!("p{n}"), line: n + 1, reason: "no image link".into() };
        let summary = ImportSummary { format: "merchant-xml", products: 12, skipped: (0..10).map(skip).collect(), categories: vec![("bed".into(), 1), ("sofa".into(), 7)], ..ImportSummary::default() };
        let text = render(&summary, Path::new("shop"), Some(&["bed".to_string(), "chair".to_string()]), 3);
        assert!(text.contains("  line 3, p2: no image link\n  and 7 more"), "{text}");
        assert!(text.contains("too few images to train (lookalike train needs 2 per category): bed (1)"), "{text}");
        assert!(text.contains("the current heads do not know sofa: run `lookalike train --data shop` next"), "{text}");
        let known = render(&summary, Path::new("shop"), Some(&["bed".to_string(), "sofa".to_string()]), usize::MAX);
        assert!(known.contains("the current heads know every category") && known.contains("line 10, p9"), "{known}");
    }

    #[test]
    fn the_plan_keeps_one_item_per_picture_and_says_why_products_are_left_out() {
        let lamp = [("product_type", "Lamps")];
        let mut priced = product("a", 2, &lamp, &["http://s/a.png", "http://s/a2.png"]);
        priced.price = Some(Price { amount: 15.0, currency: Some("USD".into()) });
        let mut small = product("b-s", 3, &lamp, &["http://s/b.png"]);
        (small.group, small.colour, small.price) = (Some("b".into()), Some("sea blue".into()), Some(Price { amount: 12.5, currency: None }));
        let mut large = small.clone();
        (large.id, large.line) = ("b-l".into(), 4);
        let products =
            [priced, small, large, product("a", 5, &lamp, &["http://s/x.png"]), product("c", 6, &lamp, &[]), product("", 7, &lamp, &["http://s/y.png"]), product("d", 8, &[], &["http://s/d.png"])];
        let mut summary = ImportSummary::default();
        let wanted = plan(&products, Format::MerchantXml, &ImportOptions::default(), &mut summary);
        let urls: Vec<&str> = wanted.iter().map(|w| w.url.as_str()).collect();
        assert_eq!(urls, ["http://s/a.png", "http://s/a2.png", "http://s/b.png"], "the sizes of one colour share one picture");
        assert!(wanted.iter().all(|w| w.category == "lamps"));
        assert_eq!(wanted[0].metadata.price.as_deref(), Some("15.00 USD"));
        assert_eq!(wanted[0].metadata.group.as_deref(), Some("a"), "a product's pictures are one group");
        assert_eq!((wanted[2].metadata.group.as_deref(), wanted[2].metadata.colour.as_deref(), wanted[2].metadata.price.as_deref()), (Some("b"), Some("sea blue"), Some("12.50")));
        assert_eq!(wanted[2].metadata.feed_id.as_deref(), Some("b-s"));
        let reasons: Vec<(usize, &str)> = summary.skipped.iter().map(|s| (s.line, s.reason.as_str())).collect();
        assert_eq!(
            reasons,
            [(5, "duplicate id: the product on line 2 has it"), (6, "no image link"), (7, "no id"), (8, "no `product_type` to take a category from (--category-from names another field)")]
        );
        assert_eq!(summary.no_currency, ["b-s", "b-l"]);
    }
}
