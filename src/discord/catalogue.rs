//! `/catalogue` (anyone: categories, item counts, the index, the last edits) and, for
//! moderators, `/catalogue-add image:<photo> category:<name> [title] [price] [link]` and
//! `/catalogue-remove item:<id>` (category and item autocompleted).
//!
//! Three commands rather than subcommands of one: Discord cannot run a command that has
//! subcommands without naming one, so `/catalogue` alone could not stay the summary; a
//! `/catalogue show` subcommand would arrive without an `options` key, which serenity 0.12
//! cannot parse (the interaction is dropped); and whole commands can be hidden from shoppers
//! (`default_member_permissions`), which subcommands cannot. The moderator check at each call
//! stays, since a server can grant the commands to anyone.

use super::*;
use crate::audit::{Event, Who};
use crate::catalogue::Metadata;
use crate::search::Edit;
use serenity::all::{AutocompleteChoice, CreateAutocompleteResponse};

/// Edits `/catalogue` lists.
const LAST_EDITS: usize = 5;
/// Discord shows at most 25 autocomplete choices, each value at most 100 characters.
const CHOICES: usize = 25;

pub(super) fn register() -> Vec<CreateCommand> {
    let text = |name: &str, description: &str| CreateCommandOption::new(CommandOptionType::String, name, description);
    vec![
        CreateCommand::new("catalogue").description("Categories, item counts, the index and the last edits"),
        CreateCommand::new("catalogue-add")
            .description("Add a photo to the catalogue (moderators)")
            .default_member_permissions(Permissions::MANAGE_GUILD)
            .add_option(CreateCommandOption::new(CommandOptionType::Attachment, "image", "The item's photo").required(true))
            .add_option(text("category", "One of the catalogue's categories").required(true).set_autocomplete(true))
            .add_option(text("title", "Shown on the hit").max_length(200))
            .add_option(text("price", "Shown on the hit, as written").max_length(40))
            .add_option(text("link", "The product page (https://…)").max_length(500))
            .add_option(text("description", "A sentence or two: searched with the title").max_length(1000))
            .add_option(text("tags", "Words to find it by, separated by commas (canvas, summer)").max_length(300)),
        CreateCommand::new("catalogue-remove")
            .description("Remove an item from the catalogue (moderators)")
            .default_member_permissions(Permissions::MANAGE_GUILD)
            .add_option(text("item", "The item: start typing its title or id").required(true).set_autocomplete(true)),
    ]
}

/// `/catalogue-add` and `/catalogue-remove`: moderators only, checked here at every call.
pub(super) async fn edit(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    if !reindex::is_moderator(command.member.as_deref(), bot.config.discord.moderator_role_id) {
        return respond(ctx, command, "Only moderators (Manage Server, or the moderator role) can edit the catalogue.".into(), true).await;
    }
    let options = command.data.options();
    let text = |wanted: &str| options.iter().find(|o| o.name == wanted).and_then(|o| if let ResolvedValue::String(s) = o.value { Some(s.trim().to_string()) } else { None }).filter(|s| !s.is_empty());
    let who = Who::Discord { user: command.user.id.get(), name: command.user.name.clone() };
    if command.data.name == "catalogue-add" {
        let attachment = options.iter().find_map(|o| if let ResolvedValue::Attachment(a) = o.value { Some(a) } else { None });
        let (Some(attachment), Some(category)) = (attachment, text("category")) else {
            return respond(ctx, command, "`/catalogue-add` needs a photo and a category.".into(), true).await;
        };
        let metadata = Metadata {
            title: text("title"),
            price: text("price"),
            link: text("link"),
            description: text("description"),
            tags: text("tags").map(|tags| crate::catalogue::split_tags(&tags)).unwrap_or_default(),
            ..Metadata::default()
        };
        return add(bot, ctx, command, attachment, category, metadata, who).await;
    }
    match text("item") {
        Some(item) => remove(bot, ctx, command, item, who).await,
        None => respond(ctx, command, "`/catalogue-remove` needs an item.".into(), true).await,
    }
}

