//! The Discord bot (`lookalike serve`): the only module that knows serenity. It turns Discord
//! events into calls on [`SearchService`] and the service's plain answers into messages.
//!
//! Ways to ask: `/search image:<attachment> [text] [k]`; mentioning the bot (or replying to it)
//! with a photo and a sentence; the "Find similar" message menu; `/catalogue`, `/help`; and for
//! moderators `/reindex`, `/catalogue-add`, `/catalogue-remove` and `/catalogue-import`. Every handler runs in its own task: a panic fails that request only.

mod attachment;
mod buttons;
mod catalogue;
mod explain;
mod help;
mod import;
mod mention;
mod queries;
mod reindex;
mod reply;
mod search;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serenity::all::{
    async_trait, Client, ClientBuilder, Command, CommandInteraction, CommandOptionType, CommandType, ComponentInteraction, ComponentInteractionDataKind, ConnectionStage, Context, CreateCommand,
    CreateCommandOption, CreateInteractionResponse, CreateInteractionResponseFollowup, CreateInteractionResponseMessage, CreateMessage, EditInteractionResponse, EventHandler, GatewayIntents, GuildId,
    HttpBuilder, Interaction, Member, Message, Permissions, Ready, ResolvedValue, RoleId, ShardStageUpdateEvent, UserId,
};

use attachment::{check_declared, has_image_extension, Declared};
use queries::{RecentQueries, StoredQuery};

use crate::config::{Config, Shards};
use crate::feedback::FeedbackStore;
use crate::imaging::{self, ImageError};
use crate::index::{render_summary, Audience, Progress, ReindexError};
use crate::metrics::{Entry, METRICS};
use crate::ops::Health;
use crate::search::{Query, SearchError, SearchService};
use reply::Reply;
use serenity::builder::Builder;
use tracing::Instrument;

struct Bot {
    service: Arc<SearchService>,
    config: Config,
    downloads: reqwest::Client,
    cooldowns: Cooldowns,
    queries: RecentQueries,
    /// Where the picks under "Wrong category?" are recorded.
    feedback: Arc<FeedbackStore>,
    me: OnceLock<UserId>,
    /// Requests in flight, and whether the process is shutting down.
    health: Arc<Health>,
}

/// `lookalike serve`: the probes and metrics first (so a supervisor sees the process answer
/// while the models load), then the models, then the bot until SIGTERM or Ctrl-C.
pub async fn serve(config: Config, token: String) -> anyhow::Result<()> {
    let health = Arc::new(Health::default());
    if !config.serve.metrics_addr.is_empty() {
        crate::ops::listen(&config.serve.metrics_addr, health.clone()).await?;
    }
    let loading = config.clone();
    let service = tokio::task::spawn_blocking(move || -> anyhow::Result<SearchService> {
        let service = SearchService::start(&loading)?;
        service.warm_up()?;
        Ok(service)
    })
    .await
    .map_err(|e| anyhow::anyhow!("loading the models failed: {e}"))??;
    run(config, Arc::new(service), &token, health.clone(), shutdown_signal()).await?;
    if health.in_flight() > 0 {
        // The grace ran out with a model job still running: libtorch's exit-time destructors
        // would race it (a SIGSEGV instead of a clean exit), so leave without running them.
        tracing::warn!("exiting with {} requests abandoned", health.in_flight());
        // SAFETY: _exit ends the process at once; nothing after it runs.
        unsafe { libc::_exit(0) }
    }
    Ok(())
}

/// Resolves on SIGTERM (a supervisor stopping the bot) or Ctrl-C, naming which.
pub async fn shutdown_signal() -> &'static str {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match terminate.as_mut() {
            Some(signal) => signal.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = sigterm => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
    }
}

