//! The downloads of an import: the feed itself, and every product picture the catalogue does
//! not hold yet, a bounded number at a time, each retried when its failure may pass, refused
//! past the image size limit while it streams, checked as an image from its header, and kept
//! whole in the import's cache folder (named by its URL) until the import is written: an
//! import killed half-way downloads nothing twice when run again.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::imaging::{self, ImageLimits};

/// How downloads run (`catalogue.import_*`).
#[derive(Debug, Clone, Copy)]
pub struct FetchSettings {
    pub concurrency: usize,
    pub retries: u32,
    pub timeout: Duration,
    /// Refuse hosts at loopback, private, link-local or unspecified addresses, and redirects to
    /// them (`/catalogue-import`, unless `discord.import_private_hosts`).
    pub public_only: bool,
}

impl FetchSettings {
    pub fn from_config(catalogue: &crate::config::CatalogueConfig) -> FetchSettings {
        FetchSettings { concurrency: catalogue.import_concurrency, retries: catalogue.import_retries, timeout: Duration::from_secs(catalogue.import_timeout_s), public_only: false }
    }
}

/// Whether an address is one a shop on the internet cannot have: loopback, private (RFC 1918,
/// unique local), link-local (cloud metadata services among them), shared (100.64/10),
/// unspecified or broadcast.
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || (a == 100 && (64..128).contains(&b))
        }
        std::net::IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(v4.into()))
        }
    }
}

/// Refuses a URL whose host is, or resolves to, an internal address (see [`is_internal`]).
fn check_public(url: &reqwest::Url) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let addresses: Vec<std::net::IpAddr> = match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (host, port).to_socket_addrs().map_err(|err| format!("cannot resolve {host}: {err}"))?.map(|a| a.ip()).collect(),
    };
    match addresses.into_iter().find(|ip| is_internal(*ip)) {
        Some(ip) => Err(format!("{host} is at an internal address ({ip}); the bot fetches only from the internet (discord.import_private_hosts)")),
        None => Ok(()),
    }
}

/// The first wait before a retry; each further one doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait a server's `Retry-After` may impose on one retry.
const LONGEST_BACKOFF: Duration = Duration::from_secs(30);

/// Where one picture's bytes are kept between its download and the end of the import.
pub fn cached(cache: &Path, url: &str) -> PathBuf {
    cache.join(hex::encode(&Sha256::digest(url.as_bytes())[..16]))
}

/// What became of one picture's URL.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// Downloaded now: its bytes are in the cache file.
    Downloaded { bytes: u64 },
    /// An earlier, interrupted import had downloaded it.
    Cached,
    /// Why it could not be had: the product is skipped with this reason.
    Failed(String),
}

/// How the downloads went, for the summary and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Traffic {
    pub downloaded: usize,
    pub bytes: u64,
    pub cached: usize,
    pub failed: usize,
    /// Requests tried again after a failure that could pass.
    pub retried: usize,
    pub seconds: f64,
}

/// Downloads every URL not already in `cache` into it, `settings.concurrency` at a time, on a
/// thread of its own (an async runtime of its own: callers may be plain threads or a
/// runtime's blocking pool); `progress(done, total)` is called here as they finish. Results are
/// in the order of `urls`.
pub fn pictures(urls: &[String], cache: &Path, settings: FetchSettings, limits: ImageLimits, progress: &mut dyn FnMut(usize, usize)) -> anyhow::Result<(Vec<Fetched>, Traffic)> {
    std::fs::create_dir_all(cache).map_err(|err| anyhow::anyhow!("cannot create the import's download folder {}: {err}", cache.display()))?;
    let started = Instant::now();
    let mut results: Vec<Option<Fetched>> = urls.iter().map(|url| cached(cache, url).is_file().then_some(Fetched::Cached)).collect();
    let wanted: Vec<(usize, String)> = urls.iter().enumerate().filter(|(at, _)| results[*at].is_none()).map(|(at, url)| (at, url.clone())).collect();
    let (total, mut done) = (urls.len(), urls.len() - wanted.len());
    progress(done, total);
    let (events, finished) = mpsc::channel::<(usize, Fetched, usize)>();
    let cache_dir = cache.to_path_buf();
    let worker = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(download_all(wanted, cache_dir, settings, limits, events))
    });
    let mut retried = 0;
    for (at, fetched, retries) in finished {
        results[at] = Some(fetched);
        retried += retries;
        done += 1;
        progress(done, total);
    }
    worker.join().map_err(|_| anyhow::anyhow!("the download thread failed"))??;
    let results: Vec<Fetched> = results.into_iter().map(|r| r.unwrap_or_else(|| Fetched::Failed("not downloaded".into()))).collect();
    let mut traffic = Traffic { retried, seconds: started.elapsed().as_secs_f64(), ..Traffic::default() };
    for result in &results {
        match result {
            Fetched::Downloaded { bytes } => (traffic.downloaded, traffic.bytes) = (traffic.downloaded + 1, traffic.bytes + bytes),
            Fetched::Cached => traffic.cached += 1,
            Fetched::Failed(_) => traffic.failed += 1,
        }
    }
    Ok((results, traffic))
}

