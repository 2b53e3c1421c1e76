//! The index and `SearchService` end to end on the offline kit's real backbones: incremental
//! re-index, duplicates, metadata, searches guided by text, the busy answer, micro-batching,
//! searches during a re-index; and `lookalike index` killed at random moments.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookalike::index::Index;
use lookalike::search::{Query, SearchError, SearchService};

use crate::common::{self, heavy, picture, png, write_catalogue, World};

#[test]
fn search_service_end_to_end() {
    let _heavy = heavy(module_path!());
    let world = World::new(8);
    std::fs::copy(world.catalogue.join("warm/01.png"), world.catalogue.join("warm/01-copy.png")).unwrap();
    std::fs::write(world.catalogue.join("cool/broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let metadata = world.root.join("items.csv");
    std::fs::write(&metadata, "path,title,price,link\nwarm/01.png,Red blob,9.99,https://shop.example/blob\n").unwrap();
    let config = world.config(&[("LOOKALIKE__CATALOGUE__METADATA", metadata.to_str().unwrap()), ("LOOKALIKE__SEARCH__MAX_CONCURRENT_QUERIES", "4")]);
    let service = Arc::new(SearchService::start(&config).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let no_index = runtime.block_on(service.search(Query { image: png(&picture("warm", 40)), ..Query::default() })).unwrap_err();
    assert!(no_index.to_string().contains("run `lookalike index`"), "{no_index}");

    let mut events = Vec::new();
    let summary = service.upkeep().reindex(&mut |p| events.push(*p)).unwrap();
    assert_eq!((summary.added, summary.files, summary.vectors, summary.duplicates, summary.embedded), (18, 17, 16, 1, 17));
    assert_eq!(summary.failed.len(), 1, "{:?}", summary.failed);
    assert!(summary.failed[0].id == "cool/broken.png" && summary.failed[0].reason.contains("damaged"), "{:?}", summary.failed);
    assert_eq!(events.last().map(|p| (p.done, p.total)), Some((17, 17)));

    // A warm picture the catalogue lacks: the image vote picks warm; hits are warm, best first.
    let warm = png(&picture("warm", 40));
    let outcome = runtime.block_on(service.search(Query { image: warm.clone(), k: Some(3), ..Query::default() })).unwrap();
    assert_eq!(outcome.decision.categories[0], "warm", "{:?}", outcome.decision.reasons);
    assert_eq!(outcome.vote.backbones.len(), 3);
    assert_eq!(outcome.hits.len(), 3);
    assert!(outcome.hits.iter().all(|h| h.item.category == "warm"));
    assert!(outcome.hits.windows(2).all(|w| w[0].cosine >= w[1].cosine));
    for hit in &outcome.hits {
        assert!((hit.euclidean - (2.0 - 2.0 * hit.cosine).max(0.0).sqrt()).abs() < 1e-3, "unit vectors");
    }
    assert!(outcome.more && outcome.generation == 1 && outcome.timings.vision_ms > 0.0 && outcome.timings.total_ms >= outcome.timings.vision_ms);

    // A catalogue image finds itself first, its duplicate stored once with it, metadata attached.
    let itself = std::fs::read(world.catalogue.join("warm/01.png")).unwrap();
    let outcome = runtime.block_on(service.search(Query { image: itself, k: Some(2), ..Query::default() })).unwrap();
    let top = &outcome.hits[0];
    assert!(top.item.id == "warm/01-copy.png" && top.item.duplicates == ["warm/01.png"], "{top:?}");
    assert!(top.cosine > 0.999, "{}", top.cosine);
    assert_eq!(top.item.metadata.title.as_deref(), Some("Red blob"), "metadata found by the duplicate's id");

    // The sentence names the other category: text wins, its hits come first.
    let outcome = runtime.block_on(service.search(Query { image: warm.clone(), text: Some("the same but in blue stripes".into()), k: Some(3), ..Query::default() })).unwrap();
    assert_eq!(outcome.decision.categories, ["cool", "warm"], "{:?}", outcome.decision.reasons);
    assert!(outcome.hits.iter().all(|h| h.item.category == "cool"));
    assert_eq!(outcome.intent.as_ref().and_then(|i| i.category.as_deref()), Some("cool"));
    // The second page continues where the first stopped.
    let second = runtime.block_on(service.search(Query { image: warm.clone(), text: Some("the same but in blue stripes".into()), k: Some(3), page: 1, ..Query::default() })).unwrap();
    assert!(second.hits.iter().all(|h| !outcome.hits.iter().any(|o| o.item.id == h.item.id)));

    // Bad input: a clear error, and the service goes on.
    let error = runtime.block_on(service.search(Query { image: b"GIF89a garbage".to_vec(), ..Query::default() })).unwrap_err();
    assert!(matches!(error, SearchError::Image(_)), "{error}");
    let error = runtime.block_on(service.search(Query { image: warm.clone(), categories: Some(vec!["shoes".into()]), ..Query::default() })).unwrap_err();
    assert!(error.to_string().contains("unknown category `shoes`: the catalogue has cool, warm"), "{error}");

    // Six at once with four permits: some are told to wait, and those that queued together
    // behind a busy model thread were classified as one batch.
    let answers: Vec<Result<_, SearchError>> = runtime.block_on(async {
        let searches = (0..6).map(|n| {
            let (service, image) = (service.clone(), png(&picture(if n % 2 == 0 { "warm" } else { "cool" }, 50 + n)));
            tokio::spawn(async move { service.search(Query { image, ..Query::default() }).await })
        });
        let mut answers = Vec::new();
        for search in searches.collect::<Vec<_>>() {
            answers.push(search.await.unwrap());
        }
        answers
    });
    let busy = answers.iter().filter(|a| matches!(a, Err(SearchError::Busy(..)))).count();
    assert_eq!(busy, 2, "{:?}", answers.iter().map(|a| a.as_ref().map(|o| o.timings.batch).map_err(|e| e.to_string())).collect::<Vec<_>>());
    assert!(answers.iter().filter_map(|a| a.as_ref().ok()).any(|o| o.timings.batch > 1), "micro-batching");

    // A re-index with work to do: searches go on from generation 1 meanwhile, a second
    // re-index is refused, and afterwards generation 2 answers.
    write_catalogue(&world.catalogue, 6, 20);
    let reindexing = {
        let service = service.clone();
        std::thread::spawn(move || service.upkeep().reindex(&mut |_| {}))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !world.index.join("reindex.lock").exists() {
        assert!(Instant::now() < deadline && !reindexing.is_finished(), "the re-index never took its lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    let refused = service.upkeep().reindex(&mut |_| {}).unwrap_err();
    assert!(refused.to_string().contains("already running"), "{refused}");
    let mut during = Vec::new();
    while !reindexing.is_finished() {
        let outcome = runtime.block_on(service.search(Query { image: warm.clone(), ..Query::default() })).unwrap();
        during.push(outcome.generation);
    }
    let summary = reindexing.join().unwrap().unwrap();
    assert_eq!((summary.generation, summary.added, summary.embedded, summary.unchanged), (2, 13, 13, 17), "the broken file is retried");
    assert!(during.contains(&1), "searches answered during the re-index: {during:?}");
    let after = runtime.block_on(service.search(Query { image: warm, ..Query::default() })).unwrap();
    assert_eq!(after.generation, 2);
}

/// `eval --retrieval`: six items per category, each its category's picture with a mark of its
/// own (a square of one colour in one place); queries are other pictures of them (a little
/// brighter, a pixel off, through JPEG) under the item's name. The report finds them and counts
/// per category.
#[test]
fn retrieval_eval_finds_other_pictures_of_the_same_items() {
    let _heavy = heavy(module_path!());
    let world = World::new(6);
    let dir = world.root.join("pairs");
    let marks = [([0, 0, 0], 4, 4), ([255, 255, 0], 44, 4), ([0, 200, 0], 4, 44), ([255, 0, 255], 44, 44), ([120, 60, 0], 24, 4), ([255, 255, 255], 24, 44)];
    for class in ["warm", "cool"] {
        for (variant, (colour, left, top)) in marks.into_iter().enumerate() {
            let mut item = picture(class, 0);
            for (x, y) in (left..left + 16).flat_map(|x| (top..top + 16).map(move |y| (x, y))) {
                item.put_pixel(x, y, image::Rgb(colour));
            }
            let name = format!("{variant:02}.png");
            std::fs::create_dir_all(dir.join("catalogue").join(class)).unwrap();
            std::fs::create_dir_all(dir.join("queries").join(class)).unwrap();
            item.save(dir.join("catalogue").join(class).join(&name)).unwrap();
            let brighter = image::imageops::brighten(&item, 6);
            let shifted = image::RgbImage::from_fn(64, 64, |x, y| *brighter.get_pixel(x.saturating_sub(1), y));
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85).encode_image(&shifted).unwrap();
            image::load_from_memory(&jpeg).unwrap().to_rgb8().save(dir.join("queries").join(class).join(&name)).unwrap();
        }
    }
    // The tiny heads never saw the marks: their vote on them (checked in tests/it/train.rs) is
    // often sure and wrong, and their vectors change from one training run to the next (3 runs
    // in 9 here missed R@1 0.75 with the default gate and combined vectors). Every category is
    // searched, by the backbones' pooled vectors alone: the report is measured on fixed vectors.
    let every_category = [("LOOKALIKE__SEARCH__CATEGORY_MASS", "1.0"), ("LOOKALIKE__SEARCH__CATEGORY_PRIOR_WEIGHT", "0.0"), ("LOOKALIKE__INDEX__EMBEDDING", "pooled")];
    let report = lookalike::retrieval::evaluate(&world.config(&every_category), &dir).unwrap();
    assert_eq!((report.queries, report.catalogue_items, report.embedding.as_str()), (12, 12, "pooled"));
    assert!(report.recall_at_5 >= 0.9 && report.recall_at_1 >= 0.75, "{report:?}");
    assert!(report.recall_at_1 <= report.recall_at_5 && report.categories_searched == 2.0 && report.same_category_precision_at_5 >= 0.5, "{report:?}");
    let categories: Vec<(&str, usize)> = report.per_category.iter().map(|c| (c.category.as_str(), c.queries)).collect();
    assert_eq!(categories, [("cool", 6), ("warm", 6)]);
    assert!(report.search_share > 0.0 && report.search_share < 1.0);
    assert!(lookalike::retrieval::render(&report).contains("per category"));
}

#[test]
fn a_killed_reindex_always_leaves_a_loadable_index() {
    let _heavy = heavy(module_path!());
    let world = World::new(6);
    let run = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lookalike"));
        command.args(args).current_dir(env!("CARGO_MANIFEST_DIR")).envs(world.env.iter().cloned()).env("RUST_LOG", "warn");
        command
    };
    let first = run(&["index"]).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // Every later run embeds four new images and drops one: time one such run.
    let change = |round: u32| {
        write_catalogue(&world.catalogue, 2, 30 + 2 * round);
        let _ = std::fs::remove_file(world.catalogue.join(format!("warm/{:02}.png", round % 6)));
    };
    change(0);
    let started = Instant::now();
    assert!(run(&["index"]).output().unwrap().status.success());
    let full_run = started.elapsed();

    // Kill re-indexes with SIGKILL: six at seeded random moments over a whole run, six at
    // random moments just after the new generation's folder appears (while it is written).
    let mut rng = lookalike::rng::Rng::new(11);
    let mut random = move || rng.unit_f64();
    let writing = |dir: &Path| std::fs::read_dir(dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".partial"));
    let (mut old, mut new, mut mid_write) = (0, 0, 0);
    for round in 1..=12u32 {
        change(round);
        let before = Index::open_latest(&world.index).unwrap().unwrap().0.generation();
        let mut child = run(&["index"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        if round <= 6 {
            std::thread::sleep(full_run.mul_f64(1.2 * random()));
        } else {
            let deadline = Instant::now() + full_run * 10 + Duration::from_secs(30);
            while !writing(&world.index) && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "round {round}: the re-index neither wrote a generation nor ended");
                std::thread::sleep(Duration::from_micros(100));
            }
            // At once (the files are being written and flushed: milliseconds), up to 8 ms
            // (the vectors and manifest), up to 40 ms (the rename).
            let span = match round {
                7 | 8 => 0.0,
                9 => 8_000.0,
                _ => 40_000.0,
            };
            std::thread::sleep(Duration::from_micros((span * random()) as u64));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        mid_write += writing(&world.index) as usize;

        let (index, warnings) = Index::open_latest(&world.index).unwrap().expect("an index is always there");
        assert!(warnings.is_empty(), "round {round}: {warnings:?}");
        if index.generation() > before {
            new += 1
        } else {
            old += 1
        }
        // It answers: a stored vector finds its own item first.
        let categories: Vec<String> = index.manifest.categories.iter().map(|c| c.name.clone()).collect();
        let params = lookalike::index::SearchParams {
            k: 1,
            offset: 0,
            metric: lookalike::config::Metric::Cosine,
            min_similarity: 0.0,
            near_duplicate_cosine: 1.1,
            price: Default::default(),
            variants_apart: false,
        };
        let page = index.search(&index.vectors(&[0]).unwrap(), &categories, &params).unwrap();
        assert_eq!(page.hits[0].item.id, index.manifest.items[0].id, "round {round}");
    }
    eprintln!("12 kills: {old} left the old generation, {new} the new one, {mid_write} interrupted the writing of a generation (a run takes {:.1} s)", full_run.as_secs_f64());
    assert!(mid_write >= 1, "no kill landed while a generation was written, so this test proved nothing about it");

    // The killed runs left a lock and partial folders behind: the next run takes over the lock,
    // clears them, and finishes.
    let last = run(&["index"]).output().unwrap();
    assert!(last.status.success(), "{}", String::from_utf8_lossy(&last.stderr));
    let leftovers: Vec<String> =
        std::fs::read_dir(&world.index).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".partial") || n == "reindex.lock").collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Damage the newest vectors: `search` says so, and answers from the generation before.
    let (newest, _) = Index::open_latest(&world.index).unwrap().unwrap();
    let vectors = world.index.join(format!("gen-{:06}", newest.generation())).join("vectors.f32");
    let mut bytes = std::fs::read(&vectors).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&vectors, bytes).unwrap();
    let query = world.catalogue.join("cool/03.png");
    let search = run(&["search", "--image", query.to_str().unwrap(), "--json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&search.stderr);
    assert!(search.status.success(), "{stderr}");
    assert!(stderr.contains("is damaged") && stderr.contains("falling back to"), "{stderr}");
    let outcome: serde_json::Value = serde_json::from_slice(&search.stdout).unwrap();
    assert!(outcome["generation"].as_u64().unwrap() < newest.generation());
    assert_eq!(outcome["hits"][0]["id"], "cool/03.png");
}

/// New heads written over the heads folder (as `lookalike train --out` does) are picked up by
/// the next re-index of a running service: the catalogue is embedded again with them while
/// searches go on being answered, then they answer. Damaged heads are refused and the running
/// ones stay.
#[test]
fn a_reindex_swaps_in_new_heads_while_searches_go_on() {
    let _heavy = heavy(module_path!());
    let world = World::new(8);
    let config = world.config(&[]);
    let service = Arc::new(SearchService::start(&config).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    assert_eq!(service.upkeep().reindex(&mut |_| {}).unwrap().embedded, 16);
    let before = service.embedding_key();

    // Other heads (another seed), trained elsewhere from the same cached features.
    let other = world.root.join("other-heads");
    let mut options = common::train_options(&world.catalogue, &other, &world.root.join("cache"));
    options.seed = 7;
    let training = common::one_training();
    lookalike::vision::train::train(&mut common::kit_backbones(), lookalike::config::Profile::Kit, &options).unwrap();
    drop(training);
    let heads = config.models.heads_dir.clone();
    let installed = lookalike::files::heads::head_path(&heads, "squeezenet1_1");

    std::fs::write(&installed, b"not a safetensors file").unwrap();
    let refused = format!("{:#}", service.upkeep().reindex(&mut |_| {}).unwrap_err());
    assert!(refused.contains("cannot load the new heads; the running ones stay"), "{refused}");
    assert_eq!(service.embedding_key(), before);
    runtime.block_on(service.search(Query { image: png(&picture("warm", 50)), ..Query::default() })).expect("the old heads still answer");

    for entry in std::fs::read_dir(&other).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, heads.join(path.file_name().unwrap())).unwrap();
    }
    let searcher = service.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let searches = runtime.spawn(async move {
        let mut answered = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let outcome = searcher.search(Query { image: png(&picture("cool", 51)), ..Query::default() }).await.expect("every search during the swap is answered");
            answered.push(outcome.generation);
        }
        answered
    });
    std::thread::sleep(Duration::from_millis(300));
    let swapped = service.upkeep().reindex(&mut |_| {}).unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = runtime.block_on(searches).unwrap();
    assert!(swapped.new_heads && swapped.embedded == 16, "every image embedded again with the new heads: {swapped:?}");
    assert!(!answered.is_empty() && answered.contains(&1), "searches were answered from the old generation during the swap: {answered:?}");
    assert_ne!(service.embedding_key().weights_sha256, before.weights_sha256);
    let after = runtime.block_on(service.search(Query { image: png(&picture("cool", 52)), ..Query::default() })).unwrap();
    assert!(after.generation == swapped.generation && !after.hits.is_empty(), "{after:?}");
    let log = std::fs::read_to_string(world.root.join("audit.jsonl")).unwrap();
    assert!(log.contains("\"action\":\"heads_swapped\"") && log.contains("\"re_embedded\":true"), "{log}");

    let again = service.upkeep().reindex(&mut |_| {}).unwrap();
    assert!(!again.new_heads && again.embedded == 0, "{again:?}");
}