/// Runs the bot on this process's gateway shards (`discord.shards`) until the connection ends
/// for good, or `shutdown` resolves: then no new request is taken, those in flight get up to
/// `serve.shutdown_grace_s` to finish, and the gateway closes.
pub async fn run(config: Config, service: Arc<SearchService>, token: &str, health: Arc<Health>, shutdown: impl std::future::Future<Output = &'static str>) -> anyhow::Result<()> {
    let _ = health.service.set(service.clone());
    let (shards, grace) = (config.discord.shards, Duration::from_secs(config.serve.shutdown_grace_s));
    let mut client = client(config, service, token, health.clone()).await?;
    let (first, last, total) = match shards {
        Shards::Range { first, last, total } => (first, last, total),
        Shards::Auto => {
            let recommended = client.http.get_bot_gateway().await.map_err(|e| anyhow::anyhow!("cannot ask Discord how many shards to run (discord.shards = \"auto\"): {e}"))?.shards.max(1);
            (0, recommended - 1, recommended)
        }
    };
    health.shards.store((last - first + 1) as usize, std::sync::atomic::Ordering::SeqCst);
    tracing::info!("gateway shards {first} to {last} of {total}");
    let manager = client.shard_manager.clone();
    tokio::select! {
        // serenity's range is inclusive of its end here.
        result = client.start_shard_range(first..last, total) => result.map_err(|e| anyhow::anyhow!("the Discord connection ended: {e}")),
        signal = shutdown => {
            tracing::info!("{signal}: taking no new requests; {} in flight get up to {} s", health.in_flight(), grace.as_secs());
            // A re-index would outlast any grace: it stops after its chunk and is taken up by the next.
            if let Some(service) = health.service.get() {
                service.upkeep().interrupt_reindex();
            }
            if !health.drain(grace).await {
                tracing::warn!("{} requests still in flight after {} s: closing anyway", health.in_flight(), grace.as_secs());
            }
            manager.shutdown_all().await;
            tracing::info!("gateway closed; exiting");
            Ok(())
        }
    }
}

/// The serenity client, pointed at `discord.api_proxy` when set (every REST call, and the
/// gateway URL that origin returns).
pub async fn client(config: Config, service: Arc<SearchService>, token: &str, health: Arc<Health>) -> anyhow::Result<Client> {
    let mut http = HttpBuilder::new(token).default_allowed_mentions(reply::no_pings());
    if !config.discord.api_proxy.is_empty() {
        http = http.proxy(config.discord.api_proxy.clone()).ratelimiter_disabled(true);
    }
    let intents = GatewayIntents::GUILDS | GatewayIntents::GUILD_MESSAGES | GatewayIntents::DIRECT_MESSAGES | GatewayIntents::MESSAGE_CONTENT;
    let downloads = reqwest::Client::builder().connect_timeout(Duration::from_millis(config.discord.download_timeout_ms)).build()?;
    let cooldowns = Cooldowns { gap: Duration::from_secs(config.discord.user_cooldown_s), last: DashMap::new() };
    let feedback = Arc::new(FeedbackStore::open(&config.feedback));
    let bot = Bot { service, config, downloads, cooldowns, queries: RecentQueries::default(), feedback, me: OnceLock::new(), health };
    ClientBuilder::new_with_http(http.build(), intents).event_handler(Handler { bot: Arc::new(bot) }).await.map_err(|e| anyhow::anyhow!("cannot build the Discord client: {e}"))
}

/// Every command, each registered beside its handler.
fn commands() -> Vec<CreateCommand> {
    let mut commands = vec![search::register()];
    commands.extend(catalogue::register());
    commands.extend([import::register(), help::register(), reindex::register(), search::register_find_similar()]);
    commands
}

struct Handler {
    bot: Arc<Bot>,
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        let _ = self.bot.me.set(ready.user.id);
        self.bot.health.gateway(ctx.shard_id.0, true);
        let registered = match self.bot.config.discord.guild_id {
            0 => Command::set_global_commands(&ctx.http, commands()).await.map(|c| c.len()),
            guild => GuildId::new(guild).set_commands(&ctx.http, commands()).await.map(|c| c.len()),
        };
        match registered {
            Ok(count) => tracing::info!(user = %ready.user.name, commands = count, "connected to Discord"),
            Err(err) => tracing::error!(cause = %err, "cannot register the slash commands"),
        }
    }

    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        self.bot.health.gateway(event.shard_id.0, event.new == ConnectionStage::Connected);
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        let bot = self.bot.clone();
        let Some(in_flight) = bot.health.enter() else {
            let restarting = CreateInteractionResponse::Message(CreateInteractionResponseMessage::new().content(RESTARTING).ephemeral(true));
            let answered = match interaction {
                Interaction::Command(command) => command.create_response(&ctx.http, restarting).await,
                Interaction::Component(component) => component.create_response(&ctx.http, restarting).await,
                _ => Ok(()),
            };
            if let Err(err) = answered {
                tracing::warn!(cause = %err, "cannot answer an interaction");
            }
            return;
        };
        isolate("interaction", async move {
            let _in_flight = in_flight;
            match interaction {
                Interaction::Command(command) => match (command.data.kind, command.data.name.as_str()) {
                    (CommandType::ChatInput, "search") => search::slash_search(&bot, &ctx, &command).await,
                    (CommandType::Message, _) => search::find_similar(&bot, &ctx, &command).await,
                    (_, "catalogue") => respond(&ctx, &command, catalogue::catalogue_text(&bot).await, false).await,
                    (_, "catalogue-add" | "catalogue-remove") => catalogue::edit(&bot, &ctx, &command).await,
                    (_, "catalogue-import") => import::import(&bot, &ctx, &command).await,
                    (_, "help") => respond(&ctx, &command, help::HELP.to_string(), true).await,
                    (_, "reindex") => reindex::reindex(&bot, &ctx, &command).await,
                    (_, other) => tracing::warn!(command = other, "unknown command"),
                },
                Interaction::Component(component) => buttons::button(&bot, &ctx, &component).await,
                Interaction::Autocomplete(command) => catalogue::autocomplete(&bot, &ctx, &command).await,
                _ => {}
            }
        })
        .await;
    }

    async fn message(&self, ctx: Context, message: Message) {
        let bot = self.bot.clone();
        // Shutting down: a message is left for the next process to miss, as it cannot be deferred.
        let Some(in_flight) = bot.health.enter() else { return };
        isolate("message", async move {
            let _in_flight = in_flight;
            mention::chat_search(&bot, &ctx, &message).await
        })
        .await;
    }
}

