//! Fusing the image vote and the sentence's intent into the categories to search, in order,
//! with reasons a person can read. Pure code: no torch, no Discord.
//!
//! The rules, in the order they apply:
//! 1. The image vote is the majority of the backbones' top-1 labels; a tie goes to the label
//!    with the highest mean probability across backbones.
//! 2. Categories the sentence rules out ("not a dress") are never searched.
//! 3. A category the sentence names is searched first ("text wins", the chapter's fallback for
//!    a wrong image vote); the image's choice follows when it differs, as production systems
//!    search the top two when evidence is split.
//! 4. Without a named category, by default (`search.gate = "mass"`) the categories are
//!    searched in the order of the vote's mean probability until they hold
//!    `search.category_mass` of it, and their hits compete on cosine + `category_prior_weight`
//!    x ln p(category): an unsure vote can no longer hide the item. With the chapter's hard gate
//!    (`"hard"`), a clear vote (a majority, mean probability at least [`CONFIDENT`]) searches its
//!    winner alone and a split or unsure vote adds the runner-up, each category in turn.

use serde::Serialize;

use crate::config::{Gate, SearchConfig, TextMethod};
use crate::text::Intent;

/// Mean probability from which a majority vote counts as sure of itself.
pub const CONFIDENT: f32 = 0.5;

/// One backbone's opinion: a probability per category, in [`ImageVote::categories`] order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackboneVote {
    pub backbone: String,
    pub probabilities: Vec<f32>,
}

impl BackboneVote {
    /// The backbone's top-1 category index and its probability.
    pub fn top(&self) -> (usize, f32) {
        self.probabilities.iter().cloned().enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, 0.0))
    }
}

/// The backbones' opinions of a photo; empty for a search by words alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImageVote {
    pub categories: Vec<String>,
    pub backbones: Vec<BackboneVote>,
}

/// The vote's result: every category ranked by (votes, mean probability).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tally {
    /// (category index, top-1 votes, mean probability), best first.
    pub ranking: Vec<(usize, usize, f32)>,
    pub voters: usize,
}

impl Tally {
    pub fn winner(&self) -> (usize, usize, f32) {
        self.ranking[0]
    }

    pub fn has_majority(&self) -> bool {
        self.ranking[0].1 * 2 > self.voters
    }
}

impl ImageVote {
    /// Each backbone's pick: (backbone, its top category, that category's probability).
    pub fn picks(&self) -> impl Iterator<Item = (&str, &str, f32)> {
        self.backbones.iter().map(|b| {
            let (top, probability) = b.top();
            (b.backbone.as_str(), self.categories.get(top).map_or("?", String::as_str), probability)
        })
    }

    pub fn tally(&self) -> Tally {
        let count = self.categories.len();
        let mut votes = vec![0usize; count];
        let mut mean = vec![0f32; count];
        for backbone in &self.backbones {
            votes[backbone.top().0] += 1;
            for (index, probability) in backbone.probabilities.iter().enumerate().take(count) {
                mean[index] += probability / self.backbones.len().max(1) as f32;
            }
        }
        let mut ranking: Vec<(usize, usize, f32)> = (0..count).map(|i| (i, votes[i], mean[i])).collect();
        ranking.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.total_cmp(&a.2)));
        Tally { ranking, voters: self.backbones.len() }
    }
}

/// The categories to search, best first, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub categories: Vec<String>,
    pub reasons: Vec<String>,
    /// Per category, the bonus its hits get: `weight x ln p(category)` when the categories'
    /// hits compete (`ranked_together`), else none.
    pub bonuses: Vec<f32>,
    /// Whether hits of all categories are ranked together by score (else category by category).
    pub ranked_together: bool,
}

impl Decision {
    /// The categories given, searched in order: what the "Wrong category?" menu asks for.
    pub fn chosen(categories: Vec<String>, reason: String) -> Decision {
        Decision { bonuses: vec![0.0; categories.len()], categories, reasons: vec![reason], ranked_together: false }
    }
}

/// How the vote chooses categories when the text names none (the `search` section's keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gating {
    pub gate: Gate,
    /// Most categories the hard gate searches (1 to 3).
    pub max_categories: usize,
    /// Share of the vote's probability the mass gate's categories must hold.
    pub mass: f32,
    /// Weight of ln p(category) in a hit's score under the mass gate.
    pub prior_weight: f32,
}

impl Gating {
    pub fn from_config(search: &SearchConfig) -> Gating {
        Gating { gate: search.gate, max_categories: search.max_categories, mass: search.category_mass, prior_weight: search.category_prior_weight }
    }
}

/// A category named by meaning alone (not by its words) with a score under this is a guess when
/// there is no photo: words alone then search every category, the guess's first.
pub const WORDS_SURE: f32 = 0.7;
/// What a guessed category's hits add to their fused rank score: as much as a first place in
/// one more ranking (1 / 61).
pub const WORDS_GUESS_BONUS: f32 = 1.0 / 61.0;

