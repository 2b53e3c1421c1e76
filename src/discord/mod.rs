//! The Discord bot (`lookalike serve`): the only module that knows serenity. It turns Discord
//! events into calls on [`SearchService`] and the service's plain answers into messages.
//!
//! Ways to ask: `/search image:<attachment> [text] [k]`; mentioning the bot (or replying to it)
//! with a photo and a sentence; the "Find similar" message menu; `/catalogue`, `/help`; and for
//! moderators `/reindex`. Every handler runs in its own task: a panic fails that request only.

mod attachment;
mod queries;
mod reply;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serenity::all::{
    async_trait, Client, ClientBuilder, Command, CommandInteraction, CommandOptionType, CommandType, ComponentInteraction, ComponentInteractionDataKind, Context, CreateCommand, CreateCommandOption,
    CreateInteractionResponse, CreateInteractionResponseFollowup, CreateInteractionResponseMessage, CreateMessage, EditInteractionResponse, EventHandler, GatewayIntents, GuildId, HttpBuilder,
    Interaction, Message, Permissions, Ready, ResolvedValue, RoleId, UserId,
};

use attachment::{check_declared, has_image_extension, Declared};
use queries::{RecentQueries, StoredQuery};

use crate::config::Config;
use crate::imaging::{self, ImageError};
use crate::index::{render_summary, Audience, Progress, ReindexError};
use crate::search::{Query, SearchError, SearchService};
use reply::Reply;
use serenity::builder::Builder;
use tracing::Instrument;

/// Shortest gap between two edits of the /reindex progress message (Discord rate-limits edits).
const PROGRESS_EDIT_GAP: Duration = Duration::from_millis(1500);

struct Bot {
    service: Arc<SearchService>,
    config: Config,
    downloads: reqwest::Client,
    cooldowns: Cooldowns,
    queries: RecentQueries,
    me: OnceLock<UserId>,
}

/// Runs the bot until the gateway connection ends for good or the process is interrupted.
pub async fn serve(config: Config, service: Arc<SearchService>, token: String) -> anyhow::Result<()> {
    let mut client = client(config, service, &token).await?;
    let shards = client.shard_manager.clone();
    tokio::select! {
        result = client.start() => result.map_err(|e| anyhow::anyhow!("the Discord connection ended: {e}")),
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted: closing the gateway connection");
            shards.shutdown_all().await;
            Ok(())
        }
    }
}

/// The serenity client, pointed at `discord.api_proxy` when set (every REST call, and the
/// gateway URL that origin returns).
pub async fn client(config: Config, service: Arc<SearchService>, token: &str) -> anyhow::Result<Client> {
    let mut http = HttpBuilder::new(token).default_allowed_mentions(reply::no_pings());
    if !config.discord.api_proxy.is_empty() {
        http = http.proxy(config.discord.api_proxy.clone()).ratelimiter_disabled(true);
    }
    let intents = GatewayIntents::GUILDS | GatewayIntents::GUILD_MESSAGES | GatewayIntents::DIRECT_MESSAGES | GatewayIntents::MESSAGE_CONTENT;
    let downloads = reqwest::Client::builder().connect_timeout(Duration::from_millis(config.discord.download_timeout_ms)).build()?;
    let cooldowns = Cooldowns { gap: Duration::from_secs(config.discord.user_cooldown_s), last: DashMap::new() };
    let bot = Bot { service, config, downloads, cooldowns, queries: RecentQueries::default(), me: OnceLock::new() };
    ClientBuilder::new_with_http(http.build(), intents)
        .event_handler(Handler { bot: Arc::new(bot) })
        .await
        .map_err(|e| anyhow::anyhow!("cannot build the Discord client: {e}"))
}

