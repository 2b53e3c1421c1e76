//! What a shopper's sentence asks of the hits besides a category: colours ("in red", "light
//! blue", "not red"), attribute words (materials and patterns: "wooden", "leather", "striped")
//! and price ("under 20", "between 10 and 30 euros", "cheapest first"). One pass over the
//! words, no models: the category is the `text` module's job, the ranking the index's and the
//! search's.

use serde::Serialize;

use crate::colour::{self, Lab};

/// Everything the sentence refines, in the order it said it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Wants {
    pub colours: Vec<ColourWish>,
    pub attributes: Vec<Attribute>,
    pub price: PriceRange,
    pub order: Order,
}

impl Wants {
    /// Whether the sentence asks nothing beyond a category: the search is then exactly the
    /// photo's (or the words') similarity, as before words were read.
    pub fn is_empty(&self) -> bool {
        self.colours.is_empty() && self.attributes.is_empty() && self.price.is_open() && self.order == Order::Relevance
    }

    /// The colours wanted (not avoided).
    pub fn wanted_colours(&self) -> impl Iterator<Item = &ColourWish> {
        self.colours.iter().filter(|c| !c.avoid)
    }
}

/// A colour the sentence names, as CIELAB after its modifier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColourWish {
    /// As said, modifier included ("light blue").
    pub name: String,
    pub lab: Lab,
    /// "not red": hits near it go down instead of up.
    pub avoid: bool,
}

/// A material or pattern word and the forms an item's text may use for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attribute {
    /// As said ("wooden").
    pub word: String,
    /// Lower-case words that count as a mention in an item's title, description or tags.
    pub forms: Vec<String>,
    pub avoid: bool,
}

impl Attribute {
    /// Whether `words` (an item's text, split by [`split`]) mention it.
    pub fn mentioned_in(&self, words: &[String]) -> bool {
        mentions(words, &self.forms)
    }
}

/// Whether `words` (an item's text, split by [`split`]) hold any of `forms`: how both index
/// backends and the re-ranking count an attribute's mentions.
pub fn mentions(words: &[String], forms: &[String]) -> bool {
    words.iter().any(|w| forms.contains(w))
}

/// Prices the sentence accepts, both bounds inclusive ("under 20" keeps a 20.00 item, as shop
/// filters do). Items whose price cannot be read never pass a bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PriceRange {
    pub min: Option<f32>,
    pub max: Option<f32>,
}

impl PriceRange {
    pub fn is_open(&self) -> bool {
        self.min.is_none() && self.max.is_none()
    }

    pub fn admits(&self, price: Option<f32>) -> bool {
        if self.is_open() {
            return true;
        }
        price.is_some_and(|p| self.min.is_none_or(|min| p >= min) && self.max.is_none_or(|max| p <= max))
    }

    /// "under 20", "between 10 and 30", "over 40".
    pub fn describe(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("between {} and {}", amount(min), amount(max)),
            (None, Some(max)) => format!("under {}", amount(max)),
            (Some(min), None) => format!("over {}", amount(min)),
            (None, None) => "any price".into(),
        }
    }
}

fn amount(value: f32) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// How hits are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// By similarity (the photo's, the words', or both).
    #[default]
    Relevance,
    Cheapest,
    Dearest,
}

/// Materials and patterns shoppers ask for: the word said, and the forms an item's text may
/// use. A word is looked up among every form.
const ATTRIBUTES: &[&[&str]] = &[
    &["wood", "wooden", "woody"],
    &["leather", "leathers"],
    &["canvas"],
    &["striped", "stripe", "stripes", "stripy"],
    &["denim", "jean", "jeans"],
    &["wool", "woollen", "woolen", "woolly", "wooly", "merino"],
    &["cotton"],
    &["linen"],
    &["silk", "silky", "silken"],
    &["velvet", "velvety"],
    &["suede"],
    &["corduroy", "cord"],
    &["fleece"],
    &["knit", "knitted", "knitwear"],
    &["floral", "flower", "flowers", "flowery"],
    &["plaid", "tartan", "checked", "check", "gingham"],
    &["mesh"],
    &["rubber"],
    &["satin"],
    &["lace", "lacy"],
    &["metal", "metallic"],
    &["glass"],
    &["plastic"],
    &["rattan", "wicker"],
    &["marble"],
    &["ceramic"],
    &["bamboo"],
    &["oak"],
    &["walnut"],
    &["steel"],
    &["brass"],
    &["nylon"],
    &["polka", "dotted", "dots", "spotted"],
    &["sequin", "sequins", "sequined"],
    &["fur", "furry", "faux"],
    &["cashmere"],
    &["tweed"],
    &["chiffon"],
    &["waterproof", "rainproof"],
];

