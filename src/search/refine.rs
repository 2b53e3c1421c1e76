//! What the sentence's refinements do to a pool of candidates the index found (already inside
//! the price range, which the index applies in its query): colours and attribute words
//! re-rank it, "cheapest first" orders it, and every step is said in the answer's reasons.

use crate::colour::{self, Lab};
use crate::config::SearchConfig;
use crate::index::{Hit, Refined, Tally};
use crate::words::{Order, Wants};

/// A wanted colour this close (CIEDE2000) to the photo's own main colour is the photo's colour:
/// it is not set aside then.
const SAME_COLOUR_DELTA_E: f32 = 15.0;

/// The weights of the re-ranking terms (`search.colour_weight`, `search.attribute_weight`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Weights {
    pub colour: f32,
    pub attribute: f32,
}

impl Weights {
    pub fn from_config(search: &SearchConfig) -> Weights {
        Weights { colour: search.colour_weight, attribute: search.attribute_weight }
    }
}

/// The photo's main colour, when the sentence names another one: its closeness then counts
/// against a hit, so the look is kept and the photo's colour is not.
pub(super) fn photo_colour_to_set_aside(photo: &[colour::Swatch], wants: &Wants) -> Option<Lab> {
    let main = photo.first()?.lab;
    let mut wanted = wants.wanted_colours().peekable();
    wanted.peek()?;
    wanted.all(|w| colour::delta_e(w.lab, main) > SAME_COLOUR_DELTA_E).then_some(main)
}

/// Re-ranks `pool` (best first by similarity) by the sentence's colours and attributes, or
/// orders it by price, within the order of the categories searched (`rank` of a category: a
/// category searched first keeps its hits first, as the index ranked them); `normalise` scales
/// similarities to the best one's first (fused rank scores are small numbers).
pub(super) fn rerank(mut pool: Vec<Hit>, wants: &Wants, set_aside: Option<Lab>, weights: Weights, normalise: bool, rank: impl Fn(&str) -> usize) -> Vec<Hit> {
    if wants.is_empty() {
        return pool;
    }
    let best = pool.iter().map(|h| h.score).fold(f32::MIN, f32::max).max(1e-12);
    for hit in &mut pool {
        let similarity = if normalise { hit.score / best } else { hit.score };
        let closeness = |lab: Lab| colour::closeness(&hit.item.colours, lab);
        let wanted = wants.wanted_colours().map(|c| closeness(c.lab)).fold(None, |best: Option<f32>, c| Some(best.map_or(c, |b| b.max(c)))).unwrap_or(0.0);
        let avoided = wants.colours.iter().filter(|c| c.avoid).map(|c| closeness(c.lab)).fold(0.0, f32::max);
        let colour = wanted - avoided - set_aside.map_or(0.0, closeness);
        let words = crate::words::split(&hit.item.metadata.words());
        let mut mentions = Vec::new();
        let mut attribute = 0.0;
        for wish in wants.attributes.iter().filter(|a| a.mentioned_in(&words)) {
            attribute += if wish.avoid { -1.0 } else { 1.0 };
            mentions.push(if wish.avoid { format!("not {}", wish.word) } else { wish.word.clone() });
        }
        hit.score = similarity + weights.colour * colour + weights.attribute * attribute;
        hit.refined = Some(Refined { similarity, colour, mentions });
    }
    let price = |hit: &Hit| hit.item.metadata.price_value().unwrap_or(f64::MAX);
    let scope = |hit: &Hit| rank(&hit.item.category);
    match wants.order {
        Order::Relevance => pool.sort_by(|a, b| scope(a).cmp(&scope(b)).then(b.score.total_cmp(&a.score)).then_with(|| a.item.id.cmp(&b.item.id))),
        Order::Cheapest => pool.sort_by(|a, b| scope(a).cmp(&scope(b)).then(price(a).total_cmp(&price(b))).then(b.score.total_cmp(&a.score))),
        Order::Dearest => pool.sort_by(|a, b| scope(a).cmp(&scope(b)).then(price(b).total_cmp(&price(a))).then(b.score.total_cmp(&a.score))),
    }
    pool
}

