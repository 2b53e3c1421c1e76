//! `/search [image] [text] [k]` (a photo, words, or both) and the "Find similar" message menu: the two searches that arrive as commands.

use super::*;

pub(super) fn register() -> CreateCommand {
    CreateCommand::new("search")
        .description("Find catalogue items like a photo, or by what you say")
        .add_option(CreateCommandOption::new(CommandOptionType::Attachment, "image", "The photo (or leave it out and say what you want)"))
        .add_option(CreateCommandOption::new(CommandOptionType::String, "text", "What you are after: \"like this, but in blue\", \"red canvas totes under $20\"").max_length(300))
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
    if attachment.is_none() && text.as_deref().is_none_or(|t| t.trim().is_empty()) {
        let help = "I need a photo or some words: attach a photo, or say what you are after in `text` (\"red canvas totes under $20\"), or both.";
        return respond(ctx, command, help.into(), true).await;
    }
    // Refusals that need no download are answered at once, privately.
    if let Some(Err(err)) = attachment.map(|a| check_declared(&declared(a), bot.max_bytes())) {
        return respond(ctx, command, err.to_string(), true).await;
    }
    if let Err(wait) = bot.cooldown(user) {
        return respond(ctx, command, wait, true).await;
    }
    if let Err(err) = command.defer(&ctx.http).await {
        return tracing::warn!(cause = %err, "cannot defer an interaction");
    }
    let answer = bot.search(attachment.map(declared).as_ref(), text, k, command.id.get(), Asker { kind, user }).await;
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