fn commands() -> Vec<CreateCommand> {
    vec![
        CreateCommand::new("search")
            .description("Find catalogue items that look like a photo")
            .add_option(CreateCommandOption::new(CommandOptionType::Attachment, "image", "The photo").required(true))
            .add_option(CreateCommandOption::new(CommandOptionType::String, "text", "What you are after, e.g. \"like this, but in blue\"").max_length(300))
            .add_option(CreateCommandOption::new(CommandOptionType::Integer, "k", "How many items (1 to 9)").min_int_value(1).max_int_value(reply::MAX_HITS as u64)),
        CreateCommand::new("catalogue").description("Categories, item counts, last index time and models"),
        CreateCommand::new("help").description("How to search with lookalike"),
        CreateCommand::new("reindex").description("Re-index the catalogue (moderators)").default_member_permissions(Permissions::MANAGE_GUILD),
        CreateCommand::new("Find similar").kind(CommandType::Message),
    ]
}

struct Handler {
    bot: Arc<Bot>,
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        let _ = self.bot.me.set(ready.user.id);
        let registered = match self.bot.config.discord.guild_id {
            0 => Command::set_global_commands(&ctx.http, commands()).await.map(|c| c.len()),
            guild => GuildId::new(guild).set_commands(&ctx.http, commands()).await.map(|c| c.len()),
        };
        match registered {
            Ok(count) => tracing::info!(user = %ready.user.name, commands = count, "connected to Discord"),
            Err(err) => tracing::error!(cause = %err, "cannot register the slash commands"),
        }
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        let bot = self.bot.clone();
        isolate("interaction", async move {
            match interaction {
                Interaction::Command(command) => match (command.data.kind, command.data.name.as_str()) {
                    (CommandType::ChatInput, "search") => slash_search(&bot, &ctx, &command).await,
                    (CommandType::Message, _) => find_similar(&bot, &ctx, &command).await,
                    (_, "catalogue") => respond(&ctx, &command, catalogue_text(&bot), false).await,
                    (_, "help") => respond(&ctx, &command, HELP.to_string(), true).await,
                    (_, "reindex") => reindex(&bot, &ctx, &command).await,
                    (_, other) => tracing::warn!(command = other, "unknown command"),
                },
                Interaction::Component(component) => button(&bot, &ctx, &component).await,
                _ => {}
            }
        })
        .await;
    }

    async fn message(&self, ctx: Context, message: Message) {
        let bot = self.bot.clone();
        isolate("message", async move { chat_search(&bot, &ctx, &message).await }).await;
    }
}

/// Runs a handler in its own task, so that a panic in it is logged and goes no further.
async fn isolate(what: &'static str, handler: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Err(err) = tokio::spawn(handler).await {
        tracing::error!(handler = what, cause = %err, "a handler failed; the bot carries on");
    }
}

const HELP: &str = "**lookalike** finds catalogue items that look like your photo.\n\
• `/search image:<photo> [text] [k]`: add a sentence to steer it, e.g. \"like this, but a sandal\" or \"not a t-shirt\".\n\
• Mention me (or reply to me) with a photo and a sentence.\n\
• Right-click a message with a photo → Apps → **Find similar**.\n\
• Under each answer: **More** for the next items, **Wrong category?** to search another one.\n\
• `/catalogue` shows what can be found. Moderators can `/reindex`.";

fn catalogue_text(bot: &Bot) -> String {
    let models = format!("models: `{}` profile ({} vectors)", bot.config.models.profile, bot.service.embedding_key().source);
    match bot.service.index() {
        Ok(index) => {
            let counts: Vec<String> = index.category_counts().iter().map(|(name, count)| format!("• **{name}**: {count}")).collect();
            format!(
                "**{} items** in {} categories (index generation {}, built <t:{}:R>)\n{}\n{models}",
                index.category_counts().iter().map(|c| c.1).sum::<usize>(),
                counts.len(),
                index.generation(),
                index.manifest.created_unix_s,
                counts.join("\n")
            )
        }
        Err(err) => {
            tracing::info!(cause = %err, "/catalogue: no index to show");
            format!("The catalogue is not searchable yet: ask a moderator to run /reindex.\n{models}")
        }
    }
}

