//! Reading a shop's product feed into plain [`Product`]s: Google Merchant Center XML (RSS 2.0 or
//! Atom) and TSV, and Shopify's products CSV export. This file owns the formats and their quirks
//! (namespaces, repeated and nested fields, Shopify's several rows per product), reading prices and
//! their currency, turning description HTML into plain text, and the category helpers ([`level`],
//! [`slug`]) that name catalogue folders. It reads text only: fetching feeds and images, and deciding
//! what a product becomes in the catalogue, belong to the importer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use crate::catalogue::parse_price;

/// The namespace of Google Merchant's `g:` elements.
const GOOGLE_NAMESPACE: &str = "http://base.google.com/ns/1.0";

/// The columns a Merchant feed needs, named when a TSV lacks its `id` column.
const MERCHANT_NEEDS: [&str; 5] = ["id", "title", "link", "image_link", "price"];

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
    /// Plain text, see [`html_to_text`].
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
    fn new(line: usize, message: impl Into<String>) -> FeedError {
        FeedError { line, message: message.into() }
    }
}

/// Parses the whole feed. Errors: XML not well-formed (roxmltree's error, with its line), a root that
/// is neither rss nor feed, no items; TSV/CSV: missing required column (`id` for Merchant TSV, the
/// message listing the columns found and the ones a Merchant feed needs; `Handle` for Shopify), a row
/// with the wrong number of fields, bad quoting. The message says what to do.
pub fn parse(text: &str, format: Format) -> Result<Vec<Product>, FeedError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        Format::MerchantXml => parse_xml(text),
        Format::MerchantTsv => parse_tsv(text),
        Format::ShopifyCsv => parse_shopify(text),
    }
}

// ---------------------------------------------------------------------------------------------
// Google Merchant Center: XML and TSV share the field names and their meaning.

/// A Merchant attribute's name as written in a header or tag: "g:Image Link" -> "image_link".
fn merchant_name(raw: &str) -> String {
    let lower = raw.trim().to_lowercase();
    lower.strip_prefix("g:").unwrap_or(&lower).trim().replace(' ', "_")
}

fn parse_xml(text: &str) -> Result<Vec<Product>, FeedError> {
    // Some feeds carry a DOCTYPE; roxmltree guards against entity expansion attacks itself.
    let options = roxmltree::ParsingOptions { allow_dtd: true, ..roxmltree::ParsingOptions::default() };
    let document = roxmltree::Document::parse_with_options(text, options)
        .map_err(|error| FeedError::new(error.pos().row as usize, format!("the feed is not well-formed XML ({error}): fix the feed, or pass --format if it is a TSV or CSV file")))?;
    let root = document.root_element();
    let (wanted, place) = match root.tag_name().name() {
        "rss" => ("item", "<rss><channel>"),
        "feed" => ("entry", "<feed>"),
        other => {
            let message = format!("the XML's root element is <{other}>, not <rss> (RSS 2.0) or <feed> (Atom): this is not a Google Merchant feed; pass --format if it is another format");
            return Err(FeedError::new(line_of(&document, root), message));
        }
    };
    // RSS keeps items in <channel>; a few generators put them straight under <rss>.
    let parents = std::iter::once(root).chain(root.children().filter(|node| node.is_element() && node.tag_name().name() == "channel"));
    let items: Vec<roxmltree::Node> = parents.flat_map(|parent| parent.children()).filter(|node| node.is_element() && node.tag_name().name() == wanted).collect();
    if items.is_empty() {
        return Err(FeedError::new(line_of(&document, root), format!("no <{wanted}> elements in {place}: the feed lists no products")));
    }
    let own = root.tag_name().namespace();
    Ok(items.into_iter().map(|item| merchant_product(line_of(&document, item), &xml_fields(item, own))).collect())
}

/// The 1-based line a node starts on.
fn line_of(document: &roxmltree::Document, node: roxmltree::Node) -> usize {
    document.text_pos_at(node.range().start).row as usize
}

/// An item's simple fields in document order: elements without element children, in the g:
/// namespace, no namespace or the feed's own (Atom's default), by normalised local name.
fn xml_fields(item: roxmltree::Node, own: Option<&str>) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    for child in item.children().filter(roxmltree::Node::is_element) {
        let namespace = child.tag_name().namespace();
        if !(namespace.is_none() || namespace == Some(GOOGLE_NAMESPACE) || namespace == own) || child.children().any(|node| node.is_element()) {
            continue;
        }
        let local = child.tag_name().name();
        let mut text: String = child.children().filter(roxmltree::Node::is_text).filter_map(|node| node.text()).collect();
        if local == "link" && text.trim().is_empty() {
            // Atom's <link href="..."/>: the page is the alternate link, other rels are not it.
            if child.attribute("rel").is_some_and(|rel| rel != "alternate") {
                continue;
            }
            text = child.attribute("href").unwrap_or_default().to_string();
        }
        fields.push((merchant_name(local), text));
    }
    fields
}

/// A product from a Merchant item's fields (name already normalised, in feed order).
fn merchant_product(line: usize, pairs: &[(String, String)]) -> Product {
    let mut fields = BTreeMap::new();
    let mut extra_images = Vec::new();
    for (name, value) in pairs {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        // The only field that repeats on purpose; it may also hold a comma-separated list.
        if name == "additional_image_link" {
            extra_images.extend(value.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_string));
        }
        // Of a repeated field the first value counts.
        fields.entry(name.clone()).or_insert_with(|| value.to_string());
    }
    let get = |name: &str| fields.get(name).cloned();
    let mut images = Vec::new();
    for url in get("image_link").into_iter().chain(extra_images) {
        push_unique(&mut images, url);
    }
    let (price, regular_price, unreadable_price) = merchant_prices(get("price"), get("sale_price"));
    Product {
        line,
        id: get("id").unwrap_or_default(),
        group: get("item_group_id"),
        title: get("title"),
        description: get("description").map(|html| html_to_text(&html)).filter(|text| !text.is_empty()),
        link: get("link"),
        images,
        price,
        regular_price,
        unreadable_price,
        availability: get("availability").map(|text| text.replace('_', " ").to_lowercase()),
        brand: get("brand"),
        colour: get("color").or_else(|| get("colour")),
        material: get("material"),
        tags: (0..5).filter_map(|n| get(&format!("custom_label_{n}"))).collect(),
        fields,
    }
}

/// A product's price, regular price and unreadable price text, as [`Product`] holds them.
type Prices = (Option<Price>, Option<Price>, Option<String>);

/// Adds a value unless the list has it already.
fn push_unique(list: &mut Vec<String>, value: String) {
    if !value.is_empty() && !list.contains(&value) {
        list.push(value);
    }
}

