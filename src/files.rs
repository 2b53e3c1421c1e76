//! Files written whole or not at all, and where trained heads live. A leaf: it knows nothing
//! of the modules that use it.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A temporary file beside `path` (so that the final rename stays on one file system), with
/// `path`'s extension: writers such as `VarStore::save` pick the format from it.
pub fn temporary_beside(path: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let extension = path.extension().map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
    tempfile::Builder::new().prefix(".partial-").suffix(&extension).tempfile_in(parent).with_context(|| format!("cannot create a temporary file in {}", parent.display()))
}

/// Has `write` fill a temporary file beside `path`, flushes it to disk, then renames it over
/// `path`: a crash leaves the old file or the new one, never half of either, and no leftover.
pub fn replace_atomically(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let partial = temporary_beside(path)?;
    write(partial.path()).with_context(|| format!("cannot write {}", path.display()))?;
    persist(partial, path)
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    replace_atomically(path, |partial| Ok(std::fs::write(partial, bytes)?))
}

/// Flushes a finished temporary file and renames it into place.
pub fn persist(partial: tempfile::NamedTempFile, path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(partial.path())?.sync_all().with_context(|| format!("cannot flush {}", path.display()))?;
    partial.persist(path).with_context(|| format!("cannot move the new {} into place", path.display()))?;
    Ok(())
}

/// The heads folder (`lookalike train --out`): what was trained, and one file per backbone.
pub mod heads {
    use super::*;

    /// Classes, profile and backbones the heads were trained for.
    pub fn info_path(dir: &Path) -> PathBuf {
        dir.join("heads.json")
    }

    pub fn head_path(dir: &Path, backbone: &str) -> PathBuf {
        dir.join(format!("{backbone}.safetensors"))
    }

    /// A backbone's fine-tuned layers, when `train --fine-tune-layers` opened some.
    pub fn tuned_backbone_path(dir: &Path, backbone: &str) -> PathBuf {
        dir.join(format!("{backbone}.backbone.safetensors"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads.json");
        write_atomically(&path, b"old").unwrap();
        let failed = replace_atomically(&path, |partial| {
            std::fs::write(partial, b"half of the ne")?;
            anyhow::bail!("disk full")
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the partial file is gone");
        replace_atomically(&path, |partial| {
            assert_eq!(partial.extension().unwrap(), "json", "writers see the real extension");
            Ok(std::fs::write(partial, b"new")?)
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