async fn respond(ctx: &Context, command: &CommandInteraction, text: String, ephemeral: bool) {
    let message = CreateInteractionResponseMessage::new().content(text).ephemeral(ephemeral).allowed_mentions(reply::no_pings());
    if let Err(err) = command.create_response(&ctx.http, CreateInteractionResponse::Message(message)).await {
        tracing::warn!(cause = %err, "cannot answer an interaction");
    }
}

/// What the user reads for each way a search can fail; never a path, a backtrace or a token.
fn explain(error: &SearchError) -> String {
    match error {
        SearchError::Busy(_, seconds) => format!("I'm busy with other searches right now; try again in {seconds} s."),
        SearchError::Image(err) => format!("I couldn't use that photo: {}.", describe_image_error(err)),
        SearchError::NoIndex(_) => "The catalogue has not been indexed yet: ask a moderator to run /reindex.".to_string(),
        SearchError::UnknownCategory(category, _) => format!("The catalogue has no category `{}` any more.", reply::escape(category, 50)),
        SearchError::Timeout(_) => "That search took too long; please try again.".to_string(),
        SearchError::Models(_) => "Something went wrong on my side; please try again.".to_string(),
    }
}

/// An image problem in the user's terms: sizes in MB, no decoder internals, no config keys.
fn describe_image_error(error: &ImageError) -> String {
    match error {
        ImageError::Empty => "the file is empty".to_string(),
        ImageError::TooLarge { bytes, max } => format!("it is {} MB and the limit is {} MB", imaging::mb(*bytes), imaging::mb(*max)),
        ImageError::TooManyPixels { width, height, max } => format!("it is {width} x {height} pixels and the limit is {} megapixels", max / 1_000_000),
        ImageError::Unsupported(_) => "it is not a JPEG, PNG, WebP, GIF or BMP image".to_string(),
        ImageError::Corrupt(_) => "the image data is damaged (cut short, or not what its name says)".to_string(),
        ImageError::Io { .. } => "it could not be read".to_string(),
    }
}

/// Who asked, and how: the fields of every request's log line.
#[derive(Debug, Clone, Copy)]
struct Asker {
    /// slash, mention, find_similar or button.
    kind: &'static str,
    user: UserId,
}

impl Asker {
    /// The request's span: its id (the interaction or message id) and who asked, the user id
    /// hashed so that the log can follow one user without naming them.
    fn span(&self, key: u64) -> tracing::Span {
        use sha2::Digest;
        let user = hex::encode(&sha2::Sha256::digest(self.user.get().to_le_bytes())[..6]);
        tracing::info_span!("request", id = key, kind = self.kind, user = %user)
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

    /// Downloads the attachment and searches; the stored query lets the buttons go on.
    async fn search(&self, declared: &Declared<'_>, text: Option<String>, k: usize, key: u64, asker: Asker) -> Result<Reply, String> {
        let timeout = Duration::from_millis(self.config.discord.download_timeout_ms);
        let image = match attachment::download(&self.downloads, declared, self.max_bytes(), timeout).instrument(asker.span(key)).await {
            Ok(image) => image,
            Err(err) => {
                asker.span(key).in_scope(|| tracing::info!(outcome = "bad_image", cause = %err, "request"));
                return Err(err.to_string());
            }
        };
        let stored = StoredQuery { image: Arc::new(image), text, k, page: 0, categories: Vec::new(), created: Instant::now() };
        self.answer(stored, key, asker).await
    }

    /// Runs a stored query (the categories decided unless it names some) and renders it;
    /// logs one line for it.
    async fn answer(&self, stored: StoredQuery, key: u64, asker: Asker) -> Result<Reply, String> {
        let span = asker.span(key);
        let started = Instant::now();
        let result = self.answer_logged(stored, key).instrument(span.clone()).await;
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
                    batch = t.batch,
                    reply_ms = started.elapsed().as_secs_f64() * 1e3,
                    "request"
                )
            }
            Err(err) => tracing::info!(outcome = err.kind(), cause = %err, "request"),
        });
        result.map(|(reply, _)| reply).map_err(|err| explain(&err))
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
        // "More" continues in the categories this search decided on.
        self.remember(key, StoredQuery { categories: outcome.decision.categories.clone(), ..stored });
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

