//! The catalogue on disk: one sub-folder per category, images inside, and an optional metadata
//! file (CSV with a header, or JSON lines) giving each image a title, price, link, image URL,
//! description and tags: what replies show and what words search. Plain files and hashes
//! only: no torch, no Discord.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod edit;
pub use edit::{add, read_rows, remove, write_rows, EditError};

/// What a reply shows about an item besides its picture. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    /// The product page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Where the picture is served from, when the catalogue has URLs (replies link it instead of
    /// attaching the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// A sentence or two about the item, searched with its title and tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Words a shop files the item under ("canvas", "summer").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The maker, as a shop's feed names it; searched with the item's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// The colour the shop gives ("sea blue"): searched with the item's words, and how a
    /// product's variants are named in replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub material: Option<String>,
    /// "in stock", "out of stock", "preorder", as the feed says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<String>,
    /// The product's id in the shop's feed: how a later import of the feed finds the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_id: Option<String>,
    /// The product the item is a variant (or another picture) of: items of one group show once
    /// in an answer, as the best-matching one, with the others' colours named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl Metadata {
    pub fn is_empty(&self) -> bool {
        *self == Metadata::default()
    }

    /// The item's own words: title, description, brand, colour, material and tags, as full-text
    /// search and the item's sentence vector read them. Empty when it has none.
    pub fn words(&self) -> String {
        let said = [&self.title, &self.description, &self.brand, &self.colour, &self.material];
        let mut parts: Vec<&str> = said.into_iter().flatten().map(|part| part.trim().trim_end_matches('.')).collect();
        let tags = self.tags.join(", ");
        if !tags.is_empty() {
            parts.push(&tags);
        }
        parts.join(". ")
    }

    /// The price as a number, when it reads as one (see [`parse_price`]).
    pub fn price_value(&self) -> Option<f64> {
        self.price.as_deref().and_then(parse_price)
    }
}

/// A price written as shops write it: "19.99", "$1,299.00", "15.00 USD", "€12,50", "1.299,00
/// EUR". Currency signs and codes are dropped. The last separator is the decimal point unless
/// exactly three digits follow it and it is a comma, or one of several separators ("1,299",
/// "1.299,00"); a lone dot before three digits is read as decimal ("1.250" is 1.25, as most
/// English-language feeds mean it). `None` for text that holds no number, or more than one
/// ("10-20").
pub fn parse_price(text: &str) -> Option<f64> {
    let digits: String = text.trim().chars().filter(|c| !c.is_alphabetic() && !matches!(c, '$' | '€' | '£' | '¥' | ' ' | '\u{a0}')).collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit() || c == '.' || c == ',') || !digits.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    // The last separator is decimal when two digits or one follow it (or a dot with any
    // number of digits but three); every other separator groups thousands.
    let decimal = digits.rfind(['.', ',']).filter(|&at| {
        let after = digits.len() - at - 1;
        let separator = digits.as_bytes()[at];
        after != 3 || (separator == b'.' && digits.matches('.').count() == 1 && !digits.contains(','))
    });
    let mut plain = String::new();
    for (at, c) in digits.char_indices() {
        match c {
            '.' | ',' if Some(at) == decimal => plain.push('.'),
            '.' | ',' => {}
            _ => plain.push(c),
        }
    }
    plain.parse().ok().filter(|value: &f64| value.is_finite())
}

/// The fewest images a category needs for `lookalike train`: one to learn from, one held out
/// to check on.
pub const MIN_TRAINING_IMAGES: usize = 2;

/// Image file extensions read as images; anything else in a category folder is skipped.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "gif", "bmp"];

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub path: PathBuf,
    pub class: usize,
}

/// Every image under `dir/<category>/`, categories sorted by name (or in `known` order).
pub fn labelled(dir: &Path, known: Option<&[String]>) -> anyhow::Result<(Vec<String>, Vec<Example>, Vec<PathBuf>)> {
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}: expected one sub-folder per category", dir.display()))?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    classes.sort();
    if let Some(known) = known {
        if let Some(extra) = classes.iter().find(|c| !known.contains(c)) {
            anyhow::bail!("{} has a category `{extra}` that the training folder lacks", dir.display());
        }
        classes = known.to_vec();
    }
    anyhow::ensure!(!classes.is_empty(), "{} has no category sub-folders", dir.display());
    let (mut examples, mut not_images) = (Vec::new(), Vec::new());
    for (class, name) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(name)).map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect()).unwrap_or_default();
        files.sort();
        for path in files {
            let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
            if IMAGE_EXTENSIONS.contains(&extension.as_str()) {
                examples.push(Example { path, class });
            } else {
                not_images.push(path);
            }
        }
    }
    Ok((classes, examples, not_images))
}

