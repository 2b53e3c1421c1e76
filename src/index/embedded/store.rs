//! Generations on disk and the re-index lock of the embedded index.
//!
//! `index.dir` holds generations `gen-000001/`, `gen-000002/`, ... each with `vectors.f32` (rows
//! of little-endian f32, grouped by category), `text.f32` (the items' sentence vectors in the
//! same row order, when the generation has them), `codes.q4` (the 4-bit codes searches scan, see
//! `codes`) and `manifest.json` (what the vectors mean, every item, how the codes encode, both
//! files' sha256). A generation is written into `gen-N.partial/`, flushed, then renamed to
//! `gen-N/` (one atomic step), so a crash leaves either the old generation or the new one.
//! Loading takes the newest generation that verifies and falls back, with a warning, past
//! damaged ones. Once loaded, only the codes and the norms stay in memory: searches read the
//! few full-precision rows they re-rank from `vectors.f32` by position.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::codes::Codes;
use super::text::TextVectors;
use super::{Index, Manifest};
use crate::index::rank::dot;
use crate::index::{IndexError, ReindexError};

/// Version of the on-disk layout: 2 added the codes, 3 the whitening and the unblended vectors
/// (an older lookalike refuses a format 3 generation rather than compare raw queries with
/// whitened vectors). A format 1 generation still loads (its vectors stay in memory and its
/// codes are derived) until the next re-index writes the current format.
pub const FORMAT: u32 = 3;
pub(super) const MANIFEST: &str = "manifest.json";
pub(super) const VECTORS: &str = "vectors.f32";
pub(super) const CODES: &str = "codes.q4";
pub(super) const TEXT: &str = "text.f32";
pub(super) const WHITENING: &str = "whitening.bin";
pub(super) const OWN: &str = "own.f32";
pub(super) const LOCK: &str = "reindex.lock";
/// Generations kept on disk: the newest and two to fall back to.
const KEEP_GENERATIONS: usize = 3;
/// Rows hashed and converted per read while a generation loads or saves.
const CHUNK_ROWS: usize = 4096;

/// Where a generation's full-precision vectors are.
#[derive(Debug)]
pub(super) enum Rows {
    /// While a generation is built (and for a format 1 generation).
    Memory(Vec<f32>),
    /// Its `vectors.f32`, read by position.
    File(std::fs::File),
}

impl Rows {
    /// The vectors of `rows`, one after another.
    pub fn read(&self, rows: &[usize], dim: usize) -> Result<Vec<f32>, IndexError> {
        let mut out = Vec::with_capacity(rows.len() * dim);
        match self {
            Rows::Memory(matrix) => {
                for &row in rows {
                    out.extend_from_slice(&matrix[row * dim..(row + 1) * dim]);
                }
            }
            Rows::File(file) => {
                let mut bytes = vec![0u8; dim * 4];
                for &row in rows {
                    file.read_exact_at(&mut bytes, (row * dim * 4) as u64)
                        .map_err(|err| IndexError::Unusable(format!("cannot read the index's vectors ({err}): the generation on disk changed under this process; re-index with `lookalike index`")))?;
                    out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
                }
            }
        }
        Ok(out)
    }
}

