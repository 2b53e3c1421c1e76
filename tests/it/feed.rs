//! `catalogue import` end to end against a shop on loopback (`common::shop`, the feeds of
//! `tests/data/feeds`): a Merchant Center XML feed imported and indexed on the offline kit's real
//! backbones, searched (a product's variants show once), imported again (nothing downloaded or
//! embedded), changed and pruned; malformed feeds change nothing; an import interrupted
//! mid-download resumes without downloading again; the Shopify and TSV forms through the binary.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use lookalike::catalogue::{read_rows, Metadata};
use lookalike::feed::{Categories, FetchSettings, ImportOptions};
use lookalike::imaging::ImageLimits;
use lookalike::index::ReindexError;
use lookalike::search::{ImportStage, Query, SearchService};

use crate::common::shop::FakeShop;
use crate::common::{heavy, picture, png, World};

fn level_two() -> ImportOptions {
    ImportOptions { categories: Categories { level: Some(2), ..Categories::default() }, ..ImportOptions::default() }
}

fn rows(metadata: &Path) -> HashMap<String, (String, Metadata)> {
    read_rows(metadata).unwrap().into_iter().map(|(id, m)| (m.feed_id.clone().unwrap_or_default(), (id, m))).collect()
}

#[test]
fn a_merchant_feed_comes_in_whole_and_again_costs_nothing() {
    let _heavy = heavy(module_path!());
    let world = World::new(8);
    let shop = FakeShop::start();
    let (catalogue, metadata) = (world.root.join("shop"), world.root.join("shop.jsonl"));
    let config = world.config(&[("LOOKALIKE__CATALOGUE__DIR", catalogue.to_str().unwrap()), ("LOOKALIKE__CATALOGUE__METADATA", metadata.to_str().unwrap())]);
    let service = SearchService::start(&config).unwrap();
    let import =
        |feed: &str, options: &ImportOptions, stages: &mut Vec<ImportStage>| service.upkeep().import_feed(&shop.url(feed), options, true, lookalike::audit::Who::cli(), &mut |s| stages.push(s));

    // Malformed feeds: an error that names the line, and nothing on disk.
    for (feed, expected) in [("/feeds/broken.xml", "line 69"), ("/feeds/wrong-columns.tsv", "line 1")] {
        let err = import(feed, &level_two(), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ReindexError::Refused(_)) && err.to_string().contains(expected) && err.to_string().contains("nothing was changed"), "{feed}: {err}");
    }
    assert!(!catalogue.exists() && !metadata.exists(), "a malformed feed writes nothing");

    let mut stages = Vec::new();
    let first = import("/feeds/shop.xml", &level_two(), &mut stages).unwrap();
    let summary = &first.summary;
    assert_eq!((summary.format, summary.products, summary.pictures, summary.added), ("merchant-xml", 46, 46, 46), "{summary:#?}");
    let mut skipped: Vec<(&str, usize)> = summary.skipped.iter().map(|s| (s.id.as_str(), s.line)).collect();
    skipped.sort();
    assert_eq!(skipped.iter().map(|s| s.0).collect::<Vec<_>>(), ["ME-1028", "ME-1031", "ME-1032", "ME-1033"], "{:#?}", summary.skipped);
    let reason = |id: &str| summary.skipped.iter().find(|s| s.id == id).unwrap().reason.clone();
    assert!(reason("ME-1028").starts_with("duplicate id: the product on line"), "{}", reason("ME-1028"));
    assert_eq!(reason("ME-1031"), "no image link");
    assert!(reason("ME-1032").contains("404"), "{}", reason("ME-1032"));
    assert!(reason("ME-1033").contains("web page, not a picture"), "{}", reason("ME-1033"));
    assert_eq!(summary.no_currency, ["ME-1023"]);
    assert_eq!((summary.traffic.downloaded, summary.traffic.retried, summary.traffic.failed), (46, 1, 2), "the flaky picture came on its second try: {:?}", summary.traffic);
    assert_eq!(summary.categories, [("cool".to_string(), 22), ("warm".to_string(), 24)]);
    assert_eq!(first.heads.as_deref(), Some(&["cool".to_string(), "warm".to_string()][..]), "the heads know both categories");
    let reindex = first.reindex.as_ref().unwrap();
    assert_eq!((reindex.added, reindex.embedded), (46, 46));
    assert!(matches!(stages.first(), Some(ImportStage::Download { done: 0, total: 48 })) && matches!(stages.last(), Some(ImportStage::Index(p)) if p.done == 46), "{stages:?}");

    // What the metadata file holds: plain text from HTML, prices with their currency, groups.
    let held = rows(&metadata);
    let (id, rust) = &held["ME-1001"];
    assert!(id.starts_with("warm/") && catalogue.join(id).is_file(), "{id}");
    let description = rust.description.as_deref().unwrap();
    assert!(!description.contains('<') && description.contains("sheen & a hidden zip") && description.contains("- 45 x 45 cm"), "{description:?}");
    assert_eq!((rust.price.as_deref(), rust.colour.as_deref(), rust.group.as_deref()), (Some("35.00 USD"), Some("Rust"), Some("ME-1-VELVET-CUSHION")));
    assert_eq!(held["ME-1003"].1.price.as_deref(), Some("29.00 USD"), "the sale price");
    assert_eq!(held["ME-1015"].1.description.as_deref().map(|d| d.contains("Bouclé")), Some(true));
    assert_eq!(held["ME-1023"].1.price.as_deref(), Some("12.50"));

    // A product shows once, as its best-matching variant, with the others' colours named.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let words = runtime.block_on(service.search(Query { text: Some("velvet cushion".into()), k: Some(5), ..Query::default() })).unwrap();
    let velvet: Vec<_> = words.hits.iter().filter(|h| h.item.metadata.group.as_deref() == Some("ME-1-VELVET-CUSHION")).collect();
    assert_eq!(velvet.len(), 1, "{:?}", words.hits.iter().map(|h| &h.item.id).collect::<Vec<_>>());
    let mut colours = velvet[0].variants.clone();
    colours.sort();
    assert_eq!(colours, ["Mustard", "Rust", "Terracotta"]);
    let photo = runtime.block_on(service.search(Query { image: png(&picture("warm", 101)), k: Some(5), ..Query::default() })).unwrap();
    assert_eq!(photo.hits[0].item.metadata.feed_id.as_deref(), Some("ME-1002"), "the variant whose picture it is comes first");
    assert_eq!(photo.hits.iter().filter(|h| h.item.metadata.group == photo.hits[0].item.metadata.group).count(), 1);

    // The same feed again: nothing downloaded, nothing embedded.
    let images_served = shop.requests("/images/");
    let again = import("/feeds/shop.xml", &level_two(), &mut Vec::new()).unwrap();
    assert_eq!((again.summary.traffic.downloaded, again.summary.unchanged, again.summary.added, again.summary.updated), (0, 46, 0, 0), "{:#?}", again.summary);
    assert_eq!(again.reindex.as_ref().map(|r| (r.embedded, r.unchanged)), Some((0, 46)));
    assert_eq!(shop.requests("/images/"), images_served, "no picture asked for again");

    // The shop drops a product and changes a price: without --prune the product stays, with it
    // it goes; the price is updated either way.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/feeds/shop.xml")).unwrap();
    let start = text.find("<item>\n      <g:id>ME-1045</g:id>").unwrap();
    let end = start + text[start..].find("</item>").unwrap() + "</item>".len();
    let changed = format!("{}{}", &text[..start], &text[end..]).replace("<g:price>35.00 USD</g:price>", "<g:price>39.00 USD</g:price>");
    shop.set_feed("shop.xml", &changed);
    let kept = import("/feeds/shop.xml", &level_two(), &mut Vec::new()).unwrap();
    assert_eq!((kept.summary.updated, kept.summary.gone_kept, kept.summary.removed), (2, 1, 0), "{:#?}", kept.summary);
    let pruned = import("/feeds/shop.xml", &ImportOptions { prune: true, ..level_two() }, &mut Vec::new()).unwrap();
    assert_eq!((pruned.summary.removed, pruned.reindex.as_ref().unwrap().removed), (1, 1));
    let held = rows(&metadata);
    assert!(!held.contains_key("ME-1045") && held["ME-1001"].1.price.as_deref() == Some("39.00 USD"));
    assert_eq!(std::fs::read_dir(catalogue.join("cool")).unwrap().count() + std::fs::read_dir(catalogue.join("warm")).unwrap().count(), 45, "the pruned picture's file is gone");
}

