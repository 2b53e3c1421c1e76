//! Running the bot in production: `/metrics`, `/healthz` and `/readyz` on `serve.metrics_addr`,
//! and the requests in flight that a graceful shutdown waits for.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::metrics::METRICS;
use crate::search::SearchService;

/// What `/readyz` checks, filled in as the bot starts, and the requests a shutdown waits for.
#[derive(Default)]
pub struct Health {
    /// Set once the models are loaded and warm.
    pub service: OnceLock<Arc<SearchService>>,
    /// Gateway shards this process runs (0 until the client starts them).
    pub shards: AtomicUsize,
    /// Those connected now.
    connected: std::sync::Mutex<std::collections::BTreeSet<u32>>,
    /// Set by SIGTERM or Ctrl-C: no new requests are taken.
    pub draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One request being handled; the shutdown waits until none is left.
pub struct InFlight(Arc<Health>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Health {
    /// Counts a new request in, unless the process is shutting down.
    pub fn enter(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.clone());
        (!self.draining.load(Ordering::SeqCst)).then_some(guard)
    }

    /// A gateway shard connected or lost (also the `lookalike_gateway_connected` gauge).
    pub fn gateway(&self, shard: u32, connected: bool) {
        let mut shards = self.connected.lock().expect("shards lock");
        if connected {
            shards.insert(shard);
        } else {
            shards.remove(&shard);
        }
        METRICS.gateway(shard, connected);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Stops taking requests and waits (at most `grace`) for those in flight; true if all ended.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        let all_done = async {
            loop {
                let idle = self.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(grace, all_done).await.is_ok()
    }

    /// `/readyz`: what is not ready yet, one line each; empty when ready.
    pub async fn not_ready(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            missing.push("shutting down".to_string());
        }
        match self.service.get() {
            None => missing.push("models: loading".to_string()),
            Some(service) => {
                if let Err(err) = service.generation().await {
                    missing.push(format!("index: {err}"));
                }
            }
        }
        let (shards, connected) = (self.shards.load(Ordering::SeqCst), self.connected.lock().expect("shards lock").len());
        if shards == 0 || connected < shards {
            missing.push(format!("gateway: {connected} of {shards} shards connected"));
        }
        missing
    }

    /// Reads the index's generation and items into the gauges, for a scrape.
    async fn refresh_index_gauges(&self) {
        let Some(service) = self.service.get() else { return };
        match service.generation().await {
            Ok(generation) => METRICS.index(generation.number, &generation.categories.iter().map(|c| (c.name.clone(), c.files)).collect::<Vec<_>>()),
            Err(_) => METRICS.index(0, &[]),
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn listen(addr: &str, health: Arc<Health>) -> anyhow::Result<std::net::SocketAddr> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} (serve.metrics_addr): {e}; pick a free port, or \"\" to turn metrics off"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|axum::extract::State(health): axum::extract::State<Arc<Health>>| async move {
                health.refresh_index_gauges().await;
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], METRICS.render())
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|axum::extract::State(health): axum::extract::State<Arc<Health>>| async move {
                let missing = health.not_ready().await;
                if missing.is_empty() {
                    (StatusCode::OK, "ready\n".to_string())
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", missing.join("\n")))
                }
            }),
        )
        .with_state(health);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(cause = %err, "the metrics server stopped");
        }
    });
    tracing::info!("metrics on http://{bound}/metrics; probes at /healthz and /readyz");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_the_requests_in_flight_and_takes_no_new_ones() {
        let health = Arc::new(Health::default());
        let first = health.enter().expect("taking requests");
        let draining = tokio::spawn({
            let health = health.clone();
            async move { health.drain(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(health.enter().is_none(), "no new request while draining");
        assert!(!draining.is_finished(), "the one in flight is waited for");
        drop(first);
        assert!(draining.await.unwrap(), "all ended within the grace");

        let stuck = Arc::new(Health::default());
        let _forever = stuck.enter().unwrap();
        assert!(!stuck.drain(Duration::from_millis(50)).await, "the wait is bounded");
        let missing = stuck.not_ready().await;
        assert_eq!(missing, ["shutting down", "models: loading", "gateway: 0 of 0 shards connected"]);
    }

    #[tokio::test]
    async fn readiness_counts_this_process_shards() {
        let health = Health::default();
        health.shards.store(2, Ordering::SeqCst);
        health.gateway(7, true);
        assert!(health.not_ready().await.contains(&"gateway: 1 of 2 shards connected".to_string()));
        health.gateway(8, true);
        health.gateway(7, false);
        health.gateway(7, true);
        assert!(!health.not_ready().await.iter().any(|line| line.starts_with("gateway")));
    }
}
