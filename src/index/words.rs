//! What both backends share to answer words: the query, the fusion of the full-text and
//! sentence-vector rankings, and the counts an answer explains itself with.

use serde::Serialize;

use super::{Hit, Item, Page, Scope, SearchMethod};

/// Words to search the items' own text with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WordsQuery {
    /// Lower-case words for the full-text engine (any of them may match; more matches rank
    /// higher).
    pub terms: Vec<String>,
    /// The sentence's MiniLM vector; empty when no sentence model is loaded (full text alone).
    pub vector: Vec<f32>,
    /// The sentence's clip vector, compared with the items' picture vectors when they are the
    /// clip embedder's (true text-to-image search); empty otherwise.
    pub pictures: Vec<f32>,
}

/// How many items of the searched categories there are, and how many a sentence's words keep.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    pub items: usize,
    /// Items the price range admits (all of them when it is open).
    pub priced_in: usize,
    /// Per attribute asked, items whose text mentions it.
    pub mentions: Vec<usize>,
}

/// The terms of a hit's score once the sentence's words re-ranked it: score = similarity +
/// colour weight x colour + attribute weight x (mentions wanted - mentions ruled out).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refined {
    /// The score before the words: the picture's similarity (cosine plus its category's
    /// bonus), or for words alone the fused rank score over the best one's.
    pub similarity: f32,
    /// Closeness to the colours named minus closeness to the photo's own colour (and to
    /// colours ruled out), from the colours measured in the item's picture.
    pub colour: f32,
    /// Attributes named that the item's text mentions ("not leather" ones prefixed "not ").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
}

/// The reciprocal-rank constant: 60, as Cormack, Clarke and Büttcher (2009) found robust. A
/// candidate's fused score is the sum over the rankings it appears in of 1 / (60 + its rank).
pub const RRF_K: f32 = 60.0;

/// Candidates each ranking contributes before fusion, at least: fusion needs overlap, so the
/// lists go deeper than a page, and every page within the first hundred hits is cut from the
/// same fused ranking (the lists do not change from page to page).
pub const DEPTH_MIN: usize = 100;

/// Candidates each ranking contributes for a page ending at `wanted` hits.
pub fn depth(wanted: usize) -> usize {
    DEPTH_MIN.max(wanted)
}

/// Deepest a ranking goes when variants folded into their products leave a page short.
const DEPTH_MAX: usize = 100_000;

/// [`fuse`] over the rankings `rankings(depth)` gives (full text, sentence vectors, and with the
/// clip embedder the pictures), deepened four times over while the page is short and a ranking
/// was cut at its depth: folding a product's variants into one hit leaves fewer hits than
/// candidates.
pub fn fuse_deepening(mut rankings: impl FnMut(usize) -> Result<Vec<Vec<Ranked>>, super::IndexError>, scopes: &[Scope], params: &super::SearchParams) -> Result<Page, super::IndexError> {
    let (offset, k) = (params.offset, params.k);
    let mut depth = depth(offset + k + 1);
    loop {
        let lists = rankings(depth)?;
        let cut = lists.iter().any(|list| list.len() >= depth);
        let page = fuse(lists, scopes, offset, k, params.variants_apart);
        if page.more || !cut || depth >= DEPTH_MAX {
            return Ok(page);
        }
        depth *= 4;
    }
}

/// The pictures' ranking for words alone: the sentence's clip vector searched as a photo's is
/// (`search`, over generations of `dim`-wide vectors), `depth` hits deep, variants apart (the
/// fusion folds them), whatever their similarity (`index.min_similarity` is a photo's bar; a
/// sentence's cosine with a picture is on another scale, and only ranks count here). Empty when the query has no clip vector or the generation's vectors are
/// not the clip embedder's.
pub fn picture_ranking(
    search: impl FnOnce(&[f32], &super::SearchParams) -> Result<Page, super::IndexError>,
    query: &WordsQuery,
    dim: usize,
    scopes: &[Scope],
    params: &super::SearchParams,
    depth: usize,
) -> Result<Vec<Ranked>, super::IndexError> {
    if query.pictures.is_empty() || query.pictures.len() != dim {
        return Ok(Vec::new());
    }
    let deep = super::SearchParams { k: depth, offset: 0, variants_apart: true, min_similarity: -2.0, ..*params };
    let page = search(&query.pictures, &deep)?;
    Ok(page.hits.into_iter().filter_map(|hit| Some(Ranked { scope: scopes.iter().position(|s| s.category == hit.item.category)?, item: hit.item, text: None })).collect())
}

