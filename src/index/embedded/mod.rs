//! The embedded index, the default backend: each category's vectors contiguous, scanned as
//! 4-bit codes in this process's memory ([`codes`]) with the best candidates scored again
//! exactly from the full-precision vectors, which stay on disk ([`rank`]); generations as
//! folders on disk ([`store`]), re-indexed under an OS file lock; the items' words in
//! [`text`] (a tantivy full-text index and the text's sentence vectors).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use serde::{Deserialize, Serialize};

use super::rank::{self, dot, Candidate};
use super::reindex::{self, Plan, Previous, Stored, Vector};
use super::whiten::Whitening;
use super::words::{self as shared, Ranked, Tally, WordsQuery};
use super::{
    Backend, CategoryCount, Embedder, EmbeddingKey, Failure, Generation, Hit, IndexError, Item, Page, Progress, ReindexError, ReindexGuard, ReindexJob, ReindexSummary, Scope, SearchMethod,
    SearchParams, Snapshot,
};
use crate::words::PriceRange;

mod codes;
mod store;
mod text;
use codes::Codes;
pub use codes::Quantizer;
pub use store::{ReindexLock, FORMAT};
use text::{FullText, TextVectors};

/// Candidates a query scores again from full-precision vectors, at first: the scan's best by
/// their 4-bit codes. More are taken while a row left out could still beat the page's last
/// candidate by its codes' score plus `SPREADS` of the codes' error (see `search_reranking`).
/// Reading a row costs about 13 µs here; `lookalike bench --only search` sweeps this.
pub const RERANK_MIN: usize = 64;
/// ... and this many per hit wanted, for deep pages.
const RERANK_PER_HIT: usize = 8;
/// How far, in standard deviations of the codes' error ([`codes::Prepared::spread`]), a row's
/// exact score is taken to stray from its codes' score. A row strays 4 of them about 3 times in
/// 100,000, and only rows whose scores are close to the page's last can change the page.
const SPREADS: f32 = 4.0;

/// An item with its picture's vector and its text's (empty for none).
pub type DescribedRow = (Item, (Vec<f32>, Vec<f32>));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryRows {
    pub name: String,
    pub first_row: usize,
    pub rows: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub generation: u64,
    /// Seconds since the Unix epoch.
    pub created_unix_s: u64,
    pub key: EmbeddingKey,
    pub catalogue: PathBuf,
    pub categories: Vec<CategoryRows>,
    /// One per row, in row order.
    pub items: Vec<Item>,
    pub failed: Vec<Failure>,
    pub vectors_sha256: String,
    /// How `codes.q4` encodes the vectors (format 2 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantizer: Option<Quantizer>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub codes_sha256: String,
    /// Dimensions of the items' sentence vectors in `text.f32`; 0 when the generation has none.
    #[serde(default)]
    pub text_dim: usize,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text_sha256: String,
    /// sha256 of `whitening.bin`; empty when the generation is not whitened.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub whitening_sha256: String,
    /// sha256 of `own.f32`, the vectors before database-side augmentation blended them; empty
    /// when nothing was blended.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub own_sha256: String,
}

/// An index generation: its manifest, its 4-bit codes and norms in memory, its full-precision
/// vectors in memory while it is being built and on disk once saved.
#[derive(Debug)]
pub struct Index {
    pub manifest: Manifest,
    codes: Codes,
    norms: Vec<f32>,
    rows: store::Rows,
    /// Each row's price as a number, when it reads as one.
    prices: Vec<Option<f32>>,
    texts: TextVectors,
    /// Built on the first search by words (see [`Index::full_text`]).
    full_text: OnceLock<Result<FullText, String>>,
    /// What the stored vectors' descriptor parts are whitened by.
    pub whitening: Option<Arc<Whitening>>,
    /// The vectors before database-side augmentation blended them, when it did.
    own: Option<store::Rows>,
}

impl std::fmt::Debug for FullText {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("FullText")
    }
}

impl Index {
    /// Builds an index from rows in any order: they are grouped by category (then id) so each
    /// category's vectors are contiguous.
    pub fn build(key: EmbeddingKey, catalogue: PathBuf, generation: u64, rows: Vec<(Item, Vec<f32>)>, failed: Vec<Failure>) -> anyhow::Result<Index> {
        Index::build_described(key, catalogue, generation, rows.into_iter().map(|(item, vector)| (item, (vector, Vec::new()))).collect(), failed)
    }

    /// As [`build`](Self::build), each row with its text's sentence vector (empty for none).
    pub fn build_described(key: EmbeddingKey, catalogue: PathBuf, generation: u64, mut rows: Vec<DescribedRow>, failed: Vec<Failure>) -> anyhow::Result<Index> {
        reindex::sort_rows(&mut rows);
        let text_dim = rows.iter().map(|(_, (_, text))| text.len()).max().unwrap_or(0);
        let mut vectors = Vec::with_capacity(rows.len() * key.dim);
        let mut texts = Vec::with_capacity(rows.len() * text_dim);
        let mut items = Vec::with_capacity(rows.len());
        for (item, (vector, text)) in rows {
            anyhow::ensure!(vector.len() == key.dim, "{} has a {}-d vector, the index {}-d", item.id, vector.len(), key.dim);
            anyhow::ensure!(text.is_empty() || text.len() == text_dim, "{} has a {}-d text vector, others {}-d", item.id, text.len(), text_dim);
            vectors.extend_from_slice(&vector);
            texts.extend(if text.is_empty() { vec![0.0; text_dim] } else { text });
            items.push(item);
        }
        let mut index = Index::from_matrix(key, catalogue, generation, items, vectors, failed)?;
        index.manifest.text_dim = text_dim;
        index.texts = TextVectors::new(text_dim, texts);
        Ok(index)
    }

    /// An index of `items` whose vectors are the rows of `matrix`, already grouped by category.
    pub fn from_matrix(key: EmbeddingKey, catalogue: PathBuf, generation: u64, items: Vec<Item>, matrix: Vec<f32>, failed: Vec<Failure>) -> anyhow::Result<Index> {
        anyhow::ensure!(matrix.len() == items.len() * key.dim, "{} items need {} floats, not {}", items.len(), items.len() * key.dim, matrix.len());
        let mut categories: Vec<CategoryRows> = Vec::new();
        for (row, item) in items.iter().enumerate() {
            match categories.last_mut() {
                Some(last) if last.name == item.category => last.rows += 1,
                _ => {
                    anyhow::ensure!(categories.iter().all(|c| c.name != item.category), "the rows of {} are not together", item.category);
                    categories.push(CategoryRows { name: item.category.clone(), first_row: row, rows: 1 });
                }
            }
        }
        let manifest = Manifest {
            format: FORMAT,
            generation,
            created_unix_s: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            key,
            catalogue,
            categories,
            items,
            failed,
            vectors_sha256: String::new(),
            quantizer: None,
            codes_sha256: String::new(),
            text_dim: 0,
            text_sha256: String::new(),
            whitening_sha256: String::new(),
            own_sha256: String::new(),
        };
        Ok(Index::in_memory(manifest, matrix))
    }