/// (price, regular price, unreadable text) from Merchant `price` and `sale_price`.
fn merchant_prices(price: Option<String>, sale: Option<String>) -> Prices {
    let regular = price.as_deref().and_then(read_price);
    if let Some(sale) = sale.as_deref().and_then(read_price) {
        return (Some(sale), regular, None);
    }
    // Only a price text that was there but held no number is worth reporting.
    let unreadable = if regular.is_none() { price.or(sale) } else { None };
    (regular, None, unreadable)
}

/// A row of a TSV or CSV file: its 1-based line and its values.
type Row = (usize, Vec<String>);

/// A TSV or CSV file: the header, then each row with its 1-based line.
struct Table {
    header_line: usize,
    header: Vec<String>,
    rows: Vec<Row>,
}

/// Reads delimited text with the csv crate; every row must have the header's number of fields.
fn read_table(text: &str, delimiter: u8, separator_name: &str) -> Result<Table, FeedError> {
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

fn parse_tsv(text: &str) -> Result<Vec<Product>, FeedError> {
    let table = read_table(text, b'\t', "tab")?;
    let names: Vec<String> = table.header.iter().map(|name| merchant_name(name)).collect();
    if !names.iter().any(|name| name == "id") {
        let found = if table.header.is_empty() { "no columns".to_string() } else { table.header.iter().map(|name| format!("`{}`", name.trim())).collect::<Vec<_>>().join(", ") };
        let message = format!("no `id` column: the header has {found}; a Merchant feed needs {}. Fix the header row, or pass --format if this is not a Merchant TSV", MERCHANT_NEEDS.join(", "));
        return Err(FeedError::new(table.header_line, message));
    }
    let products = table.rows.into_iter().map(|(line, values)| {
        let pairs: Vec<(String, String)> = names.iter().cloned().zip(values).collect();
        merchant_product(line, &pairs)
    });
    Ok(products.collect())
}

// ---------------------------------------------------------------------------------------------
// Shopify products CSV: a handle's rows hold the product, its variants and its extra images.

/// A Shopify column's key in [`Product::fields`]: "Body (HTML)" -> "body_html", "Type" -> "type".
fn shopify_key(header: &str) -> String {
    let mut key = String::new();
    for c in header.trim().chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            key.push(c);
        } else if !key.is_empty() && !key.ends_with('_') {
            key.push('_');
        }
    }
    key.trim_end_matches('_').to_string()
}

/// Columns whose value belongs to a variant row, not to the handle's first row.
fn is_variant_key(key: &str) -> bool {
    // Option names are the exception: they sit on the first row only.
    key.starts_with("variant_") || key.starts_with("image_") || (key.starts_with("option") && key.ends_with("_value"))
}

/// Where the columns this module reads sit in a Shopify header.
struct ShopifyColumns {
    keys: Vec<String>,
    handle: usize,
    title: Option<usize>,
    body: Option<usize>,
    vendor: Option<usize>,
    tags: Option<usize>,
    option_names: [Option<usize>; 3],
    option_values: [Option<usize>; 3],
    sku: Option<usize>,
    price: Option<usize>,
    compare_at: Option<usize>,
    image_src: Option<usize>,
    image_position: Option<usize>,
    variant_image: Option<usize>,
}

impl ShopifyColumns {
    fn new(header: &[String], header_line: usize) -> Result<ShopifyColumns, FeedError> {
        let find = |name: &str| header.iter().position(|column| column.trim().eq_ignore_ascii_case(name));
        let Some(handle) = find("handle") else {
            let found = header.iter().map(|name| format!("`{}`", name.trim())).collect::<Vec<_>>().join(", ");
            let message = format!("no `Handle` column (found {found}): a Shopify products export starts with Handle,Title,Body (HTML),...; pass --format if this is another format");
            return Err(FeedError::new(header_line, message));
        };
        let numbered = |what: &str| [1, 2, 3].map(|n| find(&format!("option{n} {what}")));
        Ok(ShopifyColumns {
            keys: header.iter().map(|name| shopify_key(name)).collect(),
            handle,
            title: find("title"),
            body: find("body (html)"),
            vendor: find("vendor"),
            tags: find("tags"),
            option_names: numbered("name"),
            option_values: numbered("value"),
            sku: find("variant sku"),
            price: find("variant price"),
            compare_at: find("variant compare at price"),
            image_src: find("image src"),
            image_position: find("image position"),
            variant_image: find("variant image"),
        })
    }

    /// A row's trimmed value in a column, "" when the header lacks the column.
    fn get<'r>(&self, row: &'r [String], column: Option<usize>) -> &'r str {
        column.and_then(|at| row.get(at)).map_or("", |value| value.trim())
    }

    /// Whether a row describes a variant (rather than only an extra image).
    fn is_variant(&self, row: &[String]) -> bool {
        [self.sku, self.price].into_iter().chain(self.option_values).any(|column| !self.get(row, column).is_empty())
    }

    /// A product's fields: the handle's first row, with variant columns from the product's own row.
    fn fields(&self, first: &[String], own: &[String]) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        for (at, key) in self.keys.iter().enumerate() {
            let row = if is_variant_key(key) { own } else { first };
            let value = self.get(row, Some(at));
            if !key.is_empty() && !value.is_empty() {
                fields.entry(key.clone()).or_insert_with(|| value.to_string());
            }
        }
        fields
    }

    /// (price, regular price, unreadable text) of a variant row; Shopify prices have no currency.
    fn prices(&self, row: &[String]) -> Prices {
        let text = self.get(row, self.price);
        let price = parse_price(text);
        let regular = parse_price(self.get(row, self.compare_at)).filter(|&regular| price.is_some_and(|price| regular > price));
        let unreadable = (price.is_none() && !text.is_empty()).then(|| text.to_string());
        let plain = |amount| Price { amount, currency: None };
        (price.map(plain), regular.map(plain), unreadable)
    }
}

fn parse_shopify(text: &str) -> Result<Vec<Product>, FeedError> {
    let table = read_table(text, b',', "comma")?;
    let columns = ShopifyColumns::new(&table.header, table.header_line)?;
    // Rows grouped by handle, in order of first appearance (a handle's rows are normally together).
    let mut handles: Vec<(String, Vec<Row>)> = Vec::new();
    let mut known: HashMap<String, usize> = HashMap::new();
    for (line, row) in table.rows {
        let handle = columns.get(&row, Some(columns.handle)).to_string();
        match known.get(&handle) {
            Some(&at) => handles[at].1.push((line, row)),
            None => {
                known.insert(handle.clone(), handles.len());
                handles.push((handle, vec![(line, row)]));
            }
        }
    }
    Ok(handles.iter().flat_map(|(handle, rows)| shopify_products(&columns, handle, rows)).collect())
}

