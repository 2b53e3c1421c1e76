//! `/help`: how to search, privately.

use super::*;

pub(super) fn register() -> CreateCommand {
    CreateCommand::new("help").description("How to search with lookalike")
}

pub(super) const HELP: &str = "**lookalike** finds catalogue items that look like your photo, or that match what you say.\n\
• `/search image:<photo> [text] [k]`: add a sentence to steer it, e.g. \"like this, but a sandal\", \"not a t-shirt\", \"like this but in navy\", \"under $20\", \"cheapest first\".\n\
• `/search text:<words>` with no photo: \"red canvas totes under $20\".\n\
• Mention me (or reply to me) with a photo, a sentence, or both.\n\
• Right-click a message with a photo → Apps → **Find similar**.\n\
• Under each answer: **More** for the next items, **Wrong category?** to search another one.\n\
• `/catalogue` shows what can be found. Moderators can `/reindex`, and `/catalogue-import` the shop's product feed.";