/// What the words did, one line each, for the answer's reasons.
pub(super) fn explain(wants: &Wants, tally: &Tally, searched: &[String], set_aside: Option<Lab>, pool: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let within = match searched {
        [one] => format!("{one} items"),
        _ => "items searched".to_string(),
    };
    for wish in &wants.colours {
        lines.push(if wish.avoid {
            format!("not '{}': items near that colour ranked lower", wish.name)
        } else {
            format!("colour '{}' from the sentence: ranked by colour closeness, measured from the pictures", wish.name)
        });
    }
    if set_aside.is_some() {
        lines.push("the photo's own colour counts against a hit".to_string());
    }
    for (wish, &count) in wants.attributes.iter().zip(&tally.mentions) {
        lines.push(match (count, wish.avoid) {
            (0, _) => format!("'{}': no item's text mentions it", wish.word),
            (n, false) => format!("'{}': {n} of {} {within} mention it; those rank higher", wish.word, tally.items),
            (n, true) => format!("not '{}': {n} of {} {within} mention it; those rank lower", wish.word, tally.items),
        });
    }
    if !wants.price.is_open() {
        lines.push(match tally.priced_in {
            0 => format!("price {}: none of {} {within} qualify", wants.price.describe(), tally.items),
            n => format!("price {}: {n} of {} {within} qualify", wants.price.describe(), tally.items),
        });
    }
    match wants.order {
        Order::Relevance => {}
        Order::Cheapest => lines.push(format!("cheapest first: the {pool} best matches ordered by price")),
        Order::Dearest => lines.push(format!("most expensive first: the {pool} best matches ordered by price")),
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colour::Swatch;
    use crate::index::Item;

    fn hit(id: &str, score: f32, rgb: [u8; 3], title: &str, price: &str) -> Hit {
        let mut item = Item::bare(id.into(), "bag");
        item.colours = vec![Swatch { lab: colour::lab_from_srgb(rgb), share: 1.0 }];
        item.metadata.title = Some(title.into());
        item.metadata.price = Some(price.into());
        Hit::new(item, score, 0.0, score)
    }

    fn weights() -> Weights {
        Weights { colour: 0.5, attribute: 0.1 }
    }

    fn ids(hits: &[Hit]) -> Vec<&str> {
        hits.iter().map(|h| h.item.id.as_str()).collect()
    }

    #[test]
    fn a_colour_named_keeps_the_look_and_changes_the_colour() {
        // The photo: the blue tote. Its blue twin looks most alike; the red tote is the same
        // shape in red; the red scarf is red but looks nothing like it.
        let pool = vec![hit("blue-tote", 0.95, [0, 0, 255], "Tote", "10"), hit("red-tote", 0.80, [220, 20, 20], "Tote", "12"), hit("red-scarf", 0.40, [220, 20, 20], "Scarf", "5")];
        let wants = crate::words::read("like this but in red");
        let photo = vec![Swatch { lab: colour::lab_from_srgb([0, 0, 255]), share: 1.0 }];
        let set_aside = photo_colour_to_set_aside(&photo, &wants);
        assert!(set_aside.is_some());
        let ranked = rerank(pool.clone(), &wants, set_aside, weights(), false, |_| 0);
        assert_eq!(ids(&ranked), ["red-tote", "red-scarf", "blue-tote"]);
        assert!(ranked[0].refined.as_ref().unwrap().colour > 0.6, "{:?}", ranked[0].refined);
        assert!(photo_colour_to_set_aside(&photo, &crate::words::read("like this in navy blue")).is_none(), "blue asked, blue photo: nothing set aside");
        assert_eq!(rerank(pool.clone(), &crate::words::read("like this"), None, weights(), false, |_| 0), pool, "no words: the pool as it was");
    }

    #[test]
    fn attributes_and_price_order() {
        let pool = vec![hit("a", 0.9, [0, 0, 0], "Tote", "30"), hit("b", 0.85, [0, 0, 0], "Canvas tote", "$12"), hit("c", 0.5, [0, 0, 0], "Bag", "20")];
        let ranked = rerank(pool.clone(), &crate::words::read("a canvas bag"), None, weights(), false, |_| 0);
        assert_eq!(ids(&ranked), ["b", "a", "c"]);
        assert_eq!(ranked[0].refined.as_ref().unwrap().mentions, ["canvas"]);
        assert_eq!(ids(&rerank(pool.clone(), &crate::words::read("cheapest first"), None, weights(), false, |_| 0)), ["b", "c", "a"]);
        assert_eq!(ids(&rerank(pool, &crate::words::read("most expensive"), None, weights(), false, |_| 0)), ["a", "c", "b"]);
    }

    #[test]
    fn a_category_searched_first_keeps_its_hits_first() {
        let mut coat = hit("coat", 0.5, [220, 20, 20], "Coat", "10");
        coat.item.category = "coat".into();
        let pool = vec![hit("bag", 0.9, [0, 0, 255], "Bag", "10"), coat];
        let wants = crate::words::read("in red");
        let first = |category: &str| usize::from(category != "bag");
        assert_eq!(ids(&rerank(pool.clone(), &wants, None, weights(), false, first)), ["bag", "coat"]);
        assert_eq!(ids(&rerank(pool, &wants, None, weights(), false, |_| 0)), ["coat", "bag"], "ranked together, red wins");
    }

    #[test]
    fn the_reasons_say_what_the_words_did() {
        let wants = crate::words::read("a wooden bed in red under 20, not leather");
        let tally = Tally { items: 212, priced_in: 57, mentions: vec![0, 3] };
        let lines = explain(&wants, &tally, &["bed".to_string()], None, 100);
        assert_eq!(
            lines,
            [
                "colour 'red' from the sentence: ranked by colour closeness, measured from the pictures",
                "'wooden': no item's text mentions it",
                "not 'leather': 3 of 212 bed items mention it; those rank lower",
                "price under 20: 57 of 212 bed items qualify",
            ]
        );
    }
}
