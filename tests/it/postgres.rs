//! The PostgreSQL backend against a real server (PostgreSQL 18 + pgvector 0.8, started by
//! `tests/postgres/with-server`, which `make test` and .ci/run wrap `cargo test` in): the same
//! hits as the embedded index, HNSW recall, a re-index killed at random moments, several
//! processes sharing one database during a re-index, a read replica, a restart mid-run, and the
//! errors an operator meets. Vectors come from a deterministic fake embedder (clustered like
//! real embeddings), except in the end-to-end test, which runs the kit's real backbones.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lookalike::config::Metric;
use lookalike::index::embedded::Embedded;
use lookalike::index::postgres::{Postgres, Settings};
use lookalike::index::{Backend, EmbeddingKey, IndexError, Page, ReindexError, ReindexJob, Scope, SearchMethod, SearchParams};
use lookalike::rng::Rng;

use crate::common::{self, heavy, Heavy};

const DIM: usize = 48;
const CATEGORIES: [&str; 3] = ["bags", "coats", "shoes"];

/// The tests share one server: one at a time (one of them restarts it). Taken after
/// [`heavy`], which they hold too: they time re-indexes and kill them at moments taken from a
/// timed run, as they did alone in their own binary.
static SERVER: Mutex<()> = Mutex::new(());

/// (primary URL, replica URL, pg_ctl command) from `tests/postgres/with-server`.
fn server() -> Option<(String, String, String)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("LOOKALIKE_TEST_PG_URL"), var("LOOKALIKE_TEST_PG_READ_URL"), var("LOOKALIKE_TEST_PG_CTL")) {
        (Some(url), Some(read), Some(ctl)) => Some((url, read, ctl)),
        _ => {
            assert!(std::env::var_os("LOOKALIKE_REQUIRE_POSTGRES").is_none(), "LOOKALIKE_REQUIRE_POSTGRES is set but no server is: run under tests/postgres/with-server");
            eprintln!("SKIPPED: no PostgreSQL server; run `tests/postgres/with-server cargo test --test it postgres::` (make test does)");
            None
        }
    }
}

/// A fresh database named `name` (pgvector created) on the test server; its URL.
fn database(url: &str, name: &str) -> String {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let url = with_database(url, name);
    postgres::Client::connect(&url, postgres::NoTls).unwrap().batch_execute("CREATE EXTENSION vector").unwrap();
    url
}

/// One test's share of the server: the server to itself, its own database, a scratch catalogue.
struct Fixture {
    url: String,
    read_url: String,
    ctl: String,
    scratch: tempfile::TempDir,
    catalogue: PathBuf,
    _server: std::sync::MutexGuard<'static, ()>,
    _heavy: Heavy,
}

/// A fresh database `name` and a catalogue of `per_category` files a category; `None` (the test
/// skips, saying so) without a server.
fn fixture(name: &str, per_category: u64) -> Option<Fixture> {
    let (url, read_url, ctl) = server()?;
    let heavy = heavy(module_path!());
    let server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let url = database(&url, name);
    let scratch = tempfile::tempdir().unwrap();
    let catalogue = scratch.path().join("catalogue");
    write_catalogue(&catalogue, per_category, 0);
    Some(Fixture { url, read_url: with_database(&read_url, name), ctl, scratch, catalogue, _server: server, _heavy: heavy })
}

/// The backend on `url`, every category searched exactly.
fn exact(url: &str) -> Postgres {
    Postgres::connect(&settings(url, "", 1_000_000)).unwrap()
}

fn with_database(url: &str, name: &str) -> String {
    format!("{}/{name}", url.rsplit_once('/').unwrap().0)
}

fn settings(url: &str, read_url: &str, hnsw_min_rows: usize) -> Settings {
    Settings { url: url.into(), read_url: read_url.into(), hnsw_min_rows, ef_search: 100 }
}

fn key() -> EmbeddingKey {
    EmbeddingKey { profile: "kit".into(), backbones: vec!["fake".into()], source: "combined".into(), pooling: "gem3".into(), weights_sha256: String::new(), dim: DIM }
}