/// Words that turn the next few into what the shopper does not want.
const NEGATIONS: [&str; 6] = ["not", "no", "without", "except", "isn't", "nothing"];
/// How many words after a negation it reaches ("not in dark red": three).
const NEGATION_REACH: usize = 3;

/// Lower-case words and numbers, split on anything else; "$15" gives "$" and "15", "1,299.50"
/// stays one number, "isn't" one word.
pub fn split(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inside_number = (c == '.' || c == ',') && word.chars().last().is_some_and(|p| p.is_ascii_digit()) && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c.is_alphanumeric() || inside_number || (c == '\'' && !word.is_empty()) {
            word.extend(c.to_lowercase());
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word).trim_end_matches('\'').to_string());
        }
        if matches!(c, '$' | '€' | '£' | '¥') {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word.trim_end_matches('\'').to_string());
    }
    out
}

/// Reads what `sentence` asks beyond a category.
pub fn read(sentence: &str) -> Wants {
    let words = split(sentence);
    let mut wants = Wants::default();
    let negated = |at: usize| (at.saturating_sub(NEGATION_REACH)..at).any(|i| NEGATIONS.contains(&words[i].as_str()));
    for (at, word) in words.iter().enumerate() {
        if let Some(named) = colour::named(word) {
            let modifier = at.checked_sub(1).map(|i| words[i].as_str());
            let (name, lab) = match modifier {
                Some("light" | "pale" | "pastel") => (format!("light {}", named.name), colour::lighter(named.lab)),
                Some("dark" | "deep") => (format!("dark {}", named.name), colour::darker(named.lab)),
                _ => (named.name.to_string(), named.lab),
            };
            if !wants.colours.iter().any(|c| c.name == name) {
                wants.colours.push(ColourWish { name, lab, avoid: negated(at) });
            }
        } else if let Some(forms) = ATTRIBUTES.iter().find(|forms| forms.contains(&word.as_str())) {
            if !wants.attributes.iter().any(|a| a.forms[0] == forms[0]) {
                wants.attributes.push(Attribute { word: word.clone(), forms: forms.iter().map(|f| f.to_string()).collect(), avoid: negated(at) });
            }
        }
    }
    wants.price = price_range(&words);
    wants.order = order(&words);
    wants
}

/// Words of a request that say nothing about the item: the full-text query leaves them out, so
/// "do you have red canvas totes under $20?" searches "red canvas totes".
const FILLERS: &str = "a an the any anything some something do does you have got has i i'm im me my we want need looking look for find show please like this that \
    these those one ones it is are in of with and or but to same similar sort by not no without except isn't would could can get buy shop store there what which \
    where how other another else";

/// The words of `sentence` a full-text engine should search: lower-case letters and digits,
/// numbers, currency and request fillers left out.
pub fn terms(sentence: &str) -> Vec<String> {
    let words = split(sentence);
    let pricing = price_phrase(&words);
    let mut out: Vec<String> =
        words.into_iter().zip(pricing).filter(|(w, pricing)| !pricing && w.chars().any(char::is_alphabetic) && w.chars().all(char::is_alphanumeric) && !listed(FILLERS, w)).map(|(w, _)| w).collect();
    out.dedup();
    out
}

/// Which of `words` belong to a price phrase: numbers, currency, and price words next to a
/// number or to "first" / "expensive" ("under $20", "cheapest ... first"); "high heels" and
/// "over the knee" keep their words.
fn price_phrase(words: &[String]) -> Vec<bool> {
    let price_at: Vec<bool> = (0..words.len()).map(|i| number_after(words, i).is_some() || matches!(words[i].as_str(), "$" | "€" | "£" | "¥")).collect();
    let near = |at: usize| (at.saturating_sub(2)..words.len().min(at + 3)).any(|j| price_at[j] || words[j] == "first" || words[j] == "expensive");
    let sorted = |word: &str| matches!(word, "cheapest" | "priciest" | "dearest");
    (0..words.len()).map(|at| price_at[at] || (listed(PRICE_WORDS, &words[at]) && (near(at) || sorted(&words[at])))).collect()
}

/// Words about price alone: the category reader never sees them.
const PRICE_WORDS: &str = "under below beneath over above less more than between up to at most least max maximum cheaper cheapest first price priced \
    dollars dollar euros euro pounds usd eur gbp expensive priciest dearest lowest highest low high and from";