fn first_image(attachments: &[serenity::all::Attachment]) -> Option<&serenity::all::Attachment> {
    attachments.iter().find(|a| a.content_type.as_deref().is_some_and(|t| t.starts_with("image/")) || has_image_extension(&a.filename)).or(attachments.first())
}

fn declared(attachment: &serenity::all::Attachment) -> Declared<'_> {
    Declared { name: &attachment.filename, size: attachment.size as u64, content_type: attachment.content_type.as_deref(), url: &attachment.url }
}

async fn search_interaction(bot: &Bot, ctx: &Context, command: &CommandInteraction, attachment: Option<&serenity::all::Attachment>, text: Option<String>, k: usize, kind: &'static str) {
    let user = command.user.id;
    let Some(attachment) = attachment else {
        return respond(ctx, command, "I need a photo: attach one to the command, or use Find similar on a message with a photo.".into(), true).await;
    };
    // Refusals that need no download are answered at once, privately.
    if let Err(err) = check_declared(&declared(attachment), bot.max_bytes()) {
        return respond(ctx, command, err.to_string(), true).await;
    }
    if let Err(wait) = bot.cooldown(user) {
        return respond(ctx, command, wait, true).await;
    }
    if let Err(err) = command.defer(&ctx.http).await {
        return tracing::warn!(cause = %err, "cannot defer an interaction");
    }
    let answer = bot.search(&declared(attachment), text, k, command.id.get(), Asker { kind, user }).await;
    deliver(ctx, &command.token, answer).await;
}

async fn slash_search(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    let (mut attachment, mut text, mut k) = (None, None, bot.config.search.default_k);
    for option in command.data.options() {
        match (option.name, option.value) {
            ("image", ResolvedValue::Attachment(a)) => attachment = Some(a),
            ("text", ResolvedValue::String(s)) => text = Some(s.to_string()),
            ("k", ResolvedValue::Integer(n)) => k = n.clamp(1, reply::MAX_HITS as i64) as usize,
            _ => {}
        }
    }
    search_interaction(bot, ctx, command, attachment, text, k.min(reply::MAX_HITS), "slash").await;
}

async fn find_similar(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    let target = command.data.target_id.and_then(|id| command.data.resolved.messages.get(&id.to_message_id()));
    let attachment = target.and_then(|m| first_image(&m.attachments));
    let text = target.map(|m| m.content.trim().to_string()).filter(|t| !t.is_empty());
    search_interaction(bot, ctx, command, attachment, text, bot.config.search.default_k.min(reply::MAX_HITS), "find_similar").await;
}

/// Chat-style: a message that mentions the bot, replies to it, or is a direct message, with a photo.
async fn chat_search(bot: &Bot, ctx: &Context, message: &Message) {
    let Some(me) = bot.me.get().copied() else { return };
    if message.author.bot {
        return;
    }
    // In a server the bot answers when addressed; in a direct message, always.
    let addressed = message.guild_id.is_none() || message.mentions.iter().any(|u| u.id == me) || message.referenced_message.as_ref().is_some_and(|m| m.author.id == me);
    if !addressed {
        return;
    }
    let answer = |text: String| CreateMessage::new().content(text).reference_message(message).allowed_mentions(reply::no_pings());
    let Some(attachment) = first_image(&message.attachments) else {
        let _ = message.channel_id.send_message(&ctx.http, answer("Send me a photo with your message and I'll find similar items (see /help).".into())).await;
        return;
    };
    if let Err(wait) = bot.cooldown(message.author.id) {
        let _ = message.channel_id.send_message(&ctx.http, answer(wait)).await;
        return;
    }
    let text = strip_mentions(&message.content);
    let key = message.id.get();
    let asker = Asker { kind: "mention", user: message.author.id };
    let sent = match bot.search(&declared(attachment), text, bot.config.search.default_k.min(reply::MAX_HITS), key, asker).await {
        Ok(reply) => {
            let create = CreateMessage::new().embeds(reply.embeds).components(reply.components).add_files(reply.files).reference_message(message).allowed_mentions(reply::no_pings());
            message.channel_id.send_message(&ctx.http, create).await
        }
        Err(text) => message.channel_id.send_message(&ctx.http, answer(text)).await,
    };
    if let Err(err) = sent {
        tracing::warn!(cause = %err, "cannot answer a message");
    }
}