/// One ranking's candidate: the item, its scope's position in the query's scopes, and (for the
/// sentence-vector ranking) its text's cosine and distance to the sentence.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub item: Item,
    pub scope: usize,
    pub text: Option<(f32, f32)>,
}

/// Fuses the rankings (full text, sentence vectors, pictures; each best first) by reciprocal
/// rank (plus the candidate's scope's bonus, once), orders by (scope rank, fused score, id) and
/// cuts the page. Candidates are the same item when their ids are.
pub fn fuse(lists: Vec<Vec<Ranked>>, scopes: &[Scope], offset: usize, k: usize, variants_apart: bool) -> Page {
    let mut fused: Vec<(Ranked, f32)> = Vec::new();
    let mut slot_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for list in lists {
        for (position, candidate) in list.into_iter().enumerate() {
            let score = 1.0 / (RRF_K + position as f32 + 1.0);
            match slot_of.get(&candidate.item.id) {
                Some(&slot) => {
                    let (seen, total) = &mut fused[slot];
                    *total += score;
                    seen.text = seen.text.or(candidate.text);
                }
                None => {
                    slot_of.insert(candidate.item.id.clone(), fused.len());
                    let bonus = scopes[candidate.scope].bonus;
                    fused.push((candidate, score + bonus));
                }
            }
        }
    }
    fused.sort_by(|(a, x), (b, y)| scopes[a.scope].rank.cmp(&scopes[b.scope].rank).then(y.total_cmp(x)).then_with(|| a.item.id.cmp(&b.item.id)));
    let mut hits: Vec<Hit> = Vec::new();
    for (candidate, score) in fused {
        if variants_apart || !hits.iter_mut().any(|hit| hit.fold_variant(&candidate.item)) {
            let (cosine, euclidean) = candidate.text.unwrap_or((0.0, 0.0));
            hits.push(Hit::new(candidate.item, cosine, euclidean, score));
        }
    }
    let more = hits.len() > offset + k;
    Page { hits: hits.into_iter().skip(offset).take(k).collect(), more, method: SearchMethod::Words }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(id: &str, scope: usize) -> Ranked {
        Ranked { item: Item::bare(id.into(), "bag"), scope, text: None }
    }

    #[test]
    fn an_item_both_rankings_find_beats_the_top_of_either_alone() {
        let scopes = [Scope { category: "bag".into(), rank: 0, bonus: 0.0 }];
        let full_text = vec![ranked("a", 0), ranked("both", 0)];
        let semantic = vec![ranked("b", 0), ranked("both", 0)];
        let page = fuse(vec![full_text, semantic], &scopes, 0, 2, false);
        assert_eq!(page.hits.iter().map(|h| h.item.id.as_str()).collect::<Vec<_>>(), ["both", "a"], "ties (a, b) go by id");
        assert!((page.hits[0].score - 2.0 / 62.0).abs() < 1e-6);
        assert!(page.more);
        let second = fuse(vec![vec![ranked("a", 0), ranked("both", 0)], vec![ranked("b", 0), ranked("both", 0)]], &scopes, 2, 2, false);
        assert_eq!(second.hits.iter().map(|h| h.item.id.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(!second.more);
    }

    #[test]
    fn scopes_of_a_lower_rank_come_first() {
        let scopes = [Scope { category: "bag".into(), rank: 0, bonus: 0.0 }, Scope { category: "coat".into(), rank: 1, bonus: 0.0 }];
        let page = fuse(vec![vec![ranked("coat-best", 1), ranked("bag-second", 0)], Vec::new()], &scopes, 0, 5, false);
        assert_eq!(page.hits.iter().map(|h| h.item.id.as_str()).collect::<Vec<_>>(), ["bag-second", "coat-best"]);
    }
}