async fn download_all(wanted: Vec<(usize, String)>, cache: PathBuf, settings: FetchSettings, limits: ImageLimits, events: mpsc::Sender<(usize, Fetched, usize)>) -> anyhow::Result<()> {
    let client = client(settings)?;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
    // Set when the caller has gone (its thread died): no further download starts.
    let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut running = tokio::task::JoinSet::new();
    for (at, url) in wanted {
        let permit = permits.clone().acquire_owned().await?;
        if abandoned.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let (client, cache, events, abandoned) = (client.clone(), cache.clone(), events.clone(), abandoned.clone());
        running.spawn(async move {
            let (fetched, retries) = match get(&client, &url, limits.max_bytes, settings).await {
                Ok((bytes, retries)) => (keep(&cache, &url, &bytes, limits), retries),
                Err((why, retries)) => (Fetched::Failed(why), retries),
            };
            if events.send((at, fetched, retries)).is_err() {
                abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    while running.join_next().await.is_some() {}
    Ok(())
}

/// A downloaded picture checked from its header (the limits, then a format lookalike reads),
/// then written whole into the cache.
fn keep(cache: &Path, url: &str, bytes: &[u8], limits: ImageLimits) -> Fetched {
    if let Err(err) = imaging::check(bytes, limits) {
        let html = bytes.trim_ascii_start().get(..15).is_some_and(|start| start.eq_ignore_ascii_case(b"<!doctype html>") || start[..5.min(start.len())].eq_ignore_ascii_case(b"<html"));
        return Fetched::Failed(if html { "the image link gives a web page, not a picture".into() } else { err.to_string() });
    }
    match crate::files::write_atomically(&cached(cache, url), bytes) {
        Ok(()) => Fetched::Downloaded { bytes: bytes.len() as u64 },
        Err(err) => Fetched::Failed(format!("cannot keep the download: {err:#}")),
    }
}

fn client(settings: FetchSettings) -> anyhow::Result<reqwest::Client> {
    let agent = concat!("lookalike/", env!("CARGO_PKG_VERSION"), " (catalogue import)");
    // The timeout is for waiting on data, not for the whole body: a large feed on a slow link
    // keeps going while bytes arrive; the whole request still ends at ten times it.
    let mut builder = reqwest::Client::builder().user_agent(agent).connect_timeout(settings.timeout.min(Duration::from_secs(10)));
    if settings.public_only {
        builder = builder.redirect(reqwest::redirect::Policy::custom(|attempt| match check_public(attempt.url()) {
            Err(why) => attempt.error(why),
            Ok(()) if attempt.previous().len() >= 10 => attempt.error("more than 10 redirects"),
            Ok(()) => attempt.follow(),
        }));
    }
    Ok(builder.read_timeout(settings.timeout).timeout(settings.timeout * 10).build()?)
}

/// Why one try failed, and whether another may succeed (and after how long, if the server said).
struct Failure {
    why: String,
    again: bool,
    after: Option<Duration>,
}

/// The body of `url`, at most `max_bytes`, tried again with doubling waits while the failure
/// may pass; with the number of retries it took. On failure: why, and the retries made.
pub async fn get(client: &reqwest::Client, url: &str, max_bytes: u64, settings: FetchSettings) -> Result<(Vec<u8>, usize), (String, usize)> {
    let mut wait = FIRST_BACKOFF;
    for attempt in 0..=settings.retries {
        match get_once(client, url, max_bytes, settings.public_only).await {
            Ok(bytes) => return Ok((bytes, attempt as usize)),
            Err(failure) if failure.again && attempt < settings.retries => {
                tokio::time::sleep(failure.after.unwrap_or(wait).min(LONGEST_BACKOFF)).await;
                wait *= 2;
            }
            Err(failure) => {
                let tries = if attempt == 0 { String::new() } else { format!(" (after {} tries)", attempt + 1) };
                return Err((format!("{}{tries}", failure.why), attempt as usize));
            }
        }
    }
    unreachable!("the last attempt returns")
}

async fn get_once(client: &reqwest::Client, url: &str, max_bytes: u64, public_only: bool) -> Result<Vec<u8>, Failure> {
    if public_only {
        let parsed = reqwest::Url::parse(url).map_err(|err| Failure { why: format!("not a URL: {err}"), again: false, after: None })?;
        let checked = tokio::task::spawn_blocking(move || check_public(&parsed)).await.unwrap_or_else(|err| Err(err.to_string()));
        checked.map_err(|why| Failure { why, again: false, after: None })?;
    }
    let failed = |err: reqwest::Error| Failure { again: err.is_timeout() || err.is_connect() || err.is_request() || err.is_body(), why: err.without_url().to_string(), after: None };
    let mut response = client.get(url).send().await.map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        let after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let again = status.as_u16() == 429 || status.is_server_error();
        return Err(Failure { why: format!("HTTP {status}"), again, after });
    }
    let too_large = |bytes: u64| Failure {
        why: format!("the download is over {} MB; the limit is {} MB (limits.max_image_mb, catalogue.max_feed_mb)", imaging::mb(bytes), imaging::mb(max_bytes)),
        again: false,
        after: None,
    };
    if let Some(length) = response.content_length().filter(|&l| l > max_bytes) {
        return Err(too_large(length));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if (bytes.len() + chunk.len()) as u64 > max_bytes {
            return Err(too_large((bytes.len() + chunk.len()) as u64));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The text of a feed at `url`, at most `max_bytes`, with the same retries (for `/catalogue-import`
/// and `catalogue import URL`).
pub fn feed_text(url: &str, max_bytes: u64, settings: FetchSettings) -> anyhow::Result<String> {
    let url = url.to_string();
    let fetched = std::thread::spawn(move || -> anyhow::Result<Vec<u8>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async { get(&client(settings)?, &url, max_bytes, settings).await.map(|(bytes, _)| bytes).map_err(|(why, _)| anyhow::anyhow!("cannot download the feed {url}: {why}")) })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the download thread failed"))??;
    String::from_utf8(fetched).map_err(|err| anyhow::anyhow!("the feed is not UTF-8 text (byte {}): save it as UTF-8", err.utf8_error().valid_up_to()))
}
