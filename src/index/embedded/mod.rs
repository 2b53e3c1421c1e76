//! The embedded index, the default backend: one contiguous matrix of vectors per category in
//! this process's memory, scored exactly ([`super::rank`]); generations as folders on disk
//! ([`store`]), re-indexed under an OS file lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::rank::{self, dot, Candidate};
use super::reindex::{self, Plan, Previous, Vector};
use super::{Backend, CategoryCount, Embedder, EmbeddingKey, Failure, Generation, IndexError, Item, Page, Progress, ReindexError, ReindexJob, ReindexSummary, Scope, SearchParams};

mod store;
pub use store::{ReindexLock, FORMAT};

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
}

/// An index generation in memory.
#[derive(Debug, Clone)]
pub struct Index {
    pub manifest: Manifest,
    vectors: Vec<f32>,
    norms: Vec<f32>,
}

impl Index {
    /// Builds an index from rows in any order: they are grouped by category (then id) so each
    /// category's vectors are one contiguous matrix.
    pub fn build(key: EmbeddingKey, catalogue: PathBuf, generation: u64, mut rows: Vec<(Item, Vec<f32>)>, failed: Vec<Failure>) -> anyhow::Result<Index> {
        reindex::sort_rows(&mut rows);
        let mut vectors = Vec::with_capacity(rows.len() * key.dim);
        let mut categories: Vec<CategoryRows> = Vec::new();
        let mut items = Vec::with_capacity(rows.len());
        for (row, (item, vector)) in rows.into_iter().enumerate() {
            anyhow::ensure!(vector.len() == key.dim, "{} has a {}-d vector, the index {}-d", item.id, vector.len(), key.dim);
            match categories.last_mut() {
                Some(last) if last.name == item.category => last.rows += 1,
                _ => categories.push(CategoryRows { name: item.category.clone(), first_row: row, rows: 1 }),
            }
            vectors.extend_from_slice(&vector);
            items.push(item);
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
        };
        Ok(Index::from_parts(manifest, vectors))
    }