/// The sentence of a chat message, without the `<@id>` mentions that addressed the bot.
fn strip_mentions(content: &str) -> Option<String> {
    let words: Vec<&str> = content.split_whitespace().filter(|w| !(w.starts_with("<@") && w.ends_with('>'))).collect();
    let text = words.join(" ");
    (!text.is_empty()).then_some(text)
}

/// "More", "Wrong category?" and the category menu under a reply.
async fn button(bot: &Bot, ctx: &Context, component: &ComponentInteraction) {
    let Some((action, key)) = component.data.custom_id.split_once(':') else { return };
    let Some(stored) = key.parse::<u64>().ok().and_then(|k| bot.queries.get(k)) else {
        let message = CreateInteractionResponseMessage::new().content("This search has expired: run /search again for fresh results.").ephemeral(true);
        let _ = component.create_response(&ctx.http, CreateInteractionResponse::Message(message)).await;
        return;
    };
    let key: u64 = key.parse().unwrap_or_default();
    let next = match (action, &component.data.kind) {
        ("more", _) => StoredQuery { page: stored.page + 1, ..stored.clone() },
        ("wrong", _) => {
            let categories = bot.service.index().map(|i| i.manifest.categories.iter().map(|c| c.name.clone()).collect::<Vec<_>>()).unwrap_or_default();
            let message = CreateInteractionResponseMessage::new()
                .content("Which category did you mean?")
                .components(reply::category_menu(key, &categories, &stored.categories))
                .ephemeral(true);
            let _ = component.create_response(&ctx.http, CreateInteractionResponse::Message(message)).await;
            return;
        }
        ("category", ComponentInteractionDataKind::StringSelect { values }) => StoredQuery { page: 0, categories: values.clone(), ..stored.clone() },
        _ => return,
    };
    // A new message under the reply, "thinking" until the search answers.
    if let Err(err) = component.create_response(&ctx.http, CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new())).await {
        return tracing::warn!(cause = %err, "cannot defer a button");
    }
    let answer = bot.answer(StoredQuery { created: stored.created, ..next }, key, Asker { kind: "button", user: component.user.id }).await;
    deliver(ctx, &component.token, answer).await;
}

/// Manage Server (or Administrator), or the configured moderator role: checked at every call.
fn is_moderator(command: &CommandInteraction, moderator_role: u64) -> bool {
    command.member.as_ref().is_some_and(|member| {
        let permissions = member.permissions.unwrap_or_else(Permissions::empty);
        permissions.manage_guild() || permissions.administrator() || (moderator_role != 0 && member.roles.contains(&RoleId::new(moderator_role)))
    })
}

fn progress_text(progress: &Progress) -> String {
    let share = if progress.total == 0 { 1.0 } else { progress.done as f64 / progress.total as f64 };
    let filled = (share * 20.0).round() as usize;
    let eta = progress.eta_s().map_or("…".to_string(), |s| format!("{s:.0} s"));
    format!(
        "Re-indexing the catalogue…\n`[{}{}]` {}/{} images to embed · {:.1} images/s · ETA {eta}",
        "#".repeat(filled),
        ".".repeat(20 - filled),
        progress.done,
        progress.total,
        progress.rate()
    )
}

