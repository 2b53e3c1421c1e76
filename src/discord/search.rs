//! `/search image:<photo> [text] [k]` and the "Find similar" message menu: the two searches that arrive as commands.

use super::*;

pub(super) fn register() -> CreateCommand {
    CreateCommand::new("search")
        .description("Find catalogue items that look like a photo")
        .add_option(CreateCommandOption::new(CommandOptionType::Attachment, "image", "The photo").required(true))
        .add_option(CreateCommandOption::new(CommandOptionType::String, "text", "What you are after, e.g. \"like this, but in blue\"").max_length(300))
        .add_option(CreateCommandOption::new(CommandOptionType::Integer, "k", "How many items (1 to 9)").min_int_value(1).max_int_value(reply::MAX_HITS as u64))
}

pub(super) fn register_find_similar() -> CreateCommand {
    CreateCommand::new("Find similar").kind(CommandType::Message)
}

pub(super) fn first_image(attachments: &[serenity::all::Attachment]) -> Option<&serenity::all::Attachment> {
    attachments.iter().find(|a| a.content_type.as_deref().is_some_and(|t| t.starts_with("image/")) || has_image_extension(&a.filename)).or(attachments.first())
}

pub(super) fn declared(attachment: &serenity::all::Attachment) -> Declared<'_> {
    Declared { name: &attachment.filename, size: attachment.size as u64, content_type: attachment.content_type.as_deref(), url: &attachment.url }
}

pub(super) async fn search_interaction(bot: &Bot, ctx: &Context, command: &CommandInteraction, attachment: Option<&serenity::all::Attachment>, text: Option<String>, k: usize, kind: Entry) {
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

pub(super) async fn slash_search(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    let (mut attachment, mut text, mut k) = (None, None, bot.config.search.default_k);
    for option in command.data.options() {
        match (option.name, option.value) {
            ("image", ResolvedValue::Attachment(a)) => attachment = Some(a),
            ("text", ResolvedValue::String(s)) => text = Some(s.to_string()),
            ("k", ResolvedValue::Integer(n)) => k = n.clamp(1, reply::MAX_HITS as i64) as usize,
            _ => {}
        }
    }
    search_interaction(bot, ctx, command, attachment, text, k.min(reply::MAX_HITS), Entry::Slash).await;
}

pub(super) async fn find_similar(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    let target = command.data.target_id.and_then(|id| command.data.resolved.messages.get(&id.to_message_id()));
    let attachment = target.and_then(|m| first_image(&m.attachments));
    let text = target.map(|m| m.content.trim().to_string()).filter(|t| !t.is_empty());
    search_interaction(bot, ctx, command, attachment, text, bot.config.search.default_k.min(reply::MAX_HITS), Entry::FindSimilar).await;
}