    fn from_parts(manifest: Manifest, vectors: Vec<f32>) -> Index {
        let dim = manifest.key.dim.max(1);
        let norms = vectors.chunks_exact(dim).map(|row| dot(row, row).sqrt()).collect();
        Index { manifest, vectors, norms }
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

    pub fn vector(&self, row: usize) -> &[f32] {
        let dim = self.manifest.key.dim;
        &self.vectors[row * dim..(row + 1) * dim]
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

    /// [`Backend::search`] on this generation: every vector of the scopes' categories scored.
    pub fn search_scopes(&self, query: &[f32], scopes: &[Scope], params: &SearchParams) -> Result<Page, IndexError> {
        let dim = self.manifest.key.dim;
        if query.len() != dim {
            return Err(IndexError::DimensionMismatch { expected: dim, got: query.len() });
        }
        let query_norm = dot(query, query).sqrt();
        let mut candidates = Vec::new();
        for scope in scopes {
            let Some(rows) = self.manifest.categories.iter().find(|c| c.name == scope.category) else { continue };
            let matrix = &self.vectors[rows.first_row * dim..(rows.first_row + rows.rows) * dim];
            candidates.extend(rank::scores(matrix, dim, query).into_iter().enumerate().filter_map(|(offset, dot_product)| {
                let row = rows.first_row + offset;
                Candidate::scored(row, dot_product, self.norms[row], query_norm, scope, params.min_similarity)
            }));
        }
        Ok(rank::rank(candidates, params, "exact", |row| self.vector(row), |row| self.norms[row], |row| self.manifest.items[row].clone()).page)
    }

    fn served(self: Arc<Index>) -> Arc<Generation> {
        Arc::new(Generation {
            number: self.generation(),
            key: self.manifest.key.clone(),
            created_unix_s: self.manifest.created_unix_s,
            categories: self.category_counts(),
            approximate: Vec::new(),
            matrix: Some(self),
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
            Ok(found) => Ok(found.map(|(index, _)| Arc::new(index).served())),
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
        let index = generation.matrix.as_ref().ok_or_else(|| IndexError::Unusable("this generation is not the embedded index's".into()))?;
        index.search_scopes(query, scopes, params)
    }

    fn reindex(&self, job: &ReindexJob, embed: &mut Embedder, progress: &mut dyn FnMut(&Progress)) -> Result<ReindexSummary, ReindexError> {
        let _lock = ReindexLock::acquire(&self.dir)?;
        let in_memory = self.served.read().expect("index lock").clone().ok().flatten().and_then(|g| g.matrix.clone());
        // Another process may have re-indexed since this one loaded; reuse whatever is newest.
        let previous = match Index::open_latest(&self.dir) {
            Ok(Some((latest, _))) if in_memory.as_ref().is_none_or(|m| latest.generation() > m.generation()) => Some(Arc::new(latest)),
            _ => in_memory,
        };
        let plan = reindex::plan(job, previous.as_ref().map(|p| Previous { key: &p.manifest.key, items: &p.manifest.items }), embed, progress)?;
        let Plan { rows, catalogue, failed, .. } = &plan;
        let rows: Vec<(Item, Vec<f32>)> = rows
            .iter()
            .map(|(item, vector)| {
                let vector = match vector {
                    Vector::Reused(row) => previous.as_ref().expect("reused rows come from a previous generation").vector(*row).to_vec(),
                    Vector::Embedded(vector) => vector.clone(),
                };
                (item.clone(), vector)
            })
            .collect();
        let newest_on_disk = store::generations(&self.dir)?.first().map_or(0, |g| g.0);
        let generation = newest_on_disk.max(previous.as_ref().map_or(0, |p| p.generation())) + 1;
        let mut index = Index::build(job.key.clone(), catalogue.clone(), generation, rows, failed.clone())?;
        let path = index.save(&self.dir)?;
        *self.served.write().expect("index lock") = Ok(Some(Arc::new(index).served()));
        Ok(plan.summary(generation, path.display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::store::{LOCK, MANIFEST, VECTORS};
    use super::*;
    use crate::catalogue::{Metadata, MetadataTable};
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
        Item { id: id.into(), path: PathBuf::from(id), category, hash: id.into(), size: 1, modified_ns: 0, duplicates: Vec::new(), metadata: Metadata::default() }
    }

    fn params(k: usize) -> SearchParams {
        SearchParams { k, offset: 0, metric: Metric::Cosine, min_similarity: -1.0, near_duplicate_cosine: 0.999 }
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
    fn search_over_many_rows_matches_a_full_sort() {
        let dim = 16;
        let mut state = 5u64;
        let mut random = || (crate::vision::data::splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
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
        assert_eq!(loaded.vector(0), second.vector(0));

        // Flip one byte of the newest vectors: detected, and the older generation answers.
        let vectors = dir.path().join("gen-000002").join(VECTORS);
        let mut bytes = std::fs::read(&vectors).unwrap();
        bytes[5] ^= 0x40;
        std::fs::write(&vectors, bytes).unwrap();
        let (fallback, warnings) = Index::open_latest(dir.path()).unwrap().unwrap();
        assert_eq!(fallback.generation(), 1);
        assert!(warnings[0].contains("gen-000002") && warnings[0].contains("damaged") && warnings[0].contains("falling back to"), "{warnings:?}");
        assert_eq!(fallback.manifest.items, first.manifest.items);

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
        let (metadata, key) = (MetadataTable::default(), key(4));
        let job = ReindexJob { catalogue: &catalogue, metadata: &metadata, key: &key, chunk: EMBED_CHUNK, max_image_bytes: 1 << 20 };
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
        let metadata = MetadataTable::default();
        let key = key(4);
        let job = ReindexJob { catalogue: &catalogue, metadata: &metadata, key: &key, chunk: EMBED_CHUNK, max_image_bytes: 1 << 20 };
        let backend = Embedded::open(&index_dir);
        let served = |backend: &Embedded| backend.current().unwrap().unwrap().matrix.clone().unwrap();
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
    fn a_key_written_before_gem_pooling_matches_no_gem_key() {
        let mut old = serde_json::to_value(key(4)).unwrap();
        old.as_object_mut().unwrap().remove("pooling");
        let old: EmbeddingKey = serde_json::from_value(old).unwrap();
        assert_eq!(old.pooling, "", "average-pooled vectors, from before the field existed");
        assert_ne!(old, key(4), "so their index is re-embedded, never searched with GeM queries");
    }
}