/// Downloads the photo, adds it, and answers with the item as a search with that photo finds it.
async fn add(bot: &Bot, ctx: &Context, command: &CommandInteraction, attachment: &serenity::all::Attachment, category: String, metadata: Metadata, who: Who) {
    let declared = search::declared(attachment);
    if let Err(err) = check_declared(&declared, bot.max_bytes()) {
        return respond(ctx, command, err.to_string(), true).await;
    }
    if let Err(err) = command.defer(&ctx.http).await {
        return tracing::warn!(cause = %err, "cannot defer /catalogue-add");
    }
    let timeout = Duration::from_millis(bot.config.discord.download_timeout_ms);
    let photo = match attachment::download(&bot.downloads, &declared, bot.max_bytes(), timeout).await {
        Ok(photo) => photo,
        Err(err) => return answer(ctx, command, format!("Not added: {err}"), None).await,
    };
    let edit = Edit::Add { photo: photo.clone(), category: category.clone(), metadata: Box::new(metadata) };
    let id = match edit_blocking(bot, edit, who).await {
        Ok((id, _)) => id,
        Err(text) => return answer(ctx, command, format!("Not added: {text}"), None).await,
    };
    let query = Query { image: photo, categories: Some(vec![category.clone()]), k: Some(1), ..Query::default() };
    let shown = match bot.service.search(query).await {
        Ok(outcome) => match outcome.hits.first() {
            Some(hit) => Some(reply::hit_embed(1, hit).await),
            None => None,
        },
        Err(err) => {
            tracing::warn!(cause = %err, "the added item could not be searched");
            None
        }
    };
    let found_first = shown.is_some();
    let text = match found_first {
        true => format!("Added **{}** to **{category}**; a search with this photo now finds it first:", reply::escape(&id, 200)),
        false => format!("Added **{}** to **{category}**.", reply::escape(&id, 200)),
    };
    answer(ctx, command, text, shown).await
}

async fn remove(bot: &Bot, ctx: &Context, command: &CommandInteraction, item: String, who: Who) {
    if let Err(err) = command.defer(&ctx.http).await {
        return tracing::warn!(cause = %err, "cannot defer /catalogue-remove");
    }
    let text = match edit_blocking(bot, Edit::Remove { item }, who).await {
        Ok((id, summary)) => format!("Removed **{}** from the catalogue (index generation {}).", reply::escape(&id, 200), summary.generation),
        Err(text) => format!("Not removed: {text}"),
    };
    answer(ctx, command, text, None).await
}

/// Runs the edit and its re-index on a blocking thread; a failure as the moderator should read it.
async fn edit_blocking(bot: &Bot, edit: Edit, who: Who) -> Result<(String, crate::index::ReindexSummary), String> {
    let service = bot.service.clone();
    match tokio::task::spawn_blocking(move || service.upkeep().edit_catalogue(edit, who, &mut |_| {})).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(err)) => Err(explain::explain_reindex(&err, explain::Upkeep::Edit)),
        Err(err) => {
            tracing::error!(cause = %err, "catalogue edit task failed");
            Err("the edit failed; the bot's log says why.".into())
        }
    }
}

async fn answer(ctx: &Context, command: &CommandInteraction, text: String, hit: Option<(serenity::all::CreateEmbed, Option<serenity::all::CreateAttachment>)>) {
    let mut edit = EditInteractionResponse::new().content(text).allowed_mentions(reply::no_pings());
    if let Some((embed, file)) = hit {
        edit = edit.embeds(vec![embed]);
        if let Some(file) = file {
            edit = edit.new_attachment(file);
        }
    }
    if let Err(err) = command.edit_response(&ctx.http, edit).await {
        tracing::warn!(cause = %err, "cannot answer /catalogue");
    }
}

