//! What `lookalike search` and the demo show of a search (the bench times it): its outcome as
//! text, and a contact-sheet row of the query with its hits.

use image::RgbImage;

use crate::imaging::{self, ImageLimits};
use crate::search::SearchOutcome;

/// The outcome as `lookalike search` prints it.
pub fn render(outcome: &SearchOutcome) -> String {
    let mut out = format!("searched: {}\n", outcome.decision.categories.join(", "));
    for reason in &outcome.decision.reasons {
        out.push_str(&format!("  - {reason}\n"));
    }
    for line in &outcome.words {
        out.push_str(&format!("  - words: {line}\n"));
    }
    if outcome.hits.is_empty() {
        out.push_str("no hits: the categories searched are empty, or every item is under index.min_similarity\n");
    }
    for (rank, hit) in outcome.hits.iter().enumerate() {
        let number = outcome.page * outcome.k + rank + 1;
        out.push_str(&format!("{number:>3}. {:<40} cosine {:.3}  euclidean {:.3}", hit.item.id, hit.cosine, hit.euclidean));
        let metadata = &hit.item.metadata;
        for field in [&metadata.title, &metadata.price, &metadata.link].into_iter().flatten() {
            out.push_str(&format!("  {field}"));
        }
        if let Some(refined) = &hit.refined {
            let mentions = if refined.mentions.is_empty() { String::new() } else { format!(", mentions {}", refined.mentions.join(", ")) };
            out.push_str(&format!("  [score {:.3} = similarity {:.3}, colour {:+.2}{mentions}]", hit.score, refined.similarity, refined.colour));
        }
        if !hit.variants.is_empty() {
            out.push_str(&format!("  (one product, in {})", hit.variants.join(", ")));
        } else if !hit.collapsed.is_empty() {
            out.push_str(&format!("  (+{} near-duplicate{})", hit.collapsed.len(), if hit.collapsed.len() == 1 { "" } else { "s" }));
        }
        out.push('\n');
    }
    if outcome.more {
        out.push_str(&format!("more hits on the next page (--page {})\n", outcome.page + 2));
    }
    let t = &outcome.timings;
    out.push_str(&format!(
        "time: decode {:.1} ms, queue {:.1} ms, vision {:.1} ms (batch of {}), text {:.1} ms, search {:.2} ms ({}); total {:.1} ms (index generation {})\n",
        t.decode_ms, t.queue_ms, t.vision_ms, t.batch, t.text_ms, t.search_ms, t.search_method, t.total_ms, outcome.generation
    ));
    out
}

/// A contact-sheet row for `outcome`: the query and its hits, with scores and categories.
pub fn sheet_row(query: RgbImage, label: &str, outcome: &SearchOutcome, limits: ImageLimits) -> crate::plot::SheetRow {
    let hits = outcome
        .hits
        .iter()
        .map(|hit| {
            let image = imaging::load(&hit.item.path, limits).unwrap_or_else(|_| RgbImage::from_pixel(8, 8, image::Rgb([200, 200, 200])));
            let name = hit.item.metadata.title.clone().unwrap_or_else(|| hit.item.id.clone());
            (image, vec![name, format!("{}  cos {:.3}", hit.item.category, hit.cosine)])
        })
        .collect();
    crate::plot::SheetRow { query, caption: vec![label.to_string(), format!("searched: {}", outcome.decision.categories.join(", "))], hits }
}