/// A unit vector near category `category`'s centre, by seed: clustered as real embeddings are.
fn vector(category: usize, seed: u64) -> Vec<f32> {
    let (mut centre, mut noise) = (Rng::new(1000 + category as u64), Rng::new(seed.wrapping_mul(7919)));
    let v: Vec<f32> = (0..DIM).map(|_| centre.unit_f32() - 0.5 + 0.7 * (noise.unit_f32() - 0.5)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// Files whose text names their vector ("category seed"); `.png` so the scan takes them.
fn write_catalogue(root: &Path, per_category: u64, version: u64) {
    for (c, name) in CATEGORIES.iter().enumerate() {
        std::fs::create_dir_all(root.join(name)).unwrap();
        for i in 0..per_category {
            std::fs::write(root.join(name).join(format!("{i:05}.png")), format!("{c} {}", i + version * 100_000)).unwrap();
        }
    }
    // The same bytes twice: stored once. A near-twin: folded into its original in hits.
    std::fs::write(root.join("bags/twin-copy.png"), "0 3").unwrap();
    std::fs::write(root.join("bags/near-twin.png"), "0 3 near").unwrap();
}

fn fake_embed(paths: &[PathBuf]) -> Vec<Result<Vec<f32>, String>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
            let mut words = text.split(' ');
            let category: usize = words.next().unwrap().parse().unwrap();
            let seed: u64 = words.next().unwrap().parse().unwrap();
            let mut v = vector(category, seed);
            if words.next() == Some("near") {
                v[0] += 1e-4;
            }
            Ok(v)
        })
        .collect()
}

fn reindex(backend: &dyn Backend, catalogue: &Path) -> Result<lookalike::index::ReindexSummary, ReindexError> {
    reindex_slowly(backend, catalogue, Duration::ZERO)
}

fn reindex_slowly(backend: &dyn Backend, catalogue: &Path, pause: Duration) -> Result<lookalike::index::ReindexSummary, ReindexError> {
    let key = key();
    let job = ReindexJob { catalogue, metadata: std::path::Path::new(""), key: &key, chunk: 64, max_image_bytes: 1 << 20, partial: None, stop: None, describe: None, whitening: None, augmentation: 0 };
    let mut embed = |paths: &[PathBuf]| {
        std::thread::sleep(pause);
        fake_embed(paths)
    };
    backend.reindex(&job, &mut embed, &mut |_| {})
}

