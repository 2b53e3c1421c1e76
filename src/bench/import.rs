//! `lookalike bench --only import`: a shop's feed of Fashion-MNIST products whose pictures a
//! loopback web server serves, imported (downloads, then the kit profile's re-index) against
//! indexing the same pictures from disk in the same process; a second import of the unchanged
//! feed; and the peak memory of importing ten times as many products without the re-index.

use std::path::{Path, PathBuf};
use std::time::Instant;

use axum::response::IntoResponse;

use super::index::{copy_catalogue, service, timed_reindex};
use super::machine;
use super::suite::{memory_peak_mb, reset_memory_peak};
use crate::catalogue::labelled;
use crate::config::{Config, Profile};
use crate::feed::{FetchSettings, ImportOptions};
use crate::imaging::ImageLimits;
use crate::vision::data::{export_fashion_mnist, FashionMnistExport};
use crate::vision::{self, Backbone};

/// Fashion-MNIST's test set: 1,000 pictures per category.
const MOST: usize = 10_000;

/// Prints a line per figure, and JSON with `json`.
pub fn import(config: &Config, products: usize, json: bool) -> anyhow::Result<()> {
    let say = |line: String| if json { eprintln!("{line}") } else { println!("{line}") };
    say(format!("importing a product feed, {}", machine()));
    let (products, most) = (products.clamp(10, MOST), (products * 10).clamp(10, MOST));
    let scratch = tempfile::tempdir()?;
    let images = scratch.path().join("fashion-mnist");
    export_fashion_mnist(&images, FashionMnistExport { train_per_class: 0, val_per_class: 0, test_per_class: most.div_ceil(10) })?;
    let (_, examples, _) = labelled(&images.join("test"), None)?;
    let pictures: Vec<PathBuf> = examples.into_iter().map(|e| e.path).collect();
    let shop = Shop::start(images.join("test"))?;
    // Memory first, before any model is loaded: the import alone (downloads, placing, the
    // metadata file) of the compared size and of ten times as many products.
    let mut alone = Vec::new();
    for count in [products, most] {
        let run = import_only(config, &scratch.path().join(format!("alone-{count}")), &pictures[..count], &shop.origin)?;
        say(format!(
            "importing {count} products without the re-index: {} pictures downloaded in {:.1} s ({:.0} pictures/s, {} concurrent), whole import {:.1} s; resident memory {:.0} MB before, peak {:.0} MB",
            run.downloaded,
            run.download_s,
            run.downloaded as f64 / run.download_s.max(1e-9),
            config.catalogue.import_concurrency,
            run.seconds,
            run.before_mb,
            run.peak_mb
        ));
        alone.push(run);
    }

    // The baseline: the same pictures indexed from disk with the same words, by a service like
    // the import's, once before the import and once after it (the machine's drift shows).
    let disk_once = |name: &str| -> anyhow::Result<f64> {
        let disk = scratch.path().join(name);
        copy_catalogue(&pictures[..products].iter().map(PathBuf::as_path).collect::<Vec<_>>(), &disk.join("catalogue"))?;
        std::fs::write(disk.join("items.jsonl"), disk_metadata(&pictures[..products], &shop.origin))?;
        let (embedded, _, seconds) = timed_reindex(&kit_service(config, &disk)?)?;
        say(format!("indexing {embedded} pictures from disk ({name}): {seconds:.1} s ({:.1} pictures/s)", embedded as f64 / seconds));
        Ok(seconds)
    };
    let disk_before = disk_once("disk-before")?;

    let feed = scratch.path().join("feed.tsv");
    std::fs::write(&feed, feed_text(&pictures[..products], &shop.origin))?;
    let service = kit_service(config, &scratch.path().join("imported"))?;
    let (options, feed_arg) = (ImportOptions::default(), feed.to_string_lossy().into_owned());
    reset_memory_peak();
    let started = Instant::now();
    let first = service.upkeep().import_feed(&feed_arg, &options, true, crate::audit::Who::cli(), &mut |_| {})?;
    let import_s = started.elapsed().as_secs_f64();
    let peak_with_index = memory_peak_mb().unwrap_or(0.0);
    let (traffic, reindex_s) = (first.summary.traffic, first.reindex.as_ref().map_or(0.0, |r| r.seconds));
    let started = Instant::now();
    let again = service.upkeep().import_feed(&feed_arg, &options, true, crate::audit::Who::cli(), &mut |_| {})?;
    let again_s = started.elapsed().as_secs_f64();
    let again_embedded = again.reindex.as_ref().map_or(0, |r| r.embedded);
    drop(service);
    let disk_after = disk_once("disk-after")?;
    let disk_s = (disk_before + disk_after) / 2.0;
    say(format!(
        "importing {products} products: downloads {} pictures in {:.1} s ({:.0} pictures/s), the import's own work {:.1} s, its re-index {reindex_s:.1} s; whole import {import_s:.1} s = {:.2}x indexing from disk (mean of {disk_before:.1} and {disk_after:.1} s); peak resident memory {peak_with_index:.0} MB, models included",
        traffic.downloaded,
        traffic.seconds,
        traffic.downloaded as f64 / traffic.seconds.max(1e-9),
        first.summary.seconds,
        import_s / disk_s
    ));
    say(format!("the same feed again: {} downloaded, {again_embedded} embedded, {} unchanged, in {again_s:.2} s", again.summary.traffic.downloaded, again.summary.unchanged));
    if json {
        let report = serde_json::json!({
            "machine": machine(),
            "products": products,
            "disk_index_s": [disk_before, disk_after],
            "import_s": import_s,
            "import_own_s": first.summary.seconds,
            "reindex_s": reindex_s,
            "ratio_to_disk": import_s / disk_s,
            "download_per_s": traffic.downloaded as f64 / traffic.seconds.max(1e-9),
            "peak_mb_with_index": peak_with_index,
            "second_import": { "downloaded": again.summary.traffic.downloaded, "embedded": again_embedded, "seconds": again_s },
            "without_reindex": alone,
        });
        println!("{report:#}");
    }
    Ok(())
}