async fn reindex(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    if !is_moderator(command, bot.config.discord.moderator_role_id) {
        return respond(ctx, command, "Only moderators (Manage Server, or the moderator role) can re-index the catalogue.".into(), true).await;
    }
    if let Err(err) = command.defer(&ctx.http).await {
        return tracing::warn!(cause = %err, "cannot defer /reindex");
    }
    let (events, mut progress) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let service = bot.service.clone();
    let job = tokio::task::spawn_blocking(move || service.reindex(&mut |p| {
        let _ = events.send(*p);
    }));
    let mut last_edit: Option<Instant> = None;
    while let Some(event) = progress.recv().await {
        if last_edit.is_none_or(|t| t.elapsed() >= PROGRESS_EDIT_GAP) {
            last_edit = Some(Instant::now());
            let _ = command.edit_response(&ctx.http, EditInteractionResponse::new().content(progress_text(&event))).await;
        }
    }
    let text = match job.await {
        Ok(Ok(summary)) => format!("Re-index done.\n```\n{}```", reply::escape(&render_summary(&summary, Audience::Chat), 1800).replace("\\", "")),
        Ok(Err(ReindexError::AlreadyRunning(_))) => "A re-index is already running; wait for it to finish.".to_string(),
        Ok(Err(ReindexError::Failed(err))) => {
            tracing::error!(cause = %format!("{err:#}"), "re-index failed");
            "The re-index failed; the previous index is still in use. The bot's log says why.".to_string()
        }
        Err(err) => {
            tracing::error!(cause = %err, "re-index task failed");
            "The re-index failed; the previous index is still in use.".to_string()
        }
    };
    if let Err(err) = command.edit_response(&ctx.http, EditInteractionResponse::new().content(text).allowed_mentions(reply::no_pings())).await {
        tracing::warn!(cause = %err, "cannot report the re-index");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_users_read_names_no_path_type_or_config_key() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "/srv/lookalike/runs/index/gen-3/vectors.f32 missing");
        let cases: Vec<(SearchError, &str)> = vec![
            (SearchError::Image(ImageError::Empty), "the file is empty"),
            (SearchError::Image(ImageError::TooLarge { bytes: 12 << 20, max: 8 << 20 }), "it is 12 MB and the limit is 8 MB"),
            (SearchError::Image(ImageError::TooManyPixels { width: 9000, height: 9000, max: 40_000_000 }), "limit is 40 megapixels"),
            (SearchError::Image(ImageError::Corrupt("Format error decoding Png: CRC error".into())), "damaged"),
            (SearchError::Image(ImageError::Unsupported("tiff".into())), "not a JPEG, PNG"),
            (SearchError::Image(ImageError::Io { source: io() }), "could not be read"),
            (SearchError::NoIndex("no index in /srv/lookalike/runs/index".into()), "/reindex"),
            (SearchError::Models("tensor shape mismatch at src/vision/mod.rs:120".into()), "went wrong on my side"),
            (SearchError::Busy(8, 3), "try again in 3 s"),
        ];
        for (error, expected) in cases {
            let text = explain(&error);
            assert!(text.contains(expected), "{text}");
            assert!(!text.contains("/srv") && !text.contains(".rs") && !text.contains("limits.") && !text.contains('{'), "{text}");
        }
    }

    #[test]
    fn chat_text_loses_the_mentions_that_addressed_the_bot() {
        assert_eq!(strip_mentions("<@42> like this but a sandal").as_deref(), Some("like this but a sandal"));
        assert_eq!(strip_mentions("<@!42>"), None);
    }

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
    fn progress_reads_like_a_bar() {
        let text = progress_text(&Progress { done: 5, total: 10, elapsed_s: 1.0 });
        assert!(text.contains("`[##########..........]` 5/10") && text.contains("5.0 images/s") && text.contains("ETA 1 s"), "{text}");
    }

    #[test]
    fn commands_register_with_discords_shapes() {
        let json = serde_json::to_value(commands()).unwrap();
        assert_eq!(json[0]["options"][0]["type"], 11, "attachment option");
        assert_eq!(json[3]["default_member_permissions"], "32", "Manage Server");
        assert_eq!(json[4]["type"], 3, "message context menu");
    }
}