/// The products of one handle: one per variant with its own image, then the handle itself unless
/// the variants took all its images.
fn shopify_products(columns: &ShopifyColumns, handle: &str, rows: &[Row]) -> Vec<Product> {
    let (first_line, first) = (rows[0].0, rows[0].1.as_slice());
    let text = |column| Some(columns.get(first, column).to_string()).filter(|value| !value.is_empty());
    let base = Product {
        line: first_line,
        id: handle.to_string(),
        group: Some(handle.to_string()),
        title: text(columns.title),
        description: text(columns.body).map(|html| html_to_text(&html)).filter(|plain| !plain.is_empty()),
        brand: text(columns.vendor),
        tags: columns.get(first, columns.tags).split(',').map(str::trim).filter(|tag| !tag.is_empty()).map(str::to_string).collect(),
        fields: columns.fields(first, first),
        ..Product::default()
    };
    // Option names sit on the first row only; later rows give just the values.
    let colour_option = columns.option_names.iter().position(|&column| {
        let name = columns.get(first, column);
        name.eq_ignore_ascii_case("color") || name.eq_ignore_ascii_case("colour")
    });
    let mut variants = Vec::new();
    let mut images: Vec<(u64, usize, String)> = Vec::new();
    let mut first_prices = None;
    let mut number = 0;
    for (order, (line, row)) in rows.iter().enumerate() {
        let src = columns.get(row, columns.image_src);
        if !src.is_empty() {
            // Rows without a position keep their order after the numbered ones.
            let position = columns.get(row, columns.image_position).parse().unwrap_or(u64::MAX);
            images.push((position, order, src.to_string()));
        }
        if !columns.is_variant(row) {
            continue;
        }
        number += 1;
        let prices = columns.prices(row);
        first_prices.get_or_insert_with(|| prices.clone());
        let image = columns.get(row, columns.variant_image);
        if image.is_empty() {
            continue;
        }
        let sku = columns.get(row, columns.sku);
        let (price, regular_price, unreadable_price) = prices;
        variants.push(Product {
            line: *line,
            id: if sku.is_empty() { format!("{handle}#{number}") } else { sku.to_string() },
            colour: colour_option.map(|at| columns.get(row, columns.option_values[at]).to_string()).filter(|colour| !colour.is_empty()),
            price,
            regular_price,
            unreadable_price,
            images: vec![image.to_string()],
            fields: columns.fields(first, row),
            ..base.clone()
        });
    }
    images.sort();
    let mut own = Vec::new();
    for (_, _, src) in images {
        if !variants.iter().any(|variant| variant.images.contains(&src)) {
            push_unique(&mut own, src);
        }
    }
    let mut products = Vec::new();
    if !own.is_empty() || variants.is_empty() {
        let (price, regular_price, unreadable_price) = first_prices.unwrap_or_default();
        products.push(Product { images: own, price, regular_price, unreadable_price, ..base });
    }
    products.extend(variants);
    products
}

// ---------------------------------------------------------------------------------------------
// Description HTML to plain text.

/// Plain text from a product description's HTML: tags removed; <br>, </p>, </div>, </li>, </h1-6>,
/// </tr> become line breaks (so do opening block tags not already at a line's start), <li> starts
/// with "- "; entities decoded (named, &#123;, &#x1F;) via htmlescape, undecodable text kept as is;
/// <script>/<style> content and comments dropped; runs of spaces collapsed, blank lines collapsed to
/// one, trimmed. Text without tags comes back trimmed and whitespace-collapsed only. Never panics.
pub fn html_to_text(html: &str) -> String {
    if next_tag(html).is_none() {
        return tidy(html);
    }
    let mut out = String::new();
    let mut rest = html;
    while let Some(at) = next_tag(rest) {
        push_text(&mut out, &rest[..at]);
        rest = skip_tag(&mut out, &rest[at..]);
    }
    push_text(&mut out, rest);
    tidy(&out)
}

/// Where the next tag starts: a '<' followed by a letter, '/' and a letter, '!' or '?' ("a < b" is text).
fn next_tag(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    text.match_indices('<').map(|(at, _)| at).find(|&at| match bytes.get(at + 1) {
        Some(b'!' | b'?') => true,
        Some(b'/') => bytes.get(at + 2).is_some_and(u8::is_ascii_alphabetic),
        Some(next) => next.is_ascii_alphabetic(),
        None => false,
    })
}

