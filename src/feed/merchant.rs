//! Google Merchant Center feeds read into [`Product`]s: XML (RSS 2.0 `<item>`s or Atom `<entry>`s)
//! and TSV (tab-separated text with a header row). XML and TSV share the field names and their
//! meaning. This file owns their quirks (namespaces, repeated and nested fields, additional images
//! listed in one field) and a sale price replacing the price. The formats, products, prices and the
//! table reader a TSV is read with are `parse.rs`'s; description HTML becomes text in `text.rs`.

use std::collections::BTreeMap;

use super::parse::{push_unique, read_price, read_table, FeedError, Prices, Product};
use super::text::html_to_text;

/// The namespace of Google Merchant's `g:` elements.
const GOOGLE_NAMESPACE: &str = "http://base.google.com/ns/1.0";

/// The columns a Merchant feed needs, named when a TSV lacks its `id` column.
const MERCHANT_NEEDS: [&str; 5] = ["id", "title", "link", "image_link", "price"];

/// A Merchant attribute's name as written in a header or tag: "g:Image Link" -> "image_link".
fn merchant_name(raw: &str) -> String {
    let lower = raw.trim().to_lowercase();
    lower.strip_prefix("g:").unwrap_or(&lower).trim().replace(' ', "_")
}

pub(super) fn parse_xml(text: &str) -> Result<Vec<Product>, FeedError> {
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

pub(super) fn parse_tsv(text: &str) -> Result<Vec<Product>, FeedError> {
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

/// Merchant feeds for the tests: the XML and TSV samples, and the writers that put random products
/// into feeds for the property tests.
#[cfg(test)]
pub(super) mod testing {
    use crate::feed::parse::testing::{field, next_line, pick, Sample};
    use crate::rng::Rng;

    pub const XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
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

    pub const BED_HTML: &str = "<p>Solid <b>oak</b> frame.</p><ul><li>Queen&nbsp;size</li><li>Linen &amp; cotton</li></ul>";

    pub fn merchant_tsv() -> String {
        let header = "ID\tg:title\tlink\tdescription\timage link\tadditional_image_link\tprice\tsale_price\tavailability\tbrand\tcolor\tmaterial\tproduct_type\tcustom_label_0\titem_group_id";
        let bed = format!(
            "SKU-1\t\"Oak & Linen \"\"Nordic\"\" Bed\"\thttps://shop.example/bed\t{BED_HTML}\thttps://img.example/bed-1.jpg\t{}\t1299.00 USD\t999.00 USD\tin_stock\tNorthwood\tNatural\tOak\tHome & Garden > Furniture > Beds\tsummer\tBED",
            TSV_ADDITIONAL
        );
        let lamp = "SKU-2\t  Lamp  \thttps://shop.example/lamp\t\thttps://img.example/lamp.jpg\t\tcall us\t\tOut of Stock\t\tred/blue\t\t\t\t";
        [header, &bed, "", lamp, ""].join("\n")
    }

    pub const TSV_ADDITIONAL: &str = "https://img.example/bed-2.jpg,https://img.example/bed-3.jpg, https://img.example/bed-1.jpg";

    fn xml_escape(text: &str) -> String {
        text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
    }

    /// A Merchant XML feed (RSS or Atom, prefixes and layout varied), with each item's line.
    pub fn write_xml(rng: &mut Rng, samples: &[Sample]) -> (String, Vec<usize>) {
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

    /// A Merchant TSV feed (header spellings varied), with each row's line.
    pub fn write_tsv(rng: &mut Rng, samples: &[Sample]) -> (String, Vec<usize>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::merchant::testing::{merchant_tsv, write_tsv, write_xml, BED_HTML, TSV_ADDITIONAL, XML};
    use crate::feed::parse::testing::{comparable, map, price, samples, strings, Sample};
    use crate::feed::parse::Format;
    use crate::feed::products;
    use crate::rng::Rng;

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

    #[test]
    fn merchant_xml_reads_every_field() {
        assert_eq!(products(XML, Format::MerchantXml).unwrap(), merchant_expected([6, 28], "https://img.example/bed-2.jpg"));
    }

    #[test]
    fn merchant_tsv_reads_the_same_products() {
        assert_eq!(products(&merchant_tsv(), Format::MerchantTsv).unwrap(), merchant_expected([2, 4], TSV_ADDITIONAL));
    }

    #[test]
    fn atom_entries_and_a_bom_are_read() {
        let atom = "\u{feff}<?xml version=\"1.0\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\" xmlns:g=\"http://base.google.com/ns/1.0\">\n<title>Shop</title>\n<entry>\n<g:id>A1</g:id>\n<title>Stool</title>\n<link rel=\"self\" href=\"https://shop.example/feed\"/>\n<link href=\"https://shop.example/stool\"/>\n<g:price>45,00 EUR</g:price>\n<other:x xmlns:other=\"urn:other\">ignored</other:x>\n</entry>\n</feed>";
        let products = products(atom, Format::MerchantXml).unwrap();
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

    #[test]
    fn bad_xml_names_its_line() {
        let error = products("<rss version=\"2.0\">\n<channel>\n<item>\n<id>1</idx>\n</item>\n</channel>\n</rss>", Format::MerchantXml).unwrap_err();
        assert_eq!(error.line, 4, "{error}");
        assert!(error.message.contains("not well-formed XML") && error.message.contains("--format"), "{error}");
        let error = products("<html>\n<body/></html>", Format::MerchantXml).unwrap_err();
        assert!(error.message.contains("<html>"), "{error}");
        let error = products("<rss>\n<channel>\n</channel>\n</rss>", Format::MerchantXml).unwrap_err();
        assert!(error.to_string().starts_with("line 1: no <item>"), "{error}");
        assert!(products("id\tprice\n", Format::MerchantXml).is_err());
    }

    #[test]
    fn tsv_without_an_id_lists_the_columns() {
        let error = products("\ntitle\tg:price\nLamp\t10\n", Format::MerchantTsv).unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.message.contains("`title`, `g:price`"), "{error}");
        assert!(error.message.contains("id, title, link, image_link, price"), "{error}");
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

    #[test]
    fn random_merchant_feeds_parse_back() {
        let mut rng = Rng::new(7);
        for _ in 0..1500 {
            let samples = samples(&mut rng);
            let wanted: Vec<Product> = samples.iter().map(merchant_wanted).collect();
            for (format, (text, lines)) in [(Format::MerchantXml, write_xml(&mut rng, &samples)), (Format::MerchantTsv, write_tsv(&mut rng, &samples))] {
                assert_eq!(Format::detect(&text), Some(format), "{text}");
                let products = products(&text, format).unwrap_or_else(|error| panic!("{error}\n{text}"));
                assert_eq!(products.iter().map(comparable).collect::<Vec<_>>(), wanted, "{text}");
                assert_eq!(products.iter().map(|product| product.line).collect::<Vec<_>>(), lines, "{text}");
            }
        }
    }
}