/// One image file in the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `category/file name`: stable across machines, the key of everything else.
    pub id: String,
    pub path: PathBuf,
    pub category: String,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch: with the size, it tells whether a
    /// file's hash from the last index can be trusted without reading the file again.
    pub modified_ns: i64,
}

/// The catalogue as found on disk.
#[derive(Debug, Clone)]
pub struct Scan {
    pub root: PathBuf,
    pub categories: Vec<String>,
    pub entries: Vec<Entry>,
    /// Files in category folders that are not images (by extension): skipped, and listed.
    pub not_images: Vec<PathBuf>,
}

/// Lists the catalogue under `root`.
pub fn scan(root: &Path) -> anyhow::Result<Scan> {
    let (categories, examples, not_images) = labelled(root, None).with_context(|| format!("cannot read the catalogue {}", root.display()))?;
    let mut entries = Vec::with_capacity(examples.len());
    for example in examples {
        let category = categories[example.class].clone();
        let file = example.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stat = std::fs::metadata(&example.path).with_context(|| format!("cannot read {}", example.path.display()))?;
        let modified_ns = stat.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as i64);
        entries.push(Entry { id: format!("{category}/{file}"), path: example.path, category, size: stat.len(), modified_ns });
    }
    Ok(Scan { root: root.to_path_buf(), categories, entries, not_images })
}