impl Index {
    /// Writes this index as generation `self.generation()` under `dir`: into a partial folder,
    /// flushed, then renamed into place; older generations beyond the last few are removed.
    /// From then on its full-precision vectors are read from there, no longer kept in memory.
    pub fn save(&mut self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the index folder {}", dir.display()))?;
        let name = generation_name(self.generation());
        let (partial, finished) = (dir.join(format!("{name}.partial")), dir.join(&name));
        anyhow::ensure!(!finished.exists(), "{} exists already", finished.display());
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        std::fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        let Rows::Memory(matrix) = &self.rows else { anyhow::bail!("generation {} is saved already", self.generation()) };
        let path = partial.join(VECTORS);
        let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?);
        let mut hasher = Sha256::new();
        let mut bytes = Vec::with_capacity(CHUNK_ROWS * self.manifest.key.dim * 4);
        for chunk in matrix.chunks(CHUNK_ROWS * self.manifest.key.dim.max(1)) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|value| value.to_le_bytes()));
            hasher.update(&bytes);
            file.write_all(&bytes).with_context(|| format!("cannot write {}", path.display()))?;
        }
        file.into_inner().map_err(|err| err.into_error()).and_then(|file| file.sync_all()).with_context(|| format!("cannot flush {}", path.display()))?;
        self.manifest.vectors_sha256 = hex::encode(hasher.finalize());
        self.manifest.codes_sha256 = hex::encode(Sha256::digest(&self.codes.bytes));
        if self.texts.dim > 0 {
            let bytes: Vec<u8> = self.texts.values.iter().flat_map(|value| value.to_le_bytes()).collect();
            self.manifest.text_sha256 = hex::encode(Sha256::digest(&bytes));
            write_synced(&partial.join(TEXT), &bytes)?;
        }
        if let Some(Rows::Memory(own)) = &self.own {
            let bytes: Vec<u8> = own.iter().flat_map(|value| value.to_le_bytes()).collect();
            self.manifest.own_sha256 = hex::encode(Sha256::digest(&bytes));
            write_synced(&partial.join(OWN), &bytes)?;
        }
        if let Some(whitening) = &self.whitening {
            let bytes = whitening.to_bytes();
            self.manifest.whitening_sha256 = hex::encode(Sha256::digest(&bytes));
            write_synced(&partial.join(WHITENING), &bytes)?;
        }
        self.manifest.quantizer = Some(self.codes.quantizer.clone());
        write_synced(&partial.join(CODES), &self.codes.bytes)?;
        write_synced(&partial.join(MANIFEST), &serde_json::to_vec_pretty(&self.manifest)?)?;
        sync_dir(&partial)?;
        std::fs::rename(&partial, &finished).with_context(|| format!("cannot move {} into place", finished.display()))?;
        sync_dir(dir)?;
        self.rows = Rows::File(std::fs::File::open(finished.join(VECTORS)).with_context(|| format!("cannot open {}", finished.join(VECTORS).display()))?);
        if self.own.is_some() {
            self.own = Some(Rows::File(std::fs::File::open(finished.join(OWN)).with_context(|| format!("cannot open {}", finished.join(OWN).display()))?));
        }
        for (_, old) in generations(dir)?.into_iter().skip(KEEP_GENERATIONS) {
            if let Err(err) = std::fs::remove_dir_all(&old) {
                tracing::warn!("cannot remove the old index generation {}: {err}", old.display());
            }
        }
        Ok(finished)
    }

    /// Loads one generation folder, verifying the vectors and the codes against the
    /// manifest's sha256; the vectors are read once, in chunks, and left on disk.
    pub fn load(path: &Path) -> anyhow::Result<Index> {
        let text = std::fs::read(path.join(MANIFEST)).with_context(|| format!("cannot read {}", path.join(MANIFEST).display()))?;
        let manifest: Manifest = serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.join(MANIFEST).display()))?;
        anyhow::ensure!(manifest.format <= FORMAT, "{} has index format {}, this lookalike reads up to {FORMAT}: re-index", path.display(), manifest.format);
        let dim = manifest.key.dim.max(1);
        let vectors = path.join(VECTORS);
        let mut file = std::fs::File::open(&vectors).with_context(|| format!("cannot read {}", vectors.display()))?;
        let expected = manifest.items.len() * manifest.key.dim * 4;
        let size = file.metadata()?.len();
        anyhow::ensure!(size == expected as u64, "{} has {size} bytes, the manifest says {expected}", vectors.display());
        let (mut hasher, mut norms, mut kept) = (Sha256::new(), Vec::with_capacity(manifest.items.len()), Vec::new());
        let mut bytes = vec![0u8; CHUNK_ROWS * dim * 4];
        let mut left = expected;
        while left > 0 {
            let chunk = &mut bytes[..left.min(CHUNK_ROWS * dim * 4)];
            file.read_exact(chunk).with_context(|| format!("cannot read {}", vectors.display()))?;
            hasher.update(&*chunk);
            let floats: Vec<f32> = chunk.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            norms.extend(floats.chunks_exact(dim).map(|row| dot(row, row).sqrt()));
            if manifest.format == 1 {
                kept.extend_from_slice(&floats);
            }
            left -= chunk.len();
        }
        let actual = hex::encode(hasher.finalize());
        anyhow::ensure!(actual == manifest.vectors_sha256, "{} is damaged: sha256 {actual}, the manifest says {}", vectors.display(), manifest.vectors_sha256);
        if manifest.format == 1 {
            return Ok(Index::in_memory(manifest, kept));
        }
        let quantizer = manifest.quantizer.clone().with_context(|| format!("{} has no quantizer", path.join(MANIFEST).display()))?;
        anyhow::ensure!(quantizer.dim() == manifest.key.dim, "{} has a quantizer for {} dimensions, not {}", path.join(MANIFEST).display(), quantizer.dim(), manifest.key.dim);
        let codes = std::fs::read(path.join(CODES)).with_context(|| format!("cannot read {}", path.join(CODES).display()))?;
        anyhow::ensure!(
            codes.len() == manifest.items.len() * quantizer.stride(),
            "{} has {} bytes, the manifest says {}",
            path.join(CODES).display(),
            codes.len(),
            manifest.items.len() * quantizer.stride()
        );
        let actual = hex::encode(Sha256::digest(&codes));
        anyhow::ensure!(actual == manifest.codes_sha256, "{} is damaged: sha256 {actual}, the manifest says {}", path.join(CODES).display(), manifest.codes_sha256);
        let texts = load_texts(path, &manifest)?;
        let whitening = load_whitening(path, &manifest)?;
        let own = load_own(path, &manifest)?;
        let mut index = Index::assemble(manifest, Codes { quantizer, bytes: codes }, norms, Rows::File(file), texts);
        index.whitening = whitening;
        index.own = own;
        Ok(index)
    }

    /// The newest generation under `dir` that loads and verifies, with a warning for each newer
    /// one that did not; `None` when there is no generation at all.
    pub fn open_latest(dir: &Path) -> anyhow::Result<Option<(Index, Vec<String>)>> {
        let mut warnings = Vec::new();
        let all = generations(dir)?;
        for (position, (_, path)) in all.iter().enumerate() {
            match Index::load(path) {
                Ok(index) => {
                    for warning in &warnings {
                        tracing::warn!("{warning}");
                    }
                    return Ok(Some((index, warnings)));
                }
                Err(err) => {
                    let fallback = all.get(position + 1).map_or("no older generation is left".to_string(), |(_, p)| format!("falling back to {}", p.display()));
                    warnings.push(format!("index generation {} is unusable ({err:#}); {fallback}", path.display()));
                }
            }
        }
        anyhow::ensure!(warnings.is_empty(), "no usable index generation in {}:\n{}\nre-index with `lookalike index`", dir.display(), warnings.join("\n"));
        Ok(None)
    }
}

