//! The embedded index's words: a tantivy full-text index over each item's title, description
//! and tags (BM25, English stemming: "totes" finds "tote"), built in memory from the manifest
//! when a generation is first searched by words, and the items' MiniLM sentence vectors
//! (`text.f32` beside the picture vectors, in row order), scanned exactly.

use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::{doc, IndexReader, TantivyDocument};

use crate::index::rank::dot;
use crate::index::Item;

/// Memory tantivy's writer may buffer before it writes a segment (its minimum is 15 MB).
const WRITER_BUDGET_BYTES: usize = 50_000_000;

/// A generation's full-text index.
pub(super) struct FullText {
    index: tantivy::Index,
    reader: IndexReader,
    words: Field,
}

impl FullText {
    /// One document per row: the item's words, and its row as a fast field.
    pub fn build(items: &[Item]) -> anyhow::Result<FullText> {
        let mut schema = Schema::builder();
        let indexing = TextFieldIndexing::default().set_tokenizer("en_stem").set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let words = schema.add_text_field("words", TextOptions::default().set_indexing_options(indexing));
        let row = schema.add_u64_field("row", FAST);
        let index = tantivy::Index::create_in_ram(schema.build());
        let mut writer = index.writer_with_num_threads::<TantivyDocument>(1, WRITER_BUDGET_BYTES)?;
        for (position, item) in items.iter().enumerate() {
            writer.add_document(doc!(words => item.metadata.words(), row => position as u64))?;
        }
        writer.commit()?;
        let reader = index.reader()?;
        Ok(FullText { index, reader, words })
    }

    /// Rows whose words match any of `terms`, best BM25 first, among those `keep` accepts; at
    /// most `limit`.
    pub fn search(&self, terms: &[String], limit: usize, keep: impl Fn(usize) -> bool) -> anyhow::Result<Vec<(usize, f32)>> {
        // Terms are letters and digits only (see `words::terms`), so no query syntax reaches
        // the parser; it joins them with OR.
        let text: Vec<&str> = terms.iter().map(String::as_str).filter(|t| t.chars().all(char::is_alphanumeric)).collect();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let query = QueryParser::for_index(&self.index, vec![self.words]).parse_query(&text.join(" "))?;
        let searcher = self.reader.searcher();
        let all = searcher.num_docs().max(1) as usize;
        let mut found = Vec::new();
        let mut rows_of = Vec::new();
        for segment in searcher.segment_readers() {
            rows_of.push(segment.fast_fields().u64("row")?);
        }
        for (score, address) in searcher.search(&query, &TopDocs::with_limit(all).order_by_score())? {
            let Some(row) = rows_of[address.segment_ord as usize].first(address.doc_id) else { continue };
            if keep(row as usize) {
                found.push((row as usize, score));
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok(found)
    }
}

/// The items' sentence vectors, row by row (a row of zeros for an item without words).
#[derive(Debug, Default)]
pub(super) struct TextVectors {
    pub dim: usize,
    pub values: Vec<f32>,
    norms: Vec<f32>,
}

impl TextVectors {
    pub fn new(dim: usize, values: Vec<f32>) -> TextVectors {
        let norms = if dim == 0 { Vec::new() } else { values.chunks_exact(dim).map(|row| dot(row, row).sqrt()).collect() };
        TextVectors { dim, values, norms }
    }

    /// Rows `keep` accepts, by cosine to `query` (best first), at most `limit`; rows without
    /// words are never candidates. Each with its cosine and Euclidean distance.
    pub fn search(&self, query: &[f32], limit: usize, keep: impl Fn(usize) -> bool) -> Vec<(usize, f32, f32)> {
        if self.dim == 0 || query.len() != self.dim {
            return Vec::new();
        }
        let query_norm = dot(query, query).sqrt().max(1e-12);
        let mut scored: Vec<(usize, f32, f32)> = self
            .values
            .chunks_exact(self.dim)
            .enumerate()
            .filter(|(row, _)| self.norms[*row] > 0.0 && keep(*row))
            .map(|(row, vector)| {
                let product = dot(vector, query);
                let norm = self.norms[row];
                (row, product / (norm * query_norm), (norm * norm + query_norm * query_norm - 2.0 * product).max(0.0).sqrt())
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(limit);
        scored
    }

    /// Row `row`'s vector, when the generation has text vectors and the row has words.
    pub fn row(&self, row: usize) -> Option<&[f32]> {
        (self.dim > 0 && self.norms.get(row).is_some_and(|n| *n > 0.0)).then(|| &self.values[row * self.dim..(row + 1) * self.dim])
    }
}
