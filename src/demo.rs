//! `lookalike demo`, the README's main job on the embedded default: a Fashion-MNIST catalogue
//! (titles and prices) from the offline kit, heads trained if there are none, the index, a few
//! image + sentence queries and one by words alone, printed and drawn as a contact sheet.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;
use crate::imaging::{self, ImageLimits};
use crate::search::{self, Query, SearchService};
use crate::vision::data::{self, export_fashion_mnist, FashionMnistExport};
use crate::vision::ensemble::HeadsInfo;
use crate::vision::train::TrainOptions;
use crate::{models, plot};

/// Where the demo's Fashion-MNIST images are exported (train/, val/, test/).
pub const DATA: &str = "runs/demo-data";
/// Catalogue images per category, from Fashion-MNIST's test set.
const CATALOGUE_PER_CLASS: usize = 30;
/// Fashion-MNIST images per category the demo takes: the first of the training file for
/// training, the next for validation, the first of the test file for the catalogue and queries.
pub const TRAIN_PER_CLASS: usize = 100;
pub const VAL_PER_CLASS: usize = 10;
pub const TEST_PER_CLASS: usize = CATALOGUE_PER_CLASS + 10;
/// Where the contact sheet of the demo's queries goes.
pub const SHEET: &str = "runs/demo-sheet.png";

/// The demo's queries: a held-out test image of a category, and what the shopper says.
const QUERIES: [(&str, Option<&str>); 4] =
    [("sneaker", None), ("sneaker", Some("like this, but a sandal")), ("pullover", Some("a coat like this")), ("shirt", Some("not a t-shirt, something like this"))];

/// The demo's search by words alone.
const WORDS_QUERY: &str = "a coat under 30, cheapest first";

/// How the demo trains its heads on `DATA`: the library's defaults, but no augmented views and
/// more epochs (on 2 CPU cores each view costs as much feature extraction as the plain images).
pub fn train_options(out: PathBuf, limits: &crate::config::LimitsConfig) -> TrainOptions {
    TrainOptions { epochs: 30, augmented_views: 0, ..TrainOptions::new(PathBuf::from(DATA), out, ImageLimits::from_config(limits)) }
}

/// Exports the demo's Fashion-MNIST folders (`DATA`: train, val, test), keeping what exists;
/// returns how many images were written.
pub fn export_data() -> anyhow::Result<usize> {
    export_fashion_mnist(Path::new(DATA), FashionMnistExport { train_per_class: TRAIN_PER_CLASS, val_per_class: VAL_PER_CLASS, test_per_class: TEST_PER_CLASS })
}