/// The generation's unblended vectors, checked against the manifest (none when it has none).
fn load_own(path: &Path, manifest: &Manifest) -> anyhow::Result<Option<Rows>> {
    if manifest.own_sha256.is_empty() {
        return Ok(None);
    }
    let file = path.join(OWN);
    let mut opened = std::fs::File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let expected = (manifest.items.len() * manifest.key.dim * 4) as u64;
    let size = opened.metadata()?.len();
    anyhow::ensure!(size == expected, "{} has {size} bytes, the manifest says {expected}", file.display());
    // Hashed in chunks, as `vectors.f32` is: the file stays on disk.
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, &mut opened), &mut hasher).with_context(|| format!("cannot read {}", file.display()))?;
    let actual = hex::encode(hasher.finalize());
    anyhow::ensure!(actual == manifest.own_sha256, "{} is damaged: sha256 {actual}, the manifest says {}", file.display(), manifest.own_sha256);
    Ok(Some(Rows::File(opened)))
}

/// The generation's whitening, checked against the manifest (none when it has none).
fn load_whitening(path: &Path, manifest: &Manifest) -> anyhow::Result<Option<std::sync::Arc<crate::index::whiten::Whitening>>> {
    if manifest.whitening_sha256.is_empty() {
        return Ok(None);
    }
    let file = path.join(WHITENING);
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    anyhow::ensure!(actual == manifest.whitening_sha256, "{} is damaged: sha256 {actual}, the manifest says {}", file.display(), manifest.whitening_sha256);
    let whitening = crate::index::whiten::Whitening::from_bytes(&bytes).with_context(|| format!("{} is damaged", file.display()))?;
    anyhow::ensure!(whitening.settings.span <= manifest.key.dim, "{} whitens {} entries of {}-d vectors", file.display(), whitening.settings.span, manifest.key.dim);
    Ok(Some(std::sync::Arc::new(whitening)))
}