/// The sha256 of a file's bytes, in hex: identical images share it, changed ones do not.
pub fn content_hash(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Metadata by key: an item is found by its id (`category/file`), its file name, or its file
/// name without extension, whichever the file's `path` (or `id`) column holds.
#[derive(Debug, Clone, Default)]
pub struct MetadataTable {
    rows: HashMap<String, Metadata>,
}

impl MetadataTable {
    /// Reads a CSV file with a header row (`path` or `id`, then any of [`COLUMNS`]; tags
    /// separated by `;`, `|` or commas) or, for `.jsonl` / `.json` files, one JSON object per
    /// line with the same keys. An empty path means no metadata.
    pub fn load(path: &Path) -> anyhow::Result<MetadataTable> {
        if path.as_os_str().is_empty() {
            return Ok(MetadataTable::default());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the catalogue metadata {} (config catalogue.metadata)", path.display()))?;
        Ok(MetadataTable { rows: parse_rows(path, &text)?.into_iter().collect() })
    }

    /// The metadata of the item `id` (`category/file`), if any row names it.
    pub fn get(&self, id: &str) -> Metadata {
        keys(id).iter().find_map(|key| self.rows.get(*key)).cloned().unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What a metadata row (or a command) may call the item `id`: the id, its file name, its stem.
fn keys(id: &str) -> [&str; 3] {
    let file = id.rsplit('/').next().unwrap_or(id);
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    [id, file, stem]
}

fn is_json_lines(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jsonl" || e == "json")
}

/// The rows of a metadata file, in file order: (the key its `path` or `id` holds, metadata).
fn parse_rows(path: &Path, text: &str) -> anyhow::Result<Vec<(String, Metadata)>> {
    let rows = if is_json_lines(path) { parse_json_lines(text) } else { parse_csv(text) };
    rows.with_context(|| format!("{} is not valid catalogue metadata", path.display()))
}

fn parse_csv(text: &str) -> anyhow::Result<Vec<(String, Metadata)>> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers: Vec<String> = reader.headers()?.iter().map(|h| h.to_ascii_lowercase()).collect();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let key = column("path").or_else(|| column("id")).context("the header row needs a `path` or `id` column")?;
    if let Some(unknown) = headers.iter().find(|h| !["path", "id"].contains(&h.as_str()) && !COLUMNS.contains(&h.as_str())) {
        anyhow::bail!("unknown column `{unknown}`: the columns are path or id, then {}", COLUMNS.join(", "));
    }
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("row {}", line + 2))?;
        let cells = COLUMNS.map(|name| column(name).and_then(|i| record.get(i)).filter(|v| !v.is_empty()).map(str::to_string));
        rows.push((record.get(key).unwrap_or_default().to_string(), Metadata::from_cells(cells)));
    }
    Ok(rows)
}

/// The metadata columns of a CSV file, in the order it is written.
pub const COLUMNS: [&str; 12] = ["title", "price", "link", "image_url", "description", "tags", "brand", "colour", "material", "availability", "feed_id", "group"];

impl Metadata {
    /// From the cells of [`COLUMNS`], in that order (tags split as [`split_tags`] does).
    fn from_cells(cells: [Option<String>; 12]) -> Metadata {
        let [title, price, link, image_url, description, tags, brand, colour, material, availability, feed_id, group] = cells;
        let tags = tags.map(|tags| split_tags(&tags)).unwrap_or_default();
        Metadata { title, price, link, image_url, description, tags, brand, colour, material, availability, feed_id, group }
    }

    /// The cells of [`COLUMNS`], in that order (tags joined with "; ").
    fn cells(&self) -> [String; 12] {
        let cell = |v: &Option<String>| v.clone().unwrap_or_default();
        [
            cell(&self.title),
            cell(&self.price),
            cell(&self.link),
            cell(&self.image_url),
            cell(&self.description),
            self.tags.join("; "),
            cell(&self.brand),
            cell(&self.colour),
            cell(&self.material),
            cell(&self.availability),
            cell(&self.feed_id),
            cell(&self.group),
        ]
    }
}

/// Tags from one cell or flag: separated by `;`, `|` or commas, trimmed, empty ones dropped.
pub fn split_tags(text: &str) -> Vec<String> {
    text.split([';', '|', ',']).map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

fn parse_json_lines(text: &str) -> anyhow::Result<Vec<(String, Metadata)>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        path: Option<String>,
        id: Option<String>,
        #[serde(flatten)]
        metadata: Metadata,
    }
    let mut rows = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line: Line = serde_json::from_str(line).with_context(|| format!("line {}", number + 1))?;
        let key = line.path.or(line.id).with_context(|| format!("line {} has neither `path` nor `id`", number + 1))?;
        rows.push((key, line.metadata));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_read_as_shops_write_them() {
        let table: [(&str, Option<f64>); 14] = [
            ("19.99", Some(19.99)),
            ("$1,299.00", Some(1299.0)),
            ("15.00 USD", Some(15.0)),
            ("€12,50", Some(12.5)),
            ("1.299,00 EUR", Some(1299.0)),
            ("1,299", Some(1299.0)),
            ("2.5", Some(2.5)),
            ("£ 7", Some(7.0)),
            ("1.250", Some(1.25)),
            ("0.999", Some(0.999)),
            ("free", None),
            ("10-20", None),
            ("", None),
            ("call us", None),
        ];
        for (text, expected) in table {
            assert_eq!(parse_price(text), expected, "{text:?}");
        }
    }

    /// Any amount, written as English or European shops write it, with or without a currency,
    /// reads back as itself; random text never panics and never reads as a number it is not.
    #[test]
    fn any_price_written_any_common_way_reads_back() {
        let mut rng = crate::rng::Rng::new(41);
        let grouped = |units: u64, separator: char| {
            let digits = units.to_string();
            let mut out = String::new();
            for (at, digit) in digits.chars().enumerate() {
                if at > 0 && (digits.len() - at).is_multiple_of(3) {
                    out.push(separator);
                }
                out.push(digit);
            }
            out
        };
        for _ in 0..5000 {
            let cents = rng.below(100_000_000);
            let value = cents as f64 / 100.0;
            let (english, european) = (format!("{}.{:02}", grouped(cents / 100, ','), cents % 100), format!("{},{:02}", grouped(cents / 100, '.'), cents % 100));
            for text in [format!("{value:.2}"), format!("${english}"), format!("{english} USD"), format!("€{european}"), format!("{european} EUR")] {
                let read = parse_price(&text).unwrap_or_else(|| panic!("{text:?} did not read"));
                assert!((read - value).abs() < 1e-6, "{text:?} read {read}, not {value}");
            }
            let junk: String = (0..rng.below(12)).map(|_| ['1', '0', '.', ',', '-', '$', 'a', ' ', 'é', '9'][rng.below(10) as usize]).collect();
            assert!(parse_price(&junk).is_none_or(|read| read.is_finite() && read >= 0.0), "{junk:?}");
        }
    }

    #[test]
    fn tags_round_trip_through_one_cell() {
        let mut rng = crate::rng::Rng::new(43);
        for _ in 0..1000 {
            let tags: Vec<String> = (0..rng.below(6)).map(|_| (0..1 + rng.below(8)).map(|_| (b'a' + rng.below(26) as u8) as char).collect()).collect();
            assert_eq!(split_tags(&tags.join(["; ", "|", ", "][rng.below(3) as usize])), tags);
        }
    }

    #[test]
    fn a_tiff_is_not_taken_for_an_image_nobody_can_decode() {
        // The CLI, the catalogue scan and the bot all read this one list; `image` is built
        // without TIFF, so a .tif would only have failed later, at decoding.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bag")).unwrap();
        std::fs::write(dir.path().join("bag/0.png"), b"x").unwrap();
        std::fs::write(dir.path().join("bag/scan.tif"), b"II*\0").unwrap();
        let (_, examples, not_images) = labelled(dir.path(), None).unwrap();
        assert_eq!(examples.len(), 1);
        assert_eq!(not_images, [dir.path().join("bag/scan.tif")]);
    }

    #[test]
    fn scan_lists_images_by_category_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for (category, file) in [("bag", "a.png"), ("bag", "b.jpg"), ("coat", "c.png")] {
            std::fs::create_dir_all(dir.path().join(category)).unwrap();
            std::fs::write(dir.path().join(category).join(file), file).unwrap();
        }
        std::fs::write(dir.path().join("coat/notes.txt"), "x").unwrap();
        let scan = scan(dir.path()).unwrap();
        assert_eq!(scan.categories, ["bag", "coat"]);
        assert_eq!(scan.entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["bag/a.png", "bag/b.jpg", "coat/c.png"]);
        assert_eq!(scan.entries[0].size, 5);
        assert_eq!(scan.not_images, [dir.path().join("coat/notes.txt")]);
        assert_eq!(content_hash(&scan.entries[0].path).unwrap(), hex::encode(Sha256::digest(b"a.png")));
    }

    #[test]
    fn metadata_from_csv_and_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let csv_path = dir.path().join("items.csv");
        std::fs::write(&csv_path, "path,title,price,link\nbag/a.png,\"Tote, canvas\",19.99,https://shop.example/a\nc,Wool coat,,\n").unwrap();
        let table = MetadataTable::load(&csv_path).unwrap();
        assert_eq!(table.get("bag/a.png").title.as_deref(), Some("Tote, canvas"));
        assert_eq!(table.get("bag/a.png").price.as_deref(), Some("19.99"));
        assert_eq!(table.get("coat/c.png").title.as_deref(), Some("Wool coat"), "found by file stem");
        assert_eq!(table.get("coat/c.png").price, None, "empty cells are absent");
        assert!(table.get("coat/zzz.png").is_empty());

        let jsonl = dir.path().join("items.jsonl");
        std::fs::write(&jsonl, "{\"id\": \"a.png\", \"title\": \"Tote\", \"image_url\": \"https://cdn.example/a.png\"}\n\n").unwrap();
        assert_eq!(MetadataTable::load(&jsonl).unwrap().get("bag/a.png").image_url.as_deref(), Some("https://cdn.example/a.png"));

        std::fs::write(&csv_path, "path,title,description,tags\nbag/a.png,Tote,Heavy canvas.,canvas; summer|beach\n").unwrap();
        let tote = MetadataTable::load(&csv_path).unwrap().get("bag/a.png");
        assert_eq!(tote.tags, ["canvas", "summer", "beach"]);
        assert_eq!(tote.words(), "Tote. Heavy canvas. canvas, summer, beach");
        std::fs::write(&jsonl, "{\"id\": \"a.png\", \"description\": \"Soft.\", \"tags\": [\"wool\"]}\n").unwrap();
        assert_eq!(MetadataTable::load(&jsonl).unwrap().get("bag/a.png").words(), "Soft. wool");

        std::fs::write(&csv_path, "path,color\nbag/a.png,red\n").unwrap();
        let err = format!("{:#}", MetadataTable::load(&csv_path).unwrap_err());
        assert!(err.contains("unknown column `color`"), "{err}");
        std::fs::write(&jsonl, "{\"title\": \"no key\"}\n").unwrap();
        assert!(format!("{:#}", MetadataTable::load(&jsonl).unwrap_err()).contains("neither `path` nor `id`"));
        assert!(MetadataTable::load(Path::new("")).unwrap().is_empty());
    }
}
