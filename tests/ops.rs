//! Running the bot in production, end to end against the fake Discord: `/metrics` moving with a
//! search, `/readyz` flipping to ready, gateway shards split between processes, and the real
//! binary stopped by SIGTERM in the middle of a search.
//!
//! A binary of its own, not a module of `tests/it`: the metrics are process-wide
//! (`lookalike::metrics::METRICS`), and the first test checks that one search moves each count
//! by exactly one and that the index gauges hold this test's catalogue; any other search or
//! index in the process would move them too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lookalike::ops::Health;

mod common;
use common::fake_discord::{callback_of, command_interaction, is_reply_to, member, slash_search, FakeDiscord, Invocation};
use common::{write_catalogue, World};

const WAIT: Duration = Duration::from_secs(120);
const GUILD: &str = "900000000000000002";

/// The value of the series `name` whose labels include `labels` (NaN when there is none).
fn value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let series = metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.rsplit_once(' '));
    series
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, number)| number.parse().unwrap())
        .next()
        .unwrap_or(f64::NAN)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[test]
fn metrics_and_probes_follow_the_bot_and_shards_split_between_processes() {
    let world = World::new(8);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let discord = FakeDiscord::start_with_shards(2).await;
        let origin = discord.origin();
        let config = world.config(&[("LOOKALIKE__DISCORD__API_PROXY", origin.as_str()), ("LOOKALIKE__DISCORD__GUILD_ID", GUILD), ("LOOKALIKE__DISCORD__USER_COOLDOWN_S", "0")]);
        let health = Arc::new(Health::default());
        let addr = lookalike::ops::listen("127.0.0.1:0", health.clone()).await.unwrap();
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()), "the process answers before the models load");
        let (status, why) = get(addr, "/readyz").await;
        assert!(status == 503 && why.contains("models: loading"), "{status} {why}");
        eprintln!("/readyz while the models load: {status} {}", why.trim().replace('\n', " | "));

        let start = config.clone();
        let service = tokio::task::spawn_blocking(move || {
            let service = Arc::new(lookalike::search::SearchService::start(&start).unwrap());
            service.upkeep().reindex(&mut |_| {}).unwrap();
            service
        })
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(lookalike::discord::run(config.clone(), service.clone(), "fake-token", health.clone(), async {
            let _ = stopped.await;
            "the test"
        }));

        // Ready once the models are in and both shards "auto" asked for have identified
        // (serenity starts them 5 s apart).
        let started = Instant::now();
        let mut last = get(addr, "/readyz").await;
        while last.0 != 200 {
            assert!(started.elapsed() < WAIT, "never ready: {last:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = get(addr, "/readyz").await;
        }
        let mut identified = discord.shards_identified();
        identified.sort();
        assert_eq!(identified, [[0, 2], [1, 2]], "\"auto\" runs the 2 shards /gateway/bot recommends");
        eprintln!("ready after {:.1} s: {}", started.elapsed().as_secs_f64(), last.1.trim());

        let (_, before) = get(addr, "/metrics").await;
        let photo = std::fs::read(world.catalogue.join("warm/02.png")).unwrap();
        let token = slash_search(&discord, "warm.png", photo, "image/png", None, None);
        discord.wait_for(WAIT, is_reply_to(&token)).await;
        let (status, after) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let ok = [("outcome", "ok"), ("entry", "slash")];
        assert_eq!(value(&after, "lookalike_searches_total", &ok), value(&before, "lookalike_searches_total", &ok) + 1.0, "{after}");
        assert_eq!(value(&before, "lookalike_searches_total", &[("outcome", "timeout"), ("entry", "button")]), 0.0, "every pair is there from the start");
        for stage in ["decode", "queue", "vision", "text", "search", "total"] {
            let count = |text: &str| value(text, "lookalike_search_duration_seconds_count", &[("stage", stage)]);
            assert_eq!(count(&after), count(&before) + 1.0, "{stage}: {after}");
        }
        assert!(value(&after, "lookalike_search_duration_seconds_sum", &[("stage", "total")]) > 0.0);
        assert!(value(&after, "lookalike_model_batch_size_count", &[]) >= value(&before, "lookalike_model_batch_size_count", &[]) + 1.0, "{after}");
        assert!(value(&after, "lookalike_index_generation", &[]) >= 1.0, "{after}");
        assert_eq!(value(&after, "lookalike_index_items", &[("category", "warm")]), 8.0, "{after}");
        assert!(value(&after, "lookalike_reindex_total", &[("outcome", "ok")]) >= 1.0, "{after}");
        for shard in ["0", "1"] {
            assert_eq!(value(&after, "lookalike_gateway_connected", &[("shard", shard)]), 1.0, "{after}");
        }
        eprintln!(
            "after one search:\n{}",
            after.lines().filter(|l| l.starts_with("lookalike_searches_total{entry=\"slash\",outcome=\"ok\"}") || l.contains("stage=\"total\"")).collect::<Vec<_>>().join("\n")
        );

        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
        let (status, why) = get(addr, "/readyz").await;
        assert!(status == 503 && why.contains("shutting down"), "{status} {why}");

        // A second process's share of the same bot: shard 0 of 2 only.
        let discord = FakeDiscord::start_with_shards(2).await;
        let origin = discord.origin();
        let config = world.config(&[("LOOKALIKE__DISCORD__API_PROXY", origin.as_str()), ("LOOKALIKE__DISCORD__SHARDS", "0-0/2")]);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(lookalike::discord::run(config, service, "fake-token", Arc::new(Health::default()), async {
            let _ = stopped.await;
            "the test"
        }));
        discord.wait_for(WAIT, |r| r.method == "PUT" && r.path.ends_with("/commands")).await;
        // Long enough for serenity to have started a second shard, were it to.
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(discord.shards_identified(), [[0, 2]], "\"0-0/2\" identifies shard 0 only");
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
    });
}