fn search(backend: &dyn Backend, query: &[f32], scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError> {
    let generation = backend.current()?.expect("a generation");
    backend.search(&generation, query, scopes, params)
}

fn params(k: usize) -> SearchParams {
    SearchParams { k, offset: 0, metric: Metric::Cosine, min_similarity: -1.0, near_duplicate_cosine: 0.999, price: Default::default(), variants_apart: false }
}

fn in_order(names: &[&str]) -> Vec<Scope> {
    names.iter().enumerate().map(|(rank, name)| Scope { category: name.to_string(), rank, bonus: 0.0 }).collect()
}

fn ids(page: &Page) -> Vec<String> {
    page.hits.iter().map(|h| h.item.id.clone()).collect()
}

#[test]
fn the_same_hits_as_the_embedded_index_and_hnsw_for_large_categories() {
    let Some(fixture) = fixture("same_hits", 400) else { return };
    let Fixture { url, scratch, catalogue, .. } = &fixture;
    let embedded = Embedded::open(&scratch.path().join("index"));
    let postgres = exact(url);
    assert!(postgres.current().unwrap().is_none(), "an empty database is 'not indexed yet', not an error");
    let (a, b) = (reindex(&embedded, catalogue).unwrap(), reindex(&postgres, catalogue).unwrap());
    assert_eq!((a.files, a.vectors, a.duplicates, a.embedded), (b.files, b.vectors, b.duplicates, b.embedded));
    assert_eq!((b.files, b.vectors, b.duplicates), (1202, 1201, 1));
    assert_eq!(embedded.current().unwrap().unwrap().categories, postgres.current().unwrap().unwrap().categories);

    let together = |bonuses: [f32; 3]| -> Vec<Scope> { CATEGORIES.iter().zip(bonuses).map(|(name, bonus)| Scope { category: name.to_string(), rank: 0, bonus }).collect() };
    let variants: Vec<(Vec<Scope>, SearchParams)> = vec![
        (in_order(&["bags", "coats"]), params(5)),
        (in_order(&["coats", "shoes", "bags"]), SearchParams { offset: 5, ..params(5) }),
        (together([0.0, -0.05, -0.3]), params(10)),
        (in_order(&["shoes"]), SearchParams { min_similarity: 0.5, ..params(20) }),
        (in_order(&["bags", "shoes"]), SearchParams { metric: Metric::Euclidean, ..params(5) }),
        (in_order(&["bags", "no-such-category"]), SearchParams { offset: 395, ..params(10) }),
    ];
    for q in 0..30u64 {
        let query = vector((q % 3) as usize, 900_000 + q);
        for (scopes, params) in &variants {
            let (want, got) = (search(&embedded, &query, scopes, params).unwrap(), search(&postgres, &query, scopes, params).unwrap());
            assert_eq!(ids(&want), ids(&got), "query {q}, {scopes:?}, {params:?}");
            for (w, g) in want.hits.iter().zip(&got.hits) {
                assert_eq!((w.cosine.to_bits(), w.euclidean.to_bits(), &w.collapsed, &w.item), (g.cosine.to_bits(), g.euclidean.to_bits(), &g.collapsed, &g.item), "scores bit for bit");
            }
            assert_eq!((want.more, got.method), (got.more, SearchMethod::Exact));
        }
    }
    // bags/00003.png (whose copy is stored with it, under its id) and its near-twin are one hit.
    let twin = search(&postgres, &vector(0, 3), &in_order(&["bags"]), &params(3)).unwrap();
    let mut stands_for: Vec<&str> = twin.hits[0].item.duplicates.iter().chain(&twin.hits[0].collapsed).map(String::as_str).chain([twin.hits[0].item.id.as_str()]).collect();
    stands_for.sort();
    assert_eq!(stands_for, ["bags/00003.png", "bags/near-twin.png"], "{:?}", twin.hits[0]);

    // Nothing changed: nothing embedded, vectors copied inside the database.
    let again = reindex(&postgres, catalogue).unwrap();
    assert_eq!((again.generation, again.embedded, again.unchanged), (2, 0, 1202));

    // Categories of 300 rows and more go through HNSW: near-exact, and said so.
    let approximate = Postgres::connect(&settings(url, "", 300)).unwrap();
    reindex(&approximate, catalogue).unwrap();
    assert_eq!(approximate.current().unwrap().unwrap().approximate(), CATEGORIES.map(String::from));
    let (mut same, mut total) = (0, 0);
    for q in 0..100u64 {
        let query = vector((q % 3) as usize, 800_000 + q);
        let scopes = in_order(&[CATEGORIES[(q % 3) as usize]]);
        let (want, got) = (search(&embedded, &query, &scopes, &params(5)).unwrap(), search(&approximate, &query, &scopes, &params(5)).unwrap());
        assert_eq!(got.method, SearchMethod::Hnsw);
        same += ids(&got).iter().filter(|id| ids(&want).contains(id)).count();
        total += 5;
    }
    assert!(same as f64 / total as f64 >= 0.95, "HNSW recall@5 {same}/{total}");
}

/// Run by the tests below in a process of its own (the test binary, started again, running
/// only this: `postgres::helper_process`, its name in `tests/it`).
#[test]
#[ignore = "a helper process of the tests in this file"]
fn helper_process() {
    let Ok(role) = std::env::var("HELPER_ROLE") else { return };
    let url = std::env::var("HELPER_URL").unwrap();
    let backend = exact(&url);
    match role.as_str() {
        "reindex" => {
            let pause = Duration::from_millis(std::env::var("HELPER_PAUSE_MS").unwrap().parse().unwrap());
            reindex_slowly(&backend, Path::new(&std::env::var("HELPER_CATALOGUE").unwrap()), pause).unwrap();
        }
        "search" => {
            // Searches until told to stop; every page is whole, from a generation that exists.
            let until = Instant::now() + Duration::from_secs(std::env::var("HELPER_SECONDS").unwrap().parse().unwrap());
            let mut seen = std::collections::BTreeSet::new();
            let mut searches = 0;
            while Instant::now() < until {
                let generation = backend.current().unwrap().unwrap();
                let query = vector(searches % 3, 700_000 + searches as u64);
                let page = backend.search(&generation, &query, &in_order(&CATEGORIES), &params(10)).unwrap();
                assert_eq!(page.hits.len(), 10, "generation {}", generation.number);
                assert!(page.hits.iter().all(|h| h.item.category == CATEGORIES[0]), "category-first");
                seen.insert(generation.number);
                searches += 1;
            }
            println!("HELPER searches={searches} generations={seen:?}");
        }
        other => panic!("unknown helper role {other}"),
    }
}

fn helper(role: &str, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "postgres::helper_process", "--ignored", "--nocapture", "--test-threads", "1"]).env("HELPER_ROLE", role).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

fn tables(url: &str) -> Vec<String> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let mut names: Vec<String> = client.query("SELECT tablename FROM pg_tables WHERE tablename LIKE 'lookalike_items_%'", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    names.sort_by_key(|name| name.trim_start_matches("lookalike_items_").parse::<u64>().unwrap_or(0));
    names
}

