//! What reading a shop's product feed gives and shares: the formats ([`Format`]: names,
//! detection), the [`Product`] every reader gives and the [`FeedError`] it fails with, prices and
//! their currency ([`read_price`]), and the table reader Merchant TSV and Shopify CSV share. The
//! readers are `merchant.rs` (Google Merchant Center XML, RSS 2.0 or Atom, and TSV: namespaces,
//! repeated and nested fields) and `shopify.rs` (Shopify's products CSV, several rows per
//! product); `text.rs` turns description HTML into text; `super::products` hands a feed to its
//! format's reader. Text only: fetching feeds and images, and what a product becomes in the
//! catalogue, belong to the importer.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::catalogue::parse_price;

/// A feed format this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Google Merchant Center XML: RSS 2.0 `<item>`s or Atom `<entry>`s.
    MerchantXml,
    /// Google Merchant Center tab-separated text with a header row.
    MerchantTsv,
    /// Shopify's products CSV export.
    ShopifyCsv,
}

impl Format {
    /// Every format with its name, for flags and errors.
    pub const ALL: [Format; 3] = [Format::MerchantXml, Format::MerchantTsv, Format::ShopifyCsv];

    /// "merchant-xml" | "merchant-tsv" | "shopify-csv"
    pub fn name(self) -> &'static str {
        match self {
            Format::MerchantXml => "merchant-xml",
            Format::MerchantTsv => "merchant-tsv",
            Format::ShopifyCsv => "shopify-csv",
        }
    }

    /// Detects from the text: first non-blank char (after a UTF-8 BOM) `<` -> MerchantXml; else the
    /// first non-blank line: contains a tab -> MerchantTsv; has a `Handle` column (comma separated,
    /// case-insensitive) -> ShopifyCsv; else None.
    pub fn detect(text: &str) -> Option<Format> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim_start().starts_with('<') {
            return Some(Format::MerchantXml);
        }
        // The raw line, not a trimmed one: a TSV header may start with a tab.
        let first = text.lines().find(|line| !line.trim().is_empty())?;
        if first.contains('\t') {
            Some(Format::MerchantTsv)
        } else if first.split(',').any(|column| column.trim().trim_matches('"').trim().eq_ignore_ascii_case("handle")) {
            Some(Format::ShopifyCsv)
        } else {
            None
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that is none of [`Format::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown feed format {0:?}: expected one of {}", format_names())]
pub struct UnknownFormat(pub String);

/// The formats' names, comma separated, for messages.
fn format_names() -> String {
    Format::ALL.map(Format::name).join(", ")
}

/// Reads a [`Format::name`], in any case.
impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(text: &str) -> Result<Format, UnknownFormat> {
        Format::ALL.into_iter().find(|format| format.name().eq_ignore_ascii_case(text.trim())).ok_or_else(|| UnknownFormat(text.to_string()))
    }
}

/// A price as a feed states it.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// The amount, in the currency's units (not cents).
    pub amount: f64,
    /// The ISO 4217 code when the text names one or uses an unambiguous sign.
    pub currency: Option<String>,
}

/// "15.00 USD" -> 15.0, Some("USD"); "USD 15.00" too; "€12,50" -> Some("EUR"), "£" -> GBP, "¥" -> JPY,
/// "$" alone -> None (ambiguous); "12.50" -> currency None; no number -> None. Amount via parse_price.
pub fn read_price(text: &str) -> Option<Price> {
    let amount = parse_price(text)?;
    Some(Price { amount, currency: currency_of(text) })
}

/// The currency a price text names: a three-letter code, else a sign that means one currency.
fn currency_of(text: &str) -> Option<String> {
    // An upper-case three-letter word is an ISO 4217 code; a lower-case one ("12.50 eur") only when it
    // is the text's sole word, so "12 per kg" names no currency.
    let words: Vec<&str> = text.split(|c: char| !c.is_alphabetic()).filter(|word| !word.is_empty()).collect();
    let is_code = |word: &&str| word.len() == 3 && word.chars().all(|c| c.is_ascii_alphabetic());
    let code = words.iter().find(|word| is_code(word) && word.chars().all(|c| c.is_ascii_uppercase())).or(match words.as_slice() {
        [only] if is_code(only) => Some(only),
        _ => None,
    });
    if let Some(code) = code {
        return Some(code.to_ascii_uppercase());
    }
    // '$' is left out on purpose: US, Canadian, Australian... dollars all use it.
    let sign = text.chars().find_map(|c| match c {
        '€' => Some("EUR"),
        '£' => Some("GBP"),
        '¥' => Some("JPY"),
        _ => None,
    });
    sign.map(str::to_string)
}

/// One product (or one variant with its own picture) as the feed gives it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Product {
    /// 1-based line of the product's element / row in the feed, for messages.
    pub line: usize,
    /// Merchant `id`; Shopify `Variant SKU` or `<handle>#<n>` for a variant, the handle for the
    /// product itself. May be empty (the importer reports it).
    pub id: String,
    /// Merchant `item_group_id`; Shopify handle.
    pub group: Option<String>,
    /// The product's title, as given.
    pub title: Option<String>,
    /// Plain text, see [`html_to_text`](super::html_to_text).
    pub description: Option<String>,
    /// The product's page.
    pub link: Option<String>,
    /// image_link, then additional_image_link(s); empty strings dropped; duplicates dropped, order kept.
    pub images: Vec<String>,
    /// `sale_price` when present and readable, else `price`.
    pub price: Option<Price>,
    /// `price` when a sale_price replaced it (Shopify: `Variant Compare At Price` above the price).
    pub regular_price: Option<Price>,
    /// The feed's price text when it held no number (so the importer can say so).
    pub unreadable_price: Option<String>,
    /// "in stock", "out of stock"...: `_` read as a space, lower-case.
    pub availability: Option<String>,
    /// Merchant `brand`; Shopify `Vendor`.
    pub brand: Option<String>,
    /// Merchant `color` (may be "red/blue"; kept as given); Shopify the Color/Colour option's value.
    pub colour: Option<String>,
    /// Merchant `material`.
    pub material: Option<String>,
    /// Shopify Tags split on commas, trimmed; Merchant `custom_label_0..4` values.
    pub tags: Vec<String>,
    /// Every simple field by its normalised name (product_type, google_product_category, type
    /// (Shopify Type), custom columns...), values trimmed, empty ones absent: what --category-from reads.
    pub fields: BTreeMap<String, String>,
}

/// A feed that cannot be read, with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct FeedError {
    /// The 1-based line the problem was found on.
    pub line: usize,
    /// What is wrong, and what to do about it.
    pub message: String,
}