    /// An index whose full-precision vectors stay in memory; its codes are derived from them.
    fn in_memory(mut manifest: Manifest, matrix: Vec<f32>) -> Index {
        let dim = manifest.key.dim.max(1);
        let norms = matrix.chunks_exact(dim).map(|row| dot(row, row).sqrt()).collect();
        let codes = Codes::encode(Quantizer::fit(&matrix, dim), &matrix);
        manifest.quantizer = Some(codes.quantizer.clone());
        Index::assemble(manifest, codes, norms, store::Rows::Memory(matrix), TextVectors::default())
    }

    /// The index of these parts, with each row's price read from its metadata.
    fn assemble(manifest: Manifest, codes: Codes, norms: Vec<f32>, rows: store::Rows, texts: TextVectors) -> Index {
        let prices = manifest.items.iter().map(|item| item.metadata.price_value().map(|p| p as f32)).collect();
        Index { manifest, codes, norms, rows, prices, texts, full_text: OnceLock::new(), whitening: None, own: None }
    }

    pub fn len(&self) -> usize {
        self.manifest.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.items.is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.manifest.generation
    }

    /// The full-precision vectors of `rows`, one after another (read from disk once saved).
    pub fn vectors(&self, rows: &[usize]) -> Result<Vec<f32>, IndexError> {
        self.rows.read(rows, self.manifest.key.dim)
    }

    /// All the full-precision vectors, while they are in memory (before [`Index::save`]).
    pub fn matrix(&self) -> Option<&[f32]> {
        match &self.rows {
            store::Rows::Memory(matrix) => Some(matrix),
            store::Rows::File(_) => None,
        }
    }

    /// Bytes this index keeps in memory for searching: codes and norms (vectors in memory too,
    /// before saving).
    pub fn resident_bytes(&self) -> usize {
        self.codes.bytes.len() + 4 * self.norms.len() + self.matrix().map_or(0, |m| 4 * m.len())
    }

    /// Categories with their vectors and files (duplicates included), in index order.
    pub fn category_counts(&self) -> Vec<CategoryCount> {
        reindex::count_categories(&self.manifest.items)
    }

    /// The best hits for `query` in `categories`, searched in order: every hit of the first
    /// category ranks before any of the second (the chapter's category-first search).
    pub fn search(&self, query: &[f32], categories: &[String], params: &SearchParams) -> Result<Page, IndexError> {
        let scopes: Vec<Scope> = categories.iter().enumerate().map(|(rank, name)| Scope { category: name.clone(), rank, bonus: 0.0 }).collect();
        self.search_scopes(query, &scopes, params)
    }

