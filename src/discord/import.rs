//! `/catalogue-import url:<feed URL> [prune] [category-from] [category-level] [currency]` (moderators): a
//! shop's product feed imported by the same code as `lookalike catalogue import`, its downloads
//! and then its re-index edited into the reply as they go. Only http(s) URLs: a file path would
//! let a moderator read the server's files.

use std::path::Path;

use super::*;
use crate::feed::{Categories, ImportOptions};
use crate::search::ImportStage;

/// Skipped products the reply lists (a message holds 2,000 characters); the rest are counted.
const SKIPS_SHOWN: usize = 8;

pub(super) fn register() -> CreateCommand {
    CreateCommand::new("catalogue-import")
        .description("Import the shop's product feed: Merchant Center XML or TSV, Shopify CSV (moderators)")
        .default_member_permissions(Permissions::MANAGE_GUILD)
        .add_option(CreateCommandOption::new(CommandOptionType::String, "url", "Where the feed is served (https://…)").required(true).max_length(2000))
        .add_option(CreateCommandOption::new(CommandOptionType::Boolean, "prune", "Remove products no longer in the feed"))
        .add_option(CreateCommandOption::new(CommandOptionType::String, "category-from", "Feed field naming the category (product_type, google_product_category, type)").max_length(100))
        .add_option(CreateCommandOption::new(CommandOptionType::Integer, "category-level", "Level of \"A > B > C\" to take (1 = A; default: the last)").min_int_value(1).max_int_value(20))
        .add_option(CreateCommandOption::new(CommandOptionType::String, "currency", "Currency of prices the feed gives without one (USD, EUR…)").max_length(3).min_length(3))
}

fn progress_text(stage: &ImportStage) -> String {
    match stage {
        ImportStage::Download { done, total } => format!("Importing the feed…\n`{}` {done}/{total} pictures downloaded", reindex::bar(*done, *total)),
        ImportStage::Index(progress) => format!("Importing the feed: its pictures are in, indexing them…\n{}", reindex::progress_text(progress)),
    }
}

pub(super) async fn import(bot: &Bot, ctx: &Context, command: &CommandInteraction) {
    if !reindex::is_moderator(command.member.as_deref(), bot.config.discord.moderator_role_id) {
        return respond(ctx, command, "Only moderators (Manage Server, or the moderator role) can import a feed.".into(), true).await;
    }
    let options = command.data.options();
    let text = |wanted: &str| options.iter().find(|o| o.name == wanted).and_then(|o| if let ResolvedValue::String(s) = o.value { Some(s.trim().to_string()) } else { None }).filter(|s| !s.is_empty());
    let prune = options.iter().any(|o| o.name == "prune" && matches!(o.value, ResolvedValue::Boolean(true)));
    let level = options.iter().find_map(|o| if let (true, ResolvedValue::Integer(n)) = (o.name == "category-level", &o.value) { usize::try_from(*n).ok() } else { None });
    let Some(url) = text("url").filter(|u| u.starts_with("https://") || u.starts_with("http://")) else {
        return respond(ctx, command, "`/catalogue-import` needs the feed's web address (https://…).".into(), true).await;
    };
    if let Err(err) = command.defer(&ctx.http).await {
        return tracing::warn!(cause = %err, "cannot defer /catalogue-import");
    }
    let options = ImportOptions {
        public_only: !bot.config.discord.import_private_hosts,
        format: None,
        categories: Categories { from: text("category-from"), level, mapping: Default::default() },
        prune,
        currency: text("currency").map(|c| c.to_uppercase()),
    };
    let service = bot.service.clone();
    let who = crate::audit::Who::Discord { user: command.user.id.get(), name: command.user.name.clone() };
    let done = reindex::with_progress_edits(ctx, command, move |progress: &mut dyn FnMut(ImportStage)| service.upkeep().import_feed(&url, &options, true, who, progress), progress_text).await;
    let text = match done {
        // The feed's own text (ids, URLs) must not close the code block.
        Ok(Ok(imported)) => {
            let mut report = crate::feed::render(&imported.summary, Path::new("the catalogue folder"), imported.heads.as_deref(), SKIPS_SHOWN);
            if let Some(summary) = &imported.reindex {
                report.push_str(&render_summary(summary, Audience::Chat));
            }
            format!("Feed imported.\n```\n{}```", reply::escape(&report.replace("```", "'''"), 1800).replace('\\', ""))
        }
        Ok(Err(err)) => explain::explain_reindex(&err, explain::Upkeep::Edit),
        Err(err) => {
            tracing::error!(cause = %err, "import task failed");
            "The import stopped unexpectedly; the bot's log says why. Run it again: the pictures it downloaded are kept and not fetched twice.".to_string()
        }
    };
    if let Err(err) = command.edit_response(&ctx.http, EditInteractionResponse::new().content(text).allowed_mentions(reply::no_pings())).await {
        tracing::warn!(cause = %err, "cannot report the import");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_like_a_bar() {
        let text = progress_text(&ImportStage::Download { done: 5, total: 10 });
        assert!(text.contains("`[##########..........]` 5/10 pictures"), "{text}");
        assert!(progress_text(&ImportStage::Index(Progress { done: 1, total: 4, elapsed_s: 1.0 })).contains("1/4 images to embed"));
    }
}