/// What importing without the re-index cost.
#[derive(serde::Serialize)]
struct ImportOnly {
    products: usize,
    downloaded: usize,
    download_s: f64,
    seconds: f64,
    before_mb: f64,
    peak_mb: f64,
}

/// Imports a feed of `pictures` into a catalogue of its own under `scratch`, without the
/// re-index, measuring the process's peak resident memory from here.
fn import_only(config: &Config, scratch: &Path, pictures: &[PathBuf], origin: &str) -> anyhow::Result<ImportOnly> {
    let (root, feed) = (scratch.to_path_buf(), feed_text(pictures, origin));
    reset_memory_peak();
    let before_mb = memory_peak_mb().unwrap_or(0.0);
    let settings = FetchSettings::from_config(&config.catalogue);
    let summary = crate::feed::import(&root.join("catalogue"), &root.join("items.jsonl"), &feed, &ImportOptions::default(), settings, ImageLimits::from_config(&config.limits), &mut |_, _| {})?;
    let t = summary.traffic;
    Ok(ImportOnly { products: pictures.len(), downloaded: t.downloaded, download_s: t.seconds, seconds: summary.seconds, before_mb, peak_mb: memory_peak_mb().unwrap_or(0.0) })
}

/// A service over `root/catalogue` with the kit's backbones (random heads: timing only) and a
/// metadata file, as an import needs.
fn kit_service(config: &Config, root: &Path) -> anyhow::Result<crate::search::SearchService> {
    let mut config = config.clone();
    config.catalogue.metadata = root.join("items.jsonl");
    let (models_dir, placement) = (config.models.dir.clone(), vision::placement(&config.models)?);
    let built = service(&config, root, Profile::Kit, move || vision::backbones(Profile::Kit).into_iter().map(|s| Backbone::load(s, &models_dir, placement)).collect())?;
    Ok(built)
}

/// Product `n` of a picture: (category folder, file name, title, price).
fn product(n: usize, path: &Path) -> (String, String, String, String) {
    let name = |p: Option<&std::ffi::OsStr>| p.map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    let category = name(path.parent().and_then(Path::file_name));
    let title = format!("{category} no. {n}");
    (category, name(path.file_name()), title, format!("{}.99 USD", 5 + n % 50))
}

/// A Merchant Center TSV feed with one product per picture, its category the picture's folder.
fn feed_text(pictures: &[PathBuf], origin: &str) -> String {
    let mut text = String::from("id\ttitle\tlink\timage_link\tprice\tproduct_type\n");
    for (n, path) in pictures.iter().enumerate() {
        let (category, file, title, price) = product(n, path);
        text.push_str(&format!("p{n}\t{title}\t{origin}/p/{n}\t{origin}/images/{category}/{file}\t{price}\tApparel > {category}\n"));
    }
    text
}

/// The metadata rows the import would write for the same products, keyed by the files on disk.
fn disk_metadata(pictures: &[PathBuf], origin: &str) -> String {
    let mut text = String::new();
    for (n, path) in pictures.iter().enumerate() {
        let (category, file, title, price) = product(n, path);
        let row = serde_json::json!({ "id": format!("{category}/{file}"), "title": title, "price": price, "link": format!("{origin}/p/{n}") });
        text.push_str(&format!("{row}\n"));
    }
    text
}

/// A web server on loopback serving the files under a folder, on a thread of its own.
struct Shop {
    origin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shop {
    fn start(folder: PathBuf) -> anyhow::Result<Shop> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let origin = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("the listener");
                let serve_file = move |axum::extract::Path((category, file)): axum::extract::Path<(String, String)>| {
                    let path = folder.join(category).join(file);
                    async move {
                        match tokio::fs::read(path).await {
                            Ok(bytes) => ([(axum::http::header::CONTENT_TYPE, "image/png")], bytes).into_response(),
                            Err(_) => axum::http::StatusCode::NOT_FOUND.into_response(),
                        }
                    }
                };
                let app = axum::Router::new().route("/images/:category/:file", axum::routing::get(serve_file));
                let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stopped.await.unwrap_or(()) }).await;
            });
        });
        Ok(Shop { origin, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