/// `lookalike serve` as a supervisor runs it, with the token from a file.
fn serve(world: &World, discord: &FakeDiscord, token_file: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .arg("serve")
        .envs(world.env.iter().cloned())
        .env("LOOKALIKE__DISCORD__API_PROXY", discord.origin())
        .env("LOOKALIKE__DISCORD__GUILD_ID", GUILD)
        .env("LOOKALIKE__DISCORD__USER_COOLDOWN_S", "0")
        .env("LOOKALIKE__SERVE__METRICS_ADDR", "")
        .env_remove("DISCORD_TOKEN")
        .env("DISCORD_TOKEN_FILE", token_file)
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn sigterm(child: &std::process::Child) {
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
}

async fn exit_status(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn sigterm_lets_the_search_in_flight_finish_and_leaves_a_reindex_resumable() {
    let world = World::new(8);
    let scratch = tempfile::tempdir().unwrap();
    let token_file = scratch.path().join("token");
    std::fs::write(&token_file, "fake-token-from-a-secrets-mount\n").unwrap();
    let lookalike = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_lookalike")).args(args).envs(world.env.iter().cloned()).output().unwrap();
    let index = lookalike(&["index"]);
    assert!(index.status.success(), "{}", String::from_utf8_lossy(&index.stderr));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let discord = FakeDiscord::start().await;
        let log = scratch.path().join("serve.log");
        let mut bot = serve(&world, &discord, &token_file, &log);
        discord.wait_for(WAIT, |r| r.method == "PUT" && r.path.ends_with("/commands")).await;

        // A slow network: the photo takes 3 s to arrive, and SIGTERM comes meanwhile.
        discord.slow_cdn(3000);
        let photo = std::fs::read(world.catalogue.join("warm/02.png")).unwrap();
        let token = slash_search(&discord, "slow.png", photo.clone(), "image/png", None, None);
        discord.wait_for(WAIT, callback_of(&token)).await;
        while discord.served("slow.png").is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let signalled = Instant::now();
        sigterm(&bot);

        // Taking no new requests: a search asked now is told to come back.
        while !std::fs::read_to_string(&log).unwrap().contains("SIGTERM: taking no new requests") {
            assert!(signalled.elapsed() < WAIT, "SIGTERM not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        discord.slow_cdn(0);
        let late = slash_search(&discord, "late.png", photo, "image/png", None, None);
        let refused = discord.wait_for(WAIT, callback_of(&late)).await;
        assert!(refused.body["data"]["content"].as_str().unwrap_or("").contains("restarting"), "{}", refused.body);

        // The one in flight is answered, then the process exits 0.
        let reply = discord.wait_for(WAIT, is_reply_to(&token)).await;
        assert!(reply.body["embeds"][0]["title"].as_str().unwrap().starts_with("Searched: warm"), "{}", reply.body);
        let status = exit_status(&mut bot).await;
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "{status}: {log}");
        assert!(log.contains("SIGTERM: taking no new requests") && log.contains("gateway closed"), "{log}");
        eprintln!("answered {:.1} s after SIGTERM; exited {status}", (reply.at - signalled).as_secs_f64());

        // A /reindex of 48 new photos cut short: it stops after the chunk it is embedding, keeps
        // what it embedded, and the next re-index takes up from there.
        write_catalogue(&world.catalogue, 24, 100);
        let discord = FakeDiscord::start().await;
        let log = scratch.path().join("serve-again.log");
        let mut bot = serve(&world, &discord, &token_file, &log);
        discord.wait_for(WAIT, |r| r.method == "PUT" && r.path.ends_with("/commands")).await;
        let moderator = member(910_000_000_000_000_778, 1 << 5, &[]);
        discord.dispatch("INTERACTION_CREATE", command_interaction(discord.next_id(), "token-reindex", "reindex", Invocation::Slash(serde_json::json!([])), serde_json::json!({}), moderator));
        let partial = world.index.join("reindex-partial.bin");
        // The key's line, then at least one chunk of vectors.
        while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 4096 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sigterm(&bot);
        let told = discord.wait_for(WAIT, |r| r.method == "PATCH" && r.path.contains("token-reindex") && r.body["content"].as_str().is_some_and(|c| c.contains("interrupted"))).await;
        let status = exit_status(&mut bot).await;
        assert!(status.success(), "{status}: {}", std::fs::read_to_string(&log).unwrap());
        assert!(partial.exists(), "kept for the next re-index");
        eprintln!("the moderator is told: {}", told.body["content"]);
        let again = lookalike(&["index"]);
        let summary = String::from_utf8_lossy(&again.stdout).to_string();
        assert!(again.status.success() && summary.contains("more embedded by an interrupted re-index were taken up"), "{summary}{}", String::from_utf8_lossy(&again.stderr));
        assert!(!partial.exists(), "removed once the generation is written");
        eprintln!("after the interrupted re-index:\n{summary}");
    });
}
