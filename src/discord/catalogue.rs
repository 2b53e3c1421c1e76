//! `/catalogue`: categories, item counts, the index generation and the models.

use super::*;

pub(super) fn register() -> CreateCommand {
    CreateCommand::new("catalogue").description("Categories, item counts, last index time and models")
}

pub(super) async fn catalogue_text(bot: &Bot) -> String {
    let models = format!("models: `{}` profile ({} vectors)", bot.config.models.profile, bot.service.embedding_key().source);
    match bot.service.generation().await {
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
    }
}