#[test]
fn a_reindex_killed_at_random_moments_leaves_the_previous_generation_searchable() {
    let Some(fixture) = fixture("killed", 300) else { return };
    let Fixture { url, scratch, catalogue, .. } = &fixture;
    let changed = scratch.path().join("changed");
    write_catalogue(&changed, 300, 1);
    let backend = exact(url);
    reindex(&backend, catalogue).unwrap();
    let query = vector(1, 424_242);
    // Which catalogue the answering generation holds (they differ in every vector).
    let holds = |backend: &Postgres| -> (u64, PathBuf) {
        let page = search(backend, &query, &in_order(&["coats"]), &params(5)).unwrap();
        assert_eq!(page.hits.len(), 5);
        (backend.current().unwrap().unwrap().number, page.hits[0].item.path.parent().unwrap().parent().unwrap().to_path_buf())
    };
    let run = |target: &Path| helper("reindex", &[("HELPER_URL", url.clone()), ("HELPER_CATALOGUE", target.display().to_string()), ("HELPER_PAUSE_MS", "40".into())]);

    // An undisturbed re-index in a process of its own, timed; then kills within that time.
    let started = Instant::now();
    let probe = run(&changed).output().unwrap();
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let full = started.elapsed();
    assert_eq!(holds(&backend), (2, changed.clone()));
    let mut rng = Rng::new(77);
    let (mut before_commit, mut after_commit) = (0, 0);
    for round in 0..6 {
        let (number, held) = holds(&backend);
        let other = if held == *catalogue { changed.clone() } else { catalogue.clone() };
        let at = full.mul_f32(0.1 + 0.85 * rng.unit_f32());
        let mut child = run(&other).spawn().unwrap();
        std::thread::sleep(at);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Either the previous generation, untouched, or the new one, whole: never a mix.
        let now = holds(&backend);
        if now == (number, held.clone()) {
            before_commit += 1;
        } else {
            assert_eq!(now, (number + 1, other), "round {round}, killed after {at:?}");
            after_commit += 1;
        }
    }
    assert!(before_commit >= 1, "at least one kill landed mid-re-index ({after_commit} after it)");
    // The lock died with the killed processes; the next re-index drops what they left behind.
    let summary = reindex(&backend, catalogue).unwrap();
    assert_eq!(&holds(&backend).1, catalogue);
    let generations: Vec<String> = (summary.generation - 2..=summary.generation).map(|n| format!("lookalike_items_{n}")).collect();
    assert_eq!(tables(url), generations, "three generations kept, no orphan tables");
}

#[test]
fn two_processes_search_one_database_while_a_third_reindexes() {
    let Some(fixture) = fixture("shared", 200) else { return };
    let Fixture { url, catalogue, .. } = &fixture;
    let backend = exact(url);
    reindex(&backend, catalogue).unwrap();
    let searchers: Vec<_> = (0..2).map(|_| helper("search", &[("HELPER_URL", url.clone()), ("HELPER_SECONDS", "10".into())]).spawn().unwrap()).collect();
    // Time for the searchers to start; then three re-indexes of about a second each.
    std::thread::sleep(Duration::from_millis(1500));
    let mut generations = Vec::new();
    for version in 1..=3 {
        write_catalogue(catalogue, 200, version);
        generations.push(reindex_slowly(&backend, catalogue, Duration::from_millis(100)).unwrap().generation);
    }
    for searcher in searchers {
        let output = searcher.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        // libtest writes its own "test helper_process ... " before the helper's line.
        let line = stdout.lines().find_map(|l| l.split_once("HELPER ").map(|(_, line)| line)).expect("the searcher's report");
        let searches: usize = line.split_whitespace().next().unwrap().trim_start_matches("searches=").parse().unwrap();
        assert!(searches > 20 && line.contains(", "), "searched across generations: {line}");
    }
    assert_eq!(generations, [2, 3, 4]);
}

#[test]
fn a_second_reindex_is_refused_while_one_runs() {
    let Some(fixture) = fixture("locked", 100) else { return };
    let Fixture { url, catalogue, .. } = &fixture;
    let backend = Arc::new(exact(url));
    let running = {
        let (backend, catalogue) = (backend.clone(), catalogue.clone());
        std::thread::spawn(move || reindex_slowly(backend.as_ref(), &catalogue, Duration::from_millis(200)))
    };
    std::thread::sleep(Duration::from_millis(400));
    let refused = reindex(backend.as_ref(), catalogue).unwrap_err();
    assert!(matches!(refused, ReindexError::AlreadyRunning(_)) && refused.to_string().contains("already running"), "{refused}");
    running.join().unwrap().unwrap();
    reindex(backend.as_ref(), catalogue).unwrap();
}