#[test]
fn an_interrupted_import_resumes_without_downloading_again() {
    let shop = FakeShop::start();
    let scratch = tempfile::tempdir().unwrap();
    let (catalogue, metadata) = (scratch.path().join("shop"), scratch.path().join("items.csv"));
    let feed = feed_of(&shop, "/feeds/shop.tsv");
    let settings = FetchSettings { concurrency: 2, retries: 2, timeout: std::time::Duration::from_secs(10), public_only: false };
    let limits = ImageLimits { max_bytes: 1 << 20, max_pixels: 1 << 20 };
    let import = |progress: &mut dyn FnMut(usize, usize)| lookalike::feed::import(&catalogue, &metadata, &feed, &level_two(), settings, limits, progress);

    // Killed after the tenth picture (the progress callback dies, as the process would).
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = import(&mut |done, _| assert!(done < 10, "killed"));
    }));
    assert!(killed.is_err());
    assert!(!metadata.exists() && !catalogue.join("warm").exists(), "nothing placed before the whole feed is downloaded");
    // The downloads in flight when it died finish on their own thread: wait until the cache
    // stops growing, as a restarted process would find it.
    let cached = || std::fs::read_dir(catalogue.join(".import")).map_or(0, |entries| entries.count());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = cached();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = cached();
        if now == seen || std::time::Instant::now() > deadline {
            break;
        }
        seen = now;
    }
    let summary = import(&mut |_, _| {}).unwrap();
    assert!(summary.traffic.cached >= 10 && summary.traffic.downloaded + summary.traffic.cached == 46, "{:?}", summary.traffic);
    let asked_twice: Vec<(String, usize)> = shop.paths().into_iter().filter(|(path, n)| path.starts_with("/images/") && *n > 1).collect();
    assert!(asked_twice.is_empty(), "pictures downloaded twice: {asked_twice:?}");
    assert_eq!(summary.added, 46);
    assert!(!catalogue.join(".import").exists(), "the downloads are cleared once the import is written");
    assert_eq!(read_rows(&metadata).unwrap().len(), 46, "CSV metadata written whole");
}