impl FeedError {
    pub(super) fn new(line: usize, message: impl Into<String>) -> FeedError {
        FeedError { line, message: message.into() }
    }
}

// ---------------------------------------------------------------------------------------------
// What the readers share: prices as a product holds them, and the table reader of TSV and CSV.

/// A product's price, regular price and unreadable price text, as [`Product`] holds them.
pub(super) type Prices = (Option<Price>, Option<Price>, Option<String>);

/// A row of a TSV or CSV file: its 1-based line and its values.
pub(super) type Row = (usize, Vec<String>);

/// A TSV or CSV file: the header, then each row with its 1-based line.
pub(super) struct Table {
    pub(super) header_line: usize,
    pub(super) header: Vec<String>,
    pub(super) rows: Vec<Row>,
}

/// Reads delimited text with the csv crate; every row must have the header's number of fields.
pub(super) fn read_table(text: &str, delimiter: u8, separator_name: &str) -> Result<Table, FeedError> {
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut lines = LineCounter::new(text);
    let mut header: Option<Row> = None;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| {
            let line = error.position().map_or(1, |position| LineCounter::new(text).line_at(position.byte() as usize));
            FeedError::new(line, format!("cannot read the file ({error}): check its quoting, or pass --format"))
        })?;
        let line = record.position().map_or(1, |position| lines.line_at(position.byte() as usize));
        let values: Vec<String> = record.iter().map(str::to_string).collect();
        if values.iter().all(|value| value.trim().is_empty()) {
            continue;
        }
        match &header {
            None => header = Some((line, values)),
            Some((_, names)) if names.len() != values.len() => {
                let message = format!(
                    "this row has {} fields but the header has {}: a {separator_name} inside a value needs the value in double quotes (with inner quotes doubled), or pass --format",
                    values.len(),
                    names.len()
                );
                return Err(FeedError::new(line, message));
            }
            Some(_) => rows.push((line, values)),
        }
    }
    let (header_line, header) = header.unwrap_or((1, Vec::new()));
    Ok(Table { header_line, header, rows })
}

