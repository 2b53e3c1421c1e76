//! Generations on disk and the re-index lock of the embedded index.
//!
//! `index.dir` holds generations `gen-000001/`, `gen-000002/`, ... each with `vectors.f32` (rows
//! of little-endian f32, grouped by category) and `manifest.json` (what the vectors mean, every
//! item, the vectors' sha256). A generation is written into `gen-N.partial/`, flushed, then
//! renamed to `gen-N/` (one atomic step), so a crash leaves either the old generation or the new
//! one. Loading takes the newest generation that verifies and falls back, with a warning, past
//! damaged ones.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::{Index, Manifest};
use crate::index::ReindexError;

/// Version of the on-disk layout.
pub const FORMAT: u32 = 1;
pub(super) const MANIFEST: &str = "manifest.json";
pub(super) const VECTORS: &str = "vectors.f32";
pub(super) const LOCK: &str = "reindex.lock";
/// Generations kept on disk: the newest and two to fall back to.
const KEEP_GENERATIONS: usize = 3;

impl Index {
    /// Writes this index as generation `self.generation()` under `dir`: into a partial folder,
    /// flushed, then renamed into place; older generations beyond the last few are removed.
    pub fn save(&mut self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the index folder {}", dir.display()))?;
        let name = generation_name(self.generation());
        let (partial, finished) = (dir.join(format!("{name}.partial")), dir.join(&name));
        anyhow::ensure!(!finished.exists(), "{} exists already", finished.display());
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        std::fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        let mut bytes = Vec::with_capacity(self.vectors.len() * 4);
        for value in &self.vectors {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        self.manifest.vectors_sha256 = hex::encode(Sha256::digest(&bytes));
        write_synced(&partial.join(VECTORS), &bytes)?;
        write_synced(&partial.join(MANIFEST), &serde_json::to_vec_pretty(&self.manifest)?)?;
        sync_dir(&partial)?;
        std::fs::rename(&partial, &finished).with_context(|| format!("cannot move {} into place", finished.display()))?;
        sync_dir(dir)?;
        for (_, old) in generations(dir)?.into_iter().skip(KEEP_GENERATIONS) {
            if let Err(err) = std::fs::remove_dir_all(&old) {
                tracing::warn!("cannot remove the old index generation {}: {err}", old.display());
            }
        }
        Ok(finished)
    }

    /// Loads one generation folder, verifying the vectors against the manifest's sha256.
    pub fn load(path: &Path) -> anyhow::Result<Index> {
        let text = std::fs::read(path.join(MANIFEST)).with_context(|| format!("cannot read {}", path.join(MANIFEST).display()))?;
        let manifest: Manifest = serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.join(MANIFEST).display()))?;
        anyhow::ensure!(manifest.format == FORMAT, "{} has index format {}, this lookalike reads {FORMAT}: re-index", path.display(), manifest.format);
        let bytes = std::fs::read(path.join(VECTORS)).with_context(|| format!("cannot read {}", path.join(VECTORS).display()))?;
        let expected = manifest.items.len() * manifest.key.dim * 4;
        anyhow::ensure!(bytes.len() == expected, "{} has {} bytes, the manifest says {expected}", path.join(VECTORS).display(), bytes.len());
        let actual = hex::encode(Sha256::digest(&bytes));
        anyhow::ensure!(actual == manifest.vectors_sha256, "{} is damaged: sha256 {actual}, the manifest says {}", path.join(VECTORS).display(), manifest.vectors_sha256);
        let vectors = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(Index::from_parts(manifest, vectors))
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