/// The generation's sentence vectors, checked against the manifest (none when it has none).
fn load_texts(path: &Path, manifest: &Manifest) -> anyhow::Result<TextVectors> {
    if manifest.text_dim == 0 {
        return Ok(TextVectors::default());
    }
    let file = path.join(TEXT);
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let expected = manifest.items.len() * manifest.text_dim * 4;
    anyhow::ensure!(bytes.len() == expected, "{} has {} bytes, the manifest says {expected}", file.display(), bytes.len());
    let actual = hex::encode(Sha256::digest(&bytes));
    anyhow::ensure!(actual == manifest.text_sha256, "{} is damaged: sha256 {actual}, the manifest says {}", file.display(), manifest.text_sha256);
    Ok(TextVectors::new(manifest.text_dim, bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
}

fn generation_name(generation: u64) -> String {
    format!("gen-{generation:06}")
}

/// Finished generation folders under `dir`, newest first.
pub(super) fn generations(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the index folder {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let number = name.strip_prefix("gen-")?.parse::<u64>().ok()?;
            entry.path().is_dir().then(|| (number, entry.path()))
        })
        .collect();
    found.sort_by_key(|generation| std::cmp::Reverse(generation.0));
    Ok(found)
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all().with_context(|| format!("cannot flush {}", path.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)?.sync_all().with_context(|| format!("cannot flush the folder {}", dir.display()))
}

/// Held while a re-index runs, across processes: an OS lock on a file in the index folder
/// (`flock`), which the kernel releases when its holder ends however it ends, so a killed
/// re-index never blocks the next one and a reused process id fools nothing. The file names
/// the holder's process id, for the message only.
pub struct ReindexLock {
    path: PathBuf,
    /// Holds the lock until dropped.
    _file: std::fs::File,
}

impl ReindexLock {
    pub fn acquire(dir: &Path) -> Result<ReindexLock, ReindexError> {
        use std::os::unix::fs::MetadataExt;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the index folder {}", dir.display()))?;
        let path = dir.join(LOCK);
        for _ in 0..3 {
            let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default().trim().to_string();
                    let whom = if holder == std::process::id().to_string() {
                        "in this process".to_string()
                    } else if holder.is_empty() {
                        "in another process".to_string()
                    } else {
                        format!("process {holder}")
                    };
                    return Err(ReindexError::AlreadyRunning(whom));
                }
                Err(std::fs::TryLockError::Error(err)) => return Err(anyhow::Error::new(err).context(format!("cannot lock {}", path.display())).into()),
            }
            // The last holder removes the file as it finishes: a lock on a file the path no
            // longer names guards nothing, so open the path again.
            let same = std::fs::metadata(&path).is_ok_and(|now| file.metadata().is_ok_and(|held| (held.dev(), held.ino()) == (now.dev(), now.ino())));
            if same {
                file.set_len(0).and_then(|_| writeln!(file, "{}", std::process::id())).context("cannot write the re-index lock")?;
                return Ok(ReindexLock { path, _file: file });
            }
        }
        Err(ReindexError::AlreadyRunning("in another process, which took the lock first".into()))
    }
}

impl Drop for ReindexLock {
    fn drop(&mut self) {
        // Removed while still locked: nobody can lock this file after us, only a new one.
        let _ = std::fs::remove_file(&self.path);
    }
}