/// Choices while a moderator types a category (`/catalogue-add`) or an item (`/catalogue-remove`): the ones whose
/// name, id or title contains what was typed.
pub(super) async fn autocomplete(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    let Some(focused) = command.data.autocomplete() else { return };
    let typed = focused.value.to_lowercase();
    let choices: Vec<AutocompleteChoice> = match focused.name {
        "category" => {
            let categories = bot.service.generation().await.map(|g| g.category_names()).unwrap_or_default();
            categories.into_iter().filter(|c| c.to_lowercase().contains(&typed)).take(CHOICES).map(|c| AutocompleteChoice::new(c.clone(), c)).collect()
        }
        "item" => {
            let (root, metadata) = (bot.config.catalogue.dir.clone(), bot.config.catalogue.metadata.clone());
            tokio::task::spawn_blocking(move || item_choices(&root, &metadata, &typed)).await.unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let response = CreateInteractionResponse::Autocomplete(CreateAutocompleteResponse::new().set_choices(choices));
    if let Err(err) = command.create_response(&ctx.http, response).await {
        tracing::warn!(cause = %err, "cannot answer an autocomplete");
    }
}

fn item_choices(root: &std::path::Path, metadata: &std::path::Path, typed: &str) -> Vec<AutocompleteChoice> {
    let (Ok(scan), Ok(table)) = (crate::catalogue::scan(root), crate::catalogue::MetadataTable::load(metadata)) else { return Vec::new() };
    let mut choices = Vec::new();
    for entry in scan.entries.iter().filter(|e| e.id.len() <= 100) {
        let title = table.get(&entry.id).title.unwrap_or_default();
        if entry.id.to_lowercase().contains(typed) || title.to_lowercase().contains(typed) {
            let shown = if title.is_empty() { entry.id.clone() } else { format!("{title} ({})", entry.id) };
            choices.push(AutocompleteChoice::new(shown.chars().take(100).collect::<String>(), entry.id.clone()));
            if choices.len() == CHOICES {
                break;
            }
        }
    }
    choices
}

/// The summary `/catalogue` answers with.
pub(super) async fn catalogue_text(bot: &Bot) -> String {
    let models = format!("models: `{}` profile ({} vectors)", bot.config.models.profile, bot.service.embedding_key().source);
    let summary = match bot.service.generation().await {
        Ok(generation) => {
            let counts: Vec<String> = generation.categories.iter().map(|c| format!("• **{}**: {}", c.name, c.files)).collect();
            format!(
                "**{} items** in {} categories (index generation {}, built <t:{}:R>)\n{}\n{models}",
                generation.files(),
                counts.len(),
                generation.number,
                generation.created_unix_s,
                counts.join("\n")
            )
        }
        Err(err) => {
            tracing::info!(cause = %err, "/catalogue: no index to show");
            format!("The catalogue is not searchable yet: ask a moderator to run /reindex.\n{models}")
        }
    };
    let audit = bot.service.upkeep().audit().clone();
    let edits = tokio::task::spawn_blocking(move || audit.last(LAST_EDITS)).await.map_err(anyhow::Error::from).and_then(|r| r);
    match edits {
        Ok(edits) if !edits.is_empty() => format!("{summary}\n**Last edits**\n{}", edits.iter().map(edit_line).collect::<Vec<_>>().join("\n")),
        Ok(_) => summary,
        Err(err) => {
            tracing::warn!(cause = %format!("{err:#}"), "cannot read the audit log");
            summary
        }
    }
}

/// `• <t:…:R> <@user>: added bag/1356ca68bf52bcba.png` (mentions render as names and ping nobody).
fn edit_line(event: &Event) -> String {
    let who = match &event.who {
        Who::Discord { user, .. } => format!("<@{user}>"),
        Who::Cli { user } => format!("{} (command line)", reply::escape(user, 50)),
    };
    format!("• <t:{}:R> {who}: {}", event.unix_s, reply::escape(&event.action.to_string(), 200))
}