/// Consumes the tag at the start of `rest` (writing the break it stands for) and returns what follows.
fn skip_tag<'a>(out: &mut String, rest: &'a str) -> &'a str {
    if let Some(comment) = rest.strip_prefix("<!--") {
        return comment.find("-->").map_or("", |end| &comment[end + 3..]);
    }
    // An unclosed tag runs to the end of the text, as in a browser.
    let Some(end) = tag_end(rest) else { return "" };
    let inner = &rest[1..end];
    let after = &rest[end + 1..];
    let closing = inner.starts_with('/');
    let name = inner.trim_start_matches('/').chars().take_while(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
    if !closing && (name == "script" || name == "style") && !inner.ends_with('/') {
        // Their content is code, not text: skip it and the closing tag.
        let Some(close) = after.to_ascii_lowercase().find(&format!("</{name}")) else { return "" };
        let tail = &after[close..];
        return tag_end(tail).map_or("", |end| &tail[end + 1..]);
    }
    let block = matches!(name.as_str(), "p" | "div" | "li" | "tr" | "ul" | "ol" | "table" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6");
    match name.as_str() {
        "br" | "hr" => out.push('\n'),
        "td" | "th" if closing => out.push(' '),
        "li" if !closing => {
            new_line(out);
            out.push_str("- ");
        }
        _ if block => new_line(out),
        _ => {}
    }
    after
}

/// The byte index of the '>' closing the tag that starts `tag`; one inside a quoted attribute value
/// does not count.
fn tag_end(tag: &str) -> Option<usize> {
    let mut quote = None;
    let mut previous = ' ';
    for (at, c) in tag.char_indices().skip(1) {
        match quote {
            Some(open) if c == open => quote = None,
            Some(_) => {}
            // Quotes open a value only after '=': elsewhere they are stray text in a broken tag.
            None if (c == '"' || c == '\'') && previous == '=' => quote = Some(c),
            None if c == '>' => return Some(at),
            None => {}
        }
        if !c.is_whitespace() {
            previous = c;
        }
    }
    None
}

/// Starts a new line unless the text is at the start of one already (so `</p><p>` is one break).
fn new_line(out: &mut String) {
    let trimmed = out.trim_end_matches(' ');
    if !trimmed.is_empty() && !trimmed.ends_with('\n') {
        out.push('\n');
    }
}

/// Appends text between tags: entities decoded, and any whitespace (source line breaks included)
/// read as a space, as HTML does.
fn push_text(out: &mut String, text: &str) {
    let mut decoded = String::with_capacity(text.len());
    decode_entities(&mut decoded, text);
    out.extend(decoded.chars().map(|c| if c.is_whitespace() { ' ' } else { c }));
}

/// Decodes each `&name;`, `&#123;` and `&#x1F;` with htmlescape; one it cannot decode, and a '&'
/// that starts no entity, stay as written.
fn decode_entities(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let length = tail[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).filter(|&n| (1..=32).contains(&n) && tail[1 + n..].starts_with(';'));
        match length {
            Some(n) => {
                let entity = &tail[..n + 2];
                match htmlescape::decode_html(entity) {
                    Ok(decoded) => out.push_str(&decoded),
                    Err(_) => out.push_str(entity),
                }
                rest = &tail[n + 2..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
}

/// Collapses runs of whitespace within lines, trims lines, keeps at most one blank line in a row,
/// and drops blank lines at both ends.
fn tidy(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        let blank_before = lines.last().is_none_or(String::is_empty);
        if !line.is_empty() || !blank_before {
            lines.push(line);
        }
    }
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Categories.

/// A category name from one level of a path like "Home & Garden > Furniture > Beds": level 1 =
/// "Home & Garden". Levels split on '>' only, each trimmed; None when the path has fewer levels (or
/// the level is blank).
pub fn level(path: &str, level: usize) -> Option<&str> {
    let name = path.split('>').nth(level.checked_sub(1)?)?.trim();
    (!name.is_empty()).then_some(name)
}

/// A category folder name from any text: lower-case, '&' dropped, every run of characters other than
/// ASCII letters/digits becomes one '-', no leading/trailing '-'; accents folded for common Latin
/// letters (é->e, ü->u, ß->ss, ø->o, å->a, æ->ae, ç->c, ñ->n). "Home & Garden" -> "home-garden";
/// "T-Shirts & Tops" -> "t-shirts-tops".
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    let mut gap = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        // Combining accents (from decomposed text, or 'İ' lower-cased) belong to the letter before.
        if c == '&' || ('\u{300}'..='\u{36f}').contains(&c) {
            continue;
        }
        let mut buffer = [0; 4];
        let plain = fold_accent(c).unwrap_or_else(|| c.encode_utf8(&mut buffer));
        for c in plain.chars() {
            if c.is_ascii_alphanumeric() {
                if gap && !out.is_empty() {
                    out.push('-');
                }
                gap = false;
                out.push(c);
            } else {
                gap = true;
            }
        }
    }
    out
}

/// The ASCII spelling of a lower-case accented Latin letter.
fn fold_accent(c: char) -> Option<&'static str> {
    let plain = match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ą' | 'ă' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ę' | 'ě' => "e",
        'ğ' => "g",
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'ı' => "i",
        'ł' => "l",
        'ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => "o",
        'œ' => "oe",
        'ř' => "r",
        'ß' => "ss",
        'ś' | 'š' | 'ş' => "s",
        'ť' | 'ţ' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    };
    Some(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    fn price(amount: f64, currency: Option<&str>) -> Option<Price> {
        Some(Price { amount, currency: currency.map(str::to_string) })
    }

    const XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<rss xmlns:g="http://base.google.com/ns/1.0" version="2.0">
<channel>
<title>Northwood</title>
<link>https://shop.example</link>
<item>
<g:id>SKU-1</g:id>
<title>Oak &amp; Linen &quot;Nordic&quot; Bed</title>
<link>https://shop.example/bed</link>
<description><![CDATA[<p>Solid <b>oak</b> frame.</p><ul><li>Queen&nbsp;size</li><li>Linen &amp; cotton</li></ul>]]></description>
<g:image_link>https://img.example/bed-1.jpg</g:image_link>
<g:additional_image_link>https://img.example/bed-2.jpg</g:additional_image_link>
<g:additional_image_link>https://img.example/bed-3.jpg, https://img.example/bed-1.jpg</g:additional_image_link>
<g:price>1299.00 USD</g:price>
<g:sale_price>999.00 USD</g:sale_price>
<g:availability>in_stock</g:availability>
<g:brand>Northwood</g:brand>
<g:color>Natural</g:color>
<g:material>Oak</g:material>
<g:product_type>Home &amp; Garden &gt; Furniture &gt; Beds</g:product_type>
<g:custom_label_0>summer</g:custom_label_0>
<g:shipping>
  <g:country>US</g:country>
  <g:price>0 USD</g:price>
</g:shipping>
<g:item_group_id>BED</g:item_group_id>
</item>
<item>
<g:id>SKU-2</g:id>
<g:title>  Lamp  </g:title>
<g:link>https://shop.example/lamp</g:link>
<g:image_link>https://img.example/lamp.jpg</g:image_link>
<g:price>call us</g:price>
<g:availability>Out of Stock</g:availability>
<g:color>red/blue</g:color>
</item>
</channel>
</rss>
"#;

    const BED_HTML: &str = "<p>Solid <b>oak</b> frame.</p><ul><li>Queen&nbsp;size</li><li>Linen &amp; cotton</li></ul>";

    /// The two products of the XML and TSV samples; only lines and the first additional image
    /// value (a list in the TSV) differ between them.
    fn merchant_expected(lines: [usize; 2], additional: &str) -> Vec<Product> {
        let bed = Product {
            line: lines[0],
            id: "SKU-1".into(),
            group: Some("BED".into()),
            title: Some("Oak & Linen \"Nordic\" Bed".into()),
            description: Some("Solid oak frame.\n- Queen size\n- Linen & cotton".into()),
            link: Some("https://shop.example/bed".into()),
            images: strings(&["https://img.example/bed-1.jpg", "https://img.example/bed-2.jpg", "https://img.example/bed-3.jpg"]),
            price: price(999.0, Some("USD")),
            regular_price: price(1299.0, Some("USD")),
            unreadable_price: None,
            availability: Some("in stock".into()),
            brand: Some("Northwood".into()),
            colour: Some("Natural".into()),
            material: Some("Oak".into()),
            tags: strings(&["summer"]),
            fields: map(&[
                ("id", "SKU-1"),
                ("title", "Oak & Linen \"Nordic\" Bed"),
                ("link", "https://shop.example/bed"),
                ("description", BED_HTML),
                ("image_link", "https://img.example/bed-1.jpg"),
                ("additional_image_link", additional),
                ("price", "1299.00 USD"),
                ("sale_price", "999.00 USD"),
                ("availability", "in_stock"),
                ("brand", "Northwood"),
                ("color", "Natural"),
                ("material", "Oak"),
                ("product_type", "Home & Garden > Furniture > Beds"),
                ("custom_label_0", "summer"),
                ("item_group_id", "BED"),
            ]),
        };
        let lamp = Product {
            line: lines[1],
            id: "SKU-2".into(),
            title: Some("Lamp".into()),
            link: Some("https://shop.example/lamp".into()),
            images: strings(&["https://img.example/lamp.jpg"]),
            unreadable_price: Some("call us".into()),
            availability: Some("out of stock".into()),
            colour: Some("red/blue".into()),
            fields: map(&[
                ("id", "SKU-2"),
                ("title", "Lamp"),
                ("link", "https://shop.example/lamp"),
                ("image_link", "https://img.example/lamp.jpg"),
                ("price", "call us"),
                ("availability", "Out of Stock"),
                ("color", "red/blue"),
            ]),
            ..Product::default()
        };
        vec![bed, lamp]
    }

    fn merchant_tsv() -> String {
        let header = "ID\tg:title\tlink\tdescription\timage link\tadditional_image_link\tprice\tsale_price\tavailability\tbrand\tcolor\tmaterial\tproduct_type\tcustom_label_0\titem_group_id";
        let bed = format!(
            "SKU-1\t\"Oak & Linen \"\"Nordic\"\" Bed\"\thttps://shop.example/bed\t{BED_HTML}\thttps://img.example/bed-1.jpg\t{}\t1299.00 USD\t999.00 USD\tin_stock\tNorthwood\tNatural\tOak\tHome & Garden > Furniture > Beds\tsummer\tBED",
            TSV_ADDITIONAL
        );
        let lamp = "SKU-2\t  Lamp  \thttps://shop.example/lamp\t\thttps://img.example/lamp.jpg\t\tcall us\t\tOut of Stock\t\tred/blue\t\t\t\t";
        [header, &bed, "", lamp, ""].join("\n")
    }

    const TSV_ADDITIONAL: &str = "https://img.example/bed-2.jpg,https://img.example/bed-3.jpg, https://img.example/bed-1.jpg";

    #[test]
    fn merchant_xml_reads_every_field() {
        assert_eq!(parse(XML, Format::MerchantXml).unwrap(), merchant_expected([6, 28], "https://img.example/bed-2.jpg"));
    }

    #[test]
    fn merchant_tsv_reads_the_same_products() {
        assert_eq!(parse(&merchant_tsv(), Format::MerchantTsv).unwrap(), merchant_expected([2, 4], TSV_ADDITIONAL));
    }

    #[test]
    fn atom_entries_and_a_bom_are_read() {
        let atom = "\u{feff}<?xml version=\"1.0\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\" xmlns:g=\"http://base.google.com/ns/1.0\">\n<title>Shop</title>\n<entry>\n<g:id>A1</g:id>\n<title>Stool</title>\n<link rel=\"self\" href=\"https://shop.example/feed\"/>\n<link href=\"https://shop.example/stool\"/>\n<g:price>45,00 EUR</g:price>\n<other:x xmlns:other=\"urn:other\">ignored</other:x>\n</entry>\n</feed>";
        let products = parse(atom, Format::MerchantXml).unwrap();
        let expected = Product {
            line: 4,
            id: "A1".into(),
            title: Some("Stool".into()),
            link: Some("https://shop.example/stool".into()),
            price: price(45.0, Some("EUR")),
            fields: map(&[("id", "A1"), ("title", "Stool"), ("link", "https://shop.example/stool"), ("price", "45,00 EUR")]),
            ..Product::default()
        };
        assert_eq!(products, vec![expected]);
        assert_eq!(Format::detect(atom), Some(Format::MerchantXml));
    }

    const SHOPIFY: &str = "Handle,Title,Body (HTML),Vendor,Type,Tags,Published,Option1 Name,Option1 Value,Option2 Name,Option2 Value,Variant SKU,Variant Price,Variant Compare At Price,Image Src,Image Position,Image Alt Text,Variant Image,Status
tee,Classic Tee,\"<p>Soft cotton, <em>relaxed</em> fit.</p>
<p>Machine wash.</p>\",Acme,Shirts,\"cotton, summer\",true,Colour,Red,Size,M,TEE-R,20.00,25.00,https://cdn.example/tee-front.jpg,1,Front,https://cdn.example/tee-red.jpg,active
tee,,,,,,,,Blue,,M,TEE-B,20.00,,https://cdn.example/tee-blue.jpg,3,,https://cdn.example/tee-blue.jpg,
tee,,,,,,,,Green,,M,,21.50,,,,,https://cdn.example/tee-green.jpg,
tee,,,,,,,,,,,,,,https://cdn.example/tee-back.jpg,2,,,
mug,Mug,<p>Plain mug &amp; saucer</p>,Acme,Kitchen,,true,Title,Default Title,,,MUG-1,8,,https://cdn.example/mug.jpg,1,,,active
mug,,,,,,,,,,,,,,https://cdn.example/mug-2.jpg,2,,,
cap,Cap,,Acme,Hats,,true,Color,Black,,,CAP-K,15,,https://cdn.example/cap-black.jpg,1,,https://cdn.example/cap-black.jpg,active
";

    fn tee_products() -> Vec<Product> {
        let tee_body = "<p>Soft cotton, <em>relaxed</em> fit.</p>\n<p>Machine wash.</p>";
        let product_level = [
            ("handle", "tee"),
            ("title", "Classic Tee"),
            ("body_html", tee_body),
            ("vendor", "Acme"),
            ("type", "Shirts"),
            ("tags", "cotton, summer"),
            ("published", "true"),
            ("option1_name", "Colour"),
            ("option2_name", "Size"),
            ("status", "active"),
        ];
        let with = |own: &[(&str, &str)]| map(&[&product_level[..], own].concat());
        let first_row = with(&[
            ("option1_value", "Red"),
            ("option2_value", "M"),
            ("variant_sku", "TEE-R"),
            ("variant_price", "20.00"),
            ("variant_compare_at_price", "25.00"),
            ("image_src", "https://cdn.example/tee-front.jpg"),
            ("image_position", "1"),
            ("image_alt_text", "Front"),
            ("variant_image", "https://cdn.example/tee-red.jpg"),
        ]);
        let base = Product {
            line: 2,
            id: "tee".into(),
            group: Some("tee".into()),
            title: Some("Classic Tee".into()),
            description: Some("Soft cotton, relaxed fit.\nMachine wash.".into()),
            brand: Some("Acme".into()),
            tags: strings(&["cotton", "summer"]),
            price: price(20.0, None),
            regular_price: price(25.0, None),
            images: strings(&["https://cdn.example/tee-front.jpg", "https://cdn.example/tee-back.jpg"]),
            fields: first_row.clone(),
            ..Product::default()
        };
        let red = Product { id: "TEE-R".into(), colour: Some("Red".into()), images: strings(&["https://cdn.example/tee-red.jpg"]), ..base.clone() };
        let blue = Product {
            line: 4,
            id: "TEE-B".into(),
            colour: Some("Blue".into()),
            regular_price: None,
            images: strings(&["https://cdn.example/tee-blue.jpg"]),
            fields: with(&[
                ("option1_value", "Blue"),
                ("option2_value", "M"),
                ("variant_sku", "TEE-B"),
                ("variant_price", "20.00"),
                ("image_src", "https://cdn.example/tee-blue.jpg"),
                ("image_position", "3"),
                ("variant_image", "https://cdn.example/tee-blue.jpg"),
            ]),
            ..base.clone()
        };
        let green = Product {
            line: 5,
            id: "tee#3".into(),
            colour: Some("Green".into()),
            price: price(21.5, None),
            regular_price: None,
            images: strings(&["https://cdn.example/tee-green.jpg"]),
            fields: with(&[("option1_value", "Green"), ("option2_value", "M"), ("variant_price", "21.50"), ("variant_image", "https://cdn.example/tee-green.jpg")]),
            ..base.clone()
        };
        vec![base, red, blue, green]
    }

    #[test]
    fn shopify_emits_variants_with_their_own_image_and_the_handle() {
        let products = parse(SHOPIFY, Format::ShopifyCsv).unwrap();
        let mug = Product {
            line: 7,
            id: "mug".into(),
            group: Some("mug".into()),
            title: Some("Mug".into()),
            description: Some("Plain mug & saucer".into()),
            brand: Some("Acme".into()),
            price: price(8.0, None),
            images: strings(&["https://cdn.example/mug.jpg", "https://cdn.example/mug-2.jpg"]),
            fields: map(&[
                ("handle", "mug"),
                ("title", "Mug"),
                ("body_html", "<p>Plain mug &amp; saucer</p>"),
                ("vendor", "Acme"),
                ("type", "Kitchen"),
                ("published", "true"),
                ("option1_name", "Title"),
                ("option1_value", "Default Title"),
                ("variant_sku", "MUG-1"),
                ("variant_price", "8"),
                ("image_src", "https://cdn.example/mug.jpg"),
                ("image_position", "1"),
                ("status", "active"),
            ]),
            ..Product::default()
        };
        // The cap's only image is its variant's: no product for the handle itself.
        let cap = Product {
            line: 9,
            id: "CAP-K".into(),
            group: Some("cap".into()),
            title: Some("Cap".into()),
            brand: Some("Acme".into()),
            colour: Some("Black".into()),
            price: price(15.0, None),
            images: strings(&["https://cdn.example/cap-black.jpg"]),
            fields: map(&[
                ("handle", "cap"),
                ("title", "Cap"),
                ("vendor", "Acme"),
                ("type", "Hats"),
                ("published", "true"),
                ("option1_name", "Color"),
                ("option1_value", "Black"),
                ("variant_sku", "CAP-K"),
                ("variant_price", "15"),
                ("image_src", "https://cdn.example/cap-black.jpg"),
                ("image_position", "1"),
                ("variant_image", "https://cdn.example/cap-black.jpg"),
                ("status", "active"),
            ]),
            ..Product::default()
        };
        let mut expected = tee_products();
        expected.extend([mug, cap]);
        assert_eq!(products, expected);
    }

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
    fn bad_xml_names_its_line() {
        let error = parse("<rss version=\"2.0\">\n<channel>\n<item>\n<id>1</idx>\n</item>\n</channel>\n</rss>", Format::MerchantXml).unwrap_err();
        assert_eq!(error.line, 4, "{error}");
        assert!(error.message.contains("not well-formed XML") && error.message.contains("--format"), "{error}");
        let error = parse("<html>\n<body/></html>", Format::MerchantXml).unwrap_err();
        assert!(error.message.contains("<html>"), "{error}");
        let error = parse("<rss>\n<channel>\n</channel>\n</rss>", Format::MerchantXml).unwrap_err();
        assert!(error.to_string().starts_with("line 1: no <item>"), "{error}");
        assert!(parse("id\tprice\n", Format::MerchantXml).is_err());
    }

    #[test]
    fn tsv_without_an_id_lists_the_columns() {
        let error = parse("\ntitle\tg:price\nLamp\t10\n", Format::MerchantTsv).unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.message.contains("`title`, `g:price`"), "{error}");
        assert!(error.message.contains("id, title, link, image_link, price"), "{error}");
    }

    #[test]
    fn a_row_with_a_missing_field_names_its_line() {
        let error = parse("id\ttitle\tprice\n1\tLamp\t10\n2\tChair\n3\tDesk\t5\n", Format::MerchantTsv).unwrap_err();
        assert_eq!(error.line, 3, "{error}");
        assert!(error.message.contains("2 fields but the header has 3"), "{error}");
        // A quoted value spanning lines counts them: the short row after it is on line 4.
        let error = parse("Handle,Title,Body (HTML)\na,A,\"<p>one</p>\n<p>two</p>\"\nb,B\n", Format::ShopifyCsv).unwrap_err();
        assert_eq!(error.line, 4, "{error}");
        let error = parse("Title,Price\nLamp,1\n", Format::ShopifyCsv).unwrap_err();
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

    #[test]
    fn sale_price_replaces_price_only_when_readable() {
        let product = |price: &str, sale: &str| merchant_product(1, &[("price".into(), price.into()), ("sale_price".into(), sale.into())]);
        let on_sale = product("10 USD", "8 USD");
        assert_eq!((on_sale.price, on_sale.regular_price), (price(8.0, Some("USD")), price(10.0, Some("USD"))));
        let bad_sale = product("10 USD", "soon");
        assert_eq!((bad_sale.price, bad_sale.regular_price, bad_sale.unreadable_price), (price(10.0, Some("USD")), None, None));
        let nothing = product("", "");
        assert_eq!((nothing.price, nothing.unreadable_price), (None, None));
    }

    #[test]
    fn html_becomes_plain_text() {
        assert_eq!(html_to_text("  plain   text\n\n\n\nsecond  line  "), "plain text\n\nsecond line");
        assert_eq!(html_to_text("Fish & Chips &amp; more"), "Fish & Chips &amp; more");
        assert_eq!(html_to_text("<h2>Title</h2>Body<br/>next<br><br>after"), "Title\nBody\nnext\n\nafter");
        assert_eq!(html_to_text("<ul><li>One</li>\n<li>Two &lt;3</li></ul><p>End&#33; &#x263A; &bogus; &amp</p>"), "- One\n- Two <3\nEnd! ☺ &bogus; &amp");
        assert_eq!(html_to_text("<div>a<script>var x = '<p>';</script>b<style>p { }</style>c<!-- <p>hidden</p> -->d</div>"), "abcd");
        assert_eq!(html_to_text("<a href=\"x>y\" title='a>b'>link</a> 2 < 3 > 1"), "link 2 < 3 > 1");
        assert_eq!(html_to_text("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>"), "a b\nc");
        assert_eq!(html_to_text("text <p unclosed"), "text");
        assert_eq!(html_to_text("<?xml version=\"1.0\"?><!DOCTYPE html><p>x</p>"), "x");
        assert_eq!(html_to_text("&#xD800; &#99999999999; &#; &"), "&#xD800; &#99999999999; &#; &");
    }

    #[test]
    fn levels_and_slugs() {
        let path = "Home & Garden > Furniture > Beds";
        assert_eq!(level(path, 1), Some("Home & Garden"));
        assert_eq!(level(path, 3), Some("Beds"));
        assert_eq!(level(path, 4), None);
        assert_eq!(level(path, 0), None);
        assert_eq!(level("Shoes/Boots", 1), Some("Shoes/Boots"));
        assert_eq!(level("", 1), None);
        assert_eq!(slug("Home & Garden"), "home-garden");
        assert_eq!(slug("T-Shirts & Tops"), "t-shirts-tops");
        assert_eq!(slug("  Crème Brûlée / Straße  "), "creme-brulee-strasse");
        assert_eq!(slug("Ærø Smørrebrød, Åland, Façade, Niño"), "aero-smorrebrod-aland-facade-nino");
        assert_eq!(slug("--"), "");
        assert_eq!(slug("İstanbul 日本 2024"), "istanbul-2024");
    }

    // -----------------------------------------------------------------------------------------
    // Property tests: random products written by the test writers below parse back the same.

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
    struct Sample {
        id: String,
        title: Option<String>,
        description: Option<String>,
        link: Option<String>,
        images: Vec<String>,
        price_text: String,
        price: Option<Price>,
        brand: Option<String>,
        colour: Option<String>,
        availability: Option<(String, String)>,
        tags: Vec<String>,
        /// Shopify only: the colours of variants that have their own image.
        variants: Vec<String>,
    }

    fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
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

    fn samples(rng: &mut Rng) -> Vec<Sample> {
        (0..1 + rng.below(5) as usize).map(|number| sample(rng, number)).collect()
    }

    /// What a Merchant feed must give back for a sample, lines and fields aside.
    fn merchant_wanted(sample: &Sample) -> Product {
        Product {
            id: sample.id.clone(),
            title: sample.title.clone(),
            description: sample.description.clone(),
            link: sample.link.clone(),
            images: sample.images.clone(),
            price: sample.price.clone(),
            unreadable_price: (sample.price.is_none() && !sample.price_text.is_empty()).then(|| sample.price_text.clone()),
            availability: sample.availability.as_ref().map(|(_, read)| read.clone()),
            brand: sample.brand.clone(),
            colour: sample.colour.clone(),
            tags: sample.tags.clone(),
            ..Product::default()
        }
    }

    fn xml_escape(text: &str) -> String {
        text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
    }

    /// The number the next line written to `out` will have.
    fn next_line(out: &str) -> usize {
        out.matches('\n').count() + 1
    }

    /// A Merchant XML feed (RSS or Atom, prefixes and layout varied), with each item's line.
    fn write_xml(rng: &mut Rng, samples: &[Sample]) -> (String, Vec<usize>) {
        let atom = rng.below(2) == 0;
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out += if atom {
            "<feed xmlns=\"http://www.w3.org/2005/Atom\" xmlns:g=\"http://base.google.com/ns/1.0\">\n<title>Shop &amp; Co</title>\n"
        } else {
            "<rss xmlns:g=\"http://base.google.com/ns/1.0\" version=\"2.0\">\n<channel>\n<title>Shop</title>\n"
        };
        let mut lines = Vec::new();
        for sample in samples {
            lines.push(next_line(&out));
            out += if atom { "<entry>\n" } else { "<item>\n" };
            let element = |out: &mut String, rng: &mut Rng, name: &str, value: &str| {
                let tag = if rng.below(2) == 0 && matches!(name, "title" | "description" | "link") { name.to_string() } else { format!("g:{name}") };
                let pad = if rng.below(3) == 0 { "  \n " } else { "" };
                *out += &format!("<{tag}>{pad}{}{pad}</{tag}>\n", xml_escape(value));
            };
            element(&mut out, rng, "id", &sample.id);
            if let Some(title) = &sample.title {
                element(&mut out, rng, "title", title);
            }
            if let Some(description) = &sample.description {
                // CDATA holds the text as is; the generated words never contain "]]>".
                if rng.below(2) == 0 {
                    out += &format!("<g:description><![CDATA[{description}]]></g:description>\n")
                } else {
                    element(&mut out, rng, "description", description)
                }
            }
            if let Some(link) = &sample.link {
                if atom {
                    out += &format!("<link rel=\"alternate\" href=\"{}\"/>\n", xml_escape(link))
                } else {
                    element(&mut out, rng, "link", link)
                }
            }
            if let Some((first, rest)) = sample.images.split_first() {
                element(&mut out, rng, "image_link", first);
                if rng.below(2) == 0 {
                    for url in rest {
                        element(&mut out, rng, "additional_image_link", url);
                    }
                } else if !rest.is_empty() {
                    element(&mut out, rng, "additional_image_link", &rest.join(", "));
                }
            }
            element(&mut out, rng, "price", &sample.price_text);
            if rng.below(2) == 0 {
                out += "<g:shipping>\n<g:country>US</g:country>\n<g:price>4.95 USD</g:price>\n</g:shipping>\n";
            }
            for (name, value) in [("brand", &sample.brand), ("color", &sample.colour), ("availability", &sample.availability.as_ref().map(|(written, _)| written.clone()))] {
                if let Some(value) = value {
                    element(&mut out, rng, name, value);
                }
            }
            for (n, tag) in sample.tags.iter().enumerate() {
                element(&mut out, rng, &format!("custom_label_{n}"), tag);
            }
            out += if atom { "</entry>\n" } else { "</item>\n" };
        }
        out += if atom { "</feed>\n" } else { "</channel>\n</rss>\n" };
        (out, lines)
    }

    /// A delimited field, quoted when it must be (and sometimes when it need not).
    fn field(rng: &mut Rng, value: &str, delimiter: char) -> String {
        if value.contains(['"', delimiter, '\n']) || rng.below(5) == 0 {
            format!("\"{}\"", value.replace('"', "\"\""))
        } else {
            value.to_string()
        }
    }

    /// A Merchant TSV feed (header spellings varied), with each row's line.
    fn write_tsv(rng: &mut Rng, samples: &[Sample]) -> (String, Vec<usize>) {
        let header = [
            pick(rng, &["id", "ID", "g:id"]),
            "title",
            "description",
            pick(rng, &["link", "g:link"]),
            pick(rng, &["image_link", "image link", "Image Link"]),
            "additional_image_link",
            "price",
            "brand",
            "color",
            "availability",
            "custom_label_0",
            "custom_label_1",
            "custom_label_2",
        ];
        let mut out = header.join("\t") + "\n";
        let mut lines = Vec::new();
        for sample in samples {
            let text = |value: &Option<String>| value.clone().unwrap_or_default();
            let tag = |n: usize| sample.tags.get(n).cloned().unwrap_or_default();
            let values = [
                sample.id.clone(),
                text(&sample.title),
                text(&sample.description),
                text(&sample.link),
                sample.images.first().cloned().unwrap_or_default(),
                sample.images.iter().skip(1).cloned().collect::<Vec<_>>().join(","),
                sample.price_text.clone(),
                text(&sample.brand),
                text(&sample.colour),
                sample.availability.as_ref().map(|(written, _)| written.clone()).unwrap_or_default(),
                tag(0),
                tag(1),
                tag(2),
            ];
            if rng.below(6) == 0 {
                out += "\n";
            }
            lines.push(next_line(&out));
            out += &(values.iter().map(|value| field(rng, value, '\t')).collect::<Vec<_>>().join("\t") + "\n");
        }
        (out, lines)
    }

    const SHOPIFY_HEADER: &str = "Handle,Title,Body (HTML),Vendor,Type,Tags,Published,Option1 Name,Option1 Value,Variant SKU,Variant Price,Variant Compare At Price,Image Src,Image Position,Image Alt Text,Variant Image,Status";

    /// A Shopify CSV (each sample a handle: a first row, variant rows with images, image rows in a
    /// shuffled order), with the products it must give back, lines included, fields aside.
    fn write_shopify(rng: &mut Rng, samples: &[Sample]) -> (String, Vec<Product>) {
        let mut out = format!("{SHOPIFY_HEADER}\n");
        let mut wanted = Vec::new();
        for sample in samples {
            let handle = sample.id.to_lowercase();
            let body = sample.description.as_deref().map(|text| format!("<p>{}</p>", text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"))).unwrap_or_default();
            let (option, first_value) = if sample.variants.is_empty() { ("Title", "Default Title") } else { ("Color", "Natural") };
            let first_image = sample.images.first().map_or(String::new(), |_| "1".into());
            let row = [
                handle.as_str(),
                sample.title.as_deref().unwrap_or(""),
                &body,
                sample.brand.as_deref().unwrap_or(""),
                "Shirts",
                &sample.tags.join(", "),
                "true",
                option,
                first_value,
                "",
                &sample.price_text,
                "",
                sample.images.first().map_or("", String::as_str),
                &first_image,
                "",
                "",
                "active",
            ];
            let first_line = next_line(&out);
            out += &(row.iter().map(|value| field(rng, value, ',')).collect::<Vec<_>>().join(",") + "\n");
            let prices = ShopifyColumns::new(&strings(&SHOPIFY_HEADER.split(',').collect::<Vec<_>>()), 1).unwrap().prices(&strings(&row));
            let base = Product {
                line: first_line,
                id: handle.clone(),
                group: Some(handle.clone()),
                title: sample.title.clone(),
                description: sample.description.clone(),
                brand: sample.brand.clone(),
                tags: sample.tags.clone(),
                price: prices.0,
                unreadable_price: prices.2,
                images: sample.images.clone(),
                ..Product::default()
            };
            let mut products = Vec::new();
            for (k, colour) in sample.variants.iter().enumerate() {
                let image = format!("https://img.example/{handle}/variant-{k}.jpg");
                // The first row is variant 1; a variant without a SKU gets the handle and its number.
                let sku = if k % 2 == 0 { format!("{handle}-v{k}") } else { String::new() };
                products.push(Product {
                    line: next_line(&out),
                    id: if sku.is_empty() { format!("{handle}#{}", k + 2) } else { sku.clone() },
                    colour: Some(colour.clone()),
                    images: vec![image.clone()],
                    ..base.clone()
                });
                let values = [handle.as_str(), "", "", "", "", "", "", "", colour, &sku, &sample.price_text, "", "", "", "", &image, ""];
                out += &(values.iter().map(|value| field(rng, value, ',')).collect::<Vec<_>>().join(",") + "\n");
            }
            let mut extra: Vec<(usize, &String)> = sample.images.iter().enumerate().skip(1).collect();
            rng.shuffle(&mut extra);
            for (position, url) in extra {
                out += &format!("{handle},,,,,,,,,,,,{url},{},,,\n", position + 1);
            }
            if !base.images.is_empty() || products.is_empty() {
                wanted.push(base);
            }
            wanted.extend(products);
        }
        (out, wanted)
    }

    /// A product without the parts a property test does not compare.
    fn comparable(product: &Product) -> Product {
        Product { line: 0, fields: BTreeMap::new(), ..product.clone() }
    }

    #[test]
    fn random_merchant_feeds_parse_back() {
        let mut rng = Rng::new(7);
        for _ in 0..1500 {
            let samples = samples(&mut rng);
            let wanted: Vec<Product> = samples.iter().map(merchant_wanted).collect();
            for (format, (text, lines)) in [(Format::MerchantXml, write_xml(&mut rng, &samples)), (Format::MerchantTsv, write_tsv(&mut rng, &samples))] {
                assert_eq!(Format::detect(&text), Some(format), "{text}");
                let products = parse(&text, format).unwrap_or_else(|error| panic!("{error}\n{text}"));
                assert_eq!(products.iter().map(comparable).collect::<Vec<_>>(), wanted, "{text}");
                assert_eq!(products.iter().map(|product| product.line).collect::<Vec<_>>(), lines, "{text}");
            }
        }
    }

    #[test]
    fn random_shopify_exports_parse_back() {
        let mut rng = Rng::new(11);
        for _ in 0..1500 {
            let samples = samples(&mut rng);
            let (text, wanted) = write_shopify(&mut rng, &samples);
            assert_eq!(Format::detect(&text), Some(Format::ShopifyCsv));
            let products = parse(&text, Format::ShopifyCsv).unwrap_or_else(|error| panic!("{error}\n{text}"));
            let lines: Vec<usize> = wanted.iter().map(|product| product.line).collect();
            assert_eq!(products.iter().map(comparable).collect::<Vec<_>>(), wanted.iter().map(comparable).collect::<Vec<_>>(), "{text}");
            assert_eq!(products.iter().map(|product| product.line).collect::<Vec<_>>(), lines, "{text}");
        }
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
                    if let Ok(products) = parse(&damaged, format) {
                        assert!(products.iter().all(|product| product.line >= 1 && product.line <= damaged.lines().count().max(1)), "{damaged}");
                    }
                }
                let _ = html_to_text(&damaged);
            }
        }
    }

    #[test]
    fn html_to_text_never_panics_and_is_tidy() {
        let alphabet: Vec<char> = "<>&;#/\"' \n\tabpliryxst1!-=&#x3C".chars().collect();
        let mut rng = Rng::new(5);
        for _ in 0..20_000 {
            let text: String = (0..rng.below(60)).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            let plain = html_to_text(&text);
            assert_eq!(plain.trim(), plain, "{text:?}");
            assert!(!plain.contains("  ") && !plain.contains("\n\n\n") && !plain.contains(" \n") && !plain.contains("\n "), "{text:?} -> {plain:?}");
        }
    }

    #[test]
    fn removed_tags_do_not_come_back() {
        // Text pieces without '<' and without letters that could spell an entity for it.
        let pieces = ["<p>", "</p>", "<br>", "<br/>", "<li>", "</li>", "<P class=\"x\">", "a", "b p", " ", "\n", "&", "&amp;", ";", ">", "#", "\"", "'", "/", "br"];
        let mut rng = Rng::new(9);
        for _ in 0..5000 {
            let text: String = (0..rng.below(30)).map(|_| pick(&mut rng, &pieces)).collect();
            let plain = html_to_text(&text).to_lowercase();
            assert!(!plain.contains("<p") && !plain.contains("<br") && !plain.contains("<li"), "{text:?} -> {plain:?}");
        }
    }
}