/// Words alone (no photo, so no vote): the category the sentence names, else every category of
/// the catalogue but those it rules out, their hits ranked together.
pub fn decide_words(intent: Option<&Intent>, categories: &[String]) -> Decision {
    let negated: Vec<String> = intent.map(|i| i.negated.clone()).unwrap_or_default();
    let named = intent.and_then(|i| i.category.clone().filter(|c| categories.contains(c)).map(|c| (c, i.score, i.decided_by)));
    match named {
        Some((category, score, method)) if method == Some(TextMethod::Lexical) || score >= WORDS_SURE => {
            return Decision::chosen(vec![category.clone()], format!("no photo: text names '{category}' ({score:.2})"));
        }
        Some((category, score, _)) => {
            // A guess by meaning alone: its category's items first, the others still in reach.
            let mut kept = vec![category.clone()];
            kept.extend(categories.iter().filter(|c| **c != category && !negated.contains(c)).cloned());
            let mut bonuses = vec![0.0; kept.len()];
            bonuses[0] = WORDS_GUESS_BONUS;
            let reason = format!("no photo: text suggests '{category}' ({score:.2}, by meaning): its items ranked first, every category searched");
            return Decision { categories: kept, reasons: vec![reason], bonuses, ranked_together: true };
        }
        None => {}
    }
    let kept: Vec<String> = categories.iter().filter(|c| !negated.contains(c)).cloned().collect();
    let mut reasons = vec!["no photo and no category named: searching every category by the words".to_string()];
    if !negated.is_empty() {
        reasons.push(format!("text rules out {}", quoted(&negated)));
    }
    Decision { bonuses: vec![0.0; kept.len()], categories: kept, reasons, ranked_together: true }
}

/// Applies the rules in the module documentation.
pub fn decide(vote: &ImageVote, intent: Option<&Intent>, gating: &Gating) -> Decision {
    let max_categories = gating.max_categories;
    let tally = vote.tally();
    let name = |index: usize| vote.categories[index].clone();
    let negated: Vec<String> = intent.map(|i| i.negated.clone()).unwrap_or_default();
    let allowed: Vec<(usize, usize, f32)> = tally.ranking.iter().cloned().filter(|(i, _, _)| !negated.contains(&name(*i))).collect();
    let mut reasons = vec![describe_vote(vote, &tally)];
    if !negated.is_empty() {
        reasons.push(format!("text rules out {}", quoted(&negated)));
    }
    let mut categories: Vec<String> = Vec::new();
    let named = intent.and_then(|i| i.category.clone().map(|c| (c, i.score)));
    let image_choice = allowed.first().map(|(i, _, _)| name(*i));
    if tally.winner().0 != allowed.first().map_or(usize::MAX, |a| a.0) {
        if let Some(choice) = &image_choice {
            reasons.push(format!("next most probable image category: '{choice}'"));
        }
    }
    match named {
        Some((category, score)) => {
            match &image_choice {
                Some(choice) if *choice == category => {
                    reasons.push(format!("text names '{category}' ({score:.2}) and the image agrees"));
                }
                Some(choice) => {
                    reasons.push(format!("text names '{category}' ({score:.2}); image says '{choice}'; text wins, image's choice searched second"));
                }
                None => reasons.push(format!("text names '{category}' ({score:.2})")),
            }
            categories.push(category);
            categories.extend(image_choice);
        }
        None if gating.gate == Gate::Mass => {
            let mut by_probability = allowed.clone();
            by_probability.sort_by(|a, b| b.2.total_cmp(&a.2));
            let (mut held, mut bonuses) = (0.0f32, Vec::new());
            for (index, _, mean) in by_probability {
                categories.push(name(index));
                bonuses.push(gating.prior_weight * mean.max(1e-6).ln());
                held += mean;
                // A mass of 1 means every category, even where the vote's sum rounds to 1 early.
                if held >= gating.mass && gating.mass < 1.0 {
                    break;
                }
            }
            reasons.push(if categories.len() == 1 {
                "no category named in text; the image vote decides".to_string()
            } else {
                format!(
                    "no category named in text; searching the {} most probable categories ({:.0} % of the vote), hits ranked by cosine + {} x ln p(category)",
                    categories.len(),
                    100.0 * held,
                    gating.prior_weight
                )
            });
            return Decision { categories, reasons, bonuses, ranked_together: true };
        }
        None => {
            let sure = tally.has_majority() && allowed.first().is_some_and(|a| a.2 >= CONFIDENT) && allowed.first().map(|a| a.0) == Some(tally.winner().0);
            categories.extend(image_choice);
            if sure {
                reasons.push("no category named in text; the image vote decides".to_string());
            } else if let Some((runner_up, _, _)) = allowed.get(1) {
                reasons.push(format!("the image vote is split or unsure; also searching '{}'", name(*runner_up)));
                categories.push(name(*runner_up));
            }
        }
    }
    categories.dedup();
    let mut seen = Vec::new();
    categories.retain(|c| {
        !seen.contains(c) && {
            seen.push(c.clone());
            true
        }
    });
    categories.truncate(max_categories.max(1));
    Decision { bonuses: vec![0.0; categories.len()], categories, reasons, ranked_together: false }
}