/// Line numbers of csv records. The csv crate's own count skips blank lines and CRLF pairs, so lines
/// are counted here from the record's byte offset, moving forward only (records come in order).
struct LineCounter<'a> {
    bytes: &'a [u8],
    at: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> LineCounter<'a> {
        LineCounter { bytes: text.as_bytes(), at: 0, line: 1 }
    }

    /// The 1-based line of the record whose position is `byte`: csv reports the offset before the
    /// line breaks (and blank lines) that precede the record, so those are skipped first.
    fn line_at(&mut self, byte: usize) -> usize {
        let mut start = byte.clamp(self.at, self.bytes.len());
        while self.bytes.get(start).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            start += 1;
        }
        self.line += self.bytes[self.at..start].iter().filter(|&&b| b == b'\n').count();
        self.at = start;
        self.line
    }
}

/// Adds a value unless the list has it already.
pub(super) fn push_unique(list: &mut Vec<String>, value: String) {
    if !value.is_empty() && !list.contains(&value) {
        list.push(value);
    }
}

/// Helpers the feed readers' tests share: small constructors, and random products (with what
/// parsing must give back) that the writers in `merchant.rs` and `shopify.rs` put into feeds.
#[cfg(test)]
pub(super) mod testing {
    use std::collections::BTreeMap;

    use super::{Price, Product};
    use crate::rng::Rng;

    pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    pub fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    pub fn price(amount: f64, currency: Option<&str>) -> Option<Price> {
        Some(Price { amount, currency: currency.map(str::to_string) })
    }

    // -----------------------------------------------------------------------------------------
    // Property tests: random products written by the test writers (in `merchant.rs` and `shopify.rs`) parse back the same.

    /// Words for titles and descriptions: commas, quotes, unicode and `&<>` (never `<` before a
    /// letter, so plain text stays plain text).
    const WORDS: [&str; 24] = [
        "Chair",
        "oak",
        "café",
        "naïve",
        "Größe",
        "日本",
        "A&B",
        "x < y",
        "5 > 3",
        "\"quoted\"",
        "it's",
        "50%",
        "comma,",
        "semi;colon",
        "#1",
        "😀",
        "&amp;",
        "Ünïcödé",
        "a/b",
        "<>",
        "&",
        "R&D",
        "==",
        "x=\"1\"",
    ];

    /// A random product as the writers put it in a feed, with what parsing must give back.
    #[derive(Debug, Clone)]
    pub struct Sample {
        pub id: String,
        pub title: Option<String>,
        pub description: Option<String>,
        pub link: Option<String>,
        pub images: Vec<String>,
        pub price_text: String,
        pub price: Option<Price>,
        pub brand: Option<String>,
        pub colour: Option<String>,
        pub availability: Option<(String, String)>,
        pub tags: Vec<String>,
        /// Shopify only: the colours of variants that have their own image.
        pub variants: Vec<String>,
    }

