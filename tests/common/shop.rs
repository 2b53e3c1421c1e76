//! A shop's web server on loopback for the feed-import tests: the feeds of `tests/data/feeds`
//! under `/feeds/NAME` (every `{shop}` in them replaced by the shop's origin), the test pictures
//! under `/images/CLASS-N.png`, images that fail once under `/flaky/`, a 404 under `/missing/`,
//! an HTML page under `/page/`, and a 404 for anything else. It counts every request by its path
//! (see `tests/data/feeds/README.md` for what the feeds hold).
// Part of tests/common, which every test crate includes; not every one uses the shop.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::IntoFuture;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// How long a stopping shop waits for connections still open before it stops anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The page `/page/...` answers (200, text/html): what a feed's broken image link may point at.
pub const PAGE: &str = "<html><body>About us</body></html>";

struct Shared {
    origin: String,
    /// Requests answered, by path.
    requests: Mutex<HashMap<String, usize>>,
    /// Feed texts given with [`FakeShop::set_feed`], by name; they win over the files.
    feeds: Mutex<HashMap<String, String>>,
    /// The `/flaky/` paths that have failed their once.
    flaked: Mutex<HashSet<String>>,
}

/// The shop, serving from a thread of its own until dropped.
pub struct FakeShop {
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeShop {
    /// Starts on 127.0.0.1:0 in a thread of its own with its own tokio runtime (so sync tests and
    /// child processes alike can use it); stops when dropped.
    pub fn start() -> FakeShop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake shop");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let origin = format!("http://{}", listener.local_addr().expect("the fake shop's address"));
        let shared = Arc::new(Shared { origin, requests: Mutex::default(), feeds: Mutex::default(), flaked: Mutex::default() });
        let app = router(shared.clone());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-shop".to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the fake shop's runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("the fake shop's listener");
                    let stopping = Arc::new(tokio::sync::Notify::new());
                    let signal = {
                        let stopping = stopping.clone();
                        async move {
                            // A dropped sender stops the shop as well.
                            let _ = stop.await;
                            stopping.notify_one();
                        }
                    };
                    let server = axum::serve(listener, app).with_graceful_shutdown(signal).into_future();
                    // Graceful shutdown waits for open connections; a client stuck mid-request
                    // must not keep the test's drop waiting for ever.
                    tokio::select! {
                        served = server => served.expect("the fake shop serves"),
                        _ = async {
                            stopping.notified().await;
                            tokio::time::sleep(STOP_GRACE).await;
                        } => {}
                    }
                });
            })
            .expect("start the fake shop's thread");
        FakeShop { shared, shutdown: Some(shutdown), thread: Some(thread) }
    }

    /// "http://127.0.0.1:PORT"
    pub fn origin(&self) -> String {
        self.shared.origin.clone()
    }

    /// The URL of a path on the shop ("/feeds/shop.xml").
    pub fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.shared.origin)
        } else {
            format!("{}/{path}", self.shared.origin)
        }
    }

    /// Requests answered so far whose path starts with `prefix` ("/images/"), any status.
    pub fn requests(&self, prefix: &str) -> usize {
        lock(&self.shared.requests).iter().filter(|(path, _)| path.starts_with(prefix)).map(|(_, count)| count).sum()
    }

    /// Every path asked for so far with its count, sorted by path (for a failing test's message).
    pub fn paths(&self) -> Vec<(String, usize)> {
        let mut paths: Vec<(String, usize)> = lock(&self.shared.requests).iter().map(|(path, count)| (path.clone(), *count)).collect();
        paths.sort();
        paths
    }

    /// Replaces a feed's text for later requests (name as under /feeds/), e.g. to serve a changed
    /// feed; `{shop}` is replaced as in the files.
    pub fn set_feed(&self, name: &str, text: &str) {
        lock(&self.shared.feeds).insert(name.to_string(), text.to_string());
    }
}

impl Drop for FakeShop {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the shop's thread is not this drop's to raise (it may run while unwinding).
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/feeds/:name", get(feed))
        .route("/images/:file", get(images))
        .route("/flaky/:file", get(flaky))
        .route("/missing/*rest", get(|| async { StatusCode::NOT_FOUND }))
        .route("/page/*rest", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn_with_state(shared.clone(), count))
        .with_state(shared)
}

/// Counts each request by its path once it has been answered.
async fn count(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    *lock(&shared.requests).entry(path).or_insert(0) += 1;
    response
}

/// `tests/data/feeds/NAME`, or the text set for it, with `{shop}` replaced by the origin.
async fn feed(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let set = lock(&shared.feeds).get(&name).cloned();
    let text = match set {
        Some(text) => text,
        None if name.starts_with('.') || name.contains(['/', '\\']) => return StatusCode::NOT_FOUND.into_response(),
        None => {
            let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/feeds").join(&name);
            match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(_) => return StatusCode::NOT_FOUND.into_response(),
            }
        }
    };
    let content_type = match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("xml") => "application/xml",
        Some("tsv") => "text/tab-separated-values",
        Some("csv") => "text/csv",
        _ => "text/plain; charset=utf-8",
    };
    ([(header::CONTENT_TYPE, content_type)], text.replace("{shop}", &shared.origin)).into_response()
}

async fn images(Path(file): Path<String>) -> Response {
    picture_png(&file)
}

/// 503 with `Retry-After: 0` the first time each path is asked for, then the picture.
async fn flaky(State(shared): State<Arc<Shared>>, Path(file): Path<String>) -> Response {
    if lock(&shared.flaked).insert(file.clone()) {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "0")], "busy, try again").into_response();
    }
    picture_png(&file)
}

/// The PNG of `common::picture(CLASS, N)` for a file named `CLASS-N.png`; 400 for a class other
/// than warm and cool, 404 for a name of another shape.
fn picture_png(file: &str) -> Response {
    let Some((class, variant)) = file.strip_suffix(".png").and_then(|stem| stem.split_once('-')) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(variant) = variant.parse::<u32>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if class != "warm" && class != "cool" {
        return (StatusCode::BAD_REQUEST, format!("no pictures of class {class:?}")).into_response();
    }
    ([(header::CONTENT_TYPE, "image/png")], super::png(&super::picture(class, variant))).into_response()
}