pub fn run(config: &Config) -> anyhow::Result<()> {
    let manifest = models::Manifest::load(&config.models.dir)?;
    let rows = models::status(&manifest, &config.models.dir, Some(config.models.profile.into()))?;
    let missing: Vec<&str> = rows.iter().filter(|row| !row.installed()).map(|row| row.id.as_str()).collect();
    anyhow::ensure!(missing.is_empty(), "the {} profile is incomplete ({}): run `make setup`", config.models.profile, missing.join(", "));
    println!("{}", models::torch_summary());

    // 1. The catalogue: 30 Fashion-MNIST test images per category, with titles.
    let data = Path::new(DATA);
    let written = export_data()?;
    if written > 0 {
        println!("exported {written} Fashion-MNIST images to {DATA}");
    }
    let mut config = config.clone();
    let (held_out, metadata) = build_catalogue(&data.join("test"), &config.catalogue.dir)?;
    if config.catalogue.metadata.as_os_str().is_empty() {
        config.catalogue.metadata = metadata;
    }

    // 2. Heads: trained once on 1,000 training images, if there are none yet.
    if let Ok(heads) = HeadsInfo::load(&config.models.heads_dir) {
        let mut demo_classes: Vec<&str> = data::FASHION_MNIST_CLASSES.to_vec();
        demo_classes.sort();
        anyhow::ensure!(
            heads.classes == demo_classes,
            "the heads in {} are for other categories ({}); run the demo with LOOKALIKE__MODELS__HEADS_DIR=runs/demo-heads",
            config.models.heads_dir.display(),
            heads.classes.join(", ")
        );
    } else {
        println!("no trained heads in {}: training them on {DATA}/train (first run only; features are cached)", config.models.heads_dir.display());
        let options = train_options(config.models.heads_dir.clone(), &config.limits);
        let report = crate::vision::train::run(options, &config.models)?;
        print!("{}", crate::vision::train::render(&report));
    }

    // 3. The index, incrementally.
    let service = SearchService::start(&config)?;
    println!("indexing {} ({} profile, {} embeddings)", config.catalogue.dir.display(), config.models.profile, config.index.embedding.as_str());
    print!("{}", crate::index::render_summary(&search::reindex_with_bar(&service)?, crate::index::Audience::Operator));

    // 4. Queries with images the catalogue does not hold.
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let limits = ImageLimits::from_config(&config.limits);
    let mut sheet = Vec::new();
    for (category, text) in QUERIES {
        let path = held_out.iter().find(|p| p.parent().and_then(Path::file_name).is_some_and(|n| n == category)).context("a held-out image per category")?;
        let bytes = std::fs::read(path)?;
        println!("\n== query: {} (a {category}), sentence: {}", path.display(), text.map_or("none".to_string(), |t| format!("{t:?}")));
        let outcome = runtime.block_on(service.search(Query { image: bytes.clone(), text: text.map(str::to_string), k: Some(5), page: 0, categories: None }))?;
        print!("{}", crate::report::render(&outcome));
        let label = format!("{category}: {}", text.unwrap_or("(no sentence)"));
        sheet.push(crate::report::sheet_row(imaging::decode(&bytes, limits)?, &label, &outcome, limits));
    }
    // Words alone: no photo, no backbone; the items' titles and prices answer.
    println!("\n== query: no photo, sentence: {WORDS_QUERY:?}");
    let outcome = runtime.block_on(service.search(Query { text: Some(WORDS_QUERY.to_string()), k: Some(5), ..Query::default() }))?;
    print!("{}", crate::report::render(&outcome));
    sheet.push(crate::report::sheet_row(image::RgbImage::from_pixel(28, 28, image::Rgb([255, 255, 255])), &format!("no photo: {WORDS_QUERY}"), &outcome, limits));
    plot::contact_sheet(Path::new(SHEET), "lookalike demo: Fashion-MNIST catalogue, query (framed) and its 5 nearest items", &sheet)?;
    println!("\ncontact sheet of every query: {SHEET}");
    println!("try: cargo run -- search --image {} --text \"a bag like this\" --sheet runs/hits.png", held_out[0].display());
    Ok(())
}

/// Copies the first `CATALOGUE_PER_CLASS` test images of each category into the catalogue and
/// writes their titles and prices to a JSON-lines file beside it; returns one held-out image per category
/// and the metadata path.
fn build_catalogue(test: &Path, catalogue: &Path) -> anyhow::Result<(Vec<PathBuf>, PathBuf)> {
    let (classes, examples, _) = crate::catalogue::labelled(test, None)?;
    let mut held_out = Vec::new();
    let mut titles = String::new();
    for (class, name) in classes.iter().enumerate() {
        let members: Vec<&PathBuf> = examples.iter().filter(|e| e.class == class).map(|e| &e.path).collect();
        let folder = catalogue.join(name);
        std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
        for path in members.iter().take(CATALOGUE_PER_CLASS) {
            let file = path.file_name().context("file name")?;
            let target = folder.join(file);
            if !target.exists() {
                std::fs::copy(path, &target).with_context(|| format!("cannot copy {} to {}", path.display(), target.display()))?;
            }
            let number = Path::new(file).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let pretty = name.replace('-', " ");
            let title = format!("{}{} no. {number}", pretty[..1].to_uppercase(), &pretty[1..]);
            // A price from the image's number: 5.00 to 54.00, the same on every machine.
            let price = format!("{}.00", 5 + number.parse::<u64>().unwrap_or(0) % 50);
            titles.push_str(&serde_json::json!({ "id": format!("{name}/{}", file.to_string_lossy()), "title": title, "price": price }).to_string());
            titles.push('\n');
        }
        held_out.extend(members.get(CATALOGUE_PER_CLASS + 5).map(|p| p.to_path_buf()));
    }
    let metadata = catalogue.with_extension("jsonl");
    crate::files::write_atomically(&metadata, titles.as_bytes())?;
    Ok((held_out, metadata))
}