/// The feed's text, fetched the way the importer fetches it.
fn feed_of(shop: &FakeShop, path: &str) -> String {
    lookalike::feed::feed_text(&shop.url(path), 1 << 20, FetchSettings { concurrency: 1, retries: 0, timeout: std::time::Duration::from_secs(10), public_only: false }).unwrap()
}

#[test]
fn a_shopify_export_and_a_merchant_tsv_through_the_binary() {
    let shop = FakeShop::start();
    let scratch = tempfile::tempdir().unwrap();
    let path = |name: &str| scratch.path().join(name).to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_lookalike"))
            .args(args)
            .env("LOOKALIKE__CATALOGUE__DIR", path("shop"))
            .env("LOOKALIKE__CATALOGUE__METADATA", path("items.jsonl"))
            .env("LOOKALIKE__CATALOGUE__AUDIT_LOG", path("audit.jsonl"))
            .env("LOOKALIKE__INDEX__DIR", path("index"))
            .env("LOOKALIKE__MODELS__HEADS_DIR", path("no-heads"))
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/feeds/categories.toml");
    let (ok, out, err) = run(&["catalogue", "import", &shop.url("/feeds/shop.csv"), "--categories", mapping.to_str().unwrap(), "--currency", "usd", "--no-index"]);
    assert!(ok, "{err}");
    eprintln!("lookalike catalogue import {{shop}}/feeds/shop.csv --categories categories.toml --currency usd --no-index:\n{out}");
    assert!(out.starts_with("shopify-csv feed:") && out.contains("the category mapping skips \"Gift cards\""), "{out}");
    assert!(out.contains("HTTP 404") && out.contains("web page, not a picture") && out.contains("not indexed (--no-index)"), "{out}");
    assert!(out.contains("categories: cool ") && out.contains(", warm "), "{out}");
    assert_eq!(shop.requests("/images/warm-524"), 0, "the skipped gift card's picture is never fetched");
    assert!(!out.contains("prices without a currency"), "--currency names it: {out}");
    let prices: Vec<String> = read_rows(&scratch.path().join("items.jsonl")).unwrap().into_iter().filter_map(|(_, m)| m.price).collect();
    assert!(prices.len() == 49 && prices.iter().all(|p| p.ends_with(" USD")), "{prices:?}");
    let audit = std::fs::read_to_string(path("audit.jsonl")).unwrap();
    assert!(audit.contains("\"action\":\"imported\""), "{audit}");

    let (ok, out, err) = run(&["catalogue", "import", &shop.url("/feeds/shop.tsv"), "--category-level", "2", "--no-index", "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["import"]["format"], "merchant-tsv");
    // Its warm pictures have the same bytes as the Shopify feed's (tests/data/feeds/README.md):
    // one picture is one item, so those take over the items the Shopify import made.
    let (added, updated) = (report["import"]["added"].as_u64().unwrap(), report["import"]["updated"].as_u64().unwrap());
    assert_eq!((added, updated), (22, 24), "{report:#}");
    let (ok, _, err) = run(&["catalogue", "import", &shop.url("/feeds/shop.tsv"), "--format", "shopify-csv", "--no-index"]);
    assert!(!ok && err.contains("not a valid shopify-csv feed: line 2: this row has 2 fields but the header has 1"), "{err}");
}

/// Two URLs with the same bytes are one item: a second product with them is skipped, and a
/// product whose picture moved to a new URL (same bytes) is updated, never added and pruned.
#[test]
fn one_picture_is_one_item_whatever_its_urls() {
    let shop = FakeShop::start();
    let scratch = tempfile::tempdir().unwrap();
    let (catalogue, metadata) = (scratch.path().join("shop"), scratch.path().join("items.jsonl"));
    let settings = FetchSettings { concurrency: 2, retries: 0, timeout: std::time::Duration::from_secs(10), public_only: false };
    let limits = ImageLimits { max_bytes: 1 << 20, max_pixels: 1 << 20 };
    // warm-300, warm-340 and warm-380 are the same picture (common::picture repeats every 40).
    let feed = |rows: &[(&str, &str)]| {
        let lines: Vec<String> = rows.iter().map(|(id, n)| format!("{id}\tLamp {id}\t{}\tHome > Warm", shop.url(&format!("/images/warm-{n}.png")))).collect();
        format!("id\ttitle\timage_link\tproduct_type\n{}\n", lines.join("\n"))
    };
    let import = |text: String, prune: bool| lookalike::feed::import(&catalogue, &metadata, &text, &ImportOptions { prune, ..ImportOptions::default() }, settings, limits, &mut |_, _| {}).unwrap();
    let first = import(feed(&[("A", "300"), ("B", "340"), ("C", "301")]), false);
    assert_eq!((first.added, first.pictures), (2, 2), "{first:#?}");
    assert_eq!(first.skipped.len(), 1);
    assert!(first.skipped[0].id == "B" && first.skipped[0].reason.starts_with("the same picture as product A (line 2)"), "{:?}", first.skipped);

    let moved = import(feed(&[("A", "380"), ("C", "301")]), true);
    assert_eq!((moved.added, moved.updated, moved.unchanged, moved.removed), (0, 1, 1, 0), "{moved:#?}");
    let held = rows(&metadata);
    let (id, a) = &held["A"];
    assert!(catalogue.join(id).is_file() && a.image_url.as_deref().is_some_and(|url| url.ends_with("/warm-380.png")), "{id}: {a:?}");
    assert_eq!(read_rows(&metadata).unwrap().len(), 2, "one row per picture");
}

/// With `public_only` (the Discord command's default), neither the feed nor its pictures may be
/// fetched from an internal address: the fake shop on loopback is refused, and asked nothing.
#[test]
fn the_bots_imports_never_reach_inside_the_network() {
    let shop = FakeShop::start();
    let guarded = FetchSettings { concurrency: 1, retries: 0, timeout: std::time::Duration::from_secs(10), public_only: true };
    let err = lookalike::feed::read_feed(&shop.url("/feeds/shop.tsv"), 1 << 20, guarded).unwrap_err().to_string();
    assert!(err.contains("internal address (127.0.0.1)") && err.contains("discord.import_private_hosts"), "{err}");
    let scratch = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/feeds/shop.tsv")).unwrap().replace("{shop}", &shop.origin());
    let limits = ImageLimits { max_bytes: 1 << 20, max_pixels: 1 << 20 };
    let summary = lookalike::feed::import(&scratch.path().join("shop"), &scratch.path().join("items.jsonl"), &text, &level_two(), guarded, limits, &mut |_, _| {}).unwrap();
    assert_eq!(summary.added, 0);
    assert!(summary.skipped.iter().any(|s| s.reason.contains("internal address")), "{:?}", summary.skipped);
    assert_eq!(shop.requests("/"), 0, "nothing was asked of the internal host");
    for (address, internal) in
        [("10.1.2.3", true), ("169.254.169.254", true), ("100.64.0.1", true), ("::1", true), ("fd00::1", true), ("::ffff:192.168.0.1", true), ("93.184.216.34", false), ("2606:4700::1", false)]
    {
        assert_eq!(lookalike::feed::is_internal(address.parse().unwrap()), internal, "{address}");
    }
}
