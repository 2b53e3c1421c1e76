//! Shopify's products CSV export read into [`Product`]s: a handle's rows hold the product, its
//! variants and its extra images. This file owns the columns read and the products a handle gives:
//! one per variant with its own image, then the handle itself unless the variants took all its
//! images. The formats, products, prices and the table reader are `parse.rs`'s; description HTML
//! becomes text in `text.rs`.

use std::collections::{BTreeMap, HashMap};

use crate::catalogue::parse_price;

use super::parse::{push_unique, read_table, FeedError, Price, Prices, Product, Row};
use super::text::html_to_text;

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

pub(super) fn parse_shopify(text: &str) -> Result<Vec<Product>, FeedError> {
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

/// Shopify exports for the tests: the sample export, and the writer that puts random products into
/// one for the property tests.
#[cfg(test)]
pub(super) mod testing {
    use super::{Product, ShopifyColumns};
    use crate::feed::parse::testing::{field, next_line, strings, Sample};
    use crate::rng::Rng;

    pub const SHOPIFY: &str = "Handle,Title,Body (HTML),Vendor,Type,Tags,Published,Option1 Name,Option1 Value,Option2 Name,Option2 Value,Variant SKU,Variant Price,Variant Compare At Price,Image Src,Image Position,Image Alt Text,Variant Image,Status
tee,Classic Tee,\"<p>Soft cotton, <em>relaxed</em> fit.</p>
<p>Machine wash.</p>\",Acme,Shirts,\"cotton, summer\",true,Colour,Red,Size,M,TEE-R,20.00,25.00,https://cdn.example/tee-front.jpg,1,Front,https://cdn.example/tee-red.jpg,active
tee,,,,,,,,Blue,,M,TEE-B,20.00,,https://cdn.example/tee-blue.jpg,3,,https://cdn.example/tee-blue.jpg,
tee,,,,,,,,Green,,M,,21.50,,,,,https://cdn.example/tee-green.jpg,
tee,,,,,,,,,,,,,,https://cdn.example/tee-back.jpg,2,,,
mug,Mug,<p>Plain mug &amp; saucer</p>,Acme,Kitchen,,true,Title,Default Title,,,MUG-1,8,,https://cdn.example/mug.jpg,1,,,active
mug,,,,,,,,,,,,,,https://cdn.example/mug-2.jpg,2,,,
cap,Cap,,Acme,Hats,,true,Color,Black,,,CAP-K,15,,https://cdn.example/cap-black.jpg,1,,https://cdn.example/cap-black.jpg,active
";

    const SHOPIFY_HEADER: &str = "Handle,Title,Body (HTML),Vendor,Type,Tags,Published,Option1 Name,Option1 Value,Variant SKU,Variant Price,Variant Compare At Price,Image Src,Image Position,Image Alt Text,Variant Image,Status";

    /// A Shopify CSV (each sample a handle: a first row, variant rows with images, image rows in a
    /// shuffled order), with the products it must give back, lines included, fields aside.
    pub fn write_shopify(rng: &mut Rng, samples: &[Sample]) -> (String, Vec<Product>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::parse::testing::{comparable, map, price, samples, strings};
    use crate::feed::parse::Format;
    use crate::feed::products;
    use crate::feed::shopify::testing::{write_shopify, SHOPIFY};
    use crate::rng::Rng;

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
        let products = products(SHOPIFY, Format::ShopifyCsv).unwrap();
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
    fn random_shopify_exports_parse_back() {
        let mut rng = Rng::new(11);
        for _ in 0..1500 {
            let samples = samples(&mut rng);
            let (text, wanted) = write_shopify(&mut rng, &samples);
            assert_eq!(Format::detect(&text), Some(Format::ShopifyCsv));
            let products = products(&text, Format::ShopifyCsv).unwrap_or_else(|error| panic!("{error}\n{text}"));
            let lines: Vec<usize> = wanted.iter().map(|product| product.line).collect();
            assert_eq!(products.iter().map(comparable).collect::<Vec<_>>(), wanted.iter().map(comparable).collect::<Vec<_>>(), "{text}");
            assert_eq!(products.iter().map(|product| product.line).collect::<Vec<_>>(), lines, "{text}");
        }
    }
}