#[test]
fn a_read_replica_answers_searches_and_refuses_writes() {
    let Some(fixture) = fixture("replicated", 100) else { return };
    let Fixture { url, read_url, catalogue, .. } = &fixture;
    let primary = exact(url);
    let summary = reindex(&primary, catalogue).unwrap();
    // Searches from the replica once it has replayed the new generation.
    let replicated = (0..300)
        .find_map(|attempt| {
            let connected = Postgres::connect(&settings(url, read_url, 1_000_000));
            let current = connected.as_ref().map_err(|e| e.to_string()).map(|b| b.current().map_err(|e| e.to_string()));
            match current {
                Ok(Ok(Some(g))) if g.number == summary.generation => connected.ok(),
                other => {
                    if attempt % 20 == 19 {
                        eprintln!("replica not there yet: {other:?}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
            }
        })
        .expect("the replica replays the generation within 30 s");
    let query = vector(2, 31_337);
    assert_eq!(ids(&search(&replicated, &query, &in_order(&["shoes"]), &params(5)).unwrap()), ids(&search(&primary, &query, &in_order(&["shoes"]), &params(5)).unwrap()));
    // Writes go to the primary; a re-index aimed at the replica says so.
    let misdirected = exact(read_url);
    let refused = reindex(&misdirected, catalogue).unwrap_err().to_string();
    assert!(refused.contains("read-only replica") && refused.contains("index.postgres_read_url"), "{refused}");
}

#[test]
fn a_database_restart_fails_searches_clearly_then_recovers_by_itself() {
    let Some(fixture) = fixture("restarted", 50) else { return };
    let Fixture { url, ctl, catalogue, .. } = &fixture;
    let backend = exact(url);
    reindex(&backend, catalogue).unwrap();
    let query = vector(0, 5);
    let before = ids(&search(&backend, &query, &in_order(&["bags"]), &params(3)).unwrap());
    let pg_ctl = |action: &str| assert!(Command::new("sh").arg("-c").arg(format!("{ctl} {action}")).stdout(Stdio::null()).status().unwrap().success(), "pg_ctl {action}");

    pg_ctl("stop");
    let down = search(&backend, &query, &in_order(&["bags"]), &params(3)).unwrap_err();
    assert!(matches!(down, IndexError::Unavailable(_)), "{down}");
    assert!(down.to_string().contains("unreachable") && !down.to_string().contains("password"), "{down}");
    let at_start = Postgres::connect(&settings(url, "", 1_000_000)).err().expect("a database down at start is an error").to_string();
    assert!(at_start.contains("index.postgres_url") && at_start.contains("is the server running"), "{at_start}");
    pg_ctl("start");
    // The same backend, not restarted: its closed connections are replaced.
    assert_eq!(ids(&search(&backend, &query, &in_order(&["bags"]), &params(3)).unwrap()), before);
}

#[test]
fn wrong_urls_and_schema_versions_are_clear_errors() {
    let Some(fixture) = fixture("versioned", 10) else { return };
    let Fixture { url, catalogue, .. } = &fixture;
    let err = Postgres::connect(&settings("mysql://shop", "", 1)).err().unwrap().to_string();
    assert!(err.contains("index.postgres_url is not a PostgreSQL URL"), "{err}");
    reindex(&Postgres::connect(&settings(url, "", 1)).unwrap(), catalogue).unwrap();
    postgres::Client::connect(url, postgres::NoTls).unwrap().batch_execute("UPDATE lookalike_schema SET version = 99").unwrap();
    let err = Postgres::connect(&settings(url, "", 1)).err().unwrap().to_string();
    assert!(err.contains("schema version 99") && err.contains("reads version 1"), "{err}");
}

#[test]
fn the_search_service_answers_alike_from_postgres_with_the_real_backbones() {
    let Some(fixture) = fixture("service", 0) else { return };
    let Fixture { url, .. } = &fixture;
    let world = common::World::new(6);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut pages = Vec::new();
    for backend in [vec![], vec![("LOOKALIKE__INDEX__BACKEND", "postgres"), ("LOOKALIKE__INDEX__POSTGRES_URL", url.as_str())]] {
        let service = lookalike::search::SearchService::start(&world.config(&backend)).unwrap();
        service.upkeep().reindex(&mut |_| {}).unwrap();
        let mut hits = Vec::new();
        for (class, variant) in [("warm", 40), ("cool", 41), ("warm", 42)] {
            let query = lookalike::search::Query { image: common::png(&common::picture(class, variant)), k: Some(4), ..Default::default() };
            let outcome = runtime.block_on(service.search(query)).unwrap();
            assert_eq!(outcome.timings.search_method, if backend.is_empty() { SearchMethod::CodesReranked } else { SearchMethod::Exact });
            hits.push(outcome.hits.iter().map(|h| (h.item.id.clone(), h.cosine.to_bits())).collect::<Vec<_>>());
        }
        pages.push(hits);
    }
    assert_eq!(pages[0], pages[1], "the same hits and scores from both backends");
}

/// A sentence vector made of its words: each word adds one to a slot chosen by its letters.
fn text_vector(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; 16];
    for word in lookalike::words::split(text) {
        v[word.bytes().map(usize::from).sum::<usize>() % 16] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.into_iter().map(|x| x / norm).collect()
}

/// Titles, prices (one that does not read) and some descriptions for the fixture's files.
fn write_shop_metadata(path: &Path, per_category: u64) {
    let mut rows = String::new();
    for name in CATEGORIES {
        for i in 0..per_category {
            let material = ["canvas", "wool", "leather", "linen"][(i / 4 % 4) as usize];
            let price = if name == "bags" && i == 1 { "call us".to_string() } else { format!("{}.00", 5 + i * 7 % 60) };
            let description = (i % 3 == 0).then(|| format!("made of soft {material}"));
            let title = format!("{} {material} {name}", ["Harbor", "Summit", "Atlas", "Breeze"][(i % 4) as usize]);
            rows.push_str(&serde_json::json!({ "id": format!("{name}/{i:05}.png"), "title": title, "price": price, "description": description }).to_string());
            rows.push('\n');
        }
    }
    std::fs::write(path, rows).unwrap();
}

#[test]
fn words_and_prices_answer_alike_in_both_backends() {
    let Some(fixture) = fixture("words", 40) else { return };
    let Fixture { url, scratch, catalogue, .. } = &fixture;
    let metadata = scratch.path().join("items.jsonl");
    write_shop_metadata(&metadata, 40);
    let embedded = Embedded::open(&scratch.path().join("index"));
    let postgres = exact(url);
    let described = std::cell::Cell::new(0usize);
    let describe = |texts: &[String]| -> anyhow::Result<Vec<Vec<f32>>> {
        described.set(described.get() + texts.len());
        Ok(texts.iter().map(|t| text_vector(t)).collect())
    };
    let key = key();
    let job = ReindexJob { catalogue, metadata: &metadata, key: &key, chunk: 64, max_image_bytes: 1 << 20, partial: None, stop: None, describe: Some(&describe), whitening: None, augmentation: 0 };
    for backend in [&embedded as &dyn Backend, &postgres] {
        let summary = backend.reindex(&job, &mut |paths: &[PathBuf]| fake_embed(paths), &mut |_| {}).unwrap();
        assert_eq!(summary.unpriced, ["bags/00001.png"], "counted at index time");
    }
    assert_eq!(described.get(), 2 * 120, "every item's words embedded once per backend");

    let all: Vec<Scope> = CATEGORIES.iter().map(|name| Scope { category: name.to_string(), rank: 0, bonus: 0.0 }).collect();
    let under_12 = SearchParams { price: lookalike::words::PriceRange { min: None, max: Some(12.0) }, ..params(10) };
    let query = vector(0, 777);
    let (want, got) = (search(&embedded, &query, &in_order(&["bags", "coats"]), &under_12).unwrap(), search(&postgres, &query, &in_order(&["bags", "coats"]), &under_12).unwrap());
    assert_eq!(ids(&want), ids(&got), "a price filter inside both queries");
    assert_eq!(got.hits.len(), 10, "a full page: more than 10 items qualify");
    assert!(got.hits.iter().all(|h| h.item.metadata.price_value().is_some_and(|p| p <= 12.0)), "{:?}", ids(&got));

    // Words compared with the pictures (the clip embedder's case): a sentence vector of the
    // pictures' width ranks them as a photo would, in both backends.
    let by_picture = lookalike::index::WordsQuery { terms: vec!["zzzz".into()], vector: Vec::new(), pictures: query.clone() };
    for backend in [&embedded as &dyn Backend, &postgres] {
        let generation = backend.current().unwrap().unwrap();
        let page = backend.search_words(&generation, &by_picture, &in_order(&["bags", "coats"]), &under_12).unwrap();
        assert_eq!(ids(&page)[..3], ids(&want)[..3], "{}: the pictures' ranking", backend.location());
    }

    let words = lookalike::index::WordsQuery { terms: vec!["canvas".into()], vector: text_vector("canvas"), pictures: Vec::new() };
    for backend in [&embedded as &dyn Backend, &postgres] {
        let generation = backend.current().unwrap().unwrap();
        let page = backend.search_words(&generation, &words, &all, &under_12).unwrap();
        assert_eq!(page.method, SearchMethod::Words);
        assert_eq!(page.hits.len(), 10);
        assert!(page.hits.iter().take(5).all(|h| h.item.metadata.words().contains("canvas")), "{}: {:?}", backend.location(), ids(&page));
        assert!(page.hits.iter().all(|h| h.item.metadata.price_value().is_some_and(|p| p <= 12.0)));
        let tally = backend.tally(&generation, &["bags".into(), "coats".into()], &under_12.price, &[vec!["canvas".into()], vec!["wood".into(), "wooden".into()]]).unwrap();
        // 80 files and the near-twin (the twin copy is stored with its original); 11 priced at
        // most 12 (bags/00001.png's price does not read); 12 canvas titles a category.
        assert_eq!(tally, lookalike::index::Tally { items: 81, priced_in: 11, mentions: vec![24, 0] }, "{}", backend.location());
    }

    // One description changed: only it is embedded again; the other texts' vectors are reused.
    let text = std::fs::read_to_string(&metadata).unwrap().replacen("made of soft canvas", "made of waxed canvas", 1);
    std::fs::write(&metadata, text).unwrap();
    described.set(0);
    for backend in [&embedded as &dyn Backend, &postgres] {
        backend.reindex(&job, &mut |paths: &[PathBuf]| fake_embed(paths), &mut |_| {}).unwrap();
    }
    assert_eq!(described.get(), 2, "one text per backend");
}

#[test]
fn whitening_is_stored_with_the_generation_kept_while_few_items_change_and_relearned_without_embedding() {
    let Some(fixture) = fixture("whitening", 40) else { return };
    let Fixture { url, scratch, catalogue, .. } = &fixture;
    let embedded = Embedded::open(&scratch.path().join("index"));
    let postgres = exact(url);
    let key = key();
    let settings = lookalike::index::whiten::WhiteningSettings { span: DIM / 2, components: 8, shrinkage: 0.1, relearn_share: 0.25 };
    let whitened =
        ReindexJob { catalogue, metadata: Path::new(""), key: &key, chunk: 64, max_image_bytes: 1 << 20, partial: None, stop: None, describe: None, whitening: Some(settings), augmentation: 0 };
    fn embed(calls: &std::cell::Cell<usize>) -> impl FnMut(&[PathBuf]) -> Vec<Result<Vec<f32>, String>> + '_ {
        move |paths: &[PathBuf]| {
            calls.set(calls.get() + paths.len());
            fake_embed(paths)
        }
    }
    let raw_of = |id: &str| fake_embed(&[catalogue.join(id)]).pop().unwrap().unwrap();
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
    let stored = |backend: &dyn Backend, id: &str| {
        let generation = backend.current().unwrap().unwrap();
        let page = backend.search(&generation, &generation.query_vector(raw_of(id)), &in_order(&[id.split('/').next().unwrap()]), &params(1)).unwrap();
        assert_eq!(ids(&page), [id], "{}: an item's own photo finds it first, whitened alike", backend.location());
        backend.stored_vectors(&generation, &page.hits).unwrap().pop().unwrap()
    };
    let whitening_of = |backend: &dyn Backend| backend.current().unwrap().unwrap().whitening.clone().expect("a whitened generation");

    let calls = std::cell::Cell::new(0);
    for backend in [&embedded as &dyn Backend, &postgres] {
        let summary = backend.reindex(&whitened, &mut embed(&calls), &mut |_| {}).unwrap();
        assert!(summary.whitening.as_deref().is_some_and(|w| w.contains("learned from 121 items, 0 changed")), "{:?}", summary.whitening);
    }
    let learned = whitening_of(&embedded);
    assert_eq!(*whitening_of(&postgres), *learned, "both backends store the same whitening with the generation");
    for backend in [&embedded as &dyn Backend, &postgres] {
        assert!(close(&stored(backend, "bags/00007.png"), &learned.apply(&raw_of("bags/00007.png"))), "stored whitened");
    }

    // One item added: only it is embedded, the whitening kept and aged by one change.
    std::fs::write(catalogue.join("bags/new.png"), "0 5000").unwrap();
    calls.set(0);
    for backend in [&embedded as &dyn Backend, &postgres] {
        backend.reindex(&whitened, &mut embed(&calls), &mut |_| {}).unwrap();
        let kept = whitening_of(backend);
        assert_eq!((kept.learned_from, kept.changed_since), (121, 1), "{}", backend.location());
        assert!(close(&stored(backend, "bags/new.png"), &learned.apply(&raw_of("bags/new.png"))), "the new item whitened by the kept whitening");
    }
    assert_eq!(calls.get(), 2, "one image embedded per backend");

    // Over a quarter removed: learned again from the vectors the generation holds, nothing embedded.
    for i in 0..35 {
        std::fs::remove_file(catalogue.join(format!("coats/{i:05}.png"))).unwrap();
    }
    calls.set(0);
    for backend in [&embedded as &dyn Backend, &postgres] {
        let summary = backend.reindex(&whitened, &mut embed(&calls), &mut |_| {}).unwrap();
        let relearned = whitening_of(backend);
        assert_eq!((relearned.learned_from, relearned.changed_since), (87, 0), "{}: {:?}", backend.location(), summary.whitening);
        assert!(close(&stored(backend, "bags/00007.png"), &relearned.apply(&raw_of("bags/00007.png"))), "re-projected from its restored vector");
    }
    assert_eq!(calls.get(), 0, "relearning embeds nothing");

    // Whitening off: the vectors as embedded, restored from the whitened ones.
    let plain = ReindexJob { whitening: None, ..whitened };
    for backend in [&embedded as &dyn Backend, &postgres] {
        backend.reindex(&plain, &mut embed(&calls), &mut |_| {}).unwrap();
        assert!(backend.current().unwrap().unwrap().whitening.is_none());
        assert!(close(&stored(backend, "shoes/00003.png"), &raw_of("shoes/00003.png")));
    }
    assert_eq!(calls.get(), 0);
}

#[test]
fn database_side_augmentation_blends_neighbours_alike_and_keeps_each_vector_for_the_next_reindex() {
    let Some(fixture) = fixture("augmentation", 30) else { return };
    let Fixture { url, scratch, catalogue, .. } = &fixture;
    let embedded = Embedded::open(&scratch.path().join("index"));
    let postgres = exact(url);
    let key = key();
    let blending = ReindexJob { catalogue, metadata: Path::new(""), key: &key, chunk: 64, max_image_bytes: 1 << 20, partial: None, stop: None, describe: None, whitening: None, augmentation: 2 };
    let calls = std::cell::Cell::new(0);
    let mut embed = |paths: &[PathBuf]| {
        calls.set(calls.get() + paths.len());
        fake_embed(paths)
    };
    let raw_of = |id: &str| fake_embed(&[catalogue.join(id)]).pop().unwrap().unwrap();
    let stored = |backend: &dyn Backend, id: &str| {
        let generation = backend.current().unwrap().unwrap();
        let page = backend.search(&generation, &raw_of(id), &in_order(&["coats"]), &params(3)).unwrap();
        let hit = page.hits.iter().find(|h| h.item.id == id).unwrap_or_else(|| panic!("{id} among {:?}", ids(&page))).clone();
        backend.stored_vectors(&generation, &[hit]).unwrap().pop().unwrap()
    };
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for backend in [&embedded as &dyn Backend, &postgres] {
        backend.reindex(&blending, &mut embed, &mut |_| {}).unwrap();
    }
    let (a, b) = (stored(&embedded, "coats/00004.png"), stored(&postgres, "coats/00004.png"));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5), "both backends blend alike");
    let own = raw_of("coats/00004.png");
    assert!(cosine(&a, &own) < 0.999 && cosine(&a, &own) > 0.5, "blended with its neighbours, still itself first: {}", cosine(&a, &own));

    // One item added: only it is embedded; every row is blended again from the kept vectors.
    std::fs::write(catalogue.join("coats/new.png"), "1 4242").unwrap();
    calls.set(0);
    for backend in [&embedded as &dyn Backend, &postgres] {
        backend.reindex(&blending, &mut embed, &mut |_| {}).unwrap();
    }
    assert_eq!(calls.get(), 2, "one image per backend");

    // Off again: each stored vector is the embedder's own, read back, nothing embedded.
    calls.set(0);
    let plain = ReindexJob { augmentation: 0, ..blending };
    for backend in [&embedded as &dyn Backend, &postgres] {
        backend.reindex(&plain, &mut embed, &mut |_| {}).unwrap();
        let back = stored(backend, "coats/00004.png");
        assert!(back.iter().zip(&own).all(|(x, y)| (x - y).abs() < 1e-6), "{}: unblended", backend.location());
    }
    assert_eq!(calls.get(), 0);
}
