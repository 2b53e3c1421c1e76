//! Chat-style searches: a photo, words, or both, with a mention of the bot (or a reply to it), or in a direct message.

use super::search::{declared, first_image};
use super::*;

/// Chat-style: a message that mentions the bot, replies to it, or is a direct message, with a
/// photo or words (or both).
pub(super) async fn chat_search(bot: &Bot, ctx: &Context, message: &Message) {
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
    let attachment = first_image(&message.attachments);
    let text = strip_mentions(&message.content);
    if attachment.is_none() && text.is_none() {
        let _ = message.channel_id.send_message(&ctx.http, answer("Send me a photo, or tell me what you are after (\"red canvas totes under $20\"), and I'll find it (see /help).".into())).await;
        return;
    }
    if let Err(wait) = bot.cooldown(message.author.id) {
        let _ = message.channel_id.send_message(&ctx.http, answer(wait)).await;
        return;
    }
    let key = message.id.get();
    let asker = Asker { kind: Entry::Mention, user: message.author.id };
    let sent = match bot.search(attachment.map(declared).as_ref(), text, bot.config.search.default_k.min(reply::MAX_HITS), key, asker).await {
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
pub(super) fn strip_mentions(content: &str) -> Option<String> {
    let words: Vec<&str> = content.split_whitespace().filter(|w| !(w.starts_with("<@") && w.ends_with('>'))).collect();
    let text = words.join(" ");
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_text_loses_the_mentions_that_addressed_the_bot() {
        assert_eq!(strip_mentions("<@42> like this but a sandal").as_deref(), Some("like this but a sandal"));
        assert_eq!(strip_mentions("<@!42>"), None);
    }
}