/// The answer to a command that arrives while the process shuts down.
const RESTARTING: &str = "lookalike is restarting: ask again in a minute.";

/// Runs a handler in its own task, so that a panic in it is logged and goes no further.
async fn isolate(what: &'static str, handler: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Err(err) = tokio::spawn(handler).await {
        tracing::error!(handler = what, cause = %err, "a handler failed; the bot carries on");
    }
}

async fn respond(ctx: &Context, command: &CommandInteraction, text: String, ephemeral: bool) {
    let message = CreateInteractionResponseMessage::new().content(text).ephemeral(ephemeral).allowed_mentions(reply::no_pings());
    if let Err(err) = command.create_response(&ctx.http, CreateInteractionResponse::Message(message)).await {
        tracing::warn!(cause = %err, "cannot answer an interaction");
    }
}

/// Who asked, and how: the fields of every request's log line.
#[derive(Debug, Clone, Copy)]
struct Asker {
    kind: Entry,
    user: UserId,
}

impl Asker {
    /// The request's span: its id (the interaction or message id) and who asked, the user id
    /// hashed so that the log can follow one user without naming them.
    fn span(&self, key: u64) -> tracing::Span {
        use sha2::Digest;
        let user = hex::encode(&sha2::Sha256::digest(self.user.get().to_le_bytes())[..6]);
        tracing::info_span!("request", id = key, kind = self.kind.as_str(), user = %user)
    }
}

/// Per-user spacing of searches.
struct Cooldowns {
    gap: Duration,
    last: DashMap<UserId, Instant>,
}

impl Cooldowns {
    /// Refuses a user who searched less than the gap ago, saying how long to wait.
    fn check(&self, user: UserId, now: Instant) -> Result<(), String> {
        if let Some(last) = self.last.get(&user).map(|t| *t) {
            let since = now.saturating_duration_since(last);
            if since < self.gap {
                return Err(format!("Easy there: you can search again in {:.0} s.", (self.gap - since).as_secs_f64().ceil()));
            }
        }
        self.last.insert(user, now);
        Ok(())
    }
}

impl Bot {
    fn cooldown(&self, user: UserId) -> Result<(), String> {
        self.cooldowns.check(user, Instant::now())
    }

    fn max_bytes(&self) -> u64 {
        crate::imaging::ImageLimits::from_config(&self.config.limits).max_bytes
    }

    fn remember(&self, key: u64, query: StoredQuery) {
        self.queries.insert(key, query);
    }

    /// Downloads the attachment, if there is one, and searches (by the words alone when there
    /// is none); the stored query lets the buttons go on.
    async fn search(&self, declared: Option<&Declared<'_>>, text: Option<String>, k: usize, key: u64, asker: Asker) -> Result<Reply, String> {
        let timeout = Duration::from_millis(self.config.discord.download_timeout_ms);
        let span = asker.span(key);
        let downloaded = match declared {
            Some(declared) => attachment::download(&self.downloads, declared, self.max_bytes(), timeout).instrument(span.clone()).await,
            None => Ok(Vec::new()),
        };
        let image = match downloaded {
            Ok(image) => image,
            Err(err) => {
                span.in_scope(|| tracing::info!(outcome = "bad_image", cause = %err, "request"));
                METRICS.search(asker.kind, "bad_image");
                return Err(err.to_string());
            }
        };
        let stored = StoredQuery { image: Arc::new(image), text, k, page: 0, categories: Vec::new(), decided: Vec::new(), created: Instant::now() };
        self.answer(stored, key, asker).await
    }

