//! A `SearchOutcome` as Discord messages: a summary embed (the categories searched and why,
//! each backbone's vote, the text's scores, the timings), one embed per hit with its picture
//! (attached, or linked when the catalogue has URLs), and the "More" / "Wrong category?"
//! buttons. Nothing the bot sends can ping anyone: allowed mentions are empty on every message
//! and text from users is escaped.

use serenity::all::{
    ButtonStyle, CreateActionRow, CreateAllowedMentions, CreateAttachment, CreateButton, CreateEmbed, CreateEmbedFooter, CreateSelectMenu, CreateSelectMenuKind, CreateSelectMenuOption,
};

use crate::index::Hit;
use crate::search::SearchOutcome;

/// Discord allows ten embeds per message: one summary and up to nine hits.
pub const MAX_HITS: usize = 9;
const BRAND: u32 = 0x5865F2;

/// A reply ready to send in any of the ways the bot answers.
pub struct Reply {
    pub embeds: Vec<CreateEmbed>,
    pub files: Vec<CreateAttachment>,
    pub components: Vec<CreateActionRow>,
}

/// No mention in a message from this bot notifies anyone.
pub fn no_pings() -> CreateAllowedMentions {
    CreateAllowedMentions::new().empty_users().empty_roles().everyone(false).replied_user(false)
}

