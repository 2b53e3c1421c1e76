//! The buttons under an answer: **More** (the next page) and **Wrong category?** (search another).

use super::*;

/// "More", "Wrong category?" and the category menu under a reply.
pub(super) async fn button(bot: &Bot, ctx: &Context, component: &ComponentInteraction) {
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
            let categories = bot.service.generation().await.map(|g| g.category_names()).unwrap_or_default();
            let searched = if stored.categories.is_empty() { &stored.decided } else { &stored.categories };
            let message = CreateInteractionResponseMessage::new().content("Which category did you mean?").components(reply::category_menu(key, &categories, searched)).ephemeral(true);
            let _ = component.create_response(&ctx.http, CreateInteractionResponse::Message(message)).await;
            return;
        }
        ("category", ComponentInteractionDataKind::StringSelect { values }) => {
            // A search by words alone has no photo to teach the vote with.
            if !stored.image.is_empty() {
                record_correction(bot, component, &stored, values).await;
            }
            StoredQuery { page: 0, categories: values.clone(), ..stored.clone() }
        }
        _ => return,
    };
    // A new message under the reply, "thinking" until the search answers.
    if let Err(err) = component.create_response(&ctx.http, CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new())).await {
        return tracing::warn!(cause = %err, "cannot defer a button");
    }
    let answer = bot.answer(StoredQuery { created: stored.created, ..next }, key, Asker { kind: Entry::Button, user: component.user.id }).await;
    deliver(ctx, &component.token, answer).await;
}

/// Keeps the pick as a correction for training (`lookalike feedback`); a failure to record it
/// is logged, and the search goes on.
async fn record_correction(bot: &Bot, component: &ComponentInteraction, stored: &StoredQuery, picked: &[String]) {
    let Some(picked) = picked.first().cloned() else { return };
    let moderator = reindex::is_moderator(component.member.as_ref(), bot.config.discord.moderator_role_id);
    let (feedback, image, searched, user) = (bot.feedback.clone(), stored.image.clone(), stored.decided.clone(), component.user.id.get());
    let recorded = tokio::task::spawn_blocking(move || feedback.record(&image, &searched, &picked, user, moderator)).await;
    match recorded {
        Ok(Ok(correction)) => {
            tracing::info!(picked = %correction.picked, searched = ?correction.searched, moderator, "correction recorded");
            let who = crate::audit::Who::Discord { user, name: component.user.name.clone() };
            let action = crate::audit::Action::Corrected { image: correction.image, searched: correction.searched, picked: correction.picked, moderator };
            let service = bot.service.clone();
            let _ = tokio::task::spawn_blocking(move || service.upkeep().log(who, action)).await;
        }
        Ok(Err(err)) => tracing::warn!(cause = %format!("{err:#}"), "cannot record a correction"),
        Err(err) => tracing::warn!(cause = %err, "recording a correction failed"),
    }
}