    pub fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
        items[rng.below(items.len() as u64) as usize]
    }

    fn words(rng: &mut Rng, most: u64) -> String {
        let count = 1 + rng.below(most);
        (0..count).map(|_| pick(rng, &WORDS)).collect::<Vec<_>>().join(" ")
    }

    fn maybe(rng: &mut Rng, value: String) -> Option<String> {
        (rng.below(4) != 0).then_some(value)
    }

    /// A price text in one of the forms shops write, with the price it means.
    fn random_price(rng: &mut Rng) -> (String, Option<Price>) {
        let cents = rng.below(10_000_000);
        let (whole, fraction) = (cents / 100, cents % 100);
        let amount = cents as f64 / 100.0;
        let (text, currency) = match rng.below(8) {
            0 => (format!("{whole}.{fraction:02} USD"), Some("USD")),
            1 => (format!("USD {whole}.{fraction:02}"), Some("USD")),
            2 => (format!("€{whole},{fraction:02}"), Some("EUR")),
            3 => (format!("£{whole}.{fraction:02}"), Some("GBP")),
            4 => (format!("{whole}.{fraction:02}"), None),
            5 => (format!("{whole},{fraction:02} EUR"), Some("EUR")),
            6 => return (String::new(), None),
            _ => return ("ask".to_string(), None),
        };
        (text, price(amount, currency))
    }

    fn sample(rng: &mut Rng, number: usize) -> Sample {
        let letters = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let stem: String = (0..1 + rng.below(8)).map(|_| letters[rng.below(letters.len() as u64) as usize] as char).collect();
        let id = format!("{stem}-{number}");
        let (price_text, price) = random_price(rng);
        let title = words(rng, 5);
        let description = words(rng, 12);
        let brand = words(rng, 2);
        let colour = pick(rng, &["Red", "Navy Blue", "red/blue", "Grün"]).to_string();
        let availability = [("in_stock", "in stock"), ("out of stock", "out of stock"), ("Preorder", "preorder")][rng.below(3) as usize];
        Sample {
            link: maybe(rng, format!("https://shop.example/p/{id}?ref=feed&size=m")),
            images: (0..rng.below(4)).map(|k| format!("https://img.example/{id}/{k}.jpg")).collect(),
            title: maybe(rng, title),
            description: maybe(rng, description),
            brand: maybe(rng, brand),
            colour: maybe(rng, colour),
            availability: maybe(rng, String::new()).map(|_| (availability.0.to_string(), availability.1.to_string())),
            tags: (0..rng.below(4)).map(|_| pick(rng, &["summer", "sale", "new in", "eco"]).to_string()).collect(),
            variants: (0..rng.below(3)).map(|_| pick(rng, &["Red", "Blue", "Sand Beige"]).to_string()).collect(),
            id,
            price_text,
            price,
        }
    }

    pub fn samples(rng: &mut Rng) -> Vec<Sample> {
        (0..1 + rng.below(5) as usize).map(|number| sample(rng, number)).collect()
    }

    /// The number the next line written to `out` will have.
    pub fn next_line(out: &str) -> usize {
        out.matches('\n').count() + 1
    }

    /// A delimited field, quoted when it must be (and sometimes when it need not).
    pub fn field(rng: &mut Rng, value: &str, delimiter: char) -> String {
        if value.contains(['"', delimiter, '\n']) || rng.below(5) == 0 {
            format!("\"{}\"", value.replace('"', "\"\""))
        } else {
            value.to_string()
        }
    }

    /// A product without the parts a property test does not compare.
    pub fn comparable(product: &Product) -> Product {
        Product { line: 0, fields: BTreeMap::new(), ..product.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::merchant::testing::{merchant_tsv, write_tsv, write_xml, XML};
    use crate::feed::parse::testing::{price, samples};
    use crate::feed::products;
    use crate::feed::shopify::testing::{write_shopify, SHOPIFY};
    use crate::feed::text::html_to_text;
    use crate::rng::Rng;

    #[test]
    fn detect_tells_the_formats_apart() {
        assert_eq!(Format::detect(XML), Some(Format::MerchantXml));
        assert_eq!(Format::detect(&merchant_tsv()), Some(Format::MerchantTsv));
        assert_eq!(Format::detect(SHOPIFY), Some(Format::ShopifyCsv));
        assert_eq!(Format::detect("\n  \"handle\",\"title\"\n"), Some(Format::ShopifyCsv));
        assert_eq!(Format::detect("hello"), None);
        assert_eq!(Format::detect(""), None);
    }

    #[test]
    fn format_names_round_trip_and_unknown_ones_list_the_names() {
        for format in Format::ALL {
            assert_eq!(format.name().parse::<Format>(), Ok(format));
            assert_eq!(format.to_string(), format.name());
        }
        let error = "xml".parse::<Format>().unwrap_err().to_string();
        assert!(error.contains("\"xml\"") && error.contains("merchant-xml, merchant-tsv, shopify-csv"), "{error}");
    }

    #[test]
    fn a_row_with_a_missing_field_names_its_line() {
        let error = products("id\ttitle\tprice\n1\tLamp\t10\n2\tChair\n3\tDesk\t5\n", Format::MerchantTsv).unwrap_err();
        assert_eq!(error.line, 3, "{error}");
        assert!(error.message.contains("2 fields but the header has 3"), "{error}");
        // A quoted value spanning lines counts them: the short row after it is on line 4.
        let error = products("Handle,Title,Body (HTML)\na,A,\"<p>one</p>\n<p>two</p>\"\nb,B\n", Format::ShopifyCsv).unwrap_err();
        assert_eq!(error.line, 4, "{error}");
        let error = products("Title,Price\nLamp,1\n", Format::ShopifyCsv).unwrap_err();
        assert!(error.message.contains("no `Handle` column"), "{error}");
    }

    #[test]
    fn prices_and_currencies() {
        assert_eq!(read_price("15.00 USD"), price(15.0, Some("USD")));
        assert_eq!(read_price("USD 15.00"), price(15.0, Some("USD")));
        assert_eq!(read_price("€12,50"), price(12.5, Some("EUR")));
        assert_eq!(read_price("£3"), price(3.0, Some("GBP")));
        assert_eq!(read_price("¥500"), price(500.0, Some("JPY")));
        assert_eq!(read_price("$1,299.00"), price(1299.0, None));
        assert_eq!(read_price("12.50"), price(12.5, None));
        assert_eq!(read_price("1.299,00 eur"), price(1299.0, Some("EUR")));
        assert_eq!(read_price("12 per kg"), price(12.0, None));
        assert_eq!(read_price("free"), None);
        assert_eq!(read_price(""), None);
    }

    /// Random damage to a valid text: bytes replaced by syntax characters, ranges cut or repeated, a
    /// truncation; the result is read as UTF-8 lossily (parse takes text).
    fn mutate(rng: &mut Rng, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        let specials = b"<>&;\"'\t,\n\r/!?=#: ]x\xc3";
        for _ in 0..1 + rng.below(6) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len() as u64) as usize;
            let end = (at + 1 + rng.below(20) as usize).min(bytes.len());
            match rng.below(4) {
                0 => bytes[at] = specials[rng.below(specials.len() as u64) as usize],
                1 => drop(bytes.drain(at..end)),
                2 => bytes.splice(at..at, bytes[at..end].to_vec()).for_each(drop),
                _ => bytes.truncate(at),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn damaged_feeds_never_panic() {
        let mut rng = Rng::new(3);
        for _ in 0..1200 {
            let samples = samples(&mut rng);
            let texts = [write_xml(&mut rng, &samples).0, write_tsv(&mut rng, &samples).0, write_shopify(&mut rng, &samples).0];
            for text in &texts {
                let damaged = mutate(&mut rng, text);
                let _ = Format::detect(&damaged);
                for format in Format::ALL {
                    // Errors are fine; an Ok result must still be well-formed.
                    if let Ok(products) = products(&damaged, format) {
                        assert!(products.iter().all(|product| product.line >= 1 && product.line <= damaged.lines().count().max(1)), "{damaged}");
                    }
                }
                let _ = html_to_text(&damaged);
            }
        }
    }
}