fn describe_vote(vote: &ImageVote, tally: &Tally) -> String {
    let (winner, votes, mean) = tally.winner();
    let each: Vec<String> = vote.picks().map(|(backbone, category, probability)| format!("{backbone} {category} {probability:.2}")).collect();
    format!("image vote '{}' {} of {} (mean {:.2}): {}", vote.categories[winner], votes, tally.voters, mean, each.join(", "))
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TextMethod;

    const CATEGORIES: [&str; 4] = ["sandal", "sneaker", "dress", "coat"];

    /// Each backbone as (top category, its probability); the rest is spread evenly.
    fn vote(tops: &[(&str, f32)]) -> ImageVote {
        let backbones = tops
            .iter()
            .enumerate()
            .map(|(n, (top, p))| {
                let rest = (1.0 - p) / (CATEGORIES.len() - 1) as f32;
                let probabilities = CATEGORIES.iter().map(|c| if c == top { *p } else { rest }).collect();
                BackboneVote { backbone: format!("net{n}"), probabilities }
            })
            .collect();
        ImageVote { categories: CATEGORIES.iter().map(|c| c.to_string()).collect(), backbones }
    }

    fn hard(max_categories: usize) -> Gating {
        Gating { gate: Gate::Hard, max_categories, mass: 0.9, prior_weight: 0.1 }
    }

    #[test]
    fn the_mass_gate_searches_until_the_vote_is_covered_and_ranks_with_a_prior() {
        let mass = Gating { gate: Gate::Mass, max_categories: 2, mass: 0.9, prior_weight: 0.1 };
        struct Case {
            tops: &'static [(&'static str, f32)],
            named: Option<&'static str>,
            negated: &'static [&'static str],
            expected: &'static [&'static str],
        }
        let split = &[("sandal", 0.6), ("sandal", 0.5), ("sneaker", 0.7)];
        let cases = [
            Case { tops: &[("sandal", 0.97), ("sandal", 0.97), ("sandal", 0.97)], named: None, negated: &[], expected: &["sandal"] },
            Case { tops: split, named: None, negated: &[], expected: &["sandal", "sneaker", "dress", "coat"] },
            Case { tops: split, named: Some("coat"), negated: &[], expected: &["coat", "sandal"] },
            Case { tops: split, named: None, negated: &["sandal"], expected: &["sneaker", "dress", "coat"] },
        ];
        for (number, case) in cases.iter().enumerate() {
            let decision = decide(&vote(case.tops), Some(&intent(case.named, case.negated)), &mass);
            assert_eq!(decision.categories, case.expected, "case {number}: {:?}", decision.reasons);
            assert_eq!(decision.bonuses.len(), decision.categories.len());
        }
        let decision = decide(&vote(&[("sandal", 0.6), ("sandal", 0.5), ("sneaker", 0.7)]), None, &mass);
        assert!(decision.ranked_together && decision.reasons.iter().any(|r| r.contains("ranked by cosine + 0.1 x ln p")), "{:?}", decision.reasons);
        assert!(decision.bonuses.windows(2).all(|w| w[0] >= w[1]), "more probable categories get the larger bonus: {:?}", decision.bonuses);
        let sure = &[("sandal", 1.0), ("sandal", 1.0), ("sandal", 1.0)];
        let every = decide(&vote(sure), None, &Gating { mass: 1.0, ..mass });
        assert_eq!(every.categories, ["sandal", "sneaker", "dress", "coat"], "mass 1 searches every category, however sure the vote");
        let named = decide(&vote(&[("sandal", 0.6), ("sandal", 0.5), ("sneaker", 0.7)]), Some(&intent(Some("coat"), &[])), &mass);
        assert!(!named.ranked_together, "a category the shopper names is searched first, as before");
    }

    #[test]
    fn words_alone_search_the_category_named_else_every_one_not_ruled_out() {
        let all: Vec<String> = CATEGORIES.iter().map(|c| c.to_string()).collect();
        let table: [(Option<Intent>, &[&str], bool); 4] = [
            (Some(intent(Some("dress"), &[])), &["dress"], false),
            (Some(intent(None, &["coat"])), &["sandal", "sneaker", "dress"], true),
            (None, &["sandal", "sneaker", "dress", "coat"], true),
            (Some(intent(Some("hat"), &[])), &["sandal", "sneaker", "dress", "coat"], true),
        ];
        for (intent, searched, together) in table {
            let decision = decide_words(intent.as_ref(), &all);
            assert_eq!(decision.categories, searched, "{intent:?}");
            assert_eq!(decision.ranked_together, together);
            assert_eq!(decision.bonuses.len(), decision.categories.len());
        }
        // A guess by meaning alone: its category first, with a bonus; the others still searched.
        let guess = Intent { decided_by: Some(TextMethod::Embedding), score: 0.55, ..intent(Some("dress"), &["coat"]) };
        let decision = decide_words(Some(&guess), &all);
        assert_eq!(decision.categories, ["dress", "sandal", "sneaker"]);
        assert_eq!(decision.bonuses, [WORDS_GUESS_BONUS, 0.0, 0.0]);
        assert!(decision.ranked_together && decision.reasons[0].contains("suggests 'dress'"), "{:?}", decision.reasons);
        let sure = Intent { score: 0.8, ..guess };
        assert_eq!(decide_words(Some(&sure), &all).categories, ["dress"], "sure enough by meaning: searched alone");
    }

    fn intent(category: Option<&str>, negated: &[&str]) -> Intent {
        Intent { category: category.map(str::to_string), score: 0.91, decided_by: category.map(|_| TextMethod::Lexical), negated: negated.iter().map(|s| s.to_string()).collect(), methods: Vec::new() }
    }

    #[test]
    fn decision_table() {
        struct Case {
            tops: &'static [(&'static str, f32)],
            named: Option<&'static str>,
            negated: &'static [&'static str],
            expected: &'static [&'static str],
            reason: &'static str,
        }
        let cases = [
            Case { tops: &[("sandal", 0.9), ("sandal", 0.8), ("sandal", 0.7)], named: None, negated: &[], expected: &["sandal"], reason: "image vote decides" },
            Case { tops: &[("sandal", 0.9), ("sandal", 0.8), ("sneaker", 0.7)], named: None, negated: &[], expected: &["sandal"], reason: "'sandal' 2 of 3" },
            Case { tops: &[("sandal", 0.9), ("sneaker", 0.8), ("sneaker", 0.7)], named: Some("sneaker"), negated: &[], expected: &["sneaker"], reason: "image agrees" },
            Case { tops: &[("sandal", 0.9), ("sandal", 0.8), ("sneaker", 0.7)], named: Some("sneaker"), negated: &[], expected: &["sneaker", "sandal"], reason: "text wins" },
            Case { tops: &[("sandal", 0.4), ("sneaker", 0.9), ("dress", 0.5)], named: None, negated: &[], expected: &["sneaker", "dress"], reason: "split" },
            Case { tops: &[("dress", 0.9), ("dress", 0.9), ("coat", 0.6)], named: Some("coat"), negated: &["dress"], expected: &["coat"], reason: "rules out 'dress'" },
            Case { tops: &[("dress", 0.9), ("dress", 0.9), ("coat", 0.6)], named: None, negated: &["dress"], expected: &["coat", "sandal"], reason: "next most probable image category: 'coat'" },
            Case { tops: &[("sandal", 0.35), ("sandal", 0.3), ("sneaker", 0.3)], named: None, negated: &[], expected: &["sandal", "sneaker"], reason: "unsure" },
        ];
        for (number, case) in cases.iter().enumerate() {
            let intent = intent(case.named, case.negated);
            let decision = decide(&vote(case.tops), Some(&intent), &hard(2));
            assert_eq!(decision.categories, case.expected, "case {number}: {:?}", decision.reasons);
            assert!(decision.reasons.iter().any(|r| r.contains(case.reason)), "case {number}: {:?}", decision.reasons);
        }
    }

    #[test]
    fn a_tie_goes_to_the_highest_mean_probability() {
        let tally = vote(&[("sandal", 0.5), ("sneaker", 0.9), ("dress", 0.6)]).tally();
        assert_eq!(CATEGORIES[tally.winner().0], "sneaker");
        assert!(!tally.has_majority());
    }

    #[test]
    fn max_categories_caps_the_list() {
        let decision = decide(&vote(&[("sandal", 0.9), ("sandal", 0.8), ("sneaker", 0.7)]), Some(&intent(Some("coat"), &[])), &hard(1));
        assert_eq!(decision.categories, ["coat"]);
    }

    #[test]
    fn reasons_name_each_backbone_vote() {
        let decision = decide(&vote(&[("sandal", 0.9), ("sandal", 0.8), ("sneaker", 0.7)]), None, &hard(2));
        assert!(decision.reasons[0].contains("net0 sandal 0.90") && decision.reasons[0].contains("net2 sneaker 0.70"), "{:?}", decision.reasons);
    }
}