/// User text made inert: mentions cannot form and markdown shows as typed; cut to `limit` chars.
pub fn escape(text: &str, limit: usize) -> String {
    let mut out = String::new();
    for c in text.chars().take(limit) {
        match c {
            '@' => out.push_str("@\u{200B}"),
            '*' | '_' | '~' | '`' | '|' | '>' | '#' | '[' | ']' | '(' | ')' | '\\' | '<' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        text.to_string()
    } else {
        text.chars().take(limit.saturating_sub(1)).collect::<String>() + "…"
    }
}

/// The reply to a search; `key` names the stored query the buttons refer to.
pub async fn render(outcome: &SearchOutcome, said: Option<&str>, key: u64) -> Reply {
    let mut summary = CreateEmbed::new()
        .colour(BRAND)
        .title(cut(&format!("Searched: {}", outcome.decision.categories.join(", ")), 256))
        .description(cut(&outcome.decision.reasons.iter().map(|r| format!("• {}", escape(r, 500))).collect::<Vec<_>>().join("\n"), 4096));
    let by_words = outcome.vote.backbones.is_empty();
    if !by_words {
        let votes: Vec<String> = outcome.vote.picks().map(|(backbone, category, probability)| format!("`{backbone}`: {category} ({:.0} %)", 100.0 * probability)).collect();
        summary = summary.field("Image vote", cut(&votes.join("\n"), 1024), false);
    }
    if let Some(said) = said {
        let reading = match &outcome.intent {
            Some(intent) => match &intent.category {
                Some(category) => format!("names **{category}** ({:.0} %)", 100.0 * intent.score),
                None if by_words => "names no category: every category is searched".to_string(),
                None => "names no category: the image decides".to_string(),
            },
            None => String::new(),
        };
        summary = summary.field("You said", cut(&format!("“{}” — {reading}", escape(said, 300)), 1024), false);
    }
    if !outcome.words.is_empty() {
        let lines: Vec<String> = outcome.words.iter().map(|line| format!("• {}", escape(line, 300))).collect();
        summary = summary.field("What your words did", cut(&lines.join("\n"), 1024), false);
    }
    let t = &outcome.timings;
    summary = summary.footer(CreateEmbedFooter::new(format!(
        "page {} · vision {:.0} ms · text {:.0} ms · search {:.1} ms · total {:.0} ms",
        outcome.page + 1,
        t.vision_ms,
        t.text_ms,
        t.search_ms,
        t.total_ms
    )));
    let mut embeds = vec![summary];
    let mut files = Vec::new();
    for (rank, hit) in outcome.hits.iter().take(MAX_HITS).enumerate() {
        let (embed, file) = hit_embed(outcome.page * outcome.k + rank + 1, hit).await;
        embeds.push(embed);
        files.extend(file);
    }
    if outcome.hits.is_empty() {
        let why = match by_words {
            true => "No item's title, description or tags match these words within the price asked. Try other words, or send a photo.",
            false => "Nothing in these categories is similar enough (within the price asked). Try another photo or name the category.",
        };
        embeds[0] = embeds[0].clone().field("No hits", why, false);
    }
    let buttons = vec![
        CreateButton::new(format!("more:{key}")).label("More").style(ButtonStyle::Primary).disabled(!outcome.more),
        CreateButton::new(format!("wrong:{key}")).label("Wrong category?").style(ButtonStyle::Secondary),
    ];
    Reply { embeds, files, components: vec![CreateActionRow::Buttons(buttons)] }
}

/// Hit number `number` as an embed: title, similarity, category, price, link, and its picture
/// (linked when the catalogue has URLs, else attached: the attachment is returned).
pub async fn hit_embed(number: usize, hit: &Hit) -> (CreateEmbed, Option<CreateAttachment>) {
    let metadata = &hit.item.metadata;
    let title = metadata.title.clone().unwrap_or_else(|| hit.item.id.clone());
    let mut embed = CreateEmbed::new().colour(BRAND).title(cut(&format!("{number}. {title}"), 256)).field("Similarity", format!("{:.1} %", 100.0 * hit.cosine.max(0.0)), true).field(
        "Category",
        hit.item.category.clone(),
        true,
    );
    if let Some(price) = &metadata.price {
        embed = embed.field("Price", cut(price, 1024), true);
    }
    if hit.variants.len() > 1 {
        embed = embed.field("Also in", cut(&hit.variants[1..].join(", "), 1024), true);
    }
    if let Some(link) = metadata.link.as_ref().filter(|l| l.starts_with("https://") || l.starts_with("http://")) {
        embed = embed.url(link);
    }
    if let Some(url) = &metadata.image_url {
        return (embed.image(url), None);
    }
    let extension = hit.item.path.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let name = format!("hit-{number}.{extension}");
    match tokio::fs::read(&hit.item.path).await {
        Ok(bytes) => (embed.image(format!("attachment://{name}")), Some(CreateAttachment::bytes(bytes, name))),
        Err(err) => {
            tracing::warn!(path = %hit.item.path.display(), cause = %err, "catalogue image unreadable; sent without its picture");
            (embed, None)
        }
    }
}

/// The select menu "Wrong category?" answers with: every category but those searched.
pub fn category_menu(key: u64, categories: &[String], searched: &[String]) -> Vec<CreateActionRow> {
    // Words alone may have searched every category: then each is offered, to search alone.
    let others: Vec<&String> = categories.iter().filter(|c| !searched.contains(c)).collect();
    let offered = if others.is_empty() { categories.iter().collect() } else { others };
    let options: Vec<CreateSelectMenuOption> = offered.into_iter().take(25).map(|c| CreateSelectMenuOption::new(c, c)).collect();
    let menu = CreateSelectMenu::new(format!("category:{key}"), CreateSelectMenuKind::String { options }).placeholder("Search this category instead");
    vec![CreateActionRow::SelectMenu(menu)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_category_menu_offers_the_others_or_every_one_when_all_were_searched() {
        let all: Vec<String> = ["bag", "coat", "dress"].map(String::from).to_vec();
        let offered = |searched: &[String]| {
            let menu = serde_json::to_value(&category_menu(7, &all, searched)[0]).unwrap();
            menu["components"][0]["options"].as_array().unwrap().iter().map(|o| o["value"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(offered(&all[..1]), ["coat", "dress"]);
        assert_eq!(offered(&all), all, "words alone searched them all: each is offered, to search alone");
    }

    #[test]
    fn user_text_cannot_ping_or_format() {
        assert_eq!(escape("@everyone look", 100), "@\u{200B}everyone look");
        assert_eq!(escape("<@123> **bold**", 100), "\\<@\u{200B}123\\> \\*\\*bold\\*\\*");
        assert_eq!(escape("abcdef", 3), "abc");
        let mentions = serde_json::to_value(no_pings()).unwrap();
        assert_eq!(mentions["parse"], serde_json::json!([]), "{mentions}");
        assert_eq!(mentions["replied_user"], false);
    }
}