    /// [`Backend::search`] on this generation.
    pub fn search_scopes(&self, query: &[f32], scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError> {
        Ok(self.search_reranking(query, scopes, params, RERANK_MIN.max(RERANK_PER_HIT * (params.offset + params.k + 1)))?.0)
    }

    /// Every row of the scopes' categories scored by its codes; the best `depth` by that score
    /// scored again exactly and ranked. Rows the codes put under `min_similarity` by more than
    /// their error bound are never candidates. Four times as many are taken while the page is
    /// not full (near-duplicates folded, a threshold) or the best row left out could, by its
    /// codes' score plus [`SPREADS`] of their error, beat the last candidate the page used.
    /// Returns the page and how many rows were scored exactly.
    pub(crate) fn search_reranking(&self, query: &[f32], scopes: &[Scope], params: &SearchParams, depth: usize) -> Result<(Page, usize), IndexError> {
        let dim = self.manifest.key.dim;
        if query.len() != dim {
            return Err(IndexError::DimensionMismatch { expected: dim, got: query.len() });
        }
        let query_norm = dot(query, query).sqrt();
        let prepared = self.codes.quantizer.prepare(query);
        let mut approximate = Vec::new();
        for scope in scopes {
            let Some(rows) = self.manifest.categories.iter().find(|c| c.name == scope.category) else { continue };
            let range = rows.first_row..rows.first_row + rows.rows;
            approximate.extend(self.codes.approximate(range.clone(), &prepared).into_iter().zip(range).filter(|(_, row)| params.price.admits(self.prices[*row])).filter_map(|(dot_product, row)| {
                let reach = prepared.bound / (self.norms[row] * query_norm).max(1e-12);
                Candidate::scored(row, dot_product, self.norms[row], query_norm, scope, params.min_similarity - reach)
            }));
        }
        let better = rank::better(params.metric);
        let mut depth = depth.max(1);
        loop {
            let depth_now = depth.min(approximate.len());
            if depth_now < approximate.len() {
                approximate.select_nth_unstable_by(depth_now, better);
            }
            let rows: Vec<usize> = approximate[..depth_now].iter().map(|c| c.slot).collect();
            let vectors = self.vectors(&rows)?;
            let row_vector = |slot: usize| &vectors[slot * dim..(slot + 1) * dim];
            let exact: Vec<Candidate> =
                approximate[..depth_now].iter().enumerate().filter_map(|(slot, c)| c.rescored(slot, dot(row_vector(slot), query), self.norms[c.slot], query_norm, params.min_similarity)).collect();
            let ranked = rank::rank(exact.clone(), params, SearchMethod::CodesReranked, row_vector, |slot| self.norms[rows[slot]], |slot| self.manifest.items[rows[slot]].clone());
            // After the selection, the best row left out sits right after the re-ranked ones.
            let settled = match (approximate.get(depth_now), ranked.consumed.last()) {
                (None, _) => true,
                (Some(left_out), Some(&last)) if ranked.page.more => {
                    let norm = self.norms[left_out.slot];
                    let hopeful = left_out.cosine * (norm * query_norm).max(1e-12) + SPREADS * prepared.spread;
                    let hopeful = left_out.rescored(left_out.slot, hopeful, norm, query_norm, f32::MIN).expect("no threshold");
                    exact.iter().find(|c| c.slot == last).is_some_and(|last| better(&hopeful, last).is_ge())
                }
                _ => false,
            };
            if settled {
                return Ok((ranked.page, depth_now));
            }
            depth *= 4;
        }
    }

    /// The full-text index of the items' words, built on first use (or by [`Index::warm`] when a
    /// generation is loaded): 10,000 items took 35 to 62 ms here (`lookalike bench --only words`).
    fn full_text(&self) -> Result<&FullText, IndexError> {
        self.full_text
            .get_or_init(|| FullText::build(&self.manifest.items).map_err(|err| format!("{err:#}")))
            .as_ref()
            .map_err(|err| IndexError::Unusable(format!("cannot build the full-text index: {err}")))
    }

    /// Each row's position among `scopes`, for the rows of the scopes' categories.
    fn scope_of_rows(&self, scopes: &[Scope]) -> Vec<Option<usize>> {
        let mut scope_of = vec![None; self.len()];
        for (position, scope) in scopes.iter().enumerate() {
            if let Some(rows) = self.manifest.categories.iter().find(|c| c.name == scope.category) {
                scope_of[rows.first_row..rows.first_row + rows.rows].iter_mut().for_each(|s| *s = Some(position));
            }
        }
        scope_of
    }

    /// [`Backend::search_words`] on this generation.
    pub fn search_words(&self, query: &WordsQuery, scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError> {
        let scope_of = self.scope_of_rows(scopes);
        let keep = |row: usize| scope_of[row].is_some() && params.price.admits(self.prices[row]);
        let ranked = |row: usize, text: Option<(f32, f32)>| Ranked { item: self.manifest.items[row].clone(), scope: scope_of[row].expect("kept rows are in a scope"), text };
        let full_text = self.full_text()?;
        let rankings = |depth: usize| -> Result<Vec<Vec<Ranked>>, IndexError> {
            let matched = full_text.search(&query.terms, depth, keep).map_err(|err| IndexError::Unusable(format!("full-text search failed: {err:#}")))?;
            let full: Vec<Ranked> = matched.into_iter().map(|(row, _)| ranked(row, self.text_scores(row, &query.vector))).collect();
            let semantic: Vec<Ranked> = self.texts.search(&query.vector, depth, keep).into_iter().map(|(row, cosine, distance)| ranked(row, Some((cosine, distance)))).collect();
            let pictures = shared::picture_ranking(|vector, deep| self.search_scopes(vector, scopes, deep), query, self.manifest.key.dim, scopes, params, depth)?;
            Ok(vec![full, semantic, pictures])
        };
        shared::fuse_deepening(rankings, scopes, params)
    }

    /// Row `row`'s text cosine and distance to `query`, when both are there.
    fn text_scores(&self, row: usize, query: &[f32]) -> Option<(f32, f32)> {
        let vector = self.texts.row(row).filter(|v| v.len() == query.len())?;
        let (product, norm, query_norm) = (dot(vector, query), dot(vector, vector).sqrt(), dot(query, query).sqrt().max(1e-12));
        Some((product / (norm * query_norm), (norm * norm + query_norm * query_norm - 2.0 * product).max(0.0).sqrt()))
    }

    /// [`Backend::tally`] on this generation.
    pub fn tally(&self, categories: &[String], price: &PriceRange, attributes: &[Vec<String>]) -> Tally {
        let mut tally = Tally { mentions: vec![0; attributes.len()], ..Tally::default() };
        for rows in self.manifest.categories.iter().filter(|c| categories.contains(&c.name)) {
            for row in rows.first_row..rows.first_row + rows.rows {
                tally.items += 1;
                tally.priced_in += usize::from(price.admits(self.prices[row]));
                if !attributes.is_empty() {
                    let words = crate::words::split(&self.manifest.items[row].metadata.words());
                    for (count, forms) in tally.mentions.iter_mut().zip(attributes) {
                        *count += usize::from(crate::words::mentions(&words, forms));
                    }
                }
            }
        }
        tally
    }

    /// The text vectors by the words they embed, for the next re-index to reuse.
    fn texts_by_words(&self) -> HashMap<String, Vec<f32>> {
        (0..self.len()).filter_map(|row| self.texts.row(row).map(|vector| (self.manifest.items[row].metadata.words(), vector.to_vec()))).collect()
    }

    /// Builds the full-text index now, so the first search by words does not wait for it.
    pub fn warm(&self) {
        if let Err(err) = self.full_text() {
            tracing::warn!("{err}");
        }
    }

    fn served(self: Arc<Index>) -> Arc<Generation> {
        Arc::new(Generation {
            number: self.generation(),
            key: self.manifest.key.clone(),
            created_unix_s: self.manifest.created_unix_s,
            categories: self.category_counts(),
            whitening: self.whitening.clone(),
            snapshot: Snapshot::Embedded(self),
        })
    }
}

/// The embedded backend: the newest generation under `index.dir`, in memory.
pub struct Embedded {
    dir: PathBuf,
    /// What searches are answered from, or why nothing can be.
    served: RwLock<Result<Option<Arc<Generation>>, String>>,
}

impl Embedded {
    /// Loads the newest generation that verifies. A missing or damaged index is not fatal:
    /// searches say what to do, and a re-index fixes it.
    pub fn open(dir: &Path) -> Embedded {
        let served = match Index::open_latest(dir) {
            Ok(found) => Ok(found.map(|(index, _)| {
                index.warm();
                Arc::new(index).served()
            })),
            Err(err) => Err(format!("{err:#}")),
        };
        Embedded { dir: dir.to_path_buf(), served: RwLock::new(served) }
    }
}

impl Backend for Embedded {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn current(&self) -> Result<Option<Arc<Generation>>, IndexError> {
        self.served.read().expect("index lock").clone().map_err(IndexError::Unusable)
    }

    fn search(&self, generation: &Generation, query: &[f32], scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError> {
        match &generation.snapshot {
            Snapshot::Embedded(index) => index.search_scopes(query, scopes, params),
            Snapshot::Database { .. } => Err(not_ours()),
        }
    }

    fn search_words(&self, generation: &Generation, query: &WordsQuery, scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError> {
        match &generation.snapshot {
            Snapshot::Embedded(index) => index.search_words(query, scopes, params),
            Snapshot::Database { .. } => Err(not_ours()),
        }
    }

    fn tally(&self, generation: &Generation, categories: &[String], price: &PriceRange, attributes: &[Vec<String>]) -> Result<Tally, IndexError> {
        match &generation.snapshot {
            Snapshot::Embedded(index) => Ok(index.tally(categories, price, attributes)),
            Snapshot::Database { .. } => Err(not_ours()),
        }
    }

    fn stored_vectors(&self, generation: &Generation, hits: &[Hit]) -> Result<Vec<Vec<f32>>, IndexError> {
        let Snapshot::Embedded(index) = &generation.snapshot else { return Err(not_ours()) };
        let items = &index.manifest.items;
        let rows: Vec<usize> = hits
            .iter()
            .map(|hit| items.iter().position(|item| item.id == hit.item.id).ok_or_else(|| IndexError::Unusable(format!("{} is not in generation {}", hit.item.id, generation.number))))
            .collect::<Result<_, _>>()?;
        Ok(index.vectors(&rows)?.chunks_exact(index.manifest.key.dim.max(1)).map(<[f32]>::to_vec).collect())
    }

    fn lock_reindex(&self) -> Result<Box<dyn ReindexGuard + '_>, ReindexError> {
        Ok(Box::new(Locked { backend: self, _lock: ReindexLock::acquire(&self.dir)? }))
    }
}

/// The embedded backend with its OS re-index lock held.
fn not_ours() -> IndexError {
    IndexError::Unusable("this generation is a database's, not the embedded index's".into())
}

struct Locked<'a> {
    backend: &'a Embedded,
    _lock: ReindexLock,
}

impl ReindexGuard for Locked<'_> {
    fn reindex(&mut self, job: &ReindexJob, embed: &mut Embedder, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        self.backend.write_generation(job, embed, progress)
    }
}

impl Embedded {
    /// The re-index proper, under the lock: plans against the newest generation (in memory, or a
    /// newer one another process wrote), writes the new one and serves it.
    fn write_generation(&self, job: &ReindexJob, embed: &mut Embedder, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        let in_memory = self.served.read().expect("index lock").clone().ok().flatten().and_then(|g| match &g.snapshot {
            Snapshot::Embedded(index) => Some(index.clone()),
            Snapshot::Database { .. } => None,
        });
        // Another process may have re-indexed since this one loaded; reuse whatever is newest.
        let previous = match Index::open_latest(&self.dir) {
            Ok(Some((latest, _))) if in_memory.as_ref().is_none_or(|m| latest.generation() > m.generation()) => Some(Arc::new(latest)),
            _ => in_memory,
        };
        let read = |rows: &[usize]| -> anyhow::Result<Vec<Vec<f32>>> {
            let index = previous.as_ref().expect("only a previous generation is read");
            let dim = index.manifest.key.dim.max(1);
            let values = match &index.own {
                Some(own) => own.read(rows, dim),
                None => index.vectors(rows),
            };
            Ok(values.map_err(|err| anyhow::anyhow!("{err}"))?.chunks_exact(dim).map(<[f32]>::to_vec).collect())
        };
        let plan = reindex::plan(
            job,
            previous.as_ref().map(|p| Previous { key: &p.manifest.key, items: &p.manifest.items, texts: p.texts_by_words(), whitening: p.whitening.clone(), vectors: &read, blended: p.own.is_some() }),
            embed,
            progress,
        )?;
        let Plan { rows, catalogue, failed, .. } = &plan;
        let blended = rows.iter().any(|(_, stored)| stored.own.is_some());
        let mut rows: Vec<(&Item, &Stored)> = rows.iter().map(|(item, stored)| (item, stored)).collect();
        rows.sort_by(|a, b| (&a.0.category, &a.0.id).cmp(&(&b.0.category, &b.0.id)));
        let own: Vec<f32> = if blended { rows.iter().flat_map(|(_, stored)| stored.own.clone().unwrap_or_default()).collect() } else { Vec::new() };
        let rows: Vec<DescribedRow> = rows
            .into_iter()
            .map(|(item, Stored { vector, text, .. })| {
                let vector = match vector {
                    Vector::Reused(row) => {
                        previous.as_ref().expect("reused rows come from a previous generation").vectors(&[*row]).map_err(|err| anyhow::anyhow!("cannot reuse {}: {err}", item.id))?
                    }
                    Vector::Embedded(vector) => vector.clone(),
                };
                Ok((item.clone(), (vector, text.clone())))
            })
            .collect::<anyhow::Result<_>>()?;
        let newest_on_disk = store::generations(&self.dir)?.first().map_or(0, |g| g.0);
        let generation = newest_on_disk.max(previous.as_ref().map_or(0, |p| p.generation())) + 1;
        let mut index = Index::build_described(job.key.clone(), catalogue.clone(), generation, rows, failed.clone())?;
        index.whitening = plan.whitening.clone();
        index.own = blended.then_some(store::Rows::Memory(own));
        let path = index.save(&self.dir)?;
        index.warm();
        *self.served.write().expect("index lock") = Ok(Some(Arc::new(index).served()));
        Ok(plan.written(generation, path.display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::store::{CODES, LOCK, MANIFEST, VECTORS};
    use super::*;
    use crate::catalogue::Metadata;
    use crate::config::Metric;
    use crate::index::EMBED_CHUNK;

    fn key(dim: usize) -> EmbeddingKey {
        EmbeddingKey { profile: "kit".into(), backbones: vec!["a".into()], source: "pooled".into(), pooling: "gem3".into(), weights_sha256: String::new(), dim }
    }

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = dot(values, values).sqrt();
        values.iter().map(|v| v / norm).collect()
    }

    fn item(id: &str) -> Item {
        let category = id.split('/').next().unwrap().to_string();
        Item { id: id.into(), path: PathBuf::from(id), category, hash: id.into(), size: 1, modified_ns: 0, duplicates: Vec::new(), metadata: Metadata::default(), colours: Vec::new() }
    }

    fn params(k: usize) -> SearchParams {
        SearchParams { k, offset: 0, metric: Metric::Cosine, min_similarity: -1.0, near_duplicate_cosine: 0.999, price: Default::default(), variants_apart: false }
    }

    fn small_index() -> Index {
        let rows = vec![
            (item("bag/far"), unit(&[0.0, 1.0, 0.0])),
            (item("bag/near"), unit(&[1.0, 0.1, 0.0])),
            (item("bag/near-twin"), unit(&[1.0, 0.1001, 0.0])),
            (item("bag/mid"), unit(&[1.0, 1.0, 0.0])),
            (item("coat/best"), unit(&[1.0, 0.0, 0.0])),
        ];
        Index::build(key(3), PathBuf::from("catalogue"), 1, rows, Vec::new()).unwrap()
    }

    /// Bags and coats with titles, prices and text vectors along two axes ("canvas" and "wool").
    fn shop() -> Index {
        let row = |id: &str, title: &str, price: Option<&str>, text: [f32; 2]| {
            let mut item = item(id);
            item.metadata.title = Some(title.into());
            item.metadata.price = price.map(str::to_string);
            (item, (unit(&[1.0, 0.0, 0.0]), unit(&text)))
        };
        let rows = vec![
            row("bag/tote", "Harbor canvas tote", Some("19.00"), [1.0, 0.1]),
            row("bag/duffel", "Atlas canvas duffel", Some("$45"), [0.9, 0.3]),
            row("bag/clutch", "Evening clutch", Some("call us"), [0.2, 1.0]),
            row("coat/overcoat", "Summit wool overcoat", Some("120"), [0.1, 1.0]),
        ];
        Index::build_described(key(3), PathBuf::from("catalogue"), 1, rows, Vec::new()).unwrap()
    }

    #[test]
    fn words_are_searched_by_full_text_and_meaning_inside_the_price_range() {
        let index = shop();
        let scopes = [Scope { category: "bag".into(), rank: 0, bonus: 0.0 }, Scope { category: "coat".into(), rank: 0, bonus: 0.0 }];
        let query = WordsQuery { terms: vec!["canvas".into(), "totes".into()], vector: unit(&[1.0, 0.0]), ..WordsQuery::default() };
        let page = index.search_words(&query, &scopes, &params(3)).unwrap();
        let ids: Vec<&str> = page.hits.iter().map(|h| h.item.id.as_str()).collect();
        assert_eq!(ids[..2], ["bag/tote", "bag/duffel"], "\"totes\" finds the tote (stemmed), first in both rankings");
        assert_eq!(page.method, SearchMethod::Words);
        assert!(page.hits[0].cosine > 0.99, "a hit's cosine is its text's: {}", page.hits[0].cosine);

        let under_20 = SearchParams { price: PriceRange { min: None, max: Some(20.0) }, ..params(3) };
        let page = index.search_words(&query, &scopes, &under_20).unwrap();
        assert_eq!(page.hits.iter().map(|h| h.item.id.as_str()).collect::<Vec<_>>(), ["bag/tote"], "the duffel costs 45; the clutch's price does not read");
        let images = index.search_scopes(&unit(&[1.0, 0.0, 0.0]), &scopes, &under_20).unwrap();
        assert_eq!(images.hits.iter().map(|h| h.item.id.as_str()).collect::<Vec<_>>(), ["bag/tote"], "a price filters image searches inside the query too");
        let tally = index.tally(&["bag".into()], &under_20.price, &[vec!["canvas".into()], vec!["wood".into(), "wooden".into()]]);
        assert_eq!(tally, Tally { items: 3, priced_in: 1, mentions: vec![2, 0] });

        let dir = tempfile::tempdir().unwrap();
        let mut saved = shop();
        saved.save(dir.path()).unwrap();
        let (loaded, _) = Index::open_latest(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.manifest.text_dim, 2);
        assert_eq!(loaded.search_words(&query, &scopes, &params(3)).unwrap(), index.search_words(&query, &scopes, &params(3)).unwrap(), "text.f32 comes back as it went");
    }

    #[test]
    fn with_the_clip_embedder_words_are_also_compared_with_the_pictures() {
        let row = |id: &str, picture: [f32; 3], text: [f32; 2]| (item(id), (unit(&picture), unit(&text)));
        let rows = vec![row("bag/tote", [1.0, 0.0, 0.0], [1.0, 0.0]), row("bag/clutch", [0.0, 1.0, 0.0], [1.0, 0.1]), row("bag/duffel", [0.0, 0.0, 1.0], [0.9, 0.3])];
        let index = Index::build_described(key(3), PathBuf::from("catalogue"), 1, rows, Vec::new()).unwrap();
        let scopes = [Scope { category: "bag".into(), rank: 0, bonus: 0.0 }];
        // No word matches and no sentence vector: the pictures alone rank.
        let query = WordsQuery { terms: vec!["velvet".into()], vector: Vec::new(), pictures: unit(&[0.1, 1.0, 0.0]) };
        let page = index.search_words(&query, &scopes, &params(3)).unwrap();
        assert_eq!(page.hits.iter().map(|h| h.item.id.as_str()).collect::<Vec<_>>(), ["bag/clutch", "bag/tote", "bag/duffel"]);
        // Fused with the text: the tote leads the sentence vectors, the clutch the pictures; an
        // item high in both (the clutch, second by text) comes first.
        let both = WordsQuery { vector: unit(&[1.0, 0.0]), ..query.clone() };
        assert_eq!(index.search_words(&both, &scopes, &params(1)).unwrap().hits[0].item.id, "bag/clutch");
        // A clip vector that is not this generation's width (the catalogue not yet re-embedded) is left out.
        let stale = WordsQuery { pictures: unit(&[1.0, 0.0]), ..query };
        assert!(index.search_words(&stale, &scopes, &params(3)).unwrap().hits.is_empty());
    }

    #[test]
    fn exact_search_ranks_within_categories_in_order_and_folds_near_duplicates() {
        let index = small_index();
        assert_eq!(index.category_counts().iter().map(|c| (c.name.as_str(), c.vectors, c.files)).collect::<Vec<_>>(), [("bag", 4, 4), ("coat", 1, 1)]);
        let query = unit(&[1.0, 0.0, 0.0]);
        let page = index.search(&query, &["bag".into(), "coat".into()], &params(10)).unwrap();
        let ids: Vec<&str> = page.hits.iter().map(|h| h.item.id.as_str()).collect();
        // The first category's hits come first, even though coat/best is the closest overall.
        assert_eq!(ids, ["bag/near", "bag/mid", "bag/far", "coat/best"]);
        assert_eq!(page.hits[0].collapsed, ["bag/near-twin"]);
        let mid = &page.hits[1];
        assert!((mid.cosine - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!((mid.euclidean - (2.0 - 2.0 * mid.cosine).sqrt()).abs() < 1e-6, "unit vectors: |a-b|^2 = 2 - 2cos");
        assert!(!page.more);

        let euclidean = index.search(&query, &["bag".into()], &SearchParams { metric: Metric::Euclidean, ..params(10) }).unwrap();
        assert_eq!(euclidean.hits.iter().map(|h| h.item.id.as_str()).collect::<Vec<_>>(), ["bag/near", "bag/mid", "bag/far"]);

        let threshold = index.search(&query, &["bag".into()], &SearchParams { min_similarity: 0.5, ..params(10) }).unwrap();
        assert_eq!(threshold.hits.len(), 2, "bag/far (cosine 0) is under the threshold");

        let first = index.search(&query, &["bag".into(), "coat".into()], &params(2)).unwrap();
        assert!(first.more);
        let second = index.search(&query, &["bag".into(), "coat".into()], &SearchParams { offset: 2, ..params(2) }).unwrap();
        assert_eq!(second.hits.iter().map(|h| h.item.id.as_str()).collect::<Vec<_>>(), ["bag/far", "coat/best"]);
        assert!(!second.more);
        assert!(index.search(&query, &["shoe".into()], &params(3)).unwrap().hits.is_empty());
        let err = index.search(&[1.0, 0.0], &["bag".into()], &params(3)).unwrap_err();
        assert!(matches!(err, IndexError::DimensionMismatch { expected: 3, got: 2 }), "a wrong-length query is an error, not an empty page: {err}");
    }

    #[test]
    fn categories_ranked_together_compete_on_cosine_plus_their_bonus() {
        let index = small_index();
        let query = unit(&[1.0, 0.0, 0.0]);
        let scope = |category: &str, bonus: f32| Scope { category: category.into(), rank: 0, bonus };
        // Equal priors: coat/best (cosine 1) beats bag/near (0.995), unlike category-first search.
        let page = index.search_scopes(&query, &[scope("bag", 0.0), scope("coat", 0.0)], &params(3)).unwrap();
        assert_eq!(page.hits.iter().map(|h| h.item.id.as_str()).collect::<Vec<_>>(), ["coat/best", "bag/near", "bag/mid"]);
        // A prior that favours bags by more than the gap puts bag/near first; scores show it.
        let page = index.search_scopes(&query, &[scope("bag", 0.0), scope("coat", -0.1)], &params(3)).unwrap();
        assert_eq!(page.hits[0].item.id, "bag/near");
        let coat = page.hits.iter().find(|h| h.item.id == "coat/best").unwrap();
        assert!((coat.score - 0.9).abs() < 1e-5 && (coat.cosine - 1.0).abs() < 1e-5, "score = cosine + bonus: {coat:?}");
    }

    #[test]
    fn candidates_widen_when_near_duplicates_and_a_threshold_use_them_up() {
        // 600 copies of one direction (folded into one hit) and 400 others: the first 64 (and
        // 256) candidates are all copies, so the page needs the widened passes.
        let dim = 32;
        let mut rng = crate::rng::Rng::new(11);
        let mut random = || rng.unit_f32() - 0.5;
        let centre: Vec<f32> = (0..dim).map(|_| random()).collect();
        let rows: Vec<(Item, Vec<f32>)> = (0..1000)
            .map(|i| {
                let spread = if i < 600 { 0.0001 } else { 0.5 };
                (item(&format!("c/{i:04}")), unit(&centre.iter().map(|c| c + spread * random()).collect::<Vec<_>>()))
            })
            .collect();
        let index = Index::build(key(dim), PathBuf::new(), 1, rows.clone(), Vec::new()).unwrap();
        let query = unit(&centre);
        let page = index.search(&query, &["c".into()], &params(5)).unwrap();
        assert_eq!(page.hits[0].collapsed.len(), 599, "every copy folds into the first hit");
        let mut others: Vec<(f32, &str)> = rows[600..].iter().map(|(item, v)| (dot(v, &query), item.id.as_str())).collect();
        others.sort_by(|a, b| b.0.total_cmp(&a.0));
        let ids: Vec<&str> = page.hits[1..].iter().map(|h| h.item.id.as_str()).collect();
        assert_eq!(ids, others[..4].iter().map(|o| o.1).collect::<Vec<_>>());
        assert_eq!(page.method, SearchMethod::CodesReranked);
        // A threshold no row reaches: no hits (the codes' bound rules every row out).
        assert!(index.search(&query, &["c".into()], &SearchParams { min_similarity: 1.5, ..params(5) }).unwrap().hits.is_empty());
    }

    #[test]
    fn rows_the_codes_cannot_tell_apart_are_all_scored_exactly() {
        // 1,000 rows spread widely (so a code step is wide) and 1,000 packed around the query
        // closer than a step: the codes' own top 5 is wrong, and starting from one candidate the
        // search must widen until no row left out could still make the page.
        let dim = 32;
        let mut rng = crate::rng::Rng::new(17);
        let mut random = || rng.unit_f32() - 0.5;
        let centre: Vec<f32> = (0..dim).map(|_| random()).collect();
        let rows: Vec<(Item, Vec<f32>)> = (0..2000)
            .map(|i| {
                let spread = if i < 1000 { 2.0 } else { 0.02 };
                (item(&format!("c/{i:04}")), unit(&centre.iter().map(|c| c + spread * random()).collect::<Vec<_>>()))
            })
            .collect();
        let query = unit(&centre);
        let top5 = |scores: &[f32]| {
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            order[..5].to_vec()
        };
        let exact = top5(&rows.iter().map(|(_, v)| dot(v, &query)).collect::<Vec<_>>());
        let index = Index::build(key(dim), PathBuf::new(), 1, rows, Vec::new()).unwrap();
        let approximate = index.codes.approximate(0..2000, &index.codes.quantizer.prepare(&query));
        assert_ne!(top5(&approximate), exact, "the codes alone get the page wrong");
        let scope = Scope { category: "c".into(), rank: 0, bonus: 0.0 };
        let (page, scored) = index.search_reranking(&query, &[scope], &SearchParams { near_duplicate_cosine: 2.0, ..params(5) }, 1).unwrap();
        let got: Vec<usize> = page.hits.iter().map(|h| h.item.id[2..].parse().unwrap()).collect();
        assert_eq!(got, exact);
        assert!(scored > 16, "a full page after 16 candidates is not enough here: {scored}");
    }

    #[test]
    fn search_over_many_rows_matches_a_full_sort() {
        let dim = 16;
        let mut rng = crate::rng::Rng::new(5);
        let mut random = || rng.unit_f32() - 0.5;
        let rows: Vec<(Item, Vec<f32>)> = (0..2000).map(|i| (item(&format!("c/{i:04}")), unit(&(0..dim).map(|_| random()).collect::<Vec<_>>()))).collect();
        let query = unit(&(0..dim).map(|_| random()).collect::<Vec<_>>());
        let mut expected: Vec<(f32, String)> = rows.iter().map(|(item, v)| (dot(v, &query), item.id.clone())).collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0));
        let index = Index::build(key(dim), PathBuf::new(), 1, rows, Vec::new()).unwrap();
        let page = index.search(&query, &["c".into()], &SearchParams { offset: 20, near_duplicate_cosine: 2.0, ..params(30) }).unwrap();
        let got: Vec<&str> = page.hits.iter().map(|h| h.item.id.as_str()).collect();
        let want: Vec<&str> = expected[20..50].iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn generations_save_load_and_fall_back_past_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Index::open_latest(dir.path()).unwrap().is_none(), "no index yet is not an error");
        let mut first = small_index();
        first.save(dir.path()).unwrap();
        let mut second = Index::build(key(3), PathBuf::new(), 2, vec![(item("bag/only"), unit(&[1.0, 2.0, 3.0]))], Vec::new()).unwrap();
        second.save(dir.path()).unwrap();
        let (loaded, warnings) = Index::open_latest(dir.path()).unwrap().unwrap();
        assert_eq!((loaded.generation(), loaded.len(), warnings.len()), (2, 1, 0));
        assert_eq!(loaded.vectors(&[0]).unwrap(), [1.0, 2.0, 3.0].map(|x| x / 14f32.sqrt()));
        assert!(loaded.matrix().is_none() && second.matrix().is_none(), "saved and loaded generations read their vectors from disk");

        // Flip one byte of the newest vectors: detected, and the older generation answers.
        let vectors = dir.path().join("gen-000002").join(VECTORS);
        let mut bytes = std::fs::read(&vectors).unwrap();
        bytes[5] ^= 0x40;
        std::fs::write(&vectors, bytes).unwrap();
        let (fallback, warnings) = Index::open_latest(dir.path()).unwrap().unwrap();
        assert_eq!(fallback.generation(), 1);
        assert!(warnings[0].contains("gen-000002") && warnings[0].contains("damaged") && warnings[0].contains("falling back to"), "{warnings:?}");
        assert_eq!(fallback.manifest.items, first.manifest.items);

        // Damaged codes are found the same way.
        std::fs::remove_dir_all(dir.path().join("gen-000002")).unwrap();
        let mut third = Index::build(key(3), PathBuf::new(), 3, vec![(item("bag/only"), unit(&[3.0, 2.0, 1.0]))], Vec::new()).unwrap();
        third.save(dir.path()).unwrap();
        let codes = dir.path().join("gen-000003").join(CODES);
        let mut bytes = std::fs::read(&codes).unwrap();
        bytes[0] ^= 0x11;
        std::fs::write(&codes, bytes).unwrap();
        let (fallback, warnings) = Index::open_latest(dir.path()).unwrap().unwrap();
        assert_eq!(fallback.generation(), 1);
        assert!(warnings[0].contains("codes.q4 is damaged"), "{warnings:?}");

        // A generation written before the codes (format 1) still loads and answers.
        let old = dir.path().join("gen-000004");
        std::fs::create_dir(&old).unwrap();
        std::fs::copy(dir.path().join("gen-000001").join(VECTORS), old.join(VECTORS)).unwrap();
        let mut manifest = serde_json::to_value(&first.manifest).unwrap();
        let object = manifest.as_object_mut().unwrap();
        object.insert("format".into(), 1.into());
        object.insert("generation".into(), 4.into());
        object.remove("quantizer");
        object.remove("codes_sha256");
        std::fs::write(old.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        let (upgraded, warnings) = Index::open_latest(dir.path()).unwrap().unwrap();
        assert_eq!((upgraded.generation(), warnings.len()), (4, 0));
        let query = unit(&[1.0, 0.0, 0.0]);
        assert_eq!(upgraded.search(&query, &["bag".into(), "coat".into()], &params(10)).unwrap(), first.search(&query, &["bag".into(), "coat".into()], &params(10)).unwrap());
        std::fs::remove_dir_all(&old).unwrap();

        // Damage the last one too: a clear error, not an empty index.
        std::fs::write(dir.path().join("gen-000001").join(MANIFEST), b"{ truncated").unwrap();
        let err = Index::open_latest(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no usable index generation") && err.contains("lookalike index"), "{err}");
    }

    #[test]
    fn the_lock_refuses_a_second_reindex_and_survives_a_reused_process_id() {
        let dir = tempfile::tempdir().unwrap();
        let held = ReindexLock::acquire(dir.path()).unwrap();
        let err = ReindexLock::acquire(dir.path()).err().unwrap();
        assert!(err.to_string().contains("already running (in this process)"), "{err}");
        drop(held);
        // A file left by a killed holder whose process id now belongs to a live process (this
        // one): nobody holds the OS lock, so it is taken over.
        std::fs::write(dir.path().join(LOCK), format!("{}\n", std::process::id())).unwrap();
        let taken = ReindexLock::acquire(dir.path()).unwrap();
        drop(taken);
        assert!(!dir.path().join(LOCK).exists());
    }

    /// Writes a catalogue of small files whose bytes decide their vectors: byte 0 picks the axis.
    /// A re-index of `catalogue` with nothing but the defaults: no metadata, no partial file.
    fn plain_job<'a>(catalogue: &'a Path, key: &'a EmbeddingKey) -> ReindexJob<'a> {
        ReindexJob { catalogue, metadata: Path::new(""), key, chunk: EMBED_CHUNK, max_image_bytes: 1 << 20, partial: None, stop: None, describe: None, whitening: None, augmentation: 0 }
    }

    fn write_files(root: &Path, files: &[(&str, &[u8])]) {
        for (id, bytes) in files {
            let path = root.join(id);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }

    fn fake_embedder(calls: &mut Vec<PathBuf>) -> impl FnMut(&[PathBuf]) -> Vec<Result<Vec<f32>, String>> + '_ {
        move |paths: &[PathBuf]| {
            paths
                .iter()
                .map(|path| {
                    calls.push(path.clone());
                    let bytes = std::fs::read(path).unwrap();
                    if bytes.starts_with(b"bad") {
                        return Err("not a picture".to_string());
                    }
                    let mut v = vec![0.1f32; 4];
                    v[bytes[0] as usize % 4] = 1.0;
                    Ok(unit(&v))
                })
                .collect()
        }
    }

    #[test]
    fn reindex_refuses_a_file_over_the_size_limit_without_reading_it() {
        let scratch = tempfile::tempdir().unwrap();
        let (catalogue, index_dir) = (scratch.path().join("shop"), scratch.path().join("index"));
        write_files(&catalogue, &[("bag/a.png", b"\x00a")]);
        // Sparse: 4 GiB on paper, nothing on disk; hashing it would read all of it.
        std::fs::File::create(catalogue.join("bag/huge.png")).unwrap().set_len(4 << 30).unwrap();
        let key = key(4);
        let job = plain_job(&catalogue, &key);
        let mut calls = Vec::new();
        let summary = Embedded::open(&index_dir).reindex(&job, &mut fake_embedder(&mut calls), &mut |_| {}).unwrap();
        assert_eq!(summary.vectors, 1);
        assert_eq!(summary.failed, [Failure { id: "bag/huge.png".into(), reason: "the image is 4096 MB; the limit is 1 MB (limits.max_image_mb)".into() }]);
        assert_eq!(calls.len(), 1, "the huge file never reaches the embedder");
    }

    #[test]
    fn reindex_embeds_only_new_and_changed_files_and_stores_duplicates_once() {
        let scratch = tempfile::tempdir().unwrap();
        let (catalogue, index_dir) = (scratch.path().join("shop"), scratch.path().join("index"));
        write_files(&catalogue, &[("bag/a.png", b"\x00a"), ("bag/b.png", b"\x01b"), ("bag/a-copy.png", b"\x00a"), ("coat/c.png", b"\x02c"), ("coat/broken.png", b"bad"), ("coat/notes.txt", b"x")]);
        let key = key(4);
        let job = plain_job(&catalogue, &key);
        let backend = Embedded::open(&index_dir);
        let served = |backend: &Embedded| match &backend.current().unwrap().unwrap().snapshot {
            Snapshot::Embedded(index) => index.clone(),
            Snapshot::Database { .. } => unreachable!("the embedded backend serves its own generations"),
        };
        let mut calls = Vec::new();
        let mut events = Vec::new();
        let summary = backend.reindex(&job, &mut fake_embedder(&mut calls), &mut |p| events.push(*p)).unwrap();
        let first = served(&backend);
        assert_eq!((summary.added, summary.embedded, summary.duplicates, summary.vectors, summary.files), (5, 4, 1, 3, 4));
        assert_eq!(summary.failed, [Failure { id: "coat/broken.png".into(), reason: "not a picture".into() }]);
        assert_eq!(summary.not_images.len(), 1);
        assert_eq!(calls.len(), 4, "the duplicate is embedded once");
        assert_eq!(events.last().unwrap().done, 4);
        let bag = first.manifest.items.iter().find(|i| i.id == "bag/a-copy.png").unwrap();
        assert_eq!(bag.duplicates, ["bag/a.png"], "ids sort, so a-copy comes first");

        // Change one, remove one, add one: only the changed and the new file are embedded.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_files(&catalogue, &[("bag/b.png", b"\x03b changed"), ("coat/d.png", b"\x01d")]);
        std::fs::remove_file(catalogue.join("coat/c.png")).unwrap();
        calls.clear();
        let summary = backend.reindex(&job, &mut fake_embedder(&mut calls), &mut |_| {}).unwrap();
        let second = served(&backend);
        let mut embedded: Vec<String> = calls.iter().map(|p| p.strip_prefix(&catalogue).unwrap().display().to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, ["bag/b.png", "coat/broken.png", "coat/d.png"], "failures are retried");
        // broken.png was not indexed last time, so it counts as added again.
        assert_eq!((summary.added, summary.changed, summary.removed, summary.unchanged), (2, 1, 1, 2));
        assert_eq!(second.generation(), 2);
        assert!(second.manifest.items.iter().all(|i| i.id != "coat/c.png"));
        let (on_disk, _) = Index::open_latest(&index_dir).unwrap().unwrap();
        assert_eq!(on_disk.manifest.items, second.manifest.items);

        // Other models: everything is embedded again.
        calls.clear();
        let other = EmbeddingKey { source: "head".into(), ..key.clone() };
        let job = ReindexJob { key: &other, ..job };
        let summary = backend.reindex(&job, &mut fake_embedder(&mut calls), &mut |_| {}).unwrap();
        assert_eq!((summary.embedded, summary.unchanged), (4, 4));
    }

    #[test]
    fn an_interrupted_reindex_is_taken_up_where_it_stopped() {
        use crate::index::{render_summary, Audience};
        use std::io::Write;
        let scratch = tempfile::tempdir().unwrap();
        let (catalogue, index_dir, partial) = (scratch.path().join("shop"), scratch.path().join("index"), scratch.path().join("index/reindex-partial.bin"));
        write_files(&catalogue, &[("bag/a.png", b"\x00a"), ("bag/b.png", b"\x01b"), ("coat/c.png", b"\x02c"), ("coat/d.png", b"\x03d")]);
        let key = key(4);
        let job = ReindexJob { chunk: 1, partial: Some(&partial), ..plain_job(&catalogue, &key) };
        let backend = Embedded::open(&index_dir);
        // A run killed when it reaches `file`: what it embedded before is kept.
        let dies_at = |file: &'static str| {
            move |paths: &[PathBuf]| {
                let mut calls = Vec::new();
                if paths[0].ends_with(file) {
                    Vec::new()
                } else {
                    fake_embedder(&mut calls)(paths)
                }
            }
        };
        assert!(backend.reindex(&job, &mut dies_at("c.png"), &mut |_| {}).unwrap_err().to_string().contains("answered 0 of 1"));
        assert!(backend.current().unwrap().is_none(), "no generation was written");
        // A torn record at the end, as a kill in mid-write leaves; the next run cuts it off
        // before appending, so what it appends reads back.
        std::fs::OpenOptions::new().append(true).open(&partial).unwrap().write_all(&[64, b'x']).unwrap();
        assert!(backend.reindex(&job, &mut dies_at("d.png"), &mut |_| {}).is_err());

        let mut calls = Vec::new();
        let summary = backend.reindex(&job, &mut fake_embedder(&mut calls), &mut |_| {}).unwrap();
        assert_eq!(calls.len(), 1, "only the image neither run reached: {calls:?}");
        assert_eq!((summary.embedded, summary.resumed, summary.vectors), (1, 3, 4));
        assert!(render_summary(&summary, Audience::Operator).contains("3 more embedded by an interrupted re-index"));
        assert!(!partial.exists(), "the generation holds them now");

        // Vectors another key's run kept are not used.
        let elsewhere = Embedded::open(&scratch.path().join("index-2"));
        let partial = scratch.path().join("index-2/reindex-partial.bin");
        let job = ReindexJob { partial: Some(&partial), ..job };
        assert!(elsewhere.reindex(&job, &mut dies_at("c.png"), &mut |_| {}).unwrap_err().to_string().contains("answered 0 of 1"));
        assert!(std::fs::metadata(&partial).unwrap().len() > 100, "two vectors kept");
        let other = EmbeddingKey { source: "head".into(), ..key.clone() };
        let mut calls = Vec::new();
        let summary = elsewhere.reindex(&ReindexJob { key: &other, ..job }, &mut fake_embedder(&mut calls), &mut |_| {}).unwrap();
        assert_eq!((summary.embedded, summary.resumed), (4, 0));
    }

    #[test]
    fn a_key_written_before_gem_pooling_matches_no_gem_key() {
        let mut old = serde_json::to_value(key(4)).unwrap();
        old.as_object_mut().unwrap().remove("pooling");
        let old: EmbeddingKey = serde_json::from_value(old).unwrap();
        assert_eq!(old.pooling, "", "average-pooled vectors, from before the field existed");
        assert_ne!(old, key(4), "so their index is re-embedded, never searched with GeM queries");
    }
}
