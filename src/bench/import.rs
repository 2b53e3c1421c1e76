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

    // The baseline: the same pictures indexed from disk, by a service like the import's.
    let disk = scratch.path().join("disk");
    copy_catalogue(&pictures[..products].iter().map(PathBuf::as_path).collect::<Vec<_>>(), &disk.join("catalogue"))?;
    let (embedded, _, disk_s) = timed_reindex(&kit_service(config, &disk)?)?;
    say(format!("indexing {embedded} pictures from disk: {disk_s:.1} s ({:.1} pictures/s)", embedded as f64 / disk_s));

    let feed = scratch.path().join("feed.tsv");
    std::fs::write(&feed, feed_text(&pictures[..products], &shop.origin))?;
    let imported = scratch.path().join("imported");
    let service = kit_service(config, &imported)?;
    let options = ImportOptions::default();
    let feed_arg = feed.to_string_lossy().into_owned();
    let started = Instant::now();
    let first = service.upkeep().import_feed(&feed_arg, &options, true, crate::audit::Who::cli(), &mut |_| {})?;
    let import_s = started.elapsed().as_secs_f64();
    let traffic = first.summary.traffic;
    let reindexed = first.reindex.as_ref().map_or(0, |r| r.embedded);
    say(format!(
        "importing {products} products: downloads {} pictures in {:.1} s = {:.0} pictures/s ({} concurrent), re-index embeds {reindexed}; whole import {import_s:.1} s = {:.2}x indexing from disk",
        traffic.downloaded,
        traffic.seconds,
        traffic.downloaded as f64 / traffic.seconds.max(1e-9),
        config.catalogue.import_concurrency,
        import_s / disk_s
    ));
    let peak_1k = memory_peak_mb().unwrap_or(0.0);
    let started = Instant::now();
    let again = service.upkeep().import_feed(&feed_arg, &options, true, crate::audit::Who::cli(), &mut |_| {})?;
    let again_s = started.elapsed().as_secs_f64();
    let again_embedded = again.reindex.as_ref().map_or(0, |r| r.embedded);
    say(format!("the same feed again: {} downloaded, {again_embedded} embedded, {} unchanged, in {again_s:.2} s", again.summary.traffic.downloaded, again.summary.unchanged));
    drop(service);

    // Memory: the import alone (downloads, placing, the metadata file), ten times as many products.
    std::fs::write(&feed, feed_text(&pictures[..most], &shop.origin))?;
    let large = scratch.path().join("large");
    reset_memory_peak();
    let before_mb = memory_peak_mb().unwrap_or(0.0);
    let started = Instant::now();
    let text = std::fs::read_to_string(&feed)?;
    let settings = FetchSettings::from_config(&config.catalogue);
    let summary = crate::feed::import(&large.join("catalogue"), &large.join("items.jsonl"), &text, &options, settings, ImageLimits::from_config(&config.limits), &mut |_, _| {})?;
    let large_s = started.elapsed().as_secs_f64();
    let peak_10k = memory_peak_mb().unwrap_or(0.0);
    say(format!(
        "importing {most} products without the re-index: {} pictures in {large_s:.1} s ({:.0} pictures/s); peak resident memory {peak_10k:.0} MB (it was {before_mb:.0} MB before)",
        summary.added,
        summary.traffic.downloaded as f64 / summary.traffic.seconds.max(1e-9)
    ));
    say(format!("peak resident memory of the whole import of {products} products, models and re-index included: {peak_1k:.0} MB"));
    if json {
        let report = serde_json::json!({
            "machine": machine(),
            "products": products,
            "disk_index_s": disk_s,
            "import_s": import_s,
            "ratio_to_disk": import_s / disk_s,
            "download_per_s": traffic.downloaded as f64 / traffic.seconds.max(1e-9),
            "second_import": { "downloaded": again.summary.traffic.downloaded, "embedded": again_embedded, "seconds": again_s },
            "peak_mb_with_index": peak_1k,
            "large": { "products": most, "seconds": large_s, "peak_mb": peak_10k, "before_mb": before_mb },
        });
        println!("{report:#}");
    }
    Ok(())
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

/// A Merchant Center TSV feed with one product per picture, its category the picture's folder.
fn feed_text(pictures: &[PathBuf], origin: &str) -> String {
    let mut text = String::from("id\ttitle\tlink\timage_link\tprice\tproduct_type\n");
    for (n, path) in pictures.iter().enumerate() {
        let category = path.parent().and_then(Path::file_name).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        text.push_str(&format!("p{n}\t{category} no. {n}\t{origin}/p/{n}\t{origin}/images/{category}/{file}\t{}.99 USD\tApparel > {category}\n", 5 + n % 50));
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