    /// Runs a stored query (the categories decided unless it names some) and renders it;
    /// logs one line for it.
    async fn answer(&self, stored: StoredQuery, key: u64, asker: Asker) -> Result<Reply, String> {
        let span = asker.span(key);
        let started = Instant::now();
        let result = self.answer_logged(stored, key).instrument(span.clone()).await;
        match &result {
            Ok((_, outcome)) => {
                let t = &outcome.timings;
                METRICS.search(asker.kind, "ok");
                METRICS.stages([t.decode_ms, t.queue_ms, t.vision_ms, t.text_ms, t.search_ms, t.total_ms].map(|ms| ms / 1e3));
            }
            Err(err) => METRICS.search(asker.kind, err.kind()),
        }
        span.in_scope(|| match &result {
            Ok((_, outcome)) => {
                let t = &outcome.timings;
                tracing::info!(
                    outcome = "ok",
                    categories = %outcome.decision.categories.join(","),
                    hits = outcome.hits.len(),
                    total_ms = t.total_ms,
                    decode_ms = t.decode_ms,
                    queue_ms = t.queue_ms,
                    vision_ms = t.vision_ms,
                    text_ms = t.text_ms,
                    search_ms = t.search_ms,
                    search_method = t.search_method.as_str(),
                    batch = t.batch,
                    reply_ms = started.elapsed().as_secs_f64() * 1e3,
                    "request"
                )
            }
            Err(err) => tracing::info!(outcome = err.kind(), cause = %err, "request"),
        });
        result.map(|(reply, _)| reply).map_err(|err| explain::explain(&err))
    }

    async fn answer_logged(&self, stored: StoredQuery, key: u64) -> Result<(Reply, crate::search::SearchOutcome), SearchError> {
        let query = Query {
            image: stored.image.as_ref().clone(),
            text: stored.text.clone(),
            k: Some(stored.k),
            page: stored.page,
            categories: (!stored.categories.is_empty()).then(|| stored.categories.clone()),
        };
        let outcome = self.service.search(query).await?;
        let reply = reply::render(&outcome, stored.text.as_deref(), key).await;
        // "More" decides again (the same photo and words decide the same categories, ranked the
        // same way), or stays in the category picked under "Wrong category?".
        let decided = if stored.categories.is_empty() { outcome.decision.categories.clone() } else { stored.decided.clone() };
        self.remember(key, StoredQuery { decided, ..stored });
        Ok((reply, outcome))
    }
}

/// Sends the answer to a deferred interaction; a failure replaces it with a private explanation.
async fn deliver(ctx: &Context, token: &str, answer: Result<Reply, String>) {
    let sent = match answer {
        Ok(reply) => {
            let edit = EditInteractionResponse::new().embeds(reply.embeds).components(reply.components).allowed_mentions(reply::no_pings());
            reply.files.into_iter().fold(edit, |e, f| e.new_attachment(f)).execute(&ctx.http, token).await.map(|_| ())
        }
        Err(text) => {
            let _ = ctx.http.delete_original_interaction_response(token).await;
            let followup = CreateInteractionResponseFollowup::new().content(text).ephemeral(true).allowed_mentions(reply::no_pings());
            followup.execute(&ctx.http, (None, token)).await.map(|_| ())
        }
    };
    if let Err(err) = sent {
        tracing::warn!(cause = %err, "cannot answer an interaction");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_waits_out_the_cooldown() {
        let cooldowns = Cooldowns { gap: Duration::from_secs(3), last: DashMap::new() };
        let (alice, bob, start) = (UserId::new(1), UserId::new(2), Instant::now());
        assert!(cooldowns.check(alice, start).is_ok());
        assert_eq!(cooldowns.check(alice, start + Duration::from_millis(1200)).unwrap_err(), "Easy there: you can search again in 2 s.");
        assert!(cooldowns.check(bob, start + Duration::from_millis(1200)).is_ok(), "per user");
        assert!(cooldowns.check(alice, start + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn commands_register_with_discords_shapes() {
        let json = serde_json::to_value(commands()).unwrap();
        assert_eq!(json[0]["options"][0]["type"], 11, "attachment option");
        let names: Vec<&str> = json.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["search", "catalogue", "catalogue-add", "catalogue-remove", "catalogue-import", "help", "reindex", "Find similar"]);
        for moderators_only in [2, 3, 4, 6] {
            assert_eq!(json[moderators_only]["default_member_permissions"], "32", "Manage Server: {}", names[moderators_only]);
        }
        assert_eq!(json[2]["options"][1]["autocomplete"], true, "category");
        assert_eq!(json[7]["type"], 3, "message context menu");
        assert_eq!((json[4]["options"][0]["name"].as_str(), json[4]["options"][0]["required"].as_bool()), (Some("url"), Some(true)), "the feed's URL");
    }
}