/// Whether `word` is one of the space-separated `list`.
fn listed(list: &str, word: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

/// The sentence as the category reader should read it: colours (with their modifiers and a
/// "not" before them) and price phrases taken out, so "like this but in maroon" names no
/// category instead of the one whose description is nearest "maroon", and "a bag under $20"
/// reads "a bag".
pub fn for_category(sentence: &str) -> String {
    let words = split(sentence);
    let price_at = price_phrase(&words);
    let mut kept: Vec<&str> = Vec::new();
    for (at, word) in words.iter().enumerate() {
        let colour = colour::named(word).is_some();
        let modifier = matches!(word.as_str(), "light" | "dark" | "pale" | "pastel" | "deep") && words.get(at + 1).is_some_and(|next| colour::named(next).is_some());
        let negation = NEGATIONS.contains(&word.as_str()) && words.get(at + 1).is_some_and(|next| colour::named(next).is_some());
        if !(colour || modifier || negation || price_at[at] || word.chars().all(|c| c.is_ascii_digit() || c == '.' || c == ',')) {
            kept.push(word);
        }
    }
    kept.join(" ")
}

/// The number at `words[at]`, if it is one (a currency sign before or a currency word after
/// changes nothing: one shop, one currency).
fn number(words: &[String], at: usize) -> Option<f32> {
    let word = words.get(at)?;
    let word = word.strip_prefix(['$', '€', '£']).unwrap_or(word);
    word.chars().next().filter(char::is_ascii_digit)?;
    crate::catalogue::parse_price(word).map(|p| p as f32)
}

/// The first number at `at` or right after a currency sign there.
fn number_after(words: &[String], at: usize) -> Option<f32> {
    number(words, at).or_else(|| matches!(words.get(at).map(String::as_str), Some("$" | "€" | "£" | "¥")).then(|| number(words, at + 1)).flatten())
}

fn price_range(words: &[String]) -> PriceRange {
    let mut range = PriceRange::default();
    let at = |i: usize| words.get(i).map(String::as_str);
    for i in 0..words.len() {
        match (at(i), at(i + 1)) {
            (Some("under" | "below" | "beneath"), _) | (Some("max" | "maximum"), _) => range.max = number_after(words, i + 1).or(range.max),
            (Some("less" | "cheaper" | "lower"), Some("than")) => range.max = number_after(words, i + 2).or(range.max),
            (Some("up" | "at"), Some("to" | "most")) => range.max = number_after(words, i + 2).or(range.max),
            (Some("over" | "above"), _) => range.min = number_after(words, i + 1).or(range.min),
            (Some("more" | "higher" | "dearer"), Some("than")) => range.min = number_after(words, i + 2).or(range.min),
            (Some("at"), Some("least")) => range.min = number_after(words, i + 2).or(range.min),
            (Some("between" | "from"), _) => {
                let low = number_after(words, i + 1);
                let and = (i + 2..i + 4).find(|&j| matches!(at(j), Some("and" | "to")));
                if let (Some(low), Some(and)) = (low, and) {
                    if let Some(high) = number_after(words, and + 1) {
                        range = PriceRange { min: Some(low.min(high)), max: Some(low.max(high)) };
                    }
                }
            }
            _ => {}
        }
    }
    range
}

fn order(words: &[String]) -> Order {
    let joined = format!(" {} ", words.join(" "));
    let said = |phrases: &[&str]| phrases.iter().any(|p| joined.contains(&format!(" {p} ")));
    if said(&["cheapest", "lowest price", "least expensive", "low to high", "cheapest first"]) {
        Order::Cheapest
    } else if said(&["most expensive", "priciest", "dearest", "highest price", "high to low"]) {
        Order::Dearest
    } else {
        Order::Relevance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_phrases() {
        let table: [(&str, Option<f32>, Option<f32>); 14] = [
            ("a bag under $20", None, Some(20.0)),
            ("less than $15 please", None, Some(15.0)),
            ("below 30 euros", None, Some(30.0)),
            ("something under 1,200", None, Some(1200.0)),
            ("between 10 and 30", Some(10.0), Some(30.0)),
            ("between $30 and $10", Some(10.0), Some(30.0)),
            ("from 15 to 25.50", Some(15.0), Some(25.5)),
            ("over 40", Some(40.0), None),
            ("more than €40", Some(40.0), None),
            ("at least 12", Some(12.0), None),
            ("up to 99.99", None, Some(99.99)),
            ("over 10 but under 20", Some(10.0), Some(20.0)),
            ("a coat like this", None, None),
            ("under the bed", None, None),
        ];
        for (sentence, min, max) in table {
            assert_eq!(read(sentence).price, PriceRange { min, max }, "{sentence}");
        }
        let range = read("between 10 and 30").price;
        assert!(range.admits(Some(10.0)) && range.admits(Some(30.0)) && !range.admits(Some(30.5)) && !range.admits(None));
        assert!(PriceRange::default().admits(None), "no bound: unpriced items stay");
        assert_eq!(range.describe(), "between 10 and 30");
    }

    #[test]
    fn orders() {
        for (sentence, order) in
            [("cheapest sneakers first", Order::Cheapest), ("sort by price, low to high", Order::Cheapest), ("the most expensive coats", Order::Dearest), ("a cheap coat", Order::Relevance)]
        {
            assert_eq!(read(sentence).order, order, "{sentence}");
        }
    }

    #[test]
    fn colours_with_modifiers_and_negation() {
        let wants = read("like this but in light blue, not red");
        let named: Vec<(&str, bool)> = wants.colours.iter().map(|c| (c.name.as_str(), c.avoid)).collect();
        assert_eq!(named, [("light blue", false), ("red", true)]);
        let blue = colour::named("blue").unwrap().lab;
        assert!(wants.colours[0].lab.l > blue.l, "light moves L up");
        assert_eq!(read("dark green please").colours[0].name, "dark green");
        assert_eq!(read("in navy or beige, maybe burgundy").colours.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["navy", "beige", "burgundy"]);
        assert!(read("a bed like this").colours.is_empty());
        assert!(read("a bed like this").is_empty());
    }

    #[test]
    fn attributes() {
        let wants = read("a bed like this, but wooden and not leather");
        let said: Vec<(&str, bool)> = wants.attributes.iter().map(|a| (a.word.as_str(), a.avoid)).collect();
        assert_eq!(said, [("wooden", false), ("leather", true)]);
        let text = split("Oak frame in solid wood");
        assert!(wants.attributes[0].mentioned_in(&text));
        assert!(!wants.attributes[1].mentioned_in(&text));
        assert_eq!(read("red canvas totes").attributes[0].forms, ["canvas"]);
    }

    #[test]
    fn the_category_reader_sees_neither_colours_nor_prices() {
        for (sentence, read) in [
            ("like this but in maroon", "like this but in"),
            ("a bag under $20", "a bag"),
            ("not red, a coat like this", "a coat like this"),
            ("light blue sneakers between 10 and 30 euros", "sneakers"),
            ("cheapest sneakers first", "sneakers"),
            ("a wooden bed", "a wooden bed"),
        ] {
            assert_eq!(for_category(sentence), read, "{sentence}");
        }
    }

    #[test]
    fn terms_leave_out_requests_and_prices() {
        assert_eq!(terms("Do you have red canvas totes under $20?"), ["red", "canvas", "totes"]);
        assert_eq!(terms("like this but in navy"), ["navy"]);
        assert!(terms("cheapest first please").is_empty());
        assert_eq!(terms("high heels, over the knee, under 30"), ["high", "heels", "over", "knee"], "price words away from a price stay");
        assert_eq!(split("in 'navy'"), ["in", "navy"]);
    }

    /// Sentences drawn from a soup of words, numbers, currency signs, punctuation and non-ASCII
    /// text: reading never panics, a price range read is ordered, full-text terms are letters
    /// and digits the sentence said, and the category reader sees words of the sentence, in order.
    #[test]
    fn any_sentence_reads_and_keeps_the_invariants() {
        let soup = [
            "under",
            "between",
            "and",
            "over",
            "$",
            "€",
            "20",
            "1,299.50",
            "3.5",
            "99999999999999999999999",
            "red",
            "light",
            "dark",
            "not",
            "navy",
            "wooden",
            "leather",
            "cheapest",
            "first",
            "most",
            "expensive",
            "bag",
            "'",
            ",",
            "-",
            "ü",
            "日本",
            "isn't",
            "",
            "less",
            "than",
            "from",
            "to",
            ".",
            "0",
            "1.",
            ",5",
        ];
        let mut rng = crate::rng::Rng::new(31);
        for _ in 0..5000 {
            let count = rng.below(12) as usize;
            let glue = if rng.below(3) == 0 { "" } else { " " };
            let sentence = (0..count).map(|_| soup[rng.below(soup.len() as u64) as usize]).collect::<Vec<_>>().join(glue);
            let wants = read(&sentence);
            if let (Some(min), Some(max)) = (wants.price.min, wants.price.max) {
                assert!(min <= max, "{sentence:?}: {:?}", wants.price);
            }
            let said = split(&sentence);
            for term in terms(&sentence) {
                assert!(term.chars().all(char::is_alphanumeric) && said.contains(&term), "{sentence:?}: {term:?}");
            }
            let mut rest = said.iter();
            assert!(for_category(&sentence).split_whitespace().all(|kept| rest.any(|w| w == kept)), "{sentence:?}");
        }
    }

    #[test]
    fn splitting_keeps_numbers_and_currency_signs() {
        assert_eq!(split("Under $1,299.50, isn't it?"), ["under", "$", "1,299.50", "isn't", "it"]);
        assert_eq!(split("T-shirt 2.0"), ["t", "shirt", "2.0"]);
    }
}
